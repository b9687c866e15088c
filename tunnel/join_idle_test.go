package tunnel_test

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// BenchmarkJoinIdle measures what an idle joined connection costs: 500
// joins of a TCP connection with a yamux stream, as at the relay (visitor
// and agent) and the agent (stream and local server), each having carried
// one 32 KiB message both ways, then left idle. After two collections it
// reports the goroutine stack and live heap per join, the figures behind
// tunnel bench's idle rows.
func BenchmarkJoinIdle(b *testing.B) {
	benchJoinIdle(b, true, func() (client, a net.Conn) { return tcpPair(b) })
}

// BenchmarkJoinSilent is BenchmarkJoinIdle for joins that never carry
// anything (a WebSocket opened and left waiting for a first message).
func BenchmarkJoinSilent(b *testing.B) {
	benchJoinIdle(b, false, func() (client, a net.Conn) { return tcpPair(b) })
}

// BenchmarkJoinIdleTLS is BenchmarkJoinIdle with a TLS connection in
// place of the TCP one (an HTTPS visitor at the relay, an HTTPS local
// server at the agent). The heap includes crypto/tls's own buffers.
func BenchmarkJoinIdleTLS(b *testing.B) {
	benchJoinIdle(b, true, func() (client, a net.Conn) {
		c, s, _ := tlsPair(b)
		return c, s
	})
}

// benchJoinIdle measures joins of connections from newPair; each carries
// one 32 KiB message both ways first if echo is set.
func benchJoinIdle(b *testing.B, echo bool, newPair func() (client, a net.Conn)) {
	const joins = 500
	agent, relay, stop := sessionPair(b)
	defer stop()
	msg := make([]byte, 32<<10)
	for range b.N {
		var before runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&before)
		type pair struct{ client, server net.Conn }
		pairs := make([]pair, 0, joins)
		done := make(chan error, joins)
		for range joins {
			client, a := newPair()
			opened, accepted := rawStreamPair(b, relay, agent)
			st, server := tunnel.NewStream(opened, nil), tunnel.NewStream(accepted, nil)
			tunnel.JoinAsync(a, st, tunnel.JoinOptions{}, func(err error) { done <- err })
			pairs = append(pairs, pair{client, server})
		}
		buf := make([]byte, len(msg))
		for _, p := range pairs {
			if !echo {
				break
			}
			if _, err := p.client.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(p.server, buf); err != nil {
				b.Fatal(err)
			}
			p.server.(*tunnel.Stream).Shrink() // the far end is not measured
			if _, err := p.server.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(p.client, buf); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(300 * time.Millisecond) // past Join's 10 + 30 ms: buffers back, directions parked
		var after runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&after)
		// Signed: with no goroutine left per join, what the process
		// freed meanwhile can outweigh it.
		b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/joins, "stack-B/join")
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/joins, "heap-B/join")
		for _, p := range pairs {
			p.client.Close()
			p.server.Close()
		}
		for range joins {
			<-done
		}
	}
}
