package inspect

import "time"

// httpParser reads one direction's HTTP/1.1 messages from chunks of any
// size as Tap hands them over, as frameParser reads frames: it keeps the
// bytes of a head only until the head is whole, then counts the body
// past, keeping its preview, and tells its Conn what it found. Between
// messages it holds no buffer: an idle keep-alive connection costs two
// of these.
//
// Its Conn's mu guards it: a response is read knowing its request, and
// the end of an upgrade turns both directions over at once.
type httpParser struct {
	step     uint8
	sizeStep uint8 // in a chunk-size line: sizeDigits, sizeSpace, sizeExt, sizeCR
	digits   uint8 // hex digits of the chunk size so far
	colon    bool  // the trailer line so far has a colon
	lineOK   bool  // the head's first line is whole and valid
	draining bool  // drain is at work on held
	overrun  bool  // bytes went past holdMax and were dropped

	line    int   // bytes of the chunk-size line, or of the trailer line, so far
	section int   // bytes of the trailer section so far
	left    int64 // bytes of the body or chunk still to come
	off     int64 // bytes of the direction parsed, those held excepted

	head []byte    // the head so far, while it is not whole
	at   time.Time // when the head's first byte came
	last time.Time // when the last byte of a body read to the end came
	p    *pending  // the exchange of the message under way
	body *Body     // and its body being read

	// held are bytes that wait for the other direction, and marks the
	// chunks they came in.
	held  []byte
	marks []mark
}

// mark is a chunk that held holds: where it ends in held, when it came,
// and its order among both directions' chunks.
type mark struct {
	end int
	t   time.Time
	seq int64
}

// The steps of an httpParser.
const (
	hHead      = iota // a head, or the gap between messages
	hLength           // a body of known length: left to come
	hChunkSize        // a chunk-size line
	hChunkData        // chunk data: left to come
	hChunkEnd         // the CRLF after chunk data: line of it read
	hTrailer          // the trailer section, to its empty line
	hToEnd            // a response body that ends with the connection
	hWait             // waiting for the other direction (see Conn.waits)
	hFrames           // WebSocket frames: the direction's frameParser reads them
	hOff              // not HTTP, or capture stopped: bytes are only counted
)

// The parts of a chunk-size line.
const (
	sizeDigits = iota
	sizeSpace  // white space after the digits
	sizeExt    // an extension, which runs to the line's end
	sizeCR     // the CR that ends the line
)

const (
	// holdMax bounds the bytes a direction holds while it waits for the
	// other: responses that came before their request was whole, and
	// what follows an upgrade until its outcome is known. Beyond it
	// capture of the direction stops, as it did when a parser fell that
	// far behind: the message is the same.
	holdMax = 1 << 20
	// maxChunkLine bounds a chunk-size line, extensions included, as
	// net/http does.
	maxChunkLine = 4096
)

const msgFellBehind = "capture stopped: the inspector fell behind the traffic"

// took counts n bytes of the direction as parsed, and returns n. Steps
// call it before they act on what they read, so that an upgrade that
// turns the direction over sees where the frames begin.
func (hp *httpParser) took(n int) int {
	hp.off += int64(n)
	return n
}

// hold keeps b, which arrived at t in the chunk numbered seq, until the
// direction may go on, or drops it past holdMax.
func (hp *httpParser) hold(b []byte, t time.Time, seq int64) {
	if hp.overrun {
		return
	}
	if len(hp.held)+len(b) > holdMax {
		hp.overrun, hp.held, hp.marks = true, nil, nil
		return
	}
	hp.held = append(hp.held, b...)
	hp.marks = append(hp.marks, mark{end: len(hp.held), t: t, seq: seq})
}

// push parses b, which arrived at t in the chunk numbered seq, as far as
// direction d can go now; the rest waits in held.
func (c *Conn) push(d int, b []byte, t time.Time, seq int64) {
	hp := &c.http[d]
	for len(b) > 0 {
		switch {
		case hp.step == hOff:
			return
		case hp.step == hFrames:
			h := &c.dirs[d]
			h.mu.Lock()
			h.frames.push(c.in, b, t, seq)
			h.mu.Unlock()
			return
		case hp.held != nil || hp.overrun || c.waits(d):
			hp.hold(b, t, seq)
			return
		}
		b = b[c.parse(d, b, t):]
	}
}

