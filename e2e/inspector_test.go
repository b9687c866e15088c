package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/agent/inspect"
)

// startInspected runs a relay, a local server and an agent with its
// inspector on a free loopback port, and returns the inspector's URL.
func startInspected(t *testing.T) (rl *testRelay, local *localServer, inspector string) {
	t.Helper()
	rl = startRelay(t, "")
	local = startLocal(t)
	urls := make(chan string, 1)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}}, func(c *agent.Config) {
		c.InspectAddr = "127.0.0.1:0"
		prev := c.OnEvent
		c.OnEvent = func(e agent.Event) {
			if e.Kind == agent.EventInspector {
				if e.Err != nil {
					t.Errorf("inspector: %v", e.Err)
				}
				urls <- e.Inspector
			}
			prev(e)
		}
	})
	select {
	case u := <-urls:
		return rl, local, u
	case <-time.After(10 * time.Second):
		t.Fatal("no EventInspector")
	}
	return
}

// apiGet fetches an inspector API path into v.
func apiGet(t *testing.T, base, path string, v any) {
	t.Helper()
	resp, err := http.Get(base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %s", path, resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

type requestList struct {
	Requests []struct {
		ID     int64  `json:"id"`
		Method string `json:"method"`
		Path   string `json:"path"`
		Status int    `json:"status"`
		Replay bool   `json:"replay"`
	} `json:"requests"`
}

// waitRequest waits until the inspector lists a request for path and
// returns its ID.
func waitRequest(t *testing.T, base, method, path string, replay bool) int64 {
	t.Helper()
	var id int64
	waitFor(t, 5*time.Second, method+" "+path+" in /api/requests", func() bool {
		var l requestList
		apiGet(t, base, "/api/requests", &l)
		for _, r := range l.Requests {
			if r.Method == method && r.Path == path && r.Replay == replay {
				id = r.ID
				return true
			}
		}
		return false
	})
	return id
}

// TestInspectorAPI sends a request and a WebSocket session through the
// tunnel and finds them in the inspector's JSON API, with headers, bodies,
// frames and the close code; a replay reaches the local server again.
func TestInspectorAPI(t *testing.T) {
	rl, local, base := startInspected(t)
	c := visitorClient(rl.addr)

	req, _ := http.NewRequest("POST", "http://demo.localhost/echo?x=1", strings.NewReader(`{"hello":"world"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Test", "inspected")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	id := waitRequest(t, base, "POST", "/echo?x=1", false)
	var ex agent.Exchange
	apiGet(t, base, fmt.Sprintf("/api/requests/%d", id), &ex)
	if ex.Status != 200 || ex.Tunnel != "demo" || ex.Local != local.addr || !strings.HasPrefix(ex.Remote, "127.0.0.1:") {
		t.Errorf("exchange: status %d tunnel %q local %q remote %q", ex.Status, ex.Tunnel, ex.Local, ex.Remote)
	}
	if ex.RequestHeader.Get("X-Test") != "inspected" || ex.RequestHeader.Get("X-Forwarded-For") == "" {
		t.Errorf("request headers %v", ex.RequestHeader)
	}
	if got := string(ex.RequestBody.Data); got != `{"hello":"world"}` {
		t.Errorf("request body %q", got)
	}
	if got := string(ex.ResponseBody.Data); got != "POST /echo?x=1" || ex.ResponseHeader.Get("Content-Type") == "" {
		t.Errorf("response body %q, headers %v", got, ex.ResponseHeader)
	}

	// Replay as captured, then edited: both reach the local server.
	replay := func(body string) agent.Exchange {
		t.Helper()
		resp, err := http.Post(fmt.Sprintf("%s/api/requests/%d/replay", base, id), "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r agent.Exchange
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 201 {
			t.Fatalf("replay: %s %v", resp.Status, err)
		}
		return r
	}
	r1 := replay("")
	if !r1.Replay || r1.ReplayOf != id || r1.Status != 200 || string(r1.ResponseBody.Data) != "POST /echo?x=1" {
		t.Errorf("replay: %+v", r1)
	}
	r2 := replay(`{"method":"PUT","path":"/edited?y=2","body":"changed"}`)
	if r2.Status != 200 || string(r2.ResponseBody.Data) != "PUT /edited?y=2" || string(r2.RequestBody.Data) != "changed" {
		t.Errorf("edited replay: %d %q", r2.Status, r2.ResponseBody.Data)
	}
	if seen := local.seen(); seen != "/echo /echo /edited" {
		t.Errorf("local server saw %q, want the request and two replays", seen)
	}
	waitRequest(t, base, "PUT", "/edited?y=2", true)

	// A WebSocket session: frames both ways and the visitor's close.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, err := dialWS(ctx, rl.addr, "ws://demo.localhost/ws")
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"hello", "second"} {
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, got, err := ws.Read(ctx); err != nil || string(got) != msg {
			t.Fatalf("echo %q: %q %v", msg, got, err)
		}
	}
	ws.Close(4000, "done here")

	var list struct {
		WebSockets []agent.WebSocket `json:"websockets"`
	}
	waitFor(t, 5*time.Second, "a closed WebSocket in /api/websockets", func() bool {
		apiGet(t, base, "/api/websockets", &list)
		return len(list.WebSockets) == 1 && !list.WebSockets[0].Open
	})
	var s agent.WebSocket
	apiGet(t, base, fmt.Sprintf("/api/websockets/%d", list.WebSockets[0].ID), &s)
	if s.CloseCode != 4000 || s.CloseReason != "done here" || s.ClosedBy != "visitor" || s.Path != "/ws" {
		t.Errorf("close: %d %q by %q on %q", s.CloseCode, s.CloseReason, s.ClosedBy, s.Path)
	}
	if s.MessagesIn != 2 || s.MessagesOut != 2 {
		t.Errorf("messages %d in, %d out; want 2 and 2", s.MessagesIn, s.MessagesOut)
	}
	var frames []string
	for _, f := range s.Frames {
		frames = append(frames, fmt.Sprintf("%s %s %q masked=%v", f.Dir, f.Op, f.Preview, f.Masked))
	}
	for _, want := range []string{`in text "hello" masked=true`, `out text "hello" masked=false`, `in text "second" masked=true`, `in close "done here" masked=true`} {
		if !strings.Contains(strings.Join(frames, "\n"), want) {
			t.Errorf("frames lack %s:\n%s", want, strings.Join(frames, "\n"))
		}
	}

	// The API answers only to loopback names (DNS rebinding) and refuses
	// cross-site writes.
	bad, _ := http.NewRequest("GET", base+"/api/requests", nil)
	bad.Host = "evil.example"
	if resp, err := http.DefaultClient.Do(bad); err != nil || resp.StatusCode != 403 {
		t.Errorf("Host evil.example: %v %v, want 403", resp.Status, err)
	} else {
		resp.Body.Close()
	}
	cross, _ := http.NewRequest("POST", fmt.Sprintf("%s/api/requests/%d/replay", base, id), bytes.NewReader(nil))
	cross.Header.Set("Origin", "https://evil.example")
	if resp, err := http.DefaultClient.Do(cross); err != nil || resp.StatusCode != 403 {
		t.Errorf("cross-site replay: %v %v, want 403", resp.Status, err)
	} else {
		resp.Body.Close()
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestInspectorPageInChromium opens the inspector's page in headless
// Chromium: the request row is rendered, a request made while the page is
// open appears live, its details show, and the WebSocket tab shows frames.
func TestInspectorPageInChromium(t *testing.T) {
	needChromium(t)
	rl, _, base := startInspected(t)
	c := visitorClient(rl.addr)
	if status, _ := get(t, c, "http://demo.localhost/before?page=1"); status != 200 {
		t.Fatal(status)
	}
	id := waitRequest(t, base, "GET", "/before?page=1", false)

	ctx := startChromium(t)
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800), chromedp.Navigate(base+"/")); err != nil {
		t.Fatal(err)
	}
	row := fmt.Sprintf("#req-%d", id)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(row))); err != nil {
		t.Fatalf("request row: %v", err)
	}
	text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(row)))
	if err != nil || !strings.Contains(text, "GET") || !strings.Contains(text, "/before?page=1") || !strings.Contains(text, "200") {
		t.Fatalf("row text %q: %v", text, err)
	}

	// Live: a request made now appears without a reload.
	if status, _ := get(t, c, "http://demo.localhost/live"); status != 200 {
		t.Fatal(status)
	}
	live := waitRequest(t, base, "GET", "/live", false)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf("#req-%d", live)))); err != nil {
		t.Fatalf("live row: %v", err)
	}

	// Details of the first request, with its Replay button.
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(row)), chromedp.WaitVisible(chromedp.CSS("#replay"))); err != nil {
		t.Fatalf("details: %v", err)
	}
	detail, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#detail")))
	if err != nil || !strings.Contains(detail, "X-Forwarded-For") || !strings.Contains(detail, "GET /before?page=1") {
		t.Errorf("details %q: %v", detail, err)
	}
	saveScreenshot(t, ctx, "inspector-requests.png")

	// A binary response longer than the inspector keeps (64 KiB): the page
	// says how much of it was kept.
	if status, _ := get(t, c, "http://demo.localhost/bytes?n=100000"); status != 200 {
		t.Fatal(status)
	}
	big := fmt.Sprintf("#req-%d", waitRequest(t, base, "GET", "/bytes?n=100000", false))
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(big)), chromedp.Click(chromedp.CSS(big))); err != nil {
		t.Fatalf("details of the large response: %v", err)
	}
	waitFor(t, 5*time.Second, "the large response's details", func() bool {
		detail, err = chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#detail")))
		return err == nil && strings.Contains(detail, "GET /bytes?n=100000")
	})
	if !strings.Contains(detail, "97.7 KiB — only the first 64.0 KiB kept") {
		t.Errorf("details of a 100,000-byte binary response %q; want it to say 97.7 KiB, the first 64.0 KiB kept", detail)
	}

	// A WebSocket session, then the WebSockets tab with its frames.
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, err := dialWS(wctx, rl.addr, "ws://demo.localhost/ws")
	if err != nil {
		t.Fatal(err)
	}
	ws.Write(wctx, websocket.MessageText, []byte(`{"type":"chat","text":"hi from the test"}`))
	ws.Read(wctx)
	ws.Close(websocket.StatusNormalClosure, "bye")
	waitFor(t, 5*time.Second, "the WebSocket closed in the API", func() bool {
		var l struct {
			WebSockets []agent.WebSocket `json:"websockets"`
		}
		apiGet(t, base, "/api/websockets", &l)
		return len(l.WebSockets) == 1 && !l.WebSockets[0].Open
	})
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#tab-websockets")), chromedp.WaitVisible(chromedp.CSS("#ws-1")),
		chromedp.Click(chromedp.CSS("#ws-1")), chromedp.WaitVisible(chromedp.CSS("#frames tr"))); err != nil {
		t.Fatalf("WebSocket tab: %v", err)
	}
	frames, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#detail")))
	if err != nil || !strings.Contains(frames, "hi from the test") || !strings.Contains(frames, "closed 1000") {
		t.Errorf("WebSocket details %q: %v", frames, err)
	}
	saveScreenshot(t, ctx, "inspector-websockets.png")
}

// inspectorPage serves in's page and API on a loopback port for the test.
func inspectorPage(t *testing.T, in *inspect.Inspector) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: in.Handler(true)}
	go srv.Serve(ln)
	t.Cleanup(func() { in.Close(); srv.Close() })
	return "http://" + ln.Addr().String()
}

// showDetail opens the inspector's page in Chromium and the detail of
// exchange 1.
func showDetail(t *testing.T, base string) context.Context {
	t.Helper()
	ctx := startChromium(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#req-1")),
		chromedp.Click(chromedp.CSS("#req-1")), chromedp.WaitVisible(chromedp.CSS("#replay"))); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// The page lays JSON bodies out on lines without changing them: a number
// beyond a double's precision, 1.10 and a repeated key show as sent
// (JSON.stringify of JSON.parse would show 9007199254740992, 1.1, one key).
func TestInspectorPageShowsJSONAsSent(t *testing.T) {
	needChromium(t)
	in := inspect.New(inspect.Options{})
	base := inspectorPage(t, in)
	const body = `{"id":9007199254740993,"price":1.10,"a":1,"a":2}`
	c := in.Observe(inspect.ConnInfo{Tunnel: "demo", Local: "127.0.0.1:1"})
	c.Tap(true, []byte("GET /order HTTP/1.1\r\nHost: demo\r\n\r\n"))
	c.Tap(false, fmt.Appendf(nil, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
	c.Close()
	shown, err := chromedp.Run(showDetail(t, base), chromedp.Text(chromedp.CSS("#detail pre.body")))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"9007199254740993", "1.10", `"a": 1`, `"a": 2`} {
		if !strings.Contains(shown, want) {
			t.Errorf("the page shows the response body without %s:\n%s", want, shown)
		}
	}
}

// "Edit and replay" with nothing edited sends the body as captured, byte
// for byte: a binary body (which the text area cannot hold) is not dropped.
func TestInspectorEditReplayKeepsBinaryBody(t *testing.T) {
	needChromium(t)
	got := make(chan []byte, 2)
	local := serveHandler(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- b
	})
	in := inspect.New(inspect.Options{})
	base := inspectorPage(t, in)
	body := []byte{0x89, 'P', 'N', 'G', 0xff, 0x00, 0x10}
	c := in.Observe(inspect.ConnInfo{Tunnel: "demo", Local: local})
	c.Tap(true, fmt.Appendf(nil, "POST /upload HTTP/1.1\r\nHost: demo\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
	c.Tap(false, []byte("HTTP/1.1 204 No Content\r\n\r\n"))
	c.Close()
	ctx := showDetail(t, base)
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#edit")), chromedp.WaitVisible(chromedp.CSS("form.edit button")),
		chromedp.Click(chromedp.CSS("form.edit button"))); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, body) {
			t.Errorf("edit and replay, nothing edited: the local server got body %q, want %q", b, body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no replay reached the local server")
	}
}
