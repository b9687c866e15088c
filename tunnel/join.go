package tunnel

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Buffer sizes of Join. An idle direction waits for data holding no buffer
// (or, where the source cannot be waited on, in a read of smallBuf bytes);
// a pooled midBuf is taken once a read fills the small one, a pooled bigBuf
// in its place once a read fills that, and whichever is held is given back
// once the source has had nothing to read for bigLinger. An idle WebSocket
// therefore pins no buffer instead of the 2×32 KiB of io.Copy; one that
// carries messages of a few KiB holds 32 KiB while it does, and only a
// stream of data takes the big one. A busy source that returns short reads
// (TLS gives at most a 16 KiB record per read) keeps its buffer between
// them. bigBuf is also the largest yamux frame Join writes: 128 KiB frames
// cost the relay 20% and the agent 10% less CPU per GB than 32 KiB ones
// (tunnel bench).
const (
	smallBuf  = 512
	midBuf    = 32 << 10
	bigBuf    = 128 << 10
	bigLinger = 10 * time.Millisecond
	// parkAfter is how long a direction waits for more on its own
	// goroutine, holding only the small buffer, once it has given the
	// bigger one back; then it parks on a fresh goroutine (see joiner.run). A
	// keep-alive connection whose requests come closer together than this
	// keeps its goroutine and its grown stack between them, instead of
	// starting and growing a new one for each.
	parkAfter = 30 * time.Millisecond
	// halfClosedPoll bounds each wait of a half-closed join's remaining
	// direction: with the other direction ended, nothing else would see
	// the owner close this direction's destination (see pipe).
	halfClosedPoll = time.Second
)

var (
	midPool   = sync.Pool{New: func() any { b := make([]byte, midBuf); return &b }}
	bigPool   = sync.Pool{New: func() any { b := make([]byte, bigBuf); return &b }}
	smallPool = sync.Pool{New: func() any { return new([smallBuf]byte) }}
)

// putBuf gives a buffer Join took back to the pool it came from.
func putBuf(b *[]byte) {
	if len(*b) == bigBuf {
		bigPool.Put(b)
	} else {
		midPool.Put(b)
	}
}

// Counts are the bytes Join moved, readable while it runs.
type Counts struct {
	AToB atomic.Int64 // bytes read from a and written to b
	BToA atomic.Int64 // bytes read from b and written to a
}

// Join copies bytes both ways between a and b until both directions are done,
// then closes both. When one side reaches EOF, Join half-closes the other
// (CloseWrite, where the connection has it) and keeps copying the other
// direction, so a client that shuts its write side still gets its reply. An
// error in either direction aborts both, and so does the owner closing a or
// b. counts, if not nil, is updated as bytes move. A clean end in both
// directions, or an abort by the owner, returns nil.
//
// A write that makes no progress for DefaultWriteIdleTimeout (a peer that
// stopped reading) aborts the join with os.ErrDeadlineExceeded; JoinWith
// sets another bound. (Join renews the deadline once a sixteenth of it has
// passed, so a write may fail up to that much sooner.)
//
// Join owns the read deadlines of a and b while it runs: it uses them to
// notice that a source has gone quiet and give back its big buffer.
func Join(a, b net.Conn, counts *Counts) error {
	return JoinWith(a, b, JoinOptions{Counts: counts})
}

// DefaultWriteIdleTimeout is how long Join lets one write wait for a peer
// that does not read before it gives up on both connections.
const DefaultWriteIdleTimeout = 60 * time.Second

// JoinOptions tune JoinWith. The zero value means Join's defaults.
type JoinOptions struct {
	// Counts, if not nil, is updated as bytes move.
	Counts *Counts
	// WriteIdleTimeout bounds each write; a peer that reads nothing for
	// this long ends the join. Zero means DefaultWriteIdleTimeout;
	// negative means no bound.
	WriteIdleTimeout time.Duration
	// Tap, if not nil, sees every chunk just before it is written, in
	// order within each direction, from the goroutine copying that
	// direction. Seeing it before the write keeps cause before effect
	// across directions: a reply can only be tapped after the chunk that
	// caused it. Tap observes: it must not modify p, which is reused after
	// it returns (copy what you keep), and must not block, since the bytes
	// wait for it. Nil costs nothing.
	Tap func(dir Direction, p []byte)
}

