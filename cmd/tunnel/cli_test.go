package main

import (
	"net/http"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// These tests run the tunnel binary as processes, as a person would: a
// relay on 127.0.0.1, expose pointing at it, and a local server.

// TestExposeThroughRelay checks the happy path end to end: the URL lines
// expose prints, an HTTP request and a WebSocket round trip through the
// relay, the request lines, then SIGTERM to the relay (exit 0) and the
// reconnect line expose prints, then SIGINT to expose (exit 0).
func TestExposeThroughRelay(t *testing.T) {
	local := startLocalServer(t)
	relay, relayAddr := startRelay(t)
	_, port, _ := strings.Cut(relayAddr, ":")
	expose := startExpose(t, "expose", relayAddr, "-p", local.port(), "-s", "demo")

	// The first two lines are the URL and its WebSocket form, exactly.
	got := expose.stdout.first(t, 2)
	if want := []string{"http://demo.localhost:" + port, "ws://demo.localhost:" + port}; got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("expose printed %q, want %q", got, want)
	}

	client := viaRelay(t, relayAddr)
	if status, body := get(t, client, got[0]+"/"); status != http.StatusOK || body != "hello from local" {
		t.Fatalf("GET through the relay: %d %q", status, body)
	}
	if answer := wsEcho(t, client, got[1]+"/ws", "hi there"); answer != "echo: hi there" {
		t.Fatalf("WebSocket answer %q, want %q", answer, "echo: hi there")
	}

	// One line per request; the WebSocket's comes when it has closed.
	httpLine := regexp.MustCompile(`^\d\d:\d\d:\d\d GET / 200 \S+ 16B$`)
	wsLine := regexp.MustCompile(`^\d\d:\d\d:\d\d WS /ws 101 \S+ \d+B/\d+B 1/1 msgs closed 1000 "bye" by visitor$`)
	expose.stdout.find(t, "GET request line", httpLine.MatchString)
	expose.stdout.find(t, "WebSocket request line", wsLine.MatchString)

	relay.signal(t, syscall.SIGTERM)
	if code := relay.exitCode(t); code != 0 {
		t.Fatalf("relay exited %d after SIGTERM, want 0", code)
	}
	expose.stderr.find(t, "reconnect line", func(s string) bool { return strings.HasPrefix(s, "reconnecting (attempt 1, next in ") })

	expose.signal(t, syscall.SIGINT)
	if code := expose.exitCode(t); code != 0 {
		t.Fatalf("expose exited %d after SIGINT, want 0", code)
	}
}

// TestExposeNameInUse checks that a second agent asking for a name that a
// live agent holds exits 1 with the relay's one-line reason.
func TestExposeNameInUse(t *testing.T) {
	local := startLocalServer(t)
	_, relayAddr := startRelay(t)
	first := startExpose(t, "first", relayAddr, "-p", local.port(), "-s", "demo")
	first.stdout.first(t, 1)

	second := startExpose(t, "second", relayAddr, "-p", local.port(), "-s", "demo")
	if code := second.exitCode(t); code != 1 {
		t.Fatalf("second expose exited %d, want 1", code)
	}
	second.stderr.find(t, "the in-use error", func(s string) bool {
		return strings.HasPrefix(s, `tunnel: name "demo" is in use`)
	})
}

// TestExposeInvalidName checks that a name breaking the naming rules exits
// 1 with a message that names the rule.
func TestExposeInvalidName(t *testing.T) {
	local := startLocalServer(t)
	_, relayAddr := startRelay(t)
	expose := startExpose(t, "expose", relayAddr, "-p", local.port(), "-s", "Bad_Name")
	if code := expose.exitCode(t); code != 1 {
		t.Fatalf("expose exited %d, want 1", code)
	}
	expose.stderr.find(t, "the invalid-name error", func(s string) bool {
		return s == `tunnel: name "Bad_Name" is invalid: use lower-case letters only`
	})
}

// TestExposeInterruptReleasesName checks that Ctrl-C makes expose exit 0
// after telling the relay goodbye, so the name is free at once even though
// the relay would otherwise hold it for the grace period.
func TestExposeInterruptReleasesName(t *testing.T) {
	local := startLocalServer(t)
	_, relayAddr := startRelay(t, "--grace", "10m")
	first := startExpose(t, "first", relayAddr, "-p", local.port(), "-s", "demo")
	url := first.stdout.first(t, 1)[0]

	first.signal(t, syscall.SIGINT)
	if code := first.exitCode(t); code != 0 {
		t.Fatalf("expose exited %d after SIGINT, want 0", code)
	}

	second := startExpose(t, "second", relayAddr, "-p", local.port(), "-s", "demo")
	if got := second.stdout.first(t, 1)[0]; got != url {
		t.Fatalf("second expose got %q, want the same URL %q", got, url)
	}
}

