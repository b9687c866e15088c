package tunnel_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// yamux frame types and flags, as on the wire.
const (
	tData   = 0
	tWindow = 1
	tPing   = 2
	tGoAway = 3

	fSYN = 1
	fACK = 2
)

// frame encodes a yamux frame header, followed by payload for data frames.
func frame(typ byte, flags uint16, id, length uint32, payload ...byte) []byte {
	b := make([]byte, 12, 12+len(payload))
	b[1] = typ
	binary.BigEndian.PutUint16(b[2:4], flags)
	binary.BigEndian.PutUint32(b[4:8], id)
	binary.BigEndian.PutUint32(b[8:12], length)
	return append(b, payload...)
}

// chunkConn serves data in reads of at most chunk() bytes, then io.EOF.
type chunkConn struct {
	net.Conn // nil: only the methods below are used
	data     []byte
	chunk    func() int
	closed   atomic.Bool
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk())], c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *chunkConn) Close() error         { c.closed.Store(true); return nil }
func (c *chunkConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// logCounter is a slog.Handler that counts records, and those whose message
// or attributes contain match.
type logCounter struct {
	match   string
	all     atomic.Int64
	matched atomic.Int64
	mu      sync.Mutex
	msgs    []string
}

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logCounter) WithGroup(string) slog.Handler            { return h }
func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	h.all.Add(1)
	text := r.Message
	r.Attrs(func(a slog.Attr) bool {
		text += " " + a.String()
		return true
	})
	if h.match != "" && strings.Contains(text, h.match) {
		h.matched.Add(1)
	}
	h.mu.Lock()
	if len(h.msgs) < 100 {
		h.msgs = append(h.msgs, text)
	}
	h.mu.Unlock()
	return nil
}

func (h *logCounter) messages() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.msgs...)
}

// validStream is a stream of well-formed frames a real agent could send.
func validStream(rng *rand.Rand) (data []byte, frames int) {
	var b bytes.Buffer
	b.Write(frame(tWindow, fSYN, 1, 1<<20))
	frames++
	for i := range 500 {
		switch i % 7 {
		case 0:
			b.Write(frame(tWindow, fACK, 2, uint32(rng.IntN(1<<20))))
		case 1:
			if i < 100 {
				b.Write(frame(tPing, fSYN, 0, uint32(i)))
			} else {
				b.Write(frame(tPing, fACK, 0, uint32(i)))
			}
		default:
			n := rng.IntN(2000)
			if i == 250 {
				n = tunnel.StreamWindow
			}
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			b.Write(frame(tData, 0, 2*uint32(i%9)+1, uint32(n), p...))
		}
		frames++
	}
	b.Write(frame(tGoAway, 0, 0, 0))
	frames++
	return b.Bytes(), frames
}

