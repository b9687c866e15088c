package tunnel_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// joinFixture is Join between two connections, each with a far end the test
// drives: client ⇄ a ═Join═ b ⇄ server, like visitor ⇄ relay ⇄ agent.
type joinFixture struct {
	client, server net.Conn // the far ends
	counts         tunnel.Counts
	done           chan error // Join's result
}

// halfCloser is a connection that can send EOF and keep reading.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// joinTCP joins two real TCP connections on 127.0.0.1.
func joinTCP(t *testing.T) *joinFixture {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	return startJoin(t, client, a, b, server)
}

// joinStream joins a TCP connection with a tunnel.Stream, as the relay does;
// the server is the agent's end of the stream.
func joinStream(t *testing.T) *joinFixture {
	client, a := tcpPair(t)
	agent, relay, stop := sessionPair(t)
	t.Cleanup(stop)
	opened, accepted := rawStreamPair(t, relay, agent)
	b, server := tunnel.NewStream(opened, nil), tunnel.NewStream(accepted, nil)
	return startJoin(t, client, a, b, server)
}

func startJoin(t *testing.T, client, a, b, server net.Conn) *joinFixture {
	f := &joinFixture{client: client, server: server, done: make(chan error, 1)}
	go func() { f.done <- tunnel.Join(a, b, &f.counts) }()
	t.Cleanup(func() {
		client.Close()
		server.Close()
		f.wait(t)
	})
	return f
}

// wait returns Join's result, failing the test if Join does not return.
// The timeout is a failure guard, not a readiness wait.
func (f *joinFixture) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-f.done:
		f.done <- err // later calls see the same result
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Join did not return")
		return nil
	}
}

var joinKinds = []struct {
	name  string
	start func(*testing.T) *joinFixture
}{
	{"TCP", joinTCP},
	{"Stream", joinStream},
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// sendAndClose writes data to c and then half-closes it.
func sendAndClose(c net.Conn, data []byte) error {
	if _, err := c.Write(data); err != nil {
		return err
	}
	return c.(halfCloser).CloseWrite()
}

// TestJoinCopiesBothWays sends several MiB each way at the same time and
// checks every byte arrives (sha256), the counts match, and Join ends
// cleanly after both sides half-closed.
func TestJoinCopiesBothWays(t *testing.T) {
	for _, kind := range joinKinds {
		t.Run(kind.name, func(t *testing.T) {
			f := kind.start(t)
			up := randomBytes(t, 5<<20)   // client → server
			down := randomBytes(t, 3<<20) // server → client

			errc := make(chan error, 2)
			go func() { errc <- sendAndClose(f.client, up) }()
			go func() { errc <- sendAndClose(f.server, down) }()
			gotDown := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(f.client)
				gotDown <- b
			}()
			gotUp, err := io.ReadAll(f.server)
			if err != nil {
				t.Fatalf("server read: %v", err)
			}
			for range 2 {
				if err := <-errc; err != nil {
					t.Fatalf("write: %v", err)
				}
			}
			if sha256.Sum256(gotUp) != sha256.Sum256(up) {
				t.Errorf("server got %d bytes that differ from the %d sent", len(gotUp), len(up))
			}
			if d := <-gotDown; sha256.Sum256(d) != sha256.Sum256(down) {
				t.Errorf("client got %d bytes that differ from the %d sent", len(d), len(down))
			}
			if err := f.wait(t); err != nil {
				t.Errorf("Join = %v, want nil after a clean end", err)
			}
			if got := f.counts.AToB.Load(); got != int64(len(up)) {
				t.Errorf("counts.AToB = %d, want %d", got, len(up))
			}
			if got := f.counts.BToA.Load(); got != int64(len(down)) {
				t.Errorf("counts.BToA = %d, want %d", got, len(down))
			}
		})
	}
}

