package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/relay"
)

const adminToken = "admin-secret-1"

func withAdminToken(c *relay.Config) { c.AdminToken = adminToken }

// adminDo calls the admin API with token ("" for none) and returns the
// status and body.
func adminDo(t testing.TB, method, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// apiError returns the "error" of a JSON error answer.
func apiError(t testing.TB, body string) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		t.Fatalf("not a JSON error: %q (%v)", body, err)
	}
	return e.Error
}

// listTunnels returns GET /api/tunnels.
func listTunnels(t testing.TB, admin string) []relay.TunnelInfo {
	t.Helper()
	status, body := adminDo(t, "GET", admin+"/api/tunnels", adminToken)
	if status != http.StatusOK {
		t.Fatalf("GET /api/tunnels: %d %s", status, body)
	}
	var list []relay.TunnelInfo
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("GET /api/tunnels: %v\n%s", err, body)
	}
	return list
}

// The admin API needs the admin token; without one configured it answers
// 403 and says how to turn it on, while metrics and health stay open.
func TestAdminAuth(t *testing.T) {
	rl := startRelay(t, "", withAdminToken)
	admin := startAdmin(t, rl)
	for _, tok := range []string{"", "wrong-token"} {
		status, body := adminDo(t, "GET", admin+"/api/tunnels", tok)
		if status != http.StatusUnauthorized || !strings.Contains(apiError(t, body), "admin token") {
			t.Errorf("token %q: %d %s", tok, status, body)
		}
	}
	if status, body := adminDo(t, "GET", admin+"/api/tunnels", adminToken); status != 200 || strings.TrimSpace(body) != "[]" {
		t.Errorf("with the token: %d %s", status, body)
	}
	if status, body := adminDo(t, "GET", admin+"/api/nosuch", adminToken); status != 404 || !strings.Contains(apiError(t, body), "/api/nosuch") {
		t.Errorf("unknown endpoint: %d %s", status, body)
	}
	waitMetrics(t, admin, want{"tunnel_relay_rejects_total", []string{"reason", "admin_auth_failed"}, 2})

	open := startRelay(t, "")
	openAdmin := startAdmin(t, open)
	status, body := adminDo(t, "GET", openAdmin+"/api/tunnels", "anything")
	if status != http.StatusForbidden || apiError(t, body) != "set --admin-token to use the admin API" {
		t.Errorf("without an admin token: %d %s", status, body)
	}
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		if status, _ := adminDo(t, "GET", openAdmin+path, ""); status != 200 {
			t.Errorf("%s without an admin token: %d", path, status)
		}
	}
}

// The public port never serves the admin paths: they are the relay's
// ordinary 404 page, with or without the token.
func TestAdminNotOnPublicPort(t *testing.T) {
	rl := startRelay(t, "", withAdminToken)
	startAdmin(t, rl)
	for _, path := range []string{"/metrics", "/api/tunnels", "/readyz"} {
		status, body := adminDo(t, "GET", rl.url()+path, adminToken)
		if status != http.StatusNotFound || !strings.Contains(body, "Not found") || strings.Contains(body, "# HELP") || strings.Contains(body, "[") {
			t.Errorf("public %s: %d %q", path, status, body)
		}
	}
}

// gatedDial makes an agent's dials to the relay wait while the gate is
// shut, so a test can look at the relay between a disconnect and the
// agent's reconnect.
type gatedDial struct {
	addr string
	mu   sync.Mutex
	open chan struct{} // closed while the gate is open
}

func newGatedDial(addr string) *gatedDial {
	g := &gatedDial{addr: addr, open: make(chan struct{})}
	close(g.open)
	return g
}

func (g *gatedDial) shut() {
	g.mu.Lock()
	g.open = make(chan struct{})
	g.mu.Unlock()
}

func (g *gatedDial) reopen() {
	g.mu.Lock()
	close(g.open)
	g.mu.Unlock()
}

func (g *gatedDial) apply(c *agent.Config) {
	c.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		g.mu.Lock()
		open := g.open
		g.mu.Unlock()
		select {
		case <-open:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return (&net.Dialer{}).DialContext(ctx, network, g.addr)
	}
}

