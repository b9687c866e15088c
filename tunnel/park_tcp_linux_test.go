package tunnel_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// waitTCPParked waits until c's Join direction is parked (or no longer
// is, for want false).
func waitTCPParked(t *testing.T, c *net.TCPConn, want bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for tunnel.TCPParked(c) != want {
		if time.Now().After(deadline) {
			t.Fatalf("TCP direction parked = %v after 5 s, want %v", !want, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestParkedTCPWakes goes through what must start a Join direction parked
// on a TCP connection (Linux: tunnel's own epoll set) again, each from
// the parked state, with the stream's direction parked too.
func TestParkedTCPWakes(t *testing.T) {
	setup := func(t *testing.T) *parkFixture {
		agent, relay, stop := sessionPair(t)
		t.Cleanup(stop)
		f := startParkJoin(t, agent, relay)
		waitTCPParked(t, f.a, true)
		waitParked(t, relay, 1)
		return f
	}

	t.Run("data, again and again", func(t *testing.T) {
		f := setup(t)
		for _, msg := range []string{"one", "two", "three"} {
			send(t, f.client, f.server, msg)
			waitTCPParked(t, f.a, true)
		}
	})
	t.Run("the client's FIN", func(t *testing.T) {
		setup(t).finWakes(t, true)
	})
	t.Run("the client's reset", func(t *testing.T) {
		f := setup(t)
		f.client.(*net.TCPConn).SetLinger(0)
		f.client.Close()
		if err := f.wait(t); err == nil {
			t.Error("Join = nil after a connection reset, want the error")
		}
		f.server.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := f.server.Read(make([]byte, 1)); err == nil {
			t.Error("server's stream still open after the client's reset")
		}
	})
	t.Run("closed under the join", func(t *testing.T) {
		// Nothing tells the epoll set; the sweep finds it.
		f := setup(t)
		f.a.Close()
		if err := f.wait(t); err != nil {
			t.Errorf("Join = %v, want nil", err)
		}
		if tunnel.TCPParked(f.a) {
			t.Error("a closed connection is still parked")
		}
	})
	t.Run("closed and unparked by its owner", func(t *testing.T) {
		// As the relay's trackedConn.Close does: the direction is
		// started at once, not at the next sweep.
		f := setup(t)
		f.a.Close()
		tunnel.Unpark(f.a)
		if tunnel.TCPParked(f.a) {
			t.Error("still parked right after Unpark")
		}
		if err := f.wait(t); err != nil {
			t.Errorf("Join = %v, want nil", err)
		}
	})
}

// TestParkTCP is Park on a bare TCP connection: resume is started once,
// by data that came before it parked (the socket is armed
// level-triggered) or by Unpark, whichever is first.
func TestParkTCP(t *testing.T) {
	started := func(ch chan struct{}) func() { return func() { ch <- struct{}{} } }
	noMore := func(t *testing.T, ch chan struct{}, why string) {
		t.Helper()
		select {
		case <-ch:
			t.Fatal("resume started " + why)
		case <-time.After(50 * time.Millisecond):
		}
	}
	once := func(t *testing.T, ch chan struct{}) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("resume not started")
		}
		noMore(t, ch, "twice")
	}
	t.Run("data already there", func(t *testing.T) {
		client, a := tcpPair(t)
		defer client.Close()
		defer a.Close()
		client.Write([]byte("x"))
		ch := make(chan struct{}, 2)
		if !tunnel.Park(a, started(ch)) {
			t.Fatal("Park refused a TCP connection")
		}
		once(t, ch)
		tunnel.Unpark(a) // nothing parked: nothing more started
		noMore(t, ch, "by an Unpark after it ran")
	})
	t.Run("unparked", func(t *testing.T) {
		client, a := tcpPair(t)
		defer client.Close()
		defer a.Close()
		ch := make(chan struct{}, 2)
		if !tunnel.Park(a, started(ch)) {
			t.Fatal("Park refused a TCP connection")
		}
		tunnel.Unpark(a)
		once(t, ch)
		client.Write([]byte("x")) // armed still, for a token nobody has
		noMore(t, ch, "again by data after Unpark")
	})
	t.Run("parked again", func(t *testing.T) {
		client, a := tcpPair(t)
		defer client.Close()
		defer a.Close()
		for i := range 3 {
			ch := make(chan struct{}, 2)
			if !tunnel.Park(a, started(ch)) {
				t.Fatalf("Park %d refused", i)
			}
			client.Write([]byte("x"))
			once(t, ch)
			a.Read(make([]byte, 1))
		}
	})
}

// TestParkedTLSWakes: a Join direction reading a TLS connection (an HTTPS
// visitor at the relay, an HTTPS local server at the agent) parks on its
// socket, and starts again for a record, several records, and the
// client's close; all the while the other direction still carries data.
func TestParkedTLSWakes(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	t.Cleanup(stop)
	client, server, raw := tlsPair(t)
	opened, accepted := rawStreamPair(t, relay, agent)
	st, peer := tunnel.NewStream(opened, nil), tunnel.NewStream(accepted, nil)
	done := make(chan error, 1)
	tunnel.JoinAsync(server, st, tunnel.JoinOptions{}, func(err error) { done <- err })
	defer client.Close()
	defer peer.Close()

	send(t, client, peer, "hello")
	waitTCPParked(t, raw, true)
	send(t, client, peer, "a record")
	waitTCPParked(t, raw, true)
	records := bytes.Repeat([]byte("records "), 8<<10) // 64 KiB: four full records
	go client.Write(records)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, make([]byte, len(records))); err != nil {
		t.Fatalf("64 KiB through a parked TLS direction: %v", err)
	}
	send(t, peer, client, "the other way")
	waitTCPParked(t, raw, true)
	client.Close() // close_notify, then FIN
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read %d, %v after the client's close; want EOF", n, err)
	}
	peer.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Join did not return")
	}
}

// TestJoinUnhandshakenTLSGoesIdle: a TLS connection joined before its
// handshake gets no read deadline until data comes (TestJoinUnhandshakenTLS);
// once data has come, the direction goes idle like any other: it gives its
// bigger buffer back and parks on the socket, rather than keeping a 32/128
// KiB buffer and a goroutine for the connection's whole life.
func TestJoinUnhandshakenTLSGoesIdle(t *testing.T) {
	client, s, server := joinUnhandshakenTLS(t)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("x"), 64<<10) // fills the small buffer: takes a bigger one
	go client.Write(msg)
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(server, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !tunnel.TCPParked(s) {
		if time.Now().After(deadline) {
			t.Fatal("a TLS direction quiet for 2 s after its first data never parked (it holds its buffer and goroutine)")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
