package e2e

// A malicious agent: it logs in for real (upgrade, yamux, Hello, Welcome),
// speaking yamux frames by hand for the whole session, and then sends what
// no agent would: malformed frames, a ping flood, thousands of streams
// toward the relay, frames for streams that do not exist. Each attack may
// end only its own session; the relay's goroutines, heap and log stay
// within set bounds, and a well-behaved agent on the same relay keeps
// serving. Relay and attacker share this process, so runtime counters
// measure the relay. Every loop is bounded in count and time.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// yamux frames (github.com/hashicorp/yamux const.go): version, type, flags,
// stream ID, length; data frames carry length bytes of payload.
const (
	yData   = 0
	yWindow = 1
	yPing   = 2

	ySYN = 1
	yACK = 2
	yFIN = 4
)

func yframe(typ byte, flags uint16, id, length uint32, payload ...byte) []byte {
	b := make([]byte, 12, 12+len(payload))
	b[1] = typ
	binary.BigEndian.PutUint16(b[2:4], flags)
	binary.BigEndian.PutUint32(b[4:8], id)
	binary.BigEndian.PutUint32(b[8:12], length)
	return append(b, payload...)
}

// rawAgent is an agent session spoken frame by frame. A goroutine drains
// everything the relay sends, answers its keepalive pings, passes the
// control stream's bytes on, and notes ping replies and the end of the
// connection.
type rawAgent struct {
	conn   net.Conn
	wmu    sync.Mutex // one frame, or one chunk of whole frames, at a time
	ctrl   chan []byte
	acks   chan uint32
	closed chan struct{} // the relay ended the connection
}

// loginRaw logs in as an agent for name and returns once welcomed.
func loginRaw(t *testing.T, rl *testRelay, name string) *rawAgent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, _ := url.Parse(rl.url())
	conn, err := tunnel.DialControl(ctx, u, tunnel.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := &rawAgent{conn: conn, ctrl: make(chan []byte, 64), acks: make(chan uint32, 1024), closed: make(chan struct{})}
	go a.read()
	t.Cleanup(func() {
		conn.Close()
		<-a.closed
	})
	var hello bytes.Buffer
	if err := proto.WriteMessage(&hello, &proto.Hello{Version: proto.Version, Tunnels: []proto.TunnelRequest{{Name: name}}}); err != nil {
		t.Fatal(err)
	}
	// Stream 1 is the control stream: a SYN, then the Hello as data.
	a.write(yframe(yWindow, ySYN, 1, 0))
	a.write(yframe(yData, 0, 1, uint32(hello.Len()), hello.Bytes()...))
	w, err := proto.ReadAs[*proto.Welcome](&chanReader{ch: a.ctrl, closed: a.closed, timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("raw login as %q: %v", name, err)
	}
	if len(w.Tunnels) != 1 || w.Tunnels[0].Name != name {
		t.Fatalf("raw login: welcome %+v", w)
	}
	return a
}

func (a *rawAgent) read() {
	defer close(a.closed)
	r := a.conn
	hdr := make([]byte, 12)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return
		}
		typ, flags := hdr[1], binary.BigEndian.Uint16(hdr[2:4])
		id, n := binary.BigEndian.Uint32(hdr[4:8]), binary.BigEndian.Uint32(hdr[8:12])
		switch {
		case typ == yData:
			p := make([]byte, n)
			if _, err := io.ReadFull(r, p); err != nil {
				return
			}
			if id == 1 && n > 0 {
				select {
				case a.ctrl <- p:
				default: // notices nobody reads
				}
			}
		case typ == yPing && flags&ySYN != 0:
			a.write(yframe(yPing, yACK, 0, n))
		case typ == yPing && flags&yACK != 0:
			select {
			case a.acks <- n:
			default:
			}
		}
	}
}

// write sends b, whole frames only, and returns the error.
func (a *rawAgent) write(b []byte) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	a.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := a.conn.Write(b)
	return err
}

// flood writes frames, n times the frame f(i), in chunks of whole frames,
// and stops at the first error (the relay closed the connection).
func (a *rawAgent) flood(n int, f func(i int) []byte) (sent int, err error) {
	var chunk []byte
	for i := range n {
		chunk = append(chunk, f(i)...)
		if len(chunk) >= 64<<10 || i == n-1 {
			if err := a.write(chunk); err != nil {
				return sent, err
			}
			sent = i + 1
			chunk = chunk[:0]
		}
	}
	return sent, nil
}