// TestJoinHalfClose checks the request/response pattern that needs
// half-close: the client sends and shuts its write side; the server answers
// only after it has seen that EOF, and the client still gets the whole
// answer through Join.
func TestJoinHalfClose(t *testing.T) {
	for _, kind := range joinKinds {
		t.Run(kind.name, func(t *testing.T) {
			f := kind.start(t)
			reply := randomBytes(t, 2<<20)
			if err := sendAndClose(f.client, []byte("request")); err != nil {
				t.Fatal(err)
			}
			req, err := io.ReadAll(f.server) // ends only at the propagated EOF
			if err != nil || string(req) != "request" {
				t.Fatalf("server read %q, %v", req, err)
			}
			go sendAndClose(f.server, reply)
			got, err := io.ReadAll(f.client)
			if err != nil {
				t.Fatalf("client read: %v", err)
			}
			if !bytes.Equal(got, reply) {
				t.Errorf("client got %d bytes, want the %d-byte reply", len(got), len(reply))
			}
			if err := f.wait(t); err != nil {
				t.Errorf("Join = %v, want nil", err)
			}
		})
	}
}

// TestJoinOtherDirectionKeepsFlowing checks that after one direction ended
// (the client's EOF), the other direction still carries many separate
// writes, and that Join waits for it rather than ending at the first EOF.
func TestJoinOtherDirectionKeepsFlowing(t *testing.T) {
	for _, kind := range joinKinds {
		t.Run(kind.name, func(t *testing.T) {
			f := kind.start(t)
			if err := f.client.(halfCloser).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if n, err := io.Copy(io.Discard, f.server); n != 0 || err != nil {
				t.Fatalf("server read %d bytes, %v; want EOF", n, err)
			}
			buf := make([]byte, 1000)
			for i := range 100 {
				for j := range buf {
					buf[j] = byte(i)
				}
				if _, err := f.server.Write(buf); err != nil {
					t.Fatalf("server write %d after the client's EOF: %v", i, err)
				}
				if _, err := io.ReadFull(f.client, buf); err != nil {
					t.Fatalf("client read %d: %v", i, err)
				}
				if buf[0] != byte(i) || buf[len(buf)-1] != byte(i) {
					t.Fatalf("chunk %d arrived corrupted", i)
				}
				select {
				case err := <-f.done:
					t.Fatalf("Join returned (%v) while a direction was still open", err)
				default:
				}
			}
			f.server.(halfCloser).CloseWrite()
			if err := f.wait(t); err != nil {
				t.Errorf("Join = %v, want nil", err)
			}
			if got := f.counts.BToA.Load(); got != 100*1000 {
				t.Errorf("counts.BToA = %d, want %d", got, 100*1000)
			}
		})
	}
}

// TestJoinIdleBothClosed checks that an idle Join returns nil once both far
// ends have closed.
func TestJoinIdleBothClosed(t *testing.T) {
	for _, kind := range joinKinds {
		t.Run(kind.name, func(t *testing.T) {
			f := kind.start(t)
			f.client.Close()
			f.server.Close()
			if err := f.wait(t); err != nil {
				t.Errorf("Join = %v, want nil", err)
			}
		})
	}
}

// TestJoinResetEndsBoth checks that an error on one side (the client resets
// its TCP connection) ends both directions: Join returns the error and the
// server sees its connection end although it never closed its side.
//
// In each state of an idle direction: copying, quiet (past the 10 ms
// linger, its big buffer given back, still on its goroutine) and parked
// (past the further 30 ms, waiting in WaitRead on a fresh goroutine).
// Waiting must not take the reset for a clean end of stream, which would
// half-close the server's side and pass a response cut short as complete.
func TestJoinResetEndsBoth(t *testing.T) {
	pauses := []struct {
		state string
		d     time.Duration
	}{{"copying", 0}, {"quiet", 20 * time.Millisecond}, {"parked", 300 * time.Millisecond}}
	for _, kind := range joinKinds {
		for _, p := range pauses {
			t.Run(kind.name+"/"+p.state, func(t *testing.T) {
				testJoinReset(t, kind.start(t), p.d)
			})
		}
	}
}

