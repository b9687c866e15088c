package e2e

import (
	"context"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// Request headers as Chromium sends them.
var (
	browserNav = []string{
		"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
		"Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document", "Sec-Fetch-Site", "none", "Sec-Fetch-User", "?1",
	}
	browserFetch = []string{"Accept", "text/html", "Sec-Fetch-Mode", "cors", "Sec-Fetch-Dest", "empty", "Sec-Fetch-Site", "same-origin"}
)

// cookieLocal is a local server that shows each request's method, target
// and Cookie header (as HTML to a browser), and echoes WebSocket messages
// at /ws, refusing a handshake that carries the relay's cookie.
type cookieLocal struct {
	addr string
	hits atomic.Int64 // plain requests seen
}

func startCookieLocal(t testing.TB) *cookieLocal {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &cookieLocal{addr: ln.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Cookie"), "tunnel_ack") {
			http.Error(w, "the relay's cookie reached the local server", http.StatusBadRequest)
			return
		}
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true}) // browser pages on other names connect too
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		cl.hits.Add(1)
		req, cookie := r.Method+" "+r.URL.RequestURI(), r.Header.Get("Cookie")
		if strings.Contains(r.Header.Get("Accept"), "text/html") {
			fmt.Fprintf(w, "<!doctype html><title>local</title><p id=req>%s</p><p id=cookie>%s</p>", html.EscapeString(req), html.EscapeString(cookie))
			return
		}
		fmt.Fprintf(w, "%s\ncookie=%s", req, cookie)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return cl
}

// startInterstitial runs a relay with the interstitial on, a cookieLocal
// and an agent for "demo", and returns the relay, the local server and the
// tunnel's URL.
func startInterstitial(t testing.TB) (*testRelay, *cookieLocal, string) {
	t.Helper()
	rl := startRelay(t, "", func(c *relay.Config) { c.Interstitial = 7 * 24 * time.Hour })
	local := startCookieLocal(t)
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	return rl, local, urls[0]
}

