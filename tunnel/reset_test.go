package tunnel_test

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// TestResetsTrackRacesReset: the peer's reset for a stream can arrive while
// the stream is being tracked (an agent that refuses a stream answers at
// once), and Reset then closes it from the control reader's goroutine. Run
// under -race: the stream must be complete before Reset can find it.
func TestResetsTrackRacesReset(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	t.Cleanup(stop)
	for range 100 {
		opened, accepted := rawStreamPair(t, relay, agent)
		st := tunnel.NewStream(opened, nil)
		sent := make(chan uint32, 1)
		r := tunnel.NewResets(func(id uint32) { sent <- id })
		done := make(chan struct{})
		go func() {
			defer close(done)
			// A no-op until Track has put st in the table; then it
			// closes st (and SetWriteDeadline fails).
			for st.SetWriteDeadline(time.Time{}) == nil {
				r.Reset(st.ID())
			}
		}()
		r.Track(st)
		<-done
		if r.Len() != 0 {
			t.Fatalf("a stream reset by the peer is still tracked")
		}
		select {
		case id := <-sent:
			t.Fatalf("a stream the peer reset was reset back (id %d)", id)
		default:
		}
		accepted.Close()
	}
}

// What the peer sent before it reset the stream is read first, as on a
// TCP connection: a local server's complete answer (a 413, say) followed
// by its reset reaches the relay's reader. The Read after it fails; it
// never looks like a clean end. A Write fails at once.
func TestResetKeepsWhatCameBefore(t *testing.T) {
	const answer = "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!"
	st := resetAfter(t, []byte(answer))
	if _, err := st.Write([]byte("more of the upload")); err == nil {
		t.Error("Write after the peer's reset succeeded")
	}
	got, err := io.ReadAll(st)
	if string(got) != answer {
		t.Errorf("read %q before the reset, want %q", got, answer)
	}
	if err == nil {
		t.Error("the reset read as a clean end of the stream")
	}
}

// slowDest takes 60 ms for every write: longer than the read deadline
// Join keeps on its source while it copies.
type slowDest struct {
	net.Conn
	got int
}

func (w *slowDest) Write(p []byte) (int, error) {
	time.Sleep(60 * time.Millisecond)
	w.got += len(p)
	return len(p), nil
}

// Join passes on all that came before the peer's reset even to a slow
// destination: its own read deadline, passed during a slow write, does not
// turn the reset stream's Reads into failures before the data is out.
func TestJoinPassesOnWhatCameBeforeReset(t *testing.T) {
	const size = 64 << 10
	st := resetAfter(t, make([]byte, size))
	c1, c2 := tcpPair(t)
	defer c2.Close()
	dst := &slowDest{Conn: c1}
	done := make(chan error, 1)
	go func() { done <- tunnel.Join(st, dst, nil) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Join still running 20 s after the reset")
	}
	if dst.got != size {
		t.Errorf("Join passed on %d of the %d bytes that came before the reset", dst.got, size)
	}
}

// resetAfter returns a tracked stream whose peer sent data and then reset
// it, as a local server's answer followed by its reset reaches the relay.
// The reset comes behind the data on the shared connection (on the control
// stream), so it is handled once the data is here.
func resetAfter(t *testing.T, data []byte) *tunnel.Stream {
	t.Helper()
	agent, relay, stop := sessionPair(t)
	t.Cleanup(stop)
	opened, accepted := rawStreamPair(t, relay, agent)
	st := tunnel.NewStream(opened, nil)
	r := tunnel.NewResets(func(uint32) {})
	r.Track(st)
	if _, err := accepted.Write(data); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !st.Readable(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the data did not arrive")
		}
	}
	time.Sleep(100 * time.Millisecond) // the rest of it, on loopback
	r.Reset(st.ID())
	return st
}
