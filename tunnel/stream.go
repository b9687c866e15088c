package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/proto"
)

// Stream is one proxied connection inside a session. It is a full net.Conn:
// unlike a bare yamux stream, Close ends both directions locally (pending and
// later Reads and Writes fail with net.ErrClosed), while CloseWrite sends only
// a FIN so the peer reads EOF and can still answer.
type Stream struct {
	s      *yamux.Stream
	remote net.Addr

	closeOnce sync.Once
	mu        sync.Mutex
	closed    bool

	// yamux ignores a deadline that has passed while its receive buffer holds
	// data or its send window is open. Read and Write check these copies
	// first, so that an expired deadline fails them at once, as on TCP.
	readDeadline  atomic.Pointer[time.Time]
	writeDeadline atomic.Pointer[time.Time]

	// A read deadline in the future is kept here, with readTimer set for
	// it, and reaches yamux only once it has passed: yamux starts a timer
	// of its own (two allocations) every time a Read with a deadline
	// blocks, and Join keeps one on every stream it reads. Guarded by mu.
	readTimer *time.Timer
	yamuxRD   time.Time // the read deadline yamux has

	sawEOF atomic.Bool // the peer finished writing
	// closedWrite is when CloseWrite ran (monoNow; 0: not yet). yamux
	// cuts the stream streamCloseTimeout later if the peer has not
	// finished, and its Read then returns io.EOF like the peer's FIN.
	closedWrite atomic.Int64
	// peerFIN is when the session's connection brought the peer's FIN
	// or reset (monoNow; 0: not yet, or not watched), for a stream whose
	// write side is closed and whose session has a streamWaker.
	peerFIN atomic.Int64
	aborted atomic.Bool // Abort ended it
	// peerReset: the peer reset the stream (resetByPeer). Reads return
	// what had come before, then fail; Writes fail.
	peerReset atomic.Bool
	readers   atomic.Int32 // Reads inside yamux's Read
	onClose   func(c *Stream, peerDone bool)

	// waker is the session's streamWaker, if it has one: Park needs it.
	waker *streamWaker

	// reply is the agent's answer still to be read, for a stream opened
	// with OpenOptions.Early; nil otherwise. Set before the stream is
	// handed out.
	reply *pendingReply
}

// pendingReply is the stream-reply of an early stream: the first Read
// reads it, and a refusal becomes the error of that Read and every later
// one.
type pendingReply struct {
	ok    atomic.Bool // read, and the stream is served
	ended atomic.Bool // read, whatever it said (done, for Replied)
	mu    sync.Mutex  // held while reading it
	done  bool
	err   error
	by    time.Time // the wait for it ends then (zero: no bound)
	// seen is what a Read failed by its caller's deadline had read of
	// the reply: the next Read reads it again before the stream.
	seen     []byte
	answered sync.Once
	onAnswer func() // called once: reply read, or stream closed first
	// waiting is true until the reply has been read; while it is, yamux's
	// read deadline is ReplyBy or the caller's, whichever comes first.
	// Guarded by the Stream's mu, like every change of yamux's deadline.
	waiting bool
}

func (r *pendingReply) answer() {
	r.answered.Do(func() {
		if r.onAnswer != nil {
			r.onAnswer()
		}
	})
}

// ErrCloseTimeout is the error of a Read on a stream whose write side was
// closed streamCloseTimeout (a minute) ago without the peer finishing its
// own: yamux cut it, and what the peer sent since is lost.
var ErrCloseTimeout = errors.New("tunnel: stream cut a minute after its write side closed, before the peer finished")

// ErrNoReply is the error of an early stream whose agent did not answer
// by OpenOptions.ReplyBy.
var ErrNoReply = errors.New("tunnel: the agent did not answer the stream in time")

