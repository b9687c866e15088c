package tunnel

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Buffer sizes of Join. An idle direction blocks in a read of smallBuf bytes;
// a pooled bigBuf is taken once a read fills the small one, and given back
// once the source has had nothing to read for bigLinger. An idle WebSocket
// therefore pins 2×smallBuf instead of the 2×32 KiB of io.Copy, while a
// busy source that returns short reads (TLS gives at most a 16 KiB record
// per read) keeps its big buffer between them.
const (
	smallBuf  = 512
	bigBuf    = 32 << 10
	bigLinger = 10 * time.Millisecond
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
	// While big is held, src has a read deadline (lingerAt, refreshed as
	// data keeps coming) whose expiry means "idle: give big back".
	var lingerAt time.Time
	release := func() {
		if big != nil {
			bufPool.Put(big)
			big = nil
		}
		// Let the source drop its own receive buffer too (a yamux
		// stream keeps one the size of the largest frame it held).
		if s, ok := src.(shrinker); ok {
			s.Shrink()
		}
	}
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
		if big != nil && rerr != nil && errors.Is(rerr, os.ErrDeadlineExceeded) {
			// Our linger ran out: the source is idle. (Join owns the
			// read deadlines of its connections while it runs.)
			src.SetReadDeadline(time.Time{})
			release()
			continue
		}
		switch {
		case big == nil && nr == len(buf):
			// Data is flowing faster than one small read: switch to a
			// big buffer until the source goes quiet.
			now := time.Now()
			if src.SetReadDeadline(now.Add(bigLinger)) == nil {
				big = bufPool.Get().(*[]byte)
				lingerAt = now
			}
		case big == nil && nr < len(buf):
			// The read took all there was: the next one may block for
			// as long as the connection stays idle.
			release()
		case big != nil:
			if now := time.Now(); now.Sub(lingerAt) > bigLinger/2 {
				if src.SetReadDeadline(now.Add(bigLinger)) != nil {
					release()
				} else {
					lingerAt = now
				}
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
