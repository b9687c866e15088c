package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Buffer sizes of Join. An idle direction blocks in a read of smallBuf bytes;
// a pooled bigBuf is taken only while data keeps arriving in full reads and
// is given back after any read that drained the source. An idle WebSocket therefore
// pins 2×smallBuf instead of the 2×32 KiB of io.Copy.
const (
	smallBuf = 512
	bigBuf   = 32 << 10
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bigBuf); return &b }}

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
// sets another bound.
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
	counts := opts.Counts
	if counts == nil {
		counts = new(Counts)
	}
	idle := opts.WriteIdleTimeout
	if idle == 0 {
		idle = DefaultWriteIdleTimeout
	}
	// abort unblocks the other direction, whichever direction failed.
	abort := func() {
		a.Close()
		b.Close()
	}
	errc := make(chan error, 1)
	go func() {
		err := pipe(b, a, &counts.AToB, idle, AToB, opts.Tap)
		if err != nil {
			abort()
		}
		errc <- err
	}()
	err1 := pipe(a, b, &counts.BToA, idle, BToA, opts.Tap)
	if err1 != nil {
		abort()
	}
	err2 := <-errc
	a.Close()
	b.Close()
	// The direction that failed first has the real error; the other one
	// saw its connection closed by abort.
	for _, err := range []error{err1, err2} {
		if err != nil && err != errAborted {
			return err
		}
	}
	return nil
}

// errAborted is pipe's result when a connection was closed under it, by the
// other direction's abort or by Join's owner.
var errAborted = errors.New("tunnel: join aborted")

// pipe copies src to dst until EOF or an error, then half-closes dst. Each
// write must finish within idle (unless idle is negative). tap, if not nil,
// sees what was written.
func pipe(dst, src net.Conn, n *atomic.Int64, idle time.Duration, dir Direction, tap func(Direction, []byte)) error {
	var small [smallBuf]byte
	var big *[]byte
	defer func() {
		if big != nil {
			bufPool.Put(big)
		}
	}()
	for {
		buf := small[:]
		if big != nil {
			buf = *big
		}
		nr, rerr := src.Read(buf)
		if nr > 0 {
			if idle > 0 {
				dst.SetWriteDeadline(time.Now().Add(idle))
			}
			if tap != nil {
				tap(dir, buf[:nr])
			}
			nw, werr := dst.Write(buf[:nr])
			n.Add(int64(nw))
			if werr != nil {
				if errors.Is(werr, net.ErrClosed) {
					return errAborted
				}
				return werr
			}
		}
		switch {
		case big == nil && nr == len(buf):
			// Data is flowing faster than one small read: switch to a big buffer.
			big = bufPool.Get().(*[]byte)
		case nr < len(buf):
			// The read took all there was: the next one may block for
			// as long as the connection stays idle. Give the big buffer
			// back first, and let the source drop its own receive
			// buffer (a yamux stream keeps one the size of the largest
			// frame it held).
			if big != nil {
				bufPool.Put(big)
				big = nil
			}
			if s, ok := src.(shrinker); ok {
				s.Shrink()
			}
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
