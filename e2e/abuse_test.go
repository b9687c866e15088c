package e2e

// Abuse resistance, seen from a hostile visitor: request smuggling through
// Upgrade, cross-tunnel traffic on one connection, proxy requests, huge
// headers, slowloris and half-open connections, and the per-IP connection
// rate. Everything runs on loopback; every loop is bounded in count and
// time.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// rawLocal is a tunnel's local server that parses requests straight off its
// TCP connections with http.ReadRequest and records every one. Bytes the
// relay forwarded raw (a smuggled request after an upgrade that did not
// happen) show up here as an extra request, or as "garbage" when they do
// not parse; a Go http.Server could hide them.
type rawLocal struct {
	name string
	ln   net.Listener
	// onUpgrade, if set, is the raw response to requests that carry an
	// Upgrade header (to every request with switchAll); the others get
	// status.
	onUpgrade string
	switchAll bool
	status    int

	wg     sync.WaitGroup
	active atomic.Int64 // connections still open

	mu    sync.Mutex
	reqs  []string // one line per request: "GET /path host=… upgrade=… h2settings=…"
	conns map[net.Conn]bool
}

func startRawLocal(t testing.TB, name string, status int, onUpgrade string) *rawLocal {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &rawLocal{name: name, ln: ln, status: status, onUpgrade: onUpgrade, conns: make(map[net.Conn]bool)}
	l.wg.Go(l.accept)
	t.Cleanup(l.close)
	return l
}

func (l *rawLocal) addr() string { return l.ln.Addr().String() }

func (l *rawLocal) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		l.conns[c] = true
		l.mu.Unlock()
		l.active.Add(1)
		l.wg.Go(func() {
			defer func() {
				c.Close()
				l.mu.Lock()
				delete(l.conns, c)
				l.mu.Unlock()
				l.active.Add(-1)
			}()
			l.serve(c)
		})
	}
}

// serve reads requests off c until it ends; at most 1,000 per connection.
func (l *rawLocal) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for range 1000 {
		req, err := http.ReadRequest(br)
		if err != nil {
			var ne net.Error
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.As(err, &ne) {
				l.record(fmt.Sprintf("garbage: %v", err))
			}
			return
		}
		n, err := io.Copy(io.Discard, req.Body)
		rec := fmt.Sprintf("%s %s host=%s upgrade=%s h2settings=%s", req.Method, req.URL.RequestURI(), req.Host,
			req.Header.Get("Upgrade"), req.Header.Get("HTTP2-Settings"))
		if n > 0 || err != nil {
			rec += fmt.Sprintf(" body=%d err=%v", n, err)
		}
		l.record(rec)
		if l.onUpgrade != "" && (l.switchAll || req.Header.Get("Upgrade") != "") {
			// Keep reading after the answer: whatever the relay forwards
			// next on this connection is recorded.
			io.WriteString(c, l.onUpgrade)
			continue
		}
		body := fmt.Sprintf("%s %s %s", l.name, req.Method, req.URL.RequestURI())
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
			l.status, http.StatusText(l.status), len(body), body)
	}
}

func (l *rawLocal) record(s string) {
	l.mu.Lock()
	l.reqs = append(l.reqs, s)
	l.mu.Unlock()
}

// seen returns the requests recorded so far.
func (l *rawLocal) seen() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.reqs)
}

func (l *rawLocal) close() {
	l.ln.Close()
	l.mu.Lock()
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// abuseDial opens a raw TCP connection to addr, from local if not nil, with
// an overall deadline so no read in a test can hang.
func abuseDial(t testing.TB, addr string, local net.Addr) net.Conn {
	t.Helper()
	c, err := (&net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(15 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// readResp reads one response from br and its whole body.
func readResp(br *bufio.Reader) (*http.Response, string, error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

// roundTrip writes raw on c and reads one response.
func roundTrip(t testing.TB, c net.Conn, br *bufio.Reader, raw string) (int, string) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatalf("write %.40q: %v", raw, err)
	}
	resp, body, err := readResp(br)
	if err != nil {
		t.Fatalf("response to %.40q: %v", raw, err)
	}
	return resp.StatusCode, body
}

func loopback(n int) *net.TCPAddr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(n))} }

