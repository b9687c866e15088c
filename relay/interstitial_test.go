package relay

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

const (
	testHost   = "demo.localhost"
	testHolder = "holder-of-demo" // as holderID gives it
)

// Header sets as browsers and other clients send them.
var (
	chromeNav = []string{
		"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
		"Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document", "Sec-Fetch-Site", "none", "Sec-Fetch-User", "?1",
	}
	oldBrowserNav = []string{"Accept", "text/html,application/xhtml+xml,*/*;q=0.8"}
)

// visit builds a visitor request for testHost with header pairs.
func visit(method, target string, hdr ...string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	r.Host = testHost + ":8000"
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return r
}

// check runs the interstitial on r and returns whether it answered, with
// the recorded response.
func check(s *Server, r *http.Request) (bool, *httptest.ResponseRecorder) {
	w := httptest.NewRecorder()
	handled := s.interstitialCheck(w, r, canonicalHost(r.Host), testHolder)
	return handled, w
}

func newInterstitialServer(d time.Duration) *Server { return &Server{inter: newInterstitial(d)} }

// TestInterstitialOnlyForNavigations checks who sees the page: top-level
// browser navigations only, never WebSocket handshakes, fetch/XHR,
// subresources, frames, other methods or non-browser clients.
func TestInterstitialOnlyForNavigations(t *testing.T) {
	s := newInterstitialServer(7 * 24 * time.Hour)
	for _, tc := range []struct {
		name   string
		method string
		hdr    []string
		shown  bool
	}{
		{"Chromium navigation", "GET", chromeNav, true},
		{"navigation from a link on another site", "GET", []string{"Accept", "text/html", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document", "Sec-Fetch-Site", "cross-site"}, true},
		{"browser without Fetch Metadata", "GET", oldBrowserNav, true},
		{"Accept in capitals", "GET", []string{"Accept", "TEXT/HTML"}, true},
		{"WebSocket from Chromium", "GET", []string{"Upgrade", "websocket", "Connection", "Upgrade", "Sec-Fetch-Mode", "websocket", "Sec-Fetch-Dest", "websocket", "Sec-Fetch-Site", "cross-site"}, false},
		{"WebSocket without Fetch Metadata but Accept html", "GET", append([]string{"Upgrade", "websocket", "Connection", "Upgrade"}, oldBrowserNav...), false},
		{"any Upgrade, even on a navigation", "GET", append([]string{"Upgrade", "h2c"}, chromeNav...), false},
		{"fetch", "GET", []string{"Accept", "*/*", "Sec-Fetch-Mode", "cors", "Sec-Fetch-Dest", "empty", "Sec-Fetch-Site", "same-origin"}, false},
		{"fetch asking for HTML", "GET", []string{"Accept", "text/html", "Sec-Fetch-Mode", "cors", "Sec-Fetch-Dest", "empty", "Sec-Fetch-Site", "cross-site"}, false},
		{"no-cors subresource", "GET", []string{"Accept", "image/*", "Sec-Fetch-Mode", "no-cors", "Sec-Fetch-Dest", "image"}, false},
		{"same-origin XHR", "GET", []string{"Accept", "text/html", "Sec-Fetch-Mode", "same-origin", "Sec-Fetch-Dest", "empty"}, false},
		{"iframe navigation", "GET", []string{"Accept", "text/html", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "iframe"}, false},
		{"metadata without mode", "GET", []string{"Accept", "text/html", "Sec-Fetch-Site", "same-origin"}, false},
		{"form POST navigation", "POST", chromeNav, false},
		// Browsers send no Fetch Metadata to plain HTTP on a real domain:
		// a form another site submits says so in Origin.
		{"another site's form over plain HTTP", "POST", append([]string{"Origin", "http://evil.example", "Content-Type", "application/x-www-form-urlencoded"}, oldBrowserNav...), true},
		{"a form from an opaque origin over plain HTTP", "POST", append([]string{"Origin", "null"}, oldBrowserNav...), true},
		{"the tunnel's own form over plain HTTP", "POST", append([]string{"Origin", "http://" + testHost + ":8000"}, oldBrowserNav...), false},
		{"POST with neither Origin nor metadata", "POST", oldBrowserNav, false},
		{"HEAD", "HEAD", chromeNav, false},
		{"PUT without metadata", "PUT", oldBrowserNav, false},
		{"curl", "GET", []string{"Accept", "*/*", "User-Agent", "curl/8.5.0"}, false},
		{"Go http client", "GET", []string{"User-Agent", "Go-http-client/1.1"}, false},
		{"Node fetch (undici)", "GET", []string{"Accept", "*/*", "Sec-Fetch-Mode", "cors", "User-Agent", "node"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			handled, w := check(s, visit(tc.method, "/page?x=1", tc.hdr...))
			if handled != tc.shown {
				t.Fatalf("handled=%v, want %v (status %d)", handled, tc.shown, w.Code)
			}
			if tc.shown && w.Code != http.StatusForbidden {
				t.Fatalf("page status %d, want 403", w.Code)
			}
		})
	}
}

// TestInterstitialPage checks the page: its headers, its text, a form that
// carries the original target, and a CSP that admits its one style.
func TestInterstitialPage(t *testing.T) {
	s := newInterstitialServer(7 * 24 * time.Hour)
	handled, w := check(s, visit("GET", "/page?x=1&y=%2F", chromeNav...))
	if !handled {
		t.Fatal("navigation not handled")
	}
	res := w.Result()
	for k, want := range map[string]string{
		"Content-Type":           "text/html; charset=utf-8",
		"X-Frame-Options":        "DENY",
		"Cache-Control":          "no-store",
		"X-Content-Type-Options": "nosniff",
	} {
		if got := res.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	csp := res.Header.Get("Content-Security-Policy")
	for _, d := range []string{"default-src 'none'", "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'"} {
		if !strings.Contains(csp, d) {
			t.Errorf("CSP %q lacks %q", csp, d)
		}
	}
	if strings.Contains(csp, "unsafe") || strings.Contains(csp, "script-src") {
		t.Errorf("CSP %q allows more than it should", csp)
	}
	body := w.Body.String()
	style := regexp.MustCompile(`(?s)<style>(.*?)</style>`).FindStringSubmatch(body)
	if style == nil {
		t.Fatal("page has no style")
	}
	sum := sha256.Sum256([]byte(style[1]))
	if h := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, h) {
		t.Errorf("CSP %q does not admit the page's style (%s)", csp, h)
	}
	for _, want := range []string{
		testHost, "someone's own computer", "tunnel relay", "passwords", "payment details",
		">Continue to demo.localhost</button>", `action="/_tunnel/continue"`, `method="post"`,
		`name="to" value="/page?x=1&amp;y=%2F"`, "7 days", `name="viewport"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	for _, bad := range []string{"<script", "src=", "http://", "https://", "<link"} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains %q: it must load nothing", bad)
		}
	}
	if len(body) > 4<<10 {
		t.Errorf("page is %d bytes; keep it small", len(body))
	}
}

// form fetches the page for target and returns its form fields.
func form(t *testing.T, s *Server, target string) url.Values {
	t.Helper()
	handled, w := check(s, visit("GET", target, chromeNav...))
	if !handled {
		t.Fatalf("GET %s: no interstitial", target)
	}
	v := url.Values{}
	for _, m := range regexp.MustCompile(`name="(\w+)" value="([^"]*)"`).FindAllStringSubmatch(w.Body.String(), -1) {
		v.Set(m[1], strings.ReplaceAll(m[2], "&amp;", "&"))
	}
	if v.Get("to") == "" || v.Get("exp") == "" || v.Get("token") == "" {
		t.Fatalf("form fields %v", v)
	}
	return v
}

