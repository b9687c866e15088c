package inspect

import (
	"encoding/binary"
	"errors"
	"io"
	"time"
	"unicode/utf8"
)

// previewLen is how much of a frame's payload a Frame shows.
const previewLen = 100

// startFrames turns direction d over to a frame parser, once the upgrade
// has been read both ways. The bytes d held meanwhile go to it first, in
// order, each with the time and order of the chunk it came in; then the
// direction's taps do.
func (c *Conn) startFrames(d int, ws *wsState) {
	hp := &c.http[d]
	c.wsBase[d] = hp.off
	fp := newFrameParser(d, ws)
	h := &c.dirs[d]
	h.mu.Lock()
	start := 0
	for _, m := range hp.marks {
		fp.push(c.in, hp.held[start:m.end], m.t, m.seq)
		start = m.end
	}
	if hp.overrun {
		fp.fail(c.in, msgFellBehind)
	}
	h.frames = fp
	h.mu.Unlock()
	*hp = httpParser{step: hFrames, off: hp.off}
}

// frameParser reads one direction's RFC 6455 frames from chunks of any
// size as Tap hands them over. It holds a frame's header until it is
// whole, counts the payload past, and keeps only the start of the payload
// that a Frame shows. Between frames it holds no buffer: an idle WebSocket
// costs two of these.
type frameParser struct {
	ws    *wsState
	hdr   [2 + 8 + 4]byte // the header so far: 2 bytes, an extended length, a masking key
	hn    uint8           // bytes in hdr
	hlen  uint8           // bytes hdr must hold for the next step
	step  uint8           // stepHead, stepLength, stepKey, stepPayload
	dir   uint8
	msgOp uint8 // opcode of the data message in progress, for continuations
	done  bool  // not WebSocket, capture stopped, or the connection ended
	// msgDeflated says that message is compressed (permessage-deflate):
	// RSV1 is set on its first frame only (RFC 7692 section 6.1).
	msgDeflated bool

	at   time.Time // when the frame's first byte arrived
	seq  int64     // and the order of its chunk among both directions'
	size int64     // payload length
	left int64     // payload bytes still to come
	// preview is the unmasked start of the payload, up to its capacity:
	// nil when the Frame shows nothing of it.
	preview []byte
}

// The steps of a frame: each waits for hn to reach hlen.
const (
	stepHead    = iota // the first 2 bytes
	stepLength         // the extended payload length, if any
	stepKey            // the masking key, if any
	stepPayload        // the payload, counted down in left
)

func newFrameParser(dir int, ws *wsState) *frameParser {
	return &frameParser{ws: ws, dir: uint8(dir), hlen: 2}
}

var (
	errBadOpcode = errors.New("not a WebSocket frame (reserved opcode)")
	errBadLength = errors.New("not a WebSocket frame (bad length)")
)

// push parses p, which arrived at t in the chunk numbered seq, and records
// each frame once its last byte has come.
func (fp *frameParser) push(in *Inspector, p []byte, t time.Time, seq int64) {
	for len(p) > 0 && !fp.done {
		if fp.step == stepPayload {
			n := int(min(int64(len(p)), fp.left))
			fp.keep(p[:n])
			fp.left -= int64(n)
			p = p[n:]
			if fp.left == 0 {
				fp.record(in)
			}
			continue
		}
		if fp.hn == 0 {
			fp.at, fp.seq = t, seq
		}
		n := copy(fp.hdr[fp.hn:fp.hlen], p)
		fp.hn += uint8(n)
		p = p[n:]
		fp.header(in)
	}
}

// header takes the steps of a frame header (RFC 6455 section 5.2) that
// the bytes in hdr allow.
func (fp *frameParser) header(in *Inspector) {
	for fp.hn == fp.hlen && fp.step != stepPayload && !fp.done {
		h := &fp.hdr
		switch fp.step {
		case stepHead:
			if opName(int(h[0]&0x0f)) == "reserved" {
				fp.fail(in, errBadOpcode.Error())
				return
			}
			switch h[1] & 0x7f {
			case 126:
				fp.hlen += 2
			case 127:
				fp.hlen += 8
			}
			fp.step = stepLength
		case stepLength:
			n := int64(h[1] & 0x7f)
			switch n {
			case 126:
				n = int64(binary.BigEndian.Uint16(h[2:4]))
			case 127:
				u := binary.BigEndian.Uint64(h[2:10])
				if u>>63 != 0 {
					fp.fail(in, errBadLength.Error())
					return
				}
				n = int64(u)
			}
			if fin, op := h[0]&0x80 != 0, h[0]&0x0f; op >= 8 && (n > 125 || !fin) {
				fp.fail(in, errBadLength.Error())
				return
			}
			fp.size, fp.left = n, n
			if fp.masked() {
				fp.hlen += 4
			}
			fp.step = stepKey
		case stepKey:
			fp.step = stepPayload
			if n := fp.previewSize(); n > 0 {
				fp.preview = make([]byte, 0, n)
			}
			if fp.left == 0 {
				fp.record(in)
			}
		}
	}
}

