package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// handlerTunnel runs a relay and an agent whose tunnel "demo" is served by
// h, and returns the relay and the tunnel's URL.
func handlerTunnel(t *testing.T, h http.HandlerFunc) (*testRelay, string) {
	t.Helper()
	rl := startRelay(t, "")
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: serveHandler(t, h)}})
	return rl, urls[0]
}

// The local server gets the query string byte for byte as the visitor sent
// it: parameters with ';', a bad %-escape or an order of their own are not
// dropped, sorted or re-encoded on the way (signed URLs depend on it).
func TestQueryPassedVerbatim(t *testing.T) {
	rl, _ := handlerTunnel(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.RequestURI)
	})
	for _, target := range []string{
		"/q?a=1;b=2", "/q?sort=name;desc&x=1", "/search?q=100%",
		"/q?b=2&a=1&c=%zz", "/a%2Fb/c?x=%2F&y=a+b%20c",
	} {
		c, br := rawVisitor(t, rl.addr)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: demo.localhost\r\n\r\n", target)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		if string(b) != target {
			t.Errorf("visitor asked for %q; local server saw %q", target, b)
		}
	}
}

// countingBody is a request body of max bytes that counts what was read.
type countingBody struct {
	n   atomic.Int64
	max int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	left := c.max - c.n.Load()
	if left <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), left)]
	clear(p)
	c.n.Add(int64(len(p)))
	return len(p), nil
}

// With Expect: 100-continue the local server decides whether the body is
// sent: one that answers at once without reading it (a 401 for an upload)
// gets no byte of it, and the visitor's first answer is that 401, not a
// 100 Continue the relay made up.
func TestExpectContinueLocalServerDecides(t *testing.T) {
	rl, u := handlerTunnel(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "log in first", http.StatusUnauthorized) // never reads the body
	})
	tr := &http.Transport{
		ExpectContinueTimeout: 5 * time.Second,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, rl.addr)
		},
	}
	defer tr.CloseIdleConnections()
	const size = 200 << 20
	body := &countingBody{max: size}
	req, _ := http.NewRequest("PUT", u+"/upload", body)
	req.ContentLength = size
	req.Header.Set("Expect", "100-continue")
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("%d body bytes sent: %v", body.n.Load(), err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized || body.n.Load() > 0 {
		t.Errorf("status %d; the visitor uploaded %d bytes of a body the local server refused unread", res.StatusCode, body.n.Load())
	}

	c, br := rawVisitor(t, rl.addr)
	io.WriteString(c, "PUT /deny HTTP/1.1\r\nHost: demo.localhost\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
	if res, err := http.ReadResponse(br, nil); err != nil || res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("first answer %v %v, want the local server's 401", res, err)
	}
}

// A body held for Expect: 100-continue still goes: at once to a local
// server that sends its own 100, and after a second to one that sends none
// and just reads (as http.Transport does).
func TestExpectContinueBodyStillSent(t *testing.T) {
	// net/http sends 100 Continue on its handler's first read.
	rl, _ := handlerTunnel(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %d", len(b))
	})
	c, br := rawVisitor(t, rl.addr)
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: demo.localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	start := time.Now()
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusContinue || time.Since(start) > 900*time.Millisecond {
		t.Fatalf("%v %v after %v, want the local server's 100 at once", res, err, time.Since(start))
	}
	io.WriteString(c, "hello")
	for res, err = http.ReadResponse(br, nil); err == nil && res.StatusCode == http.StatusContinue; res, err = http.ReadResponse(br, nil) {
	}
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(res.Body); string(b) != "got 5" {
		t.Fatalf("%d %q", res.StatusCode, b)
	}

	// A server that ignores Expect.
	rl2 := startRelay(t, "")
	local := serveConns(t, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		b, _ := io.ReadAll(req.Body)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
	})
	startAgent(t, rl2.url(), []agent.Tunnel{{Name: "demo", Local: local}})
	c, br = rawVisitor(t, rl2.addr)
	io.WriteString(c, "PUT /x HTTP/1.1\r\nHost: demo.localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	if res, err = http.ReadResponse(br, nil); err != nil || res.StatusCode != http.StatusContinue {
		t.Fatalf("%v %v, want 100 once the wait for the local server's is over", res, err)
	}
	io.WriteString(c, "hello")
	if res, err = http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(res.Body); string(b) != "hello" {
		t.Fatalf("%d %q", res.StatusCode, b)
	}
}

// An HTTP/1.0 visitor gets no interim response (RFC 9110 15.2: it would take
// the 103 for the answer); an HTTP/1.1 visitor gets the 103 first.
func TestNoInterimResponsesToHTTP10(t *testing.T) {
	rl, _ := handlerTunnel(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "page")
	})
	c, br := rawVisitor(t, rl.addr)
	io.WriteString(c, "GET / HTTP/1.0\r\nHost: demo.localhost\r\n\r\n")
	all, _ := io.ReadAll(br)
	if !strings.HasPrefix(string(all), "HTTP/1.0 200 OK\r\n") || !strings.HasSuffix(string(all), "page") {
		t.Errorf("HTTP/1.0 visitor got %q", all)
	}
	c, br = rawVisitor(t, rl.addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: demo.localhost\r\n\r\n")
	if line, _ := br.ReadString('\n'); line != "HTTP/1.1 103 Early Hints\r\n" {
		t.Errorf("HTTP/1.1 visitor: first line %q", line)
	}
}

