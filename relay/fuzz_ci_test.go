package relay

import (
	"os"
	"os/exec"
	"testing"
)

// TestFuzzBriefly runs the configuration parser's fuzz target under the
// fuzzing engine for 20,000 inputs when CI is set (see proto's twin for
// why a count).
func TestFuzzBriefly(t *testing.T) {
	if os.Getenv("CI") == "" || testing.Short() {
		t.Skip("fuzzing runs under CI=true; the seed corpus runs as plain tests")
	}
	out, err := exec.Command("go", "test", "-run=^$", "-fuzz=^FuzzLoadConfig$", "-fuzztime=20000x", ".").CombinedOutput()
	if err != nil {
		t.Errorf("fuzzing FuzzLoadConfig: %v\n%s", err, out)
	}
}
