package relay_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps checks the architecture rule for relay (DESIGN.md): it never
// imports agent or cmd, so the two ends stay independent and only meet in
// end-to-end tests. Model: tailscale cmd/derper TestDeps.
func TestDeps(t *testing.T) {
	const module = "github.com/tunnel-dev/tunnel"
	const pkg = module + "/relay"
	forbidden := []string{module + "/agent", module + "/cmd"}
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