// Request smuggling through Upgrade. A visitor sends, in one write, a
// WebSocket upgrade for alpha followed by a complete request for beta. If
// the relay switched to a byte pipe without a real 101 for a WebSocket, the
// second request would reach alpha's local server raw, past the relay's
// routing and rules. Whatever alpha's server answers (200, 404, a 101 to
// another protocol, or a 101 to an h2c request the relay stripped), alpha's
// server sees exactly one request, and the second one is answered by beta
// or the connection is closed — never routed to alpha.
func TestAbuseUpgradeSmuggling(t *testing.T) {
	const wsReq = "GET /ws HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	const h2cReq = "GET /h2c HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" +
		"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
	const smuggled = "GET /smuggled HTTP/1.1\r\nHost: beta.localhost\r\n\r\n"
	const switchWS = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
	const switchH2C = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
	for _, tc := range []struct {
		name      string
		first     string // the upgrade request for alpha
		status    int    // alpha's answer to ordinary requests
		onUpgrade string // alpha's raw answer to upgrade requests ("" = status)
		switchAll bool   // alpha sends onUpgrade to every request
		want      int    // what the visitor gets for the first request
		alphaSees string // alpha's one record
	}{
		{"websocket answered 200", wsReq, 200, "", false, 200, "GET /ws host=alpha.localhost upgrade=websocket h2settings="},
		{"websocket answered 404", wsReq, 404, "", false, 404, "GET /ws host=alpha.localhost upgrade=websocket h2settings="},
		{"websocket answered 101 h2c", wsReq, 200, switchH2C, false, 502, "GET /ws host=alpha.localhost upgrade=websocket h2settings="},
		// The relay strips h2c, so alpha sees a plain request; its 101
		// anyway must not open a pipe either.
		{"h2c stripped, answered 101", h2cReq, 200, switchWS, true, 502, "GET /h2c host=alpha.localhost upgrade= h2settings="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alpha := startRawLocal(t, "alpha", tc.status, tc.onUpgrade)
			alpha.switchAll = tc.switchAll
			beta := startRawLocal(t, "beta", 200, "")
			rl := startRelay(t, "")
			agA, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "alpha", Local: alpha.addr()}})
			agB, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "beta", Local: beta.addr()}})

			c := abuseDial(t, rl.addr, nil)
			if _, err := io.WriteString(c, tc.first+smuggled); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, body, err := readResp(br)
			if err != nil {
				t.Fatalf("first response: %v", err)
			}
			if resp.StatusCode != tc.want {
				t.Fatalf("first request: %d %q, want %d", resp.StatusCode, body, tc.want)
			}
			if tc.want != 502 && body != "alpha GET "+strings.Fields(tc.first)[1] {
				t.Fatalf("first request answered by %q", body)
			}
			// The second request: answered for beta, or the connection
			// ends. A timeout would mean the relay holds it somewhere.
			resp, body, err = readResp(br)
			switch {
			case err != nil && isTimeoutErr(err):
				t.Fatalf("second request neither answered nor closed: %v", err)
			case err != nil:
				t.Logf("second request: connection closed (%v)", err)
			case resp.StatusCode != 200 || body != "beta GET /smuggled":
				t.Fatalf("second request answered %d %q, want beta's answer", resp.StatusCode, body)
			default:
				t.Logf("second request: answered by beta")
			}
			c.Close()

			// Stop the agents: their streams close, so alpha's server has
			// read everything the relay ever sent it once its connections
			// are gone.
			agA.stop()
			agB.stop()
			waitFor(t, 10*time.Second, "local connections to close", func() bool {
				return alpha.active.Load() == 0 && beta.active.Load() == 0
			})
			if got := alpha.seen(); len(got) != 1 || got[0] != tc.alphaSees {
				t.Fatalf("alpha's local server saw %q, want exactly [%q]", got, tc.alphaSees)
			}
			for _, r := range beta.seen() {
				if r != "GET /smuggled host=beta.localhost upgrade= h2settings=" {
					t.Fatalf("beta's local server saw %q", r)
				}
			}
		})
	}
}

