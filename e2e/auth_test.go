package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel"
)

func withTokens(tokens ...relay.Token) func(*relay.Config) {
	return func(c *relay.Config) { c.Tokens = tokens }
}

func withToken(tok string) func(*agent.Config) {
	return func(c *agent.Config) { c.Token = tok }
}

// agentErr runs an agent that is expected to stop, and returns its error.
func agentErr(t *testing.T, relayURL string, tunnels []agent.Tunnel, mod ...func(*agent.Config)) error {
	t.Helper()
	ag, _ := runAgent(t, relayURL, tunnels, mod...)
	select {
	case err := <-ag.done:
		ag.done <- err
		return err
	case <-ag.online:
		t.Fatal("agent was admitted")
	case <-time.After(10 * time.Second):
		t.Fatal("agent neither admitted nor refused within 10s")
	}
	return nil
}

// With tokens, an agent needs one before the upgrade: none or a wrong one
// is refused with a one-line reason, permanently; the right one is admitted.
func TestAgentToken(t *testing.T) {
	rl := startRelay(t, "", withTokens(relay.Token{Name: "alice", Secret: "alice-secret-1"}))
	local := startLocal(t)
	tun := []agent.Tunnel{{Name: "demo", Local: local.addr}}

	err := agentErr(t, rl.url(), tun)
	var perm *agent.PermanentError
	if !errors.As(err, &perm) || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "this relay needs a token: pass --token or set TUNNEL_TOKEN") {
		t.Fatalf("no token: %v", err)
	}
	err = agentErr(t, rl.url(), tun, withToken("wrong-token-123"))
	if !strings.Contains(err.Error(), "token not accepted") || strings.Contains(err.Error(), "wrong-token-123") {
		t.Fatalf("wrong token: %v", err)
	}
	startAgent(t, rl.url(), tun, withToken("alice-secret-1"))
	if status, _ := get(t, visitorClient(rl.addr), "http://demo.localhost/"); status != 200 {
		t.Fatalf("admitted agent's tunnel: %d", status)
	}
}

