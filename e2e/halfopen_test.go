package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// halfOpenDetectWithin is how soon each side must notice a peer that stopped
// answering: keepalive interval, write timeout and grace, and slack for a
// busy machine running -race.
const halfOpenDetectWithin = tunnel.KeepAliveInterval + tunnel.WriteTimeout + tunnel.KeepAliveGrace + 5*time.Second

// TestHalfOpenControlConnection makes the agent's control connection
// half-open three times in a row, as a NAT that forgot the mapping would: a
// proxy between agent and relay keeps both TCP connections open but drops
// every byte, FINs included, in both directions. Each time both ends must
// notice on their own within 20 s (the agent reports offline, the relay holds
// the name), and once new connections pass again the agent must come back
// under the same name. At the end exactly one session serves the name, and
// TestMain checks that no goroutine leaked.
//
// Each cut comes just after a session started, the worst moment for
// keepalives: the first ping goes out 10 s later and is given up 10 s after
// that, so both sides notice at about 20 s and the three rounds take about a
// minute.
func TestHalfOpenControlConnection(t *testing.T) {
	logs := &relayLogCounter{held: make(chan time.Time, 16)}
	rl := startRelay(t, "", func(c *relay.Config) {
		c.Logger = slog.New(&logHookHandler{inner: c.Logger.Handler(), hook: logs.saw})
	})
	local := startLocal(t)
	proxy := startBlackholeProxy(t, rl.addr)
	ag, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "halfopen", Local: local.addr}}, dialThroughBlackhole(proxy))
	url := urls[0]
	visitor := visitorClient(rl.addr)
	visitor.Timeout = 30 * time.Second
	defer visitor.CloseIdleConnections()

	for round := 1; round <= 3; round++ {
		// Stale offline events (refused reconnects of the last round) would
		// read as an instant detection.
		halfOpenDrain(ag.offline)
		halfOpenDrain(logs.held)

		cut := time.Now()
		proxy.blackhole()
		var agentAt, relayAt time.Duration
		var agentErr error
		timeout := time.NewTimer(halfOpenDetectWithin)
		for agentAt == 0 || relayAt == 0 {
			select {
			case err := <-ag.offline:
				if agentAt == 0 {
					agentAt, agentErr = time.Since(cut), err
				}
			case at := <-logs.held:
				if relayAt == 0 {
					relayAt = at.Sub(cut)
				}
			case <-timeout.C:
				t.Fatalf("round %d: after %v the agent noticed: %v (at %v), the relay: %v (at %v)",
					round, halfOpenDetectWithin, agentAt != 0, agentAt, relayAt != 0, relayAt)
			}
		}
		timeout.Stop()
		t.Logf("round %d: half-open noticed by the agent after %v (%v), by the relay after %v",
			round, agentAt.Round(time.Millisecond), agentErr, relayAt.Round(time.Millisecond))

		// The relay holds the name: visitors get a fast 502.
		start := time.Now()
		status, body := get(t, visitor, url+"/while-held")
		if took := time.Since(start); status != http.StatusBadGateway || !strings.Contains(body, "Tunnel offline") || !strings.Contains(body, "held for it") || took > 2*time.Second {
			t.Fatalf("round %d: request while the name is held: %d %q after %v, want a fast 502 Tunnel offline", round, status, body, took)
		}

		// New connections pass again; the old ones stay dead.
		proxy.admitNew()
		select {
		case again := <-ag.online:
			if again[0] != url {
				t.Fatalf("round %d: agent came back as %s, want %s", round, again[0], url)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: agent not back online 10s after new connections passed", round)
		}
		if status, body := get(t, visitor, url+"/round"); status != http.StatusOK || body != "GET /round" {
			t.Fatalf("round %d: request after the reconnect: %d %q", round, status, body)
		}
	}

	// Exactly one live session: the relay's sessions balance to one, the
	// proxy forwards exactly one connection, and another agent (with another
	// reconnect secret) finds the name in use, not held.
	waitFor(t, 5*time.Second, "the relay's sessions to balance to one", func() bool { return logs.live() == 1 })
	if n := proxy.forwarding(); n != 1 {
		t.Errorf("the proxy forwards %d live connections, want 1", n)
	}
	other, _ := runAgent(t, rl.url(), []agent.Tunnel{{Name: "halfopen", Local: local.addr}})
	select {
	case err := <-other.done:
		other.done <- err
		if err == nil || !strings.Contains(err.Error(), "is in use by another agent") {
			t.Errorf("second agent for the name: %v, want in use", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second agent for the name neither refused nor stopped")
	}
	for i := range 5 {
		if status, body := get(t, visitor, url+"/final"); status != http.StatusOK || body != "GET /final" {
			t.Fatalf("final request %d: %d %q", i, status, body)
		}
	}
	if n := logs.live(); n != 1 {
		t.Errorf("relay sessions: %d live after the checks, want 1 (%s)", n, logs)
	}
	ag.stop()
	waitFor(t, 5*time.Second, "the session to end after goodbye", func() bool { return logs.live() == 0 })
}

// halfOpenDrain empties c.
func halfOpenDrain[T any](c chan T) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// relayLogCounter follows the relay's session lifecycle through its log:
// every session that went online ends with exactly one of the two end
// messages.
type relayLogCounter struct {
	online, heldEnd, closedEnd atomic.Int64
	held                       chan time.Time // when a session ended with its names held
}

func (c *relayLogCounter) saw(msg string) {
	switch msg {
	case "tunnel online":
		c.online.Add(1)
	case "tunnel offline; names held for reconnect":
		c.heldEnd.Add(1)
		select {
		case c.held <- time.Now():
		default:
		}
	case "tunnel closed by agent; names released":
		c.closedEnd.Add(1)
	}
}

func (c *relayLogCounter) live() int64 {
	return c.online.Load() - c.heldEnd.Load() - c.closedEnd.Load()
}

func (c *relayLogCounter) String() string {
	return fmt.Sprintf("online %d, ended held %d, ended by goodbye %d", c.online.Load(), c.heldEnd.Load(), c.closedEnd.Load())
}

// logHookHandler passes every record on to inner and shows hook its message.
type logHookHandler struct {
	inner slog.Handler
	hook  func(msg string)
}

func (h *logHookHandler) Enabled(ctx context.Context, l slog.Level) bool { return true }

func (h *logHookHandler) Handle(ctx context.Context, r slog.Record) error {
	h.hook(r.Message)
	if h.inner.Enabled(ctx, r.Level) {
		return h.inner.Handle(ctx, r)
	}
	return nil
}

func (h *logHookHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHookHandler{inner: h.inner.WithAttrs(as), hook: h.hook}
}

func (h *logHookHandler) WithGroup(name string) slog.Handler {
	return &logHookHandler{inner: h.inner.WithGroup(name), hook: h.hook}
}

// blackholeProxy forwards TCP connections to target. blackhole turns every
// connection it carries half-open: both TCP connections stay open, and every
// byte and FIN from either side is dropped, as by a NAT that lost its
// mapping; new connections are closed at once (the network is down) until
// admitNew, after which they are forwarded normally.
type blackholeProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu      sync.Mutex
	refuse  bool
	pairs   []*proxyPair
	closing bool
}

type proxyPair struct {
	down, up net.Conn    // agent side, relay side
	dead     atomic.Bool // bytes are dropped
	ended    atomic.Bool // closed while forwarding
}

func startBlackholeProxy(t testing.TB, target string) *blackholeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{ln: ln, target: target}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			refuse := p.refuse || p.closing
			p.mu.Unlock()
			if refuse {
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			pr := &proxyPair{down: c, up: up}
			p.mu.Lock()
			if p.closing {
				p.mu.Unlock()
				c.Close()
				up.Close()
				continue
			}
			p.pairs = append(p.pairs, pr)
			p.mu.Unlock()
			p.wg.Go(func() { pr.pump(up, c) })
			p.wg.Go(func() { pr.pump(c, up) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		p.closing = true
		pairs := p.pairs
		p.mu.Unlock()
		for _, pr := range pairs {
			pr.down.Close()
			pr.up.Close()
		}
		p.wg.Wait()
	})
	return p
}

// pump copies src to dst while the pair is alive, and drops what src sends
// once it is dead. A forwarding pair that ends on one side is closed on
// both, as TCP would; a dead pair leaves the other side open and silent.
func (pr *proxyPair) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !pr.dead.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil && !pr.dead.Load() {
				err = werr
			}
		}
		if err != nil {
			if !pr.dead.Load() {
				pr.ended.Store(true)
				dst.Close()
				src.Close()
			}
			return
		}
	}
}

// blackhole makes every current connection half-open and closes new ones.
func (p *blackholeProxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = true
	for _, pr := range p.pairs {
		pr.dead.Store(true)
	}
}

// admitNew forwards new connections again; the dead ones stay dead.
func (p *blackholeProxy) admitNew() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = false
}

// forwarding counts the connections the proxy still forwards.
func (p *blackholeProxy) forwarding() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, pr := range p.pairs {
		if !pr.dead.Load() && !pr.ended.Load() {
			n++
		}
	}
	return n
}

// dialThroughBlackhole makes the agent reach the relay through the blackhole proxy.
func dialThroughBlackhole(p *blackholeProxy) func(*agent.Config) {
	return func(c *agent.Config) {
		c.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, p.ln.Addr().String())
		}
	}
}
