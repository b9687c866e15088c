package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
)

// agent.Listen gives a Go program a public URL with no local port: the code
// below is the README's example, with the relay started by the test.
func TestListenReadmeExample(t *testing.T) {
	rl := startRelay(t, "")
	relayURL := rl.url()

	// --- README example ---
	ctx := context.Background()
	ln, err := agent.Listen(ctx, agent.Config{
		Relay:   relayURL, // e.g. "https://example.com"
		Tunnels: []agent.Tunnel{{Name: "myapp"}},
	})
	if err != nil {
		t.Fatal(err) // log.Fatal in the README
	}
	defer ln.Close()
	t.Log("serving on", ln.URL()) // fmt.Println in the README
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s, visitor %s\n", r.Host, r.RemoteAddr)
	})}
	go srv.Serve(ln)
	// --- end of example ---
	defer srv.Close()

	if want := "http://myapp.localhost:" + port(rl.addr); ln.URL() != want {
		t.Fatalf("URL() = %q, want %q", ln.URL(), want)
	}
	if ln.Addr().Network() != "tunnel" || ln.Addr().String() != ln.URL() {
		t.Fatalf("Addr() = %v %v", ln.Addr().Network(), ln.Addr())
	}
	// A visitor from 127.0.0.3: the program sees that address as RemoteAddr.
	c := &http.Client{Transport: visitorTransport(rl.addr, &net.TCPAddr{IP: net.ParseIP("127.0.0.3")})}
	status, body := get(t, c, ln.URL()+"/")
	if status != 200 || !strings.HasPrefix(body, "hello from myapp.localhost:"+port(rl.addr)+", visitor 127.0.0.3:") {
		t.Fatalf("through Listen: %d %q", status, body)
	}
}

// Closing the Listener releases the name at once and makes Accept return.
func TestListenClose(t *testing.T) {
	rl := startRelay(t, "")
	ln, err := agent.Listen(context.Background(), agent.Config{Relay: rl.url(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		accepted <- err
	}()
	ln.Close()
	select {
	case err := <-accepted:
		if err == nil {
			t.Fatal("Accept returned a connection after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
	if status, _ := get(t, visitorClient(rl.addr), ln.URL()+"/"); status != 404 {
		t.Fatalf("after Close the name answers %d, want 404", status)
	}
}

// Listen reports a permanent refusal (here: the name is taken) as its error.
func TestListenNameTaken(t *testing.T) {
	rl := startRelay(t, "")
	first, err := agent.Listen(context.Background(), agent.Config{Relay: rl.url(), Tunnels: []agent.Tunnel{{Name: "dup"}}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	_, err = agent.Listen(context.Background(), agent.Config{Relay: rl.url(), Tunnels: []agent.Tunnel{{Name: "dup"}}, Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Fatalf("second Listen: %v", err)
	}
}

// listenAs claims name on rl with agent.Listen; the listener is closed at
// the test's end.
func listenAs(t *testing.T, rl *testRelay, name string) *agent.Listener {
	t.Helper()
	ln, err := agent.Listen(context.Background(), agent.Config{Relay: rl.url(), Tunnels: []agent.Tunnel{{Name: name}}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// getLate GETs url through the relay at relayAddr, as a visitor on a slow
// link: the body is read only wait after the header came. It returns how
// many bytes of the body arrived.
func getLate(t *testing.T, relayAddr, url string, wait time.Duration) (int64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := visitorTransport(relayAddr, nil)
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	time.Sleep(wait)
	return io.Copy(io.Discard, resp.Body)
}

// A program that serves a Listener connection the way it would a TCP one
// (write the whole answer, then Close) has all of it delivered, as TCP
// delivers everything written before close; so has http.Serve's answer
// with Connection: close. A visitor reading late gets every byte.
func TestListenWriteThenClose(t *testing.T) {
	rl := startRelay(t, "")
	const size = 4 << 20
	body := strings.Repeat("x", size)

	raw := listenAs(t, rl, "wc")
	go func() {
		c, err := raw.Accept()
		if err != nil {
			return
		}
		br := bufio.NewReader(c)
		for { // read the request head
			line, err := br.ReadString('\n')
			if err != nil || line == "\r\n" {
				break
			}
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", size, body)
		c.Close()
	}()
	if n, err := getLate(t, rl.addr, raw.URL()+"/", 300*time.Millisecond); n != size || err != nil {
		t.Errorf("written, then closed: visitor got %d of %d bytes, err %v", n, size, err)
	}

	served := listenAs(t, rl, "hc")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, body)
	})}
	go srv.Serve(served)
	defer srv.Close()
	if n, err := getLate(t, rl.addr, served.URL()+"/", time.Second); n != size || err != nil {
		t.Errorf("http.Serve, Connection: close: visitor got %d of %d bytes, err %v", n, size, err)
	}
}

// http.Server.Shutdown on an agent.Listener must let the request in flight
// finish, as it does on a TCP listener: Shutdown closes the listener first,
// then waits for active connections.
func TestListenGracefulShutdown(t *testing.T) {
	rl := startRelay(t, "")
	ln := listenAs(t, rl, "gs")
	entered := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		time.Sleep(500 * time.Millisecond) // a request in flight
		io.WriteString(w, "finished")
	})}
	go srv.Serve(ln)
	type result struct {
		status int
		body   string
		err    error
	}
	res := make(chan result, 1)
	go func() {
		c := visitorClient(rl.addr)
		resp, err := c.Get(ln.URL() + "/")
		if err != nil {
			res <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{resp.StatusCode, string(b), err}
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("request did not arrive")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case r := <-res:
		if r.err != nil || r.status != 200 || r.body != "finished" {
			t.Fatalf("request in flight during Shutdown: status %d body %q err %v; want 200 \"finished\"", r.status, r.body, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer")
	}
}
