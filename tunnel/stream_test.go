package tunnel_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/net/nettest"

	"github.com/tunnel-dev/tunnel/proto"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// TestStreamConn runs the net.Conn conformance suite on *tunnel.Stream, in
// both orientations: the end that opened the yamux stream and the end that
// accepted it. Deadlines, Close waking blocked calls and concurrent use
// must all behave as for a TCP connection.
func TestStreamConn(t *testing.T) {
	for _, tc := range []struct {
		name       string
		openerIsC1 bool
	}{{"OpenerFirst", true}, {"AcceptorFirst", false}} {
		t.Run(tc.name, func(t *testing.T) {
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				agent, relay, stopSess := sessionPair(t)
				opened, accepted := rawStreamPair(t, relay, agent)
				s1, s2 := tunnel.NewStream(opened, nil), tunnel.NewStream(accepted, nil)
				stop = func() {
					s1.Close()
					s2.Close()
					stopSess()
				}
				if tc.openerIsC1 {
					return s1, s2, stop, nil
				}
				return s2, s1, stop, nil
			})
		})
	}
}

// TestOpenAcceptStream checks the data-stream handshake end to end: the
// relay's OpenStream delivers the header to the agent's AcceptStream, the
// agent's Accept lets OpenStream return, and then bytes flow both ways with
// half-close (the relay's CloseWrite is an EOF to the agent, which can still
// answer).
func TestOpenAcceptStream(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	want := proto.StreamHeader{Name: "demo", Remote: netip.MustParseAddrPort("192.0.2.7:4321"), Scheme: "https"}
	type opened struct {
		st  *tunnel.Stream
		err error
	}
	openc := make(chan opened, 1)
	go func() {
		hdr := want
		st, err := tunnel.OpenStream(ctx, relay, &hdr, nil)
		openc <- opened{st, err}
	}()

	ys, err := agent.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	ast, hdr, err := tunnel.AcceptStream(ctx, ys)
	if err != nil {
		t.Fatalf("AcceptStream: %v", err)
	}
	defer ast.Close()
	if *hdr != want {
		t.Errorf("agent got header %+v, want %+v", *hdr, want)
	}
	if got := ast.RemoteAddr().String(); got != want.Remote.String() {
		t.Errorf("agent's RemoteAddr = %s, want the visitor's %s", got, want.Remote)
	}
	if err := ast.Accept(); err != nil {
		t.Fatalf("Accept: %v", err)
	}
	o := <-openc
	if o.err != nil {
		t.Fatalf("OpenStream: %v", o.err)
	}
	rst := o.st
	defer rst.Close()

	// Relay → agent, then the relay half-closes.
	if _, err := rst.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := rst.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(ast)
	if err != nil || string(got) != "request" {
		t.Fatalf("agent read %q, %v; want %q, EOF", got, err, "request")
	}
	// The agent still answers after the relay's EOF.
	if _, err := ast.Write([]byte("response")); err != nil {
		t.Fatalf("agent write after the peer's CloseWrite: %v", err)
	}
	ast.CloseWrite()
	got, err = io.ReadAll(rst)
	if err != nil || string(got) != "response" {
		t.Fatalf("relay read %q, %v; want %q, EOF", got, err, "response")
	}
	// Writing after CloseWrite fails like a TCP socket after shutdown.
	if _, err := rst.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after CloseWrite: err = %v, want net.ErrClosed", err)
	}
}

