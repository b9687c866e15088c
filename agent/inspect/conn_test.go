package inspect

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recorder collects what an Inspector reports.
type recorder struct {
	mu     sync.Mutex
	ex     []*Exchange
	opened []WebSocket
	closed []WebSocket
	in     *Inspector
}

func newRecorder(opts Options) *recorder {
	r := &recorder{}
	opts.OnExchange = func(e *Exchange) {
		r.mu.Lock()
		r.ex = append(r.ex, e)
		r.mu.Unlock()
	}
	opts.OnWebSocket = func(ws WebSocket) {
		r.mu.Lock()
		if ws.Open {
			r.opened = append(r.opened, ws)
		} else {
			r.closed = append(r.closed, ws)
		}
		r.mu.Unlock()
	}
	r.in = New(opts)
	return r
}

// run feeds one connection: the visitor's bytes cut at inCut and the
// server's at outCut, each half in turn, as two taps would deliver them.
func (r *recorder) run(in, out []byte, inCut, outCut int) {
	c := r.in.Observe(ConnInfo{Tunnel: "demo", Local: "127.0.0.1:1", Remote: "192.0.2.1:5000"})
	c.Tap(true, in[:inCut])
	c.Tap(false, out[:outCut])
	c.Tap(true, in[inCut:])
	c.Tap(false, out[outCut:])
	c.Close()
}

// everySplit runs check for the conversation cut at every byte boundary of
// each direction.
func everySplit(t *testing.T, opts Options, in, out string, check func(t *testing.T, r *recorder)) {
	t.Helper()
	n := max(len(in), len(out))
	for cut := 0; cut <= n; cut++ {
		r := newRecorder(opts)
		r.run([]byte(in), []byte(out), min(cut, len(in)), min(cut, len(out)))
		t.Run(fmt.Sprintf("cut%d", cut), func(t *testing.T) { check(t, r) })
		if t.Failed() {
			return
		}
	}
}

const keepAliveIn = "POST /api/items?x=1 HTTP/1.1\r\nHost: demo.example.com\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"name\":\"a\"}\n" +
	"HEAD /h HTTP/1.1\r\nHost: demo.example.com\r\n\r\n" +
	"GET /missing HTTP/1.1\r\nHost: demo.example.com\r\n\r\n"

const keepAliveOut = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"id\":7}\n" +
	"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + // HEAD: no body despite the length
	"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n3\r\n!!!\r\n0\r\n\r\n"

func TestHTTPKeepAlive(t *testing.T) {
	everySplit(t, Options{}, keepAliveIn, keepAliveOut, func(t *testing.T, r *recorder) {
		if len(r.ex) != 3 {
			t.Fatalf("%d exchanges, want 3: %+v", len(r.ex), r.ex)
		}
		e := r.ex[0]
		if e.Method != "POST" || e.Path != "/api/items?x=1" || e.Status != 201 || e.Host != "demo.example.com" || e.Remote != "192.0.2.1:5000" || e.Tunnel != "demo" {
			t.Errorf("first exchange %+v", e)
		}
		if string(e.RequestBody.Data) != "{\"name\":\"a\"}\n" || e.RequestBody.Size != 13 || e.RequestBody.Truncated {
			t.Errorf("request body %+v", e.RequestBody)
		}
		if string(e.ResponseBody.Data) != "{\"id\":7}\n" || e.ResponseHeader.Get("Content-Type") != "application/json" {
			t.Errorf("response %q %v", e.ResponseBody.Data, e.ResponseHeader)
		}
		if e.RequestHeader.Get("Content-Type") != "application/json" {
			t.Errorf("request headers %v", e.RequestHeader)
		}
		if h := r.ex[1]; h.Method != "HEAD" || h.Status != 200 || h.ResponseBody.Size != 0 || h.Error != "" {
			t.Errorf("HEAD exchange %+v", h)
		}
		if m := r.ex[2]; m.Status != 404 || string(m.ResponseBody.Data) != "nope!!!" || m.StatusText != "Not Found" {
			t.Errorf("chunked 404: %d %q %q", m.Status, m.ResponseBody.Data, m.StatusText)
		}
		for i, e := range r.ex {
			if e.ID != int64(i+1) || e.Error != "" || e.Duration < 0 {
				t.Errorf("exchange %d: id %d error %q duration %v", i, e.ID, e.Error, e.Duration)
			}
		}
	})
}