// ping sends a ping and waits for the reply; every frame sent before has
// then been handled by the relay.
func (a *rawAgent) ping(t *testing.T, id uint32) {
	t.Helper()
	if err := a.write(yframe(yPing, ySYN, 0, id)); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(20 * time.Second)
	for {
		select {
		case got := <-a.acks:
			if got == id {
				return
			}
		case <-a.closed:
			t.Fatal("the relay closed the session")
		case <-timeout:
			t.Fatal("no ping reply within 20s")
		}
	}
}

// waitClosed waits until the relay has closed the connection.
func (a *rawAgent) waitClosed(t *testing.T, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-a.closed:
		return time.Since(start)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: session still open after 10s", what)
		return 0
	}
}

// chanReader reads the chunks sent on ch.
type chanReader struct {
	ch      chan []byte
	closed  chan struct{}
	timeout time.Duration
	buf     []byte
}

func (r *chanReader) Read(p []byte) (int, error) {
	if len(r.buf) == 0 {
		select {
		case r.buf = <-r.ch:
		case <-r.closed:
			return 0, io.EOF
		case <-time.After(r.timeout):
			return 0, fmt.Errorf("nothing on the control stream for %v", r.timeout)
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// yamuxLines counts the relay's log records from yamux (component=yamux)
// and passes every record on.
type yamuxLines struct {
	slog.Handler
	n *atomic.Int64
}

func (h yamuxLines) Handle(ctx context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "component" && a.Value.String() == "yamux" {
			h.n.Add(1)
			return false
		}
		return true
	})
	return h.Handler.Handle(ctx, r)
}

func (h yamuxLines) WithAttrs(as []slog.Attr) slog.Handler {
	return yamuxLines{h.Handler.WithAttrs(as), h.n}
}

func (h yamuxLines) WithGroup(g string) slog.Handler {
	return yamuxLines{h.Handler.WithGroup(g), h.n}
}

// usage samples the process's goroutines and live heap until stopped, and
// reports the peaks.
type usage struct {
	stop, done chan struct{}
	goroutines uint64
	heap       uint64
}

func sampleUsage() *usage {
	u := &usage{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(u.done)
		s := []metrics.Sample{{Name: "/sched/goroutines:goroutines"}, {Name: "/memory/classes/heap/objects:bytes"}}
		for i := 0; i < 100_000; i++ { // 100 s at most
			metrics.Read(s)
			u.goroutines = max(u.goroutines, s[0].Value.Uint64())
			u.heap = max(u.heap, s[1].Value.Uint64())
			select {
			case <-u.stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return u
}

func (u *usage) end() *usage {
	close(u.stop)
	<-u.done
	return u
}

// settledHeap is the live heap after two collections.
func settledHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// maliciousSetup starts a relay whose yamux log lines are counted, and a
// well-behaved agent on it; serving checks that the agent still serves.
func maliciousSetup(t *testing.T) (rl *testRelay, yamuxLogLines *atomic.Int64, serving func(string)) {
	t.Helper()
	yamuxLogLines = new(atomic.Int64)
	rl = startRelay(t, "", func(c *relay.Config) {
		c.Logger = slog.New(yamuxLines{testLogger(t).Handler(), yamuxLogLines})
	})
	ls := startLocal(t)
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "good", Local: ls.addr}})
	client := visitorClient(rl.addr)
	t.Cleanup(client.CloseIdleConnections)
	serving = func(when string) {
		t.Helper()
		for i := range 3 {
			path := fmt.Sprintf("/%s/%d", url.PathEscape(when), i)
			status, body := get(t, client, urls[0]+path)
			if status != 200 || body != "GET "+path {
				t.Fatalf("%s: the good agent answered %d %q", when, status, body)
			}
		}
	}
	serving("before")
	return rl, yamuxLogLines, serving
}

// Malformed frames end the sender's session, and only that one: those the
// guard rejects before yamux sees them, and protocol errors yamux itself
// catches.
func TestMaliciousMalformedFrames(t *testing.T) {
	rl, _, serving := maliciousSetup(t)
	for i, tc := range []struct {
		name  string
		frame []byte
	}{
		{"bad version", append([]byte{1}, yframe(yData, 0, 1, 0)[1:]...)},
		{"bad type", yframe(9, 0, 1, 0)},
		{"data longer than any window", yframe(yData, 0, 1, 1<<30)},
		{"stream opened with the relay's parity", yframe(yWindow, ySYN, 2, 0)},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		// Caught by yamux, and by the relay's control reader.
		{"control stream opened twice", yframe(yWindow, ySYN, 1, 0)},
		{"junk on the control stream", yframe(yData, 0, 1, 1024, bytes.Repeat([]byte{0xff}, 1024)...)},
	} {
		before := tunnel.GuardTotals()
		a := loginRaw(t, rl, fmt.Sprintf("evil%d", i))
		a.write(tc.frame)
		d := a.waitClosed(t, tc.name)
		after := tunnel.GuardTotals()
		t.Logf("%s: session closed after %v (malformed counted %d)", tc.name, d, after.Malformed-before.Malformed)
		serving(tc.name)
	}
}

// 100,000 pings: yamux would answer each in a goroutine of its own. The
// guard closes the session within the burst, so the relay's goroutines
// barely move.
func TestMaliciousPingFlood(t *testing.T) {
	rl, yamuxLogLines, serving := maliciousSetup(t)
	a := loginRaw(t, rl, "evil")
	a.ping(t, 1)
	before := tunnel.GuardTotals()
	baseG, baseHeap := runtime.NumGoroutine(), settledHeap()
	u := sampleUsage()
	start := time.Now()
	sent, err := a.flood(100_000, func(int) []byte { return yframe(yPing, ySYN, 0, 42) })
	d := a.waitClosed(t, "ping flood")
	u.end()
	after := tunnel.GuardTotals()
	heap := settledHeap()
	t.Logf("ping flood: %d pings written (stopped by %v) in %v, closed %v later; goroutines %d before, peak %d; heap %d KiB before, peak %d KiB, %d KiB after GC; pings counted %d; yamux log lines %d",
		sent, err, time.Since(start)-d, d, baseG, u.goroutines, baseHeap>>10, u.heap>>10, heap>>10, after.Pings-before.Pings, yamuxLogLines.Load())
	if after.PingFloods-before.PingFloods != 1 {
		t.Fatalf("ping floods counted: %d", after.PingFloods-before.PingFloods)
	}
	if got := after.Pings - before.Pings; got > 100 {
		t.Fatalf("%d pings reached the relay's session", got)
	}
	if u.goroutines > uint64(baseG)+100 {
		t.Fatalf("goroutines peaked at %d, from %d", u.goroutines, baseG)
	}
	if heap > baseHeap+16<<20 {
		t.Fatalf("heap %d KiB after GC, from %d KiB", heap>>10, baseHeap>>10)
	}
	serving("after the ping flood")
}

// 10,000 streams opened toward the relay, each with a little data. With the
// guard, the session ends after the burst; without the guard's stream limit
// (the relay's own defences: refuseStreams and yamux's backlog), the
// streams still cost bounded goroutines and heap.
func TestMaliciousAgentOpensStreams(t *testing.T) {
	for _, guarded := range []bool{true, false} {
		name := "guarded"
		if !guarded {
			name = "no stream limit"
		}
		t.Run(name, func(t *testing.T) {
			if !guarded {
				saved := tunnel.DefaultGuardLimits
				tunnel.DefaultGuardLimits.StreamsPerSecond = 0
				t.Cleanup(func() { tunnel.DefaultGuardLimits = saved })
			}
			rl, yamuxLogLines, serving := maliciousSetup(t)
			a := loginRaw(t, rl, "evil")
			a.ping(t, 1)
			before := tunnel.GuardTotals()
			baseG, baseHeap := runtime.NumGoroutine(), settledHeap()
			u := sampleUsage()
			payload := bytes.Repeat([]byte("x"), 1024)
			const n = 10_000
			sent, err := a.flood(n, func(i int) []byte {
				return yframe(yData, ySYN, uint32(3+2*i), uint32(len(payload)), payload...)
			})
			if guarded {
				a.waitClosed(t, "stream flood")
			} else {
				if err != nil {
					t.Fatalf("after %d streams: %v", sent, err)
				}
				a.ping(t, 2) // all handled, session alive
			}
			u.end()
			heap := settledHeap()
			after := tunnel.GuardTotals()
			t.Logf("%s: %d streams written (%v); streams counted %d; goroutines %d before, peak %d; heap %d KiB before, peak %d KiB, %d KiB after GC; yamux log lines %d",
				name, sent, err, after.Streams-before.Streams, baseG, u.goroutines, baseHeap>>10, u.heap>>10, heap>>10, yamuxLogLines.Load())
			if guarded && after.StreamFloods-before.StreamFloods != 1 {
				t.Fatalf("stream floods counted: %d", after.StreamFloods-before.StreamFloods)
			}
			if u.goroutines > uint64(baseG)+200 {
				t.Fatalf("goroutines peaked at %d, from %d", u.goroutines, baseG)
			}
			// Unguarded, each refused stream stays (data buffered) until
			// the agent's FIN or yamux's StreamCloseTimeout: 10,000 × ~2 KiB.
			if heap > baseHeap+64<<20 {
				t.Fatalf("heap %d KiB after GC, from %d KiB", heap>>10, baseHeap>>10)
			}
			if n := yamuxLogLines.Load(); n > 50 {
				t.Fatalf("%d yamux log lines", n)
			}
			serving("after " + name + " stream flood")
		})
	}
}

// 100,000 frames for streams that do not exist: yamux discards them and
// logs a line each. The session survives (nothing here breaks the
// protocol), the relay's log gets a bounded number of lines, and the rest
// are counted.
func TestMaliciousUnknownStreamFrames(t *testing.T) {
	rl, yamuxLogLines, serving := maliciousSetup(t)
	a := loginRaw(t, rl, "evil")
	a.ping(t, 1)
	before := tunnel.GuardTotals()
	linesBefore := yamuxLogLines.Load()
	baseG, baseHeap := runtime.NumGoroutine(), settledHeap()
	u := sampleUsage()
	start := time.Now()
	const n = 100_000
	if _, err := a.flood(n, func(i int) []byte {
		id := uint32(1001 + 2*(i%5000))
		switch i % 3 {
		case 0:
			return yframe(yData, 0, id, 8, 1, 2, 3, 4, 5, 6, 7, 8)
		case 1:
			return yframe(yWindow, 0, id, 1<<16)
		default:
			return yframe(yData, yFIN, id, 0)
		}
	}); err != nil {
		t.Fatal(err)
	}
	a.ping(t, 2) // all handled; the session is alive
	elapsed := time.Since(start)
	u.end()
	heap := settledHeap()
	after := tunnel.GuardTotals()
	lines := yamuxLogLines.Load() - linesBefore
	t.Logf("%d frames for unknown streams handled in %v: yamux log lines %d written, %d counted, %d suppressed; goroutines %d before, peak %d; heap %d KiB before, peak %d KiB, %d KiB after GC",
		n, elapsed, lines, after.YamuxLogLines-before.YamuxLogLines, after.YamuxLogSuppressed-before.YamuxLogSuppressed, baseG, u.goroutines, baseHeap>>10, u.heap>>10, heap>>10)
	// Per second of flood: the lines passed and one summary.
	maxLines := int64(tunnel.YamuxLogLinesPerSecond+1) * (int64(elapsed/time.Second) + 2)
	if lines > maxLines {
		t.Fatalf("%d yamux log lines in %v, want ≤ %d", lines, elapsed, maxLines)
	}
	if got := after.YamuxLogSuppressed - before.YamuxLogSuppressed; got < n-uint64(maxLines) {
		t.Fatalf("%d suppressed lines counted, want ≥ %d", got, n-maxLines)
	}
	if u.goroutines > uint64(baseG)+50 {
		t.Fatalf("goroutines peaked at %d, from %d", u.goroutines, baseG)
	}
	if heap > baseHeap+16<<20 {
		t.Fatalf("heap %d KiB after GC, from %d KiB", heap>>10, baseHeap>>10)
	}
	select {
	case <-a.closed:
		t.Fatal("the relay closed the session")
	default:
	}
	serving("after frames for unknown streams")
}
