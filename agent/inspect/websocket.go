package inspect

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"time"
	"unicode/utf8"
)

// previewLen is how much of a frame's payload a Frame shows.
const previewLen = 100

// startFrames hands direction d over from its HTTP parser, which has just
// read the end of the upgrade, to a frame parser that Tap drives. br may
// have read ahead of the upgrade and f may hold bytes br has not read yet:
// they go to the frame parser first, in order, each with the time and
// order of the chunk it came in. Taps of d wait on the direction's lock
// meanwhile, and go to the frame parser once it is in place.
func (c *Conn) startFrames(d int, f *feed, br *bufio.Reader, ws *wsState) {
	h := &c.dirs[d]
	h.mu.Lock()
	defer h.mu.Unlock()
	ahead, _ := br.Peek(br.Buffered())
	rest, restOff, marks, overrun := f.handOver()
	base := restOff - int64(len(ahead))
	c.mu.Lock()
	c.wsBase[d] = base
	c.mu.Unlock()

	fp := newFrameParser(d, ws)
	// push hands over the backlog's bytes between offsets from and to,
	// which may straddle ahead and rest.
	push := func(from, to int64, t time.Time, seq int64) {
		if n := int64(len(ahead)); from-base < n {
			fp.push(c.in, ahead[from-base:min(to-base, n)], t, seq)
		}
		if from < restOff && to > restOff {
			from = restOff
		}
		if from >= restOff && to > from {
			fp.push(c.in, rest[from-restOff:to-restOff], t, seq)
		}
	}
	// The chunks' marks, as feed.markAt reads them, in one pass.
	for off, end, i := base, restOff+int64(len(rest)), 0; off < end; {
		for i < len(marks)-1 && marks[i].end <= off {
			i++
		}
		var m mark
		if i < len(marks) {
			m = marks[i]
		} else {
			m = mark{t: time.Now(), seq: 1<<63 - 1}
		}
		to := end
		if m.end > off {
			to = min(m.end, end)
		}
		push(off, to, m.t, m.seq)
		off = to
	}
	if overrun {
		fp.fail(c.in, "capture stopped: the inspector fell behind the traffic")
	}
	h.feed, h.frames = nil, fp
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
	op, compressed := fp.hdr[0]&0x0f, fp.hdr[0]&0x40 != 0
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
		Opcode: int(h[0] & 0x0f), Fin: h[0]&0x80 != 0, Compressed: h[0]&0x40 != 0,
		Masked: fp.masked(), Size: fp.size, seq: fp.seq,
	}
	fr.Op = opName(fr.Opcode)
	op, buf := fr.Opcode, fp.preview
	if op == 1 || op == 2 {
		fp.msgOp = uint8(op)
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