// awaitReply reads an early stream's reply if it has not been read yet,
// and returns the refusal or failure it ended with, every time. A timeout
// of the caller's own read deadline is returned as such and leaves the
// reply, or the rest of it, to a later Read, as a deadline on a TCP socket
// would.
func (c *Stream) awaitReply() error {
	r := c.reply
	if r == nil || r.ok.Load() {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return r.err
	}
	// Read from yamux itself: after a Close (a peer's stream-reset that
	// followed its refusal, say), the reply it buffered is still read.
	pc := codecs.Get().(*proto.StreamCodec)
	var rep proto.StreamReply
	in := &replyReader{r: c.s, seen: r.seen}
	if in.seen == nil {
		in.seen = in.small[:0] // an accepting reply fits: no allocation
	}
	err := pc.ReadStreamReply(in, &rep)
	codecs.Put(pc)

	var perr *proto.Error
	switch {
	case err == nil && rep.Error != nil:
		err = rep.Error
	case err == nil, errors.As(err, &perr):
	case c.isClosed():
		err = c.mapErr("read", net.ErrClosed)
	case errors.Is(err, yamux.ErrTimeout) && !r.by.IsZero() && !time.Now().Before(r.by):
		err = ErrNoReply
	case errors.Is(err, yamux.ErrTimeout):
		// The caller's deadline; the reply, or its rest, may still come.
		r.seen = in.seen
		return c.mapErr("read", err)
	case err == io.EOF:
		err = c.mapErr("read", fmt.Errorf("stream ended before the agent's reply: %w", io.ErrUnexpectedEOF))
	default:
		err = c.mapErr("read", err)
	}
	r.done, r.err, r.seen = true, err, nil
	if err == nil {
		r.ok.Store(true)
	}
	r.ended.Store(true)
	// From now on yamux's read deadline is the caller's alone.
	c.mu.Lock()
	r.waiting = false
	if !c.closed {
		c.syncReadDeadline()
	}
	c.mu.Unlock()
	r.answer()
	return err
}

// AwaitReply reads an early stream's reply now, if it has not been read
// yet, and returns the refusal or failure it ended with (nil for any other
// stream). A caller about to write something that may take long, a
// request body trickling in, calls it first, so that the agent's answer is
// not left unread meanwhile.
func (c *Stream) AwaitReply() error { return c.awaitReply() }

// Replied reports whether the agent's reply has been read: false only for
// an early stream still waiting for it. A timeout before then means the
// agent did not answer, whatever deadline ran out.
func (c *Stream) Replied() bool {
	r := c.reply
	return r == nil || r.ended.Load()
}

// replyReader is what awaitReply reads the reply through: first the bytes
// an earlier try read (seen, from the pendingReply), then the stream,
// keeping in seen all it has read.
type replyReader struct {
	r     io.Reader
	seen  []byte
	off   int // how much of seen this try has read
	small [32]byte
}

func (rr *replyReader) Read(p []byte) (int, error) {
	if rr.off < len(rr.seen) {
		n := copy(p, rr.seen[rr.off:])
		rr.off += n
		return n, nil
	}
	n, err := rr.r.Read(p)
	rr.seen = append(rr.seen, p[:n]...)
	rr.off += n
	return n, err
}

// ownReadDeadline is the read deadline the caller set; zero if none.
func (c *Stream) ownReadDeadline() time.Time {
	if d := c.readDeadline.Load(); d != nil {
		return *d
	}
	return time.Time{}
}

// yamuxReadDeadline is the read deadline yamux gets for the caller's t:
// while an early stream's reply is awaited, ReplyBy if it comes first.
// c.mu must be held.
func (c *Stream) yamuxReadDeadline(t time.Time) time.Time {
	if r := c.reply; r != nil && r.waiting && !r.by.IsZero() && (t.IsZero() || r.by.Before(t)) {
		return r.by
	}
	return t
}

