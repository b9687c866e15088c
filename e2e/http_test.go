package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
)

// A plain request reaches the local server with its method, path, query and
// Host, and the answer comes back unchanged.
func TestHTTPRequestResponse(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	if want := "http://demo.localhost:" + port(rl.addr); urls[0] != want {
		t.Fatalf("URL = %q, want %q", urls[0], want)
	}
	c := visitorClient(rl.addr)

	status, body := get(t, c, urls[0]+"/anything?x=1")
	if status != 200 || body != "GET /anything?x=1" {
		t.Fatalf("GET = %d %q", status, body)
	}
	resp, err := c.Post(urls[0]+"/sha256", "application/octet-stream", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "5 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"; string(b) != want {
		t.Fatalf("POST /sha256 = %q, want %q", b, want)
	}
	// The local server sees the public host name.
	_, body = get(t, c, urls[0]+"/headers")
	if !strings.Contains(body, "host=demo.localhost:"+port(rl.addr)) {
		t.Fatalf("local server saw:\n%s", body)
	}
}

// The relay routes by the Host header's name, case-insensitively and
// ignoring the port, and two tunnels never see each other's traffic.
func TestRoutingByHost(t *testing.T) {
	rl := startRelay(t, "")
	a, b := startLocal(t), startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "alpha", Local: a.addr}})
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "beta", Local: b.addr}})
	c := visitorClient(rl.addr)
	for _, host := range []string{"alpha.localhost", "ALPHA.LocalHost:1234", "alpha.localhost."} {
		req, _ := http.NewRequest("GET", "http://x/headers", nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("Host %q: status %d %s", host, resp.StatusCode, body)
		}
	}
	get(t, c, "http://alpha.localhost/a")
	get(t, c, "http://beta.localhost/b")
	get(t, c, "http://beta.localhost/b")
	if a.seen() != "/a" || b.seen() != "/b /b" {
		t.Fatalf("alpha's server saw %q, beta's %q", a.seen(), b.seen())
	}
}

// The relay's own host answers with a landing page and a health check; an
// unknown tunnel gets a 404 that names it.
func TestRelayPages(t *testing.T) {
	rl := startRelay(t, "")
	c := visitorClient(rl.addr)

	status, body := get(t, c, "http://localhost/healthz")
	if status != 200 || body != "ok\n" {
		t.Fatalf("/healthz = %d %q", status, body)
	}
	status, body = get(t, c, "http://localhost/", "Accept", "text/html")
	if status != 200 || !strings.Contains(body, "tunnel expose -p 8080") {
		t.Fatalf("landing = %d %q", status, body)
	}
	status, body = get(t, c, "http://nosuch.localhost/")
	if status != 404 || !strings.Contains(body, `No agent holds the tunnel "nosuch"`) {
		t.Fatalf("unknown tunnel = %d %q", status, body)
	}
	status, body = get(t, c, "http://a.b.localhost/")
	if status != 404 || !strings.Contains(body, "not a tunnel name") {
		t.Fatalf("two-label name = %d %q", status, body)
	}
	status, body = get(t, c, "http://nosuch.localhost/", "Accept", "text/html")
	if status != 404 || !strings.Contains(body, "<h1>404 — No such tunnel</h1>") {
		t.Fatalf("HTML 404 = %d %q", status, body)
	}
}

// X-Forwarded-For/-Proto/-Host are set by the relay from what it saw; values
// a visitor sends to spoof them are dropped.
func TestForwardedHeaders(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	// A visitor from 127.0.0.2, distinct from the relay's and agent's 127.0.0.1.
	c := &http.Client{Transport: visitorTransport(rl.addr, &net.TCPAddr{IP: net.ParseIP("127.0.0.2")})}
	_, body := get(t, c, "http://demo.localhost/headers",
		"X-Forwarded-For", "6.6.6.6", "X-Forwarded-Host", "evil.example", "X-Forwarded-Proto", "https", "Forwarded", "for=6.6.6.6",
		"X-Real-Ip", "6.6.6.6", "True-Client-Ip", "6.6.6.6")
	for _, want := range []string{
		"X-Forwarded-For=127.0.0.2\n",
		"X-Forwarded-Proto=http\n",
		"X-Forwarded-Host=demo.localhost\n",
		"Forwarded=\n",
		"X-Real-Ip=127.0.0.2\n",
		"True-Client-Ip=\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("local server headers lack %q:\n%s", want, body)
		}
	}
}

// An Upgrade other than WebSocket (h2c) is stripped before the request
// reaches the local server.
func TestForeignUpgradeStripped(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	_, body := get(t, visitorClient(rl.addr), "http://demo.localhost/headers",
		"Connection", "Upgrade, HTTP2-Settings", "Upgrade", "h2c", "HTTP2-Settings", "AAMAAABkAAQAAP__")
	if !strings.Contains(body, "Upgrade=\n") || !strings.Contains(body, "Http2-Settings=\n") {
		t.Fatalf("h2c upgrade reached the local server:\n%s", body)
	}
}

// An agent whose local server is down answers 502 "agent online, but nothing
// answers on <target>", which differs from the page for an agent that is
// gone.
func TestLocalServerDown(t *testing.T) {
	rl := startRelay(t, "")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: dead}})
	status, body := get(t, visitorClient(rl.addr), "http://demo.localhost/")
	want := "agent online, but nothing answers on " + dead
	if status != http.StatusBadGateway || !strings.Contains(body, want) {
		t.Fatalf("got %d %q, want 502 containing %q", status, body, want)
	}
}