// An interim response reaches the visitor without the local server's
// connection headers: a proxy does not pass them on (RFC 9110 7.6.1), and
// an HTTP/2 visitor (curl, browsers) takes one in a 103 for a protocol
// error that fails the request.
func TestInterimResponseWithoutConnectionHeaders(t *testing.T) {
	rl, _ := handlerTunnel(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.Header().Set("Connection", "keep-alive, X-Hop")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Hop", "1")
		w.Header().Set("Upgrade", "h2c")
		w.WriteHeader(http.StatusEarlyHints)
		for _, h := range []string{"Connection", "Keep-Alive", "X-Hop", "Upgrade"} {
			w.Header().Del(h)
		}
		io.WriteString(w, "page")
	})
	c, br := rawVisitor(t, rl.addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: demo.localhost\r\n\r\n")
	tp := textproto.NewReader(br)
	if line, _ := tp.ReadLine(); line != "HTTP/1.1 103 Early Hints" {
		t.Fatalf("first line %q, want the 103", line)
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		t.Fatal(err)
	}
	if h.Get("Link") == "" {
		t.Errorf("the 103 lost its Link header: %v", h)
	}
	for _, name := range []string{"Connection", "Keep-Alive", "X-Hop", "Upgrade"} {
		if v := h.Values(name); len(v) > 0 {
			t.Errorf("the 103 passed on %s: %q", name, v)
		}
	}
}

// A request's trailers reach the local server with their values.
func TestRequestTrailersReachLocalServer(t *testing.T) {
	got := make(chan http.Header, 1)
	rl, url := handlerTunnel(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // trailers come after the body
		got <- r.Trailer.Clone()
	})
	req, _ := http.NewRequest("POST", url+"/upload", io.MultiReader(strings.NewReader("part one, "), strings.NewReader("part two")))
	req.ContentLength = -1 // chunked: the only way to send trailers
	req.Trailer = http.Header{"X-Checksum": nil}
	req.Body = &trailerSetter{ReadCloser: req.Body, set: func() { req.Trailer.Set("X-Checksum", "abc123") }}
	res, err := visitorClient(rl.addr).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if tr := <-got; tr.Get("X-Checksum") != "abc123" {
		t.Errorf("the local server got trailers %v, want X-Checksum: abc123", tr)
	}
}

// trailerSetter calls set once its body has been read to the end, as a
// client fills in a trailer computed over the body.
type trailerSetter struct {
	io.ReadCloser
	set  func()
	done bool
}

func (b *trailerSetter) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		b.set()
	}
	return n, err
}

// Headers that spell a relay-owned one with '_' for '-' are dropped:
// CGI-style servers (PHP, WSGI, Rack) read X_Real_IP and X-Real-IP as the
// same HTTP_X_REAL_IP, so the visitor's value would stand beside, or
// replace, the address the relay sets.
func TestUnderscoreAliasesOfRelayHeadersDropped(t *testing.T) {
	seen := make(chan http.Header, 1)
	rl, _ := handlerTunnel(t, func(w http.ResponseWriter, r *http.Request) { seen <- r.Header.Clone() })
	c, br := rawVisitor(t, rl.addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: demo.localhost\r\n"+
		"X-Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX-Forwarded_Host: bank.example\r\nTrue_Client_IP: 6.6.6.6\r\nMy_Header: kept\r\n\r\n")
	if _, err := http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	}
	h := <-seen
	for k, v := range h {
		if strings.Contains(strings.Join(v, ","), "6.6.6.6") || strings.Contains(strings.Join(v, ","), "bank.example") {
			t.Errorf("the local server got %s: %q", k, v)
		}
	}
	if h.Get("My_Header") != "kept" || h.Get("X-Real-Ip") != "127.0.0.1" {
		t.Errorf("headers the relay should keep or set: %v", h)
	}
}

// A tunnel's cookies stay on its own host: a Set-Cookie for the relay's
// domain (which browsers accept when it is not on the Public Suffix List)
// would reach every other tunnel. The relay removes such a Domain, so the
// cookie is the tunnel host's alone; a Domain of the host itself stays.
func TestTunnelCookiesStayOnTheirHost(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) { c.Domain = "tunnel.test" })
	evil := serveHandler(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "session=attacker-chosen; Domain=tunnel.test; Path=/")
		w.Header().Add("Set-Cookie", "own=1; Domain=evil.tunnel.test; Path=/")
	})
	victimSaw := make(chan string, 1)
	victim := serveHandler(t, func(w http.ResponseWriter, r *http.Request) { victimSaw <- r.Header.Get("Cookie") })
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "evil", Local: evil}})
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "victim", Local: victim}})

	c := visitorClient(rl.addr)
	resp, err := c.Get("http://evil.tunnel.test/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Values("Set-Cookie"); len(got) != 2 || got[0] != "session=attacker-chosen; Path=/" || got[1] != "own=1; Domain=evil.tunnel.test; Path=/" {
		t.Errorf("Set-Cookie reaching the visitor: %q", got)
	}
	// A browser's jar, for a domain not on the Public Suffix List.
	c.Jar, _ = cookiejar.New(nil)
	get(t, c, "http://evil.tunnel.test/")
	get(t, c, "http://victim.tunnel.test/")
	if got := <-victimSaw; got != "" {
		t.Errorf("tunnel victim got cookies that tunnel evil set: %q", got)
	}
}