// syncReadDeadline gives yamux the read deadline it should have now: the
// caller's once it has passed (or while an early stream's reply is
// awaited), none before, with readTimer set to bring it. c.mu must be held.
func (c *Stream) syncReadDeadline() {
	if c.peerReset.Load() {
		// Reads return what is there and wait for nothing more.
		c.stopReadTimer()
		c.setYamuxRD(time.Unix(1, 0))
		return
	}
	t := c.ownReadDeadline()
	if r := c.reply; r != nil && r.waiting {
		c.setYamuxRD(c.yamuxReadDeadline(t))
		return
	}
	if t.IsZero() || !time.Now().Before(t) {
		// Dropped, not kept: an idle stream without a deadline (Join's,
		// parked) holds no timer.
		c.stopReadTimer()
		c.setYamuxRD(t)
		return
	}
	c.setYamuxRD(time.Time{})
	if c.readTimer == nil {
		c.readTimer = time.AfterFunc(time.Until(t), c.readDeadlinePassed)
	} else {
		c.readTimer.Reset(time.Until(t))
	}
}

// setYamuxRD sets yamux's read deadline, if it changes (each setting wakes
// a blocked Read). c.mu must be held.
func (c *Stream) setYamuxRD(t time.Time) {
	if !t.Equal(c.yamuxRD) {
		c.yamuxRD = t
		c.s.SetReadDeadline(t)
	}
}

// readDeadlinePassed is readTimer's: the caller's read deadline has come
// (unless it was moved since), so yamux gets it, and a blocked Read fails.
func (c *Stream) readDeadlinePassed() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.syncReadDeadline()
	}
}

// expired reports whether the deadline in d has passed.
func expired(d *atomic.Pointer[time.Time]) bool {
	t := d.Load()
	return t != nil && !t.IsZero() && !time.Now().Before(*t)
}

// NewStream wraps a yamux stream. remote, if not nil, is reported by
// RemoteAddr instead of the session's peer address (the agent uses the
// visitor's address).
func NewStream(s *yamux.Stream, remote net.Addr) *Stream {
	return &Stream{s: s, remote: remote, waker: wakerOf(s)}
}