// TestRelaySecondSignal checks that a second signal while the relay drains
// a slow request makes it exit 1 at once instead of waiting.
func TestRelaySecondSignal(t *testing.T) {
	local := startLocalServer(t)
	relay, relayAddr := startRelay(t, "--drain-timeout", "10m")
	expose := startExpose(t, "expose", relayAddr, "-p", local.port(), "-s", "demo")
	url := expose.stdout.first(t, 1)[0]

	// A request that the local server holds keeps the relay draining.
	client := viaRelay(t, relayAddr)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		req, _ := http.NewRequest(http.MethodGet, url+"/slow", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
		}
	})
	<-local.slowEntered

	relay.signal(t, syscall.SIGTERM)
	relay.stderr.find(t, "shutdown log", func(s string) bool { return strings.Contains(s, `msg="relay shutting down"`) })
	relay.signal(t, syscall.SIGINT)
	if code := relay.exitCode(t); code != 1 {
		t.Fatalf("relay exited %d after a second signal, want 1", code)
	}
	if !relay.stderr.contains("tunnel: second signal") {
		t.Error("relay did not say why it exited")
	}
}

// TestExitCodes checks main's exit codes: 2 and a hint for usage errors,
// 0 for success.
func TestExitCodes(t *testing.T) {
	for _, tt := range []struct {
		args []string
		code int
		line string // the first line of stderr
	}{
		{[]string{"expose", "-p", "0"}, 2, `tunnel: invalid argument "0" for "-p, --port" flag: want a TCP port from 1 to 65535`},
		{[]string{"expos"}, 2, `tunnel: unknown command "expos"; did you mean "expose"?`},
		{[]string{"relay"}, 2, "tunnel: no domain: pass --domain (the apex your wildcard DNS points at, or localhost) or set TUNNEL_DOMAIN"},
		{[]string{"relay", "--domain", "example.com"}, 2, "tunnel: choose how to serve example.com: --acme-accept-tos [--acme-email you@example.com] for automatic certificates, --tls-cert/--tls-key for your own, or --plain for HTTP only"},
		{[]string{"relay", "--domain", "example.com", "--plain", "--acme-accept-tos"}, 2, "tunnel: --plain serves HTTP only and cannot go with --acme-accept-tos: drop one or the other"},
		{[]string{"expose", "-p", "8080", "--ca-file", "/nonexistent/ca.pem"}, 2, "tunnel: --ca-file: open /nonexistent/ca.pem: no such file or directory"},
		{[]string{"version"}, 0, ""},
	} {
		p := startTunnel(t, tt.args[0], []string{"TUNNEL_DOMAIN="}, tt.args...)
		if code := p.exitCode(t); code != tt.code {
			t.Errorf("tunnel %q exited %d, want %d", tt.args, code, tt.code)
		}
		if tt.line == "" {
			continue
		}
		if got := p.stderr.first(t, 2); got[0] != tt.line || !strings.HasPrefix(got[1], "Run 'tunnel") {
			t.Errorf("tunnel %q said %q, want %q and a hint", tt.args, got, tt.line)
		}
	}
}

// TestIdleRelayShutdownTellsAgents checks that a relay with nothing in
// flight (systemctl restart on a quiet night) still tells its agents it is
// shutting down before it closes their connections, so that they say so
// instead of blaming the network; and that the notice, which expose shows
// itself, adds no log line to --quiet's or --json's stderr.
func TestIdleRelayShutdownTellsAgents(t *testing.T) {
	local := startLocalServer(t)
	relay, relayAddr := startRelay(t)
	quiet := startExpose(t, "quiet", relayAddr, "-p", local.port(), "--no-inspect", "--quiet")
	quiet.stdout.first(t, 1)
	js := startExpose(t, "json", relayAddr, "-p", local.port(), "--no-inspect", "--json")
	js.stdout.find(t, "the online event", func(s string) bool { return strings.Contains(s, `"event":"online"`) })

	relay.signal(t, syscall.SIGTERM)
	if code := relay.exitCode(t); code != 0 {
		t.Fatalf("relay exited %d, want 0", code)
	}
	quiet.stderr.find(t, "the reconnect line", func(s string) bool {
		return strings.HasPrefix(s, "reconnecting (attempt 1, next in ") && strings.HasSuffix(s, "): relay shut down or restarted")
	})
	js.stdout.find(t, "the draining notice", func(s string) bool {
		return strings.Contains(s, `"event":"notice"`) && strings.Contains(s, `"kind":"draining"`)
	})
	js.stdout.find(t, "the offline event", func(s string) bool {
		return strings.Contains(s, `"event":"offline"`) && strings.Contains(s, `"error":"relay shut down or restarted"`)
	})
	for _, p := range []*proc{quiet, js} {
		p.signal(t, syscall.SIGINT)
		if code := p.exitCode(t); code != 0 {
			t.Errorf("%s exited %d", p.name, code)
		}
		for _, s := range p.stderr.all {
			if strings.Contains(s, "level=") {
				t.Errorf("%s: log line on stderr: %q", p.name, s)
			}
		}
	}
}
