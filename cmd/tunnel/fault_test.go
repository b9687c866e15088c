//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// These tests freeze and stop the processes of a running tunnel and check
// what visitors, the relay and the agent see (issue 5, "reliability under
// faults").

const (
	// visitorTimeout is each visitor request's own limit: a request that
	// reaches it has hung, which must never happen.
	visitorTimeout = 30 * time.Second
	// detectLimit is how soon the relay must notice a frozen agent: it
	// pings every 9 s and gives up on a ping unanswered for 10 s after 1 s
	// of grace, so 20 s, the promise, plus slack for a busy machine
	// running -race.
	detectLimit = 20*time.Second + 3*time.Second
	// fastLimit is how quick an answer the relay makes up itself must be.
	fastLimit = 2 * time.Second
)

// TestFaultAgentStopped freezes `tunnel expose` with kill -STOP while
// visitors have requests in flight and keep sending. Every visitor request
// ends with 502 or 504, none hangs; the relay notices the frozen agent
// within 20 s and from then on answers at once with 502 "Tunnel offline".
// After kill -CONT the agent reconnects by itself and gets the same name
// back: it prints no new URL, and requests succeed again.
func TestFaultAgentStopped(t *testing.T) {
	local := startFaultLocal(t)
	relay, relayAddr := startRelay(t)
	expose := startExpose(t, "expose", relayAddr, "-p", local.port())
	url := expose.stdout.first(t, 2)[0] // a random name: the agent must ask for it again
	client := viaRelay(t, relayAddr)
	if r := visit(client, url+"/"); r.err != nil || r.status != http.StatusOK || r.body != "hello from local" {
		t.Fatalf("GET before the fault: %v", r)
	}

	// Three requests wait at the local server, so they are inside the
	// agent when it stops; four visitors keep sending short requests.
	var resultsMu sync.Mutex
	var results []visitResult
	record := func(r visitResult) {
		resultsMu.Lock()
		results = append(results, r)
		resultsMu.Unlock()
	}
	var visitors sync.WaitGroup
	stopSending := make(chan struct{})
	stop := sync.OnceFunc(func() { close(stopSending) })
	defer visitors.Wait()
	defer stop()
	for range 3 {
		visitors.Go(func() { record(visit(client, url+"/hold")) })
	}
	local.waitHolding(t, 3)
	for range 4 {
		visitors.Go(func() {
			for {
				select {
				case <-stopSending:
					return
				default:
				}
				record(visit(client, url+"/delay"))
				time.Sleep(10 * time.Millisecond) // a person, not a flood
			}
		})
	}
	time.Sleep(300 * time.Millisecond)

	pid := expose.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) }) // SIGKILL works on a stopped process too; be tidy
	t.Log("agent stopped")

	relay.stderr.find(t, "the relay noticing the frozen agent", func(s string) bool {
		return strings.Contains(s, "tunnel offline; names held for reconnect")
	})
	detected := time.Since(stoppedAt)
	detectedAt := time.Now()
	t.Logf("relay noticed the frozen agent %v after SIGSTOP", detected.Round(time.Millisecond))
	if detected > detectLimit {
		t.Errorf("relay noticed the frozen agent after %v, want within %v", detected, detectLimit)
	}

	// Let the senders run into the fast offline answers for a moment.
	time.Sleep(500 * time.Millisecond)
	stop()
	waitGroupWithin(t, &visitors, visitorTimeout+5*time.Second, "visitors")
	var total, fastOffline int
	var slowest time.Duration
	statuses := map[int]int{}
	for _, r := range results {
		total++
		statuses[r.status]++
		slowest = max(slowest, r.took)
		switch {
		case r.err != nil:
			t.Errorf("visitor %s (started %v after SIGSTOP) failed after %v: %v", r.path, r.start.Sub(stoppedAt), r.took, r.err)
		case r.status == http.StatusOK && r.start.After(stoppedAt.Add(50*time.Millisecond)):
			t.Errorf("visitor %s started %v after SIGSTOP got 200 %q from a frozen agent", r.path, r.start.Sub(stoppedAt), r.body)
		case r.status != http.StatusOK && r.status != http.StatusBadGateway && r.status != http.StatusGatewayTimeout:
			t.Errorf("visitor %s got %d %q, want 502 or 504", r.path, r.status, r.body)
		case r.path == "/hold" && r.status == http.StatusOK:
			t.Errorf("visitor %s held by the local server got 200 %q", r.path, r.body)
		case r.start.After(detectedAt):
			if r.status != http.StatusBadGateway || !strings.Contains(r.body, "Tunnel offline") || r.took > fastLimit {
				t.Errorf("visitor %s after the relay noticed: %d %q after %v, want a fast 502 Tunnel offline", r.path, r.status, r.body, r.took)
			}
			fastOffline++
		}
	}
	t.Logf("%d visitor requests, statuses %v, slowest %v, %d fast offline answers", total, statuses, slowest.Round(time.Millisecond), fastOffline)
	for range 3 {
		if r := visit(client, url+"/"); r.status != http.StatusBadGateway || !strings.Contains(r.body, "Tunnel offline") || r.took > fastLimit {
			t.Errorf("GET while the agent is frozen: %v, want a fast 502 Tunnel offline", r)
		}
	}

	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	contAt := time.Now()
	expose.stderr.find(t, "the agent's online-again line", func(s string) bool { return s == "online again" })
	t.Logf("agent online again %v after SIGCONT", time.Since(contAt).Round(time.Millisecond))
	if r := visit(client, url+"/"); r.err != nil || r.status != http.StatusOK || r.body != "hello from local" {
		t.Errorf("GET after the agent came back: %v", r)
	}
	checkOneURL(t, expose, url)
	if n := countLines(relay.stderr, `msg="tunnel online"`, "urls="+url); n != 2 {
		t.Errorf("relay logged %s online %d times, want 2 (start and return)", url, n)
	}
}