// Direction is one of Join's two directions.
type Direction uint8

// Join's directions.
const (
	AToB Direction = iota // read from a, written to b
	BToA                  // read from b, written to a
)

func (d Direction) String() string {
	if d == AToB {
		return "a→b"
	}
	return "b→a"
}

// JoinWith is Join with options.
func JoinWith(a, b net.Conn, opts JoinOptions) error {
	errc := make(chan error, 1)
	JoinAsync(a, b, opts, func(err error) { errc <- err })
	return <-errc
}

// JoinAsync is JoinWith without the wait: it returns at once, and done is
// called with JoinWith's result, on one of the join's goroutines, once both
// directions have ended and both connections are closed. Nothing else
// waits meanwhile, so an idle WebSocket joined this way costs no goroutine
// for a direction whose source can park (a Stream; a TCP connection on
// Linux; see Park) and one waiting on a small stack for any other (see
// joiner.idleWait).
func JoinAsync(a, b net.Conn, opts JoinOptions, done func(error)) {
	j := &joiner{a: a, b: b, counts: opts.Counts, idle: opts.WriteIdleTimeout, tap: opts.Tap, done: done}
	if j.counts == nil {
		j.counts = new(Counts)
	}
	if j.idle == 0 {
		j.idle = DefaultWriteIdleTimeout
	}
	j.left.Store(2)
	go j.run(AToB)
	go j.run(BToA)
}

// joiner is one join: its two directions and how it ends.
type joiner struct {
	a, b   net.Conn
	counts *Counts
	idle   time.Duration // bound on each write; negative: none
	tap    func(Direction, []byte)
	done   func(error)
	left   atomic.Int32 // directions still copying
	errs   [2]error     // each direction's result, set before left drops
	wrote  [2]bool      // the direction's error is its write's (each its own)
	abort  sync.Once    // aborts both connections (see fail)
}

// fail aborts both connections, once: it unblocks the other direction,
// whichever failed, and lets a stream's peer see an error rather than a
// clean end.
func (j *joiner) fail() {
	j.abort.Do(func() {
		abortConn(j.a)
		abortConn(j.b)
	})
}

