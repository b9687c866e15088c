package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// pebbleValidity is the lifetime of every certificate the tests' Pebble
// issues: one profile only (writePebbleConfig), so that it is the same for
// every order.
const pebbleValidity = 90 * 24 * time.Hour

// checkPebbleValidity checks that a certificate from the tests' Pebble has
// the one lifetime it issues (Pebble's NotAfter is the last second of
// validity, one second short of the period).
func checkPebbleValidity(t *testing.T, leaf *x509.Certificate) {
	t.Helper()
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < pebbleValidity-time.Minute || got > pebbleValidity {
		t.Errorf("certificate for %q valid for %v (%s to %s), want %v: Pebble's profile is not deterministic",
			leaf.DNSNames, got, leaf.NotBefore, leaf.NotAfter, pebbleValidity)
	}
}

// TestPebbleHarness gets a certificate from Pebble with autocert, with real
// validation, once through each challenge type.
func TestPebbleHarness(t *testing.T) {
	t.Run("tls-alpn-01", func(t *testing.T) {
		t.Parallel()
		testAutocertWithPebble(t, false)
	})
	t.Run("http-01", func(t *testing.T) {
		t.Parallel()
		testAutocertWithPebble(t, true)
	})
}

// TestPebbleAlwaysValid checks that alwaysValid skips validation: Pebble's
// validator is pointed at a closed port, and issuance still works.
func TestPebbleAlwaysValid(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ca := startPebble(t, closed, closed, true)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	host := "always." + acmeDomain
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		HostPolicy: autocert.HostWhitelist(host),
		Client:     &acme.Client{DirectoryURL: ca.DirectoryURL, HTTPClient: ca.Client},
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pebbleServe(t, tls.NewListener(tlsLn, m.TLSConfig()), http.NotFoundHandler())
	d := tls.Dialer{Config: &tls.Config{ServerName: host, RootCAs: ca.Roots}}
	conn, err := d.DialContext(ctx, "tcp", tlsLn.Addr().String())
	if err != nil {
		t.Fatalf("TLS handshake for %s: %v", host, err)
	}
	leaf := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
	conn.Close()
	if !slices.Equal(leaf.DNSNames, []string{host}) {
		t.Errorf("certificate names = %q", leaf.DNSNames)
	}
	checkPebbleValidity(t, leaf)
	if n := ca.NewOrders(); n != 1 {
		t.Errorf("newOrders = %d, want 1", n)
	}
}