// Well-formed frames pass unchanged whatever the read boundaries: headers
// and payloads split anywhere, reads of one byte and of megabytes.
func TestGuardPassesValidFrames(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	data, frames := validStream(rng)
	for _, maxChunk := range []int{1, 5, 13, 4096, 1 << 22} {
		c := &chunkConn{data: data, chunk: func() int { return 1 + rng.IntN(maxChunk) }}
		limits := tunnel.DefaultGuardLimits
		limits.PingBurst = 100
		g := tunnel.NewGuard(c, limits, nil)
		got, err := io.ReadAll(g)
		if err != nil {
			t.Fatalf("chunks ≤ %d: %v", maxChunk, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("chunks ≤ %d: bytes changed", maxChunk)
		}
		st := g.Stats()
		if st.Frames != uint64(frames) || st.Pings != 15 || st.Streams != 1 || st.Malformed+st.PingFloods+st.StreamFloods != 0 {
			t.Fatalf("chunks ≤ %d: stats %+v, want %d frames, 15 pings, 1 stream", maxChunk, st, frames)
		}
		if c.closed.Load() {
			t.Fatal("guard closed a well-behaved connection")
		}
	}
}

// Each kind of violation closes the connection, fails the Read (without
// handing over the offending bytes), and logs one line.
func TestGuardViolations(t *testing.T) {
	good := frame(tData, 0, 1, 3, 'a', 'b', 'c')
	pings := bytes.Repeat(frame(tPing, fSYN, 0, 7), 21)
	syns := func(n int) []byte {
		var b []byte
		for i := range n {
			b = append(b, frame(tWindow, fSYN, uint32(2*i+1), 0)...)
		}
		return b
	}
	tooLong := frame(tData, 0, 1, tunnel.StreamWindow+1)
	for _, tc := range []struct {
		name   string
		data   []byte
		reason string
		stat   func(tunnel.GuardStats) uint64
	}{
		{"bad version", frame(tData, 0, 1, 0), "bad version", func(s tunnel.GuardStats) uint64 { return s.Malformed }},
		{"bad type", frame(4, 0, 1, 0), "bad type", func(s tunnel.GuardStats) uint64 { return s.Malformed }},
		{"type 255", frame(255, 0, 1, 0), "bad type", func(s tunnel.GuardStats) uint64 { return s.Malformed }},
		{"too long", tooLong, "longer than the window", func(s tunnel.GuardStats) uint64 { return s.Malformed }},
		{"even stream ID", frame(tWindow, fSYN, 2, 0), "parity", func(s tunnel.GuardStats) uint64 { return s.Malformed }},
		{"stream 0", frame(tData, fSYN, 0, 0), "parity", func(s tunnel.GuardStats) uint64 { return s.Malformed }},
		{"ping flood", pings, "ping flood", func(s tunnel.GuardStats) uint64 { return s.PingFloods }},
		{"stream flood", syns(17), "too many streams", func(s tunnel.GuardStats) uint64 { return s.StreamFloods }},
	} {
		for _, chunk := range []int{1, 7, 1 << 20} {
			data := append(append([]byte(nil), good...), tc.data...)
			if tc.name == "bad version" {
				data[len(good)] = 1
			}
			data = append(data, good...) // never returned
			lc := &logCounter{match: "frame limits"}
			before := tunnel.GuardTotals()
			c := &chunkConn{data: data, chunk: func() int { return chunk }}
			g := tunnel.NewGuard(c, tunnel.DefaultGuardLimits, slog.New(lc))
			var got []byte
			buf := make([]byte, 4096)
			var err error
			for range len(data) + 1 {
				var n int
				n, err = g.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					break
				}
			}
			if !errors.Is(err, tunnel.ErrGuard) || !strings.Contains(err.Error(), tc.reason) || !strings.Contains(err.Error(), "closed") {
				t.Fatalf("%s, chunks of %d: Read error %v", tc.name, chunk, err)
			}
			if _, err2 := g.Read(buf); err2 != err {
				t.Fatalf("%s: second Read: %v, want %v", tc.name, err2, err)
			}
			if len(got) >= len(data)-len(good) {
				t.Fatalf("%s, chunks of %d: %d of %d bytes returned, including the violation", tc.name, chunk, len(got), len(data))
			}
			if !c.closed.Load() {
				t.Fatalf("%s: connection not closed", tc.name)
			}
			if n := tc.stat(g.Stats()); n != 1 {
				t.Fatalf("%s: stats %+v", tc.name, g.Stats())
			}
			if n := tc.stat(tunnel.GuardTotals()) - tc.stat(before); n != 1 {
				t.Fatalf("%s: totals grew by %d", tc.name, n)
			}
			if lc.all.Load() != 1 || lc.matched.Load() != 1 {
				t.Fatalf("%s: log lines %q", tc.name, lc.messages())
			}
		}
	}
}

// Pings and streams within the rate pass indefinitely; the burst refills.
func TestGuardRateRefills(t *testing.T) {
	limits := tunnel.GuardLimits{PingsPerSecond: 1000, PingBurst: 1, StreamsPerSecond: 1000, StreamBurst: 1}
	c1, c2 := tcpPair(t)
	defer c1.Close()
	g := tunnel.NewGuard(c2, limits, nil)
	defer g.Close()
	buf := make([]byte, 64)
	for i := range 60 {
		f := frame(tPing, fSYN, 0, uint32(i))
		if i%2 == 1 {
			f = frame(tWindow, fSYN, uint32(2*i+1), 0)
		}
		if _, err := c1.Write(f); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(g, buf[:12]); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		time.Sleep(5 * time.Millisecond) // 5 intervals
	}
	// Two at once exceed a burst of 1.
	c1.Write(append(frame(tPing, fSYN, 0, 1), frame(tPing, fSYN, 0, 2)...))
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(g, buf[:24]); !errors.Is(err, tunnel.ErrGuard) {
		t.Fatalf("burst of 2: %v", err)
	}
}

