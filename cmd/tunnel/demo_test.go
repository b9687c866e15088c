package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// startDemo runs `tunnel demo` with extra arguments and returns it with the
// page URL it printed, which must have the given scheme, and the relay's
// address.
func startDemo(t *testing.T, scheme string, extra ...string) (demo *proc, url, relayAddr string) {
	t.Helper()
	demo = startTunnel(t, "demo", nil, append([]string{"demo", "--addr", "127.0.0.1:0"}, extra...)...)
	got := demo.stdout.first(t, 2)
	m := regexp.MustCompile(`^` + scheme + `://demo\.localhost:(\d+)$`).FindStringSubmatch(got[0])
	if m == nil {
		t.Fatalf("demo printed %q first, want %s://demo.localhost:PORT", got[0], scheme)
	}
	if !strings.Contains(got[1], "browser") || !strings.Contains(got[1], "Ctrl-C") {
		t.Errorf("demo's second line %q should say what to do", got[1])
	}
	return demo, got[0], "127.0.0.1:" + m[1]
}

// stopDemo interrupts the demo and checks that it shuts down cleanly.
func stopDemo(t *testing.T, demo *proc) {
	t.Helper()
	demo.signal(t, syscall.SIGINT)
	if code := demo.exitCode(t); code != 0 {
		t.Fatalf("demo exited %d after SIGINT, want 0", code)
	}
}

// TestDemo checks the demo without a browser: the page comes through the
// relay, the WebSocket at /ws echoes through it, and Ctrl-C exits 0.
func TestDemo(t *testing.T) {
	demo, url, relayAddr := startDemo(t, "http")
	checkDemo(t, demo, url, viaRelay(t, relayAddr))
}

// TestDemoTLS checks the demo with a certificate: the page is at https and
// its WebSocket echoes over wss.
func TestDemoTLS(t *testing.T) {
	certs := newTestCerts(t, "localhost", "*.localhost")
	demo, url, relayAddr := startDemo(t, "https", "--tls-cert", certs.CertFile, "--tls-key", certs.KeyFile, "--ca-file", certs.CAFile)
	checkDemo(t, demo, url, viaTLSRelay(t, relayAddr, certs, "demo.localhost"))
}

// checkDemo fetches the page, echoes a message over its WebSocket and stops
// the demo.
func checkDemo(t *testing.T, demo *proc, url string, client *http.Client) {
	t.Helper()
	status, body := get(t, client, url+"/")
	if status != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, status)
	}
	for _, id := range []string{`id="msg"`, `id="send"`, `id="log"`, `id="status"`, "new WebSocket("} {
		if !strings.Contains(body, id) {
			t.Errorf("page lacks %s", id)
		}
	}
	if answer := wsEcho(t, client, webSocketURL(url)+"/ws", "ping"); answer != "echo: ping" {
		t.Fatalf("WebSocket answer %q, want %q", answer, "echo: ping")
	}
	demo.stdout.find(t, "WebSocket request line", func(s string) bool { return strings.Contains(s, " WS /ws 101 ") })
	stopDemo(t, demo)
}

const chromiumPath = "/usr/bin/chromium"

// TestDemoInBrowser drives the demo page in headless Chromium, over plain
// HTTP and over HTTPS: it connects its WebSocket through the relay, sends a
// typed message with the button, and shows the echo; then Ctrl-C stops the
// demo cleanly while the page is open. Chromium resolves *.localhost itself,
// so it uses the printed URL as a person would.
func TestDemoInBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing and CI is set: install chromium (apt-get install -y chromium)", chromiumPath)
		}
		t.Skipf("!!! SKIPPING THE BROWSER TEST: %s is missing (apt-get install -y chromium) !!!", chromiumPath)
	}
	t.Run("http", func(t *testing.T) {
		demo, url, _ := startDemo(t, "http")
		browseDemo(t, demo, url, "demo.png")
	})
	t.Run("https", func(t *testing.T) {
		certs := newTestCerts(t, "localhost", "*.localhost")
		demo, url, _ := startDemo(t, "https", "--tls-cert", certs.CertFile, "--tls-key", certs.KeyFile, "--ca-file", certs.CAFile)
		// Chromium trusts this one leaf key and nothing else; the test CA
		// is not in its trust store.
		browseDemo(t, demo, url, "demo-https.png", chromedp.Flag("ignore-certificate-errors-spki-list", certs.leafSPKIHash()))
	})
}

// browseDemo opens the demo page at url in Chromium, started with extra
// options, checks the echo, saves a screenshot named shotName and stops the
// demo.
func browseDemo(t *testing.T, demo *proc, url, shotName string, extra ...chromedp.ExecAllocatorOption) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, append([]chromedp.ExecAllocatorOption{
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
	}, extra...)...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()

	const msg = "hello through the tunnel"
	err := chromedp.Do(bctx,
		chromedp.Navigate(url),
		poll(`document.querySelector("#status").textContent === "connected"`),
		chromedp.SendKeys(chromedp.CSS("#msg"), msg),
		chromedp.Click(chromedp.CSS("#send")),
		poll(fmt.Sprintf(`[...document.querySelectorAll("#log li")].some(li => li.textContent === %q)`, "echo: "+msg)),
	)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	log, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("#log")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log, "echo: "+msg) {
		t.Errorf("#log says %q", log)
	}
	if strings.HasPrefix(url, "https://") {
		// The page must have been served securely, not past an error page.
		secure, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`window.isSecureContext && location.protocol === "https:"`))
		if err != nil {
			t.Fatal(err)
		}
		if !secure {
			t.Error("the page is not a secure https context")
		}
	}
	// Quality 100 makes a PNG; anything less a JPEG.
	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(t.ArtifactDir(), shotName)
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (kept with go test -artifacts)", shot)

	// Ctrl-C with the page still open: the demo exits 0 and the page sees
	// its WebSocket close.
	stopDemo(t, demo)
	if err := chromedp.Do(bctx, poll(`document.querySelector("#status").textContent.startsWith("closed")`)); err != nil {
		t.Errorf("page after the demo stopped: %v", err)
	}
}

// poll waits until a JavaScript expression is true in the page.
func poll(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(30*time.Second))(ctx, tg)
		return err
	})
}

// TestDemoInvalidName checks that a bad -s stops the demo before its relay
// starts, with expose's one line and exit status.
func TestDemoInvalidName(t *testing.T) {
	demo := startTunnel(t, "demo", nil, "demo", "-s", "Bad_Name")
	if code := demo.exitCode(t); code != 1 {
		t.Fatalf("demo exited %d, want 1", code)
	}
	demo.stderr.wait(t, "the end of stderr", func(all []string) bool {
		return len(all) == 1 && all[0] == `tunnel: name "Bad_Name" is invalid: use lower-case letters only`
	})
}
