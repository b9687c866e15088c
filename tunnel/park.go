package tunnel

import (
	"crypto/tls"
	"encoding/binary"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Parking: an idle stream direction of Join waits without a goroutine.
//
// yamux wakes a stream's reader through a channel of its own, so waiting
// for a stream has always taken a goroutine blocked in its Read: 2 KiB of
// stack, and as much again of heap growth allowed by the collector, for
// each idle WebSocket at each end. Every frame yamux delivers to a stream
// has first passed through the session's connection, though, and its
// header names the stream. streamWaker sits between yamux and that
// connection, reads the headers as they go by (without copying anything),
// and starts a parked stream's direction again when a frame that will make
// its Read return comes in: data, a FIN or a reset. The session ending, the
// stream being closed or aborted here, and the other direction of its join
// ending wake it too (Stream.Close, Stream.Abort, Join).
//
// The one delicate moment is parking itself: a frame for the stream may
// have been read from the connection but not yet handed to the stream by
// yamux, and then neither the stream (nothing to read yet) nor the waker
// (nobody parked when the frame went by) would act on it. yamux reads
// the connection through a bufio.Reader from its one receive loop, and
// that reader asks for more bytes only once yamux has taken all it had;
// yamux takes the last byte of a frame only to finish handling it. So at
// the start of every Read, each frame whose end an earlier Read returned
// has been delivered; the ones that have not are "in flight", and a stream
// with a frame in flight does not park (its direction waits for that frame
// on a goroutine, as before, and parks the next time it goes quiet).
//
// Sockets, and TLS connections over them, park in an epoll set of our own
// (park_tcp_linux.go).

// frameSplitter finds the yamux frame headers in a byte stream that
// arrives in pieces of any size.
type frameSplitter struct {
	hdr  [frameHeaderLen]byte // a header split across pieces
	hn   int                  // bytes of it in hdr
	skip uint64               // payload bytes left of the current data frame
}

// next returns the next whole frame header in b, and what follows it in
// b; a nil h means b ended first (what it held is remembered). The caller
// sets skip to a data frame's length after each header.
func (s *frameSplitter) next(b []byte) (h, rest []byte) {
	if s.skip >= uint64(len(b)) {
		s.skip -= uint64(len(b))
		return nil, nil
	}
	b = b[s.skip:]
	s.skip = 0
	if s.hn == 0 && len(b) >= frameHeaderLen {
		return b[:frameHeaderLen], b[frameHeaderLen:]
	}
	c := copy(s.hdr[s.hn:], b)
	s.hn += c
	if s.hn < frameHeaderLen {
		return nil, nil
	}
	s.hn = 0
	return s.hdr[:], b[c:]
}

// yamux flags that end a stream's reading.
const (
	flagFIN = 4
	flagRST = 8
)

// wakes reports whether a frame with header h makes its stream's pending
// Read return: data, or a FIN or reset, on a data or window-update frame.
func wakes(h []byte) bool {
	switch h[1] {
	case frameData:
		return binary.BigEndian.Uint32(h[8:12]) > 0 || binary.BigEndian.Uint16(h[2:4])&(flagFIN|flagRST) != 0
	case frameWindowUpdate:
		return binary.BigEndian.Uint16(h[2:4])&(flagFIN|flagRST) != 0
	}
	return false
}

// streamWaker is the connection yamux reads from, for one session; see
// Parking above. Its Read is called by yamux's receive loop only.
type streamWaker struct {
	net.Conn

	// The reading goroutine's own.
	split   frameSplitter
	last    uint32   // stream of the last frame header read
	lastHit bool     // it wakes its stream
	seen    []uint32 // streams woken by frames of the current Read
	fins    []uint32 // streams with a FIN or reset among them
	fire    []func() // their parked directions, started after unlocking

	received atomic.Uint64 // bytes read from the peer (keepalive)

	mu       sync.Mutex
	inflight []uint32          // streams with a frame yamux may not have delivered yet
	parked   map[uint32]func() // stream ID → how its direction goes on
	// finWatch: streams whose write side is closed (CloseWrite), each
	// told when the peer's FIN or reset comes in (Stream.Read).
	finWatch map[uint32]*Stream
	closed   bool
	sess     *yamux.Session // set right after the session starts
}

// wakers finds a session's streamWaker from its streams (NewStream).
var wakers sync.Map // *yamux.Session → *streamWaker

func newStreamWaker(conn net.Conn) *streamWaker {
	return &streamWaker{Conn: conn, parked: make(map[uint32]func())}
}

// attach records sess as the session reading through w.
func (w *streamWaker) attach(sess *yamux.Session) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sess = sess
	if !w.closed { // a session can end as it starts
		wakers.Store(sess, w)
	}
}

func wakerOf(s *yamux.Stream) *streamWaker {
	if v, ok := wakers.Load(s.Session()); ok {
		return v.(*streamWaker)
	}
	return nil
}