func testJoinReset(t *testing.T, f *joinFixture, pause time.Duration) {
	// Prove the pipe is up before the reset.
	f.client.Write([]byte("x"))
	if _, err := io.ReadFull(f.server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(pause)
	f.client.(*net.TCPConn).SetLinger(0)
	f.client.Close() // sends RST
	if err := f.wait(t); err == nil {
		t.Error("Join = nil after a connection reset, want the error")
	}
	if _, err := f.server.Read(make([]byte, 1)); err == nil {
		t.Error("server's connection still open after the client's reset")
	}
}

// TestJoinOwnerCloseEndsBoth checks that the owner of a Join can stop it by
// closing just one of the two connections (as a relay does on shutdown):
// Join then closes the other and returns, without an error.
func TestJoinOwnerCloseEndsBoth(t *testing.T) {
	for _, side := range []string{"a", "b"} {
		t.Run(side, func(t *testing.T) {
			client, a := tcpPair(t)
			b, server := tcpPair(t)
			f := startJoin(t, client, a, b, server)
			if side == "a" {
				a.Close()
			} else {
				b.Close()
			}
			if err := f.wait(t); err != nil {
				t.Errorf("Join = %v, want nil", err)
			}
			// Both far ends see the end.
			if _, err := client.Read(make([]byte, 1)); err == nil {
				t.Error("client's connection still open")
			}
			if _, err := server.Read(make([]byte, 1)); err == nil {
				t.Error("server's connection still open")
			}
		})
	}
}

// shrinkCounter is a connection that counts Join's requests to release its
// receive buffer, and remembers whether each came when nothing was left
// unread.
type shrinkCounter struct {
	net.Conn
	mu      sync.Mutex
	shrinks int
}

func (c *shrinkCounter) Shrink() {
	c.mu.Lock()
	c.shrinks++
	c.mu.Unlock()
}

func (c *shrinkCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shrinks
}

// TestJoinShrinksIdleSource: after a burst, before Join blocks waiting for
// more, it asks the source to drop its receive buffer (a yamux stream keeps
// one the size of the largest frame it held, for as long as it lives).
func TestJoinShrinksIdleSource(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	src := &shrinkCounter{Conn: a}
	f := startJoin(t, client, src, b, server)
	msg := randomBytes(t, 32<<10)
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	// The last read of the burst returned less than the buffer: the source
	// was drained, and Join said so before its next (blocking) read.
	for deadline := time.Now().Add(5 * time.Second); src.count() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Join never asked the drained source to shrink")
		}
	}
	client.Close()
	server.Close()
	f.wait(t)
}

// shortReader returns at most max bytes per Read, as a TLS connection does
// (one record of at most 16 KiB), and counts the reads Join made with its
// small buffer.
type shortReader struct {
	net.Conn
	max        int
	smallReads atomic.Int64
}

func (c *shortReader) Read(p []byte) (int, error) {
	if len(p) < 4<<10 { // Join's small buffer is 512 bytes, its big one 32 KiB
		c.smallReads.Add(1)
	}
	if len(p) > c.max {
		p = p[:c.max]
	}
	return c.Conn.Read(p)
}

// TestJoinKeepsBigBufferAcrossShortReads: a busy source that returns short
// reads keeps Join's big buffer between them. Giving it back after each one
// would follow every 16 KiB read with a 512-byte one, doubling the reads
// and the frames they turn into.
func TestJoinKeepsBigBufferAcrossShortReads(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	src := &shortReader{Conn: a, max: 16 << 10}
	f := startJoin(t, client, src, b, server)
	msg := randomBytes(t, 8<<20)
	go client.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("bytes changed on the way")
	}
	// One small read found the burst; a pause in it of more than
	// bigLinger (a loaded machine) may add a few. Not one per 16 KiB.
	if n := src.smallReads.Load(); n > 16 {
		t.Errorf("%d reads with the small buffer while 8 MiB flowed in 16 KiB reads; want the big buffer kept", n)
	}
	client.Close()
	server.Close()
	f.wait(t)
}

// probedConn is a TCP connection that counts what Join does with it as
// a source: waits without reading (each a direction gone idle), read
// deadlines set, and reads into the small buffer.
type probedConn struct {
	*net.TCPConn
	waits, deadlineSets, smallReads atomic.Int32
}

func (c *probedConn) WaitRead() {
	c.waits.Add(1)
	tunnel.WaitRead(c.TCPConn)
}

