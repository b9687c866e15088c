package inspect

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
)

// A head is the start line and header fields of a message, up to and
// including the empty line that ends them. Heads are parsed here, once
// whole, into the strings an Exchange keeps. The parser is a small one of
// its own, not net/http's: it does in one pass and four allocations what
// http.ReadRequest does in fourteen, and it leaves the fields as they
// came (net/http adds Cache-Control for a Pragma, drops the Connection
// of a response that closes, and the framing fields it acted on).
//
// It is as strict as net/http where that decides what the bytes mean,
// start lines, field syntax and message framing, so that what does not
// parse is not shown as HTTP, and lenient where the difference does not
// matter to what is shown: request targets are not decoded.

// headMax bounds a response's head, as the relay does, and requestHeadMax
// a request's. Beyond them, capture stops: a real head is a few KiB (Go's
// server takes 1 MiB, nginx 32 KiB at most), and bytes that never end one
// are not HTTP. A request's bound is higher: the relay takes heads of 64
// KiB and Go's 4 KiB of slack, and adds its own fields (X-Forwarded-*,
// X-Real-IP, a rewritten Host) before the agent sees them.
const (
	headMax        = 64 << 10
	requestHeadMax = 2 * headMax
)

// headLimit is the bound on a request's head, or a response's.
func headLimit(request bool) int {
	if request {
		return requestHeadMax
	}
	return headMax
}

var errHeadTooLong = errors.New("head too long (64 KiB for a response, 128 KiB for a request)")

// requestHead is what a request's head says.
type requestHead struct {
	method, target, proto, host string
	header                      http.Header
	http11                      bool // at least HTTP/1.1: Transfer-Encoding counts
}

// responseHead is what a response's head says.
type responseHead struct {
	status int
	text   string // the reason phrase
	header http.Header
	http11 bool
}

// parseRequest parses a request's head (RFC 9112 sections 3 and 5). Host
// is the target's authority if it has one, else the Host field, which
// the header no longer holds, as net/http does.
func parseRequest(block []byte) (requestHead, error) {
	s := string(block) // one copy: the exchange's strings share it
	line, rest := cutLine(s)
	method, target, proto, ok := requestLine(line)
	if !ok {
		return requestHead{}, fmt.Errorf("malformed request line %q", quoteStart(line))
	}
	h, err := parseFields(rest)
	if err != nil {
		return requestHead{}, err
	}
	if len(h["Host"]) > 1 {
		return requestHead{}, errors.New("too many Host fields")
	}
	r := requestHead{method: method, target: target, proto: proto, header: h, http11: proto != "HTTP/1.0"}
	if r.host, err = requestHost(method, target); err != nil {
		return requestHead{}, err
	}
	if r.host == "" && len(h["Host"]) == 1 {
		r.host = h["Host"][0]
	}
	delete(h, "Host")
	return r, nil
}

// requestLine splits a request line: method SP request-target SP
// HTTP-version, each cut at the first space as net/http does.
func requestLine(line string) (method, target, proto string, ok bool) {
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	ok = ok1 && ok2 && isToken(method) && validTarget(target) && isHTTP1(proto)
	return method, target, proto, ok
}

// requestHost returns the authority of a request target in absolute or
// authority form (RFC 9112 section 3.2), "" for the other forms.
func requestHost(method, target string) (string, error) {
	if target[0] == '/' || target == "*" {
		return "", nil
	}
	raw := target
	if method == "CONNECT" {
		raw = "http://" + target
	}
	u, err := url.ParseRequestURI(raw)
	if err != nil {
		return "", fmt.Errorf("malformed request target %q", clip(target))
	}
	return u.Host, nil
}

// parseResponse parses a response's head (RFC 9112 sections 4 and 5).
func parseResponse(block []byte) (responseHead, error) {
	s := string(block)
	line, rest := cutLine(s)
	r, err := statusLine(line)
	if err != nil {
		return responseHead{}, err
	}
	if r.header, err = parseFields(rest); err != nil {
		return responseHead{}, err
	}
	return r, nil
}