// Without a token the relay answers 401 before any upgrade: the connection
// never switches protocols.
func TestNoSessionBeforeAuth(t *testing.T) {
	rl := startRelay(t, "", withTokens(relay.Token{Secret: "sesame-sesame"}))
	c, err := net.Dial("tcp", rl.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: tunnel/1\r\nAuthorization: Bearer nope-nope-nope\r\n\r\n", proto.ConnectPath)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 401 || strings.TrimSpace(string(body)) != "token not accepted by this relay" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

// Failed token attempts are limited per source address (429), and an agent
// from another address is not slowed by them. Asking without a token
// guesses nothing and is not limited (tunnel doctor does, on every run).
func TestAuthFailuresRateLimited(t *testing.T) {
	rl := startRelay(t, "", withTokens(relay.Token{Secret: "the-right-one"}), func(c *relay.Config) {
		c.Limits.AuthFailuresPerMinute = 3
	})
	u, _ := url.Parse(rl.url())
	upgrade := func(ip, token string) error {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := tunnel.DialControl(ctx, u, tunnel.DialOptions{Token: token, DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, rl.addr)
		}})
		if err == nil {
			conn.Close()
		}
		return err
	}
	for i := range 5 {
		var uerr *tunnel.UpgradeError
		if err := upgrade("127.0.0.2", ""); !errors.As(err, &uerr) || uerr.Status != 401 || !strings.Contains(uerr.Reason, "needs a token") {
			t.Fatalf("attempt %d without a token: %v", i, err)
		}
	}
	for i := range 3 {
		var uerr *tunnel.UpgradeError
		if err := upgrade("127.0.0.2", fmt.Sprint("guess-number-", i)); !errors.As(err, &uerr) || uerr.Status != 401 {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	var uerr *tunnel.UpgradeError
	err := upgrade("127.0.0.2", "the-right-one")
	if !errors.As(err, &uerr) || uerr.Status != 429 || !strings.Contains(uerr.Reason, "too many failed token attempts") {
		t.Fatalf("fourth attempt from the same address: %v", err)
	}
	if err := upgrade("127.0.0.3", "the-right-one"); err != nil {
		t.Fatalf("the right token from another address: %v", err)
	}
}

// Reserved names belong to their token, whether its agent is online or not;
// a token with patterns may claim only what they match, and gets random
// names that match; a token's tunnel count is capped.
func TestNameAuthorisation(t *testing.T) {
	rl := startRelay(t, "", withTokens(
		relay.Token{Name: "alice", Secret: "alice-secret-1", Reserved: []string{"alice"}},
		relay.Token{Name: "bob", Secret: "bob-secret-12", Names: []string{"bob-*"}, MaxTunnels: 2},
	))
	local := startLocal(t)
	tun := func(name string) []agent.Tunnel { return []agent.Tunnel{{Name: name, Local: local.addr}} }

	err := agentErr(t, rl.url(), tun("alice"), withToken("bob-secret-12"))
	if !errors.Is(err, proto.ErrNameNotAllowed) || !strings.Contains(err.Error(), `name "alice" is reserved for another token`) {
		t.Fatalf("bob claims alice's reserved name: %v", err)
	}
	err = agentErr(t, rl.url(), tun("carol"), withToken("bob-secret-12"))
	if !errors.Is(err, proto.ErrNameNotAllowed) || !strings.Contains(err.Error(), "may claim bob-*") {
		t.Fatalf("bob claims carol: %v", err)
	}
	startAgent(t, rl.url(), tun("alice"), withToken("alice-secret-1"))
	_, urls := startAgent(t, rl.url(), tun(""), withToken("bob-secret-12"))
	if !strings.HasPrefix(urls[0], "http://bob-") {
		t.Fatalf("bob's random name: %s", urls[0])
	}
	startAgent(t, rl.url(), tun("bob-two"), withToken("bob-secret-12"))
	err = agentErr(t, rl.url(), tun("bob-three"), withToken("bob-secret-12"))
	if !errors.Is(err, proto.ErrLimit) || !strings.Contains(err.Error(), "may hold 2 tunnels") {
		t.Fatalf("bob's third tunnel: %v", err)
	}
}

// The same token asking for a name its own stale session holds takes it
// over at once (a laptop that woke up before the relay noticed it left):
// the old session, frozen behind a stalled path, does not answer the
// relay's ping within 2 s.
func TestSameTokenReplacesStaleSession(t *testing.T) {
	rl := startRelay(t, "", withTokens(relay.Token{Name: "alice", Secret: "alice-secret-1"}))
	local := startLocal(t)
	tun := []agent.Tunnel{{Name: "demo", Local: local.addr}}
	path := startCutProxy(t, rl.addr)
	startAgent(t, rl.url(), tun, withToken("alice-secret-1"), dialVia(path),
		func(c *agent.Config) { c.MinBackoff, c.MaxBackoff = time.Hour, time.Hour })
	stalled := make(chan struct{})
	go func() { defer close(stalled); path.stall(6 * time.Second) }()
	defer func() { <-stalled }()
	time.Sleep(50 * time.Millisecond) // the stall has begun
	start := time.Now()
	startAgent(t, rl.url(), tun, withToken("alice-secret-1"))
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the new session waited %v for the name", d)
	}
	if status, body := get(t, visitorClient(rl.addr), "http://demo.localhost/x"); status != 200 || body != "GET /x" {
		t.Fatalf("demo after the takeover: %d %q", status, body)
	}
}

// Two live agents with the same token asking for the same name: the
// second is refused with a clear error instead of the two taking the name
// from each other for ever.
func TestSameTokenLiveAgentKeepsName(t *testing.T) {
	rl := startRelay(t, "", withTokens(relay.Token{Name: "alice", Secret: "alice-secret-1"}))
	local := startLocal(t)
	tun := []agent.Tunnel{{Name: "demo", Local: local.addr}}
	first, _ := startAgent(t, rl.url(), tun, withToken("alice-secret-1"))
	err := agentErr(t, rl.url(), tun, withToken("alice-secret-1"))
	if !errors.Is(err, proto.ErrNameTaken) || !strings.Contains(err.Error(), "still answers") {
		t.Fatalf("second agent with the same token: %v", err)
	}
	select {
	case err := <-first.offline:
		t.Fatalf("the first agent lost its session: %v", err)
	default:
	}
}

// Revoking a name disconnects its agent with a permanent error and frees
// the name at once.
func TestRevoke(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	ag, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	if !rl.Revoke("demo") {
		t.Fatal("Revoke found no name")
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
	if status, _ := get(t, visitorClient(rl.addr), "http://demo.localhost/"); status != 404 {
		t.Fatalf("revoked name answers %d", status)
	}
}

// Reloading tokens disconnects the agents whose token is gone, for good;
// the others keep their tunnels.
func TestSetTokens(t *testing.T) {
	rl := startRelay(t, "", withTokens(
		relay.Token{Name: "alice", Secret: "alice-secret-1"},
		relay.Token{Name: "bob", Secret: "bob-secret-12"},
	))
	local := startLocal(t)
	alice, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "a", Local: local.addr}}, withToken("alice-secret-1"))
	bob, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "b", Local: local.addr}}, withToken("bob-secret-12"))
	if err := rl.SetTokens(nil); err == nil {
		t.Fatal("SetTokens(nil) turned auth off")
	}
	if err := rl.SetTokens([]relay.Token{{Name: "bob", Secret: "bob-secret-12"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-alice.done:
		alice.done <- err
		if !errors.Is(err, proto.ErrUnauthorized) {
			t.Fatalf("alice after her token was removed: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("alice kept running")
	}
	select {
	case err := <-bob.offline:
		t.Fatalf("bob went offline: %v", err)
	default:
	}
	if status, _ := get(t, visitorClient(rl.addr), "http://b.localhost/"); status != 200 {
		t.Fatalf("bob's tunnel: %d", status)
	}
}

// Visitor rules set by the tunnel's owner: Basic auth and IP allow/deny,
// enforced at the relay for requests and WebSocket upgrades alike.
func TestVisitorRules(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{
		{Name: "private", Local: local.addr, Access: &agent.Access{BasicAuth: []agent.Credential{agent.BasicUser("tester", "pa55word")}}},
		{Name: "office", Local: local.addr, Access: &agent.Access{AllowIPs: []string{"127.0.0.2/32", "127.0.0.4"}, DenyIPs: []string{"127.0.0.4"}}},
	})
	from := func(ip string) *http.Client {
		return &http.Client{Transport: visitorTransport(rl.addr, &net.TCPAddr{IP: net.ParseIP(ip)})}
	}
	c := visitorClient(rl.addr)

	// Basic auth.
	req, _ := http.NewRequest("GET", "http://private.localhost/headers", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic realm=") {
		t.Fatalf("no credentials: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	req.SetBasicAuth("tester", "wrong")
	if resp, _ = c.Do(req); resp.StatusCode != 401 {
		t.Fatalf("wrong password: %d", resp.StatusCode)
	}
	resp.Body.Close()
	if status, body := get(t, c, "http://private.localhost/", "Authorization", "Basic dGVzdGVyOnBhNTV3b3Jk"); status != 200 || body != "GET /" {
		t.Fatalf("right credentials: %d %q", status, body)
	}
	if !strings.Contains(local.seen(), "/") {
		t.Fatal("local server saw nothing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, resp, err := websocket.Dial(ctx, "ws://private.localhost/ws", &websocket.DialOptions{HTTPClient: c}); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("WebSocket without credentials: %v %v", resp, err)
	}

	// IP rules: 127.0.0.2 allowed, 127.0.0.3 not listed, 127.0.0.4 allowed but denied.
	for ip, want := range map[string]int{"127.0.0.2": 200, "127.0.0.3": 403, "127.0.0.4": 403} {
		status, body := get(t, from(ip), "http://office.localhost/")
		if status != want {
			t.Errorf("visitor %s: %d, want %d", ip, status, want)
		}
		if want == 403 && !strings.Contains(body, "does not admit visitors from your address ("+ip+")") {
			t.Errorf("visitor %s: %q", ip, body)
		}
	}
	if _, resp, err := websocket.Dial(ctx, "ws://office.localhost/ws", &websocket.DialOptions{HTTPClient: from("127.0.0.3")}); err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("WebSocket from a refused address: %v %v", resp, err)
	}
	ws, _, err := websocket.Dial(ctx, "ws://office.localhost/ws", &websocket.DialOptions{HTTPClient: from("127.0.0.2")})
	if err != nil {
		t.Fatalf("WebSocket from an allowed address: %v", err)
	}
	ws.Close(websocket.StatusNormalClosure, "")
}

// Wrong Basic auth credentials are limited per visitor address like token
// guesses: over the limit the address gets 429 even with the right
// password, while a browser's first request without credentials does not
// count and another address is not slowed.
func TestVisitorPasswordGuessesRateLimited(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) { c.Limits.AuthFailuresPerMinute = 3 })
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{
		{Name: "private", Local: local.addr, Access: &agent.Access{BasicAuth: []agent.Credential{agent.BasicUser("tester", "pa55word")}}},
	})
	from := func(ip string) *http.Client {
		return &http.Client{Transport: visitorTransport(rl.addr, &net.TCPAddr{IP: net.ParseIP(ip)})}
	}
	right := basicAuth("tester", "pa55word")
	guesser := from("127.0.0.2")
	for range 5 {
		if status, _ := get(t, guesser, "http://private.localhost/"); status != 401 {
			t.Fatalf("no credentials: %d", status)
		}
	}
	for i := range 3 {
		if status, _ := get(t, guesser, "http://private.localhost/", "Authorization", basicAuth("tester", fmt.Sprint("guess-", i))); status != 401 {
			t.Fatalf("wrong credentials %d: %d", i, status)
		}
	}
	status, body := get(t, guesser, "http://private.localhost/", "Authorization", right)
	if status != 429 || !strings.Contains(body, "Too many wrong user names or passwords for private.localhost") {
		t.Fatalf("right credentials after 3 wrong ones: %d %q", status, body)
	}
	if status, body := get(t, from("127.0.0.3"), "http://private.localhost/", "Authorization", right); status != 200 || body != "GET /" {
		t.Fatalf("right credentials from another address: %d %q", status, body)
	}
}

// basicAuth is an Authorization header's value for user and password.
func basicAuth(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// Bad visitor rules are refused by the relay with the rule named.
func TestVisitorRulesValidated(t *testing.T) {
	rl := startRelay(t, "")
	err := rawHello(t, rl.url(), &proto.Hello{Version: proto.Version, Tunnels: []proto.TunnelRequest{
		{Name: "demo", Access: &proto.Access{AllowIPs: []string{"10.0.0.0/33"}}},
	}})
	if !errors.Is(err, proto.ErrBadRequest) || !strings.Contains(err.Error(), `--allow-ip "10.0.0.0/33" is not an address or a CIDR prefix`) {
		t.Fatalf("bad CIDR: %v", err)
	}
}

// The relay refuses to be a proxy: CONNECT and absolute-form requests.
func TestNotAProxy(t *testing.T) {
	rl := startRelay(t, "")
	for _, req := range []string{
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
	} {
		c, err := net.Dial("tcp", rl.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, req)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		c.Close()
		if (resp.StatusCode != 405 && resp.StatusCode != 400) || !strings.Contains(string(body), "not a proxy") {
			t.Errorf("%q: %d %q", strings.SplitN(req, "\r\n", 2)[0], resp.StatusCode, body)
		}
	}
}

// Edge limits answer clearly: a local server that sends no headers in time
// gets the visitor a 504; too many connections at once to one tunnel get a
// 503 with Retry-After and the reason.
func TestEdgeLimits(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) {
		c.Limits.ResponseHeaderTimeout = 300 * time.Millisecond
		c.Limits.MaxStreamsPerTunnel = 2
		c.OpenTimeout = 500 * time.Millisecond
	})
	release := make(chan struct{})
	entered := make(chan struct{}, 10)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	slow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})}
	go slow.Serve(ln)
	defer slow.Close()
	defer close(release)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "slow", Local: ln.Addr().String()}})

	status, body := get(t, visitorClient(rl.addr), "http://slow.localhost/")
	if status != 504 || !strings.Contains(body, "sent no response headers within 300ms") {
		t.Fatalf("slow local server: %d %q", status, body)
	}
	<-entered

	// Two visitors hold both stream slots of the tunnel (headers pending,
	// below the 300 ms timeout they are about to hit, so use their own
	// connections and keep them busy with fresh requests).
	rl2 := startRelay(t, "", func(c *relay.Config) {
		c.Limits.MaxStreamsPerTunnel = 2
		c.OpenTimeout = 500 * time.Millisecond
	})
	startAgent(t, rl2.url(), []agent.Tunnel{{Name: "slow", Local: ln.Addr().String()}})
	for i := range 2 {
		go func() {
			c := &http.Client{Transport: visitorTransport(rl2.addr, &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.0.%d", 10+i))})}
			resp, err := c.Get("http://slow.localhost/")
			if err == nil {
				resp.Body.Close()
			}
		}()
		<-entered
	}
	req, _ := http.NewRequest("GET", "http://slow.localhost/", nil)
	resp, err := visitorClient(rl2.addr).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "2 connections open at once, the relay's limit per tunnel") {
		t.Fatalf("third connection: %d %q %q", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
}

// A tunnel's slots held only by streams kept idle for visitors' next
// requests (browsers keep their connections) give way: a new WebSocket
// or request gets one at once, and the longest idle stream is closed for
// it. Its visitor's next request opens a new stream.
func TestIdleKeptStreamsYieldTheirSlots(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) {
		c.Limits.MaxStreamsPerTunnel = 3
		c.OpenTimeout = 2 * time.Second
	})
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	var clients []*http.Client
	for i := range 3 { // three visitors load a page and keep their connections
		c := &http.Client{Transport: visitorTransport(rl.addr, &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.0.%d", 20+i))})}
		defer c.CloseIdleConnections()
		if status, _ := get(t, c, "http://demo.localhost/"); status != 200 {
			t.Fatalf("visitor %d: %d", i, status)
		}
		clients = append(clients, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	ws, err := dialWS(ctx, rl.addr, "ws://demo.localhost/ws")
	if err != nil {
		t.Fatalf("WebSocket while the tunnel's 3 slots hold idle kept streams: %v after %v", err, time.Since(start).Round(time.Millisecond))
	}
	defer ws.CloseNow()
	// The WebSocket holds one slot; the visitors' kept streams, or new
	// ones in place of an evicted one, serve them still.
	for i, c := range clients {
		if status, _ := get(t, c, "http://demo.localhost/"); status != 200 {
			t.Errorf("visitor %d after the WebSocket: %d", i, status)
		}
	}
}

// More visitors at once than the tunnel has slots queue for them, and
// every one is answered: a request that ends gives its slot to one that
// waits, rather than keeping its stream for its visitor's next request.
func TestQueuedRequestsGetSlotsOfFinishedOnes(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) {
		c.Limits.MaxStreamsPerTunnel = 5
		c.OpenTimeout = 10 * time.Second
	})
	local := serveHandler(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(200 * time.Millisecond)
		io.WriteString(w, "done")
	})
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local}})
	// 25 visitors, each on a connection of its own that it keeps open (a
	// browser would): five rounds of 200 ms through five slots, well
	// inside the 10 s each may wait.
	var wg sync.WaitGroup
	statuses := make(chan int, 25)
	for i := range 25 {
		c := &http.Client{Transport: visitorTransport(rl.addr, &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.0.%d", 30+i))})}
		defer c.CloseIdleConnections()
		wg.Go(func() {
			status, _ := get(t, c, "http://demo.localhost/")
			statuses <- status
		})
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("a visitor got %d, want every one answered", s)
		}
	}
}