func (c *Stream) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *Stream) mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if c.isClosed() || (c.peerReset.Load() && errors.Is(err, yamux.ErrTimeout)) {
		// After the peer's reset, yamux's timeout is the past deadline
		// that stops Reads and Writes waiting (resetByPeer).
		err = net.ErrClosed
	} else if errors.Is(err, yamux.ErrTimeout) {
		err = os.ErrDeadlineExceeded
	} else if errors.Is(err, yamux.ErrStreamClosed) {
		// Writing after CloseWrite, as for a TCP socket after shutdown(SHUT_WR).
		err = net.ErrClosed
	}
	if err == io.EOF {
		return err
	}
	return &net.OpError{Op: op, Net: "tunnel", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Read implements net.Conn.
func (c *Stream) Read(b []byte) (int, error) {
	if err := c.awaitReply(); err != nil {
		return 0, err
	}
	if c.isClosed() {
		return 0, c.mapErr("read", net.ErrClosed)
	}
	if expired(&c.readDeadline) && !c.peerReset.Load() {
		// (After the peer's reset no Read waits: it returns what is
		// there, whatever the caller's deadline, or fails.)
		return 0, c.mapErr("read", os.ErrDeadlineExceeded)
	}
	c.readers.Add(1)
	n, err := c.s.Read(b)
	for n == 0 && errors.Is(err, yamux.ErrTimeout) && !expired(&c.readDeadline) && !c.isClosed() && !c.peerReset.Load() {
		// A deadline that passed and was then moved later.
		n, err = c.s.Read(b)
	}
	c.readers.Add(-1)
	if c.aborted.Load() {
		// Abort's own reader may have let this one through.
		return 0, c.mapErr("read", net.ErrClosed)
	}
	if n == 0 && err != nil && c.peerReset.Load() {
		// All that came before the peer's reset has been read: now
		// the reset, never a clean end.
		c.Close()
		return 0, c.mapErr("read", net.ErrClosed)
	}
	if err == io.EOF {
		if t := c.closedWrite.Load(); t != 0 && monoNow()-t >= int64(streamCloseTimeout) {
			// yamux's close timeout, not the peer's end: a clean EOF
			// would pass a cut-off answer for a complete one. (A FIN
			// that comes later is dropped: it cannot be one.) A FIN
			// that came in before the timeout is the peer's end, however
			// late this Read finds it.
			if f := c.peerFIN.Load(); f == 0 || f-t >= int64(streamCloseTimeout) {
				return n, c.mapErr("read", ErrCloseTimeout)
			}
		}
		c.sawEOF.Store(true)
	}
	return n, c.mapErr("read", err)
}

// WaitRead waits until a Read would not block: data has arrived, the peer
// finished, or the stream failed. It reads nothing.
func (c *Stream) WaitRead() {
	if c.isClosed() {
		return
	}
	c.s.Read(nil) // yamux waits for data or the end, then returns 0
}

// Park lets Join's idle direction reading c wait without a goroutine:
// resume is started once a Read would not block (see Parking in park.go).
// false: c cannot park now (its session was not started by Client or
// Server, an early stream's reply is still to come, or a frame is on its
// way), and the caller waits as before.
func (c *Stream) Park(resume func()) bool {
	w := c.waker
	if w == nil || !c.Replied() {
		return false
	}
	id := c.s.StreamID()
	if !w.park(id, resume) {
		return false
	}
	if c.readable() {
		// It came before the waker could see it: go on now, unless
		// the frame has started resume already.
		return w.take(id) == nil
	}
	return true
}

// Unpark starts c's parked direction, if it is parked.
func (c *Stream) Unpark() {
	if c.waker == nil {
		return
	}
	if resume := c.waker.take(c.s.StreamID()); resume != nil {
		go resume()
	}
}

// readable reports whether a Read would return at once: data is buffered,
// the stream has ended or failed, or it is closed here. It asks yamux with
// a deadline in the past, then restores the caller's.
func (c *Stream) readable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.peerReset.Load() {
		return true
	}
	c.s.SetReadDeadline(time.Unix(1, 0))
	_, err := c.s.Read(nil)
	c.s.SetReadDeadline(c.yamuxRD)
	return !errors.Is(err, yamux.ErrTimeout)
}

// Readable reports whether a Read would return at once (data, the
// peer's FIN, a failure): for an idle kept stream, that it is unusable.
func (c *Stream) Readable() bool { return c.readable() }

// Shrink drops the stream's receive buffer if it is empty. yamux keeps it
// after every read, sized to the largest frame it held; a stream that goes
// idle after a burst would pin that much memory until it closes. Join calls
// Shrink after each read that drained the stream.
func (c *Stream) Shrink() { c.s.Shrink() }

// Write implements net.Conn. If yamux gives up on a write because the
// shared connection did not take it within its write timeout, the stream is
// closed: yamux would leave it half-dead, the peer's Read hanging forever
// (GHSA-29qp-crvh-w22m).
func (c *Stream) Write(b []byte) (int, error) {
	if c.isClosed() || c.peerReset.Load() {
		if c.reply != nil {
			// Closed by the agent's stream-reset after it refused:
			// the reply it sent first says why.
			if rerr := c.awaitReply(); rerr != nil {
				return 0, rerr
			}
		}
		return 0, c.mapErr("write", net.ErrClosed)
	}
	if expired(&c.writeDeadline) {
		return 0, c.mapErr("write", os.ErrDeadlineExceeded)
	}
	n, err := c.s.Write(b)
	if errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		c.Close()
	}
	if err != nil && c.reply != nil {
		// An early stream the agent refused: its reply says why.
		if rerr := c.awaitReply(); rerr != nil {
			return n, rerr
		}
	}
	return n, c.mapErr("write", err)
}

