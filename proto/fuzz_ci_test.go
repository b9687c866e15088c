package proto

import (
	"os"
	"os/exec"
	"testing"
)

// TestFuzzBriefly runs each fuzz target of this package under the fuzzing
// engine for 20,000 inputs (a few seconds) when CI is set, so CI explores
// beyond the seed corpus while the suite stays one `go test` command.
// Elsewhere the seeds alone run, as plain tests. A count, not a duration:
// in Go 1.26 a -fuzztime duration races the fuzzing coordinator's own
// shutdown, and a starved worker fails the run with "context deadline
// exceeded" and no failing input (go.dev/issue/75804, fixed in Go 1.27).
func TestFuzzBriefly(t *testing.T) {
	runFuzzersBriefly(t, "FuzzReadMessage", "FuzzValidateName", "FuzzStreamCodecRead", "FuzzStreamCodecWrite")
}

func runFuzzersBriefly(t *testing.T, targets ...string) {
	if os.Getenv("CI") == "" || testing.Short() {
		t.Skip("fuzzing runs under CI=true; the seed corpus runs as plain tests")
	}
	for _, target := range targets {
		cmd := exec.Command("go", "test", "-run=^$", "-fuzz=^"+target+"$", "-fuzztime=20000x", ".")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("fuzzing %s: %v\n%s", target, err, out)
		}
	}
}