// confirm posts the form as the page itself would.
func confirm(s *Server, v url.Values, hdr ...string) (bool, *httptest.ResponseRecorder) {
	r := httptest.NewRequest("POST", continuePath, strings.NewReader(v.Encode()))
	r.Host = testHost + ":8000"
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if len(hdr) == 0 {
		hdr = []string{"Origin", "http://" + testHost + ":8000", "Sec-Fetch-Site", "same-origin", "Sec-Fetch-Mode", "navigate", "Sec-Fetch-Dest", "document"}
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	return check(s, r)
}

// TestInterstitialContinue walks the confirm flow: the form sets a host-only
// cookie and redirects to the original path and query; the cookie then lets
// navigations through and is removed before the request goes on, other
// cookies kept.
func TestInterstitialContinue(t *testing.T) {
	s := newInterstitialServer(7 * 24 * time.Hour)
	handled, w := confirm(s, form(t, s, "/page?x=1"))
	if !handled || w.Code != http.StatusSeeOther {
		t.Fatalf("confirm: handled=%v status %d: %s", handled, w.Code, w.Body)
	}
	if loc := w.Header().Get("Location"); loc != "/page?x=1" {
		t.Errorf("Location %q, want /page?x=1", loc)
	}
	cookies := w.Result().Cookies()
	if len(cookies) != 1 {
		t.Fatalf("cookies %v", cookies)
	}
	c := cookies[0]
	if c.Name != ackCookie || !c.HttpOnly || c.Secure || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Domain != "" || c.MaxAge != 7*24*3600 {
		t.Errorf("cookie %s", c)
	}

	r := visit("GET", "/page?x=1", chromeNav...)
	r.Header.Add("Cookie", "a=1; "+c.Name+"="+c.Value+"; b=2")
	r.Header.Add("Cookie", "tunnel_ack_other=3")
	if handled, w := check(s, r); handled {
		t.Fatalf("acknowledged navigation got %d", w.Code)
	}
	if got := strings.Join(r.Header.Values("Cookie"), " | "); got != "a=1; b=2; tunnel_ack_other=3" {
		t.Errorf("forwarded Cookie %q, want the others only", got)
	}

	// The acknowledgement is per host.
	r = visit("GET", "/", chromeNav...)
	r.Host = "other.localhost"
	r.AddCookie(c)
	if handled, _ := check(s, r); !handled {
		t.Error("a cookie for demo let a navigation to other through")
	}
}

// TestInterstitialContinueTLS checks the cookie over TLS: __Host- name,
// Secure; a cookie without the prefix does not count there.
func TestInterstitialContinueTLS(t *testing.T) {
	s := newInterstitialServer(time.Hour)
	r := httptest.NewRequest("POST", continuePath, strings.NewReader(form(t, s, "/").Encode()))
	r.Host = testHost
	r.TLS = &tls.ConnectionState{ServerName: testHost}
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Sec-Fetch-Site", "same-origin")
	_, w := check(s, r)
	cookies := w.Result().Cookies()
	if w.Code != http.StatusSeeOther || len(cookies) != 1 {
		t.Fatalf("status %d, cookies %v", w.Code, cookies)
	}
	c := cookies[0]
	if c.Name != "__Host-tunnel_ack" || !c.Secure || !c.HttpOnly || c.Path != "/" || c.MaxAge != 3600 {
		t.Errorf("cookie %s", c)
	}
	for _, name := range []string{c.Name, ackCookie} {
		r := visit("GET", "/", chromeNav...)
		r.TLS = &tls.ConnectionState{}
		r.AddCookie(&http.Cookie{Name: name, Value: c.Value})
		handled, _ := check(s, r)
		if want := name == ackCookie; handled != want {
			t.Errorf("cookie %s over TLS: handled=%v, want %v", name, handled, want)
		}
		if !handled && r.Header.Get("Cookie") != "" {
			t.Errorf("cookie %s not stripped: %q", name, r.Header.Get("Cookie"))
		}
	}
}

// TestInterstitialForgedCookies checks that only the relay's own, unexpired
// acknowledgement for this host counts.
func TestInterstitialForgedCookies(t *testing.T) {
	s := newInterstitialServer(time.Hour)
	other := newInterstitial(time.Hour)
	exp := time.Now().Add(time.Hour).Unix()
	e := func(d int64) string { return strconv.FormatInt(exp+d, 10) }
	good := e(0) + "." + s.inter.sign("ack", testHost, testHolder, e(0))
	for name, v := range map[string]string{
		"constant":          "1",
		"empty":             "",
		"other relay's key": e(0) + "." + other.sign("ack", testHost, testHolder, e(0)),
		"other host":        e(0) + "." + s.inter.sign("ack", "other.localhost", testHolder, e(0)),
		"other holder":      e(0) + "." + s.inter.sign("ack", testHost, "holder-before", e(0)),
		"longer expiry":     e(3600) + "." + strings.SplitN(good, ".", 2)[1],
		"form token":        e(0) + "." + s.inter.sign("continue", testHost, testHolder, "/", e(0)),
		"expired":           e(-7200) + "." + s.inter.sign("ack", testHost, testHolder, e(-7200)),
	} {
		r := visit("GET", "/", chromeNav...)
		r.Header.Set("Cookie", ackCookie+"="+v)
		if handled, _ := check(s, r); !handled {
			t.Errorf("%s cookie %q was accepted", name, v)
		}
	}
	// A planted bad cookie beside the good one does not hide it.
	r := visit("GET", "/", chromeNav...)
	r.Header.Set("Cookie", ackCookie+"=junk; "+ackCookie+"="+good)
	if handled, _ := check(s, r); handled {
		t.Error("the good cookie after a bad one was not accepted")
	}
}

// TestInterstitialExpiry checks, on a fake clock, that the acknowledgement
// lasts its duration and no longer, and that a stale form confirms nothing
// but leads back to a fresh page.
func TestInterstitialExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newInterstitialServer(24 * time.Hour)
		_, w := confirm(s, form(t, s, "/a"))
		c := w.Result().Cookies()[0]
		nav := func() bool {
			r := visit("GET", "/a", chromeNav...)
			r.AddCookie(c)
			handled, _ := check(s, r)
			return handled
		}
		time.Sleep(24*time.Hour - time.Minute)
		if nav() {
			t.Fatal("the acknowledgement expired early")
		}
		time.Sleep(2 * time.Minute)
		if !nav() {
			t.Fatal("the acknowledgement outlived its duration")
		}

		v := form(t, s, "/b?c=d")
		time.Sleep(formLifetime + time.Second)
		_, w = confirm(s, v)
		if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/b?c=d" || len(w.Result().Cookies()) != 0 {
			t.Errorf("stale form: status %d, Location %q, cookies %v", w.Code, w.Header().Get("Location"), w.Result().Cookies())
		}
	})
}