func (w *streamWaker) Read(p []byte) (int, error) {
	// Everything returned before this call has been handled by yamux,
	// except a frame whose payload is still to come.
	w.mu.Lock()
	w.inflight = w.inflight[:0]
	if w.lastHit && w.split.skip > 0 {
		w.inflight = append(w.inflight, w.last)
	}
	w.mu.Unlock()

	n, err := w.Conn.Read(p)
	if n <= 0 {
		return n, err
	}
	w.received.Add(uint64(n))
	b := p[:n]
	for {
		var h []byte
		if h, b = w.split.next(b); h == nil {
			break
		}
		if h[1] == frameData {
			w.split.skip = uint64(binary.BigEndian.Uint32(h[8:12]))
		}
		w.last, w.lastHit = binary.BigEndian.Uint32(h[4:8]), wakes(h)
		if w.lastHit {
			w.seen = append(w.seen, w.last)
			if binary.BigEndian.Uint16(h[2:4])&(flagFIN|flagRST) != 0 {
				w.fins = append(w.fins, w.last)
			}
		}
	}
	if len(w.seen) == 0 {
		return n, err
	}
	w.mu.Lock()
	if len(w.fins) > 0 {
		now := monoNow()
		for _, id := range w.fins {
			if st := w.finWatch[id]; st != nil {
				st.peerFIN.CompareAndSwap(0, now)
				delete(w.finWatch, id)
			}
		}
		w.fins = w.fins[:0]
	}
	w.inflight = append(w.inflight, w.seen...)
	if len(w.parked) > 0 {
		for _, id := range w.seen {
			if resume, ok := w.parked[id]; ok {
				delete(w.parked, id)
				w.fire = append(w.fire, resume)
			}
		}
	}
	w.mu.Unlock()
	w.seen = w.seen[:0]
	for i, resume := range w.fire {
		go resume()
		w.fire[i] = nil
	}
	w.fire = w.fire[:0]
	return n, err
}

// heard reports whether anything came from the peer since the session
// had read before bytes of it: read since, waiting unread in the kernel,
// or arriving within grace (cut short if done closes).
func (w *streamWaker) heard(before uint64, grace time.Duration, done <-chan struct{}) bool {
	if w.received.Load() != before || unread(w.Conn) > 0 {
		return true
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-t.C:
	case <-done:
	}
	return w.received.Load() != before || unread(w.Conn) > 0
}

// Close closes the connection (yamux does, as its session ends) and
// starts every parked direction once the session has ended their streams.
func (w *streamWaker) Close() error {
	w.mu.Lock()
	w.closed = true
	parked, sess := w.parked, w.sess
	w.parked, w.finWatch = nil, nil
	if sess != nil {
		wakers.Delete(sess)
	}
	w.mu.Unlock()
	if len(parked) > 0 {
		go func() {
			// yamux closes the streams only after the connection,
			// and a Read between the two spins until it has.
			// Session.Close returns once it has (a second call waits
			// for the first).
			if sess != nil {
				sess.Close()
			}
			for _, resume := range parked {
				go resume()
			}
		}()
	}
	return w.Conn.Close()
}

// park records resume as how stream id's direction goes on, to be started
// on the stream's next frame. It refuses (false) while a frame for the
// stream is in flight, or once the session is closed.
func (w *streamWaker) park(id uint32, resume func()) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || slices.Contains(w.inflight, id) {
		return false
	}
	w.parked[id] = resume
	return true
}

// watchFIN has st told (peerFIN) when its peer's FIN or reset comes in.
func (w *streamWaker) watchFIN(st *Stream) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if w.finWatch == nil {
		w.finWatch = make(map[uint32]*Stream)
	}
	w.finWatch[st.s.StreamID()] = st
}

// unwatchFIN undoes watchFIN.
func (w *streamWaker) unwatchFIN(id uint32) {
	w.mu.Lock()
	delete(w.finWatch, id)
	w.mu.Unlock()
}

// take removes stream id's parked direction and returns it; nil if it is
// not parked (never was, or was started already).
func (w *streamWaker) take(id uint32) func() {
	w.mu.Lock()
	defer w.mu.Unlock()
	resume := w.parked[id]
	if resume != nil {
		delete(w.parked, id)
	}
	return resume
}

// parker is a connection whose idle reads can wait without a goroutine
// (Stream, and wrappers of one that pass these on).
type parker interface {
	Park(resume func()) bool
	Unpark()
}

// Park asks c to call resume, on a goroutine of its own, once a Read of it
// would not block, and reports whether it will. While it is parked c holds
// no goroutine. c can park if it is a Stream of a session started by
// Client or Server, a TCP connection on Linux or a TLS connection over
// one, or a wrapper of one of those that passes Park and Unpark on. false
// means c cannot wait that way now (another kind of connection, or, for a
// Stream, something about to arrive): the caller waits as it would have.
//
// A TLS connection may hold decrypted bytes that Park cannot see: park
// one only after a Read of it failed on a deadline, as Join does.
func Park(c net.Conn, resume func()) bool {
	if p, ok := c.(parker); ok {
		return p.Park(resume)
	}
	if s := socketOf(c); s != nil && parkTCP != nil {
		return parkTCP(s, resume)
	}
	return false
}

// Unpark starts c's parked direction now, if it is parked: its owner is
// about to end it, or needs it to see what the waker cannot.
func Unpark(c net.Conn) {
	if p, ok := c.(parker); ok {
		p.Unpark()
		return
	}
	if s := socketOf(c); s != nil && unparkTCP != nil {
		unparkTCP(s)
	}
}

// socketOf is the socket a connection parks on: a TCP connection itself,
// or the one under a TLS connection (Join parks a direction only after a
// Read failed on its deadline, and then nothing decrypted is left in the
// TLS connection, at most part of a record, so only the socket can bring
// what the next Read needs); nil for anything else.
func socketOf(c net.Conn) *net.TCPConn {
	switch c := c.(type) {
	case *net.TCPConn:
		return c
	case *tls.Conn:
		s, _ := c.NetConn().(*net.TCPConn)
		return s
	}
	return nil
}

// parkTCP and unparkTCP park TCP connections, on the systems where that is
// done (park_tcp_linux.go); nil elsewhere.
var (
	parkTCP   func(*net.TCPConn, func()) bool
	unparkTCP func(*net.TCPConn)
)
