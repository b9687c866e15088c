package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
)

// Graceful shutdown: the listener closes at once, agents are told, an
// in-flight request finishes, an open WebSocket is closed, and Shutdown
// returns with every goroutine stopped (TestMain checks for leaks).
func TestGracefulShutdown(t *testing.T) {
	rl := startRelay(t, "")
	entered, release := make(chan struct{}), make(chan struct{})
	mux := http.NewServeMux()
	local := startLocal(t)
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "finished")
	})
	mux.Handle("/", local.srv.Handler)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	slow := &http.Server{Handler: mux}
	go slow.Serve(ln)
	defer slow.Close()
	ag, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: ln.Addr().String()}})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, err := dialWS(ctx, rl.addr, "ws://demo.localhost/ws")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()

	type result struct {
		status int
		body   string
		err    error
	}
	inflight := make(chan result, 1)
	go func() {
		resp, err := visitorClient(rl.addr).Get("http://demo.localhost/slow")
		if err != nil {
			inflight <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		inflight <- result{resp.StatusCode, string(b), err}
	}()
	<-entered

	shutdown := make(chan error, 1)
	go func() { shutdown <- rl.Shutdown(ctx) }()

	select {
	case kind := <-ag.notices:
		if kind != "draining" {
			t.Fatalf("notice %q, want draining", kind)
		}
	case <-ctx.Done():
		t.Fatal("agent was not told about the shutdown")
	}
	waitFor(t, 5*time.Second, "the listener to close", func() bool {
		c, err := net.Dial("tcp", rl.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	close(release)
	r := <-inflight
	if r.err != nil || r.status != 200 || r.body != "finished" {
		t.Fatalf("in-flight request during shutdown: %d %q %v", r.status, r.body, r.err)
	}
	if err := <-shutdown; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, _, err := ws.Read(ctx); err == nil {
		t.Fatal("WebSocket still open after shutdown")
	}
}

// When in-flight requests outlast the drain deadline, Shutdown closes them
// and returns the deadline error.
func TestShutdownDeadline(t *testing.T) {
	rl := startRelay(t, "")
	entered, release := make(chan struct{}), make(chan struct{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	stuck := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
	})}
	go stuck.Serve(ln)
	defer stuck.Close()
	defer close(release)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: ln.Addr().String()}})
	done := make(chan error, 1)
	go func() {
		resp, err := visitorClient(rl.addr).Get("http://demo.localhost/")
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := rl.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown past its deadline: %v", err)
	}
	if err := <-done; err == nil {
		t.Fatal("stuck request got an answer after a forced shutdown")
	}
}
