package tunnel_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// controlServer is an httptest relay whose handler upgrades control
// requests with AcceptControl and hands the connection to the test. It
// records the Authorization header it saw.
type controlServer struct {
	*httptest.Server
	conns chan net.Conn
	auth  chan string
}

func newControlServer(t *testing.T, useTLS bool) *controlServer {
	cs := &controlServer{conns: make(chan net.Conn, 1), auth: make(chan string, 1)}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cs.auth <- r.Header.Get("Authorization")
		conn, err := tunnel.AcceptControl(w, r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		cs.conns <- conn
	})
	if useTLS {
		cs.Server = httptest.NewTLSServer(h)
	} else {
		cs.Server = httptest.NewServer(h)
	}
	t.Cleanup(cs.Close)
	return cs
}

func (cs *controlServer) url(t *testing.T) *url.URL {
	u, err := url.Parse(cs.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// earlyConn sends extra bytes in the same write as the first one (the
// upgrade request), as an agent that starts talking at once would: they
// reach the relay's HTTP server together with the request.
type earlyConn struct {
	net.Conn
	extra []byte
	once  sync.Once
}

func (c *earlyConn) Write(p []byte) (int, error) {
	first := false
	var err error
	c.once.Do(func() {
		first = true
		_, err = c.Conn.Write(append(slices.Clone(p), c.extra...))
	})
	if !first {
		return c.Conn.Write(p)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// exchange checks that bytes go both ways between the two ends of an
// upgraded connection.
func exchange(t *testing.T, agent, relay net.Conn) {
	t.Helper()
	go agent.Write([]byte("ping from agent"))
	buf := make([]byte, len("ping from agent"))
	if _, err := io.ReadFull(relay, buf); err != nil || string(buf) != "ping from agent" {
		t.Fatalf("relay read %q, %v", buf, err)
	}
	go relay.Write([]byte("pong from relay"))
	if _, err := io.ReadFull(agent, buf); err != nil || string(buf) != "pong from relay" {
		t.Fatalf("agent read %q, %v", buf, err)
	}
}

// TestDialAcceptControl checks the upgrade between DialControl and
// AcceptControl over plain HTTP and TLS: the token arrives as a bearer
// token, bytes the agent sent right behind the request are not lost (the
// relay's HTTP server has buffered them), and then both ends hold a working
// connection.
func TestDialAcceptControl(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("TLS=%v", useTLS), func(t *testing.T) {
			cs := newControlServer(t, useTLS)
			opts := tunnel.DialOptions{
				Token: "s3cret",
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					if useTLS {
						return c, nil // the extra bytes would break the TLS records
					}
					return &earlyConn{Conn: c, extra: []byte("early")}, nil
				},
			}
			if useTLS {
				roots := x509.NewCertPool()
				roots.AddCert(cs.Certificate())
				opts.TLSConfig = &tls.Config{RootCAs: roots}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			agent, err := tunnel.DialControl(ctx, cs.url(t), opts)
			if err != nil {
				t.Fatalf("DialControl: %v", err)
			}
			defer agent.Close()
			relay := <-cs.conns
			defer relay.Close()

			if got := <-cs.auth; got != "Bearer s3cret" {
				t.Errorf("Authorization = %q, want %q", got, "Bearer s3cret")
			}
			if !useTLS {
				// The relay must return what its HTTP server read ahead.
				if got := fmt.Sprintf("%T", relay); got != "*tunnel.bufferedConn" {
					t.Errorf("relay conn is %s: the early bytes were not buffered, so this test no longer covers that path", got)
				}
				buf := make([]byte, len("early"))
				if _, err := io.ReadFull(relay, buf); err != nil || string(buf) != "early" {
					t.Fatalf("relay read %q, %v; want the early bytes", buf, err)
				}
			}
			exchange(t, agent, relay)
		})
	}
}

// TestDialControlEarlyRelayBytes checks the agent's side of read-ahead: a
// relay that writes right behind its 101 answer, in the same packet, loses
// nothing.
func TestDialControlEarlyRelayBytes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tunnel/1\r\n\r\nearly from relay")
		io.Copy(io.Discard, conn) // until the agent closes
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := tunnel.DialControl(ctx, u, tunnel.DialOptions{})
	if err != nil {
		t.Fatalf("DialControl: %v", err)
	}
	defer conn.Close()
	buf := make([]byte, len("early from relay"))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "early from relay" {
		t.Fatalf("agent read %q, %v", buf, err)
	}
}

// TestDialControlRefused checks that a relay's refusal, a non-101 status
// with a one-line reason, becomes an *UpgradeError with both.
func TestDialControlRefused(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		reason string
	}{
		{http.StatusUnauthorized, "token not accepted", "token not accepted"},
		{http.StatusForbidden, "token may not connect\nsecond line is ignored", "token may not connect"},
		{http.StatusServiceUnavailable, "", ""},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, tc.body, tc.status)
			}))
			defer srv.Close()
			u, _ := url.Parse(srv.URL)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := tunnel.DialControl(ctx, u, tunnel.DialOptions{Token: "bad"})
			if err == nil {
				conn.Close()
				t.Fatal("DialControl succeeded against a refusing relay")
			}
			var uerr *tunnel.UpgradeError
			if !errors.As(err, &uerr) {
				t.Fatalf("err = %v (%T), want *tunnel.UpgradeError", err, err)
			}
			if uerr.Status != tc.status || uerr.Reason != tc.reason {
				t.Errorf("UpgradeError = {%d %q}, want {%d %q}", uerr.Status, uerr.Reason, tc.status, tc.reason)
			}
		})
	}
}