// monoStart anchors monoNow to the monotonic clock.
var monoStart = time.Now()

// monoNow is the monotonic time in nanoseconds since monoStart, plus one
// (never 0). closedWrite is compared with yamux's close timer, which runs
// on the monotonic clock: a stamp of the wall clock would move with NTP
// steps and date changes.
func monoNow() int64 { return int64(time.Since(monoStart)) + 1 }

// CloseWrite sends a FIN: the peer reads EOF, this side can still read.
func (c *Stream) CloseWrite() error {
	if c.closedWrite.CompareAndSwap(0, monoNow()) && c.waker != nil {
		c.waker.watchFIN(c)
		if c.isClosed() { // Close ran meanwhile, and may have missed it
			c.waker.unwatchFIN(c.s.StreamID())
		}
	}
	return c.s.Close()
}

// resetByPeer ends the stream the peer reset (Resets.Reset) as TCP ends a
// connection on a reset: Writes fail at once, and Reads fail once they
// have returned what came before the reset, which yamux holds (the data
// frames precede the reset on the shared connection). So an answer the
// peer sent in full before it aborted, a 413 from a local server that
// then reset its connection, say, still reaches its reader. A stream that
// nobody reads any more is closed abortLinger later.
func (c *Stream) resetByPeer() {
	c.mu.Lock()
	if c.closed || c.peerReset.Load() {
		c.mu.Unlock()
		return
	}
	c.peerReset.Store(true)
	c.syncReadDeadline() // in the past from now on
	c.mu.Unlock()
	c.s.SetWriteDeadline(time.Unix(1, 0)) // wake a blocked Write
	c.Unpark()
	time.AfterFunc(abortLinger, func() { c.Close() })
}

// ResetByPeer reports whether the peer reset the stream (see resetByPeer):
// its Writes fail, and its Reads return what came before, then fail.
func (c *Stream) ResetByPeer() bool { return c.peerReset.Load() }

// Close closes both directions. Blocked Reads and Writes return at once.
func (c *Stream) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.stopReadTimer()
		c.mu.Unlock()
		// Wake blocked calls; the closed flag turns their timeout into ErrClosed.
		past := time.Unix(1, 0)
		c.s.SetDeadline(past)
		// A parked direction sees the close now, not after yamux's Close,
		// which waits for the FIN to be written: up to its write timeout
		// on a stalled session.
		c.Unpark()
		if c.waker != nil && c.closedWrite.Load() != 0 {
			c.waker.unwatchFIN(c.s.StreamID())
		}
		c.s.Close()
		if c.reply != nil {
			c.reply.answer()
		}
		if c.onClose != nil {
			c.onClose(c, c.sawEOF.Load())
		}
	})
	return nil
}

// abortLinger bounds how long an aborted stream waits for the peer to
// close its side before it closes its own.
const abortLinger = 10 * time.Second

// Abort ends the stream after an error. Like Close it fails pending and
// later Reads and Writes at once; unlike Close it sends no FIN, which the
// peer would read as a clean end of the stream (a response cut short by a
// local server's crash would pass for complete), but only the
// stream-reset of the Resets that tracks it, which aborts the peer's end.
// The yamux stream is closed once the peer has closed its side in answer
// (so the FIN cannot overtake the reset), or after abortLinger. A stream
// that no Resets tracks is closed.
func (c *Stream) Abort() {
	if c.onClose == nil {
		c.Close()
		return
	}
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.stopReadTimer()
		c.mu.Unlock()
		c.aborted.Store(true)
		c.s.SetDeadline(time.Unix(1, 0)) // wake blocked calls
		c.Unpark()
		if c.waker != nil && c.closedWrite.Load() != 0 {
			c.waker.unwatchFIN(c.s.StreamID())
		}
		if c.reply != nil {
			c.reply.answer()
		}
		c.onClose(c, false) // a stream-reset, whatever the peer has done
		go func() {
			// The past deadline wakes the Reads blocked in yamux;
			// a later one would keep them waiting for the peer.
			for i := 0; c.readers.Load() > 0 && i < 1000; i++ {
				time.Sleep(time.Millisecond)
			}
			c.s.SetReadDeadline(time.Now().Add(abortLinger))
			io.Copy(io.Discard, c.s) // until the peer's FIN, a reset, or the linger
			c.s.Close()
		}()
	})
}

