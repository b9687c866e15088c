package e2e

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
)

// cutProxy forwards TCP connections to target and can sever all of them at
// once, as a dropped Wi-Fi or a NAT timeout would, or stall them for a while
// (bytes wait, connections stay open), as a frozen laptop would.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
	gate   sync.RWMutex // held for writing while stalled
	// intercept, when set, answers new connections instead of the
	// target, as a captive portal or a proxy's error page would.
	intercept atomic.Pointer[func(c net.Conn)]
}

// stall holds every byte in both directions for d.
func (p *cutProxy) stall(d time.Duration) {
	p.gate.Lock()
	time.Sleep(d)
	p.gate.Unlock()
}

// forward copies src to dst, waiting at the gate before each write.
func (p *cutProxy) forward(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.gate.RLock()
			_, werr := dst.Write(buf[:n])
			p.gate.RUnlock()
			if werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
}

func startCutProxy(t testing.TB, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if f := p.intercept.Load(); f != nil {
				p.wg.Go(func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					(*f)(c)
				})
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			p.wg.Go(func() { p.forward(up, c) })
			p.wg.Go(func() { p.forward(c, up) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

// cut closes every connection the proxy carries.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// dialVia makes the agent reach the relay through the proxy.
func dialVia(p *cutProxy) func(*agent.Config) {
	return func(c *agent.Config) {
		c.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, p.ln.Addr().String())
		}
	}
}

// When the agent's connection is severed, the agent reconnects and the same
// URL serves again.
func TestReconnectAfterCut(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	proxy := startCutProxy(t, rl.addr)
	ag, urls := startAgent(t, rl.url(), []agent.Tunnel{{Local: local.addr}}, dialVia(proxy))
	c := visitorClient(rl.addr)
	for i := range 3 {
		proxy.cut()
		select {
		case <-ag.offline:
		case <-time.After(10 * time.Second):
			t.Fatalf("cut %d: agent did not notice", i)
		}
		select {
		case again := <-ag.online:
			if again[0] != urls[0] {
				t.Fatalf("cut %d: URL changed from %s to %s", i, urls[0], again[0])
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("cut %d: agent not back online", i)
		}
		if status, body := get(t, c, urls[0]+"/after-cut"); status != 200 || body != "GET /after-cut" {
			t.Fatalf("cut %d: %d %q", i, status, body)
		}
	}
}

// While the agent is away, its name is held for it: visitors get a 502
// "Tunnel offline" and another agent cannot take the name.
func TestNameHeldDuringGrace(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	proxy := startCutProxy(t, rl.addr)
	ag, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}}, dialVia(proxy),
		func(c *agent.Config) { c.MinBackoff, c.MaxBackoff = time.Hour, time.Hour }) // stays away
	proxy.cut()
	<-ag.offline
	c := visitorClient(rl.addr)
	var body string
	waitFor(t, 5*time.Second, "the relay to hold the name", func() bool {
		var status int
		status, body = get(t, c, "http://demo.localhost/")
		return status == http.StatusBadGateway && strings.Contains(body, "held for it")
	})
	if !strings.Contains(body, "Tunnel offline") {
		t.Fatalf("offline page: %q", body)
	}
	other, _ := runAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	err := <-other.done
	other.done <- err
	if err == nil || !strings.Contains(err.Error(), "held for its disconnected agent") {
		t.Fatalf("other agent during grace: %v", err)
	}
}

// Stopping an agent (Ctrl-C) releases its name at once: the next visitor
// gets 404, and another agent may claim it.
func TestGoodbyeReleasesName(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	ag, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	ag.stop()
	if status, body := get(t, visitorClient(rl.addr), "http://demo.localhost/"); status != 404 {
		t.Fatalf("after goodbye: %d %q", status, body)
	}
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
}

