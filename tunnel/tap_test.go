package tunnel_test

import (
	"bytes"
	"io"
	"sync"
	"testing"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// TestJoinTap checks that a tap sees exactly the bytes of each direction, in
// order, and that everything still arrives.
func TestJoinTap(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	var mu sync.Mutex
	var seen [2]bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- tunnel.JoinWith(a, b, tunnel.JoinOptions{Tap: func(d tunnel.Direction, p []byte) {
			mu.Lock()
			seen[d].Write(p)
			mu.Unlock()
		}})
	}()
	up, down := randomBytes(t, 1<<20), randomBytes(t, 300<<10)
	go sendAndClose(client, up)
	go sendAndClose(server, down)
	var gotDown []byte
	var wg sync.WaitGroup
	wg.Go(func() { gotDown, _ = io.ReadAll(client) })
	gotUp, _ := io.ReadAll(server)
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatalf("Join = %v", err)
	}
	client.Close()
	server.Close()
	if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
		t.Fatal("a tap changed the bytes that arrived")
	}
	if !bytes.Equal(seen[tunnel.AToB].Bytes(), up) {
		t.Errorf("tap saw %d bytes a→b, want the %d sent", seen[tunnel.AToB].Len(), len(up))
	}
	if !bytes.Equal(seen[tunnel.BToA].Bytes(), down) {
		t.Errorf("tap saw %d bytes b→a, want the %d sent", seen[tunnel.BToA].Len(), len(down))
	}
}

// BenchmarkJoin moves 64 MiB per op through Join over loopback TCP, with no
// tap, and with a tap that does nothing, to show what the hook itself costs.
// Run with -benchtime=10x and compare the two within one run.
func BenchmarkJoin(b *testing.B) {
	for _, bc := range []struct {
		name string
		tap  func(tunnel.Direction, []byte)
	}{
		{"nil-tap", nil},
		{"noop-tap", func(tunnel.Direction, []byte) {}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			const size = 64 << 20
			chunk := make([]byte, 64<<10)
			b.SetBytes(size)
			for b.Loop() {
				client, x := tcpPair(b)
				y, server := tcpPair(b)
				done := make(chan error, 1)
				go func() { done <- tunnel.JoinWith(x, y, tunnel.JoinOptions{Tap: bc.tap}) }()
				go func() {
					for n := 0; n < size; n += len(chunk) {
						client.Write(chunk)
					}
					client.CloseWrite()
				}()
				io.Copy(io.Discard, server)
				server.Close()
				<-done
				client.Close()
			}
		})
	}
}