// TestDialControlWrongUpgrade checks that a 101 for another protocol is
// not taken for a tunnel connection.
func TestDialControlWrongUpgrade(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		io.Copy(io.Discard, conn)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := tunnel.DialControl(ctx, u, tunnel.DialOptions{})
	if err == nil {
		conn.Close()
		t.Fatal("DialControl accepted a 101 with Upgrade: websocket")
	}
}

// silentRelay accepts TCP connections, reads the upgrade request and never
// answers. received is signalled once the whole request has arrived.
func silentRelay(t *testing.T) (u *url.URL, received <-chan struct{}, peerClosed <-chan error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rc := make(chan struct{})
	pc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			t.Error(err)
			return
		}
		close(rc)
		_, err = c.Read(make([]byte, 1)) // blocks until the agent gives up
		pc <- err
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}, rc, pc
}

// TestDialControlCancel checks that cancelling ctx interrupts a DialControl
// waiting for an answer that never comes, reports context.Canceled, and
// closes the connection.
func TestDialControlCancel(t *testing.T) {
	u, received, peerClosed := silentRelay(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		conn, err := tunnel.DialControl(ctx, u, tunnel.DialOptions{})
		if conn != nil {
			conn.Close()
		}
		errc <- err
	}()
	<-received
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if err := <-peerClosed; err != io.EOF {
		t.Errorf("relay's read after the agent gave up: %v, want EOF", err)
	}
}

// TestDialControlDeadline checks that ctx's deadline bounds the handshake.
func TestDialControlDeadline(t *testing.T) {
	u, _, _ := silentRelay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	conn, err := tunnel.DialControl(ctx, u, tunnel.DialOptions{})
	if err == nil {
		conn.Close()
		t.Fatal("DialControl succeeded against a silent relay")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("DialControl returned after %v, long past its 200ms deadline", d)
	}
}

// TestIsControlRequest checks which requests count as a control upgrade:
// GET on the connect path with the Upgrade token among the Connection
// header's tokens, compared without regard to case.
func TestIsControlRequest(t *testing.T) {
	for _, tc := range []struct {
		name       string
		method     string
		path       string
		connection string
		upgrade    string
		want       bool
	}{
		{"good", "GET", proto.ConnectPath, "Upgrade", "tunnel/1", true},
		{"token list and case", "GET", proto.ConnectPath, "keep-alive, upgrade", "TUNNEL/1", true},
		{"POST", "POST", proto.ConnectPath, "Upgrade", "tunnel/1", false},
		{"wrong path", "GET", "/", "Upgrade", "tunnel/1", false},
		{"path prefix", "GET", proto.ConnectPath + "/x", "Upgrade", "tunnel/1", false},
		{"no Connection", "GET", proto.ConnectPath, "", "tunnel/1", false},
		{"Connection keep-alive", "GET", proto.ConnectPath, "keep-alive", "tunnel/1", false},
		{"no Upgrade", "GET", proto.ConnectPath, "Upgrade", "", false},
		{"websocket", "GET", proto.ConnectPath, "Upgrade", "websocket", false},
		{"other version", "GET", proto.ConnectPath, "Upgrade", "tunnel/2", false},
	} {
		r := httptest.NewRequest(tc.method, "http://relay.example"+tc.path, nil)
		if tc.connection != "" {
			r.Header.Set("Connection", tc.connection)
		}
		if tc.upgrade != "" {
			r.Header.Set("Upgrade", tc.upgrade)
		}
		if got := tunnel.IsControlRequest(r); got != tc.want {
			t.Errorf("%s: IsControlRequest = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestAcceptControlNotUpgrade checks that AcceptControl leaves ordinary
// requests alone.
func TestAcceptControlNotUpgrade(t *testing.T) {
	r := httptest.NewRequest("GET", "http://relay.example/", nil)
	if _, err := tunnel.AcceptControl(httptest.NewRecorder(), r); !errors.Is(err, tunnel.ErrNotUpgrade) {
		t.Errorf("err = %v, want ErrNotUpgrade", err)
	}
}

// TestRelayAddr checks the host:port dialled for a relay URL.
func TestRelayAddr(t *testing.T) {
	for _, tc := range []struct {
		url, want string // want "" means an error
	}{
		{"http://relay.example", "relay.example:80"},
		{"https://relay.example", "relay.example:443"},
		{"http://relay.example:8000", "relay.example:8000"},
		{"https://relay.example:8443/ignored/path", "relay.example:8443"},
		{"http://127.0.0.1:8000", "127.0.0.1:8000"},
		{"https://[::1]", "[::1]:443"},
		{"http://[::1]:8000", "[::1]:8000"},
		{"ftp://relay.example", ""},
		{"ws://relay.example", ""},
		{"relay.example:8000", ""},
		{"http://", ""},
		{"https://:443", ""},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatalf("test bug: %v", err)
		}
		got, err := tunnel.RelayAddr(u)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("RelayAddr(%s) = %q, want an error", tc.url, got)
		case tc.want != "" && (err != nil || got != tc.want):
			t.Errorf("RelayAddr(%s) = %q, %v; want %q", tc.url, got, err, tc.want)
		case err != nil && !strings.Contains(err.Error(), "relay URL"):
			t.Errorf("RelayAddr(%s) error %q does not name the relay URL", tc.url, err)
		}
	}
}

// TestUpgradeErrorText checks the refusal reads well in a log line.
func TestUpgradeErrorText(t *testing.T) {
	err := &tunnel.UpgradeError{Status: 401, Reason: "token not accepted"}
	if got, want := err.Error(), "relay refused the connection: 401 Unauthorized: token not accepted"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