func TestHTTPContinueAndCap(t *testing.T) {
	in := "PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz"
	out := "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
	everySplit(t, Options{BodyCap: 10}, in, out, func(t *testing.T, r *recorder) {
		if len(r.ex) != 1 {
			t.Fatalf("%d exchanges", len(r.ex))
		}
		e := r.ex[0]
		if e.Status != 204 || e.RequestBody.Size != 26 || string(e.RequestBody.Data) != "abcdefghij" || !e.RequestBody.Truncated {
			t.Errorf("exchange: %d %+v", e.Status, e.RequestBody)
		}
	})
}

// frame builds a WebSocket frame; masked frames use a fixed key.
func frame(fin bool, op byte, masked bool, payload []byte) []byte {
	var b bytes.Buffer
	h0 := op
	if fin {
		h0 |= 0x80
	}
	b.WriteByte(h0)
	var m byte
	if masked {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b.WriteByte(m | byte(n))
	case n < 1<<16:
		b.WriteByte(m | 126)
		binary.Write(&b, binary.BigEndian, uint16(n))
	default:
		b.WriteByte(m | 127)
		binary.Write(&b, binary.BigEndian, uint64(n))
	}
	p := append([]byte(nil), payload...)
	if masked {
		key := []byte{0x12, 0x34, 0x56, 0x78}
		b.Write(key)
		for i := range p {
			p[i] ^= key[i%4]
		}
	}
	b.Write(p)
	return b.Bytes()
}

func closePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

const upgradeIn = "GET /chat HTTP/1.1\r\nHost: demo.localhost\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
const upgradeOut = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"

func TestWebSocketFrames(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes: a 16-bit length, a cut rune
	in := upgradeIn +
		string(frame(false, 1, true, []byte("hel"))) +
		string(frame(true, 0, true, []byte("lo"))) +
		string(frame(true, 9, true, []byte("are you there"))) +
		string(frame(true, 1, true, []byte(long))) +
		string(frame(true, 8, true, closePayload(1001, "going away")))
	out := upgradeOut +
		string(frame(true, 1, false, []byte("hello"))) +
		string(frame(true, 10, false, []byte("are you there"))) +
		string(frame(true, 2, false, bytes.Repeat([]byte{0xff}, 300))) +
		string(frame(true, 8, false, closePayload(1001, "")))
	everySplit(t, Options{}, in, out, func(t *testing.T, r *recorder) {
		if len(r.ex) != 1 || r.ex[0].Status != 101 || r.ex[0].WebSocket != 1 {
			t.Fatalf("exchanges %+v", r.ex)
		}
		if len(r.opened) != 1 || len(r.closed) != 1 {
			t.Fatalf("opened %d, closed %d", len(r.opened), len(r.closed))
		}
		ws := r.closed[0]
		// Who closed depends on which close frame's first byte came first.
		byVisitor := ws.ClosedBy == "visitor" && ws.CloseReason == "going away"
		byServer := ws.ClosedBy == "server" && ws.CloseReason == ""
		if ws.CloseCode != 1001 || !(byVisitor || byServer) || ws.Path != "/chat" {
			t.Errorf("close: %d %q by %q", ws.CloseCode, ws.CloseReason, ws.ClosedBy)
		}
		if ws.MessagesIn != 2 || ws.MessagesOut != 2 {
			t.Errorf("messages in %d out %d, want 2 and 2", ws.MessagesIn, ws.MessagesOut)
		}
		if want := int64(len(in) - len(upgradeIn)); ws.BytesIn != want {
			t.Errorf("bytes in %d, want %d", ws.BytesIn, want)
		}
		if want := int64(len(out) - len(upgradeOut)); ws.BytesOut != want {
			t.Errorf("bytes out %d, want %d", ws.BytesOut, want)
		}
		full, _ := r.in.WebSocket(ws.ID)
		var got []string
		for _, f := range full.Frames {
			got = append(got, fmt.Sprintf("%s %s fin=%v masked=%v %d %q %d", f.Dir, f.Op, f.Fin, f.Masked, f.Size, f.Preview, f.CloseCode))
		}
		// Frames of the two directions interleave by parse order: compare
		// each direction's own sequence.
		wantIn := []string{
			`in text fin=false masked=true 3 "hel" 0`,
			`in continuation fin=true masked=true 2 "lo" 0`,
			`in ping fin=true masked=true 13 "are you there" 0`,
			fmt.Sprintf(`in text fin=true masked=true 400 %q 0`, strings.Repeat("é", 50)),
			`in close fin=true masked=true 12 "going away" 1001`,
		}
		wantOut := []string{
			`out text fin=true masked=false 5 "hello" 0`,
			`out pong fin=true masked=false 13 "are you there" 0`,
			`out binary fin=true masked=false 300 "" 0`,
			`out close fin=true masked=false 2 "" 1001`,
		}
		var gotIn, gotOut []string
		for _, s := range got {
			if strings.HasPrefix(s, "in ") {
				gotIn = append(gotIn, s)
			} else {
				gotOut = append(gotOut, s)
			}
		}
		if strings.Join(gotIn, "\n") != strings.Join(wantIn, "\n") {
			t.Errorf("frames in:\n%s\nwant:\n%s", strings.Join(gotIn, "\n"), strings.Join(wantIn, "\n"))
		}
		if strings.Join(gotOut, "\n") != strings.Join(wantOut, "\n") {
			t.Errorf("frames out:\n%s\nwant:\n%s", strings.Join(gotOut, "\n"), strings.Join(wantOut, "\n"))
		}
	})
}

