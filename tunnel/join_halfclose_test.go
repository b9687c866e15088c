package tunnel_test

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// TestJoinHalfClosedOwnerClose: the owner closing a or b ends a Join
// (Join's doc), also once it is half-closed. Then one direction has ended
// with a clean EOF and the other is the only one left, reading its source;
// when the owner closes that direction's destination, the join must end
// within a few seconds (the remaining direction waits in steps of
// halfClosedPoll and looks), not whenever the source next sends something.
//
// Both cases come from the relay and the agent:
//   - the visitor half-closed; relay.Server.Close closes the visitor's
//     trackedConn (Close + Unpark) and then waits in reqWG.Wait for the join,
//     before it closes any agent session;
//   - the agent's side finished (FIN); the agent's stream-reset arrives and
//     Resets.Reset closes the stream.
func TestJoinHalfClosedOwnerClose(t *testing.T) {
	type fixture struct {
		client, server net.Conn
		a              *net.TCPConn
		st             *tunnel.Stream
		done           chan error
	}
	setup := func(t *testing.T) *fixture {
		agent, relay, stop := sessionPair(t)
		t.Cleanup(stop)
		client, a := tcpPair(t)
		opened, accepted := rawStreamPair(t, relay, agent)
		f := &fixture{client: client, a: a, done: make(chan error, 1)}
		f.st, f.server = tunnel.NewStream(opened, nil), tunnel.NewStream(accepted, nil)
		tunnel.JoinAsync(a, f.st, tunnel.JoinOptions{}, func(err error) { f.done <- err })
		t.Cleanup(func() {
			// Unblocks the join whatever state it is in.
			client.Close()
			f.server.Close()
			select {
			case <-f.done:
			case <-time.After(5 * time.Second):
				t.Error("Join did not return even after both far ends closed")
			}
		})
		send(t, client, f.server, "hello")
		send(t, f.server, client, "hello")
		return f
	}
	expectEOF := func(t *testing.T, c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read %d, %v; want EOF", n, err)
		}
	}
	joinEnds := func(t *testing.T, f *fixture, what string) {
		t.Helper()
		select {
		case <-f.done:
			f.done <- nil // for the cleanup
		case <-time.After(3 * time.Second):
			t.Errorf("Join still running 3 s after %s", what)
		}
	}

	t.Run("visitor half-closed, owner closes the visitor", func(t *testing.T) {
		f := setup(t)
		f.client.(*net.TCPConn).CloseWrite()
		expectEOF(t, f.server)             // a→st ended cleanly; st→a is left
		time.Sleep(100 * time.Millisecond) // idle
		f.a.Close()                        // as trackedConn.Close does
		tunnel.Unpark(f.a)
		joinEnds(t, f, "the owner closed the visitor's connection")
	})
	t.Run("agent finished, its stream-reset closes the stream", func(t *testing.T) {
		f := setup(t)
		f.server.(halfCloser).CloseWrite()
		expectEOF(t, f.client)             // st→a ended cleanly; a→st is left
		time.Sleep(100 * time.Millisecond) // idle
		f.st.Close()                       // as Resets.Reset does
		joinEnds(t, f, "the owner closed the stream")
	})
}

// A visitor that shut its write side and waits for the rest of the answer:
// if yamux cuts the stream at its close timeout, the visitor sees its
// connection reset, not a clean end that would pass a cut answer for a
// whole one.
func TestJoinHalfClosedCutIsReset(t *testing.T) {
	t.Cleanup(tunnel.SetStreamCloseTimeout(300 * time.Millisecond)) // first: restored after everything else ends
	client, a := tcpPair(t)
	agent, relay, stop := sessionPair(t)
	t.Cleanup(stop)
	opened, accepted := rawStreamPair(t, relay, agent)
	b, server := tunnel.NewStream(opened, nil), tunnel.NewStream(accepted, nil)
	startJoin(t, client, a, b, server)

	client.CloseWrite()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("agent read %d, %v; want EOF", n, err)
	}
	go func() {
		for range 10 {
			if _, err := server.Write([]byte("x")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		server.CloseWrite()
	}()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("visitor read %d of 10 bytes, then %v; want the connection reset", len(got), err)
	}
}