// stopReadTimer stops and drops readTimer. c.mu must be held.
func (c *Stream) stopReadTimer() {
	if c.readTimer != nil {
		c.readTimer.Stop()
		c.readTimer = nil
	}
}

// ID returns the stream's yamux ID, the same at both ends of the session.
func (c *Stream) ID() uint32 { return c.s.StreamID() }

// LocalAddr implements net.Conn.
func (c *Stream) LocalAddr() net.Addr { return c.s.LocalAddr() }

// RemoteAddr implements net.Conn.
func (c *Stream) RemoteAddr() net.Addr {
	if c.remote != nil {
		return c.remote
	}
	return c.s.RemoteAddr()
}

// SetDeadline implements net.Conn.
func (c *Stream) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn.
func (c *Stream) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	closed := c.closed
	var err error
	if !closed {
		c.readDeadline.Store(deadlinePtr(t))
		c.syncReadDeadline()
	}
	c.mu.Unlock()
	if closed {
		return c.mapErr("set", net.ErrClosed)
	}
	return err
}

// SetWriteDeadline implements net.Conn.
func (c *Stream) SetWriteDeadline(t time.Time) error {
	if c.isClosed() || c.peerReset.Load() {
		return c.mapErr("set", net.ErrClosed)
	}
	if prev := c.writeDeadline.Swap(deadlinePtr(t)); prev != nil && prev.Equal(t) {
		return nil // yamux has it: its SetWriteDeadline allocates
	}
	return c.s.SetWriteDeadline(t)
}

// noDeadline is the stored zero deadline: clearing one, as a keep-alive
// exchange does at its end, allocates nothing.
var noDeadline = new(time.Time)

func deadlinePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return noDeadline
	}
	p := new(time.Time) // only here: &t would put every t on the heap
	*p = t
	return p
}

// OpenStream opens a data stream for one visitor connection: it writes hdr
// and waits for the agent's StreamReply, all within ctx. A refusal from the
// agent (e.g. its local target does not answer) is returned as a *proto.Error.
// The caller must bound the number of concurrent calls per session below
// MaxStreams, so that yamux never blocks on its SYN backlog.
//
// failed, if not nil, is called exactly once when OpenStream fails, as soon
// as no yamux open is outstanding: at once, or, when ctx ended while yamux
// was still blocked in its OpenStream, once yamux returns. Callers free
// their concurrency slot there, so abandoned opens count against it until
// they are really gone.
func OpenStream(ctx context.Context, sess *yamux.Session, hdr *proto.StreamHeader, failed func()) (*Stream, error) {
	return OpenStreamWith(ctx, sess, hdr, OpenOptions{Failed: failed})
}

// OpenOptions tune OpenStreamWith. The zero value is OpenStream.
type OpenOptions struct {
	// Failed is OpenStream's failed.
	Failed func()
	// Early returns the stream as soon as the header is written, without
	// waiting for the agent's reply, so that the caller's first bytes
	// (the visitor's request) travel with the header instead of a round
	// trip later. The first Read reads the reply: a refusal is that
	// Read's error, and every later Read's; a Write that fails before the
	// reply was read returns the refusal too. The agent leaves those
	// bytes unread until it has answered, and drops them when it refuses.
	Early bool
	// ReplyBy bounds the wait for an early stream's reply: a Read still
	// waiting then fails with ErrNoReply. Zero: only the caller's read
	// deadline bounds it.
	ReplyBy time.Time
	// Answered, if not nil, is called once for an early stream when its
	// reply has been read, whatever it said, or the stream was closed
	// first. Callers free the slot that bounds opens in flight there.
	Answered func()
}