// Request smuggling through body framing. A request carrying both
// Content-Length and Transfer-Encoding, two different Content-Lengths, or
// an unknown transfer coding, with a request for beta hidden after it in
// the same write: whatever the relay makes of it, it re-frames what it
// forwards, so alpha's local server sees at most the one request for alpha
// (never a request for beta, never unparsable bytes), and beta's sees at
// most the hidden request, through the relay's routing.
func TestAbuseBodyFramingSmuggling(t *testing.T) {
	// The hidden request asks the relay to close after it, so a visitor
	// that got its answer need not wait for a timeout.
	const hidden = "GET /smuggled HTTP/1.1\r\nHost: beta.localhost\r\nConnection: close\r\n\r\n"
	n := fmt.Sprint(len(hidden))
	for _, tc := range []struct{ name, req string }{
		{"CL.TE", "POST /x HTTP/1.1\r\nHost: alpha.localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden},
		{"TE.CL", "POST /x HTTP/1.1\r\nHost: alpha.localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: " + n + "\r\n\r\n0\r\n\r\n" + hidden},
		{"two lengths", "POST /x HTTP/1.1\r\nHost: alpha.localhost\r\nContent-Length: 0\r\nContent-Length: " + n + "\r\n\r\n" + hidden},
		{"obfuscated TE", "POST /x HTTP/1.1\r\nHost: alpha.localhost\r\nTransfer-Encoding: xchunked\r\nContent-Length: " + n + "\r\n\r\n" + hidden},
		{"body holds a request", "POST /x HTTP/1.1\r\nHost: alpha.localhost\r\nContent-Length: " + n + "\r\n\r\n" + hidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alpha := startRawLocal(t, "alpha", 200, "")
			beta := startRawLocal(t, "beta", 200, "")
			rl := startRelay(t, "")
			agA, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "alpha", Local: alpha.addr()}})
			agB, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "beta", Local: beta.addr()}})

			c := abuseDial(t, rl.addr, nil)
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			var got []string
			for range 3 {
				resp, body, err := readResp(br)
				if err != nil {
					if isTimeoutErr(err) && len(got) == 0 {
						t.Fatalf("no answer and no close: %v", err)
					}
					break
				}
				got = append(got, fmt.Sprintf("%d %q", resp.StatusCode, body))
				// A further answer comes at once if at all.
				c.SetReadDeadline(time.Now().Add(time.Second))
			}
			c.Close()
			t.Logf("visitor got %s", strings.Join(got, ", "))
			agA.stop()
			agB.stop()
			waitFor(t, 10*time.Second, "local connections to close", func() bool {
				return alpha.active.Load() == 0 && beta.active.Load() == 0
			})
			if a := alpha.seen(); len(a) > 1 || (len(a) == 1 && !strings.HasPrefix(a[0], "POST /x host=alpha.localhost ")) {
				t.Errorf("alpha's local server saw %q", a)
			}
			for _, r := range beta.seen() {
				if r != "GET /smuggled host=beta.localhost upgrade= h2settings=" {
					t.Errorf("beta's local server saw %q", r)
				}
			}
			t.Logf("alpha saw %q; beta saw %q", alpha.seen(), beta.seen())
		})
	}
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Several tunnels on one visitor connection. Over plain HTTP, requests for
// alpha, beta, alpha, beta on one keep-alive connection — one at a time,
// then all four pipelined in one write — each reach their own tunnel's
// local server: the relay pools streams per tunnel and visitor, never per
// connection. Over TLS, a request for beta on a connection opened for the
// server name alpha gets 421 and reaches neither local server, over
// HTTP/1.1 and HTTP/2 alike.
func TestAbuseCrossHostKeepAlive(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		alpha := startRawLocal(t, "alpha", 200, "")
		beta := startRawLocal(t, "beta", 200, "")
		rl := startRelay(t, "")
		startAgent(t, rl.url(), []agent.Tunnel{{Name: "alpha", Local: alpha.addr()}})
		startAgent(t, rl.url(), []agent.Tunnel{{Name: "beta", Local: beta.addr()}})

		c := abuseDial(t, rl.addr, nil)
		br := bufio.NewReader(c)
		reqFor := func(host, path string) string {
			return fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s.localhost\r\n\r\n", path, host)
		}
		seq := []struct{ host, path string }{{"alpha", "/1"}, {"beta", "/2"}, {"alpha", "/3"}, {"beta", "/4"}}
		for _, r := range seq {
			status, body := roundTrip(t, c, br, reqFor(r.host, r.path))
			if want := r.host + " GET " + r.path; status != 200 || body != want {
				t.Fatalf("%s%s: %d %q, want %q", r.host, r.path, status, body, want)
			}
		}
		var all string
		for _, r := range seq {
			all += reqFor(r.host, r.path+"p")
		}
		if _, err := io.WriteString(c, all); err != nil {
			t.Fatal(err)
		}
		for _, r := range seq {
			resp, body, err := readResp(br)
			if err != nil {
				t.Fatalf("pipelined %s%sp: %v", r.host, r.path, err)
			}
			if want := r.host + " GET " + r.path + "p"; resp.StatusCode != 200 || body != want {
				t.Fatalf("pipelined %s%sp: %d %q, want %q", r.host, r.path, resp.StatusCode, body, want)
			}
		}
		for _, l := range []*rawLocal{alpha, beta} {
			for _, r := range l.seen() {
				if !strings.Contains(r, "host="+l.name+".localhost") {
					t.Errorf("%s's local server saw %q", l.name, r)
				}
			}
			if n := len(l.seen()); n != 4 {
				t.Errorf("%s's local server saw %d requests, want 4: %q", l.name, n, l.seen())
			}
		}
	})

	t.Run("tls", func(t *testing.T) {
		alpha := startRawLocal(t, "alpha", 200, "")
		beta := startRawLocal(t, "beta", 200, "")
		rl := startTLSRelay(t)
		relayURL := "https://localhost:" + port(rl.addr)
		startAgent(t, relayURL, []agent.Tunnel{{Name: "alpha", Local: alpha.addr()}}, agentTLS(rl.ca, rl.addr))
		startAgent(t, relayURL, []agent.Tunnel{{Name: "beta", Local: beta.addr()}}, agentTLS(rl.ca, rl.addr))

		// HTTP/1.1: alpha, then beta (421), then alpha again on the same
		// connection.
		raw, err := (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", rl.addr)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, rl.ca.tlsClientConfig("alpha.localhost"))
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		br := bufio.NewReader(c)
		for _, r := range []struct {
			host, path string
			status     int
		}{{"alpha", "/1", 200}, {"beta", "/x", 421}, {"alpha", "/2", 200}} {
			status, body := roundTrip(t, c, br, fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s.localhost\r\n\r\n", r.path, r.host))
			if status != r.status {
				t.Fatalf("%s%s on alpha's connection: %d %q, want %d", r.host, r.path, status, body, r.status)
			}
			if status == 421 && !strings.Contains(body, "opened for alpha.localhost, not beta.localhost") {
				t.Fatalf("421 says %q", body)
			}
		}

		// HTTP/2, as a browser coalescing connections under the wildcard
		// certificate would: server name alpha, request for beta.
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, rl.addr)
			},
			TLSClientConfig:   rl.ca.tlsClientConfig("alpha.localhost"),
			ForceAttemptHTTP2: true,
		}
		defer tr.CloseIdleConnections()
		h2 := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, err := h2.Get("https://beta.localhost/h2")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != 421 {
			t.Fatalf("HTTP/2 request for beta on alpha's connection: %s %d %q", resp.Proto, resp.StatusCode, body)
		}

		// Beta is reachable on a connection of its own.
		if status, body := get(t, httpsClient(rl.ca, rl.addr, false), "https://beta.localhost/own"); status != 200 || body != "beta GET /own" {
			t.Fatalf("beta on its own connection: %d %q", status, body)
		}
		if got := alpha.seen(); len(got) != 2 || !strings.HasPrefix(got[0], "GET /1 ") || !strings.HasPrefix(got[1], "GET /2 ") {
			t.Errorf("alpha's local server saw %q, want /1 and /2", got)
		}
		if got := beta.seen(); len(got) != 1 || !strings.HasPrefix(got[0], "GET /own ") {
			t.Errorf("beta's local server saw %q, want only /own", got)
		}
	})
}