// statusLine parses a status line: HTTP-version SP status-code [SP
// reason-phrase], with the leniency of net/http about spaces.
func statusLine(line string) (responseHead, error) {
	proto, status, ok := strings.Cut(line, " ")
	if !ok || !isHTTP1(proto) {
		return responseHead{}, fmt.Errorf("malformed status line %q", quoteStart(line))
	}
	code, text, _ := strings.Cut(strings.TrimLeft(status, " "), " ")
	if len(code) != 3 || code[0] < '1' || code[0] > '9' || !isDigit(code[1]) || !isDigit(code[2]) {
		return responseHead{}, fmt.Errorf("malformed status code %q", clip(code))
	}
	n := int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	return responseHead{status: n, text: strings.TrimSpace(text), http11: proto != "HTTP/1.0"}, nil
}

// parseFields parses the field lines of a head, up to the empty line. A
// line that begins with white space continues the one before (obs-fold),
// joined with a space as net/textproto does. Each line is read in one
// pass: the name, checked and found canonical or not on the way, then
// the value.
func parseFields(s string) (http.Header, error) {
	n := min(strings.Count(s, "\n"), 100)
	h := make(http.Header, n)
	vals := make([]string, n) // cut into each field's first value
	var last string           // the previous field's key
	for s != "" {
		var line string
		line, s = cutLine(s)
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			v := trimOWS(line)
			if last == "" || !validValue(v) {
				return nil, fmt.Errorf("malformed field line %q", clip(line))
			}
			vv := h[last]
			if vv[len(vv)-1] != "" {
				v = vv[len(vv)-1] + " " + v
			}
			vv[len(vv)-1] = v
			continue
		}
		k, canonical, upper := 0, true, true
		for ; k < len(line) && tchars[line[k]]; k++ {
			c := line[k]
			canonical = canonical && !(upper && 'a' <= c && c <= 'z') && !(!upper && 'A' <= c && c <= 'Z')
			upper = c == '-'
		}
		if k == 0 || k == len(line) || line[k] != ':' {
			return nil, fmt.Errorf("malformed field line %q", clip(line))
		}
		key, v := line[:k], trimOWS(line[k+1:])
		if !validValue(v) {
			return nil, fmt.Errorf("malformed field line %q", clip(line))
		}
		if !canonical {
			key = textproto.CanonicalMIMEHeaderKey(key)
		}
		switch vv := h[key]; {
		case vv == nil && len(vals) > 0:
			vals[0] = v
			h[key], vals = vals[:1:1], vals[1:]
		default:
			h[key] = append(vv, v)
		}
		last = key
	}
	return h, nil
}

// cutLine cuts s after its first line, which it returns without its end,
// "\r\n" or a bare "\n" as net/textproto takes either.
func cutLine(s string) (line, rest string) {
	line, rest, _ = strings.Cut(s, "\n")
	return strings.TrimSuffix(line, "\r"), rest
}

// headEnd returns how many bytes at the start of b complete a head that
// began with prev, the bytes of it seen before: all up to its first empty
// line. It returns -1 if b does not end the head.
func headEnd(prev, b []byte) int {
	// Whether the line under way at b[0] is empty so far, or just "\r".
	n := len(prev)
	empty := n == 0 || prev[n-1] == '\n'
	cr := n > 0 && prev[n-1] == '\r' && (n == 1 || prev[n-2] == '\n')
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		j += i
		switch line := b[i:j]; {
		case i == 0 && cr && j == 0,
			(i > 0 || empty) && (len(line) == 0 || (len(line) == 1 && line[0] == '\r')):
			return j + 1
		}
		i = j + 1
	}
}