// OpenStreamWith is OpenStream with options.
func OpenStreamWith(ctx context.Context, sess *yamux.Session, hdr *proto.StreamHeader, opts OpenOptions) (*Stream, error) {
	failed := opts.Failed
	if failed == nil {
		failed = func() {}
	}
	ys, err := openYamux(ctx, sess, failed)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	st := NewStream(ys, nil)
	clear := deadline(ctx, st)
	c := codecs.Get().(*proto.StreamCodec)
	err = c.WriteStreamHeader(st, hdr)
	if err == nil && !opts.Early {
		var reply proto.StreamReply
		err = c.ReadStreamReply(st, &reply)
		if err == nil && reply.Error != nil {
			err = reply.Error
		}
	}
	codecs.Put(c)
	clear()
	if err != nil {
		st.Close()
		failed()
		var perr *proto.Error
		if errors.As(err, &perr) {
			return nil, perr
		}
		return nil, fmt.Errorf("open stream: %w", ctxErr(ctx, err))
	}
	if opts.Early {
		st.reply = &pendingReply{by: opts.ReplyBy, onAnswer: opts.Answered, waiting: true}
		st.mu.Lock()
		st.syncReadDeadline()
		st.mu.Unlock()
	}
	return st, nil
}

// openYamux opens a yamux stream within ctx. yamux's OpenStream has no
// context and blocks while its SYN backlog is full, which a stalled agent can
// cause even under the caller's cap: a stream closed before the agent
// acknowledged it keeps its backlog credit until the agent answers. If ctx
// ends first, the stream is closed as soon as yamux hands it over; the
// goroutine ends then, or when the session closes.
//
// On error it calls failed once the background open, if any, has ended.
func openYamux(ctx context.Context, sess *yamux.Session, failed func()) (*yamux.Stream, error) {
	type result struct {
		s   *yamux.Stream
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := sess.OpenStream()
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			failed()
		}
		return r.s, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.s != nil {
				r.s.Close()
			}
			failed()
		}()
		return nil, ctx.Err()
	}
}

// AcceptStream reads the header of a stream the relay opened, within ctx.
// The caller answers with Reply or Refuse.
func AcceptStream(ctx context.Context, ys *yamux.Stream) (*Stream, *proto.StreamHeader, error) {
	st := NewStream(ys, nil)
	clear := deadline(ctx, st)
	hdr := new(proto.StreamHeader)
	c := codecs.Get().(*proto.StreamCodec)
	err := c.ReadStreamHeader(st, hdr)
	codecs.Put(c)
	clear()
	if err != nil {
		st.Close()
		return nil, nil, fmt.Errorf("read stream header: %w", ctxErr(ctx, err))
	}
	if hdr.Remote.IsValid() {
		st.remote = net.TCPAddrFromAddrPort(hdr.Remote)
	}
	return st, hdr, nil
}

// codecs hold the buffers, and the tunnel names and visitor addresses
// seen, that let every data stream's header and reply go without
// allocating.
var codecs = sync.Pool{New: func() any { return new(proto.StreamCodec) }}

// Accept tells the relay the stream is served; bytes may flow after it.
func (c *Stream) Accept() error {
	return c.writeReply(&proto.StreamReply{})
}

// Refuse tells the relay why the stream cannot be served and closes it.
func (c *Stream) Refuse(e *proto.Error) error {
	err := c.writeReply(&proto.StreamReply{Error: e})
	c.CloseWrite()
	c.Close()
	return err
}

func (c *Stream) writeReply(r *proto.StreamReply) error {
	pc := codecs.Get().(*proto.StreamCodec)
	err := pc.WriteStreamReply(c, r)
	codecs.Put(pc)
	return err
}
