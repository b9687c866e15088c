package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// acmeRelay is a relay for acmeDomain with ACME from a Pebble CA: its TLS
// listener is where Pebble sends TLS-ALPN-01 probes, its port-80 listener
// where it sends HTTP-01 requests.
type acmeRelay struct {
	*relay.Server
	ca       *pebbleCA
	addr     string // the TLS listener
	stateDir string
}

// Which of the relay's listeners Pebble's validator may reach.
type validator int

const (
	validateNone     validator = iota // a closed port: every order fails
	validateBoth                      // TLS-ALPN-01 and HTTP-01
	validateHTTPOnly                  // HTTP-01 only: TLS-ALPN-01 probes hit a closed port
)

// startACMERelay starts Pebble and a relay whose ACME CA it is.
func startACMERelay(t *testing.T, alwaysValid bool, v validator, mod ...func(*relay.Config)) *acmeRelay {
	t.Helper()
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpPort, tlsPort := httpLn.Addr().(*net.TCPAddr).Port, tlsLn.Addr().(*net.TCPAddr).Port
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	switch v {
	case validateNone:
		httpPort, tlsPort = closedPort, closedPort
	case validateHTTPOnly:
		tlsPort = closedPort
	}
	ca := startPebble(t, httpPort, tlsPort, alwaysValid)
	stateDir := filepath.Join(t.TempDir(), "state")
	cfg := relay.Config{
		Domain:   acmeDomain,
		Logger:   testLogger(t),
		StateDir: stateDir,
		ACME: &relay.ACMEConfig{
			AcceptTOS:    true,
			Email:        "ops@" + acmeDomain,
			DirectoryURL: ca.DirectoryURL,
			HTTPClient:   ca.Client,
		},
	}
	for _, f := range mod {
		f(&cfg)
	}
	rs, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- rs.Serve(tlsLn) }()
	go func() { done <- rs.ServeRedirect(httpLn) }()
	t.Cleanup(func() {
		rs.Close()
		<-done
		<-done
	})
	return &acmeRelay{Server: rs, ca: ca, addr: tlsLn.Addr().String(), stateDir: stateDir}
}

func (r *acmeRelay) relayURL() string { return "https://" + acmeDomain + ":" + port(r.addr) }

// agentTrusting makes an agent trust pool and reach the relay at addr.
func agentTrusting(pool *tls.Config, addr string) func(*agent.Config) {
	return func(c *agent.Config) {
		c.TLSConfig = pool
		c.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	}
}

// With real validation, a granted name gets a certificate from the CA right
// away: the agent is told, and a wss client trusting the CA's root echoes
// through the tunnel. Keys and certificates are private to the relay.
func TestACMECertificateOnGrant(t *testing.T) {
	rl := startACMERelay(t, false, validateBoth)
	local := startLocal(t)
	ag, urls := startAgent(t, rl.relayURL(), []agent.Tunnel{{Name: "demo", Local: local.addr}},
		agentTrusting(&tls.Config{RootCAs: rl.ca.Roots}, rl.addr))
	if want := "https://demo." + acmeDomain + ":" + port(rl.addr); urls[0] != want {
		t.Fatalf("URL %q, want %q", urls[0], want)
	}
	select {
	case kind := <-ag.notices:
		if kind != "cert-ready" {
			t.Fatalf("notice %q, want cert-ready", kind)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no certificate notice within 60s")
	}
	orders := rl.ca.NewOrders()
	if orders != 2 { // the apex and demo
		t.Errorf("%d ACME orders, want 2", orders)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, rl.addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: rl.ca.Roots},
	}}
	defer client.CloseIdleConnections()
	ws, _, err := websocket.Dial(ctx, "wss://demo."+acmeDomain+":"+port(rl.addr)+"/ws", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte("trusted")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.Read(ctx); err != nil || string(msg) != "trusted" {
		t.Fatalf("wss echo: %q %v", msg, err)
	}
	ws.Close(websocket.StatusNormalClosure, "")
	if n := rl.ca.NewOrders(); n != orders {
		t.Errorf("visiting made %d more orders", n-orders)
	}

	// The state directory is the relay's alone: 0700, and key files 0600.
	checkMode(t, rl.stateDir, 0o700)
	filepath.Walk(rl.stateDir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			checkMode(t, path, 0o600)
		}
		return nil
	})
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != want {
		t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), want)
	}
}