func (c *probedConn) SetReadDeadline(t time.Time) error {
	c.deadlineSets.Add(1)
	return c.TCPConn.SetReadDeadline(t)
}

func (c *probedConn) Read(p []byte) (int, error) {
	if len(p) < 4<<10 { // Join's small buffer is 512 bytes, its others 32 and 128 KiB
		c.smallReads.Add(1)
	}
	return c.TCPConn.Read(p)
}

// TestJoinQuietKeepsItsGoroutine checks the two steps of a quiet direction:
// data every 20 ms (past the 10 ms after which the bigger buffer goes back,
// inside the 30 ms more before parking) is read on without parking between
// chunks, as a keep-alive connection's requests are; a pause well past
// both parks the direction (it waits without a buffer), and data after it
// still comes through.
func TestJoinQuietKeepsItsGoroutine(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	src := &probedConn{TCPConn: a}
	startJoin(t, client, src, b, server)
	buf := make([]byte, 16)
	send := func(i int) {
		t.Helper()
		msg := fmt.Sprintf("chunk %02d", i)
		if _, err := client.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(server, buf[:len(msg)]); err != nil || string(buf[:len(msg)]) != msg {
			t.Fatalf("chunk %d: %q, %v", i, buf[:len(msg)], err)
		}
	}
	const chunks = 20
	start := time.Now()
	for i := range chunks {
		send(i)
		time.Sleep(20 * time.Millisecond)
	}
	// A loaded machine may stretch a few gaps past 40 ms; with a direction
	// that parked after 10 ms every gap would count.
	if got := src.waits.Load(); got > chunks/4 {
		t.Errorf("%d chunks 20 ms apart (%v in all): the direction parked %d times, want at most %d",
			chunks, time.Since(start).Round(time.Millisecond), got, chunks/4)
	}
	before := src.waits.Load()
	time.Sleep(300 * time.Millisecond)
	if src.waits.Load() == before {
		t.Error("a direction quiet for 300 ms did not park in WaitRead")
	}
	send(chunks)
}

// TestJoinDeadlinesNotPerMessage: a conversation whose messages come a
// little more than bigLinger (10 ms) apart, as on a busy relay's many
// WebSockets, moves the source's read deadline only when it expires, about
// once for every few messages. Moving it for each message, and having it
// expire between every two, cost the relay and the agent a sixth of their
// CPU per echo (tunnel bench, 100 WebSockets).
func TestJoinDeadlinesNotPerMessage(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	src := &probedConn{TCPConn: a}
	startJoin(t, client, src, b, server)
	buf := make([]byte, 16)
	const chunks = 30
	for i := range chunks {
		msg := fmt.Sprintf("chunk %02d", i)
		if _, err := client.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(server, buf[:len(msg)]); err != nil || string(buf[:len(msg)]) != msg {
			t.Fatalf("chunk %d: %q, %v", i, buf[:len(msg)], err)
		}
		time.Sleep(12 * time.Millisecond)
	}
	// About one for every three chunks; a loaded machine that stretches
	// gaps past 40 ms parks the direction and adds a few.
	if got := src.deadlineSets.Load(); got > chunks {
		t.Errorf("%d read deadlines set for %d chunks 12 ms apart; want fewer than one per chunk", got, chunks)
	}
}

// TestJoinSilentDirectionParks: a direction whose source never sends
// anything (a WebSocket whose browser only listens) goes idle like one that
// has gone quiet, rather than waiting in a read for ever on a goroutine
// and a buffer of its own; data that comes later still comes through.
func TestJoinSilentDirectionParks(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	src := &probedConn{TCPConn: a}
	startJoin(t, client, src, b, server)
	for deadline := time.Now().Add(5 * time.Second); src.waits.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a direction that never read anything was still reading after 5 s; want it idle after 40 ms")
		}
	}
	if _, err := client.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "late" {
		t.Fatalf("after the wait: %q, %v", buf, err)
	}
}