// TestInterstitialContinueRefused checks the confirm action's refusals:
// other methods, cross-site forms, tokens for another host or target, and
// targets that would leave the host.
func TestInterstitialContinueRefused(t *testing.T) {
	s := newInterstitialServer(time.Hour)
	v := form(t, s, "/page")
	exp := v.Get("exp")
	with := func(to, token string) url.Values {
		return url.Values{"to": {to}, "exp": {exp}, "token": {token}}
	}
	for _, tc := range []struct {
		name   string
		v      url.Values
		hdr    []string
		status int
	}{
		{"cross-site form", v, []string{"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example"}, http.StatusForbidden},
		{"same-site form from another tunnel", v, []string{"Sec-Fetch-Site", "same-site", "Origin", "http://other.localhost:8000"}, http.StatusForbidden},
		{"foreign Origin, no metadata", v, []string{"Origin", "https://evil.example"}, http.StatusForbidden},
		{"other target", with("/admin", v.Get("token")), nil, http.StatusBadRequest},
		{"other host's token", with("/page", s.inter.sign("continue", "other.localhost", testHolder, "/page", exp)), nil, http.StatusBadRequest},
		{"page shown for the name's previous holder", with("/page", s.inter.sign("continue", testHost, "holder-before", "/page", exp)), nil, http.StatusBadRequest},
		{"no token", with("/page", ""), nil, http.StatusBadRequest},
		{"scheme-relative target", with("//evil.example/", s.inter.sign("continue", testHost, testHolder, "//evil.example/", exp)), nil, http.StatusBadRequest},
		{"backslash target", with(`/\evil.example/`, s.inter.sign("continue", testHost, testHolder, `/\evil.example/`, exp)), nil, http.StatusBadRequest},
		{"absolute target", with("https://evil.example/", s.inter.sign("continue", testHost, testHolder, "https://evil.example/", exp)), nil, http.StatusBadRequest},
		{"control character", with("/\t/evil.example", s.inter.sign("continue", testHost, testHolder, "/\t/evil.example", exp)), nil, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			handled, w := confirm(s, tc.v, tc.hdr...)
			if !handled || w.Code != tc.status {
				t.Fatalf("handled=%v status %d, want %d: %s", handled, w.Code, tc.status, w.Body)
			}
			if len(w.Result().Cookies()) != 0 || w.Header().Get("Location") != "" {
				t.Errorf("refused confirm set %v, Location %q", w.Result().Cookies(), w.Header().Get("Location"))
			}
		})
	}
	for _, method := range []string{"GET", "PUT"} {
		handled, w := check(s, visit(method, continuePath+"?to=/", chromeNav...))
		if !handled || w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "POST" {
			t.Errorf("%s %s: handled=%v status %d", method, continuePath, handled, w.Code)
		}
	}
	// A path that browsers would read as another host is never a target.
	if v := form(t, s, "//evil.example/x"); v.Get("to") != "/" {
		t.Errorf("form target for //evil.example/x is %q, want /", v.Get("to"))
	}
}