// waits reports whether direction d must hold its bytes for now: requests
// that follow an upgrade, until its response says whether they are still
// HTTP; a response, until the head of its request has been read (a
// server may answer early); what follows a 101, until its request has
// been read to its end.
func (c *Conn) waits(d int) bool {
	hp := &c.http[d]
	return hp.step == hWait || (d == dirOut && hp.step == hHead && len(hp.head) == 0 && c.target() == nil)
}

// drain parses what direction d held, now that it may go on. Parsing may
// make d wait again: what is left is held again, in order.
func (c *Conn) drain(d int) {
	hp := &c.http[d]
	if hp.draining {
		return // the loop below goes on with what is held meanwhile
	}
	hp.draining = true
	for (hp.held != nil || hp.overrun) && !c.waits(d) && hp.step != hOff && hp.step != hFrames {
		if hp.overrun {
			hp.overrun = false
			if d == dirOut {
				c.stopCapture(c.target(), msgFellBehind)
			} else {
				c.stopRequests()
			}
			break
		}
		held, marks := hp.held, hp.marks
		hp.held, hp.marks = nil, nil
		start := 0
		for _, m := range marks {
			c.push(d, held[start:m.end], m.t, m.seq)
			start = m.end
		}
	}
	hp.draining = false
}

// parse takes the next step of direction d in b, which arrived at t, and
// returns how many bytes it read, at least one.
func (c *Conn) parse(d int, b []byte, t time.Time) int {
	hp := &c.http[d]
	switch hp.step {
	case hHead:
		return c.head(d, b, t)
	case hLength, hChunkData:
		return c.bodyBytes(d, b, t)
	case hChunkSize:
		return c.chunkSize(d, b)
	case hChunkEnd:
		return c.chunkEnd(d, b)
	case hTrailer:
		return c.trailer(d, b, t)
	}
	// hToEnd
	c.in.keep(hp.body, b)
	hp.last = t
	return hp.took(len(b))
}

// head reads a message's head, keeping its bytes only while it is not
// whole, and parses it once it is.
func (c *Conn) head(d int, b []byte, t time.Time) int {
	hp := &c.http[d]
	skip := 0
	if len(hp.head) == 0 {
		// Empty lines before a message are ignored (RFC 9112 section
		// 2.2): some peers send one too many after a body.
		for skip < len(b) && (b[skip] == '\r' || b[skip] == '\n') {
			skip++
		}
		if skip == len(b) {
			return hp.took(skip)
		}
		hp.at = t
	}
	end := headEnd(hp.head, b[skip:])
	n := skip + end
	if end < 0 {
		n = len(b)
	}
	// The head so far: past its bound, it is too long already.
	limit := headLimit(d == dirIn)
	block := b[skip:n]
	if len(hp.head) > 0 || end < 0 {
		block = append(hp.head, block[:min(len(block), limit+1-len(hp.head))]...)
	}
	from := len(hp.head)
	hp.head = nil
	hp.took(n)
	// A whole head's first line is checked as it is parsed, the same way.
	if !hp.lineOK && (end < 0 || len(block) > limit) {
		ok, err := startCheck(d == dirIn, block, from)
		if err != nil {
			c.badHead(d, err)
			return n
		}
		hp.lineOK = ok
	}
	switch {
	case len(block) > limit:
		c.badHead(d, errHeadTooLong)
	case end < 0:
		hp.head = block
	case d == dirIn:
		hp.lineOK = false
		c.request(block, t)
	default:
		hp.lineOK = false
		c.response(block, t)
	}
	return n
}

// request starts the exchange of a request whose head is block.
func (c *Conn) request(block []byte, t time.Time) {
	r, err := parseRequest(block)
	var chunked bool
	var n int64
	if err == nil {
		chunked, n, err = framing(r.header, r.http11, false)
	}
	if err != nil {
		c.badHead(dirIn, err)
		return
	}
	hp := &c.http[dirIn]
	ex := &Exchange{
		Tunnel: c.info.Tunnel, Local: c.info.Local, Remote: c.info.Remote, Time: hp.at,
		Method: r.method, Path: r.target, Proto: r.proto, Host: r.host,
		RequestHeader: r.header, localTLS: c.info.TLS,
	}
	p := &pending{ex: ex, upgrade: headerHas(r.header, "Connection", "upgrade")}
	p.wantWS = p.upgrade && headerHas(r.header, "Upgrade", "websocket")
	c.seen = true
	c.open = append(c.open, p)
	hp.p, hp.body = p, &ex.RequestBody
	c.startBody(dirIn, chunked, n, t)
	c.drain(dirOut) // responses that came early
}