// Run refuses to serve an open relay beyond loopback unless told to.
func TestRunRefusesOpenRelay(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := relay.Run(ctx, relay.Config{Domain: "example.com", Addr: "0.0.0.0:0", Logger: testLogger(t)}, nil)
	if err == nil || !strings.Contains(err.Error(), "--allow-no-auth") {
		t.Fatalf("open relay on 0.0.0.0: %v", err)
	}
}

// An agent authenticated (at the upgrade) just before a reload that leaves
// its token as it was, e.g. one that adds a token for someone else, and
// sends its hello after it. Its token still owns the reserved name; the
// claim must not refuse it as "reserved for another token", a permanent
// error that stops the agent for good.
func TestReloadDuringHandshakeKeepsReservedName(t *testing.T) {
	alice := relay.Token{Name: "alice", Secret: "alice-secret-0123", Reserved: []string{"alice"}}
	rl := startRelay(t, "", func(c *relay.Config) { c.Tokens = []relay.Token{alice} })
	u, _ := url.Parse(rl.url())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := tunnel.DialControl(ctx, u, tunnel.DialOptions{Token: alice.Secret})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := tunnel.Client(conn, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	// The reload: alice's token unchanged, bob's added.
	if err := rl.SetTokens([]relay.Token{alice, {Name: "bob", Secret: "bob-secret-01234"}}); err != nil {
		t.Fatal(err)
	}
	ctrl, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	ctrl.SetDeadline(time.Now().Add(10 * time.Second))
	hello := &proto.Hello{Version: proto.Version, Tunnels: []proto.TunnelRequest{{Name: "alice"}}}
	if err := proto.WriteMessage(ctrl, hello); err != nil {
		t.Fatal(err)
	}
	if _, err := proto.ReadAs[*proto.Welcome](ctrl); err != nil {
		t.Fatalf("alice's agent claiming its reserved name after a reload: %v", err)
	}
}

// An open relay locked down by a reload (the config file gains its first
// tokens): the agents that connected without a token have no token in the
// new set, so they are disconnected like agents whose token was removed,
// rather than keeping their names for as long as they stay connected.
func TestFirstTokensDisconnectAnonymousAgents(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	anon, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "squat", Local: local.addr}})
	if err := rl.SetTokens([]relay.Token{{Name: "alice", Secret: "alice-secret-0123"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-anon.done:
		anon.done <- err
		if !errors.Is(err, proto.ErrUnauthorized) {
			t.Fatalf("anonymous agent after the lock-down: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the anonymous agent kept running after the relay required tokens")
	}
	if status, _ := get(t, visitorClient(rl.addr), "http://squat.localhost/"); status != http.StatusNotFound {
		t.Fatalf("the anonymous agent's name answers %d after the lock-down", status)
	}
}

// A token is its secret, not its name: a token without one is "token-N"
// by its place in the file, so removing or reordering tokens before it
// changes its name. Its agents keep running, and a name held for one
// token's disconnected agent does not pass to another token.
func TestUnnamedTokensKeepTheirAgentsAcrossReloads(t *testing.T) {
	const secretA, secretB = "aaaa-secret-0123456789", "bbbb-secret-0123456789"
	local := startLocal(t)

	// Removing the first of two unnamed tokens leaves the second's agent.
	rl := startRelay(t, "", withTokens(relay.Token{Secret: secretA}, relay.Token{Secret: secretB}))
	bee, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "bee", Local: local.addr}}, withToken(secretB))
	if err := rl.SetTokens([]relay.Token{{Secret: secretB}}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-bee.offline:
		t.Fatalf("the agent of a token still there was disconnected: %v", err)
	case err := <-bee.done:
		bee.done <- err
		t.Fatalf("the agent of a token still there was stopped: %v", err)
	case <-time.After(2 * time.Second):
	}
	if status, _ := get(t, visitorClient(rl.addr), "http://bee.localhost/"); status != 200 {
		t.Fatalf("its tunnel after the reload: %d", status)
	}

	// Reordering: a name held for A's disconnected agent stays A's.
	rl = startRelay(t, "", withTokens(relay.Token{Secret: secretA}, relay.Token{Secret: secretB}))
	agentSecret := strings.Repeat("a", 32)
	hello := &proto.Hello{Version: proto.Version, Secret: agentSecret, Tunnels: []proto.TunnelRequest{{Name: "ann"}}}
	sess, _, err := helloWith(t, rl.url(), secretA, hello)
	if err != nil {
		t.Fatal(err)
	}
	sess.Close() // A's agent drops: "ann" is held for it
	waitFor(t, 5*time.Second, "ann held", func() bool {
		ts := rl.Tunnels()
		return len(ts) == 1 && ts[0].State == "held"
	})
	if err := rl.SetTokens([]relay.Token{{Secret: secretB}, {Secret: secretA}}); err != nil {
		t.Fatal(err)
	}
	sess, _, err = helloWith(t, rl.url(), secretB, &proto.Hello{Version: proto.Version, Secret: strings.Repeat("b", 32), Tunnels: []proto.TunnelRequest{{Name: "ann"}}})
	if err == nil {
		sess.Close()
		t.Error("token B took the name held for token A's disconnected agent")
	}
	sess, _, err = helloWith(t, rl.url(), secretA, hello)
	if err != nil {
		t.Errorf("A's agent reconnecting within the grace with its own secret: %v", err)
	} else {
		sess.Close()
	}
}