// The relay is not a proxy. Absolute-form requests get 400 and CONNECT gets
// 405, each saying the relay is not a proxy — for a foreign host, for a
// listener on the relay's own machine, and for a tunnel's own name alike.
// Neither the would-be target (a listener that counts connections) nor the
// tunnel's local server sees anything: the relay dials nowhere on a
// visitor's behalf.
func TestAbuseNotAProxy(t *testing.T) {
	canary, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var dialed atomic.Int64
	var cwg sync.WaitGroup
	cwg.Go(func() {
		for {
			c, err := canary.Accept()
			if err != nil {
				return
			}
			dialed.Add(1)
			c.Close()
		}
	})
	defer func() { canary.Close(); cwg.Wait() }()
	target := canary.Addr().String()

	alpha := startRawLocal(t, "alpha", 200, "")
	rl := startRelay(t, "")
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "alpha", Local: alpha.addr()}})

	for _, tc := range []struct {
		req  string
		want int
	}{
		{"GET http://" + target + "/ HTTP/1.1\r\nHost: " + target + "\r\n\r\n", 400},
		{"GET http://other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n", 400},
		{"GET http://alpha.localhost/abs HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n", 400},
		{"POST http://" + target + "/ HTTP/1.1\r\nHost: alpha.localhost\r\nContent-Length: 2\r\n\r\nhi", 400},
		{"CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n", 405},
		{"CONNECT alpha.localhost:80 HTTP/1.1\r\nHost: alpha.localhost:80\r\n\r\n", 405},
		{"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n", 405},
	} {
		c := abuseDial(t, rl.addr, nil)
		status, body := roundTrip(t, c, bufio.NewReader(c), tc.req)
		c.Close()
		if status != tc.want || !strings.Contains(body, "not a proxy") {
			t.Errorf("%q: %d %q, want %d saying not a proxy", strings.SplitN(tc.req, "\r\n", 2)[0], status, body, tc.want)
		}
	}
	// A Host header naming another server is not a proxy request either:
	// the relay answers it itself.
	c := abuseDial(t, rl.addr, nil)
	if status, body := roundTrip(t, c, bufio.NewReader(c), "GET /x HTTP/1.1\r\nHost: "+target+"\r\n\r\n"); status != 404 {
		t.Errorf("Host %s: %d %q, want the relay's 404", target, status, body)
	}
	if n := dialed.Load(); n != 0 {
		t.Errorf("the would-be proxy target got %d connections", n)
	}
	if got := alpha.seen(); len(got) != 0 {
		t.Errorf("alpha's local server saw %q", got)
	}
	// Sanity: alpha is reachable the ordinary way.
	if status, body := get(t, visitorClient(rl.addr), "http://alpha.localhost/ok"); status != 200 || body != "alpha GET /ok" {
		t.Fatalf("ordinary request: %d %q", status, body)
	}
}