// startCheck checks the first line of head, the start of a head whose
// bytes from from on are new, as soon as that can tell bytes that are not
// HTTP (a TLS handshake, another protocol): once the line is whole, and
// before, once more than quoteLen bytes of it have come, its start. It
// returns whether the line was whole and valid: then it need not be
// checked again. What it finds, and the error it quotes, do not depend on
// how the head was cut into chunks, and a head that comes a byte at a time
// costs no more than a whole one.
func startCheck(request bool, head []byte, from int) (bool, error) {
	if i := bytes.IndexByte(head[from:], '\n'); i >= 0 && from+i <= headLimit(request) {
		line := strings.TrimSuffix(string(head[:from+i]), "\r")
		if request {
			if _, _, _, ok := requestLine(line); !ok {
				return false, fmt.Errorf("malformed request line %q", quoteStart(line))
			}
			return true, nil
		}
		_, err := statusLine(line)
		return err == nil, err
	}
	if len(head) <= quoteLen {
		return false, nil
	}
	start := string(head[:quoteLen])
	if request {
		if method, _, _ := strings.Cut(start, " "); !isToken(method) {
			return false, fmt.Errorf("malformed request line %q", start)
		}
	} else if !strings.HasPrefix(start, "HTTP/1.") {
		return false, fmt.Errorf("malformed status line %q", start)
	}
	return false, nil
}

// quoteLen is how much of a malformed start line an error quotes.
const quoteLen = 32

func quoteStart(line string) string { return line[:min(len(line), quoteLen)] }

// isHTTP1 reports whether proto is HTTP/1.x, whose framing this parses.
func isHTTP1(proto string) bool {
	return len(proto) == len("HTTP/1.1") && strings.HasPrefix(proto, "HTTP/1.") && isDigit(proto[7])
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// tchars are the bytes of a token (RFC 9110 section 5.6.2): methods and
// field names.
var tchars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(s string) bool {
	for i := range len(s) {
		if !tchars[s[i]] {
			return false
		}
	}
	return s != ""
}

// validTarget reports whether a request target has no control byte (the
// spaces that end it are cut already), as net/url requires.
func validTarget(s string) bool {
	for i := range len(s) {
		if s[i] < ' ' || s[i] == 0x7f {
			return false
		}
	}
	return s != ""
}

// validValue reports whether a field value has no control byte but tabs
// (RFC 9110 section 5.5), as net/textproto requires.
func validValue(s string) bool {
	for i := range len(s) {
		if !vchars[s[i]] {
			return false
		}
	}
	return true
}

// vchars are the bytes of a field value: all but controls, tab excepted.
var vchars = func() (t [256]bool) {
	for c := range t {
		t[c] = (c >= ' ' || c == '\t') && c != 0x7f
	}
	return t
}()

// trimOWS trims optional white space (RFC 9110 section 5.6.3).
func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// clip shortens what an error quotes.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// framing says how a message's body is delimited (RFC 9112 section 6.3):
// chunked, or n bytes, or for a response without either until the
// connection ends (n < 0). As net/http, it wants a valid Content-Length
// wherever there is one, and ignores Transfer-Encoding before HTTP/1.1.
// Unlike net/http, which takes chunked alone, it reads any codings whose
// last is chunked as chunked; other codings are an error in a request and
// end with the connection in a response.
func framing(h http.Header, http11, response bool) (chunked bool, n int64, err error) {
	n = -1
	if cl := h["Content-Length"]; len(cl) > 0 {
		v := trimOWS(cl[0])
		for _, o := range cl[1:] {
			if trimOWS(o) != v {
				return false, 0, fmt.Errorf("differing Content-Length fields %q", clip(strings.Join(cl, ", ")))
			}
		}
		u, perr := strconv.ParseUint(v, 10, 63)
		if perr != nil {
			return false, 0, fmt.Errorf("bad Content-Length %q", clip(v))
		}
		n = int64(u)
	}
	if te := h["Transfer-Encoding"]; len(te) > 0 && http11 {
		last := te[len(te)-1]
		last = trimOWS(last[strings.LastIndexByte(last, ',')+1:])
		switch {
		case strings.EqualFold(last, "chunked"):
			return true, 0, nil
		case !response:
			return false, 0, fmt.Errorf("unsupported transfer encoding %q", clip(strings.Join(te, ", ")))
		}
		return false, -1, nil
	}
	if n < 0 && !response {
		n = 0
	}
	return false, n, nil
}

// headerHas reports whether a comma-separated header lists token.
func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(trimOWS(t), token) {
				return true
			}
		}
	}
	return false
}
