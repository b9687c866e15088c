package inspect

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// conversations are keep-alive HTTP/1.1 conversations, the visitor's
// bytes and the local server's, of every kind of message framing: bodies
// by length, chunked (with extensions and trailers) and to the
// connection's end; bodiless answers (HEAD, 204, 304); interim responses;
// pipelined requests; the field syntax net/textproto takes (folded and
// repeated fields, lower case names, no space after the colon, tabs).
// net/http reads them all, and reads them as the inspector should.
var conversations = map[string][2]string{
	"keep-alive": {keepAliveIn, keepAliveOut},
	"chunked both ways": {
		"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"5;name=value\r\nhello\r\nA \r\n, world!!!\r\n0\r\nChecksum: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n" +
			"3\r\nabc\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: a\r\nX-Other: b\r\n\r\n",
	},
	"to the end": {
		"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\ndata: 2\n\n",
	},
	"HTTP/1.0": {
		"GET /old HTTP/1.0\r\nUser-Agent: ancient\r\n\r\nGET /older HTTP/1.0\r\n\r\n",
		"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.0 404 Not Found\r\n\r\nthe rest",
	},
	"bodiless": {
		"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /cached HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\n\r\nDELETE /d HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nEtag: \"a\"\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
	},
	"interim": {
		"PUT /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200\r\nContent-Length: 1\r\n\r\n!",
	},
	"pipelined": {
		"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nPOST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbodyGET /4 HTTP/1.1\r\nHost: x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3HTTP/1.1 500  Internal  Server Error \r\nContent-Length: 1\r\n\r\n4",
	},
	"field syntax": {
		"OPTIONS * HTTP/1.1\r\nhost: x\r\nx-lower: a\r\nX-Fold: first\r\n  second\r\n\tthird\r\nX-Empty:\r\nX-Tab:\ta\tb\t\r\nAccept: a\r\nAccept: b\r\n\r\n" +
			"GET http://example.org/abs?q=1 HTTP/1.1\r\nHost: ignored.example\r\nX-Bytes: caf\xc3\xa9 \xff\r\n\r\n",
		"HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\ncontent-length:3\r\n\r\n\x00\xffxHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	},
	"bare LF": {
		"GET /lf HTTP/1.1\nHost: x\nX-A: b\n\n",
		"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
	},
}

// refExchanges reads a conversation with net/http, the way the inspector
// did before it parsed in the tap (Conn.parseRequests and parseResponses
// as of commit 74f00e8, without their goroutines): the reference the push
// parser must agree with on what both read.
func refExchanges(in, out []byte, bodyCap int) []*Exchange {
	ins := New(Options{BodyCap: bodyCap})
	rin, rout := bufio.NewReader(bytes.NewReader(in)), bufio.NewReader(bytes.NewReader(out))
	var exs []*Exchange
	for {
		if _, err := rin.Peek(1); err != nil {
			return exs
		}
		req, err := http.ReadRequest(rin)
		if err != nil {
			return exs
		}
		ex := &Exchange{Method: req.Method, Path: req.RequestURI, Proto: req.Proto, Host: req.Host, RequestHeader: req.Header}
		if len(req.TransferEncoding) > 0 {
			ex.RequestHeader.Set("Transfer-Encoding", strings.Join(req.TransferEncoding, ", "))
		}
		if req.ContentLength > 0 && len(req.TransferEncoding) == 0 {
			ex.RequestHeader.Set("Content-Length", fmt.Sprint(req.ContentLength))
		}
		ex.RequestBody, _ = ins.capture(req.Body)
		exs = append(exs, ex)
		resp, err := http.ReadResponse(rout, req)
		for err == nil && resp.StatusCode < 200 {
			resp, err = http.ReadResponse(rout, req)
		}
		if err != nil {
			ex.Error = "no response: the connection ended first"
			continue
		}
		ex.Status, ex.ResponseHeader = resp.StatusCode, resp.Header
		ex.StatusText = strings.TrimSpace(strings.TrimPrefix(resp.Status, fmt.Sprint(resp.StatusCode)))
		if len(resp.TransferEncoding) > 0 {
			ex.ResponseHeader.Set("Transfer-Encoding", strings.Join(resp.TransferEncoding, ", "))
		}
		ex.ResponseBody, _ = ins.capture(resp.Body)
	}
}

// describe is what r recorded, times aside, as text to compare.
func describe(r *recorder) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, e := range r.ex {
		describeExchange(&b, e)
	}
	for _, ws := range r.closed {
		full, _ := r.in.WebSocket(ws.ID)
		fmt.Fprintf(&b, "ws#%d %s in %d/%dB out %d/%dB close %d %q by %q error %q\n", ws.ID, ws.Path,
			ws.MessagesIn, ws.BytesIn, ws.MessagesOut, ws.BytesOut, ws.CloseCode, ws.CloseReason, ws.ClosedBy, ws.Error)
		for _, d := range dirNames {
			for _, f := range full.Frames {
				if f.Dir == d {
					fmt.Fprintf(&b, "  %s %s fin=%v %d %q %d\n", f.Dir, f.Op, f.Fin, f.Size, f.Preview, f.CloseCode)
				}
			}
		}
	}
	return b.String()
}