// TestOpenStreamRefused checks that the agent's Refuse reaches the relay as
// a *proto.Error from OpenStream, matching its sentinel with errors.Is.
func TestOpenStreamRefused(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	errc := make(chan error, 1)
	go func() {
		st, err := tunnel.OpenStream(ctx, relay, &proto.StreamHeader{Name: "demo"}, nil)
		if st != nil {
			st.Close()
		}
		errc <- err
	}()
	ys, err := agent.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	ast, _, err := tunnel.AcceptStream(ctx, ys)
	if err != nil {
		t.Fatal(err)
	}
	if err := ast.Refuse(proto.Errorf(proto.CodeLocalDial, "dial 127.0.0.1:8080: connection refused")); err != nil {
		t.Fatalf("Refuse: %v", err)
	}
	err = <-errc
	var perr *proto.Error
	if !errors.As(err, &perr) {
		t.Fatalf("OpenStream err = %v (%T), want a *proto.Error", err, err)
	}
	if !errors.Is(err, proto.ErrLocalDial) {
		t.Errorf("errors.Is(%v, ErrLocalDial) = false", err)
	}
	if perr.Message != "dial 127.0.0.1:8080: connection refused" {
		t.Errorf("message = %q", perr.Message)
	}
	// Refuse closed the agent's end.
	if _, err := ast.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Refuse: err = %v, want net.ErrClosed", err)
	}
}

// TestOpenStreamDeadline checks that OpenStream gives up when ctx expires
// while the agent accepted the stream but never answers, and says so with
// context.DeadlineExceeded.
func TestOpenStreamDeadline(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()

	start := time.Now()
	st, err := tunnel.OpenStream(ctx, relay, &proto.StreamHeader{Name: "demo"}, nil)
	if err == nil {
		st.Close()
		t.Fatal("OpenStream succeeded without a reply")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("OpenStream returned after %v, long past its 200ms deadline", d)
	}
	// The silent agent did receive the stream; the session is still usable.
	ys, err := agent.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	ys.Close()
	if relay.IsClosed() {
		t.Error("a stream timeout closed the whole session")
	}
}

// TestOpenStreamCancel checks that cancelling ctx interrupts an OpenStream
// that is waiting for the reply.
func TestOpenStreamCancel(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	errc := make(chan error, 1)
	go func() {
		st, err := tunnel.OpenStream(ctx, relay, &proto.StreamHeader{Name: "demo"}, nil)
		if st != nil {
			st.Close()
		}
		errc <- err
	}()
	// Wait until the header has arrived, so OpenStream is waiting for the reply.
	ys, err := agent.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	defer ys.Close()
	if _, err := proto.ReadAs[*proto.StreamHeader](ys); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

// TestAcceptStreamDeadline checks that the agent's AcceptStream does not wait
// forever for a header that never comes.
func TestAcceptStreamDeadline(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	opened, accepted := rawStreamPair(t, relay, agent)
	defer opened.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, _, err := tunnel.AcceptStream(ctx, accepted); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want context.DeadlineExceeded", err)
	}
}