// Request headers beyond the relay's 64 KiB limit get 431 and never reach
// the agent — one huge header or many small ones; 60 KiB still pass.
func TestAbuseHeaderLimit(t *testing.T) {
	alpha := startRawLocal(t, "alpha", 200, "")
	rl := startRelay(t, "")
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "alpha", Local: alpha.addr()}})

	var many strings.Builder
	for i := range 2000 { // 2,000 × ~40 bytes = ~80 KB
		fmt.Fprintf(&many, "X-Header-%04d: %s\r\n", i, strings.Repeat("v", 24))
	}
	for _, tc := range []struct {
		name, headers string
		want          int
	}{
		{"one 72 KiB header", "X-Big: " + strings.Repeat("a", 72<<10) + "\r\n", 431},
		{"2,000 headers", many.String(), 431},
		{"one 60 KiB header", "X-Big: " + strings.Repeat("a", 60<<10) + "\r\n", 200},
	} {
		c := abuseDial(t, rl.addr, nil)
		br := bufio.NewReader(c)
		// The relay may stop reading before the end: write in the
		// background so a full socket buffer cannot block the test.
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			io.WriteString(c, "GET /big HTTP/1.1\r\nHost: alpha.localhost\r\n"+tc.headers+"\r\n")
		}()
		resp, body, err := readResp(br)
		c.Close()
		<-wrote
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d %.80q, want %d", tc.name, resp.StatusCode, body, tc.want)
		}
	}
	if got := alpha.seen(); len(got) != 1 {
		t.Errorf("alpha's local server saw %d requests, want only the 60 KiB one", len(got))
	}
}

