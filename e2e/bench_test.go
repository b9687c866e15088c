package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"testing"

	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
)

// The relay's proxy path, end to end in one process: visitor → relay →
// agent → local server over loopback. `tunnel bench` measures the same
// against the direct path and the floor in separate processes; these are
// for profiling (-cpuprofile, -memprofile) and for catching regressions
// in allocations per request.

// BenchmarkProxyRequest is one 1 KiB GET on a keep-alive visitor
// connection through the tunnel, with the agent's traffic inspector off
// (agent.Run's default) and on (`tunnel expose`'s default).
func BenchmarkProxyRequest(b *testing.B) {
	for _, bc := range []struct {
		name    string
		inspect string
	}{{"inspector-off", ""}, {"inspector-on", "127.0.0.1:0"}} {
		b.Run(bc.name, func(b *testing.B) {
			ls := startLocal(b)
			tr := startRelay(b, "")
			startAgent(b, tr.url(), []agent.Tunnel{{Name: "bench", Local: ls.addr}}, func(c *agent.Config) {
				c.InspectAddr = bc.inspect
			})
			client := visitorClient(tr.addr)
			defer client.CloseIdleConnections()
			b.ReportAllocs()
			for b.Loop() {
				res, err := client.Get("http://bench.localhost/bytes?n=1024")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					b.Fatalf("status %d", res.StatusCode)
				}
			}
		})
	}
}

// BenchmarkProxyRequestParallel is BenchmarkProxyRequest from 32 visitors
// at once, each on its own keep-alive connection, as `tunnel bench` runs
// its small-request test; the inspector is off.
func BenchmarkProxyRequestParallel(b *testing.B) {
	ls := startLocal(b)
	tr := startRelay(b, "")
	startAgent(b, tr.url(), []agent.Tunnel{{Name: "bench", Local: ls.addr}})
	b.SetParallelism(16) // 32 visitors with GOMAXPROCS=2
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		client := visitorClient(tr.addr)
		defer client.CloseIdleConnections()
		for pb.Next() {
			res, err := client.Get("http://bench.localhost/bytes?n=1024")
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	})
}

// BenchmarkProxyWebSocketEcho is one 32-byte WebSocket message to the local
// server and back through the tunnel.
func BenchmarkProxyWebSocketEcho(b *testing.B) {
	ls := startLocal(b)
	tr := startRelay(b, "")
	startAgent(b, tr.url(), []agent.Tunnel{{Name: "bench", Local: ls.addr}})
	ctx := context.Background()
	c, err := dialWS(ctx, tr.addr, "ws://bench.localhost/ws")
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	msg := make([]byte, 32)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.Read(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProxyNewWebSocket is a new WebSocket through the tunnel: the
// visitor's dial and upgrade, the relay's stream to the agent, the agent's
// dial of the local server, one 32-byte echo, and the close.
func BenchmarkProxyNewWebSocket(b *testing.B) {
	ls := startLocal(b)
	tr := startRelay(b, "")
	startAgent(b, tr.url(), []agent.Tunnel{{Name: "bench", Local: ls.addr}})
	ctx := context.Background()
	msg := make([]byte, 32)
	b.ReportAllocs()
	for b.Loop() {
		c, err := dialWS(ctx, tr.addr, "ws://bench.localhost/ws")
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.Read(ctx); err != nil {
			b.Fatal(err)
		}
		c.CloseNow()
	}
}

// TestBenchmarksBriefly runs every benchmark of the module once when CI is
// set, so that they keep compiling and running; it measures nothing.
func TestBenchmarksBriefly(t *testing.T) {
	if os.Getenv("CI") == "" || testing.Short() {
		t.Skip("benchmarks run once under CI=true; run them yourself with go test -bench")
	}
	cmd := exec.Command("go", "test", "-race", "-run=^$", "-bench=.", "-benchtime=1x", "./...")
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go test -bench: %v\n%s", err, out)
	}
}

// BenchmarkProxyBulk is a 64 MiB GET through the tunnel.
func BenchmarkProxyBulk(b *testing.B) {
	const size = 64 << 20
	ls := startLocal(b)
	tr := startRelay(b, "")
	startAgent(b, tr.url(), []agent.Tunnel{{Name: "bench", Local: ls.addr}})
	client := visitorClient(tr.addr)
	defer client.CloseIdleConnections()
	b.SetBytes(size)
	for b.Loop() {
		res, err := client.Get(fmt.Sprintf("http://bench.localhost/bytes?n=%d", size))
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if n != size || err != nil {
			b.Fatalf("read %d bytes, %v; want %d", n, err, size)
		}
	}
}