// An agent whose first Welcome was lost asks again with the same secret
// for a random name: it gets the one held for it, which does not count a
// second time against its token's max_tunnels (it used to be a permanent
// 'limit' refusal, and below the limit a second name).
func TestRandomNameAfterLostWelcome(t *testing.T) {
	const secret = "aaaa-secret-0123456789"
	rl := startRelay(t, "", withTokens(relay.Token{Name: "alice", Secret: secret, MaxTunnels: 1}))
	hello := &proto.Hello{Version: proto.Version, Secret: strings.Repeat("c", 48), Tunnels: []proto.TunnelRequest{{}}}
	sess, _, err := helloWith(t, rl.url(), secret, hello)
	if err != nil {
		t.Fatal(err)
	}
	sess.Close() // as if the Welcome never reached the agent
	waitFor(t, 5*time.Second, "name held", func() bool {
		ts := rl.Tunnels()
		return len(ts) == 1 && ts[0].State == "held"
	})
	held := rl.Tunnels()[0].Name
	sess, w, err := helloWith(t, rl.url(), secret, hello)
	if err != nil {
		t.Fatalf("the retry after a lost Welcome: %v", err)
	}
	defer sess.Close()
	if w.Tunnels[0].Name != held {
		t.Errorf("got %s, the one held for it was %s", w.Tunnels[0].Name, held)
	}
}