// joinUnhandshakenTLS joins a TLS server connection before its handshake
// with a TCP one: client is the TLS client at its other end, s the socket
// under the joined tls.Conn, server the far end of the TCP side.
func joinUnhandshakenTLS(t *testing.T) (client *tls.Conn, s, server *net.TCPConn) {
	t.Helper()
	cert, roots := testCert()
	c, s := tcpPair(t)
	a := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}})
	b, server := tcpPair(t)
	client = tls.Client(c, &tls.Config{ServerName: "tunnel.test", RootCAs: roots})
	startJoin(t, client, a, b, server)
	return client, s, server
}

// TestJoinUnhandshakenTLS: a TLS connection joined before its handshake
// ran (the handshake runs in Join's first read) waits for its client as
// long as it takes. A read deadline passing mid-handshake fails a
// tls.Conn for good, so Join sets none before data comes; taking the
// failure it then returns for ever for Join's own wake-up had made the
// direction spin.
func TestJoinUnhandshakenTLS(t *testing.T) {
	client, _, server := joinUnhandshakenTLS(t)
	time.Sleep(100 * time.Millisecond) // past Join's idle wait
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if err := client.Handshake(); err != nil {
		t.Fatalf("handshake through a join that waited: %v", err)
	}
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

// slowWriter's writes take 50 ms each, as to a peer on a slow link or a
// stream whose window is full.
type slowWriter struct{ *net.TCPConn }

func (c *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(50 * time.Millisecond)
	return c.TCPConn.Write(p)
}

// TestJoinSlowDestinationNotIdle: a source that always has data, copied
// to a destination whose every write takes 50 ms, never goes idle. Quiet
// is counted from the end of the last write, not from the read before it:
// a write longer than the idle wait is not the source's silence.
func TestJoinSlowDestinationNotIdle(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	src := &probedConn{TCPConn: a}
	startJoin(t, client, src, &slowWriter{b}, server)
	msg := randomBytes(t, 256<<10)
	go client.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(server, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	// A loaded machine may stall a read past 40 ms once or twice.
	if n := src.waits.Load(); n > 2 {
		t.Errorf("the direction went idle %d times while its source had data waiting", n)
	}
}

// TestJoinHalfClosedKeepsBigBuffer: after the other direction has ended,
// a stream of data keeps its big buffer as it would with both open; the
// half-closed join's one-second look at its destination gives the buffer
// back only after bigLinger of quiet.
func TestJoinHalfClosedKeepsBigBuffer(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	src := &probedConn{TCPConn: a}
	f := startJoin(t, client, src, b, server)
	server.CloseWrite()
	if _, err := io.ReadAll(client); err != nil { // b→a has ended: half-closed
		t.Fatal(err)
	}
	chunk := randomBytes(t, 256<<10)
	const chunks = 150 // 2 ms apart: about 300 ms of data
	go func() {
		for range chunks {
			client.Write(chunk)
			time.Sleep(2 * time.Millisecond)
		}
		client.CloseWrite()
	}()
	n, err := io.Copy(io.Discard, server)
	if err != nil || n != chunks*int64(len(chunk)) {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	// One small read found the stream; a loaded machine's pauses of more
	// than bigLinger may add a few. Not one every 10 ms.
	if n := src.smallReads.Load(); n > 10 {
		t.Errorf("%d reads with the small buffer in a half-closed stream of %d chunks 2 ms apart; want the big buffer kept", n, chunks)
	}
	f.wait(t)
}

// Where a TCP connection can neither park nor be waited on without a read
// (every OS but Linux), an idle direction waits in one blocking read, not
// waking every 40 ms (bigLinger+parkAfter) to start a goroutine, take a
// buffer, arm a deadline and read again; data after it still comes.
func TestJoinIdleNoPollWithoutWaitRead(t *testing.T) {
	t.Cleanup(tunnel.WithoutTCPWaits()) // first: restored after the join ends
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	src := &probedConn{TCPConn: a}
	startJoin(t, client, src, b, server)

	time.Sleep(100 * time.Millisecond) // past the first idle wait
	before := src.smallReads.Load()
	time.Sleep(time.Second)
	if n := src.smallReads.Load() - before; n > 2 {
		t.Errorf("an idle direction read its source %d times in 1 s (polling), want at most 2", n)
	}
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
}
