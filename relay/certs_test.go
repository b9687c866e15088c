package relay

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// acmeCerts is a relay's certs whose ACME directory is dir, with a cool-down
// of cool after a failed order.
func acmeCerts(t *testing.T, dir string, cool time.Duration) *certs {
	t.Helper()
	reg := newRegistry(time.Minute)
	t.Cleanup(reg.stop)
	cfg := &Config{Domain: "example.com", StateDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		ACME: &ACMEConfig{AcceptTOS: true, DirectoryURL: dir, Cooldown: cool}}
	c, err := newCerts(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Failures past their cool-down are forgotten even for names nobody asks
// for again (random names, released ones): the record does not grow with
// every name a failing CA was asked for.
func TestFailedOrdersForgottenAfterCooldown(t *testing.T) {
	c := acmeCerts(t, "http://127.0.0.1:1/dir", time.Millisecond)
	for i := range 500 {
		c.prefetch(fmt.Sprintf("n%d.example.com", i))
	}
	time.Sleep(10 * time.Millisecond)
	c.prefetch("last.example.com")
	c.mu.Lock()
	n := len(c.failed)
	c.mu.Unlock()
	if n != 1 {
		t.Errorf("%d failures kept, want only the last (the others are past their cool-down)", n)
	}
}

// Handshakes for a name whose order is running share its result: a failed
// order is recorded once, with the CA's own reason, which all of them get,
// not with what autocert tells a waiter.
func TestConcurrentHandshakesShareOneOrder(t *testing.T) {
	ca := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond) // a slow CA: the others come meanwhile
		// A 4xx, which the ACME client does not retry (a 5xx it would,
		// for minutes).
		http.Error(w, "this CA does not serve you", http.StatusForbidden)
	}))
	defer ca.Close()
	c := acmeCerts(t, ca.URL+"/dir", time.Hour)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { _, errs[i] = c.obtain("example.com", ecdsaHello("example.com")) })
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	c.mu.Lock()
	recorded := c.failed["example.com"].err
	c.mu.Unlock()
	if recorded == nil || strings.Contains(recorded.Error(), "missing certificate") {
		t.Fatalf("recorded failure %v, want the CA's reason", recorded)
	}
	for i, err := range errs {
		if err == nil || err.Error() != recorded.Error() {
			t.Errorf("handshake %d got %v, want the order's own error %v", i, err, recorded)
		}
	}
}
