package inspect

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"unicode/utf8"
)

// previewLen is how much of a frame's payload a Frame shows.
const previewLen = 100

// frames parses RFC 6455 frames of one direction until the stream ends or
// is not WebSocket, recording each frame in ws.
func (c *Conn) frames(br *bufio.Reader, dir int, ws *wsState) {
	f := c.feeds[dir]
	c.mu.Lock()
	c.wsBase[dir] = consumed(f, br)
	c.mu.Unlock()
	var msgOp int // opcode of the data message in progress, for continuations
	var hdr [8]byte
	for {
		if _, err := br.Peek(1); err != nil {
			if errors.Is(err, errOverrun) {
				c.in.wsError(ws, "frames "+dirNames[dir]+": capture stopped: the inspector fell behind the traffic")
			}
			return
		}
		at := f.markAt(consumed(f, br))
		fr, payload, err := readFrameHeader(br, hdr[:])
		if err != nil {
			c.in.wsError(ws, "frames "+dirNames[dir]+": "+err.Error())
			return
		}
		fr.Time, fr.Dir, fr.seq = at.t, dirNames[dir], at.seq
		// The preview: control frames whole (≤125 bytes), data frames' start.
		want := min(payload.n, previewLen)
		if fr.Opcode >= 8 {
			want = payload.n
		}
		buf := make([]byte, want)
		if _, err := io.ReadFull(br, buf); err != nil {
			c.in.wsError(ws, "frames "+dirNames[dir]+": frame cut short")
			return
		}
		if payload.masked {
			for i := range buf {
				buf[i] ^= payload.key[i%4]
			}
		}
		if payload.n > want {
			if _, err := br.Discard(int(payload.n - want)); err != nil {
				c.in.wsError(ws, "frames "+dirNames[dir]+": frame cut short")
				return
			}
		}
		op := fr.Opcode
		if op == 1 || op == 2 {
			msgOp = op
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
		case op == 1 || (op == 0 && msgOp == 1) || op == 9 || op == 10:
			fr.Preview = validPrefix(buf)
		}
		message := fr.Fin && (op == 1 || op == 2 || op == 0)
		c.in.addFrame(ws, dir, fr, message)
	}
}

type payloadInfo struct {
	n      int64
	masked bool
	key    [4]byte
}

var (
	errBadOpcode = errors.New("not a WebSocket frame (reserved opcode)")
	errBadLength = errors.New("not a WebSocket frame (bad length)")
)

// readFrameHeader reads a frame header (RFC 6455 section 5.2).
func readFrameHeader(br *bufio.Reader, hdr []byte) (Frame, payloadInfo, error) {
	var fr Frame
	var p payloadInfo
	if _, err := io.ReadFull(br, hdr[:2]); err != nil {
		return fr, p, err
	}
	fr.Fin = hdr[0]&0x80 != 0
	fr.Compressed = hdr[0]&0x40 != 0
	fr.Opcode = int(hdr[0] & 0x0f)
	fr.Op = opName(fr.Opcode)
	if fr.Op == "reserved" {
		return fr, p, errBadOpcode
	}
	p.masked = hdr[1]&0x80 != 0
	fr.Masked = p.masked
	n := int64(hdr[1] & 0x7f)
	switch n {
	case 126:
		if _, err := io.ReadFull(br, hdr[:2]); err != nil {
			return fr, p, err
		}
		n = int64(binary.BigEndian.Uint16(hdr[:2]))
	case 127:
		if _, err := io.ReadFull(br, hdr[:8]); err != nil {
			return fr, p, err
		}
		u := binary.BigEndian.Uint64(hdr[:8])
		if u>>63 != 0 {
			return fr, p, errBadLength
		}
		n = int64(u)
	}
	if fr.Opcode >= 8 && (n > 125 || !fr.Fin) {
		return fr, p, errBadLength
	}
	if p.masked {
		if _, err := io.ReadFull(br, p.key[:]); err != nil {
			return fr, p, err
		}
	}
	p.n = n
	fr.Size = n
	return fr, p, nil
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
