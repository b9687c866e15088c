package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

const chromiumPath = "/usr/bin/chromium"

// TestInterstitialInChromium drives the interstitial in headless Chromium
// with a fresh profile: a WebSocket to the tunnel from a page that never saw
// the interstitial connects; the first navigation shows the page; its
// button leads to the local page with path and query intact; the next
// navigation goes straight through; and the acknowledged page's own
// WebSocket connects.
func TestInterstitialInChromium(t *testing.T) {
	needChromium(t)
	rl, local, base := startInterstitial(t)
	wsURL := "ws" + strings.TrimPrefix(base, "http") + "/ws"
	ctx := startChromium(t)

	// A page elsewhere (the relay's landing page), in a profile without any
	// acknowledgement: its WebSocket to the tunnel is never held up.
	if err := chromedp.Do(ctx, chromedp.Navigate("http://localhost:"+port(rl.addr)+"/")); err != nil {
		t.Fatalf("landing page: %v", err)
	}
	if got := browserWSEcho(t, ctx, wsURL, "from a fresh profile"); got != "from a fresh profile" {
		t.Fatalf("WebSocket from a page that never saw the interstitial: %q", got)
	}

	// The first navigation to the tunnel shows the interstitial.
	res, err := chromedp.Run(ctx, chromedp.NavigateResponse(base+"/page?x=1"))
	if err != nil {
		t.Fatalf("first navigation: %v", err)
	}
	if res.Status != 403 {
		t.Errorf("interstitial status %d, want 403", res.Status)
	}
	button, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#continue")))
	if err != nil || button != "Continue to demo.localhost" {
		t.Fatalf("continue button %q: %v", button, err)
	}
	if n := local.hits.Load(); n != 0 {
		t.Fatalf("the local server saw %d requests before the visitor confirmed", n)
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatal(err)
	}
	saveScreenshot(t, ctx, "interstitial.png")
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(2))); err != nil {
		t.Fatal(err)
	}
	saveScreenshot(t, ctx, "interstitial-phone.png")
	if err := chromedp.Do(ctx, chromedp.ResetViewport()); err != nil {
		t.Fatal(err)
	}

	// Continue: the local page, with the original path and query.
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#continue")), chromedp.WaitVisible(chromedp.CSS("#req"))); err != nil {
		t.Fatalf("continue: %v", err)
	}
	checkLocalPage(t, ctx, base+"/page?x=1", "GET /page?x=1", "")
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cookies.Cookies) != 1 {
		t.Fatalf("cookies after continue: %v", cookies.Cookies)
	}
	if c := cookies.Cookies[0]; c.Name != "tunnel_ack" || !c.HTTPOnly || c.SameSite != network.CookieSameSiteLax || c.Domain != "demo.localhost" || c.Session {
		t.Errorf("acknowledgement cookie %+v", c)
	}

	// The next navigation goes straight through; the page's own cookie
	// reaches the local server, the relay's does not.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`document.cookie = "theme=dark; path=/"`)); err != nil {
		t.Fatal(err)
	}
	res, err = chromedp.Run(ctx, chromedp.NavigateResponse(base+"/again?y=2&z=%2F"))
	if err != nil {
		t.Fatalf("second navigation: %v", err)
	}
	if res.Status != 200 {
		t.Errorf("second navigation: status %d, want 200", res.Status)
	}
	checkLocalPage(t, ctx, base+"/again?y=2&z=%2F", "GET /again?y=2&z=%2F", "theme=dark")

	// The acknowledged page's WebSocket (which carries the cookie, stripped
	// at the relay) connects.
	if got := browserWSEcho(t, ctx, wsURL, "from the tunnel page"); got != "from the tunnel page" {
		t.Fatalf("WebSocket from the acknowledged page: %q", got)
	}
}

// needChromium skips a browser test where Chromium is not installed, and
// fails it on CI, which installs it.
func needChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing and CI is set: install chromium (apt-get install -y chromium)", chromiumPath)
		}
		t.Skipf("!!! SKIPPING THE BROWSER TEST: %s is missing (apt-get install -y chromium) !!!", chromiumPath)
	}
}

// startChromium starts headless Chromium with a fresh profile and returns
// its tab's context, closed when the test ends.
func startChromium(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
		cancel()
	})
	return bctx
}

// browserWSEcho opens a WebSocket from the current page, sends msg and
// returns the echo, or a description of the failure.
func browserWSEcho(t *testing.T, ctx context.Context, wsURL, msg string) string {
	t.Helper()
	js := fmt.Sprintf(`new Promise(resolve => {
		const ws = new WebSocket(%q);
		const timer = setTimeout(() => resolve("timeout"), 10000);
		ws.onopen = () => ws.send(%q);
		ws.onmessage = e => { clearTimeout(timer); ws.close(); resolve(e.data); };
		ws.onerror = () => { clearTimeout(timer); resolve("error"); };
		ws.onclose = e => { clearTimeout(timer); resolve("closed " + e.code); };
	})`, wsURL, msg)
	got, err := chromedp.Run(ctx, chromedp.Evaluate[string](js, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("WebSocket in the browser: %v", err)
	}
	return got
}

// checkLocalPage checks that the browser shows the local server's page at
// wantURL, for the request wantReq with the Cookie header wantCookie.
func checkLocalPage(t *testing.T, ctx context.Context, wantURL, wantReq, wantCookie string) {
	t.Helper()
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	req, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#req")))
	if err != nil {
		t.Fatal(err)
	}
	cookie, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS("#cookie")))
	if err != nil {
		t.Fatal(err)
	}
	if loc != wantURL || req != wantReq || cookie != wantCookie {
		t.Errorf("browser at %s shows %q with Cookie %q; want %s, %q, %q", loc, req, cookie, wantURL, wantReq, wantCookie)
	}
}

// saveScreenshot saves the current viewport as name in the test's artifact
// directory.
func saveScreenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.ArtifactDir(), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (kept with go test -artifacts)", path)
}