// TestFaultRelaySIGTERM stops the relay with SIGTERM while the agent is
// connected and a slow request is in flight: readiness drops at once, new
// connections are refused, the agent hears that the relay drains, the
// request completes and the relay exits 0. The agent says it reconnects,
// and once a new relay listens on the same port it is back with the same
// URL.
func TestFaultRelaySIGTERM(t *testing.T) {
	local := startFaultLocal(t)
	addr := freeAddrBelowEphemeral(t)
	relay, _ := startRelay(t, "--addr", addr)
	expose := startExpose(t, "expose", addr, "-p", local.port())
	url := expose.stdout.first(t, 2)[0]
	client := viaRelay(t, addr)
	if code, body := healthz(addr); code != http.StatusOK {
		t.Fatalf("/healthz before SIGTERM: %d %q", code, body)
	}

	slow := make(chan visitResult, 1)
	go func() { slow <- visit(client, url+"/hold?until=release") }()
	local.waitHolding(t, 1)

	relay.signal(t, syscall.SIGTERM)
	termAt := time.Now()

	// Readiness: /healthz stops answering 200 at once. While the relay
	// drains it says 503 to a request that reaches it; but it also stops
	// listening at once, so a probe on a new connection may only be refused.
	var how string
	for deadline := termAt.Add(fastLimit); ; {
		code, body := healthz(addr)
		if code == http.StatusServiceUnavailable && strings.Contains(body, "draining") {
			how = "503 draining"
			break
		}
		if code == 0 {
			how = "no answer (" + body + ")"
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz still %d %q %v after SIGTERM", code, body, fastLimit)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("readiness dropped %v after SIGTERM: %s", time.Since(termAt).Round(time.Millisecond), how)

	// New connections are refused.
	for deadline := termAt.Add(fastLimit); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("dial after SIGTERM: %v, want connection refused", err)
			}
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("relay still accepts connections %v after SIGTERM", fastLimit)
		}
		time.Sleep(10 * time.Millisecond)
	}
	expose.stderr.find(t, "the agent hearing the relay drain", func(s string) bool {
		return strings.HasPrefix(s, "relay says: ") && strings.Contains(s, "shutting down")
	})

	// The in-flight request completes; then the relay exits 0.
	time.Sleep(200 * time.Millisecond)
	select {
	case r := <-slow:
		t.Fatalf("in-flight request ended before it was released: %v", r)
	default:
	}
	local.releaseHeld()
	select {
	case r := <-slow:
		if r.err != nil || r.status != http.StatusOK || r.body != "held" {
			t.Errorf("in-flight request during the drain: %v, want 200 held", r)
		}
	case <-time.After(visitorTimeout + 5*time.Second):
		t.Fatal("in-flight request never ended")
	}
	if code := relay.exitCode(t); code != 0 {
		t.Fatalf("relay exited %d after SIGTERM, want 0", code)
	}
	t.Logf("relay exited %v after SIGTERM", time.Since(termAt).Round(time.Millisecond))
	expose.stderr.find(t, "the agent's reconnect line", func(s string) bool {
		return strings.HasPrefix(s, "reconnecting (attempt 1, next in ") && strings.HasSuffix(s, "relay shut down or restarted")
	})

	startAt := time.Now()
	startRelay(t, "--addr", addr)
	expose.stderr.find(t, "the agent's online-again line", func(s string) bool { return s == "online again" })
	t.Logf("agent online again %v after the new relay started", time.Since(startAt).Round(time.Millisecond))
	if r := visit(client, url+"/"); r.err != nil || r.status != http.StatusOK || r.body != "hello from local" {
		t.Errorf("GET through the new relay: %v", r)
	}
	checkOneURL(t, expose, url)
}

