package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Timings of the yamux session, chosen together: a peer that stops answering
// is noticed within KeepAliveInterval + WriteTimeout + KeepAliveGrace
// (20 s), the 20 s we promise.
const (
	// KeepAliveInterval is how often each side pings the other.
	KeepAliveInterval = 9 * time.Second
	// WriteTimeout bounds one frame write on the shared connection, and the
	// wait for a ping's answer (see keepalive).
	WriteTimeout = 10 * time.Second
	// KeepAliveGrace is how long keepalive listens once more, after a
	// ping's wait in which nothing came, before it gives the peer up.
	KeepAliveGrace = time.Second
	// StreamWindow is the most one stream may have in flight unacknowledged,
	// and so the most a slow reader can make the other side buffer for it.
	// 2 MiB carries ~40 MB/s per stream at 50 ms RTT; yamux's default of
	// 256 KiB would cap a single download at ~5 MB/s.
	StreamWindow = 2 << 20
	// MaxStreams is the most streams the relay may be opening toward one
	// agent at once (sent, not yet answered). It stays below yamux's accept
	// backlog (256) so that OpenStream does not block on unanswered SYNs.
	// Established streams are not limited by it.
	MaxStreams = 200
)

// YamuxConfig returns the session configuration both ends use. yamux's own
// log lines go to logger at debug level, at most YamuxLogLinesPerSecond per
// session (see GuardTotals for the counts).
func YamuxConfig(logger *slog.Logger) *yamux.Config {
	c, _ := yamuxConfig(logger)
	return c
}

// keepAliveInterval, writeTimeout and keepAliveGrace are
// KeepAliveInterval, WriteTimeout and KeepAliveGrace, as variables for
// tests.
var (
	keepAliveInterval = KeepAliveInterval
	writeTimeout      = WriteTimeout
	keepAliveGrace    = KeepAliveGrace
)

// keepAliveTimings are a session's keepalive timings, read as it starts.
type keepAliveTimings struct{ every, timeout, grace time.Duration }

func currentKeepAlive() keepAliveTimings {
	return keepAliveTimings{keepAliveInterval, writeTimeout, keepAliveGrace}
}

// streamCloseTimeout is yamux's StreamCloseTimeout: a stream whose write
// side we closed (CloseWrite) is cut this long after, if the peer has not
// closed its side by then, even while the peer is still sending. It bounds
// what a peer that never finishes can pin (see DefaultGuardLimits); a
// Stream reports such a cut as an error, not as the peer's end (Read).
// A variable for tests.
var streamCloseTimeout = time.Minute

func yamuxConfig(logger *slog.Logger) (*yamux.Config, *logLimiter) {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = 256
	// Client and Server run keepalive instead of yamux's own.
	c.EnableKeepAlive = false
	c.KeepAliveInterval = keepAliveInterval
	c.ConnectionWriteTimeout = writeTimeout
	c.MaxStreamWindowSize = StreamWindow
	// Opening a stream is bounded by our own deadlines (OpenStream below);
	// yamux's StreamOpenTimeout would close the whole session instead.
	c.StreamOpenTimeout = 0
	// A stream we closed whose peer never closes its side is freed after this.
	c.StreamCloseTimeout = streamCloseTimeout
	c.LogOutput = nil
	logs := &logLimiter{l: logger}
	c.Logger = log.New(logs, "", 0)
	return c, logs
}

// YamuxLogLinesPerSecond is the most yamux log lines a session passes on per
// second. A peer can make yamux log a line per frame (frames for unknown
// streams); the rest are counted, and summarised in one line.
const YamuxLogLinesPerSecond = 10

// logLimiter passes yamux's log lines to slog at debug level, at most
// YamuxLogLinesPerSecond in each one-second window. The first line of a
// later window, or the guard's Close, writes a summary of the lines dropped.
type logLimiter struct {
	l *slog.Logger

	mu         sync.Mutex
	window     time.Time // start of the current window
	n          int       // lines passed in it
	suppressed uint64    // dropped since the last summary
	lines      uint64    // all lines
	dropped    uint64    // all dropped lines
}

func (w *logLimiter) Write(p []byte) (int, error) {
	totals.logLines.Add(1)
	now := time.Now()
	w.mu.Lock()
	w.lines++
	var summary uint64
	if now.Sub(w.window) >= time.Second {
		summary, w.suppressed = w.suppressed, 0
		w.window, w.n = now, 0
	}
	pass := w.n < YamuxLogLinesPerSecond
	if pass {
		w.n++
	} else {
		w.suppressed++
		w.dropped++
	}
	w.mu.Unlock()
	if !pass {
		totals.logSuppressed.Add(1)
	}
	w.summarise(summary)
	if pass && w.l != nil && w.l.Enabled(context.Background(), slog.LevelDebug) {
		w.l.Debug(strings.TrimSpace(string(p)), "component", "yamux")
	}
	return len(p), nil
}

// flush writes the summary of lines dropped in the current window.
func (w *logLimiter) flush() {
	w.mu.Lock()
	n := w.suppressed
	w.suppressed = 0
	w.mu.Unlock()
	w.summarise(n)
}

