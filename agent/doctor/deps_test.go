package doctor

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps checks the architecture rule for doctor (DESIGN.md): it is on
// the agent's side, so it never imports relay or cmd; it reaches the relay
// only over the network, as an agent and a visitor do.
func TestDeps(t *testing.T) {
	const module = "github.com/tunnel-dev/tunnel"
	const pkg = module + "/agent/doctor"
	forbidden := []string{module + "/relay", module + "/cmd"}
	out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("%s imports %s; it must not import %s", pkg, dep, f)
			}
		}
	}
}
