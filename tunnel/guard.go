package tunnel

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The frame guard bounds what an authenticated but malicious peer can make
// the relay's yamux session do (DESIGN.md, "yamux: what to know before
// trusting its defaults"). It sits between the connection and yamux, parses
// the yamux frames the peer sends without copying them, and closes the
// connection, ending only that session, when the peer
//   - sends pings faster than GuardLimits allows (yamux answers each ping in
//     a goroutine of its own, so a flood grows goroutines),
//   - opens streams faster than GuardLimits allows (the relay refuses them,
//     but each one, with up to a 256 KiB initial window of data, lives until
//     yamux's StreamCloseTimeout),
//   - or sends a frame that is malformed: a bad version or type, a data frame
//     longer than any window we grant, or a stream opened with an ID of the
//     wrong parity.
// Frames for unknown streams are not the guard's business: yamux discards
// them and logs a line each, which the rate-limited yamux logger bounds.

// yamux frame header (github.com/hashicorp/yamux const.go): version (1 byte),
// type (1), flags (2), stream ID (4), length (4), big endian. Data frames are
// followed by length bytes of payload; for the other types length is a
// window delta, a ping ID or a go-away code.
const (
	frameHeaderLen = 12

	frameData         = 0
	frameWindowUpdate = 1
	framePing         = 2
	frameGoAway       = 3

	flagSYN = 1
)

// GuardLimits are the rates and sizes the frame guard enforces.
type GuardLimits struct {
	// PingsPerSecond and PingBurst bound the ping requests the peer sends
	// (a token bucket). keepalive sends one per KeepAliveInterval.
	PingsPerSecond float64
	PingBurst      int
	// StreamsPerSecond and StreamBurst bound the streams the peer opens
	// (SYN frames). The agent opens one per session, its control stream.
	StreamsPerSecond float64
	StreamBurst      int
	// MaxFrameLength is the longest data frame accepted. yamux never sends
	// more than the receiver's window, at most StreamWindow.
	// A rate ≤ 0 or a length of 0 means no limit.
	MaxFrameLength uint32
}

// DefaultGuardLimits is what Server uses. A peer opening streams as fast as
// allowed for StreamCloseTimeout pins at most (16 + 60) × 256 KiB ≈ 19 MiB
// of refused streams' data; a ping flood keeps at most ~PingBurst + 10 s ×
// PingsPerSecond reply goroutines waiting.
var DefaultGuardLimits = GuardLimits{
	PingsPerSecond:   10,
	PingBurst:        20,
	StreamsPerSecond: 1,
	StreamBurst:      16,
	MaxFrameLength:   StreamWindow,
}

// ErrGuard is wrapped by the error a guarded connection's Read returns once
// the peer broke a limit. Its text contains "closed", which keeps yamux from
// logging it again.
var ErrGuard = errors.New("connection closed by the frame guard")

// The reasons, allocated once so that a violation does not allocate.
var (
	errPingFlood    = &guardError{"ping flood", &totals.pingFloods}
	errStreamFlood  = &guardError{"too many streams opened", &totals.streamFloods}
	errBadVersion   = &guardError{"malformed frame: bad version", &totals.malformed}
	errBadType      = &guardError{"malformed frame: bad type", &totals.malformed}
	errFrameTooLong = &guardError{"malformed frame: data frame longer than the window", &totals.malformed}
	errBadStreamID  = &guardError{"malformed frame: stream opened with the wrong ID parity", &totals.malformed}
)

type guardError struct {
	reason  string
	counter *atomic.Uint64
}

func (e *guardError) Error() string { return ErrGuard.Error() + ": " + e.reason }
func (e *guardError) Unwrap() error { return ErrGuard }

// GuardStats counts what guards did. Per guard (Guard.Stats) the flood and
// malformed counts are 0 or 1; process-wide (GuardTotals) they count
// sessions closed for that reason.
type GuardStats struct {
	Frames  uint64 // frames read from the peer (process-wide: of closed guards only)
	Pings   uint64 // ping requests from the peer
	Streams uint64 // streams the peer opened

	PingFloods   uint64 // closed for exceeding the ping rate
	StreamFloods uint64 // closed for exceeding the stream rate
	Malformed    uint64 // closed for a malformed frame

	YamuxLogLines      uint64 // log lines from yamux
	YamuxLogSuppressed uint64 // of those, dropped by the rate limit
}

// guardTotals are the process-wide counters behind GuardTotals. Frames are
// added when a guard closes, so that the hot path touches no shared memory.
type guardTotals struct {
	frames, pings, streams              atomic.Uint64
	pingFloods, streamFloods, malformed atomic.Uint64
	logLines, logSuppressed             atomic.Uint64
}

var totals guardTotals

// GuardTotals returns the counters of all guards and yamux loggers in the
// process, for metrics.
func GuardTotals() GuardStats {
	return GuardStats{
		Frames:             totals.frames.Load(),
		Pings:              totals.pings.Load(),
		Streams:            totals.streams.Load(),
		PingFloods:         totals.pingFloods.Load(),
		StreamFloods:       totals.streamFloods.Load(),
		Malformed:          totals.malformed.Load(),
		YamuxLogLines:      totals.logLines.Load(),
		YamuxLogSuppressed: totals.logSuppressed.Load(),
	}
}