func (fp *frameParser) masked() bool { return fp.hdr[1]&0x80 != 0 }

// previewSize is how much of the payload the Frame shows: control frames
// whole (≤125 bytes), the start of text, nothing of binary or compressed
// data.
func (fp *frameParser) previewSize() int {
	op, compressed := fp.hdr[0]&0x0f, fp.compressed()
	switch {
	case compressed:
		return 0
	case op >= 8:
		return int(fp.size)
	case op == 1 || (op == 0 && fp.msgOp == 1):
		return int(min(fp.size, previewLen))
	}
	return 0
}

// compressed reports whether the frame's payload is compressed: RSV1 on
// it, or on the first frame of the message it continues.
func (fp *frameParser) compressed() bool {
	return fp.hdr[0]&0x40 != 0 || (fp.hdr[0]&0x0f == 0 && fp.msgDeflated)
}

// keep adds the start of b, the next payload bytes, to the preview.
func (fp *frameParser) keep(b []byte) {
	i := len(fp.preview)
	b = b[:min(len(b), cap(fp.preview)-i)]
	if len(b) == 0 {
		return
	}
	fp.preview = append(fp.preview, b...)
	if fp.masked() {
		key := fp.hdr[fp.hlen-4 : fp.hlen]
		for ; i < len(fp.preview); i++ {
			fp.preview[i] ^= key[i%4]
		}
	}
}

// record reports the frame that just ended and gets ready for the next.
func (fp *frameParser) record(in *Inspector) {
	h := &fp.hdr
	fr := Frame{
		Time: fp.at, Dir: dirNames[fp.dir],
		Opcode: int(h[0] & 0x0f), Fin: h[0]&0x80 != 0, Compressed: fp.compressed(),
		Masked: fp.masked(), Size: fp.size, seq: fp.seq,
	}
	fr.Op = opName(fr.Opcode)
	op, buf := fr.Opcode, fp.preview
	if op == 1 || op == 2 {
		fp.msgOp, fp.msgDeflated = uint8(op), fr.Compressed
	}
	switch {
	case fr.Compressed:
	case op == 8:
		if len(buf) >= 2 {
			fr.CloseCode = int(binary.BigEndian.Uint16(buf))
			fr.Preview = validPrefix(buf[2:])
		} else {
			fr.CloseCode = 1005 // no status code present
		}
	case op == 1 || (op == 0 && fp.msgOp == 1) || op == 9 || op == 10:
		fr.Preview = validPrefix(buf)
	}
	message := fr.Fin && (op == 1 || op == 2 || op == 0)
	fp.hn, fp.hlen, fp.step, fp.preview = 0, 2, stepHead, nil
	in.addFrame(fp.ws, int(fp.dir), fr, message)
}

// fail records why this direction's frames are no longer parsed.
func (fp *frameParser) fail(in *Inspector, msg string) {
	fp.done, fp.preview = true, nil
	in.wsError(fp.ws, "frames "+dirNames[fp.dir]+": "+msg)
}

// end says the connection has ended: a frame begun is cut short.
func (fp *frameParser) end(in *Inspector) {
	switch {
	case fp.done:
		return
	case fp.step == stepPayload:
		fp.fail(in, "frame cut short")
		return
	case fp.hn > 0:
		// As io.ReadFull reports a header part cut before or after its
		// first byte.
		err := io.ErrUnexpectedEOF
		if (fp.step == stepLength && fp.hn == 2) || (fp.step == stepKey && fp.hn == fp.hlen-4) {
			err = io.EOF
		}
		fp.fail(in, err.Error())
		return
	}
	fp.done = true
}

// validPrefix returns b as text, without a rune cut at its end, or "" if it
// is not UTF-8.
func validPrefix(b []byte) string {
	for i := 0; i < utf8.UTFMax && len(b) > 0 && !utf8.Valid(b); i++ {
		b = b[:len(b)-1]
	}
	if !utf8.Valid(b) {
		return ""
	}
	return string(b)
}