// response reads the head, block, of the response to the oldest request
// without one.
func (c *Conn) response(block []byte, t time.Time) {
	p := c.target()
	r, err := parseResponse(block)
	var chunked bool
	var n int64
	if err == nil {
		chunked, n, err = framing(r.header, r.http11, true)
	}
	if err != nil {
		c.badHead(dirOut, err)
		return
	}
	if r.status < 200 && r.status != 101 {
		return // interim (100 Continue, 103 Early Hints): the response follows
	}
	ex := p.ex
	ex.Status, ex.StatusText, ex.ResponseHeader = r.status, r.text, r.header
	hp := &c.http[dirOut]
	hp.p, hp.body = p, &ex.ResponseBody
	switch {
	case r.status == 101 || (ex.Method == "CONNECT" && r.status/100 == 2):
		// The connection carries another protocol from now on: a
		// WebSocket if both sides said so.
		p.switched = switchOther
		if r.status == 101 && p.wantWS && headerHas(r.header, "Upgrade", "websocket") {
			p.switched = switchWS
		}
		c.responseDone(t)
	case ex.Method == "HEAD" || r.status == 204 || r.status == 304:
		c.startBody(dirOut, false, 0, t)
	default:
		c.startBody(dirOut, chunked, n, t)
	}
}

// startBody sets direction d to read the body of the message whose head
// ended at t: chunked, or of n bytes, or to the connection's end (n < 0).
func (c *Conn) startBody(d int, chunked bool, n int64, t time.Time) {
	hp := &c.http[d]
	switch {
	case chunked:
		hp.startChunk()
	case n > 0:
		hp.step, hp.left = hLength, n
		hp.body.Data = make([]byte, 0, min(n, int64(c.in.opts.BodyCap)))
	case n == 0:
		c.bodyDone(d, t)
	default:
		hp.step, hp.last = hToEnd, t
	}
}

// keep counts p, the next bytes of a body, and keeps what of them fits in
// the preview.
func (in *Inspector) keep(b *Body, p []byte) {
	b.Size += int64(len(p))
	if room := in.opts.BodyCap - len(b.Data); room > 0 {
		b.Data = append(b.Data, p[:min(room, len(p))]...)
	}
}

// bodyBytes reads body or chunk data.
func (c *Conn) bodyBytes(d int, b []byte, t time.Time) int {
	hp := &c.http[d]
	n := hp.took(int(min(int64(len(b)), hp.left)))
	c.in.keep(hp.body, b[:n])
	hp.left -= int64(n)
	switch {
	case hp.left > 0:
	case hp.step == hChunkData:
		hp.step, hp.line = hChunkEnd, 0
	default:
		c.bodyDone(d, t)
	}
	return n
}

func (hp *httpParser) startChunk() {
	hp.step, hp.sizeStep, hp.digits, hp.line, hp.left = hChunkSize, sizeDigits, 0, 0, 0
}