// Slowloris and half-open connections. 200 connections dribble a request
// header one byte every 500 ms and 2,000 more connect and send nothing,
// from 127.0.0.2–127.0.0.9. Meanwhile a visitor makes 200 sequential
// requests, each on a new connection (so the relay must keep accepting):
// all succeed. The relay closes every attacking connection within its
// 10 s read-header timeout, and afterwards goroutines and heap return near
// their baseline. Latency under attack is logged next to a baseline
// measured just before, not asserted.
func TestAbuseSlowlorisAndHalfOpen(t *testing.T) {
	if testing.Short() {
		t.Skip("holds 2,200 connections for the relay's 10 s read-header timeout")
	}
	const (
		slowN      = 200
		halfOpenN  = 2000
		requests   = 200
		headerWait = 10 * time.Second // the relay's read-header timeout
		slack      = 5 * time.Second
	)
	rl := startRelay(t, "")
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})

	tr := visitorTransport(rl.addr, nil)
	tr.DisableKeepAlives = true
	defer tr.CloseIdleConnections()
	visitor := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	measure := func(phase string) []time.Duration {
		lat := make([]time.Duration, 0, requests)
		for i := range requests {
			start := time.Now()
			resp, err := visitor.Get(fmt.Sprintf("http://demo.localhost/%s/%d", phase, i))
			if err != nil {
				t.Fatalf("%s request %d: %v", phase, i, err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || string(b) != fmt.Sprintf("GET /%s/%d", phase, i) {
				t.Fatalf("%s request %d: %d %q %v", phase, i, resp.StatusCode, b, err)
			}
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		return lat
	}
	stats := func(lat []time.Duration) string {
		return fmt.Sprintf("median %v, p99 %v, max %v", lat[len(lat)/2].Round(10*time.Microsecond),
			lat[len(lat)*99/100].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
	}
	// heap returns the heap's in-use spans (what the bound is on) and its
	// live objects, after two collections: the first only moves sync.Pool
	// contents (the HTTP server's pooled bufio buffers) to the victim cache.
	heap := func() (inUse, live uint64) {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse, m.HeapAlloc
	}

	measure("warmup")
	base := measure("base")
	baseG := runtime.NumGoroutine()
	baseHeap, baseLive := heap()

	// The attack. Each connection has a reader that records when the
	// relay closes it; its deadline bounds the test if the relay never does.
	type attacker struct {
		c      net.Conn
		dialed time.Time
		closed time.Time
		err    error // the read error that ended it
	}
	atk := make([]*attacker, slowN+halfOpenN)
	var readers sync.WaitGroup
	defer func() {
		for _, a := range atk {
			if a != nil {
				a.c.Close()
			}
		}
		readers.Wait()
	}()
	var open atomic.Int64
	for i := range atk {
		d := net.Dialer{LocalAddr: loopback(2 + i%8), Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", rl.addr)
		if err != nil {
			t.Fatalf("attack connection %d: %v", i, err)
		}
		a := &attacker{c: c, dialed: time.Now()}
		atk[i] = a
		open.Add(1)
		c.SetReadDeadline(a.dialed.Add(headerWait + slack))
		readers.Go(func() {
			defer open.Add(-1)
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					a.closed, a.err = time.Now(), err
					return
				}
			}
		})
	}
	dialDone := time.Now()
	peakG := runtime.NumGoroutine()

	// The slow ones send a request header that never ends, a byte every
	// 500 ms; the writer stops once every attacking connection has ended,
	// or after the readers' deadline at the latest.
	stopWriter := make(chan struct{})
	var writer sync.WaitGroup
	stopWriting := sync.OnceFunc(func() { close(stopWriter); writer.Wait() })
	defer stopWriting() // also when the test fails half-way
	writer.Go(func() {
		prefix := "GET /slow HTTP/1.1\r\nHost: demo.localhost\r\nX-Slow: "
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < int((headerWait+slack)/(500*time.Millisecond))+2; i++ {
			b := byte('a')
			if i < len(prefix) {
				b = prefix[i]
			}
			for _, a := range atk[:slowN] {
				a.c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				a.c.Write([]byte{b}) // fails once the relay closed it
			}
			select {
			case <-stopWriter:
				return
			case <-tick.C:
			}
		}
	})

	under := measure("attack")
	stillOpen := open.Load()
	peakHeap, peakLive := heap()
	t.Logf("baseline:     %s (%d requests, a new connection each)", stats(base), requests)
	t.Logf("under attack: %s; %d of %d attacking connections still open when done (%v after they were all dialed)",
		stats(under), stillOpen, len(atk), time.Since(dialDone).Round(time.Millisecond))

	readers.Wait()
	stopWriting()
	var longest, shortest time.Duration
	for i, a := range atk {
		life := a.closed.Sub(a.dialed)
		if isTimeoutErr(a.err) {
			t.Fatalf("attack connection %d (slow=%v) still open %v after it was dialed", i, i < slowN, life.Round(time.Millisecond))
		}
		if life > longest {
			longest = life
		}
		if shortest == 0 || life < shortest {
			shortest = life
		}
	}
	t.Logf("relay closed all %d attacking connections %v–%v after each was dialed (read-header timeout %v)",
		len(atk), shortest.Round(time.Millisecond), longest.Round(time.Millisecond), headerWait)
	for _, a := range atk {
		a.c.Close()
	}

	// Goroutines and heap return near their baseline.
	var g int
	waitFor(t, 15*time.Second, "goroutines to return near the baseline", func() bool {
		g = runtime.NumGoroutine()
		return g <= baseG+50
	})
	var h, live uint64
	waitFor(t, 15*time.Second, "heap to return near the baseline", func() bool {
		h, live = heap()
		return h <= baseHeap+64<<20
	})
	t.Logf("goroutines: baseline %d, during attack %d, after %d", baseG, peakG, g)
	t.Logf("heap in use (live objects): baseline %.1f MiB (%.1f), during attack %.1f MiB (%.1f), after %.1f MiB (%.1f)",
		mib(baseHeap), mib(baseLive), mib(peakHeap), mib(peakLive), mib(h), mib(live))
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// The per-IP new-connection rate, turned on for loopback (which it exempts
// by default): at 1 connection per second with its burst of 11, the 12th
// quick connection from 127.0.0.2 gets a 429 and is closed, while
// 127.0.0.3 still gets through, and 127.0.0.2 does again a second later.
func TestAbuseConnRatePerIP(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) {
		c.Limits.ConnRatePerIP = 1
		c.Limits.ConnRateLoopback = true
	})
	const healthz = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
	conns := make([]net.Conn, 12)
	start := time.Now()
	for i := range conns {
		conns[i] = abuseDial(t, rl.addr, loopback(2))
	}
	dialTime := time.Since(start)

	// The 12th: refused before it sends anything.
	resp, body, err := readResp(bufio.NewReader(conns[11]))
	if err != nil {
		t.Fatalf("12th connection (all 12 dialed in %v): no response: %v", dialTime, err)
	}
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "Too many new connections") {
		t.Fatalf("12th connection: %d %q %q", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if _, err := conns[11].Read(make([]byte, 1)); err == nil {
		t.Fatal("12th connection still open after its 429")
	}
	// The first 11 are served.
	for i, c := range conns[:11] {
		if status, body := roundTrip(t, c, bufio.NewReader(c), healthz); status != 200 {
			t.Fatalf("connection %d: %d %q", i+1, status, body)
		}
	}
	// Another address is unaffected.
	c := abuseDial(t, rl.addr, loopback(3))
	if status, body := roundTrip(t, c, bufio.NewReader(c), healthz); status != 200 {
		t.Fatalf("127.0.0.3: %d %q", status, body)
	}
	// A rate, not a ban: 127.0.0.2 gets a new allowance within seconds.
	waitFor(t, 5*time.Second, "127.0.0.2 to be let in again", func() bool {
		c := abuseDial(t, rl.addr, loopback(2))
		defer c.Close()
		io.WriteString(c, healthz)
		resp, _, err := readResp(bufio.NewReader(c))
		if err != nil || resp.StatusCode == http.StatusTooManyRequests {
			time.Sleep(200 * time.Millisecond)
			return false
		}
		return resp.StatusCode == 200
	})
}

// A malicious agent (or its local server) cannot make the relay buffer
// response headers without bound: 2 MiB of them get the visitor a 502 (the
// relay's transport caps response headers at 64 KiB, where Go's default of
// 10 MiB per stream would let one agent's 200 streams hold 2 GiB).
func TestAbuseHugeResponseHeaders(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 10 {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: "+strings.Repeat("h", 2<<20)+"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
			})
		}
	})
	defer func() { ln.Close(); wg.Wait() }()
	rl := startRelay(t, "")
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "big", Local: ln.Addr().String()}})
	c := visitorClient(rl.addr)
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://big.localhost/")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("2 MiB of response headers: %d with %d bytes of X-Big, want 502", resp.StatusCode, len(resp.Header.Get("X-Big")))
	}
}
