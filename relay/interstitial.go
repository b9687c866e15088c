package relay

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The anti-phishing interstitial. A browser's first top-level navigation to
// a tunnel gets a warning page instead of the tunnel's content; its
// "Continue" button posts to continuePath, which sets an acknowledgement
// cookie for that host and redirects back. Everything that is not a
// top-level navigation — WebSocket upgrades, fetch and XHR, subresources,
// non-browser clients — passes untouched, so the interstitial never breaks
// the WebSocket clients and API callers that tunnels are for.

// continuePath is the confirm action on every tunnel host. The relay
// answers it itself and never forwards it, whatever the method.
const continuePath = "/_tunnel/continue"

// The acknowledgement cookie's name. Over TLS it carries the __Host- prefix,
// so browsers accept it only host-only, Secure and at Path=/: another
// tunnel under the same domain cannot plant one for this host with
// Domain=. Plain HTTP cannot have the prefix.
const (
	ackCookie    = "tunnel_ack"
	ackCookieTLS = "__Host-tunnel_ack"
)

const (
	// formLifetime bounds how long a rendered page's Continue button works.
	// An older one redirects back to the target, which shows a fresh page.
	formLifetime = time.Hour
	// maxAckLifetime is the longest cookie browsers keep (Chromium caps
	// Max-Age at 400 days).
	maxAckLifetime = 400 * 24 * time.Hour
	// maxContinueBody bounds the confirm form: a target of up to 64 KiB
	// (the header limit), URL-encoded, plus the token.
	maxContinueBody = 200 << 10
)

// interstitial holds the key that signs acknowledgement cookies and confirm
// forms. It is random per relay process, so a restart asks every visitor
// once more; nothing secret is ever stored.
type interstitial struct {
	ttl  time.Duration
	key  [32]byte
	csrf *http.CrossOriginProtection
}

// newInterstitial returns an interstitial that remembers a visitor's
// acknowledgement for d (at most 400 days).
func newInterstitial(d time.Duration) *interstitial {
	in := &interstitial{ttl: min(d, maxAckLifetime), csrf: http.NewCrossOriginProtection()}
	rand.Read(in.key[:]) // never fails (crypto/rand documents it)
	return in
}

// interstitialCheck runs for each visitor request to host, which holder
// holds (holderID), after the tunnel's access rules passed. It answers the confirm action and shows the
// warning page to a top-level navigation without a valid acknowledgement,
// reporting handled=true when it wrote a response. Otherwise it removes the
// acknowledgement cookie, which is the relay's, not the local server's, and
// the request goes on to the agent.
func (s *Server) interstitialCheck(w http.ResponseWriter, r *http.Request, host, holder string) (handled bool) {
	in := s.inter
	if r.URL.Path == continuePath {
		in.serveContinue(w, r, host, holder)
		return true
	}
	if isNavigation(r) && !in.acknowledged(r, host, holder) {
		in.servePage(w, r, host, holder)
		return true
	}
	stripCookie(r.Header, ackCookie, ackCookieTLS)
	return false
}

