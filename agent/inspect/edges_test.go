package inspect

import (
	"bytes"
	"compress/flate"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// An inspector listening beyond loopback (--inspect-addr 0.0.0.0:4040)
// answers to loopback names and IP addresses only: a web page can rebind
// a name of its own to the machine, never an address, so it can neither
// read the captured requests (cookies, tokens) nor replay them.
func TestHandlerBeyondLoopbackRefusesNames(t *testing.T) {
	r := newRecorder(Options{})
	c := r.in.Observe(ConnInfo{Tunnel: "demo", Local: "127.0.0.1:1"})
	c.Tap(true, []byte("GET /account HTTP/1.1\r\nHost: demo\r\nCookie: session=s3cret\r\n\r\n"))
	c.Tap(false, []byte("HTTP/1.1 204 No Content\r\n\r\n"))
	c.Close()
	h := r.in.Handler(false)

	req := httptest.NewRequest("GET", "http://rebind.attacker.example:4040/api/requests/1", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code == http.StatusOK && strings.Contains(w.Body.String(), "s3cret") {
		t.Errorf("a rebound page reads the captured cookie: %d", w.Code)
	}

	req = httptest.NewRequest("POST", "http://rebind.attacker.example:4040/api/requests/1/replay", nil)
	req.Header.Set("Origin", "http://rebind.attacker.example:4040")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	w = httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code == http.StatusCreated {
		t.Errorf("a rebound page replays a request: %d", w.Code)
	}

	// The machine's own addresses still work, by IP.
	for _, host := range []string{"192.168.1.20:4040", "[fd00::20]:4040", "127.0.0.1:4040", "localhost:4040"} {
		req = httptest.NewRequest("GET", "http://"+host+"/api/requests", nil)
		w = httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			t.Errorf("Host %s: %d", host, w.Code)
		}
	}
}

// A request head between 64 and 128 KiB (the relay takes 64 KiB plus Go's
// slack, then adds its own fields) is a request like any other, and so is
// the next one on the connection.
func TestBigRequestHead(t *testing.T) {
	r := newRecorder(Options{})
	c := r.in.Observe(ConnInfo{Tunnel: "demo"})
	c.Tap(true, []byte("GET /big HTTP/1.1\r\nHost: x\r\nCookie: a="+strings.Repeat("x", 67<<10)+"\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n"))
	c.Tap(false, []byte("HTTP/1.1 204 No Content\r\n\r\n"))
	c.Tap(true, []byte("GET /next HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.Tap(false, []byte("HTTP/1.1 204 No Content\r\n\r\n"))
	c.Close()
	if len(r.ex) != 2 || r.ex[0].Path != "/big" || r.ex[0].Status != 204 || r.ex[1].Path != "/next" {
		t.Fatalf("%d exchanges: %+v", len(r.ex), r.ex)
	}
}

// A replay sends the captured headers and no others: without a User-Agent
// of its own, Go's transport would add one the replay's record does not show.
func TestReplayAddsNoHeaders(t *testing.T) {
	var got http.Header
	local := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r.Header.Clone() }))
	defer local.Close()
	r := newRecorder(Options{})
	id := observed(t, r, ConnInfo{Tunnel: "demo", Local: strings.TrimPrefix(local.URL, "http://")})
	ex, _, err := r.in.Replay(context.Background(), r.in.Exchange(id), ReplayRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for k := range got {
		if _, ok := ex.RequestHeader[k]; !ok && k != "Content-Length" && k != "Connection" {
			t.Errorf("the local server got %s: %q, which the request did not have and the replay does not show", k, got.Get(k))
		}
	}
}

// The continuation frames of a permessage-deflate message are compressed
// too (RSV1 is on the first frame only, RFC 7692 6.1): no preview is made
// of their deflate bytes.
func TestDeflateContinuation(t *testing.T) {
	var z bytes.Buffer
	w, _ := flate.NewWriter(&z, flate.BestCompression)
	w.Write([]byte(`{"type":"chat","text":"hello hello hello hello, how are you today? fine thanks"}`))
	w.Flush()
	data := bytes.TrimSuffix(z.Bytes(), []byte{0, 0, 0xff, 0xff})
	cut := len(data) / 2
	first := frame(false, 1, true, data[:cut])
	first[0] |= 0x40 // RSV1 on the first frame only
	second := frame(true, 0, true, data[cut:])
	r := newRecorder(Options{})
	r.run([]byte(upgradeIn+string(first)+string(second)), []byte(upgradeOut), 0, 0)
	ws, _ := r.in.WebSocket(1)
	if len(ws.Frames) != 2 {
		t.Fatalf("frames %+v", ws.Frames)
	}
	for _, f := range ws.Frames {
		t.Logf("%s fin=%v compressed=%v size=%d preview=%q", f.Op, f.Fin, f.Compressed, f.Size, f.Preview)
	}
	if c := ws.Frames[1]; !c.Compressed || c.Preview != "" {
		t.Errorf("continuation of a compressed message: compressed=%v, preview %q (deflate bytes shown as text)", c.Compressed, c.Preview)
	}
}
