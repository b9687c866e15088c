package tunnel_test

import (
	"io"
	"net"
	"testing"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// streamPair opens a stream from the relay side and accepts it at the agent,
// both wrapped as the tunnel wraps them.
func streamPair(b *testing.B, relay, agent *yamux.Session) (r, a net.Conn) {
	b.Helper()
	rs, as := rawStreamPair(b, relay, agent)
	return tunnel.NewStream(rs, nil), tunnel.NewStream(as, nil)
}

// BenchmarkSessionEcho is one 32-byte message across the session and back,
// the shape of a WebSocket echo through the tunnel's middle.
func BenchmarkSessionEcho(b *testing.B) {
	agent, relay, stop := sessionPair(b)
	defer stop()
	r, a := streamPair(b, relay, agent)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 32)
		for {
			if _, err := io.ReadFull(a, buf); err != nil {
				return
			}
			if _, err := a.Write(buf); err != nil {
				return
			}
		}
	}()
	msg := make([]byte, 32)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r, msg); err != nil {
			b.Fatal(err)
		}
	}
	r.Close()
	a.Close()
	<-done
}

// BenchmarkSessionBulk moves 16 MiB per op from the agent side to the relay
// side in 32 KiB writes, the shape of a download.
func BenchmarkSessionBulk(b *testing.B) {
	agent, relay, stop := sessionPair(b)
	defer stop()
	const size = 16 << 20
	chunk := make([]byte, 32<<10)
	b.SetBytes(size)
	for b.Loop() {
		r, a := streamPair(b, relay, agent)
		go func() {
			for n := 0; n < size; n += len(chunk) {
				if _, err := a.Write(chunk); err != nil {
					break
				}
			}
			a.(interface{ CloseWrite() error }).CloseWrite()
		}()
		if n, err := io.Copy(io.Discard, r); n != size || err != nil {
			b.Fatalf("read %d bytes, %v; want %d", n, err, size)
		}
		r.Close()
		a.Close()
	}
}
