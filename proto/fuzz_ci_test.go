package proto

import (
	"os"
	"os/exec"
	"testing"
)

// TestFuzzBriefly runs each fuzz target of this package under the fuzzing
// engine for a few seconds when CI is set, so CI explores beyond the seed
// corpus while the suite stays one `go test` command. Elsewhere the seeds
// alone run, as plain tests.
func TestFuzzBriefly(t *testing.T) {
	runFuzzersBriefly(t, "FuzzReadMessage", "FuzzValidateName", "FuzzStreamCodecRead", "FuzzStreamCodecWrite")
}

func runFuzzersBriefly(t *testing.T, targets ...string) {
	if os.Getenv("CI") == "" || testing.Short() {
		t.Skip("fuzzing runs under CI=true; the seed corpus runs as plain tests")
	}
	for _, target := range targets {
		cmd := exec.Command("go", "test", "-run=^$", "-fuzz=^"+target+"$", "-fuzztime=5s", ".")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("fuzzing %s: %v\n%s", target, err, out)
		}
	}
}
