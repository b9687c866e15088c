package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
)

// startHTTPSLocal is a local server that speaks only HTTPS (httptest's
// certificate, for 127.0.0.1), offering h2 as well as http/1.1 like most
// servers, so that an agent offering h2 would break the HTTP/1.1 bytes the
// relay forwards. "/" reports what the server saw; /ws echoes.
func startHTTPSLocal(t *testing.T) (*httptest.Server, *x509.CertPool) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		alpn := "-"
		if r.TLS != nil && r.TLS.NegotiatedProtocol != "" {
			alpn = r.TLS.NegotiatedProtocol
		}
		fmt.Fprintf(w, "tls=%v alpn=%s proto=%s host=%s path=%s", r.TLS != nil, alpn, r.Proto, r.Host, r.URL.Path)
	})
	ts := httptest.NewUnstartedServer(mux)
	ts.EnableHTTP2 = true
	ts.TLS = &tls.Config{NextProtos: []string{"h2", "http/1.1"}}
	ts.Config.ErrorLog = log.New(tWriter{t}, "https local server: ", 0) // refused handshakes
	ts.StartTLS()
	t.Cleanup(ts.Close)
	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	return ts, pool
}

// logLines is a logger that keeps the lines it writes (and shows them in
// the test's log).
type logLines struct {
	t     testing.TB
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range strings.SplitSeq(strings.TrimRight(string(p), "\n"), "\n") {
		l.lines = append(l.lines, line)
		l.t.Log(line)
	}
	return len(p), nil
}

func (l *logLines) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// matching returns the lines that contain all of subs.
func (l *logLines) matching(subs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range l.lines {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// An HTTPS local server, verified with its CA (--local-ca): requests and a
// WebSocket go through, over TLS with ALPN http/1.1, and the local server
// sees the public host name.
func TestLocalHTTPSWithCA(t *testing.T) {
	rl := startRelay(t, "")
	ts, pool := startHTTPSLocal(t)
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "secure", Local: ts.Listener.Addr().String(), LocalHTTPS: true, LocalCA: pool}})
	c := visitorClient(rl.addr)
	want := "tls=true alpn=http/1.1 proto=HTTP/1.1 host=secure.localhost:" + port(rl.addr) + " path=/hello"
	for i := range 2 { // the second one on the kept-alive stream and TLS connection
		if status, body := get(t, c, urls[0]+"/hello"); status != 200 || body != want {
			t.Fatalf("GET %d = %d %q, want 200 %q", i+1, status, body, want)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, err := dialWS(ctx, rl.addr, "ws://secure.localhost:"+port(rl.addr)+"/ws")
	if err != nil {
		t.Fatalf("WebSocket through an HTTPS local server: %v", err)
	}
	defer ws.CloseNow()
	for _, msg := range []string{"one", strings.Repeat("x", 100<<10)} {
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := ws.Read(ctx)
		if err != nil || string(got) != msg {
			t.Fatalf("echo of %d bytes: %d bytes, %v", len(msg), len(got), err)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "bye")
}

// --local-insecure accepts a certificate that nothing vouches for; without
// it (and without a CA) the same server is refused.
func TestLocalHTTPSInsecure(t *testing.T) {
	rl := startRelay(t, "")
	ts, _ := startHTTPSLocal(t)
	local := ts.Listener.Addr().String()
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{
		{Name: "insecure", Local: local, LocalHTTPS: true, LocalInsecure: true},
		{Name: "system-roots", Local: local, LocalHTTPS: true},
	})
	c := visitorClient(rl.addr)
	if status, body := get(t, c, urls[0]+"/x"); status != 200 || !strings.HasPrefix(body, "tls=true alpn=http/1.1 ") {
		t.Fatalf("GET with insecure = %d %q", status, body)
	}
	if status, body := get(t, c, urls[1]+"/x"); status != http.StatusBadGateway || !strings.Contains(body, "does not trust") {
		t.Fatalf("GET verified against the system roots = %d %q, want 502 naming the certificate", status, body)
	}
}

// An HTTPS local server whose certificate the given CA did not sign: the
// visitor gets a 502 that says so, the agent logs one line that says what
// to do, and nothing went through in clear. A local server that speaks
// plain HTTP to an agent expecting HTTPS gets the same treatment.
func TestLocalHTTPSWrongCA(t *testing.T) {
	rl := startRelay(t, "")
	ts, _ := startHTTPSLocal(t)
	plain := startLocal(t)
	logs := &logLines{t: t}
	ag, urls := startAgent(t, rl.url(), []agent.Tunnel{
		{Name: "wrong-ca", Local: ts.Listener.Addr().String(), LocalHTTPS: true, LocalCA: newTestCA(t).Pool},
		{Name: "not-tls", Local: plain.addr, LocalHTTPS: true},
	}, func(c *agent.Config) { c.Logger = logs.logger() })
	c := visitorClient(rl.addr)

	status, body := get(t, c, urls[0]+"/secret")
	if status != http.StatusBadGateway || !strings.Contains(body, "does not trust") || strings.Contains(body, "tls=true") {
		t.Fatalf("GET with the wrong CA = %d %q, want 502 about the certificate", status, body)
	}
	// With OnEvent set the problem is the request event's error (expose's
	// request line), and the log has it at debug level.
	lines := logs.matching("has a certificate this agent does not trust", "--local-ca", "--local-insecure", "local="+ts.Listener.Addr().String())
	if len(lines) != 1 {
		t.Fatalf("agent logged %d lines about the certificate, want 1:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if !strings.Contains(lines[0], "x509: certificate signed by unknown authority") {
		t.Errorf("the log line does not give the reason: %s", lines[0])
	}
	select {
	case ev := <-ag.events:
		if h := ev.HTTP; h == nil || h.Path != "/secret" || !strings.Contains(h.Error, "has a certificate this agent does not trust") {
			t.Errorf("request event %+v", h)
		}
	case <-time.After(5 * time.Second):
		t.Error("no request event for the request refused for the certificate")
	}

	status, body = get(t, c, urls[1]+"/")
	if status != http.StatusBadGateway || !strings.Contains(body, "does not speak TLS") {
		t.Fatalf("GET of a plain HTTP server with local HTTPS = %d %q, want 502 saying it does not speak TLS", status, body)
	}
	if lines := logs.matching("does not speak TLS; drop --local-https"); len(lines) != 1 {
		t.Fatalf("agent logged %d lines about plain HTTP, want 1:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if seen := plain.seen(); seen != "" {
		t.Errorf("the plain server got a request: %q", seen)
	}
}