func describeExchange(b *strings.Builder, e *Exchange) {
	fmt.Fprintf(b, "#%d %s %s %s host=%q ws=%d error=%q\n", e.ID, e.Method, e.Path, e.Proto, e.Host, e.WebSocket, e.Error)
	fmt.Fprintf(b, "  > %v %d %q %v\n", e.RequestHeader, e.RequestBody.Size, e.RequestBody.Data, e.RequestBody.Truncated)
	fmt.Fprintf(b, "  < %d %q %v %d %q %v\n", e.Status, e.StatusText, e.ResponseHeader, e.ResponseBody.Size, e.ResponseBody.Data, e.ResponseBody.Truncated)
}

// observe has a recorder observe a conversation, each direction cut at
// its cuts, the visitor's first unless outFirst.
func observe(opts Options, in, out []byte, inCuts, outCuts []int, outFirst bool) *recorder {
	r := newRecorder(opts)
	c := r.in.Observe(ConnInfo{Tunnel: "demo", Local: "127.0.0.1:1", Remote: "192.0.2.1:5000"})
	if outFirst {
		tapChunks(c, false, out, outCuts...)
	}
	tapChunks(c, true, in, inCuts...)
	if !outFirst {
		tapChunks(c, false, out, outCuts...)
	}
	c.Close()
	return r
}

// The push parser reads each conversation as net/http does.
func TestHTTPMatchesNetHTTP(t *testing.T) {
	for name, conv := range conversations {
		for _, bodyCap := range []int{0, 5} {
			in, out := []byte(conv[0]), []byte(conv[1])
			var want strings.Builder
			for i, e := range refExchanges(in, out, bodyCap) {
				e.ID = int64(i + 1)
				describeExchange(&want, e)
			}
			got := describe(observe(Options{BodyCap: bodyCap}, in, out, nil, nil, false))
			if got != want.String() {
				t.Errorf("%s, body cap %d:\ngot\n%s\nwant\n%s", name, bodyCap, got, want.String())
			}
		}
	}
}

// randomCuts cuts n bytes at random into chunks of 1 to most bytes.
func randomCuts(rng *rand.Rand, n, most int) []int {
	var cuts []int
	for k := rng.IntN(most) + 1; k < n; k += rng.IntN(most) + 1 {
		cuts = append(cuts, k)
	}
	return cuts
}