// isNavigation reports whether r is a browser's top-level navigation: by
// its Fetch Metadata when the browser sends it, otherwise (older browsers)
// a plain GET that asks for HTML. A POST is one only when another site's
// form sent it (Fetch Metadata again), the way a phishing page would. Non-browser clients (curl, Go, Node)
// send neither, and WebSocket handshakes, fetch, XHR and subresources all
// fail one of the tests.
func isNavigation(r *http.Request) bool {
	if r.Header.Get("Upgrade") != "" {
		return false
	}
	mode, dest, site := r.Header.Get("Sec-Fetch-Mode"), r.Header.Get("Sec-Fetch-Dest"), r.Header.Get("Sec-Fetch-Site")
	if r.Method != http.MethodGet {
		// A form another site submits is a top-level navigation too: an
		// auto-submitting one would otherwise skip the page. The tunnel's
		// own forms (same-origin) pass.
		if r.Method != http.MethodPost {
			return false
		}
		if mode == "" && dest == "" && site == "" {
			// No Fetch Metadata: browsers send none to an origin that is
			// not potentially trustworthy (plain HTTP on a real domain).
			// A form another origin submits still says where it came
			// from, and asks for HTML.
			return strings.Contains(strings.ToLower(r.Header.Get("Accept")), "text/html") && foreignOrigin(r)
		}
		return strings.EqualFold(mode, "navigate") && strings.EqualFold(dest, "document") &&
			(strings.EqualFold(site, "cross-site") || strings.EqualFold(site, "same-site"))
	}
	if mode != "" || dest != "" || site != "" {
		return strings.EqualFold(mode, "navigate") && strings.EqualFold(dest, "document")
	}
	return strings.Contains(strings.ToLower(r.Header.Get("Accept")), "text/html")
}

// foreignOrigin reports whether r's Origin is another origin than its own
// host ("null", from a sandboxed or privacy-sensitive context, included).
func foreignOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return false
	}
	u, err := url.Parse(o)
	if err != nil || u.Host == "" {
		return true
	}
	return !strings.EqualFold(u.Host, r.Host) && !strings.EqualFold(u.Hostname(), canonicalHost(r.Host))
}

// acknowledged reports whether r carries a valid, unexpired
// acknowledgement for host while holder holds it: a visitor trusted whoever
// held the name then, not whoever holds it next. Every cookie of the name
// counts, so a stale or planted one does not hide a good one.
func (in *interstitial) acknowledged(r *http.Request, host, holder string) bool {
	name := ackCookie
	if r.TLS != nil {
		name = ackCookieTLS
	}
	for _, c := range r.CookiesNamed(name) {
		exp, mac, _ := strings.Cut(c.Value, ".")
		if until, ok := in.verify(mac, exp, "ack", host, holder); ok && time.Now().Before(until) {
			return true
		}
	}
	return false
}