// TestAcceptStreamWrongFrame checks that a data stream must start with a
// StreamHeader.
func TestAcceptStreamWrongFrame(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	opened, accepted := rawStreamPair(t, relay, agent)
	defer opened.Close()
	if err := proto.WriteMessage(opened, &proto.Hello{Version: proto.Version}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := tunnel.AcceptStream(ctx, accepted); err == nil {
		t.Error("AcceptStream accepted a stream that began with a Hello")
	}
}

// TestStreamCloseUnblocks checks that Close wakes a Read blocked on an idle
// stream and that it then reports net.ErrClosed.
func TestStreamCloseUnblocks(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	opened, accepted := rawStreamPair(t, relay, agent)
	defer accepted.Close()
	st := tunnel.NewStream(opened, nil)
	errc := make(chan error, 1)
	go func() {
		_, err := st.Read(make([]byte, 1))
		errc <- err
	}()
	st.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: err = %v, want net.ErrClosed", err)
	}
	if err := st.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// earlyPair opens an early stream with opts on a fresh session: st is the
// relay's end; ys the agent's, accepted, its header not read yet (a test
// can play an agent that never answers). Both close at the test's end.
func earlyPair(t *testing.T, opts tunnel.OpenOptions) (st *tunnel.Stream, ys *yamux.Stream) {
	t.Helper()
	agent, relay, stop := sessionPair(t)
	t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts.Early = true
	st, err := tunnel.OpenStreamWith(ctx, relay, &proto.StreamHeader{Name: "demo"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if ys, err = agent.AcceptStream(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ys.Close() })
	return st, ys
}

// acceptHeader reads the header at the agent's end, as the agent does.
func acceptHeader(t *testing.T, ys *yamux.Stream) *tunnel.Stream {
	t.Helper()
	ast, hdr, err := tunnel.AcceptStream(context.Background(), ys)
	if err != nil || hdr.Name != "demo" {
		t.Fatalf("AcceptStream: %v, %+v", err, hdr)
	}
	return ast
}

// An early stream carries the relay's first bytes with its header: the
// agent finds them after the header, once it has answered, and the
// relay's first Read reads the reply before the answer's bytes.
func TestOpenStreamEarly(t *testing.T) {
	var answered atomic.Int32
	st, ys := earlyPair(t, tunnel.OpenOptions{
		ReplyBy: time.Now().Add(10 * time.Second), Answered: func() { answered.Add(1) },
	})
	// Returned without waiting for the agent: the request goes now.
	if _, err := st.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	ast := acceptHeader(t, ys)
	if answered.Load() != 0 {
		t.Fatal("Answered called before the reply was read")
	}
	if err := ast.Accept(); err != nil {
		t.Fatal(err)
	}
	req := make([]byte, len("GET / HTTP/1.1\r\n\r\n"))
	if _, err := io.ReadFull(ast, req); err != nil || string(req) != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("agent read %q, %v", req, err)
	}
	if _, err := ast.Write([]byte("HTTP/1.1 200 OK\r\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("HTTP/1.1 200 OK\r\n"))
	if _, err := io.ReadFull(st, got); err != nil || string(got) != "HTTP/1.1 200 OK\r\n" {
		t.Fatalf("relay read %q, %v; want the answer without the reply frame", got, err)
	}
	st.Close()
	if n := answered.Load(); n != 1 {
		t.Fatalf("Answered called %d times, want once", n)
	}
}

// An early stream the agent refuses: the relay already wrote its request,
// and its Read (and every later one) returns the refusal as a
// *proto.Error.
func TestOpenStreamEarlyRefused(t *testing.T) {
	var answered atomic.Int32
	st, ys := earlyPair(t, tunnel.OpenOptions{Answered: func() { answered.Add(1) }})
	if _, err := st.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := acceptHeader(t, ys).Refuse(proto.Errorf(proto.CodeLocalDial, "nothing answers on 127.0.0.1:8080")); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		_, err := st.Read(make([]byte, 10))
		var perr *proto.Error
		if !errors.As(err, &perr) || !errors.Is(err, proto.ErrLocalDial) {
			t.Fatalf("Read after the refusal: %v (%T), want the local-dial *proto.Error", err, err)
		}
	}
	if n := answered.Load(); n != 1 {
		t.Fatalf("Answered called %d times, want once", n)
	}
}

// An agent that refuses an early stream writes its reply, closes, and
// sends a stream-reset, which closes the relay's end. A Write after that
// returns the refusal the reply holds, not just "closed".
func TestOpenStreamEarlyWriteAfterReset(t *testing.T) {
	st, ys := earlyPair(t, tunnel.OpenOptions{})
	acceptHeader(t, ys).Refuse(proto.Errorf(proto.CodeLocalDial, "nothing answers"))
	time.Sleep(50 * time.Millisecond) // the reply has arrived
	st.Close()                        // what Resets.Reset does when the agent's StreamReset arrives
	if _, err := st.Write([]byte("GET / HTTP/1.1\r\n\r\n")); !errors.Is(err, proto.ErrLocalDial) {
		t.Errorf("Write = %v, want the refusal", err)
	}
}

// An early stream whose agent never answers: the Read waiting for the
// reply gives up at ReplyBy with ErrNoReply, also when the caller sets a
// later read deadline meanwhile from another goroutine (the relay's
// keep-alive transport sets the response-header deadline from the
// goroutine that writes a request's body while its handler waits).
func TestOpenStreamEarlyNoReply(t *testing.T) {
	for _, later := range []bool{false, true} {
		t.Run(fmt.Sprintf("later-deadline=%v", later), func(t *testing.T) {
			st, _ := earlyPair(t, tunnel.OpenOptions{ReplyBy: time.Now().Add(300 * time.Millisecond)})
			if later {
				go func() {
					time.Sleep(50 * time.Millisecond)
					st.SetReadDeadline(time.Now().Add(3 * time.Second))
				}()
			}
			start := time.Now()
			if _, err := st.Read(make([]byte, 10)); !errors.Is(err, tunnel.ErrNoReply) {
				t.Fatalf("Read = %v, want ErrNoReply", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("Read gave up after %v, long past ReplyBy (300ms)", d)
			}
		})
	}
}

// A caller's own read deadline that expires while the reply is awaited
// fails that Read only, as on a TCP socket: once the deadline is extended,
// a later Read gets the reply and then the data.
func TestOpenStreamEarlyOwnDeadline(t *testing.T) {
	st, ys := earlyPair(t, tunnel.OpenOptions{ReplyBy: time.Now().Add(5 * time.Second)})
	ast := acceptHeader(t, ys)
	st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := st.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("first Read, past its own deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	ast.Accept()
	ast.Write([]byte("hello"))
	st.SetReadDeadline(time.Time{})
	buf := make([]byte, 10)
	if n, err := st.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Errorf("Read after the deadline was extended: %q, %v; want hello", buf[:n], err)
	}
}

// The same when the deadline expires with part of the reply read (an
// agent whose reply came in pieces): the next Read reads the rest of the
// reply, not a deadline error for good nor a reply cut in two.
func TestOpenStreamEarlyOwnDeadlineMidReply(t *testing.T) {
	st, ys := earlyPair(t, tunnel.OpenOptions{ReplyBy: time.Now().Add(5 * time.Second)})
	acceptHeader(t, ys)
	var reply bytes.Buffer
	var pc proto.StreamCodec
	if err := pc.WriteStreamReply(&reply, &proto.StreamReply{}); err != nil {
		t.Fatal(err)
	}
	head, rest := reply.Bytes()[:2], reply.Bytes()[2:]
	if _, err := ys.Write(head); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	for range 2 { // the second try reads nothing new and must wait again
		if _, err := st.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read with half the reply, past its own deadline: %v, want os.ErrDeadlineExceeded", err)
		}
		st.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	}
	if _, err := ys.Write(append(rest, "hello"...)); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Time{})
	buf := make([]byte, 10)
	if n, err := st.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Errorf("Read after the rest of the reply came: %q, %v; want hello", buf[:n], err)
	}
}