// The close frame that arrived first says who closed, whichever direction
// the parsers finished first.
func TestWebSocketClosedBy(t *testing.T) {
	for _, serverFirst := range []bool{false, true} {
		r := newRecorder(Options{})
		c := r.in.Observe(ConnInfo{Tunnel: "demo"})
		c.Tap(true, []byte(upgradeIn))
		c.Tap(false, []byte(upgradeOut))
		visitorClose := frame(true, 8, true, closePayload(1000, "bye"))
		serverClose := frame(true, 8, false, closePayload(4001, "kicked"))
		if serverFirst {
			c.Tap(false, serverClose)
			c.Tap(true, visitorClose)
		} else {
			c.Tap(true, visitorClose)
			c.Tap(false, serverClose)
		}
		c.Close()
		ws := r.closed[0]
		want := "visitor 1000 bye"
		if serverFirst {
			want = "server 4001 kicked"
		}
		if got := fmt.Sprintf("%s %d %s", ws.ClosedBy, ws.CloseCode, ws.CloseReason); got != want {
			t.Errorf("closed: %q, want %q", got, want)
		}
	}
}

// A WebSocket that ends without a close frame reports 1006, as browsers do.
func TestWebSocketNoCloseFrame(t *testing.T) {
	r := newRecorder(Options{})
	r.run([]byte(upgradeIn+string(frame(true, 1, true, []byte("hi")))), []byte(upgradeOut), 0, 0)
	if len(r.closed) != 1 || r.closed[0].CloseCode != 1006 || r.closed[0].MessagesIn != 1 {
		t.Fatalf("closed %+v", r.closed)
	}
}

// A 101 for a request that did not ask for a WebSocket is not parsed as one.
func TestUpgradeNotWebSocket(t *testing.T) {
	r := newRecorder(Options{})
	in := "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	out := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n\x00\x00\x00\x04\x00"
	r.run([]byte(in), []byte(out), 0, 0)
	if len(r.ex) != 1 || r.ex[0].Status != 101 || r.ex[0].WebSocket != 0 || len(r.opened) != 0 {
		t.Fatalf("exchanges %+v, websockets %d", r.ex, len(r.opened))
	}
}

// Bytes that are not HTTP are counted, not parsed, and nothing is reported.
func TestNotHTTP(t *testing.T) {
	for _, in := range []string{"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "SSH-2.0-OpenSSH_9.6\r\n", "GET\r\n\r\n"} {
		r := newRecorder(Options{})
		r.run([]byte(in+strings.Repeat("x", 5000)), []byte("whatever"), 3, 3)
		if len(r.ex) != 0 || len(r.opened) != 0 {
			t.Errorf("%q: reported %+v", in, r.ex)
		}
	}
}

// A request without a response is reported when the connection ends.
func TestNoResponse(t *testing.T) {
	r := newRecorder(Options{})
	r.run([]byte("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"), nil, 0, 0)
	if len(r.ex) != 1 || r.ex[0].Status != 0 || !strings.Contains(r.ex[0].Error, "no response") {
		t.Fatalf("exchanges %+v", r.ex)
	}
}

