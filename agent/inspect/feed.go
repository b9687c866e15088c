package inspect

import (
	"errors"
	"io"
	"sync"
	"time"
)

// errOverrun ends a parser whose feed filled up: it fell behind the traffic,
// and the traffic never waits for it.
var errOverrun = errors.New("inspect: parser fell behind; capture stopped")

// feedMax bounds the bytes one direction of one connection may hold for its
// parser. Beyond that the parser has fallen hopelessly behind and capture
// stops for that direction.
const feedMax = 1 << 20

// feed carries one direction's bytes from the tap (the copying goroutine,
// which must never wait) to the parser (which may). It remembers when each
// chunk arrived so the parser can time what it finds.
type feed struct {
	mu      sync.Mutex
	buf     []byte // unread bytes
	readOff int64  // offset of buf[0] in the direction's stream
	marks   []mark // arrival times of the chunks around readOff
	closed  bool   // no more bytes will come
	stopped bool   // the parser is gone or overrun: drop everything
	overrun bool
	ready   chan struct{} // signalled when bytes arrive or the feed closes
}

type mark struct {
	end int64 // offset just past the chunk
	t   time.Time
	seq int64 // order of the chunk among both directions' chunks
}

func newFeed() *feed { return &feed{ready: make(chan struct{}, 1)} }

// write queues a copy of p. It never blocks for long: if the parser has
// fallen feedMax behind, capture stops instead.
func (f *feed) write(p []byte, now time.Time, seq int64) {
	f.mu.Lock()
	if f.stopped || f.closed {
		f.mu.Unlock()
		return
	}
	if len(f.buf)+len(p) > feedMax {
		f.stopped, f.overrun = true, true
		f.buf = nil
		f.mu.Unlock()
		f.signal()
		return
	}
	f.buf = append(f.buf, p...)
	f.marks = append(f.marks, mark{end: f.readOff + int64(len(f.buf)), t: now, seq: seq})
	f.mu.Unlock()
	f.signal()
}

func (f *feed) signal() {
	select {
	case f.ready <- struct{}{}:
	default:
	}
}

// close says no more bytes will come; the parser reads what is left, then EOF.
func (f *feed) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.signal()
}

// stop drops what is queued and everything that comes later.
func (f *feed) stop() {
	f.mu.Lock()
	f.stopped = true
	f.buf = nil
	f.marks = nil
	f.mu.Unlock()
	f.signal()
}

// Read implements io.Reader for the parser.
func (f *feed) Read(p []byte) (int, error) {
	for {
		f.mu.Lock()
		switch {
		case f.overrun:
			f.mu.Unlock()
			return 0, errOverrun
		case f.stopped:
			f.mu.Unlock()
			return 0, io.EOF
		case len(f.buf) > 0:
			n := copy(p, f.buf)
			f.buf = f.buf[n:]
			if len(f.buf) == 0 {
				f.buf = nil // let the array go; the next write starts a small one
			}
			f.readOff += int64(n)
			f.pruneLocked(f.readOff - keepMarks)
			f.mu.Unlock()
			return n, nil
		case f.closed:
			f.mu.Unlock()
			return 0, io.EOF
		}
		f.mu.Unlock()
		<-f.ready
	}
}

// keepMarks is how far behind the read offset the parser may still ask for
// a time: the size of its read-ahead buffer, whose bytes handOver may also
// need the times of.
const keepMarks = parseBuf

// pruneLocked forgets the marks of chunks that end before off.
func (f *feed) pruneLocked(off int64) {
	i := 0
	for i < len(f.marks)-1 && f.marks[i].end <= off {
		i++
	}
	if i > 0 {
		f.marks = append(f.marks[:0], f.marks[i:]...)
	}
}

// timeAt returns when the byte at offset off arrived (or a close estimate).
func (f *feed) timeAt(off int64) time.Time { return f.markAt(off).t }

// markAt returns the mark of the chunk that held the byte at offset off.
func (f *feed) markAt(off int64) mark {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.marks {
		if off < m.end {
			return m
		}
	}
	if n := len(f.marks); n > 0 {
		return f.marks[n-1]
	}
	return mark{t: time.Now(), seq: 1<<63 - 1}
}

// offset returns the read offset: bytes handed to the parser so far.
func (f *feed) offset() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readOff
}

// handOver stops the feed and returns what it still held: the unread
// bytes, which start at offset off, the marks of the chunks around them,
// and whether bytes were dropped after them because the parser fell
// behind.
func (f *feed) handOver() (buf []byte, off int64, marks []mark, overrun bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	buf, off, marks, overrun = f.buf, f.readOff, f.marks, f.overrun
	f.stopped = true
	f.buf, f.marks = nil, nil
	return buf, off, marks, overrun
}
