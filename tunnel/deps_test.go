package tunnel_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps checks the architecture rule for tunnel (DESIGN.md): besides the
// standard library it may import only proto and yamux; never relay, agent
// or cmd. Model: tailscale cmd/derper TestDeps.
func TestDeps(t *testing.T) {
	const pkg = "github.com/tunnel-dev/tunnel/tunnel"
	allowed := map[string]bool{
		pkg:                                  true,
		"github.com/tunnel-dev/tunnel/proto": true,
		"github.com/hashicorp/yamux":         true,
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if !allowed[dep] {
			t.Errorf("%s imports %s; it may import only the standard library, proto and yamux", pkg, dep)
		}
	}
}
