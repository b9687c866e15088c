package tunnel

import (
	"encoding/binary"
	"io"
	"net"
)

// yamux frame header: version(1) type(1) flags(2) stream(4) length(4).
const (
	yamuxVersion  = 0
	yamuxTypeData = 0
)

// maxCoalesceCopy is the largest data frame frameWriter copies into one
// buffer with its header when the connection cannot take a vectored write.
// A larger body goes out as two writes: the header with the body's first
// tlsRecordLead bytes, one full TLS record, then the rest, so that the
// header never costs a record (and a system call) of its own.
const (
	maxCoalesceCopy = 64 << 10
	tlsRecordLead   = 16<<10 - frameHeaderLen
)

// frameWriter sits between a yamux session and its connection. yamux's send
// loop writes every frame as two calls, the 12-byte header and then the
// body; on a socket that is two system calls (and on TLS two records) per
// frame. frameWriter holds the header of a data frame that announces a
// body and sends it together with the body that the send loop writes next:
// one writev(2) on a plain TCP connection, one buffer otherwise. Every
// other header (window updates, pings, go-away, data frames without a body)
// is written at once, so nothing is ever held waiting for a write that does
// not come.
//
// Only yamux's send loop writes, one call at a time, so frameWriter needs no
// lock. Reads, Close and the rest go to the wrapped connection.
type frameWriter struct {
	net.Conn           // reads (possibly through a Guard), Close, addresses
	w        io.Writer // where frames are written

	writev bool // w is a socket that takes vectored writes
	hdr    [frameHeaderLen]byte
	held   bool
	vec    [2][]byte
	bufs   net.Buffers
	buf    []byte // the copy path's buffer, grown up to maxCoalesceCopy
}

// newFrameWriter returns conn for yamux with frame writes coalesced onto
// raw, the connection conn eventually writes to (conn may be a Guard around
// it: the Guard only reads).
func newFrameWriter(conn, raw net.Conn) *frameWriter {
	raw = unwrapWriter(raw)
	fw := &frameWriter{Conn: conn, w: raw}
	switch raw.(type) {
	case *net.TCPConn, *net.UnixConn:
		fw.writev = true
	}
	return fw
}

// unwrapWriter returns the connection c's writes go to unchanged, seeing
// through our own read-side wrappers (and so the one c reads from, for
// unread).
func unwrapWriter(c net.Conn) net.Conn {
	for {
		switch w := c.(type) {
		case *bufferedConn:
			c = w.Conn
		case *Guard:
			c = w.Conn
		default:
			return c
		}
	}
}

func (f *frameWriter) Write(p []byte) (int, error) {
	if f.held {
		f.held = false
		return f.writeFrame(p)
	}
	if len(p) == frameHeaderLen && p[0] == yamuxVersion && p[1] == yamuxTypeData &&
		binary.BigEndian.Uint32(p[8:12]) > 0 {
		copy(f.hdr[:], p)
		f.held = true
		return len(p), nil
	}
	return f.w.Write(p)
}

// writeFrame writes the held header and body p in one call where it can.
// It reports the body bytes written.
func (f *frameWriter) writeFrame(p []byte) (int, error) {
	if f.writev {
		f.vec[0], f.vec[1] = f.hdr[:], p
		f.bufs = f.vec[:]
		n, err := f.bufs.WriteTo(f.w)
		f.vec[0], f.vec[1] = nil, nil
		return bodyWritten(n), err
	}
	if len(p) <= maxCoalesceCopy {
		n, err := f.w.Write(f.copyWithHeader(p))
		return bodyWritten(int64(n)), err
	}
	lead := f.copyWithHeader(p[:tlsRecordLead])
	n, err := f.w.Write(lead)
	if err != nil {
		return bodyWritten(int64(n)), err
	}
	m, err := f.w.Write(p[tlsRecordLead:])
	return tlsRecordLead + m, err
}

// copyWithHeader returns the held header followed by p, in f's buffer.
func (f *frameWriter) copyWithHeader(p []byte) []byte {
	if cap(f.buf) < frameHeaderLen+len(p) {
		f.buf = make([]byte, 0, min(maxCoalesceCopy+frameHeaderLen, max(2*cap(f.buf), frameHeaderLen+len(p))))
	}
	return append(append(f.buf[:0], f.hdr[:]...), p...)
}

func bodyWritten(n int64) int {
	if n < frameHeaderLen {
		return 0
	}
	return int(n - frameHeaderLen)
}
