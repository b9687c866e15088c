package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// The relay writes a request right after the stream header and reads the
// agent's reply with the response (tunnel.OpenOptions.Early). These tests
// pin down what that must not change: how long a visitor waits for an agent
// that never answers, what page it gets, and that no visitor can hold the
// agent's opening slots by sending a body slowly.

// An agent that does not answer: GET and POST alike get "Agent did not
// answer" after OpenTimeout, whichever of OpenTimeout and the response
// header timeout is shorter. (A POST's body is written by a goroutine that
// sets the response header deadline while the reply is awaited; that must
// not stretch the wait.)
func TestSilentAgentTimesOut(t *testing.T) {
	for _, tc := range []struct {
		name      string
		open, rht time.Duration
	}{
		{"open timeout first", 500 * time.Millisecond, 5 * time.Second},
		{"header timeout first", 2 * time.Second, 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rl := startRelay(t, "", func(c *relay.Config) {
				c.OpenTimeout = tc.open
				c.Limits.ResponseHeaderTimeout = tc.rht
			})
			silentAgent(t, rl.url(), "stuck")
			for _, method := range []string{"GET", "POST"} {
				var body io.Reader
				if method == "POST" {
					body = strings.NewReader("a=1")
				}
				req, _ := http.NewRequest(method, "http://stuck.localhost/", body)
				start := time.Now()
				resp, err := visitorClient(rl.addr).Do(req)
				if err != nil {
					t.Fatal(err)
				}
				page, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				d := time.Since(start)
				if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(string(page), "Agent did not answer") {
					t.Errorf("%s: %d %.60q, want 504 Agent did not answer", method, resp.StatusCode, page)
				}
				if limit := min(tc.open, tc.rht) + 1500*time.Millisecond; d > limit {
					t.Errorf("%s: answered after %v, want within %v", method, d.Round(10*time.Millisecond), limit)
				}
			}
		})
	}
}

// Upgrade requests whose bodies trickle in must not hold the agent's
// opening slots (tunnel.MaxStreams) while they do: the relay reads the
// agent's answer before it writes such a body, so a visitor of the same
// agent still gets through at once.
func TestSlowUpgradeBodiesDoNotHoldOpeningSlots(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) { c.OpenTimeout = time.Second })
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	for i := range tunnel.MaxStreams {
		c, err := net.Dial("tcp", rl.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "POST /%d HTTP/1.1\r\nHost: demo.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 1000000\r\n\r\nxxxxxxxxxx", i)
	}
	time.Sleep(time.Second) // every one of them is open at the agent
	status, body := get(t, visitorClient(rl.addr), "http://demo.localhost/x")
	if status != http.StatusOK || body != "GET /x" {
		t.Errorf("GET while %d upgrade bodies trickle: %d %.70q, want 200", tunnel.MaxStreams, status, body)
	}
}
