package inspect

import (
	"os"
	"os/exec"
	"testing"
)

// TestFuzzBriefly runs the inspector's fuzz targets under the fuzzing
// engine for 20,000 inputs each when CI is set (a count: see proto's
// TestFuzzBriefly for why): the parsers read whatever
// visitors and local servers send. Elsewhere the seeds alone run, as plain
// tests.
func TestFuzzBriefly(t *testing.T) {
	if os.Getenv("CI") == "" || testing.Short() {
		t.Skip("fuzzing runs under CI=true; the seed corpus runs as plain tests")
	}
	for _, target := range []string{"FuzzConn", "FuzzFrameParser"} {
		out, err := exec.Command("go", "test", "-run=^$", "-fuzz=^"+target+"$", "-fuzztime=20000x", ".").CombinedOutput()
		if err != nil {
			t.Errorf("fuzzing %s: %v\n%s", target, err, out)
		}
	}
}