// A request the local server never got is still reported at the agent, as
// any other (expose prints its line, the inspector lists it), with what
// happened to it as its error.
func TestLocalServerDownRequestReported(t *testing.T) {
	rl := startRelay(t, "")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	ag, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: dead}})
	// The second request's head (20 KiB of cookies) comes in several reads.
	for _, cookie := range []string{"a=1", "a=" + strings.Repeat("x", 20<<10)} {
		if status, _ := get(t, visitorClient(rl.addr), "http://demo.localhost/form?x=1", "Cookie", cookie); status != http.StatusBadGateway {
			t.Fatalf("status %d, want 502", status)
		}
		select {
		case ev := <-ag.events:
			r, h := ev.Request, ev.HTTP
			if r == nil || h == nil || r.Method != "GET" || r.Path != "/form?x=1" || r.Status != 0 || h.Error != "nothing answers on "+dead+" (connection refused)" {
				t.Fatalf("request event %+v, exchange %+v", r, h)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no request event for the request the local server never got (a %d-byte cookie)", len(cookie))
		}
	}
}

// 20,000 sequential requests on one visitor connection use one stream and
// one connection to the local server: keep-alive holds end to end.
//
// The visitor is a plain connection that writes each request and reads
// its response, not an http.Transport: a Transport drops a connection
// whose request write it has not seen finish within 50 ms of the
// response (maxWriteWaitBeforeConnReuse), which a machine busy with the
// whole suite under -race can cause, and which is not the relay's doing.
// Here the relay must keep the one connection open throughout.
func TestKeepAliveEndToEnd(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	conn, err := net.Dial("tcp", rl.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	const n = 20000
	for i := range n {
		req, err := http.NewRequest("GET", fmt.Sprintf("http://demo.localhost/r/%d", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := req.Write(conn); err != nil {
			t.Fatalf("request %d: writing it on the visitor connection: %v", i, err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("request %d: no response on the visitor connection (did the relay close it?): %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(b, fmt.Appendf(nil, "GET /r/%d", i)) {
			t.Fatalf("request %d: %d %q %v", i, resp.StatusCode, b, err)
		}
		if resp.Close {
			t.Fatalf("request %d: the relay answered with Connection: close", i)
		}
	}
	if got := local.conns.Load(); got != 1 {
		t.Fatalf("%d requests on one visitor connection: %d local connections, want 1", n, got)
	}
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// A local server that closes idle keep-alive connections after a short
// time (Node's default is 5 s) must not turn a visitor's next POST on the
// same keep-alive connection into a 502: the local server never saw it.
func TestPostAfterLocalIdleClose(t *testing.T) {
	rl := startRelay(t, "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		IdleTimeout: 200 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s", r.Method, b)
		}),
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: ln.Addr().String()}})

	conn, err := net.Dial("tcp", rl.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	do := func(method, body string) (int, string) {
		req, _ := http.NewRequest(method, "http://demo.localhost/", strings.NewReader(body))
		if body == "" {
			req.Body = nil
		}
		if err := req.Write(conn); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if code, body := do("GET", ""); code != 200 {
		t.Fatalf("first GET: %d %q", code, body)
	}
	time.Sleep(time.Second) // the local server closes its idle connection
	if code, body := do("POST", "a=1"); code != 200 || body != "POST a=1" {
		t.Fatalf("POST after the local server closed its idle connection: %d %.120q", code, body)
	}
}

// A local server that sends bytes past the end of its response is out of
// step with its connection: the relay does not send the visitor's next
// request on that stream, but on a new one, to a new local connection.
func TestLocalExtraBytesNotReused(t *testing.T) {
	rl := startRelay(t, "")
	var conns atomic.Int32
	local := serveConns(t, func(c net.Conn) {
		conns.Add(1)
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/extra" {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK")
				continue
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nok-next")
		}
	})
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local}})
	conn, err := net.Dial("tcp", rl.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	for _, c := range []struct{ path, want string }{{"/extra", "ok"}, {"/next", "ok-next"}} {
		req, _ := http.NewRequest("GET", "http://demo.localhost"+c.path, nil)
		if err := req.Write(conn); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("GET %s: %v", c.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != c.want {
			t.Fatalf("GET %s: %d %q, want 200 %q", c.path, resp.StatusCode, b, c.want)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("local connections: %d, want 2 (the one that sent extra bytes not used again)", n)
	}
}

// A local server that answers an upload early and closes without reading
// the rest (Flask's 413, a handler that ignores a POST body) resets its
// connection: the visitor still gets its answer, every time, as it would
// from the server directly, not a 502.
func TestEarlyAnswerThenResetReachesVisitor(t *testing.T) {
	waitLingeringCloses(t)
	rl := startRelay(t, "")
	local := serveConns(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big!")
		// Closing with the upload unread sends a reset.
	})
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local}})
	for i := range 10 {
		c := visitorClient(rl.addr)
		req, _ := http.NewRequest("POST", urls[0]+"/upload", io.LimitReader(newPattern(), 8<<20))
		req.ContentLength = 8 << 20
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		c.CloseIdleConnections()
		if res.StatusCode != 413 || string(b) != "too big!" {
			t.Fatalf("upload %d: %d %.120q, want the local server's 413", i, res.StatusCode, b)
		}
	}
}

// A complete answer followed by a reset (SO_LINGER 0) is the visitor's
// answer.
func TestCompleteAnswerThenResetReachesVisitor(t *testing.T) {
	waitLingeringCloses(t)
	rl := startRelay(t, "")
	local := serveConns(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 501 Not Implemented\r\nConnection: close\r\nContent-Length: 11\r\n\r\nnot handled")
		c.(*net.TCPConn).SetLinger(0)
	})
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local}})
	for i := range 200 {
		c := visitorClient(rl.addr)
		status, body := get(t, c, urls[0]+"/x")
		c.CloseIdleConnections()
		if status != 501 || body != "not handled" {
			t.Fatalf("request %d: %d %.120q, want the local server's 501", i, status, body)
		}
	}
}