// Guard is a net.Conn that checks the yamux frames read from it; see
// GuardLimits. It guards the accepting side of a session (the relay): it
// expects the peer to open streams with odd IDs. Read must not be called
// concurrently (yamux reads from one goroutine).
type Guard struct {
	net.Conn
	log  *slog.Logger
	logs *logLimiter // flushed on Close; may be nil

	// Read's state, touched only by the reading goroutine.
	split   frameSplitter
	frames  uint64
	start   time.Time // the buckets' clock origin (monotonic)
	pings   bucket
	streams bucket
	maxLen  uint32
	err     error // once set, every Read returns it

	// Published for Stats.
	nFrames, nPings, nStreams atomic.Uint64
	violation                 atomic.Pointer[guardError]
	closeOnce                 sync.Once
}

// NewGuard wraps conn. Violations are logged (once, at warn level) to
// logger, which may be nil.
func NewGuard(conn net.Conn, limits GuardLimits, logger *slog.Logger) *Guard {
	g := &Guard{Conn: conn, log: logger, start: time.Now(), maxLen: limits.MaxFrameLength}
	if g.maxLen == 0 {
		g.maxLen = ^uint32(0)
	}
	g.pings.init(limits.PingsPerSecond, limits.PingBurst)
	g.streams.init(limits.StreamsPerSecond, limits.StreamBurst)
	return g
}

// Read reads from the connection and checks the frames read. On a
// violation it closes the connection and returns an error wrapping
// ErrGuard, without returning the bytes that broke the limit.
func (g *Guard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.Conn.Read(p)
	if n > 0 {
		before := g.frames
		verr := g.scan(p[:n])
		if g.frames != before {
			g.nFrames.Store(g.frames)
		}
		if verr != nil {
			g.violate(verr)
			return 0, g.err
		}
	}
	return n, err
}

// scan advances the frame parser over b.
func (g *Guard) scan(b []byte) *guardError {
	for {
		var h []byte
		if h, b = g.split.next(b); h == nil {
			return nil
		}
		g.frames++
		// The common case first: a data frame on an open stream.
		if h[0] == 0 && h[1] == frameData && h[3]&flagSYN == 0 {
			if n := binary.BigEndian.Uint32(h[8:12]); n <= g.maxLen {
				g.split.skip = uint64(n)
				continue
			}
		}
		if err := g.frame(h); err != nil {
			return err
		}
	}
}

// frame checks one frame header.
func (g *Guard) frame(h []byte) *guardError {
	if h[0] != 0 {
		return errBadVersion
	}
	flags := binary.BigEndian.Uint16(h[2:4])
	switch h[1] {
	case frameData:
		n := binary.BigEndian.Uint32(h[8:12])
		if n > g.maxLen {
			return errFrameTooLong
		}
		g.split.skip = uint64(n)
		fallthrough
	case frameWindowUpdate:
		if flags&flagSYN != 0 {
			if binary.BigEndian.Uint32(h[4:8])&1 == 0 {
				return errBadStreamID
			}
			g.nStreams.Add(1)
			totals.streams.Add(1)
			if !g.streams.allow(g.now()) {
				return errStreamFlood
			}
		}
	case framePing:
		if flags&flagSYN != 0 {
			g.nPings.Add(1)
			totals.pings.Add(1)
			if !g.pings.allow(g.now()) {
				return errPingFlood
			}
		}
	case frameGoAway:
	default:
		return errBadType
	}
	return nil
}

func (g *Guard) now() int64 { return int64(time.Since(g.start)) }

func (g *Guard) violate(e *guardError) {
	g.err = e
	g.violation.Store(e)
	e.counter.Add(1)
	if g.log != nil {
		g.log.Warn("peer broke the frame limits; session closed", "reason", e.reason, "frames", g.frames, "remote", g.RemoteAddr().String())
	}
	g.Close()
}

// Close closes the connection. The first call also writes the yamux
// logger's summary of suppressed lines, if any, and adds the guard's
// frames to GuardTotals.
func (g *Guard) Close() error {
	g.closeOnce.Do(func() {
		totals.frames.Add(g.nFrames.Load())
		if g.logs != nil {
			g.logs.flush()
		}
	})
	return g.Conn.Close()
}

// Stats returns what the guard has seen so far, including its yamux
// logger's counts when it was started by Server.
func (g *Guard) Stats() GuardStats {
	s := GuardStats{Frames: g.nFrames.Load(), Pings: g.nPings.Load(), Streams: g.nStreams.Load()}
	switch g.violation.Load() {
	case nil:
	case errPingFlood:
		s.PingFloods = 1
	case errStreamFlood:
		s.StreamFloods = 1
	default:
		s.Malformed = 1
	}
	if g.logs != nil {
		s.YamuxLogLines, s.YamuxLogSuppressed = g.logs.counts()
	}
	return s
}

// bucket is a token bucket in GCRA form: tat is the theoretical arrival
// time of the next event, in nanoseconds on the guard's clock.
type bucket struct {
	tat, interval, tolerance int64
	off                      bool // no limit
}

func (b *bucket) init(perSecond float64, burst int) {
	if perSecond <= 0 {
		b.off = true
		return
	}
	b.interval = int64(float64(time.Second) / perSecond)
	b.tolerance = int64(max(burst-1, 0)) * b.interval
}

func (b *bucket) allow(now int64) bool {
	if b.off {
		return true
	}
	tat := max(b.tat, now)
	if tat-now > b.tolerance {
		return false
	}
	b.tat = tat + b.interval
	return true
}