// Abort fails a Read blocked on the stream at once, as Close does, even
// though the stream itself stays open until the peer answers the reset.
func TestStreamAbortWakesReader(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	opened, accepted := rawStreamPair(t, relay, agent)
	defer accepted.Close()
	st := tunnel.NewStream(opened, nil)
	tunnel.NewResets(func(uint32) {}).Track(st) // a peer that never answers the reset
	for range 20 {
		errc := make(chan error, 1)
		go func() {
			_, err := st.Read(make([]byte, 1))
			errc <- err
		}()
		time.Sleep(time.Millisecond) // the Read is blocked
		st.Abort()
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Read after Abort: %v, want net.ErrClosed", err)
			}
		case <-time.After(time.Second):
			t.Fatal("a Read blocked on the stream kept waiting after Abort")
		}
		opened, accepted = rawStreamPair(t, relay, agent)
		defer accepted.Close()
		st = tunnel.NewStream(opened, nil)
		tunnel.NewResets(func(uint32) {}).Track(st)
	}
}

// TestStreamReadDeadlineMoved: a Stream keeps a future read deadline to
// itself and gives it to yamux only once it passes (yamux allocates a
// timer for every blocked Read with a deadline). A Read blocked under a
// deadline that is moved later goes on waiting past the first one and
// gets the data; after a timeout, a later deadline lets Reads wait again;
// a deadline that passes fails the Read, not before its time.
func TestStreamReadDeadlineMoved(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	opened, accepted := rawStreamPair(t, relay, agent)
	st, peer := tunnel.NewStream(opened, nil), tunnel.NewStream(accepted, nil)
	defer st.Close()
	defer peer.Close()
	readAsync := func() chan error {
		got := make(chan error, 1)
		go func() {
			_, err := io.ReadFull(st, make([]byte, 4))
			got <- err
		}()
		return got
	}

	st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	got := readAsync()
	time.Sleep(10 * time.Millisecond)
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	time.Sleep(100 * time.Millisecond) // past the first deadline
	peer.Write([]byte("late"))
	if err := <-got; err != nil {
		t.Fatalf("Read with its deadline moved later = %v", err)
	}

	st.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read with nothing coming = %v, want a timeout", err)
	}
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	got = readAsync()
	time.Sleep(30 * time.Millisecond)
	peer.Write([]byte("next"))
	if err := <-got; err != nil {
		t.Fatalf("Read after a timeout and a later deadline = %v", err)
	}

	st.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	start := time.Now()
	_, err := st.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read with nothing coming = %v, want a timeout", err)
	}
	if d := time.Since(start); d < 25*time.Millisecond {
		t.Errorf("timed out after %v, before its 30 ms deadline", d)
	}
}