// chunkSize reads a chunk-size line (RFC 9112 section 7.1): hex digits,
// then white space and extensions, which net/http does not check either,
// to a CRLF. Like net/http, and unlike in heads, a bare LF or a lone CR
// is refused: peers that disagree on where a chunk ends are how requests
// are smuggled.
func (c *Conn) chunkSize(d int, b []byte) int {
	hp := &c.http[d]
	for i, ch := range b {
		hp.line++
		switch v := unhex(ch); {
		case hp.line > maxChunkLine:
			return c.badBody(d, i+1, "chunk-size line too long")
		case hp.sizeStep == sizeCR:
			if ch != '\n' {
				return c.badBody(d, i+1, "CR without LF in chunk-size line")
			}
			hp.took(i + 1)
			if hp.left > 0 {
				hp.step = hChunkData
			} else {
				hp.step, hp.line, hp.section, hp.colon = hTrailer, 0, 0, false
			}
			return i + 1
		case ch == '\n':
			return c.badBody(d, i+1, "chunk-size line ends with bare LF")
		case hp.sizeStep == sizeExt && ch != '\r':
		case hp.sizeStep == sizeDigits && v >= 0:
			if hp.digits == 15 {
				return c.badBody(d, i+1, "chunk size too large")
			}
			hp.left, hp.digits = hp.left<<4|int64(v), hp.digits+1
		case hp.digits == 0:
			return c.badBody(d, i+1, "invalid byte in chunk size")
		case ch == '\r':
			hp.sizeStep = sizeCR
		case ch == ';':
			hp.sizeStep = sizeExt
		case ch == ' ' || ch == '\t':
			hp.sizeStep = sizeSpace
		default:
			return c.badBody(d, i+1, "invalid byte in chunk size")
		}
	}
	return hp.took(len(b))
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// chunkEnd reads the CRLF after chunk data, which net/http requires.
func (c *Conn) chunkEnd(d int, b []byte) int {
	hp := &c.http[d]
	if b[0] != "\r\n"[hp.line] {
		return c.badBody(d, 1, "malformed chunked encoding")
	}
	hp.took(1)
	if hp.line++; hp.line == 2 {
		hp.startChunk()
	}
	return 1
}

// trailer reads the trailer section after the last chunk, to its empty
// line. Its fields are not kept: net/http keeps them apart from the
// header, and the inspector never showed them.
func (c *Conn) trailer(d int, b []byte, t time.Time) int {
	hp := &c.http[d]
	for i, ch := range b {
		if hp.section++; hp.section > headMax {
			return c.badBody(d, i+1, "trailer section longer than 64 KiB")
		}
		switch {
		case ch == '\r':
		case ch != '\n':
			hp.line++
			hp.colon = hp.colon || ch == ':'
		case hp.line == 0:
			hp.took(i + 1)
			c.bodyDone(d, t)
			return i + 1
		case !hp.colon:
			return c.badBody(d, i+1, "malformed trailer line")
		default:
			hp.line, hp.colon = 0, false
		}
	}
	return hp.took(len(b))
}

// bodyDone ends the message of direction d, whose last byte came at t.
func (c *Conn) bodyDone(d int, t time.Time) {
	b := c.http[d].body
	b.Truncated = int64(len(b.Data)) < b.Size
	if d == dirIn {
		c.requestDone()
	} else {
		c.responseDone(t)
	}
}

// badBody stops the reading of a body that is not valid HTTP/1.1 at n
// bytes into the chunk, and returns n. As the body of a request, the
// exchange still gets its response.
func (c *Conn) badBody(d, n int, msg string) int {
	hp := &c.http[d]
	hp.took(n)
	hp.body.Truncated = true
	if d == dirOut {
		c.stopCapture(hp.p, "capture stopped: response body is not valid HTTP/1.1: "+msg)
		return n
	}
	p := hp.p
	p.ex.setError("capture stopped: request body is not valid HTTP/1.1: " + msg)
	p.reqDone = true
	c.stopRequests()
	if p.respDone {
		c.finish(p)
	}
	return n
}

// badHead stops the reading of direction d at a head that is not valid
// HTTP/1.1. The first request's tells that the connection is not HTTP.
func (c *Conn) badHead(d int, err error) {
	switch {
	case d == dirOut:
		msg := "capture stopped: response is not valid HTTP/1.1: " + err.Error()
		if err == errHeadTooLong {
			msg = "capture stopped: the response head is longer than 64 KiB"
		}
		c.stopCapture(c.target(), msg)
	case !c.seen:
		c.in.log.Debug("inspect: not an HTTP request; counting bytes only", "tunnel", c.info.Tunnel, "err", err)
		c.setOff(dirIn)
		c.setOff(dirOut)
	default:
		c.in.log.Debug("inspect: a request is not valid HTTP/1.1; capture stopped", "tunnel", c.info.Tunnel, "err", err)
		c.stopRequests()
	}
}

// end says direction d has ended: a message under way was cut short, but
// a body that ends with the connection is whole.
func (c *Conn) end(d int) {
	hp := &c.http[d]
	switch hp.step {
	case hToEnd:
		c.bodyDone(d, hp.last)
	case hLength, hChunkSize, hChunkData, hChunkEnd, hTrailer:
		hp.body.Truncated = true
		p := hp.p
		if d == dirOut {
			p.ex.setError("response body cut short: the connection ended")
			return
		}
		p.ex.setError("request body cut short: the connection ended")
		p.reqDone = true
		if p.respDone {
			c.finish(p)
		}
	case hHead:
		if d == dirOut && len(hp.head) > 0 {
			c.target().ex.setError("response cut short: the connection ended")
		}
	}
}

// setError records the first thing that went wrong with e.
func (e *Exchange) setError(msg string) {
	if e.Error == "" {
		e.Error = msg
	}
}