// checkOneURL checks that expose printed its URL lines once, for url, and
// no others since.
func checkOneURL(t *testing.T, expose *proc, url string) {
	t.Helper()
	expose.stdout.mu.Lock()
	defer expose.stdout.mu.Unlock()
	var printed []string
	for _, s := range expose.stdout.all {
		if strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "ws://") {
			printed = append(printed, s)
		}
	}
	if want := []string{url, "ws://" + strings.TrimPrefix(url, "http://")}; strings.Join(printed, " ") != strings.Join(want, " ") {
		t.Errorf("expose printed URLs %q, want %q once", printed, want)
	}
}

// countLines counts the lines so far that contain every one of subs.
func countLines(l *lines, subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, s := range l.all {
		for _, sub := range subs {
			if !strings.Contains(s, sub) {
				continue next
			}
		}
		n++
	}
	return n
}

// visitResult is one visitor request's outcome.
type visitResult struct {
	path   string
	start  time.Time
	took   time.Duration
	status int
	body   string
	err    error
}

func (r visitResult) String() string {
	return fmt.Sprintf("%s: %d %q after %v (err %v)", r.path, r.status, r.body, r.took.Round(time.Millisecond), r.err)
}

// visit GETs url through client within visitorTimeout.
func visit(client *http.Client, url string) visitResult {
	r := visitResult{start: time.Now()}
	if i := strings.Index(url[len("http://"):], "/"); i >= 0 {
		r.path, _, _ = strings.Cut(url[len("http://")+i:], "?")
	}
	ctx, cancel := context.WithTimeout(context.Background(), visitorTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		r.err = err
		return r
	}
	resp, err := client.Do(req)
	if err != nil {
		r.err = err
		r.took = time.Since(r.start)
		return r
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	r.status, r.body, r.err = resp.StatusCode, strings.TrimSpace(string(b)), err
	r.took = time.Since(r.start)
	return r
}

// healthz asks the relay at addr for /healthz on a new connection. It
// returns status 0 and the error when the request fails.
func healthz(addr string) (int, string) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// waitGroupWithin waits for wg at most d.
func waitGroupWithin(t *testing.T, wg *sync.WaitGroup, d time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s still running after %v", what, d)
	}
}

// freeAddrBelowEphemeral returns a free loopback address whose port lies
// below the ephemeral range (32768-60999 here): while the relay is down, no
// agent's outgoing connection can take the port, or connect to itself on it,
// and keep the new relay from listening.
func freeAddrBelowEphemeral(t *testing.T) string {
	t.Helper()
	for range 100 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(20000+rand.IntN(12000)))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free port in 20000-31999")
	return ""
}

// faultLocal is the local server of the fault tests: GET / answers at once,
// /delay after 50 ms, and /hold only when released, when its visitor goes
// away, or after 45 s.
type faultLocal struct {
	*httptest.Server
	holding     atomic.Int64  // /hold requests that arrived
	release     chan struct{} // closed by releaseHeld
	releaseOnce sync.Once
}

func startFaultLocal(t *testing.T) *faultLocal {
	fl := &faultLocal{release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from local")
	})
	mux.HandleFunc("GET /delay", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		fmt.Fprint(w, "delayed")
	})
	mux.HandleFunc("GET /hold", func(w http.ResponseWriter, r *http.Request) {
		fl.holding.Add(1)
		select {
		case <-fl.release:
		case <-r.Context().Done():
		case <-time.After(45 * time.Second):
		}
		fmt.Fprint(w, "held")
	})
	fl.Server = httptest.NewServer(mux)
	t.Cleanup(func() {
		fl.releaseHeld()
		fl.Close()
	})
	return fl
}

func (fl *faultLocal) releaseHeld() { fl.releaseOnce.Do(func() { close(fl.release) }) }

func (fl *faultLocal) port() string {
	_, port, _ := net.SplitHostPort(fl.Listener.Addr().String())
	return port
}

// waitHolding waits until n /hold requests have reached the local server.
func (fl *faultLocal) waitHolding(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for fl.holding.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d /hold requests reached the local server after %v", fl.holding.Load(), n, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