func TestInterstitialStripCookie(t *testing.T) {
	for in, want := range map[string]string{
		"tunnel_ack=1":                          "",
		"a=1; tunnel_ack=1":                     "a=1",
		"tunnel_ack=1;b=2":                      "b=2",
		"a=1; __Host-tunnel_ack=x; b=\"q r\"":   "a=1; b=\"q r\"",
		"a=1;b=2":                               "a=1;b=2", // untouched when nothing to strip
		"tunnel_ack_2=1; xtunnel_ack=2":         "tunnel_ack_2=1; xtunnel_ack=2",
		"a=1; tunnel_ack=1; tunnel_ack=2; c=3 ": "a=1; c=3",
	} {
		h := http.Header{"Cookie": {in}}
		stripCookie(h, ackCookie, ackCookieTLS)
		if got := h.Get("Cookie"); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
		if want == "" && len(h.Values("Cookie")) != 0 {
			t.Errorf("%q: empty Cookie header kept", in)
		}
	}
}

func TestInterstitialStripSetCookie(t *testing.T) {
	h := http.Header{"Set-Cookie": {
		"a=1; Path=/",
		"tunnel_ack=123.abc; Path=/; SameSite=None",
		"__Host-tunnel_ack=123.abc; Path=/; Secure",
		"tunnel_ack_2=x",
	}}
	stripAckSetCookie(h)
	if got := strings.Join(h.Values("Set-Cookie"), " | "); got != "a=1; Path=/ | tunnel_ack_2=x" {
		t.Errorf("Set-Cookie after strip: %q", got)
	}
	h = http.Header{"Set-Cookie": {"tunnel_ack=1"}}
	stripAckSetCookie(h)
	if _, ok := h["Set-Cookie"]; ok {
		t.Errorf("empty Set-Cookie kept: %v", h)
	}
}

func TestInterstitialHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		7 * 24 * time.Hour: "7 days",
		24 * time.Hour:     "1 day",
		36 * time.Hour:     "36 hours",
		time.Hour:          "1 hour",
		90 * time.Minute:   "90 minutes",
		90 * time.Second:   "1m30s",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("%v: %q, want %q", d, got, want)
		}
	}
}