// The guard allocates nothing per Read.
func TestGuardAllocs(t *testing.T) {
	data := bytes.Repeat(append(frame(tData, 0, 1, 100, make([]byte, 100)...), frame(tWindow, 0, 1, 5)...), 1000)
	c := &chunkConn{chunk: func() int { return 4096 }}
	g := tunnel.NewGuard(c, tunnel.DefaultGuardLimits, nil)
	buf := make([]byte, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		c.data = data
		for {
			if _, err := g.Read(buf); err != nil {
				break
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per run", allocs)
	}
}

// rawPeer speaks yamux frames by hand to a tunnel.Server session: it drains
// what the session sends and reports ping replies and the end of the
// connection.
type rawPeer struct {
	conn   net.Conn
	acks   chan uint32
	closed chan struct{}
}

func newRawPeer(t *testing.T, conn net.Conn) *rawPeer {
	p := &rawPeer{conn: conn, acks: make(chan uint32, 1024), closed: make(chan struct{})}
	go func() {
		defer close(p.closed)
		hdr := make([]byte, 12)
		for {
			if _, err := io.ReadFull(conn, hdr); err != nil {
				return
			}
			n := binary.BigEndian.Uint32(hdr[8:])
			switch {
			case hdr[1] == tData:
				if _, err := io.CopyN(io.Discard, conn, int64(n)); err != nil {
					return
				}
			case hdr[1] == tPing && binary.BigEndian.Uint16(hdr[2:])&fACK != 0:
				select {
				case p.acks <- n:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-p.closed
	})
	return p
}

// ping sends a ping and waits for its reply: every frame sent before it
// has then been handled.
func (p *rawPeer) ping(t *testing.T, id uint32) {
	t.Helper()
	if _, err := p.conn.Write(frame(tPing, fSYN, 0, id)); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-p.acks:
			if got == id {
				return
			}
		case <-p.closed:
			t.Fatal("session closed")
		case <-timeout:
			t.Fatal("no ping reply in 10s")
		}
	}
}

// A ping flood into a real session ends that session within the burst:
// yamux never sees more than PingBurst+1 pings, so it never runs more
// reply goroutines than that.
func TestGuardServerPingFlood(t *testing.T) {
	c1, c2 := tcpPair(t)
	lc := &logCounter{match: "ping flood"}
	sess, err := tunnel.Server(c2, slog.New(lc))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	p := newRawPeer(t, c1)
	p.ping(t, 1)
	before := tunnel.GuardTotals()
	base := runtime.NumGoroutine()
	peak := base
	flood := bytes.Repeat(frame(tPing, fSYN, 0, 9), 100_000)
	go c1.Write(flood) // fails once the session closes
	for deadline := time.Now().Add(10 * time.Second); !sess.IsClosed(); {
		if time.Now().After(deadline) {
			t.Fatal("session still open 10s into a ping flood")
		}
		peak = max(peak, runtime.NumGoroutine())
		time.Sleep(100 * time.Microsecond)
	}
	<-p.closed
	after := tunnel.GuardTotals()
	t.Logf("goroutines: %d before, %d at close; pings counted %d", base, peak, after.Pings-before.Pings)
	if got := after.PingFloods - before.PingFloods; got != 1 {
		t.Fatalf("ping floods counted: %d", got)
	}
	// The first ping took a token from the burst; one more, at most, may
	// have been refilled since.
	if got, burst := after.Pings-before.Pings, uint64(tunnel.DefaultGuardLimits.PingBurst); got < burst || got > burst+2 {
		t.Fatalf("pings counted: %d, want about the burst, %d", got, burst)
	}
	if lc.matched.Load() != 1 {
		t.Fatalf("log: %q", lc.messages())
	}
}

// Frames for unknown streams make yamux log a line each; the session
// passes on at most YamuxLogLinesPerSecond of them per second and sums up
// the rest in one line when it closes.
func TestGuardYamuxLogLimit(t *testing.T) {
	c1, c2 := tcpPair(t)
	lc := &logCounter{match: "yamux log lines suppressed"}
	sess, err := tunnel.Server(c2, slog.New(lc))
	if err != nil {
		t.Fatal(err)
	}
	p := newRawPeer(t, c1)
	before := tunnel.GuardTotals()
	start := time.Now()
	const n = 5000
	var flood []byte
	for i := range n {
		if i%2 == 0 {
			flood = append(flood, frame(tData, 0, uint32(1001+2*i), 4, 1, 2, 3, 4)...)
		} else {
			flood = append(flood, frame(tWindow, 0, uint32(1001+2*i), 100)...)
		}
	}
	if _, err := c1.Write(flood); err != nil {
		t.Fatal(err)
	}
	p.ping(t, 77) // all frames handled
	elapsed := time.Since(start)
	sess.Close()
	after := tunnel.GuardTotals()
	lines := lc.all.Load()
	t.Logf("%d frames for unknown streams in %v: %d log lines (%q…)", n, elapsed, lines, lc.messages()[:min(3, len(lc.messages()))])
	// Per one-second window: the lines passed and one summary.
	maxLines := int64(tunnel.YamuxLogLinesPerSecond+1)*(int64(elapsed/time.Second)+2) + 5
	if lines > maxLines {
		t.Fatalf("%d log lines, want ≤ %d", lines, maxLines)
	}
	if lc.matched.Load() < 1 {
		t.Fatalf("no summary line: %q", lc.messages())
	}
	if got := after.YamuxLogLines - before.YamuxLogLines; got < n {
		t.Fatalf("yamux log lines counted: %d, want ≥ %d", got, n)
	}
	if got := after.YamuxLogSuppressed - before.YamuxLogSuppressed; got < n-uint64(maxLines) {
		t.Fatalf("suppressed lines counted: %d", got)
	}
}

// A normal session is unaffected: a large transfer both ways and keepalive
// pings pass the guard.
func TestGuardSessionTraffic(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	a, r := rawStreamPair(t, relay, agent)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	go func() {
		a.Write(payload)
		a.Close()
	}()
	go func() { // echo on the agent side
		io.Copy(r, r)
		r.Close()
	}()
	got, err := io.ReadAll(a)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo: %d bytes, want %d", len(got), len(payload))
	}
	for range 5 {
		if _, err := agent.Ping(); err != nil {
			t.Fatal(err)
		}
	}
	if relay.IsClosed() {
		t.Fatal("guard closed a normal session")
	}
}

// BenchmarkGuardRead compares reading a stream of data frames through the
// guard with reading it plainly, in 4 KiB reads as yamux's bufio.Reader
// does.
func BenchmarkGuardRead(b *testing.B) {
	for _, size := range []int{64, 1024, 16384} {
		data := bytes.Repeat(frame(tData, 0, 1, uint32(size), make([]byte, size)...), max(1, (1<<20)/(size+12)))
		for _, guarded := range []bool{false, true} {
			name := "plain"
			if guarded {
				name = "guard"
			}
			b.Run(name+"/payload="+strconv.Itoa(size), func(b *testing.B) {
				c := &chunkConn{data: data, chunk: func() int { return 1 << 30 }}
				var r io.Reader = c
				if guarded {
					r = tunnel.NewGuard(c, tunnel.DefaultGuardLimits, nil)
				}
				buf := make([]byte, 4096)
				b.SetBytes(4096)
				b.ReportAllocs()
				for b.Loop() {
					if len(c.data) == 0 {
						c.data = data
					}
					r.Read(buf)
				}
			})
		}
	}
}

// BenchmarkGuardSession measures a stream's throughput from the agent to
// the relay over loopback TCP, with the relay's session guarded (as Server
// does) and not.
func BenchmarkGuardSession(b *testing.B) {
	for _, guarded := range []bool{false, true} {
		name := "plain"
		if guarded {
			name = "guard"
		}
		b.Run(name, func(b *testing.B) {
			c1, c2 := tcpPair(b)
			agent, err := tunnel.Client(c1, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer agent.Close()
			var relay *yamux.Session
			if guarded {
				relay, err = tunnel.Server(c2, nil)
			} else {
				relay, err = yamux.Server(c2, tunnel.YamuxConfig(nil))
			}
			if err != nil {
				b.Fatal(err)
			}
			defer relay.Close()
			a, r := rawStreamPair(b, agent, relay)
			done := make(chan struct{})
			go func() {
				defer close(done)
				io.Copy(io.Discard, r)
			}()
			buf := make([]byte, 32<<10)
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				if _, err := a.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			a.Close()
			<-done
		})
	}
}
