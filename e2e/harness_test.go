// Package e2e runs the relay and the agent together in one process, with real
// HTTP and WebSocket servers and clients on 127.0.0.1, and checks what a
// visitor and the person at the laptop see.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger sends logs to t.Log, so they show only for failing tests.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// testRelay is a relay serving on a loopback port.
type testRelay struct {
	*relay.Server
	addr string // 127.0.0.1:port
	done chan error
}

// startRelay serves a relay for domain "localhost" on addr ("" for any free
// port) and closes it when the test ends.
func startRelay(t testing.TB, addr string, mod ...func(*relay.Config)) *testRelay {
	t.Helper()
	cfg := relay.Config{Domain: "localhost", Logger: testLogger(t)}
	for _, f := range mod {
		f(&cfg)
	}
	rs, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	// A restarted relay may need a moment until the old socket is gone.
	for deadline := time.Now().Add(5 * time.Second); ; {
		ln, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	tr := &testRelay{Server: rs, addr: ln.Addr().String(), done: make(chan error, 1)}
	go func() { tr.done <- rs.Serve(ln) }()
	t.Cleanup(tr.stop)
	return tr
}

func (tr *testRelay) stop() {
	tr.Close()
	<-tr.done
	tr.done <- nil // stop is idempotent
}

func (tr *testRelay) url() string { return "http://" + tr.addr }

// testAgent is an agent.Run in the background.
type testAgent struct {
	cancel  context.CancelFunc
	done    chan error
	online  chan []string // URLs, one value per successful handshake
	offline chan error
	events  chan agent.Event // request events
	notices chan string      // notice kinds from the relay
}

// startAgent runs an agent for the given tunnels against relayURL and waits
// until it is online. The test fails if it is not online within 10 s.
func startAgent(t testing.TB, relayURL string, tunnels []agent.Tunnel, mod ...func(*agent.Config)) (*testAgent, []string) {
	t.Helper()
	ta, err := runAgent(t, relayURL, tunnels, mod...)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case urls := <-ta.online:
		return ta, urls
	case err := <-ta.done:
		t.Fatalf("agent stopped before it was online: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent not online after 10s")
	}
	return nil, nil
}

// runAgent starts an agent without waiting for it.
func runAgent(t testing.TB, relayURL string, tunnels []agent.Tunnel, mod ...func(*agent.Config)) (*testAgent, error) {
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{
		cancel:  cancel,
		done:    make(chan error, 1),
		online:  make(chan []string, 16),
		offline: make(chan error, 64),
		events:  make(chan agent.Event, 1024),
		notices: make(chan string, 16),
	}
	cfg := agent.Config{
		Relay:      relayURL,
		Tunnels:    tunnels,
		Logger:     testLogger(t),
		MinBackoff: 50 * time.Millisecond,
		MaxBackoff: 500 * time.Millisecond,
		OnEvent: func(e agent.Event) {
			switch e.Kind {
			case agent.EventOnline:
				var urls []string
				for _, g := range e.Tunnels {
					urls = append(urls, g.URL)
				}
				ta.online <- urls
			case agent.EventOffline:
				select {
				case ta.offline <- e.Err:
				default:
				}
			case agent.EventNotice:
				select {
				case ta.notices <- string(e.Notice.Kind):
				default:
				}
			case agent.EventRequest:
				select {
				case ta.events <- e:
				default:
				}
			}
		},
	}
	for _, f := range mod {
		f(&cfg)
	}
	go func() { ta.done <- agent.Run(ctx, cfg) }()
	t.Cleanup(ta.stop)
	return ta, nil
}

// stop cancels the agent (it says goodbye to the relay) and waits for it.
func (ta *testAgent) stop() {
	ta.cancel()
	if err, ok := <-ta.done; ok {
		close(ta.done)
		_ = err
	}
}

// visitorClient returns an HTTP client that sends every request to the relay
// at relayAddr whatever the URL's host ("*.localhost" does not resolve in
// Go), and keeps at most one connection open.
func visitorClient(relayAddr string) *http.Client {
	return &http.Client{Transport: visitorTransport(relayAddr, nil)}
}

func visitorTransport(relayAddr string, local net.Addr) *http.Transport {
	d := &net.Dialer{LocalAddr: local}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, relayAddr)
		},
		MaxConnsPerHost:    1,
		DisableCompression: true,
	}
}

// dialWS opens a WebSocket to url through the relay at relayAddr.
func dialWS(ctx context.Context, relayAddr, url string) (*websocket.Conn, error) {
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: visitorClient(relayAddr)})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(1 << 20)
	return c, nil
}

// localServer is the laptop's server: a real HTTP server on 127.0.0.1 with
// a few endpoints the tests use, and a WebSocket echo at /ws.
type localServer struct {
	addr  string
	srv   *http.Server
	conns atomic.Int64 // TCP connections accepted

	mu    sync.Mutex
	paths []string // request paths seen by the catch-all handler
}

func (ls *localServer) seen() string {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return strings.Join(ls.paths, " ")
}

