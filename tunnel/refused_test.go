package tunnel_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// closedPort returns a loopback address where nothing listens: a port
// that was just free.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestIsConnRefused dials a closed loopback port for real, so the error is
// the one this OS gives (WSAECONNREFUSED on Windows, ECONNREFUSED
// elsewhere), bare and wrapped the ways callers see it.
func TestIsConnRefused(t *testing.T) {
	addr := closedPort(t)
	_, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		t.Skipf("something listens on %s again", addr)
	}
	if !tunnel.IsConnRefused(err) {
		t.Fatalf("IsConnRefused(%v [%T]) = false for a dial to a closed port", err, err)
	}
	if w := fmt.Errorf("dial local: %w", err); !tunnel.IsConnRefused(w) {
		t.Errorf("IsConnRefused(%v) = false for a wrapped refusal", w)
	}

	// Through an HTTP client, as the doctor's round trip sees it.
	c := &http.Client{Timeout: 5 * time.Second}
	_, herr := c.Get("http://" + addr + "/")
	if herr == nil {
		t.Skipf("something listens on %s again", addr)
	}
	if !tunnel.IsConnRefused(herr) {
		t.Errorf("IsConnRefused(%v) = false for an HTTP client's refused dial", herr)
	}
}

func TestIsConnRefusedOthers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var d net.Dialer
	_, canceled := d.DialContext(ctx, "tcp", closedPort(t))
	for _, err := range []error{
		nil,
		errors.New("connection refused"), // text is never matched
		net.ErrClosed,
		os.ErrDeadlineExceeded,
		context.DeadlineExceeded,
		canceled,
		&net.DNSError{Err: "no such host", Name: "nowhere.invalid", IsNotFound: true},
	} {
		if tunnel.IsConnRefused(err) {
			t.Errorf("IsConnRefused(%v) = true", err)
		}
	}
}
