package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// tlsRelay is a relay serving HTTPS with a certificate file for localhost
// and *.localhost from a test CA.
type tlsRelay struct {
	*testRelay
	ca                *testCA
	certPath, keyPath string
}

func startTLSRelay(t *testing.T, mod ...func(*relay.Config)) *tlsRelay {
	t.Helper()
	ca := newTestCA(t)
	certPath, keyPath := ca.issue(t, t.TempDir(), "localhost", "*.localhost")
	mods := append([]func(*relay.Config){func(c *relay.Config) {
		c.TLSCertFile, c.TLSKeyFile = certPath, keyPath
	}}, mod...)
	rl := startRelay(t, "", mods...)
	if !rl.TLS() {
		t.Fatal("relay with a certificate file does not serve TLS")
	}
	return &tlsRelay{testRelay: rl, ca: ca, certPath: certPath, keyPath: keyPath}
}

// agentTLS makes an agent trust the test CA and reach the relay at addr.
func agentTLS(ca *testCA, addr string) func(*agent.Config) {
	return func(c *agent.Config) {
		c.TLSConfig = &tls.Config{RootCAs: ca.Pool}
		c.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	}
}

// httpsClient trusts ca and sends everything to addr; h2 lets it negotiate
// HTTP/2.
func httpsClient(ca *testCA, addr string, h2 bool) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: ca.Pool},
		ForceAttemptHTTP2: h2,
	}}
}

// Over TLS: the agent connects with https and verifies the relay; visitors
// get HTTP/2, X-Forwarded-Proto https, and wss works (over HTTP/1.1).
func TestTLSEndToEnd(t *testing.T) {
	rl := startTLSRelay(t)
	local := startLocal(t)
	_, urls := startAgent(t, "https://localhost:"+port(rl.addr), []agent.Tunnel{{Name: "demo", Local: local.addr}}, agentTLS(rl.ca, rl.addr))
	if want := "https://demo.localhost:" + port(rl.addr); urls[0] != want {
		t.Fatalf("URL %q, want %q", urls[0], want)
	}
	c := httpsClient(rl.ca, rl.addr, true)
	resp, err := c.Get(urls[0] + "/headers")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Errorf("visitor got %s, want HTTP/2", resp.Proto)
	}
	if !strings.Contains(string(body), "X-Forwarded-Proto=https\n") {
		t.Errorf("local server saw:\n%s", body)
	}
	// 4 MiB: full 128 KiB yamux frames over the agent's TLS connection.
	const n = 4 << 20
	resp, err = c.Get(fmt.Sprintf("%s/bytes?n=%d", urls[0], n))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	want, _ := io.ReadAll(io.LimitReader(newPattern(), n))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("4 MiB over TLS: %d bytes, %v; want the pattern intact", len(got), err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "wss://demo.localhost:"+port(rl.addr)+"/ws", &websocket.DialOptions{HTTPClient: httpsClient(rl.ca, rl.addr, false)})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte("over wss")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.Read(ctx); err != nil || string(msg) != "over wss" {
		t.Fatalf("wss echo: %q %v", msg, err)
	}
	ws.Close(websocket.StatusNormalClosure, "")
}

