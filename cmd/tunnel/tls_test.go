package main

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests run the relay with a certificate file from a test CA, made
// at test time, and expose connecting to it over TLS.

// startTLSRelay runs `tunnel relay --domain localhost` with the test
// certificate on a free port, without the port-80 listener, and returns it
// with its address.
func startTLSRelay(t *testing.T, certs *testCerts) (*proc, string) {
	t.Helper()
	p := startTunnel(t, "relay", nil, "relay", "--domain", "localhost", "--addr", "127.0.0.1:0",
		"--tls-cert", certs.CertFile, "--tls-key", certs.KeyFile, "--http-addr", "")
	line := p.stderr.find(t, "listening line", func(s string) bool { return strings.HasPrefix(s, "relay listening on ") })
	addr, serving, _ := strings.Cut(strings.TrimPrefix(line, "relay listening on "), ", serving ")
	_, port, _ := net.SplitHostPort(addr)
	if want := "https://<name>.localhost:" + port; serving != want {
		t.Errorf("relay serves %q, want %q", serving, want)
	}
	return p, addr
}

// viaTLSRelay returns an HTTP/1.1 client that trusts the test CA and sends
// every request to relayAddr, whatever the host in the URL.
func viaTLSRelay(t *testing.T, relayAddr string, certs *testCerts, serverName string) *http.Client {
	tr := &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{RootCAs: certs.Pool, ServerName: serverName},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, relayAddr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// TestExposeOverTLS checks an https relay with a certificate file and an
// agent that trusts its CA through --ca-file: the URL lines are https and
// wss, and a page and a wss round trip go through.
func TestExposeOverTLS(t *testing.T) {
	certs := newTestCerts(t, "localhost", "*.localhost")
	local := startLocalServer(t)
	relay, relayAddr := startTLSRelay(t, certs)
	_, port, _ := net.SplitHostPort(relayAddr)
	expose := startTunnel(t, "expose", nil, "expose", "-p", local.port(), "-s", "demo",
		"--relay", "https://localhost:"+port, "--ca-file", certs.CAFile)

	got := expose.stdout.first(t, 2)
	if want := []string{"https://demo.localhost:" + port, "wss://demo.localhost:" + port}; got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("expose printed %q, want %q", got, want)
	}
	if expose.stderr.contains("waiting for certificate") {
		t.Error("expose waited for a certificate that the file covers")
	}

	client := viaTLSRelay(t, relayAddr, certs, "demo.localhost")
	if status, body := get(t, client, got[0]+"/"); status != http.StatusOK || body != "hello from local" {
		t.Fatalf("GET through the relay: %d %q", status, body)
	}
	if answer := wsEcho(t, client, got[1]+"/ws", "hi over tls"); answer != "echo: hi over tls" {
		t.Fatalf("WebSocket answer %q, want %q", answer, "echo: hi over tls")
	}
	expose.stdout.find(t, "WebSocket request line", func(s string) bool { return strings.Contains(s, " WS /ws 101 ") })

	expose.signal(t, syscall.SIGINT)
	if code := expose.exitCode(t); code != 0 {
		t.Fatalf("expose exited %d after SIGINT, want 0", code)
	}
	relay.signal(t, syscall.SIGTERM)
	if code := relay.exitCode(t); code != 0 {
		t.Fatalf("relay exited %d after SIGTERM, want 0", code)
	}
}

// TestExposeUntrustedRelay checks that expose, not trusting the relay's
// certificate, exits 1 at once with one line that says why and what to do,
// rather than retrying.
func TestExposeUntrustedRelay(t *testing.T) {
	certs := newTestCerts(t, "localhost", "*.localhost")
	local := startLocalServer(t)
	_, relayAddr := startTLSRelay(t, certs)
	_, port, _ := net.SplitHostPort(relayAddr)

	start := time.Now()
	expose := startTunnel(t, "expose", nil, "expose", "-p", local.port(), "-s", "demo", "--relay", "https://localhost:"+port)
	if code := expose.exitCode(t); code != 1 {
		t.Fatalf("expose exited %d, want 1", code)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("expose took %v to give up, want under 10s", took)
	}
	// The process has exited and its output is read: the lines are all in.
	errLines := expose.stderr.all
	if len(errLines) != 1 {
		t.Fatalf("expose wrote %d lines on stderr, want 1: %q", len(errLines), errLines)
	}
	if line := errLines[0]; !strings.HasPrefix(line, "tunnel: ") || !strings.Contains(line, "certificate not trusted") || !strings.Contains(line, "--ca-file") {
		t.Errorf("expose said %q, want one line naming the untrusted certificate and --ca-file", line)
	}
	if n := len(expose.stdout.all); n != 0 {
		t.Errorf("expose printed %q on stdout", expose.stdout.all)
	}
}

// TestExposeHTTPToTLSRelay checks the mistake of an http:// relay URL for
// a relay that serves HTTPS on that port: expose and doctor say to use
// https://, not that a proxy drops the Upgrade header.
func TestExposeHTTPToTLSRelay(t *testing.T) {
	certs := newTestCerts(t, "localhost", "*.localhost")
	local := startLocalServer(t)
	_, relayAddr := startTLSRelay(t, certs)
	_, port, _ := net.SplitHostPort(relayAddr)
	const want = "(the relay serves HTTPS on that port: use https:// in the relay URL)"

	expose := startTunnel(t, "expose", nil, "expose", "-p", local.port(), "--no-inspect", "--relay", "http://localhost:"+port)
	if code := expose.exitCode(t); code != 1 {
		t.Fatalf("expose exited %d, want 1", code)
	}
	if errLines := expose.stderr.all; len(errLines) != 1 || !strings.HasSuffix(errLines[0], want) || strings.Contains(errLines[0], "proxy") {
		t.Errorf("expose said %q, want one line ending %q", errLines, want)
	}

	doctor := startTunnel(t, "doctor", nil, "doctor", "--relay", "http://localhost:"+port, "--timeout", "5s")
	if code := doctor.exitCode(t); code != 1 {
		t.Fatalf("doctor exited %d, want 1", code)
	}
	doctor.stdout.find(t, "the agent check's fix", func(s string) bool {
		return strings.Contains(s, "fix:") && strings.HasSuffix(s, "the relay serves HTTPS on that port: use https:// in --relay")
	})
}