// silentAgent claims name and then never accepts a stream: a frozen laptop
// whose connection is still up. It returns the agent's session, closed at
// the test's end.
func silentAgent(t *testing.T, relayURL, name string) *yamux.Session {
	t.Helper()
	sess, err := helloSession(t, relayURL, &proto.Hello{Version: proto.Version, Tunnels: []proto.TunnelRequest{{Name: name}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// helloSession speaks the protocol by hand: it connects to the relay as an
// agent, writes hello, and returns the session with the relay's refusal,
// or nil on Welcome. The caller closes the session.
func helloSession(t *testing.T, relayURL string, hello *proto.Hello) (*yamux.Session, error) {
	t.Helper()
	sess, _, err := helloWith(t, relayURL, "", hello)
	return sess, err
}

// helloWith is helloSession with a bearer token (none if empty), and it
// returns the Welcome too.
func helloWith(t *testing.T, relayURL, token string, hello *proto.Hello) (*yamux.Session, *proto.Welcome, error) {
	t.Helper()
	u, err := url.Parse(relayURL)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := tunnel.DialControl(ctx, u, tunnel.DialOptions{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := tunnel.Client(conn, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := sess.OpenStream()
	if err != nil {
		sess.Close()
		t.Fatal(err)
	}
	if err := proto.WriteMessage(ctrl, hello); err != nil {
		sess.Close()
		t.Fatal(err)
	}
	w, err := proto.ReadAs[*proto.Welcome](ctrl)
	return sess, w, err
}

// serveConns is a local server that speaks whatever handle writes: each
// accepted connection goes to handle on a goroutine of its own and is
// closed when handle returns. At the test's end the listener and every
// connection still open are closed, and the handlers waited for. It
// returns the server's address.
func serveConns(t testing.TB, handle func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]bool)
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// serveHandler is a local server running h, closed at the test's end; it
// returns the server's address.
func serveHandler(t testing.TB, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// rawVisitor is a visitor's TCP connection to the relay, for requests
// written byte by byte; it is closed at the test's end, and every read or
// write on it fails after 15 s.
func rawVisitor(t testing.TB, relayAddr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", relayAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(15 * time.Second))
	return c, bufio.NewReader(c)
}

func startLocal(t testing.TB) *localServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ls := &localServer{addr: ln.Addr().String()}
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
	// /headers answers with the request's Host, headers and peer address.
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "host=%s\n", r.Host)
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded", "X-Real-Ip", "True-Client-Ip", "Upgrade", "Http2-Settings"} {
			fmt.Fprintf(w, "%s=%s\n", k, strings.Join(r.Header.Values(k), ","))
		}
	})
	// /sha256 answers with the hash and length of the request body.
	mux.HandleFunc("/sha256", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})
	// /bytes?n=N streams N deterministic bytes.
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, io.LimitReader(newPattern(), n))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		ls.mu.Lock()
		ls.paths = append(ls.paths, r.URL.Path)
		ls.mu.Unlock()
		fmt.Fprintf(w, "%s %s", r.Method, r.URL.RequestURI())
	})
	ls.srv = &http.Server{
		Handler: mux,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				ls.conns.Add(1)
			}
		},
	}
	go ls.srv.Serve(ln)
	t.Cleanup(func() { ls.srv.Close() })
	return ls
}

// pattern is an endless deterministic byte stream (a counter), cheap to
// generate and to check.
type pattern struct{ i byte }

func newPattern() *pattern { return &pattern{} }

func (p *pattern) Read(b []byte) (int, error) {
	for k := range b {
		b[k] = p.i
		p.i = p.i*31 + 7
	}
	return len(b), nil
}

func patternHash(n int64) string {
	h := sha256.New()
	io.Copy(h, io.LimitReader(newPattern(), n))
	return hex.EncodeToString(h.Sum(nil))
}

// get fetches url through the relay and returns status and body.
func get(t testing.TB, c *http.Client, url string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// waitFor polls cond every 10 ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeRelay serves the control connection the way a relay does up to the
// agent's hello, which it hands to answer with the control stream; the
// session ends when answer returns. It returns the relay's URL. A test
// plays relays that are old, or that lose a welcome, with it.
func fakeRelay(t *testing.T, answer func(hello *proto.Hello, ctrl net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var handlers sync.WaitGroup
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handlers.Add(1)
		defer handlers.Done()
		conn, err := tunnel.AcceptControl(w, r)
		if err != nil {
			return
		}
		sess, err := tunnel.Server(conn, testLogger(t))
		if err != nil {
			conn.Close()
			return
		}
		defer sess.Close()
		ctrl, err := sess.Accept()
		if err != nil {
			return
		}
		ctrl.SetDeadline(time.Now().Add(10 * time.Second))
		hello, err := proto.ReadAs[*proto.Hello](ctrl)
		if err != nil {
			return
		}
		answer(hello, ctrl)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		handlers.Wait() // hijacked: Close does not wait for them
	})
	return "http://" + ln.Addr().String()
}

// grantAll is the Welcome of a relay that grants every name hello asks for.
func grantAll(hello *proto.Hello, server string) *proto.Welcome {
	w := &proto.Welcome{Secret: hello.Secret, Grace: time.Minute, Server: server}
	if w.Secret == "" {
		w.Secret = strings.Repeat("5", 48)
	}
	for _, tr := range hello.Tunnels {
		w.Tunnels = append(w.Tunnels, proto.Granted{Name: tr.Name, URL: "http://" + tr.Name + ".localhost"})
	}
	return w
}

// waitLingeringCloses, as a cleanup, waits (up to 2 s) for net/http
// servers to finish closing connections whose request body went unread:
// they linger 500 ms first (closeWriteAndWait), which the leak check at
// the end of a run would otherwise catch when the test runs last.
func waitLingeringCloses(t *testing.T) {
	t.Cleanup(func() {
		buf := make([]byte, 1<<20)
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if !bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("closeWriteAndWait")) {
				return
			}
		}
	})
}
