package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps checks the architecture rule for the CLI: it is a thin layer on
// relay and agent (and agent/doctor, the agent's checks behind `tunnel
// doctor`), so of this module's packages it imports only those;
// protocol details stay behind them. Model: tailscale cmd/derper TestDeps.
func TestDeps(t *testing.T) {
	const module = "github.com/tunnel-dev/tunnel/"
	out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	allowed := map[string]bool{module + "relay": true, module + "agent": true, module + "agent/doctor": true}
	for _, imp := range strings.Fields(string(out)) {
		if strings.HasPrefix(imp, module) && !allowed[imp] {
			t.Errorf("cmd/tunnel imports %s; it may import only relay, agent and agent/doctor of this module", imp)
		}
	}
}