// doRequest sends one request through the relay without following redirects.
func doRequest(t testing.TB, c *http.Client, method, u string, body io.Reader, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func noRedirects(c *http.Client) *http.Client {
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

// confirmPage submits the Continue form of the warning page body as the page
// itself would, and returns the relay's answer with the form's fields.
func confirmPage(t testing.TB, c *http.Client, base, body string) (*http.Response, url.Values) {
	t.Helper()
	form := url.Values{}
	for _, m := range regexp.MustCompile(`name="(\w+)" value="([^"]*)"`).FindAllStringSubmatch(body, -1) {
		form.Set(m[1], html.UnescapeString(m[2]))
	}
	action := regexp.MustCompile(`action="([^"]+)"`).FindStringSubmatch(body)
	if action == nil || action[1] != "/_tunnel/continue" {
		t.Fatalf("form action %v, fields %v", action, form)
	}
	resp, _ := doRequest(t, c, "POST", base+action[1], strings.NewReader(form.Encode()),
		"Content-Type", "application/x-www-form-urlencoded", "Origin", base,
		"Sec-Fetch-Site", "same-origin", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document")
	return resp, form
}

// ackOf returns the acknowledgement cookie resp sets, or nil.
func ackOf(resp *http.Response) *http.Cookie {
	for _, ck := range resp.Cookies() {
		if ck.Name == "tunnel_ack" {
			return ck
		}
	}
	return nil
}

// TestInterstitialBrowserFlow walks a browser's first visit through the
// relay and agent: the page, the confirm form, the redirect to the
// original path and query, and the acknowledged navigation, which reaches
// the local server without the relay's cookie but with the visitor's own.
func TestInterstitialBrowserFlow(t *testing.T) {
	rl, local, base := startInterstitial(t)
	c := noRedirects(visitorClient(rl.addr))

	resp, body := doRequest(t, c, "GET", base+"/page?x=1", nil, browserNav...)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "Continue to demo.localhost") {
		t.Fatalf("first navigation: %d\n%s", resp.StatusCode, body)
	}
	if resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("page headers: %v", resp.Header)
	}
	if n := local.hits.Load(); n != 0 {
		t.Fatalf("the local server saw %d requests before the visitor confirmed", n)
	}

	resp, form := confirmPage(t, c, base, body)
	if form.Get("to") != "/page?x=1" {
		t.Fatalf("form fields %v", form)
	}
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/page?x=1" {
		t.Fatalf("confirm: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	ack := ackOf(resp)
	if ack == nil || !ack.HttpOnly || ack.SameSite != http.SameSiteLaxMode || ack.MaxAge != 7*24*3600 {
		t.Fatalf("confirm set cookies %v", resp.Cookies())
	}
	if n := local.hits.Load(); n != 0 {
		t.Fatalf("the confirm reached the local server (%d requests)", n)
	}

	cookie := "theme=dark; " + ack.Name + "=" + ack.Value + "; session=abc"
	for _, path := range []string{"/page?x=1", "/other?y=2"} {
		resp, body = doRequest(t, c, "GET", base+path, nil, append([]string{"Cookie", cookie}, browserNav...)...)
		want := fmt.Sprintf(`<p id=req>GET %s</p><p id=cookie>theme=dark; session=abc</p>`, html.EscapeString(path))
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, want) {
			t.Fatalf("acknowledged GET %s: %d\n%s\nwant %s", path, resp.StatusCode, body, want)
		}
	}
	// The same cookie on a WebSocket handshake is stripped too.
	ws := wsEchoWith(t, rl.addr, strings.Replace(base, "http", "ws", 1)+"/ws", http.Header{"Cookie": {cookie}})
	if ws != "echo me" {
		t.Fatalf("WebSocket answer %q", ws)
	}
}

// TestInterstitialNeverBlocks checks, for a visitor that never saw the page,
// that everything but a top-level navigation goes straight to the local
// server: WebSocket upgrades (even ones that say they accept HTML), fetch,
// form posts and non-browser clients.
func TestInterstitialNeverBlocks(t *testing.T) {
	rl, local, base := startInterstitial(t)
	c := noRedirects(visitorClient(rl.addr))
	for _, tc := range []struct {
		name, method string
		hdr          []string
	}{
		{"curl", "GET", []string{"Accept", "*/*", "User-Agent", "curl/8.5.0"}},
		{"Go client", "GET", nil},
		{"Node fetch", "GET", []string{"Accept", "*/*", "Sec-Fetch-Mode", "cors", "User-Agent", "node"}},
		{"fetch asking for HTML", "GET", browserFetch},
		{"form POST", "POST", browserNav},
		{"HEAD navigation", "HEAD", browserNav},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := local.hits.Load()
			resp, body := doRequest(t, c, tc.method, base+"/api?q=1", nil, tc.hdr...)
			if resp.StatusCode != http.StatusOK || local.hits.Load() != before+1 {
				t.Fatalf("%s: %d, local hits %d→%d\n%s", tc.name, resp.StatusCode, before, local.hits.Load(), body)
			}
		})
	}
	wsURL := strings.Replace(base, "http", "ws", 1) + "/ws"
	for name, hdr := range map[string]http.Header{
		"Chromium WebSocket":             {"Sec-Fetch-Mode": {"websocket"}, "Sec-Fetch-Dest": {"websocket"}, "Sec-Fetch-Site": {"cross-site"}, "Origin": {"http://elsewhere.example"}},
		"WebSocket accepting HTML":       {"Accept": {"text/html"}},
		"WebSocket with a forged cookie": {"Accept": {"text/html"}, "Cookie": {"tunnel_ack=1.forged"}},
	} {
		if got := wsEchoWith(t, rl.addr, wsURL, hdr); got != "echo me" {
			t.Errorf("%s: answer %q", name, got)
		}
	}
	// The confirm path is the relay's, whatever the method: never forwarded.
	before := local.hits.Load()
	resp, _ := doRequest(t, c, "GET", base+"/_tunnel/continue?to=/", nil, browserNav...)
	if resp.StatusCode != http.StatusMethodNotAllowed || local.hits.Load() != before {
		t.Errorf("GET /_tunnel/continue: %d, forwarded %v", resp.StatusCode, local.hits.Load() != before)
	}
}

// TestInterstitialOff checks that a relay without the option shows nothing.
func TestInterstitialOff(t *testing.T) {
	rl := startRelay(t, "")
	local := startCookieLocal(t)
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	resp, body := doRequest(t, visitorClient(rl.addr), "GET", urls[0]+"/page?x=1", nil, browserNav...)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "GET /page?x=1") {
		t.Fatalf("navigation with the interstitial off: %d\n%s", resp.StatusCode, body)
	}
}