// 1000 handshakes with random server names, under the domain and outside
// it, fail fast and cause no ACME order.
func TestACMEStrangersCauseNoOrders(t *testing.T) {
	rl := startACMERelay(t, true, validateBoth)
	local := startLocal(t)
	ag, _ := startAgent(t, rl.relayURL(), []agent.Tunnel{{Name: "demo", Local: local.addr}},
		agentTrusting(&tls.Config{RootCAs: rl.ca.Roots}, rl.addr))
	if kind := <-ag.notices; kind != "cert-ready" {
		t.Fatalf("notice %q", kind)
	}
	before := rl.ca.NewOrders()
	d := &net.Dialer{Timeout: 5 * time.Second}
	for i := range 1000 {
		var b [6]byte
		rand.Read(b[:])
		label := hex.EncodeToString(b[:])
		sni := []string{
			label + "." + acmeDomain,
			label + ".demo." + acmeDomain,
			label + ".example.com",
			"demo." + acmeDomain + "." + label + ".net",
		}[i%4]
		conn, err := tls.DialWithDialer(d, "tcp", rl.addr, &tls.Config{ServerName: sni, RootCAs: rl.ca.Roots})
		if err == nil {
			conn.Close()
			t.Fatalf("handshake for %q succeeded", sni)
		}
	}
	if n := rl.ca.NewOrders(); n != before {
		t.Fatalf("random server names caused %d ACME orders", n-before)
	}
	// Nor does a client that offers only RSA for a certified name: the
	// relay's certificates are ECDSA, and autocert would order an RSA one.
	conn, err := tls.DialWithDialer(d, "tcp", rl.addr, &tls.Config{
		ServerName: "demo." + acmeDomain, RootCAs: rl.ca.Roots, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
	})
	if err == nil {
		conn.Close()
	}
	if n := rl.ca.NewOrders(); n != before {
		t.Fatalf("an RSA-only handshake for a certified name caused %d ACME orders", n-before)
	}
}

// A name whose order fails is reported to the agent in one line, and its
// handshakes then fail fast during the cool-down instead of ordering again.
func TestACMEFailedOrderCoolsDown(t *testing.T) {
	// The apex comes from a file, so the agent can connect; names need ACME,
	// and validation can never succeed.
	ca := newTestCA(t)
	certPath, keyPath := ca.issue(t, t.TempDir(), acmeDomain)
	rl := startACMERelay(t, false, validateNone, func(c *relay.Config) {
		c.TLSCertFile, c.TLSKeyFile = certPath, keyPath
	})
	local := startLocal(t)
	ag, _ := startAgent(t, rl.relayURL(), []agent.Tunnel{{Name: "demo", Local: local.addr}},
		agentTrusting(&tls.Config{RootCAs: ca.Pool}, rl.addr),
		func(c *agent.Config) {
			inner := c.OnEvent
			c.OnEvent = func(e agent.Event) {
				if e.Kind == agent.EventNotice && e.Notice.Kind == "cert-failed" &&
					(e.Notice.Name != "demo" || e.Notice.Message == "" || strings.Contains(e.Notice.Message, "\n")) {
					t.Errorf("cert-failed notice: %+v", e.Notice)
				}
				inner(e)
			}
		})
	select {
	case kind := <-ag.notices:
		if kind != "cert-failed" {
			t.Fatalf("notice %q, want cert-failed", kind)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no certificate notice within 60s")
	}
	orders := rl.ca.NewOrders()
	for range 20 {
		conn, err := tls.Dial("tcp", rl.addr, &tls.Config{ServerName: "demo." + acmeDomain, RootCAs: rl.ca.Roots})
		if err == nil {
			conn.Close()
			t.Fatal("handshake succeeded without a certificate")
		}
	}
	if n := rl.ca.NewOrders(); n != orders {
		t.Fatalf("handshakes during the cool-down made %d orders", n-orders)
	}
}

// HTTP-01 on the port-80 listener works too: with TLS-ALPN-01 unreachable,
// the relay's certificates still come through (autocert falls back to
// HTTP-01 with a second order).
func TestACMEHTTP01(t *testing.T) {
	rl := startACMERelay(t, false, validateHTTPOnly)
	local := startLocal(t)
	ag, _ := startAgent(t, rl.relayURL(), []agent.Tunnel{{Name: "web", Local: local.addr}},
		agentTrusting(&tls.Config{RootCAs: rl.ca.Roots}, rl.addr))
	select {
	case kind := <-ag.notices:
		if kind != "cert-ready" {
			t.Fatalf("notice %q, want cert-ready", kind)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no certificate notice within 60s")
	}
	conn, err := tls.Dial("tcp", rl.addr, &tls.Config{ServerName: "web." + acmeDomain, RootCAs: rl.ca.Roots})
	if err != nil {
		t.Fatalf("handshake with the HTTP-01 certificate: %v", err)
	}
	conn.Close()
}
