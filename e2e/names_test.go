package e2e

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
)

// Without -s the relay picks a readable random name that follows the rules.
func TestRandomName(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Local: local.addr}})
	u, _ := url.Parse(urls[0])
	name, _, _ := strings.Cut(u.Hostname(), ".")
	if err := proto.ValidateName(name); err != nil || strings.Count(name, "-") != 2 {
		t.Fatalf("random name %q: %v", name, err)
	}
	if status, _ := get(t, visitorClient(rl.addr), urls[0]+"/"); status != 200 {
		t.Fatalf("random-name tunnel answered %d", status)
	}
}

// A name held by a live agent is refused to another one with a clear,
// permanent error; the first agent keeps serving.
func TestNameTaken(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	second, _ := runAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	select {
	case err := <-second.done:
		if !errors.Is(err, proto.ErrNameTaken) || !strings.Contains(err.Error(), `name "demo" is in use by another agent`) {
			t.Fatalf("second agent: %v", err)
		}
		second.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("second agent did not stop")
	}
	if status, _ := get(t, visitorClient(rl.addr), "http://demo.localhost/"); status != 200 {
		t.Fatalf("first agent's tunnel answered %d after the refusal", status)
	}
}

// The relay itself refuses invalid names, naming the rule, whatever client
// asks (the agent also checks before connecting).
func TestInvalidNameRefusedByRelay(t *testing.T) {
	rl := startRelay(t, "")
	for name, rule := range map[string]string{
		"Demo":                  "lower-case",
		"-demo":                 "must not start or end with '-'",
		"www":                   "reserved",
		"a_b":                   "only letters a-z",
		"xn--abc":               "punycode",
		"a.b":                   "only letters a-z",
		strings.Repeat("a", 64): "longer than 63",
	} {
		err := rawHello(t, rl.url(), &proto.Hello{Version: proto.Version, Tunnels: []proto.TunnelRequest{{Name: name}}})
		if !errors.Is(err, proto.ErrNameInvalid) || !strings.Contains(err.Error(), rule) {
			t.Errorf("name %q: got %v, want name-invalid mentioning %q", name, err, rule)
		}
	}
	// The agent refuses them too, before dialing.
	err := agent.Run(context.Background(), agent.Config{Relay: rl.url(), Tunnels: []agent.Tunnel{{Name: "Bad_Name", Local: "localhost:1"}}})
	if !errors.Is(err, proto.ErrNameInvalid) {
		t.Fatalf("agent.Run with a bad name: %v", err)
	}
}

// An agent speaking a protocol version older than the relay supports is
// refused with a version error.
func TestVersionTooOld(t *testing.T) {
	rl := startRelay(t, "")
	err := rawHello(t, rl.url(), &proto.Hello{Version: 0, Tunnels: []proto.TunnelRequest{{Name: "demo"}}})
	if !errors.Is(err, proto.ErrVersion) || !strings.Contains(err.Error(), "too old") {
		t.Fatalf("old version: %v", err)
	}
}

// rawHello speaks the protocol by hand and returns the relay's refusal, or
// nil on Welcome.
func rawHello(t *testing.T, relayURL string, hello *proto.Hello) error {
	t.Helper()
	sess, err := helloSession(t, relayURL, hello)
	sess.Close()
	return err
}

// A plain GET on the connect path is not an upgrade: 426 with the reason.
func TestConnectNeedsUpgrade(t *testing.T) {
	rl := startRelay(t, "")
	status, body := get(t, visitorClient(rl.addr), rl.url()+proto.ConnectPath)
	if status != 426 || !strings.Contains(body, "Upgrade: tunnel/1") {
		t.Fatalf("GET %s = %d %q", proto.ConnectPath, status, body)
	}
}
