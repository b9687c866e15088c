package proto

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"unicode/utf8"
)

// StreamCodec writes and reads the two frames that open every data stream,
// StreamHeader and StreamReply, without allocating once it is warm: the
// relay and the agent exchange them for every visitor connection, and
// WriteMessage and ReadMessage cost a dozen allocations each time through
// encoding/json.
//
// The wire format does not change. A write produces exactly the bytes of
// WriteMessage. A read behaves exactly as ReadAs does, with the same result
// or the same error, and reads no further than the frame: a small parser
// handles the flat objects that peers actually send, and hands any frame it
// does not fully understand (string escapes, null, a key that differs only
// in case, deep nesting, invalid JSON, another message type…) to
// encoding/json, as ReadMessage would.
//
// The zero value is ready to use. A StreamCodec is not safe for concurrent
// use; give each goroutine its own, or keep them in a sync.Pool.
type StreamCodec struct {
	buf []byte // the frame being written or read

	// Tunnel names and visitor IPs read, so that reading them again
	// allocates nothing: a name is interned, and an IP is looked up by its
	// text (netip.ParseAddrPort copies its argument to the heap on every
	// call). Both are bounded, and cleared when full.
	names map[string]string
	addrs map[string]netip.Addr // by the text before the port: "192.0.2.1", "[2001:db8::1]"
}

const (
	codecBufSize   = 512 // frames up to this size reuse the codec's buffer
	maxNames       = 64  // an agent serves at most 16 names
	maxAddrs       = 256
	maxAddrTextLen = 64 // longer IP texts (long zones) are not cached
)

// WriteStreamHeader writes h as one frame, in a single Write.
func (c *StreamCodec) WriteStreamHeader(w io.Writer, h *StreamHeader) error {
	b := c.begin()
	b = append(b, `{"name":`...)
	b = appendString(b, h.Name)
	if h.Remote != (netip.AddrPort{}) {
		// As encoding/json writes a TextMarshaler (AppendText is
		// MarshalText without the allocation).
		var text [64]byte
		t, _ := h.Remote.AppendText(text[:0])
		b = append(b, `,"remote":`...)
		b = appendString(b, t)
	}
	if h.Scheme != "" {
		b = append(b, `,"scheme":`...)
		b = appendString(b, h.Scheme)
	}
	b = append(b, '}')
	return c.send(w, TypeStreamHeader, b)
}

// WriteStreamReply writes rep as one frame, in a single Write.
func (c *StreamCodec) WriteStreamReply(w io.Writer, rep *StreamReply) error {
	b := c.begin()
	if rep.Error == nil {
		b = append(b, "{}"...)
	} else {
		b = append(b, `{"error":{"code":`...)
		b = strconv.AppendInt(b, int64(rep.Error.Code), 10)
		b = append(b, `,"message":`...)
		b = appendString(b, rep.Error.Message)
		b = append(b, "}}"...)
	}
	return c.send(w, TypeStreamReply, b)
}

// ReadStreamHeader reads one frame into h, as ReadAs[*StreamHeader] does:
// an Error frame is returned as the error, any other type is an error. On
// error h is zero.
func (c *StreamCodec) ReadStreamHeader(r io.Reader, h *StreamHeader) error {
	*h = StreamHeader{}
	t, body, err := c.readFrame(r)
	if err != nil {
		return err
	}
	if t == TypeStreamHeader && c.parseStreamHeader(body, h) {
		return nil
	}
	*h = StreamHeader{}
	m, err := decode(t, body)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case *StreamHeader:
		*h = *m
		return nil
	case *Error:
		return m
	}
	return fmt.Errorf("proto: expected %v, got %v", TypeStreamHeader, t)
}

// ReadStreamReply reads one frame into rep, as ReadAs[*StreamReply] does: an
// Error frame is returned as the error, any other type is an error. A
// reply that carries an Error is not an error here; the caller checks
// rep.Error. On error rep is zero.
func (c *StreamCodec) ReadStreamReply(r io.Reader, rep *StreamReply) error {
	*rep = StreamReply{}
	t, body, err := c.readFrame(r)
	if err != nil {
		return err
	}
	if t == TypeStreamReply && parseStreamReply(body) {
		return nil
	}
	m, err := decode(t, body)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case *StreamReply:
		*rep = *m
		return nil
	case *Error:
		return m
	}
	return fmt.Errorf("proto: expected %v, got %v", TypeStreamReply, t)
}

// begin returns the codec's buffer with room for the frame header.
func (c *StreamCodec) begin() []byte {
	if c.buf == nil {
		c.buf = make([]byte, 0, codecBufSize)
	}
	return c.buf[:headerLen]
}

