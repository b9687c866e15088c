package tunnel_test

import (
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// parkFixture is one Join as at the relay: client ⇄ a (TCP) ═Join═ st, a
// stream of the relay's session, whose far end (server) is the agent's.
type parkFixture struct {
	agent, relay   *yamux.Session
	client, server net.Conn
	a              *net.TCPConn // the client's peer, joined with st
	st             *tunnel.Stream
	done           chan error
}

func startParkJoin(t *testing.T, agent, relay *yamux.Session) *parkFixture {
	t.Helper()
	client, a := tcpPair(t)
	opened, accepted := rawStreamPair(t, relay, agent)
	f := &parkFixture{agent: agent, relay: relay, client: client, a: a, done: make(chan error, 1)}
	f.st, f.server = tunnel.NewStream(opened, nil), tunnel.NewStream(accepted, nil)
	tunnel.JoinAsync(a, f.st, tunnel.JoinOptions{}, func(err error) { f.done <- err })
	t.Cleanup(func() {
		client.Close()
		f.server.Close()
		f.wait(t)
	})
	// One message each way, as a WebSocket's handshake would.
	f.roundTrip(t, "hello")
	return f
}

func (f *parkFixture) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-f.done:
		f.done <- err
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Join did not return")
		return nil
	}
}

// roundTrip sends msg from the client to the server and back.
func (f *parkFixture) roundTrip(t *testing.T, msg string) {
	t.Helper()
	send(t, f.client, f.server, msg)
	send(t, f.server, f.client, msg)
}

// send writes msg to from and reads it at to, within 5 s.
func send(t *testing.T, from, to net.Conn, msg string) {
	t.Helper()
	if _, err := from.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	to.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer to.SetReadDeadline(time.Time{})
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(to, got); err != nil {
		t.Fatalf("%q sent, read: %v", msg, err)
	}
	if string(got) != msg {
		t.Fatalf("read %q, want %q", got, msg)
	}
}

// finWakes half-closes one far end: the other reads EOF and can still
// send the other way; then it half-closes too, and Join ends cleanly.
// fromClient picks the end that closes first.
func (f *parkFixture) finWakes(t *testing.T, fromClient bool) {
	t.Helper()
	from, to := f.server, f.client
	if fromClient {
		from, to = to, from
	}
	from.(halfCloser).CloseWrite()
	to.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := to.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %d, %v after the other end's FIN; want EOF", n, err)
	}
	send(t, to, from, "still open this way")
	to.(halfCloser).CloseWrite()
	if err := f.wait(t); err != nil {
		t.Errorf("Join = %v, want nil", err)
	}
}

// waitParked waits until n of sess's streams are parked (Join parks an
// idle direction 40 ms after its last data).
func waitParked(t *testing.T, sess *yamux.Session, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for tunnel.ParkedStreams(sess) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams parked after 5 s, want %d", tunnel.ParkedStreams(sess), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestJoinParksIdle: an idle Join direction waits without a goroutine:
// always when it reads a stream, and on Linux when it reads a TCP
// connection too. 100 idle joins of a TCP connection with a stream hold
// about none (one each elsewhere, waiting for the TCP connection), and
// every one still carries data both ways afterwards.
func TestJoinParksIdle(t *testing.T) {
	const joins = 100
	agent, relay, stop := sessionPair(t)
	t.Cleanup(stop) // after the joins' own cleanups
	base := runtime.NumGoroutine()
	fs := make([]*parkFixture, joins)
	for i := range fs {
		fs[i] = startParkJoin(t, agent, relay)
	}
	waitParked(t, relay, joins)
	want := joins + joins/5
	if runtime.GOOS == "linux" {
		want = joins / 5
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine()-base > want {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines for %d idle joins, want at most %d", runtime.NumGoroutine()-base, joins, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, f := range fs {
		send(t, f.server, f.client, "from the server first")
		send(t, f.client, f.server, "then the client")
	}
}

// TestParkedStreamWakes goes through everything that must start a parked
// direction again, each from the parked state.
func TestParkedStreamWakes(t *testing.T) {
	setup := func(t *testing.T) *parkFixture {
		agent, relay, stop := sessionPair(t)
		t.Cleanup(stop)
		f := startParkJoin(t, agent, relay)
		waitParked(t, relay, 1)
		return f
	}
	// ended checks that the end of the stream reached the client. (A
	// stream that ends with its session reads as a clean end, which Join
	// passes on as such and then waits for the client to finish too.)
	ended := func(t *testing.T, f *parkFixture) {
		t.Helper()
		f.client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := f.client.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("client read %d, %v; want EOF", n, err)
		}
	}

	t.Run("data, again and again", func(t *testing.T) {
		f := setup(t)
		for _, msg := range []string{"one", "two", "three"} {
			send(t, f.server, f.client, msg)
			waitParked(t, f.relay, 1)
		}
	})
	t.Run("the peer's FIN", func(t *testing.T) {
		setup(t).finWakes(t, false)
	})
	t.Run("the peer's session ends", func(t *testing.T) {
		f := setup(t)
		f.agent.Close()
		ended(t, f)
	})
	t.Run("the session closes", func(t *testing.T) {
		f := setup(t)
		f.relay.Close()
		ended(t, f)
	})
	t.Run("the owner closes the stream", func(t *testing.T) {
		f := setup(t)
		f.st.Close()
		if err := f.wait(t); err != nil {
			t.Errorf("Join = %v, want nil", err)
		}
		f.client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := f.client.Read(make([]byte, 1)); err == nil {
			t.Error("client's connection still open")
		}
	})
	t.Run("the other direction ends", func(t *testing.T) {
		f := setup(t)
		f.client.(*net.TCPConn).CloseWrite()
		if n, err := f.server.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("server read %d, %v; want EOF", n, err)
		}
		// From now on the stream's direction waits on a goroutine: its
		// stream may end in ways no frame announces.
		waitParked(t, f.relay, 0)
		send(t, f.server, f.client, "a late reply")
		f.server.Close()
		if err := f.wait(t); err != nil {
			t.Errorf("Join = %v, want nil", err)
		}
	})
}

// TestParkRacesData sends data just as the stream's direction parks (40 ms
// after the last), over and over on 20 joins at once: every message
// arrives. A frame read from the connection but not yet handed to the
// stream must not be missed by both the stream and the waker.
func TestParkRacesData(t *testing.T) {
	const joins, rounds = 20, 15
	agent, relay, stop := sessionPair(t)
	t.Cleanup(stop) // after the joins' own cleanups
	var wg sync.WaitGroup
	errs := make(chan error, joins)
	for range joins {
		f := startParkJoin(t, agent, relay)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sendAsItParks(f.server, f.client, rounds, 5*time.Second); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a message sent as its stream parked was lost: %v", err)
	}
}

// sendAsItParks writes rounds one-byte messages to w, each 35-45 ms after
// the last was read at r, that is just as the direction carrying them has
// had parkAfter (30 ms) of quiet and parks; each must reach r within
// timeout.
func sendAsItParks(w, r net.Conn, rounds int, timeout time.Duration) error {
	got := make([]byte, 1)
	for i := range rounds {
		time.Sleep(35*time.Millisecond + rand.N(10*time.Millisecond))
		if _, err := w.Write([]byte{byte(i)}); err != nil {
			return err
		}
		r.SetReadDeadline(time.Now().Add(timeout))
		if _, err := io.ReadFull(r, got); err != nil {
			return err
		}
	}
	return nil
}