// testAutocertWithPebble serves TLS with an autocert.Manager backed by a fresh
// Pebble. With http01, the authorizations the Manager sees offer only
// HTTP-01 (autocert always tries TLS-ALPN-01 first, and falls back only with
// a new order) and the HTTP listener serves m.HTTPHandler; without, the HTTP
// listener is open but never answers, so only TLS-ALPN-01 can work.
func testAutocertWithPebble(t *testing.T, http01 bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	host := "demo." + acmeDomain

	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tlsLn.Close(); httpLn.Close() })

	ca := startPebble(t, httpLn.Addr().(*net.TCPAddr).Port, tlsLn.Addr().(*net.TCPAddr).Port, false)

	acmeHTTP := ca.Client
	if http01 {
		acmeHTTP = &http.Client{
			Transport: pebbleOnlyChallenge{base: ca.Client.Transport, typ: "http-01"},
			Timeout:   ca.Client.Timeout,
		}
	}
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      autocert.DirCache(t.TempDir()),
		HostPolicy: autocert.HostWhitelist(host),
		Client:     &acme.Client{DirectoryURL: ca.DirectoryURL, HTTPClient: acmeHTTP},
	}

	// TLS: count the validator's acme-tls/1 handshakes.
	var alpnHellos atomic.Int64
	tlsCfg := m.TLSConfig()
	getCert := tlsCfg.GetCertificate
	tlsCfg.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if slices.Contains(hello.SupportedProtos, acme.ALPNProto) {
			alpnHellos.Add(1)
		}
		return getCert(hello)
	}
	pebbleServe(t, tls.NewListener(tlsLn, tlsCfg), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello "+r.Host)
	}))

	// HTTP: count the validator's HTTP-01 requests.
	var http01Requests atomic.Int64
	if http01 {
		h := m.HTTPHandler(nil)
		pebbleServe(t, httpLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
				http01Requests.Add(1)
			}
			// Pebble's validator sends "Host: demo.tunnel.test:PORT" (any
			// port but 80 is kept), and autocert passes r.Host unchanged to
			// the HostPolicy, which HostWhitelist then refuses (403). On
			// port 80 the header has no port; make it look like that.
			if h, _, err := net.SplitHostPort(r.Host); err == nil {
				r.Host = h
			}
			h.ServeHTTP(w, r)
		}))
	}

	// First handshake: autocert gets the certificate from Pebble.
	start := time.Now()
	d := tls.Dialer{Config: &tls.Config{ServerName: host, RootCAs: ca.Roots}}
	conn, err := d.DialContext(ctx, "tcp", tlsLn.Addr().String())
	if err != nil {
		t.Fatalf("TLS handshake for %s: %v (newOrders=%d)", host, err, ca.NewOrders())
	}
	state := conn.(*tls.Conn).ConnectionState()
	conn.Close()
	t.Logf("certificate issued in %v", time.Since(start).Round(time.Millisecond))
	leaf := state.PeerCertificates[0]
	if !slices.Equal(leaf.DNSNames, []string{host}) {
		t.Errorf("certificate names = %q, want [%s]", leaf.DNSNames, host)
	}
	if len(state.VerifiedChains) == 0 {
		t.Error("no verified chain")
	}
	if !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
		t.Errorf("issuer = %q, want Pebble's", leaf.Issuer)
	}
	checkPebbleValidity(t, leaf)
	if n := ca.NewOrders(); n != 1 {
		t.Errorf("newOrders = %d after first handshake, want 1", n)
	}
	if http01 {
		if http01Requests.Load() == 0 || alpnHellos.Load() != 0 {
			t.Errorf("http-01 run: %d HTTP-01 requests, %d acme-tls/1 handshakes", http01Requests.Load(), alpnHellos.Load())
		}
	} else if alpnHellos.Load() == 0 {
		t.Error("tls-alpn-01 run: no acme-tls/1 handshake")
	}

	// Second connection, a real HTTPS request: served from the cached
	// certificate, no new order.
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, tlsLn.Addr().String())
		},
	}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("HTTPS GET: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "hello "+host {
		t.Errorf("HTTPS GET: %s %q", resp.Status, body)
	}
	if n := ca.NewOrders(); n != 1 {
		t.Errorf("newOrders = %d after second connection, want 1", n)
	}

	// A name outside the host policy gets no certificate and no order.
	d.Config = &tls.Config{ServerName: "other." + acmeDomain, RootCAs: ca.Roots}
	if conn, err := d.DialContext(ctx, "tcp", tlsLn.Addr().String()); err == nil {
		conn.Close()
		t.Error("handshake for a name outside the host policy succeeded")
	}
	if n := ca.NewOrders(); n != 1 {
		t.Errorf("newOrders = %d after refused name, want 1", n)
	}
}

// pebbleServe runs an http.Server on ln until the test ends.
func pebbleServe(t *testing.T, ln net.Listener, h http.Handler) {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(tWriter{t}, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// pebbleOnlyChallenge removes all challenges but one type from the authorizations
// an ACME client reads, so autocert cannot pick another.
type pebbleOnlyChallenge struct {
	base http.RoundTripper
	typ  string
}

func (o pebbleOnlyChallenge) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := o.base.RoundTrip(req)
	if err != nil || !strings.Contains(req.URL.Path, "/authZ/") || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	var authz map[string]json.RawMessage
	if err := json.Unmarshal(b, &authz); err == nil {
		var chals []map[string]any
		if err := json.Unmarshal(authz["challenges"], &chals); err == nil {
			chals = slices.DeleteFunc(chals, func(c map[string]any) bool { return c["type"] != o.typ })
			authz["challenges"], _ = json.Marshal(chals)
			b, _ = json.Marshal(authz)
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	resp.ContentLength = int64(len(b))
	resp.Header.Del("Content-Length")
	return resp, nil
}