// send fills in the frame header of b and writes it, as WriteMessage does.
func (c *StreamCodec) send(w io.Writer, t Type, b []byte) error {
	if cap(b) <= codecBufSize {
		c.buf = b[:0]
	}
	n := len(b) - headerLen
	if n > MaxMessageSize {
		return fmt.Errorf("proto: encode %v: %w", t, ErrTooLarge)
	}
	b[0] = byte(t)
	binary.BigEndian.PutUint32(b[1:headerLen], uint32(n))
	_, err := w.Write(b)
	return err
}

// knownTypes says which types newMessage knows, without allocating.
var knownTypes = func() (known [256]bool) {
	for t := range known {
		known[t] = newMessage(Type(t)) != nil
	}
	return known
}()

// readFrame reads one frame as ReadMessage does, with the same errors, and
// returns its type and payload. The payload is in the codec's buffer unless
// it is large.
func (c *StreamCodec) readFrame(r io.Reader) (Type, []byte, error) {
	if c.buf == nil {
		c.buf = make([]byte, 0, codecBufSize)
	}
	hdr := c.buf[:headerLen]
	if _, err := io.ReadFull(r, hdr); err != nil {
		return 0, nil, err
	}
	t := Type(hdr[0])
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxMessageSize {
		return 0, nil, ErrTooLarge
	}
	if !knownTypes[t] {
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return 0, nil, io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("%w %d", ErrUnknownType, byte(t))
	}
	var body []byte
	if int(n) <= cap(c.buf) {
		body = c.buf[:n]
	} else {
		body = make([]byte, n)
	}
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return t, body, nil
}

// decode decodes a payload of a known type as ReadMessage does.
func decode(t Type, body []byte) (Message, error) {
	m := newMessage(t)
	if err := json.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("proto: decode %v: %w", t, err)
	}
	return m, nil
}

var (
	streamHeaderKeys = []string{"name", "remote", "scheme"}
	streamReplyKeys  = []string{"error"}
)

// parseStreamHeader parses body into h if it is a plain object: string
// values without escapes for the known keys, any values it can skip for
// the others. It reports false for anything else.
func (c *StreamCodec) parseStreamHeader(body []byte, h *StreamHeader) bool {
	s := scanner{b: body}
	if !s.consume('{') {
		return false
	}
	if s.consume('}') {
		return s.end()
	}
	for {
		key, ok := s.key()
		if !ok {
			return false
		}
		switch string(key) {
		case "name":
			v, ok := s.asciiString()
			if !ok {
				return false
			}
			h.Name = c.intern(v)
		case "remote":
			v, ok := s.asciiString()
			if !ok {
				return false
			}
			if h.Remote, ok = c.addrPort(v); !ok {
				return false
			}
		case "scheme":
			v, ok := s.asciiString()
			if !ok {
				return false
			}
			switch string(v) {
			case "http":
				h.Scheme = "http"
			case "https":
				h.Scheme = "https"
			default:
				h.Scheme = string(v)
			}
		default:
			if mayMatch(key, streamHeaderKeys) || !s.skip(0) {
				return false
			}
		}
		if s.consume(',') {
			continue
		}
		return s.consume('}') && s.end()
	}
}

// parseStreamReply reports whether body is an object without an error,
// that is, an OK reply. Anything else, an error included, is left to
// encoding/json.
func parseStreamReply(body []byte) bool {
	s := scanner{b: body}
	if !s.consume('{') {
		return false
	}
	if s.consume('}') {
		return s.end()
	}
	for {
		key, ok := s.key()
		if !ok || mayMatch(key, streamReplyKeys) || !s.skip(0) {
			return false
		}
		if s.consume(',') {
			continue
		}
		return s.consume('}') && s.end()
	}
}

// intern returns v as a string, the same string every time for names it
// has seen recently.
func (c *StreamCodec) intern(v []byte) string {
	if s, ok := c.names[string(v)]; ok {
		return s
	}
	s := string(v)
	if len(s) <= MaxNameLength {
		if c.names == nil {
			c.names = make(map[string]string)
		} else if len(c.names) >= maxNames {
			clear(c.names)
		}
		c.names[s] = s
	}
	return s
}

