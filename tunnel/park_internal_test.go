package tunnel

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// chunkConn returns its chunks one Read each, as a socket might.
type chunkConn struct {
	net.Conn // nil: only Read and Close are used
	chunks   [][]byte
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	if c.chunks[0] = c.chunks[0][n:]; len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

func (c *chunkConn) Close() error { return nil }

// TestStreamWakerInFlight walks the waker through the frames yamux reads:
// a stream may not park while a frame for it has been read from the
// connection and may not have reached it yet (yamux has it once it asks
// for the bytes after it); a frame that makes a Read return starts a
// parked stream, one that does not (a plain window update) leaves it; the
// session's end starts every parked stream and refuses new ones.
func TestStreamWakerInFlight(t *testing.T) {
	payload := bytes.Repeat([]byte{'x'}, 100)
	data3 := append(yamuxHeader(frameData, 0, 3, 100), payload...)
	window5 := yamuxHeader(frameWindowUpdate, 0, 5, 1<<20)
	fin5 := yamuxHeader(frameWindowUpdate, flagFIN, 5, 0)
	conn := &chunkConn{chunks: [][]byte{
		data3[:62],                     // header and half the payload
		append(data3[62:], window5...), // the rest, and a window update for 5
		fin5[:5], fin5[5:],             // 5's FIN, its header split in two reads
	}}
	w := newStreamWaker(conn)
	started := make(chan uint32, 4)
	resume := func(id uint32) func() { return func() { started <- id } }
	buf := make([]byte, 4096)
	read := func() {
		t.Helper()
		if _, err := w.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	noneStarted := func() {
		t.Helper()
		select {
		case id := <-started:
			t.Fatalf("stream %d started, want none", id)
		case <-time.After(20 * time.Millisecond):
		}
	}

	read()
	if w.park(3, resume(3)) {
		t.Fatal("stream 3 parked with half of its frame read")
	}
	read()
	if w.park(3, resume(3)) {
		t.Fatal("stream 3 parked before yamux asked for the bytes after its frame")
	}
	if !w.park(5, resume(5)) {
		t.Fatal("stream 5 refused: a window update does not make a Read return")
	}
	read()
	noneStarted() // half a header names no stream yet
	if !w.park(3, resume(3)) {
		t.Fatal("stream 3 refused although yamux has delivered its frame")
	}
	read()
	if id := <-started; id != 5 {
		t.Fatalf("stream %d started by 5's FIN", id)
	}
	noneStarted()

	w.Close()
	if id := <-started; id != 3 {
		t.Fatalf("stream %d started by the session's end, want 3", id)
	}
	if w.park(7, resume(7)) {
		t.Error("a stream parked after the session ended")
	}
}