// ls lists each tunnel with its fields; kick disconnects the agent, whose
// name is then held, and the agent takes it back by itself; revoke stops
// the agent for good; unknown names are 404.
func TestAdminAPI(t *testing.T) {
	rl := startRelay(t, "", withAdminToken, withTokens(relay.Token{Name: "alice", Secret: "alice-secret-1"}))
	admin := startAdmin(t, rl)
	local := startLocal(t)
	gate := newGatedDial(rl.addr)
	before := time.Now()
	ag, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}}, withToken("alice-secret-1"), gate.apply)
	if status, _ := get(t, visitorClient(rl.addr), urls[0]+"/"); status != 200 {
		t.Fatalf("GET: %d", status)
	}

	var ti relay.TunnelInfo
	waitFor(t, 5*time.Second, "the request in the list", func() bool {
		list := listTunnels(t, admin)
		if len(list) != 1 {
			t.Fatalf("list: %+v", list)
		}
		ti = list[0]
		return ti.Requests == 1
	})
	if ti.Name != "demo" || ti.URL != urls[0] || ti.State != "live" || ti.Token != "alice" ||
		ti.BytesOut != int64(len("GET /")) || ti.BytesIn != 0 || ti.Streams < 0 || !ti.HeldUntil.IsZero() {
		t.Errorf("listed %+v", ti)
	}
	if host, _, err := net.SplitHostPort(ti.Agent); err != nil || host != "127.0.0.1" {
		t.Errorf("agent address %q", ti.Agent)
	}
	if ti.Since.Before(before.Add(-time.Second)) || ti.Since.After(time.Now()) {
		t.Errorf("since %v, want after %v", ti.Since, before)
	}

	for _, action := range []string{"kick", "revoke"} {
		status, body := adminDo(t, "POST", admin+"/api/tunnels/nosuch/"+action, adminToken)
		if status != http.StatusNotFound || apiError(t, body) != `no tunnel named "nosuch"` {
			t.Errorf("%s nosuch: %d %s", action, status, body)
		}
	}
	if status, _ := adminDo(t, "GET", admin+"/api/tunnels/demo/kick", adminToken); status != http.StatusNotFound {
		t.Errorf("GET kick: %d, want 404", status)
	}

	// Kick: the name is held while the agent cannot reconnect ...
	gate.shut()
	if status, body := adminDo(t, "POST", admin+"/api/tunnels/demo/kick", adminToken); status != 200 {
		t.Fatalf("kick: %d %s", status, body)
	}
	select {
	case <-ag.offline:
	case <-time.After(10 * time.Second):
		t.Fatal("the kicked agent did not notice")
	}
	waitFor(t, 5*time.Second, "the name held", func() bool {
		list := listTunnels(t, admin)
		return len(list) == 1 && list[0].State == "held"
	})
	held := listTunnels(t, admin)[0]
	if held.HeldUntil.IsZero() || held.Agent != ti.Agent || held.Requests != 1 || held.Streams != 0 {
		t.Errorf("held entry %+v", held)
	}
	if status, body := adminDo(t, "POST", admin+"/api/tunnels/demo/kick", adminToken); status != http.StatusConflict {
		t.Errorf("kick of a held name: %d %s", status, body)
	}
	if status, _ := get(t, visitorClient(rl.addr), urls[0]+"/"); status != http.StatusBadGateway {
		t.Errorf("held name answers %d, want 502", status)
	}
	// ... and the agent takes it back once it can.
	gate.reopen()
	select {
	case got := <-ag.online:
		if got[0] != urls[0] {
			t.Errorf("reconnected as %q, want %q", got[0], urls[0])
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the kicked agent did not reconnect")
	}
	if list := listTunnels(t, admin); len(list) != 1 || list[0].State != "live" || list[0].Requests != 0 {
		t.Errorf("after the reconnect: %+v", list)
	}
	check(t, scrape(t, admin),
		want{"tunnel_relay_reconnects_total", nil, 1},
		want{"tunnel_relay_tunnels_online", nil, 1},
		want{"tunnel_relay_tunnels_held", nil, 0},
	)

	// Revoke: the agent stops with a permanent error and the name is free.
	if status, body := adminDo(t, "POST", admin+"/api/tunnels/demo/revoke", adminToken); status != 200 || !strings.Contains(body, `"revoked": "demo"`) {
		t.Fatalf("revoke: %d %s", status, body)
	}
	select {
	case err := <-ag.done:
		ag.done <- err
		if !errors.Is(err, proto.ErrNameNotAllowed) || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("agent after revoke: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent kept running after its name was revoked")
	}
	waitFor(t, 5*time.Second, "an empty list", func() bool { return len(listTunnels(t, admin)) == 0 })
}

// Run refuses an admin listener beyond loopback without an admin token,
// and serves one on loopback.
func TestRunAdminListener(t *testing.T) {
	err := relay.Run(context.Background(), relay.Config{Domain: "localhost", Addr: "127.0.0.1:0", AdminAddr: "0.0.0.0:0", Logger: testLogger(t)}, nil)
	if err == nil || !strings.Contains(err.Error(), "admin token") {
		t.Fatalf("Run with a public admin address and no token: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- relay.Run(ctx, relay.Config{Domain: "localhost", Addr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Logger: testLogger(t)},
			func(s *relay.Server, _ net.Addr) { ready <- s.AdminAddr() })
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	admin := "http://" + addr.String()
	waitFor(t, 5*time.Second, "/readyz 200", func() bool {
		status, _ := adminDo(t, "GET", admin+"/readyz", "")
		return status == 200
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