// peerReset reports whether err, a write's, says the destination socket's
// peer reset the connection: what that peer sent before may still wait to
// be read, as a local server's 413 does when it answers an upload early
// and closes without reading the rest, and the direction reading that
// socket should get it before the join ends. A stream's write failing so
// (its session's connection died) is not one: nothing waits to be read on
// a dead session.
func peerReset(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Net == "tunnel" {
		return false
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// errIdle is pipe's result when its source has had nothing to read for
// bigLinger and then parkAfter: the direction goes on in a fresh goroutine.
var errIdle = errors.New("tunnel: join direction idle")

// run copies direction dir on the calling goroutine until it ends, or
// until its source goes quiet: then it parks the direction, or starts a
// fresh goroutine to wait for more, and returns (idleWait). A goroutine's
// stack grows while data moves (the write path through yamux or TLS is
// deep) and the runtime shrinks it only when a quarter of it is in use, so
// a goroutine that has copied anything would keep 4-8 KiB through an idle
// WebSocket's whole life; a fresh one waits on the smallest stack.
func (j *joiner) run(dir Direction) { j.runFrom(dir, false) }

// runFrom is run; waited says that the direction comes from an idle wait
// in resume (see pipe).
func (j *joiner) runFrom(dir Direction, waited bool) {
	err := j.pipe(dir, waited)
	if err == errIdle {
		j.idleWait(dir)
		return
	}
	if err != nil && !(j.wrote[dir] && peerReset(err) && j.left.Load() == 2) {
		j.fail()
	}
	// A write refused by a reset peer ends only this direction, as a
	// clean end would: the other one reads what that peer had sent,
	// then its reset, and fails the join then, or at its end below.
	j.errs[dir] = err
	if j.left.Add(-1) != 0 {
		// The other direction, if parked, waits on its goroutine from
		// now on: with this one ended, its source may end in ways that
		// no frame announces (yamux closes a half-closed stream after
		// StreamCloseTimeout on its own), and its destination may be
		// closed by the owner, which only it can notice now. A past
		// read deadline ends the wait it may be in; from then on it
		// waits in bounded steps (see pipe).
		other := j.src(1 - dir)
		Unpark(other)
		other.SetReadDeadline(time.Now())
		return
	}
	// The direction that failed first has the real error; the other one
	// saw its connection closed by the abort.
	var failed error
	for _, err := range j.errs {
		if err != nil && err != errAborted {
			failed = err
			break
		}
	}
	if failed != nil {
		j.fail() // once: a direction that failed may not have yet
	}
	j.a.Close()
	j.b.Close()
	j.done(failed)
}

// src is the connection direction dir reads.
func (j *joiner) src(dir Direction) net.Conn {
	if dir == BToA {
		return j.b
	}
	return j.a
}

// idleWait waits for an idle direction's source to have something to
// read, then copies on. A source that can park (a Stream, a TCP
// connection on Linux) waits with no goroutine at all, unless the other
// direction has ended; any other waits on a fresh goroutine (see run).
func (j *joiner) idleWait(dir Direction) {
	src := j.src(dir)
	if j.left.Load() == 2 && Park(src, func() { j.run(dir) }) {
		if j.left.Load() != 2 {
			// The other direction ended as this one parked, and may
			// have found nothing parked to start.
			Unpark(src)
		}
		return
	}
	go j.resume(dir)
}

// resume waits for an idle direction's source to have something to read,
// then copies on. The wait is a shallow call chain, small enough for the
// smallest goroutine stack.
func (j *joiner) resume(dir Direction) {
	// Half-closed, pipe waits in bounded steps instead. (While both
	// directions run, the one that ends first sets a past read deadline
	// on this source after it counts itself out, which ends this wait.)
	if j.left.Load() == 2 {
		WaitRead(j.src(dir))
	}
	j.runFrom(dir, true)
}

// aborter is a connection that can end with an error instead of a clean
// close (Stream.Abort, and the relay's wrappers of a stream).
type aborter interface{ Abort() }

// abortConn ends c after an error so that its peer sees an error, not the
// clean end of the data: a stream-reset for a stream, a TCP reset for a
// TCP connection.
func abortConn(c net.Conn) {
	if a, ok := c.(aborter); ok {
		a.Abort()
		return
	}
	ResetConn(c)
	c.Close() // after a reset, only marks a tls.Conn closed
}

// ResetConn closes c with a TCP reset if it is a TCP connection, or TLS
// over one (without its close_notify), and reports whether it was: a FIN
// or a close_notify would tell the peer that the data had all come.
func ResetConn(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	tcp, ok := c.(*net.TCPConn)
	if ok {
		tcp.SetLinger(0)
		tcp.Close()
	}
	return ok
}

// errAborted is pipe's result when a connection was closed under it, by the
// other direction's abort or by Join's owner.
var errAborted = errors.New("tunnel: join aborted")

// pipe copies direction dir until EOF or an error, then half-closes its
// destination, or until the source goes idle (errIdle). Each write must
// finish within j.idle (unless it is negative); j.tap, if not nil, sees
// what is written.
//
// Quiet is measured from the end of the write of the last data read, or
// from the start for a source that has sent nothing yet. While a bigger
// buffer is held, bigLinger of quiet gives it back; bigLinger+parkAfter
// means idle. The source's read deadline is what wakes the direction to
// look: set as pipe starts, and moved only when it expires (to the last
// write's end plus the stage's wait), not on every read, so a WebSocket
// whose messages come every few milliseconds, each a little past
// bigLinger, costs no deadline call per message. A source without
// deadlines is never declared idle: it gives its big buffer back after
// every read that drained it instead.
//
// waited says that pipe follows resume's WaitRead. If its source then has
// nothing to read for the whole idle wait, WaitRead could not wait for it
// (a TCP or TLS connection outside Linux, a wrapper that cannot park): the
// direction waits in its small read, with no deadline until data comes,
// instead of waking every bigLinger+parkAfter.
func (j *joiner) pipe(dir Direction, waited bool) error {
	src, dst, n := j.a, j.b, &j.counts.AToB
	if dir == BToA {
		src, dst, n = j.b, j.a, &j.counts.BToA
	}
	// Every buffer is pooled: a direction that has gone idle waits in
	// WaitRead without any.
	sb := smallPool.Get().(*[smallBuf]byte)
	small := sb[:]
	var big *[]byte     // the mid or the big buffer, once a read filled the one before
	var armed time.Time // src's read deadline, as last set here; zero: none is
	var wdl time.Time   // dst's write deadline, as last set here
	deadlines := true   // src takes read deadlines
	last := time.Now()  // when a write of what a read returned ended (or pipe began)
	kicked := false     // the other direction's wake-up as it ended was seen (see run)
	got := false        // a read has returned data
	arm := func(t time.Time) {
		if src.SetReadDeadline(t) == nil {
			armed = t
		} else {
			deadlines = false
		}
	}
	release := func() {
		if big != nil {
			putBuf(big)
			big = nil
		}
		// Let the source drop its own receive buffer too (a yamux
		// stream keeps one the size of the largest frame it held).
		if s, ok := src.(shrinker); ok {
			s.Shrink()
		}
	}
	defer func() {
		smallPool.Put(sb)
		if big != nil {
			putBuf(big)
		}
	}()
	if j.left.Load() == 1 {
		arm(last.Add(halfClosedPoll))
	} else if !handshaking(src) {
		// A source that sends nothing at all (a WebSocket whose
		// browser only listens) goes idle like one that went quiet.
		arm(last.Add(bigLinger + parkAfter))
	}
	for {
		buf := small
		if big != nil {
			buf = *big
		}
		nr, rerr := src.Read(buf)
		if nr > 0 {
			now := time.Now()
			// The bound on the write is refreshed once a sixteenth of
			// it has passed, not for every chunk: on a stream a new
			// deadline allocates and wakes yamux's writer.
			if j.idle > 0 && wdl.Sub(now) < j.idle-j.idle/16 {
				wdl = now.Add(j.idle)
				dst.SetWriteDeadline(wdl)
			}
			if j.tap != nil {
				j.tap(dir, buf[:nr])
			}
			nw, werr := dst.Write(buf[:nr])
			n.Add(int64(nw))
			if werr != nil {
				if errors.Is(werr, net.ErrClosed) {
					return errAborted
				}
				j.wrote[dir] = true
				return werr
			}
			// Quiet is counted from here: a write that waited on a
			// slow peer is not the source's silence.
			last = time.Now()
			got = true
			if deadlines && armed.IsZero() {
				// No deadline yet (a TLS handshake, a wait in the
				// read): this direction must still go idle.
				arm(last.Add(bigLinger + parkAfter))
			}
			switch {
			case nr < len(buf) || len(buf) == bigBuf:
			case big == nil:
				// Data is flowing faster than one small read: a
				// bigger buffer until the source goes quiet, whose
				// first look comes bigLinger from now.
				big = midPool.Get().(*[]byte)
				if deadlines && armed.After(now.Add(bigLinger)) {
					arm(now.Add(bigLinger))
				}
			default:
				// Faster than 32 KiB a read: a stream of data.
				midPool.Put(big)
				big = bigPool.Get().(*[]byte)
			}
			if !deadlines && nr < len(buf) {
				release()
			}
		}
		if rerr != nil && errors.Is(rerr, os.ErrDeadlineExceeded) {
			now := time.Now()
			if !j.ownDeadline(now, armed, &kicked) {
				return rerr
			}
			// Our deadline. Half-closed, the other direction has
			// ended, and with it the abort that a close of our
			// destination (its source) by the owner would have caused:
			// so this one never parks, but waits in steps of
			// halfClosedPoll and looks whether the destination is
			// still open.
			half := j.left.Load() == 1
			quiet := now.Sub(last)
			switch {
			case half:
				if dst.SetWriteDeadline(wdl) != nil {
					return errAborted
				}
				if quiet >= bigLinger {
					release()
				}
				arm(now.Add(halfClosedPoll))
			case big != nil && quiet < bigLinger:
				arm(last.Add(bigLinger))
			case quiet < bigLinger+parkAfter:
				// Nothing came for bigLinger: the bigger buffer goes
				// back (if one is held), the small one waits on.
				release()
				arm(last.Add(bigLinger + parkAfter))
			case waited && !got:
				release()
				arm(time.Time{})
			default:
				release()
				src.SetReadDeadline(time.Time{})
				return errIdle
			}
			if !deadlines {
				if half {
					return errAborted
				}
				return errIdle
			}
			continue
		}
		if rerr != nil {
			if rerr == io.EOF {
				return closeWrite(dst)
			}
			if errors.Is(rerr, net.ErrClosed) {
				// Closed by the other direction's failure or by our owner.
				return errAborted
			}
			return rerr
		}
	}
}

// ownDeadline reports whether a read that failed on its deadline at now
// failed on one Join set: armed (not zero) has passed, or, half-closed, it is the
// past deadline the other direction set once as it ended (see run), which
// *kicked records. Join owns its connections' read deadlines while it
// runs; a deadline error that is none of these (a tls.Conn whose handshake
// timed out returns its error for ever) ends the join as the error it is,
// where taking it for a wake-up would spin.
func (j *joiner) ownDeadline(now, armed time.Time, kicked *bool) bool {
	// The runtime may fire a deadline a hair before the time given (it
	// converts it with a second reading of the clock): a millisecond's
	// allowance, which lets a repeating error through once at most.
	if !armed.IsZero() && !now.Before(armed.Add(-time.Millisecond)) {
		return true
	}
	if j.left.Load() == 1 && !*kicked {
		*kicked = true
		return true
	}
	return false
}

// handshaking reports whether c is a TLS connection whose handshake has
// not run: its first Read runs it, and a deadline that passes meanwhile
// fails the connection for good, so Join sets none before data comes.
func handshaking(c net.Conn) bool {
	tc, ok := c.(*tls.Conn)
	return ok && !tc.ConnectionState().HandshakeComplete
}

// shrinker is a connection that can release its idle receive buffer
// (Stream, over yamux's Stream.Shrink).
type shrinker interface{ Shrink() }

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	}
	// No half-close: ending the whole connection is the only way to signal EOF.
	return c.Close()
}

// readWaiter is a connection that can wait until a Read would not block
// (data, end of stream or an error) without taking any of it. Wrappers of
// connections implement it by calling WaitRead on what they wrap.
type readWaiter interface{ WaitRead() }

// WaitRead waits until c has something to read, where c can tell without a
// buffer: a Stream, a TCP connection on Linux (ppoll), or a wrapper of one
// that implements WaitRead() by calling this. For any other connection it
// returns at once, and the Read that follows does the waiting. It reads
// nothing. Join waits this way while a direction is idle, so that the
// wait holds no buffer and fits the smallest goroutine stack.
func WaitRead(c net.Conn) {
	switch c := c.(type) {
	case readWaiter:
		c.WaitRead()
	case *net.TCPConn:
		if waitTCP != nil {
			waitTCP(c)
		}
	}
}

// waitTCP waits for a TCP connection without reading, on the systems where
// that is done (waitread_linux.go); nil elsewhere.
var waitTCP func(*net.TCPConn)