// A body far bigger than the preview, in taps as big as Join's, is
// counted whole as it passes, its preview capped: the parser never falls
// behind, it parses in the tap. Bytes after it that are not a request stop
// the reading of requests, not that of the response.
func TestBigBody(t *testing.T) {
	r := newRecorder(Options{})
	c := r.in.Observe(ConnInfo{Tunnel: "demo"})
	c.Tap(true, []byte("POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n"))
	c.Tap(true, make([]byte, 2<<20))
	c.Tap(true, make([]byte, 1<<20)) // 145,728 NULs too many
	c.Tap(false, []byte("HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n"))
	c.Close()
	if len(r.ex) != 1 {
		t.Fatalf("exchanges %+v", r.ex)
	}
	e := r.ex[0]
	if b := e.RequestBody; b.Size != 3000000 || len(b.Data) != 64<<10 || !b.Truncated || e.Status != 413 || e.Error != "" {
		t.Errorf("exchange: status %d error %q, request body %d bytes, %d kept, truncated %v", e.Status, e.Error, b.Size, len(b.Data), b.Truncated)
	}
}

// What the inspector would have to hold beyond its bounds stops the
// capture, and the exchange it stopped at says so: a response head over
// headMax, responses further than holdMax ahead of their request. A first
// request head over requestHeadMax is not taken for HTTP. The taps never wait.
func TestBounds(t *testing.T) {
	big := func(n int) []byte {
		return []byte(strings.Repeat("X-Big: "+strings.Repeat("a", 1000)+"\r\n", n))
	}
	get := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	ok := []byte("HTTP/1.1 204 No Content\r\n\r\n")

	r := newRecorder(Options{})
	c := r.in.Observe(ConnInfo{Tunnel: "demo"})
	c.Tap(true, get)
	c.Tap(false, []byte("HTTP/1.1 200 OK\r\n"))
	for range 70 {
		c.Tap(false, big(1))
	}
	c.Tap(false, []byte("\r\n"))
	c.Tap(true, get)
	c.Tap(false, ok)
	c.Close()
	if len(r.ex) != 1 || r.ex[0].Status != 0 || r.ex[0].Error != "capture stopped: the response head is longer than 64 KiB" {
		t.Errorf("response head over the bound: exchanges %+v", r.ex)
	}

	r = newRecorder(Options{})
	c = r.in.Observe(ConnInfo{Tunnel: "demo"})
	c.Tap(true, append(append([]byte("GET / HTTP/1.1\r\n"), big(140)...), "\r\n"...))
	c.Tap(false, ok)
	c.Close()
	if len(r.ex) != 0 {
		t.Errorf("request head over the bound: exchanges %+v", r.ex)
	}

	r = newRecorder(Options{})
	c = r.in.Observe(ConnInfo{Tunnel: "demo"})
	c.Tap(true, get[:10])
	for range holdMax/len(ok) + 1 {
		c.Tap(false, ok)
	}
	c.Tap(true, get[10:])
	c.Close()
	if len(r.ex) != 1 || r.ex[0].Status != 0 || r.ex[0].Error != msgFellBehind {
		t.Errorf("responses ahead beyond the bound: exchanges %+v", r.ex)
	}
}

// BenchmarkJoin moves a 64 MiB HTTP upload and its answer through
// tunnel.Join over loopback TCP, without a tap and with an inspector's tap,
// to show what observing costs the byte pipe. Compare within one run.
func BenchmarkJoin(b *testing.B) {
	for _, inspected := range []bool{false, true} {
		b.Run(fmt.Sprintf("inspected=%v", inspected), func(b *testing.B) {
			const size = 64 << 20
			head := fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size)
			chunk := make([]byte, 64<<10)
			b.SetBytes(size)
			r := newRecorder(Options{})
			for b.Loop() {
				client, x := tcpPair(b)
				y, server := tcpPair(b)
				opts := tunnel.JoinOptions{}
				var c *Conn
				if inspected {
					c = r.in.Observe(ConnInfo{Tunnel: "bench"})
					opts.Tap = func(d tunnel.Direction, p []byte) { c.Tap(d == tunnel.AToB, p) }
				}
				done := make(chan error, 1)
				go func() { done <- tunnel.JoinWith(x, y, opts) }()
				go func() {
					client.Write([]byte(head))
					for n := 0; n < size; n += len(chunk) {
						client.Write(chunk)
					}
					client.CloseWrite()
					io.Copy(io.Discard, client)
				}()
				io.CopyN(io.Discard, server, int64(len(head))+size)
				server.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
				server.Close()
				<-done
				client.Close()
				if c != nil {
					c.Close()
				}
			}
			if inspected {
				r.mu.Lock()
				b.ReportMetric(float64(len(r.ex))/float64(b.N), "exchanges/op")
				r.mu.Unlock()
			}
		})
	}
}

func tcpPair(b *testing.B) (dialed, accepted *net.TCPConn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	return d.(*net.TCPConn), (<-ch).(*net.TCPConn)
}
