package relay

import (
	"os"
	"os/exec"
	"testing"
)

// TestFuzzBriefly runs the configuration parser's fuzz target under the
// fuzzing engine for a few seconds when CI is set (see proto's twin).
func TestFuzzBriefly(t *testing.T) {
	if os.Getenv("CI") == "" || testing.Short() {
		t.Skip("fuzzing runs under CI=true; the seed corpus runs as plain tests")
	}
	out, err := exec.Command("go", "test", "-run=^$", "-fuzz=^FuzzLoadConfig$", "-fuzztime=5s", ".").CombinedOutput()
	if err != nil {
		t.Errorf("fuzzing FuzzLoadConfig: %v\n%s", err, out)
	}
}