// sign is the base64 HMAC of the fields, each closed by a NUL. The relay
// only signs fields without NUL, and the first field names the kind, so a
// signature made for one field list never verifies another.
func (in *interstitial) sign(fields ...string) string {
	h := hmac.New(sha256.New, in.key[:])
	for _, f := range fields {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// verify checks mac against sign(fields..., exp) and returns the expiry exp
// names (Unix seconds), which the caller compares with the time.
func (in *interstitial) verify(mac, exp string, fields ...string) (time.Time, bool) {
	sec, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || !hmac.Equal([]byte(mac), []byte(in.sign(append(fields, exp)...))) {
		return time.Time{}, false
	}
	return time.Unix(sec, 0), true
}

// servePage answers a navigation with the warning page.
//
// The status is 403, not 200: browsers render a 403's HTML exactly like a
// 200's, while crawlers, link unfurlers, uptime checks and caches learn
// that the URL's content was not served, rather than indexing, previewing
// or reporting as "up" the same warning for every tunnel.
func (in *interstitial) servePage(w http.ResponseWriter, r *http.Request, host, holder string) {
	target := r.URL.RequestURI()
	if !localTarget(target) {
		// Only a path that starts with "//" gets here; no browser sends
		// one from a link. Confirming it would redirect off-site.
		target = "/"
	}
	exp := strconv.FormatInt(time.Now().Add(formLifetime).Unix(), 10)
	hdr := w.Header()
	hdr.Del("Content-Length")
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Content-Security-Policy", pageCSP)
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("X-Robots-Tag", "noindex, nofollow")
	w.WriteHeader(http.StatusForbidden)
	interstitialTmpl.Execute(w, struct {
		Host, Action, Target, Exp, Token, For string
	}{host, continuePath, target, exp, in.sign("continue", host, holder, target, exp), humanDuration(in.ttl)})
}

// serveContinue is the confirm action: it checks that the form came from
// this host's own page (the browser's Fetch Metadata or Origin, then the
// token bound to host, its holder and target), sets the acknowledgement
// cookie and redirects to the target. A page shown for one holder confirms
// nothing once the name has passed to another.
//
// The token alone would not stop cross-site request forgery: anyone can
// fetch the page and copy a token. The cross-origin check refuses a form
// another site makes the visitor's browser submit.
func (in *interstitial) serveContinue(w http.ResponseWriter, r *http.Request, host, holder string) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writePage(w, r, http.StatusMethodNotAllowed, "Method not allowed",
			fmt.Sprintf("%s on %s belongs to the relay and only accepts the form on its warning page.", continuePath, host))
		return
	}
	if err := in.csrf.Check(r); err != nil {
		writePage(w, r, http.StatusForbidden, "Cross-origin request refused",
			fmt.Sprintf("Only the warning page of %s itself can confirm a visit to it.", host))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxContinueBody)
	if err := r.ParseForm(); err != nil {
		writePage(w, r, http.StatusBadRequest, "Bad request", "The confirmation form could not be read.")
		return
	}
	target, exp, token := r.PostForm.Get("to"), r.PostForm.Get("exp"), r.PostForm.Get("token")
	until, ok := in.verify(token, exp, "continue", host, holder, target)
	if !ok || !localTarget(target) {
		writePage(w, r, http.StatusBadRequest, "Invalid confirmation",
			fmt.Sprintf("This confirmation was not made by the warning page of %s. Open the link again.", host))
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if time.Now().Before(until) {
		ackExp := strconv.FormatInt(time.Now().Add(in.ttl).Unix(), 10)
		c := &http.Cookie{
			Name:     ackCookie,
			Value:    ackExp + "." + in.sign("ack", host, holder, ackExp),
			Path:     "/",
			MaxAge:   int(in.ttl / time.Second),
			HttpOnly: true,
			SameSite: http.SameSiteLaxMode,
		}
		if r.TLS != nil {
			c.Name, c.Secure = ackCookieTLS, true
		}
		http.SetCookie(w, c)
	}
	// A genuine but expired form confirms nothing: the target shows the
	// page again with a fresh button.
	http.Redirect(w, r, target, http.StatusSeeOther)
}

// localTarget reports whether t is a path on this host and nothing else: it
// starts with one slash (not "//" or "/\", which browsers read as another
// host) and has no control characters or spaces.
func localTarget(t string) bool {
	if !strings.HasPrefix(t, "/") || strings.HasPrefix(t, "//") || strings.HasPrefix(t, `/\`) {
		return false
	}
	for i := 0; i < len(t); i++ {
		if t[i] <= ' ' || t[i] == 0x7f {
			return false
		}
	}
	return true
}

// stripCookie removes the named cookies from the request's Cookie headers
// and keeps every other cookie as the browser sent it.
func stripCookie(h http.Header, names ...string) {
	vals := h.Values("Cookie")
	if len(vals) == 0 {
		return
	}
	var keep []string
	changed := false
	for _, v := range vals {
		for _, pair := range strings.Split(v, ";") {
			pair = strings.TrimSpace(pair)
			if pair == "" {
				continue
			}
			name, _, _ := strings.Cut(pair, "=")
			drop := false
			for _, n := range names {
				drop = drop || strings.TrimSpace(name) == n
			}
			if drop {
				changed = true
				continue
			}
			keep = append(keep, pair)
		}
	}
	if !changed {
		return
	}
	h.Del("Cookie")
	if len(keep) > 0 {
		h.Set("Cookie", strings.Join(keep, "; "))
	}
}

// stripAckSetCookie removes Set-Cookie lines for the acknowledgement
// cookie from a local server's response. Otherwise a tunnel could hand out
// a valid acknowledgement for its own host (one its owner got by clicking
// through) from a subresource, and skip the page for a visitor's later
// navigation.
func stripAckSetCookie(h http.Header) {
	vals := h.Values("Set-Cookie")
	keep := vals[:0:0]
	for _, v := range vals {
		name, _, _ := strings.Cut(v, "=")
		if n := strings.TrimSpace(name); n != ackCookie && n != ackCookieTLS {
			keep = append(keep, v)
		}
	}
	if len(keep) == len(vals) {
		return
	}
	h.Del("Set-Cookie")
	for _, v := range keep {
		h.Add("Set-Cookie", v)
	}
}

// humanDuration says d in whole days or hours when it is one.
func humanDuration(d time.Duration) string {
	plural := func(n int64, unit string) string {
		if n == 1 {
			return "1 " + unit
		}
		return fmt.Sprintf("%d %ss", n, unit)
	}
	switch {
	case d >= 24*time.Hour && d%(24*time.Hour) == 0:
		return plural(int64(d/(24*time.Hour)), "day")
	case d >= time.Hour && d%time.Hour == 0:
		return plural(int64(d/time.Hour), "hour")
	case d >= time.Minute && d%time.Minute == 0:
		return plural(int64(d/time.Minute), "minute")
	}
	return d.String()
}

// interstitialCSS is the page's only style, allowed by its hash in the
// Content-Security-Policy; the page has no scripts and loads nothing.
const interstitialCSS = `
*{box-sizing:border-box}
body{margin:0;padding:1rem;font:17px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;background:#f5f5f7}
main{max-width:34rem;margin:10vh auto 1rem;padding:1.75rem 1.5rem;background:#fff;border-radius:14px;box-shadow:0 1px 4px rgba(0,0,0,.08)}
h1{font-size:1.35rem;line-height:1.3;margin:0 0 1rem}
.host{display:block;overflow-wrap:anywhere}
.warn{border-left:4px solid #c62828;background:#fdecea;padding:.75rem 1rem;border-radius:0 8px 8px 0}
button{display:block;width:100%;margin:1.5rem 0 .75rem;padding:.85rem 1rem;font:inherit;font-weight:600;color:#fff;background:#1d4ed8;border:0;border-radius:10px;cursor:pointer;overflow-wrap:anywhere}
button:hover,button:focus-visible{background:#1e40af}
.note{font-size:.88rem;color:#6e6e73;margin:0}
@media (max-width:30rem){body{padding:.5rem}main{margin-top:1rem;padding:1.25rem 1rem}}
@media (prefers-color-scheme:dark){body{background:#111;color:#eee}main{background:#1c1c1e}.warn{background:#3b1d1d}.note{color:#a1a1a6}}
`

// pageCSP lets the page show its own style and post its own form, and
// nothing else: no scripts, no loads, no framing, no other form target.
var pageCSP = "default-src 'none'; style-src 'sha256-" + cssHash() + "'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func cssHash() string {
	h := sha256.Sum256([]byte(interstitialCSS))
	return base64.StdEncoding.EncodeToString(h[:])
}

var interstitialTmpl = template.Must(template.New("interstitial").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>Before you visit {{.Host}}</title>
<style>` + interstitialCSS + `</style></head>
<body><main>
<h1>You are about to visit <span class="host">{{.Host}}</span></h1>
<p>This site is served from someone's own computer through a tunnel relay. The relay does not check what the site shows or who runs it.</p>
<p class="warn"><strong>Do not enter passwords, payment details or other personal information</strong> unless you know and trust whoever sent you this link.</p>
<form method="post" action="{{.Action}}">
<input type="hidden" name="to" value="{{.Target}}">
<input type="hidden" name="exp" value="{{.Exp}}">
<input type="hidden" name="token" value="{{.Token}}">
<button type="submit" id="continue">Continue to {{.Host}}</button>
</form>
<p class="note">This browser will not ask again for {{.For}}. If you did not expect this page, close it.</p>
</main></body></html>
`))
