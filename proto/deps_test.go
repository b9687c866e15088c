package proto_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps checks the architecture rule for proto: it imports the standard
// library only, so anyone can implement the protocol from it and it never
// grows a dependency by accident. Model: tailscale cmd/derper TestDeps.
func TestDeps(t *testing.T) {
	const pkg = "github.com/tunnel-dev/tunnel/proto"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep != pkg {
			t.Errorf("%s imports %s; it may import the standard library only", pkg, dep)
		}
	}
}