// A request whose Host differs from the TLS server name of its connection
// gets 421, so one tunnel's connection never carries another's requests.
func TestTLSMisdirectedRequest(t *testing.T) {
	rl := startTLSRelay(t)
	local := startLocal(t)
	startAgent(t, "https://localhost:"+port(rl.addr), []agent.Tunnel{{Name: "alpha", Local: local.addr}}, agentTLS(rl.ca, rl.addr))
	startAgent(t, "https://localhost:"+port(rl.addr), []agent.Tunnel{{Name: "beta", Local: local.addr}}, agentTLS(rl.ca, rl.addr))

	conn, err := tls.Dial("tcp", rl.addr, rl.ca.tlsClientConfig("alpha.localhost"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	for _, tc := range []struct {
		host   string
		status int
	}{{"alpha.localhost", 200}, {"beta.localhost", 421}, {"ALPHA.localhost:443", 200}} {
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", tc.host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("Host %s on alpha's connection: %d, want %d", tc.host, resp.StatusCode, tc.status)
		}
	}
}

// A handshake for a name the relay does not hold fails at once, even though
// the wildcard certificate would cover it.
func TestTLSUnknownNameFailsHandshake(t *testing.T) {
	rl := startTLSRelay(t)
	for _, sni := range []string{"nosuch.localhost", "example.com", "a.b.localhost"} {
		conn, err := tls.Dial("tcp", rl.addr, rl.ca.tlsClientConfig(sni))
		if err == nil {
			conn.Close()
			t.Errorf("handshake for %q succeeded", sni)
		}
	}
}

// New certificate files are picked up by new handshakes without a restart;
// a connection made before keeps working.
func TestTLSCertFileReload(t *testing.T) {
	rl := startTLSRelay(t)
	local := startLocal(t)
	startAgent(t, "https://localhost:"+port(rl.addr), []agent.Tunnel{{Name: "demo", Local: local.addr}}, agentTLS(rl.ca, rl.addr))
	serialOf := func(c *tls.Conn) string { return c.ConnectionState().PeerCertificates[0].SerialNumber.String() }

	old, err := tls.Dial("tcp", rl.addr, rl.ca.tlsClientConfig("demo.localhost"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldSerial := serialOf(old)

	// Renew: same names, a new certificate, written in place.
	dir := strings.TrimSuffix(rl.certPath, "cert.pem")
	rl.ca.issue(t, dir, "localhost", "*.localhost")
	var newSerial string
	waitFor(t, 10*time.Second, "new handshakes to see the new certificate", func() bool {
		c, err := tls.Dial("tcp", rl.addr, rl.ca.tlsClientConfig("demo.localhost"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		newSerial = serialOf(c)
		return newSerial != oldSerial
	})
	// The connection from before the reload still carries requests.
	fmt.Fprintf(old, "GET /still HTTP/1.1\r\nHost: demo.localhost\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(old), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("old connection after reload: %v %v", resp, err)
	}
	resp.Body.Close()
}

// A replaced certificate file that could serve nobody (another domain,
// expired, not valid yet) is not loaded: the relay keeps the certificate
// it has, and says why in its log, as it would refuse the file at start.
func TestTLSCertFileReloadRefusesUnusable(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name       string
		from, till time.Time
		names      []string
	}{
		{"another domain", now.Add(-time.Hour), now.Add(24 * time.Hour), []string{"example.com", "*.example.com"}},
		{"expired", now.Add(-48 * time.Hour), now.Add(-24 * time.Hour), []string{"localhost", "*.localhost"}},
		{"not yet valid", now.Add(24 * time.Hour), now.Add(48 * time.Hour), []string{"localhost", "*.localhost"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rl := startTLSRelay(t)
			c, err := tls.Dial("tcp", rl.addr, rl.ca.tlsClientConfig("localhost"))
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			time.Sleep(1100 * time.Millisecond) // the files are looked at once a second
			rl.ca.issueValid(t, strings.TrimSuffix(rl.certPath, "cert.pem"), tc.from, tc.till, tc.names...)
			time.Sleep(1100 * time.Millisecond)
			for range 2 { // the first may be the one that looks
				if c, err = tls.Dial("tcp", rl.addr, rl.ca.tlsClientConfig("localhost")); err == nil {
					c.Close()
				}
			}
			if err != nil {
				t.Errorf("after the file was replaced by one for %v valid %s to %s, handshakes fail: %v",
					tc.names, tc.from.Format(time.DateOnly), tc.till.Format(time.DateOnly), err)
			}
		})
	}
}

// An agent that cannot verify the relay's certificate stops at once with a
// one-line reason that says what to do.
func TestAgentRejectsUntrustedRelay(t *testing.T) {
	rl := startTLSRelay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := agent.Run(ctx, agent.Config{
		Relay:   "https://localhost:" + port(rl.addr),
		Tunnels: []agent.Tunnel{{Name: "demo", Local: "localhost:1"}},
		Logger:  testLogger(t),
		// No TLSConfig: the system roots do not know the test CA.
	})
	var perm *agent.PermanentError
	if !errors.As(err, &perm) || ctx.Err() != nil {
		t.Fatalf("agent.Run = %v, want a permanent error before the deadline", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "certificate not trusted") || !strings.Contains(msg, "--ca-file") || strings.Contains(msg, "\n") {
		t.Fatalf("message %q", msg)
	}
}

// With HSTS on, responses over TLS carry Strict-Transport-Security; it is
// off by default.
func TestHSTS(t *testing.T) {
	for _, on := range []bool{false, true} {
		rl := startTLSRelay(t, func(c *relay.Config) { c.HSTS = on })
		resp, err := httpsClient(rl.ca, rl.addr, false).Get("https://localhost/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Strict-Transport-Security") != ""; got != on {
			t.Errorf("HSTS %v: header present = %v", on, got)
		}
	}
}

// The port-80 listener of a TLS relay redirects to https.
func TestHTTPRedirectsToHTTPS(t *testing.T) {
	rl := startTLSRelay(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rl.ServeRedirect(ln) }()
	c := &http.Client{
		Transport:     visitorTransport(ln.Addr().String(), nil),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := c.Get("http://demo.localhost/path?q=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "https://demo.localhost/path?q=1" {
		t.Fatalf("redirect: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// An IPv6 literal keeps its brackets when its port goes.
	if resp, err = c.Get("http://[2001:db8::1]:8080/path"); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); loc != "https://[2001:db8::1]/path" {
		t.Errorf("redirect of an IPv6 literal with a port to %q", loc)
	}
	c.CloseIdleConnections()
	rl.stop()
	if err := <-done; err != nil {
		t.Fatalf("ServeRedirect: %v", err)
	}
}

// A certificate file for another domain would fail every handshake, with
// nothing in the relay's log above debug: the relay refuses to start, and
// says why in one line.
func TestTLSCertFileForAnotherDomain(t *testing.T) {
	ca := newTestCA(t)
	certPath, keyPath := ca.issue(t, t.TempDir(), "localhost", "*.localhost")
	_, err := relay.New(relay.Config{Domain: "example.com", TLSCertFile: certPath, TLSKeyFile: keyPath, Logger: testLogger(t)})
	want := "relay: --tls-cert " + certPath + " covers localhost, *.localhost, neither example.com nor a name under it: use a certificate for example.com and *.example.com, or the --domain it was made for"
	if err == nil || err.Error() != want {
		t.Fatalf("New = %v\nwant %s", err, want)
	}
	// A certificate for some names under the domain is enough.
	certPath, keyPath = ca.issue(t, t.TempDir(), "demo.example.com")
	if _, err := relay.New(relay.Config{Domain: "example.com", TLSCertFile: certPath, TLSKeyFile: keyPath, Logger: testLogger(t)}); err != nil {
		t.Fatalf("a certificate for demo.example.com: %v", err)
	}
}