// wsEchoWith opens a WebSocket with extra handshake headers, sends one
// message and returns the answer.
func wsEchoWith(t testing.TB, relayAddr, u string, hdr http.Header) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: visitorClient(relayAddr), HTTPHeader: hdr})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("WebSocket %s with %v: status %d: %v", u, hdr, status, err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("echo me")); err != nil {
		t.Fatal(err)
	}
	_, msg, err := c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Close(websocket.StatusNormalClosure, "")
	return string(msg)
}

// A phisher's own page elsewhere auto-submits a form to the tunnel: the
// browser's top-level POST navigation (Sec-Fetch-Site cross-site, or
// same-site from another tunnel under the relay's domain) lands the
// visitor on the tunnel's content with the tunnel's URL in the address bar.
// It is a first top-level visit like a link's GET and must get the warning
// page, not the local server.
func TestInterstitialCrossSitePostNavigation(t *testing.T) {
	rl, local, base := startInterstitial(t)
	c := noRedirects(visitorClient(rl.addr))
	for _, site := range []string{"cross-site", "same-site"} {
		before := local.hits.Load()
		resp, body := doRequest(t, c, "POST", base+"/login", strings.NewReader("a=1"),
			"Content-Type", "application/x-www-form-urlencoded", "Origin", "http://phish.example",
			"Accept", "text/html,application/xhtml+xml,*/*;q=0.8",
			"Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document", "Sec-Fetch-Site", site)
		if local.hits.Load() != before || resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "Continue to demo.localhost") {
			t.Errorf("%s POST navigation: %d, reached the local server: %v\n%.200s", site, resp.StatusCode, local.hits.Load() != before, body)
		}
	}
}

// A visitor's acknowledgement is for whoever held the name when it was
// given: once the name passes to someone else (here another agent of an
// open relay, after the first released it) the warning shows again. The
// same owner coming back keeps it: on a relay with tokens that is the
// token, so a restarted agent does not make its visitors confirm again.
func TestInterstitialAckBelongsToHolder(t *testing.T) {
	local := startCookieLocal(t)
	acknowledged := func(t *testing.T, rl *testRelay, mod ...func(*agent.Config)) (first *testAgent, nav func() int) {
		first, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}}, mod...)
		c := noRedirects(visitorClient(rl.addr))
		_, body := doRequest(t, c, "GET", urls[0]+"/", nil, browserNav...)
		resp, _ := confirmPage(t, c, urls[0], body)
		ack := ackOf(resp)
		if ack == nil {
			t.Fatalf("confirm set cookies %v", resp.Cookies())
		}
		nav = func() int {
			resp, _ := doRequest(t, c, "GET", urls[0]+"/", nil, append([]string{"Cookie", ack.Name + "=" + ack.Value}, browserNav...)...)
			return resp.StatusCode
		}
		if status := nav(); status != http.StatusOK {
			t.Fatalf("acknowledged navigation: %d", status)
		}
		return first, nav
	}
	withInterstitial := func(c *relay.Config) { c.Interstitial = time.Hour }

	t.Run("open relay, another agent", func(t *testing.T) {
		rl := startRelay(t, "", withInterstitial)
		first, nav := acknowledged(t, rl)
		first.stop()
		startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
		if status := nav(); status != http.StatusForbidden {
			t.Fatalf("navigation to the name's next holder with the old acknowledgement: %d, want the page (403)", status)
		}
	})
	t.Run("tokens, same token again", func(t *testing.T) {
		rl := startRelay(t, "", withInterstitial, withTokens(relay.Token{Name: "alice", Secret: "alice-secret-1"}, relay.Token{Name: "bob", Secret: "bob-secret-1"}))
		first, nav := acknowledged(t, rl, withToken("alice-secret-1"))
		first.stop()
		second, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}}, withToken("alice-secret-1"))
		if status := nav(); status != http.StatusOK {
			t.Fatalf("navigation after the same token's agent restarted: %d, want 200", status)
		}
		second.stop()
		startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}}, withToken("bob-secret-1"))
		if status := nav(); status != http.StatusForbidden {
			t.Fatalf("navigation after another token took the name: %d, want the page (403)", status)
		}
	})
}