// A conversation is recorded the same however the taps cut it: each
// direction cut once at every offset, every chunk one byte, chunks of
// random sizes; and whichever direction comes first (a server may answer
// before the request is whole: the answer waits for it).
func TestHTTPEverySplit(t *testing.T) {
	convs := map[string][2]string{
		"not HTTP": {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "\x15\x03\x03\x00\x02\x02\x28"},
		"upgrade":  {upgradeIn + string(frame(true, 1, true, []byte("hi"))), upgradeOut + string(frame(true, 8, false, nil))},
		"upgrade with a body": {strings.Replace(upgradeIn, "\r\n\r\n", "\r\nContent-Length: 3\r\n\r\nabc", 1) + string(frame(true, 1, true, []byte("hi"))),
			upgradeOut + string(frame(true, 1, false, []byte("yo")))},
		"h2c": {"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n\x00\x00\x00\x04\x00"},
		"declined upgrade": {upgradeIn + "GET /after HTTP/1.1\r\nHost: x\r\n\r\n",
			"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnopeHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"},
		"cut short": {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab"},
	}
	for name, conv := range conversations {
		convs[name] = conv
	}
	for name, conv := range convs {
		t.Run(name, func(t *testing.T) {
			in, out := []byte(conv[0]), []byte(conv[1])
			for _, outFirst := range []bool{false, true} {
				want := describe(observe(Options{BodyCap: 7}, in, out, nil, nil, outFirst))
				check := func(label string, inCuts, outCuts []int) {
					t.Helper()
					if got := describe(observe(Options{BodyCap: 7}, in, out, inCuts, outCuts, outFirst)); got != want {
						t.Fatalf("%s (server first: %v):\ngot\n%s\nwant\n%s", label, outFirst, got, want)
					}
				}
				for k := range len(in) {
					check(fmt.Sprintf("in cut at %d", k), []int{k}, nil)
				}
				for k := range len(out) {
					check(fmt.Sprintf("out cut at %d", k), nil, []int{k})
				}
				check("bytewise", bytewise(len(in)), bytewise(len(out)))
				rng := rand.New(rand.NewPCG(1, 2))
				for i := range 50 {
					check(fmt.Sprintf("random %d", i), randomCuts(rng, len(in), 9), randomCuts(rng, len(out), 9))
				}
			}
		})
	}
}

// Where the inspector reads differently from net/http, it reads what the
// local server and the visitor do (RFC 9112), or shows the fields as they
// came.
func TestHTTPBeyondNetHTTP(t *testing.T) {
	tests := []struct {
		name    string
		in, out string
		want    string
	}{{
		// net/http adds Cache-Control, drops a response's Connection:
		// close, and a chunked message's Trailer field.
		name: "fields as they came",
		in:   "GET / HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n\r\n",
		out:  "HTTP/1.1 200 OK\r\nConnection: close\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n",
		want: "#1 GET / HTTP/1.1 host=\"x\" ws=0 error=\"\"\n" +
			"  > map[Pragma:[no-cache]] 0 \"\" false\n" +
			"  < 200 \"OK\" map[Connection:[close] Trailer:[X-T] Transfer-Encoding:[chunked]] 0 \"\" false\n",
	}, {
		// net/http refuses any coding but chunked alone; a response
		// whose last coding is not chunked ends with the connection.
		name: "transfer codings",
		in:   "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nz\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		out:  "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nz\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz",
		want: "#1 POST / HTTP/1.1 host=\"x\" ws=0 error=\"\"\n" +
			"  > map[Transfer-Encoding:[gzip, chunked]] 1 \"z\" false\n" +
			"  < 200 \"OK\" map[Transfer-Encoding:[gzip, chunked]] 1 \"z\" false\n" +
			"#2 GET / HTTP/1.1 host=\"x\" ws=0 error=\"\"\n" +
			"  > map[] 0 \"\" false\n" +
			"  < 200 \"OK\" map[Transfer-Encoding:[gzip]] 3 \"zzz\" false\n",
	}, {
		// A 2xx to CONNECT makes a tunnel (RFC 9112 section 6.3): what
		// follows is not HTTP either way.
		name: "CONNECT",
		in:   "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n\x16\x03\x01",
		out:  "HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x03",
		want: "#1 CONNECT example.org:443 HTTP/1.1 host=\"example.org:443\" ws=0 error=\"\"\n" +
			"  > map[] 0 \"\" false\n" +
			"  < 200 \"Connection Established\" map[] 0 \"\" false\n",
	}, {
		// Empty lines between messages are skipped (RFC 9112 section 2.2).
		name: "empty lines",
		in:   "\r\nGET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
		out:  "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
		want: "#1 GET /a HTTP/1.1 host=\"x\" ws=0 error=\"\"\n" +
			"  > map[Content-Length:[1]] 1 \"a\" false\n" +
			"  < 200 \"OK\" map[Content-Length:[1]] 1 \"1\" false\n" +
			"#2 GET /b HTTP/1.1 host=\"x\" ws=0 error=\"\"\n" +
			"  > map[] 0 \"\" false\n" +
			"  < 200 \"OK\" map[Content-Length:[1]] 1 \"2\" false\n",
	}}
	for _, tt := range tests {
		if got := describe(observe(Options{}, []byte(tt.in), []byte(tt.out), nil, nil, false)); got != tt.want {
			t.Errorf("%s:\ngot\n%s\nwant\n%s", tt.name, got, tt.want)
		}
	}
}

// What is not valid HTTP/1.1 stops the capture and the exchange says so; a
// message the connection's end cut short says that.
func TestHTTPErrors(t *testing.T) {
	get := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	tests := []struct {
		name, in, out string
		status        int
		err           string
	}{
		{"bad chunk size", get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 200, "capture stopped: response body is not valid HTTP/1.1: invalid byte in chunk size"},
		{"chunk without CRLF", get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", 200, "capture stopped: response body is not valid HTTP/1.1: malformed chunked encoding"},
		{"bare LF in chunk size", get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\nab\r\n", 200, "capture stopped: response body is not valid HTTP/1.1: chunk-size line ends with bare LF"},
		{"CR in chunk size", get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a\rb\r\n", 200, "capture stopped: response body is not valid HTTP/1.1: CR without LF in chunk-size line"},
		{"chunk too large", get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n", 200, "capture stopped: response body is not valid HTTP/1.1: chunk size too large"},
		{"bad trailer", get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nnot a field\r\n\r\n", 200, "capture stopped: response body is not valid HTTP/1.1: malformed trailer line"},
		{"bad status line", get, "HTTP/1.1 2000 OK\r\n\r\n", 0, `capture stopped: response is not valid HTTP/1.1: malformed status code "2000"`},
		{"not a response", get, "SSH-2.0-x\r\n", 0, `capture stopped: response is not valid HTTP/1.1: malformed status line "SSH-2.0-x"`},
		{"bad field", get, "HTTP/1.1 200 OK\r\nNo colon\r\n\r\n", 0, `capture stopped: response is not valid HTTP/1.1: malformed field line "No colon"`},
		{"two lengths", get, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 0, `capture stopped: response is not valid HTTP/1.1: differing Content-Length fields "1, 2"`},
		{"response cut", get, "HTTP/1.1 200 OK\r\nContent-", 0, "response cut short: the connection ended"},
		{"response body cut", get, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", 200, "response body cut short: the connection ended"},
		{"request body cut", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab", "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 400, "request body cut short: the connection ended"},
		{"bad request chunk", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nx\r\n", "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 400, "capture stopped: request body is not valid HTTP/1.1: invalid byte in chunk size"},
		{"no response", get, "", 0, "no response: the connection ended first"},
	}
	for _, tt := range tests {
		r := observe(Options{}, []byte(tt.in), []byte(tt.out), nil, nil, false)
		if len(r.ex) != 1 || r.ex[0].Status != tt.status || r.ex[0].Error != tt.err {
			var b strings.Builder
			for _, e := range r.ex {
				describeExchange(&b, e)
			}
			t.Errorf("%s: got\n%s\nwant status %d error %q", tt.name, b.String(), tt.status, tt.err)
		}
		if tt.name == "response body cut" || tt.name == "request body cut" {
			if b := r.ex[0]; !b.ResponseBody.Truncated && !b.RequestBody.Truncated {
				t.Errorf("%s: body not marked truncated", tt.name)
			}
		}
	}
}

// An exchange is timed from the chunk that brought the request's first
// byte to the one that brought the response's last, even when the
// response came before the request was whole and waited for it.
func TestHTTPTiming(t *testing.T) {
	for _, early := range []bool{false, true} {
		r := newRecorder(Options{})
		c := r.in.Observe(ConnInfo{Tunnel: "demo"})
		var marks []time.Time
		tap := func(fromVisitor bool, s string) {
			marks = append(marks, time.Now())
			c.Tap(fromVisitor, []byte(s))
			marks = append(marks, time.Now())
			time.Sleep(2 * time.Millisecond)
		}
		tap(true, "GET / HTTP/1.1\r\n")
		if early {
			tap(false, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			tap(true, "Host: x\r\n\r\n")
		} else {
			tap(true, "Host: x\r\n\r\n")
			tap(false, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
			tap(false, "ok")
		}
		c.Close()
		if len(r.ex) != 1 {
			t.Fatalf("exchanges %+v", r.ex)
		}
		e := r.ex[0]
		last := 3
		if early {
			last = 1
		}
		end := e.Time.Add(time.Duration(e.Duration))
		if e.Time.Before(marks[0]) || e.Time.After(marks[1]) || end.Before(marks[2*last]) || end.After(marks[2*last+1]) {
			t.Errorf("early %v: exchange from %v to %v; taps %v", early, e.Time, end, marks)
		}
	}
}

// An idle keep-alive connection holds no goroutine and no buffer: only
// its Conn.
func TestIdleKeepAlive(t *testing.T) {
	goroutines := runtime.NumGoroutine()
	r := newRecorder(Options{})
	c := r.in.Observe(ConnInfo{Tunnel: "demo"})
	tapChunks(c, true, []byte(keepAliveIn), 7, 100)
	tapChunks(c, false, []byte(keepAliveOut), 50, 51, 52)
	if n := runtime.NumGoroutine(); n > goroutines {
		t.Errorf("%d goroutines for an observed connection, %d before", n, goroutines)
	}
	c.mu.Lock()
	for d, hp := range c.http {
		if hp.step != hHead || hp.head != nil || hp.held != nil || hp.marks != nil || hp.p != nil || hp.body != nil {
			t.Errorf("idle %s parser holds %+v", dirNames[d], hp)
		}
	}
	if len(c.open) != 0 || len(r.ex) != 3 {
		t.Errorf("%d requests open, %d reported", len(c.open), len(r.ex))
	}
	c.mu.Unlock()
	c.Close()
}

// FuzzConn feeds a conversation of any bytes to a Conn in random chunks:
// Tap never panics, and the conversation is recorded the same as when fed
// whole, for either direction first. In random interleavings of the two
// directions, it must not panic either.
func FuzzConn(f *testing.F) {
	for _, conv := range conversations {
		f.Add([]byte(conv[0]), []byte(conv[1]), uint64(1))
	}
	f.Add([]byte(upgradeIn+string(frame(true, 1, true, []byte("hi")))), []byte(upgradeOut+string(frame(true, 8, false, nil))), uint64(2))
	f.Add([]byte("\x16\x03\x01\x02\x00"), []byte("HTTP/1.1 200 OK\r\n\r\n"), uint64(3))
	f.Fuzz(func(t *testing.T, in, out []byte, seed uint64) {
		rng := rand.New(rand.NewPCG(seed, seed>>32))
		for _, outFirst := range []bool{false, true} {
			want := describe(observe(Options{BodyCap: 16}, in, out, nil, nil, outFirst))
			inCuts, outCuts := randomCuts(rng, len(in), 16), randomCuts(rng, len(out), 16)
			if got := describe(observe(Options{BodyCap: 16}, in, out, inCuts, outCuts, outFirst)); got != want {
				t.Fatalf("cut at %v and %v (server first: %v):\ngot\n%s\nwant\n%s", inCuts, outCuts, outFirst, got, want)
			}
		}
		r := newRecorder(Options{BodyCap: 16})
		c := r.in.Observe(ConnInfo{Tunnel: "demo"})
		for len(in) > 0 || len(out) > 0 {
			p := &in
			if len(in) == 0 || (len(out) > 0 && rng.IntN(2) == 0) {
				p = &out
			}
			n := min(len(*p), rng.IntN(16)+1)
			c.Tap(p == &in, (*p)[:n])
			*p = (*p)[n:]
		}
		c.Close()
		_ = describe(r)
	})
}
