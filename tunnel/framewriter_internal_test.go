package tunnel

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
)

// writeRecorder is a connection that records each Write call separately.
type writeRecorder struct {
	net.Conn // nil: only Write is used
	writes   [][]byte
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), nil
}

// yamuxHeader builds a yamux frame header.
func yamuxHeader(typ byte, flags uint16, stream, length uint32) []byte {
	h := make([]byte, frameHeaderLen)
	h[0], h[1] = yamuxVersion, typ
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], stream)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

// TestFrameWriterCoalesces shows what reaches the connection when yamux's
// send loop writes a frame as header, then body: a data frame with a body
// goes out in one write, every header without a body goes out at once.
func TestFrameWriterCoalesces(t *testing.T) {
	rec := &writeRecorder{}
	fw := newFrameWriter(rec, rec)
	if fw.writev {
		t.Fatal("a recorder is not a socket: want the copy path")
	}
	data := yamuxHeader(yamuxTypeData, 0, 3, 5)
	window := yamuxHeader(1, 0, 3, 1<<20)      // window update: no body
	fin := yamuxHeader(yamuxTypeData, 4, 3, 0) // FIN without data
	ping := yamuxHeader(2, 1, 0, 7)            // ping: the length is its opaque value

	steps := [][]byte{data, []byte("hello"), window, fin, ping}
	for _, p := range steps {
		n, err := fw.Write(p)
		if err != nil || n != len(p) {
			t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
		}
	}
	want := [][]byte{append(bytes.Clone(data), "hello"...), window, fin, ping}
	if len(rec.writes) != len(want) {
		t.Fatalf("got %d writes, want %d: %q", len(rec.writes), len(want), rec.writes)
	}
	for i := range want {
		if !bytes.Equal(rec.writes[i], want[i]) {
			t.Errorf("write %d = %x, want %x", i, rec.writes[i], want[i])
		}
	}
}

// TestFrameWriterLargeBody: a body above maxCoalesceCopy is not copied
// whole; on a connection without vectored writes (TLS) the header goes with
// the body's first bytes, one full 16 KiB TLS record, and the rest follows
// in a second write. The header never costs a record of its own.
func TestFrameWriterLargeBody(t *testing.T) {
	rec := &writeRecorder{}
	fw := newFrameWriter(rec, rec)
	body := make([]byte, 128<<10)
	for i := range body {
		body[i] = byte(i)
	}
	hdr := yamuxHeader(yamuxTypeData, 0, 1, uint32(len(body)))
	fw.Write(hdr)
	if n, err := fw.Write(body); n != len(body) || err != nil {
		t.Fatalf("Write(body) = %d, %v", n, err)
	}
	if len(rec.writes) != 2 || len(rec.writes[0]) != 16<<10 {
		t.Fatalf("got writes of %d bytes, want 2, the first a full TLS record", lens(rec.writes))
	}
	if got := bytes.Join(rec.writes, nil); !bytes.Equal(got, append(bytes.Clone(hdr), body...)) {
		t.Fatal("the bytes written are not the header and then the body")
	}
}

func lens(bs [][]byte) []int {
	var out []int
	for _, b := range bs {
		out = append(out, len(b))
	}
	return out
}

// TestFrameWriterTCP sends frames through the vectored path over loopback
// TCP and reads back exactly the bytes yamux wrote, in order.
func TestFrameWriterTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fw := newFrameWriter(&bufferedConn{Conn: c}, c)
	if !fw.writev {
		t.Fatal("want the vectored path on a TCP connection")
	}
	var want bytes.Buffer
	for i, size := range []int{1, 1000, maxCoalesceCopy + 5, 0, 33} {
		var frame [][]byte
		if size == 0 {
			frame = [][]byte{yamuxHeader(1, 0, uint32(i), 4096)}
		} else {
			body := bytes.Repeat([]byte{byte(i + 1)}, size)
			frame = [][]byte{yamuxHeader(yamuxTypeData, 0, uint32(i), uint32(size)), body}
		}
		for _, p := range frame {
			if n, err := fw.Write(p); n != len(p) || err != nil {
				t.Fatalf("frame %d: Write = %d, %v", i, n, err)
			}
			want.Write(p)
		}
	}
	c.Close()
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("read %d bytes, want the %d written, in order", len(b), want.Len())
	}
}