// yamux cuts a stream StreamCloseTimeout after its write side closed, if
// the peer has not finished by then, even while the peer still sends. The
// Read that meets the cut fails with ErrCloseTimeout: a clean io.EOF would
// pass what arrived for the whole of the peer's data.
func TestStreamCloseTimeoutIsNotEOF(t *testing.T) {
	t.Cleanup(tunnel.SetStreamCloseTimeout(300 * time.Millisecond)) // first: restored after everything else ends
	agent, relay, stop := sessionPair(t)
	defer stop()
	opened, accepted := rawStreamPair(t, relay, agent)
	st := tunnel.NewStream(opened, nil)
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	go func() { // the peer answers slowly, for longer than the timeout
		for range 10 {
			if _, err := accepted.Write([]byte("x")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		accepted.Close()
	}()
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(st)
	if !errors.Is(err, tunnel.ErrCloseTimeout) {
		t.Fatalf("read %d bytes, then %v; want tunnel.ErrCloseTimeout", len(got), err)
	}
}

// A peer that finished (its FIN) inside the close timeout ended cleanly,
// however late the reader gets to the end: here its destination was slow
// and the answer waited, read past the timeout.
func TestStreamFinBeforeCloseTimeoutReadLateIsEOF(t *testing.T) {
	t.Cleanup(tunnel.SetStreamCloseTimeout(500 * time.Millisecond))
	agent, relay, stop := sessionPair(t)
	defer stop()
	o, a := rawStreamPair(t, relay, agent)
	local, peer := tunnel.NewStream(o, nil), tunnel.NewStream(a, nil)
	defer local.Close()
	defer peer.Close()

	local.CloseWrite() // this side is done; the peer's answer follows
	want := bytes.Repeat([]byte("x"), 64<<10)
	if _, err := peer.Write(want); err != nil {
		t.Fatal(err)
	}
	peer.CloseWrite() // the peer finishes at once

	time.Sleep(700 * time.Millisecond) // the reader comes late
	got, err := io.ReadAll(local)
	if !bytes.Equal(got, want) || err != nil {
		t.Fatalf("read %d of %d bytes, then %v; want all of them and a clean end", len(got), len(want), err)
	}
}