func (w *logLimiter) summarise(n uint64) {
	if n > 0 && w.l != nil {
		w.l.Debug(fmt.Sprintf("%d yamux log lines suppressed", n), "component", "yamux", "suppressed", n)
	}
}

func (w *logLimiter) counts() (lines, dropped uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lines, w.dropped
}

// Client starts the agent's side of a session on an upgraded connection.
// Its streams can park (Stream.Park).
func Client(conn net.Conn, logger *slog.Logger) (*yamux.Session, error) {
	return ClientWithRTT(conn, logger, nil)
}

// ClientWithRTT is Client that also calls onRTT with the round-trip time
// of each keepalive ping answered while the session is open, every
// KeepAliveInterval: the measure an agent shows, without pings of its own.
func ClientWithRTT(conn net.Conn, logger *slog.Logger, onRTT func(time.Duration)) (*yamux.Session, error) {
	w := newStreamWaker(conn)
	sess, err := yamux.Client(newFrameWriter(w, conn), YamuxConfig(logger))
	if err == nil {
		w.attach(sess)
		go keepalive(sess, w, logger, "relay", currentKeepAlive(), onRTT)
	}
	return sess, err
}

// Server starts the relay's side of a session on an upgraded connection.
// The connection is read through a Guard with DefaultGuardLimits, so that a
// misbehaving agent ends its own session and nothing else. Its streams can
// park (Stream.Park).
func Server(conn net.Conn, logger *slog.Logger) (*yamux.Session, error) {
	cfg, logs := yamuxConfig(logger)
	g := NewGuard(conn, DefaultGuardLimits, logger)
	g.logs = logs
	w := newStreamWaker(g)
	sess, err := yamux.Server(newFrameWriter(w, conn), cfg)
	if err == nil {
		w.attach(sess)
		go keepalive(sess, w, logger, "agent", currentKeepAlive(), nil)
	}
	return sess, err
}

// keepalive pings the peer every KeepAliveInterval and closes the session
// once a ping has gone unanswered for WriteTimeout while nothing at all came
// from the peer, and nothing comes in KeepAliveGrace more. yamux's own
// keepalive closes it on the unanswered ping alone, and on a slow link that
// is wrong: pings and their answers queue behind the data in flight (a
// stream's window is 2 MiB, 20 s at 100 KB/s on a laptop's uplink), so a
// session carrying an upload was cut every 19 s with every stream and
// WebSocket on it.
//
// Each ping runs on its own, not one after the other as yamux's do: the
// peer's pings, then, arrive every KeepAliveInterval whatever happens to
// ours, and so inside every wait (WriteTimeout is longer). A side that only
// sends, and so receives neither data nor window updates, still hears its
// live peer. A peer that is gone or frozen sends nothing, and is noticed
// within KeepAliveInterval + WriteTimeout + KeepAliveGrace.
//
// "Nothing came" is judged by what this side has had the chance to read:
// after this process was paused or starved, the ping's timer runs before
// the reading goroutine gets the answer that waits in the kernel. So bytes
// waiting unread count as heard (unread), and the grace gives the reader
// its turn where the kernel cannot be asked.
//
// keepalive ends with the session, as yamux's own loops do, once its pings
// have returned (at the session's end at once). onRTT, if not nil, gets
// the round-trip time of each answered ping.
func keepalive(sess *yamux.Session, w *streamWaker, logger *slog.Logger, peer string, t keepAliveTimings, onRTT func(time.Duration)) {
	tick := time.NewTicker(t.every)
	defer tick.Stop()
	var pings sync.WaitGroup
	defer pings.Wait()
	for {
		select {
		case <-tick.C:
		case <-sess.CloseChan():
			return
		}
		before := w.received.Load()
		pings.Go(func() {
			rtt, err := sess.Ping()
			switch {
			case err == nil:
				if onRTT != nil && !sess.IsClosed() {
					onRTT(rtt)
				}
			case sess.IsClosed() || w.heard(before, t.grace, sess.CloseChan()):
			default:
				if logger != nil {
					logger.Warn("the "+peer+" answered no ping for "+(t.timeout+t.grace).String()+" and sent nothing; closing the connection", "err", err)
				}
				sess.Close()
			}
		})
	}
}

// deadline sets conn's deadline from ctx and returns a function that clears
// it again. It also makes a cancelled ctx interrupt blocked I/O at once.
func deadline(ctx context.Context, conn net.Conn) (clear func()) {
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	// The mutex orders a cancellation racing with clear: once cleared, a
	// late cancellation must not set a past deadline on a trusted conn.
	var mu sync.Mutex
	cleared := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !cleared {
			conn.SetDeadline(time.Unix(1, 0))
		}
	})
	return func() {
		stop()
		mu.Lock()
		cleared = true
		mu.Unlock()
		conn.SetDeadline(time.Time{})
	}
}

// ctxErr prefers the context's error over the I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	cerr := ctx.Err()
	if cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// The connection's deadline is the context's, and its timer may fire
		// a moment before the context's own.
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			cerr = context.DeadlineExceeded
		}
	}
	if cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

var _ io.Closer = (*yamux.Session)(nil)