// addrPort parses v as netip.AddrPort's UnmarshalText does. An IP it has
// parsed before is found by its text, and then only the port is parsed.
func (c *StreamCodec) addrPort(v []byte) (netip.AddrPort, bool) {
	if len(v) == 0 {
		return netip.AddrPort{}, true
	}
	// ParseAddrPort splits at the last colon, too; the IP text keeps its
	// brackets, so it also says whether brackets were used.
	i := bytes.LastIndexByte(v, ':')
	if i > 0 {
		if ip, ok := c.addrs[string(v[:i])]; ok {
			port, ok := parsePort(v[i+1:])
			return netip.AddrPortFrom(ip, port), ok
		}
	}
	ap, err := netip.ParseAddrPort(string(v))
	if err != nil {
		return netip.AddrPort{}, false
	}
	if i <= maxAddrTextLen {
		if c.addrs == nil {
			c.addrs = make(map[string]netip.Addr)
		} else if len(c.addrs) >= maxAddrs {
			clear(c.addrs)
		}
		c.addrs[string(v[:i])] = ap.Addr()
	}
	return ap, true
}

// parsePort parses a port as netip.ParseAddrPort does (strconv.ParseUint
// in base 10, 16 bits): decimal digits only, leading zeros allowed.
func parsePort(b []byte) (uint16, bool) {
	if len(b) == 0 {
		return 0, false
	}
	n := 0
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int(d-'0')
		if n > 0xffff {
			return 0, false
		}
	}
	return uint16(n), true
}

// mayMatch reports whether encoding/json might match key to one of known:
// it compares names without regard to case, Unicode folding included (and
// encoding/json/v2 may also ignore '-' and '_'). Keys that only may match
// are left to encoding/json.
func mayMatch(key []byte, known []string) bool {
	for _, c := range key {
		if c >= utf8.RuneSelf {
			return true
		}
	}
	for _, k := range known {
		j := 0
		for _, c := range key {
			if c == '-' || c == '_' {
				continue
			}
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if j == len(k) || c != k[j] {
				j = -1
				break
			}
			j++
		}
		if j == len(k) {
			return true
		}
	}
	return false
}

// maxSkipDepth bounds the nesting of unknown values the parser skips; deeper
// ones go to encoding/json, which has its own limit.
const maxSkipDepth = 16

// scanner is a cursor over a JSON text that knows only the JSON of the
// frames StreamCodec parses. Each method reports false where it does not
// know what encoding/json would do; the frame then goes to encoding/json.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// consume skips white space and then c, if c is next.
func (s *scanner) consume(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end reports whether only white space is left.
func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.b)
}

// key reads an object key and the colon after it.
func (s *scanner) key() ([]byte, bool) {
	k, ok := s.rawString()
	return k, ok && s.consume(':')
}

// rawString reads a string without escapes and returns its contents.
func (s *scanner) rawString() ([]byte, bool) {
	if !s.consume('"') {
		return nil, false
	}
	for j := s.i; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			v := s.b[s.i:j]
			s.i = j + 1
			return v, true
		case c < 0x20 || c == '\\':
			return nil, false
		}
	}
	return nil, false
}

// asciiString reads a string of ASCII without escapes. encoding/json would
// replace invalid UTF-8; such strings are left to it.
func (s *scanner) asciiString() ([]byte, bool) {
	v, ok := s.rawString()
	if !ok {
		return nil, false
	}
	for _, c := range v {
		if c >= utf8.RuneSelf {
			return nil, false
		}
	}
	return v, true
}

// skip skips one value.
func (s *scanner) skip(depth int) bool {
	s.space()
	if s.i >= len(s.b) || depth > maxSkipDepth {
		return false
	}
	switch c := s.b[s.i]; c {
	case '"':
		_, ok := s.rawString()
		return ok
	case '{':
		s.i++
		if s.consume('}') {
			return true
		}
		for {
			if _, ok := s.key(); !ok || !s.skip(depth+1) {
				return false
			}
			if !s.consume(',') {
				return s.consume('}')
			}
		}
	case '[':
		s.i++
		if s.consume(']') {
			return true
		}
		for {
			if !s.skip(depth + 1) {
				return false
			}
			if !s.consume(',') {
				return s.consume(']')
			}
		}
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	}
	return s.number()
}

func (s *scanner) literal(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}

// number skips a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() bool {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = digits(b, i)
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return false
		}
		i = j
	}
	s.i = i
	return true
}

// digits returns the index of the first non-digit at or after i.
func digits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

// appendString appends src as encoding/json writes a string (HTML escaping
// on, as in json.Marshal): the bytes of WriteMessage.
func appendString[S []byte | string](dst []byte, src S) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(src); {
		if c := src[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, src[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default: // other control characters, '<', '>' and '&'
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := decodeRune(src[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, src[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			// Valid JSON, but not valid JavaScript.
			dst = append(dst, src[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, src[start:]...)
	return append(dst, '"')
}

func decodeRune[S []byte | string](s S) (rune, int) {
	var b [utf8.UTFMax]byte
	return utf8.DecodeRune(b[:copy(b[:], s[:min(len(s), utf8.UTFMax)])])
}