// A relay restarted on the same port gets every agent back under its old
// name, random names included.
func TestRelayRestart(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	named, namedURLs := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	random, randomURLs := startAgent(t, rl.url(), []agent.Tunnel{{Local: local.addr}})

	rl.stop()
	<-named.offline
	<-random.offline
	rl2 := startRelay(t, rl.addr)
	for _, a := range []struct {
		ag   *testAgent
		urls []string
	}{{named, namedURLs}, {random, randomURLs}} {
		select {
		case again := <-a.ag.online:
			if again[0] != a.urls[0] {
				t.Fatalf("after restart: URL %s, want %s", again[0], a.urls[0])
			}
		case <-time.After(15 * time.Second):
			t.Fatal("agent not back after relay restart")
		}
		if status, _ := get(t, visitorClient(rl2.addr), a.urls[0]+"/"); status != 200 {
			t.Fatalf("%s after restart: %d", a.urls[0], status)
		}
	}
}

// An agent sends a reconnect secret of its own from its first hello, and
// the same one when it retries. If the first handshake's welcome is lost
// (the connection drops after the relay claimed the names), the relay
// holds the names for that secret, and the retry reclaims them; with a
// secret the relay made up, lost with the welcome, the retry would be
// refused as name-taken for the grace period, and the agent would stop.
func TestAgentSecretFromFirstHello(t *testing.T) {
	hellos := make(chan *proto.Hello, 2)
	var attempts atomic.Int32
	relayURL := fakeRelay(t, func(hello *proto.Hello, ctrl net.Conn) {
		hellos <- hello
		if attempts.Add(1) == 1 {
			return // the first welcome is lost: the connection drops
		}
		if proto.WriteMessage(ctrl, grantAll(hello, "tunnel/test")) != nil {
			return
		}
		proto.ReadMessage(ctrl) // until the agent leaves
	})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(ctx, agent.Config{
			Relay:      relayURL,
			Tunnels:    []agent.Tunnel{{Name: "demo", Local: "127.0.0.1:1"}},
			Logger:     testLogger(t),
			MinBackoff: 10 * time.Millisecond,
		})
	}()
	var first, retry *proto.Hello
	for _, h := range []**proto.Hello{&first, &retry} {
		select {
		case *h = <-hellos:
		case err := <-done:
			t.Fatalf("agent stopped: %v", err)
		case <-ctx.Done():
			t.Fatal("no hello within 20 s")
		}
	}
	cancel()
	<-done
	if len(first.Secret) < 16 || len(first.Secret) > 128 {
		t.Fatalf("first hello's secret %q: want one of the agent's own, 16 to 128 characters", first.Secret)
	}
	if retry.Secret != first.Secret {
		t.Errorf("retry's secret %q, want the first hello's %q", retry.Secret, first.Secret)
	}
}

// answerHTTP is a cutProxy intercept that answers every request with the
// raw response head resp.
func answerHTTP(resp string) *func(c net.Conn) {
	f := func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			io.WriteString(c, resp)
		}
	}
	return &f
}

// An agent that has been online rides out what stands between it and the
// relay for a while: a captive portal's redirect on the next Wi-Fi, then a
// proxy's 403 page while the relay restarts. It keeps retrying and comes
// back under its URL. (It used to stop for good at the redirect.)
func TestReconnectThroughCaptivePortal(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	p := startCutProxy(t, rl.addr)
	ag, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "laptop", Local: local.addr}}, dialVia(p))

	p.intercept.Store(answerHTTP("HTTP/1.1 302 Found\r\nLocation: http://login.hotspot.example/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
	p.cut()
	for range 2 {
		select {
		case <-ag.offline:
		case err := <-ag.done:
			ag.done <- err
			t.Fatalf("the agent stopped at the portal: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no reconnect attempt within 10 s")
		}
	}
	p.intercept.Store(answerHTTP("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
	time.Sleep(time.Second)
	p.intercept.Store(nil)
	select {
	case again := <-ag.online:
		if again[0] != urls[0] {
			t.Errorf("back as %s, was %s", again[0], urls[0])
		}
	case err := <-ag.done:
		ag.done <- err
		t.Fatalf("the agent stopped for good behind the portal: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("agent not back 15 s after the way to the relay was clear")
	}
}
