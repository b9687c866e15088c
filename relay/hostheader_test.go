package relay

import (
	"github.com/tunnel-dev/tunnel/proto"

	"strings"
	"testing"
)

// TestCheckHostHeader checks the Host header values the relay accepts from
// an agent's hello: hosts and host:port, never anything that could end the
// header line or turn the value into a URL.
func TestCheckHostHeader(t *testing.T) {
	good := []string{"localhost", "localhost:8080", "myapp.test", "my_app.internal:443", "127.0.0.1", "127.0.0.1:8443", "[::1]", "[::1]:8443", "A.Example.COM"}
	bad := []string{"", " ", "a b", "a\r\nX: y", "a\n", "a\x00", "a\x7f", "a/b", "http://a", "a?b", "a#b", "user@a", `a\b`, "a:", "a:0", "a:65536", "a:+80", "a:b", "::1", "[::1", "[::1]x", "[127.0.0.1]", "[fe80::1%eth0]", "a..b", ".a", "ä.test", strings.Repeat("a", 64), strings.Repeat("a.", 130) + "a"}
	for _, v := range good {
		if err := proto.ValidateHostHeader(v); err != nil {
			t.Errorf("proto.ValidateHostHeader(%q) = %v, want nil", v, err)
		}
	}
	for _, v := range bad {
		err := proto.ValidateHostHeader(v)
		if err == nil {
			t.Errorf("proto.ValidateHostHeader(%q) = nil, want an error", v)
		} else if strings.ContainsAny(err.Error(), "\r\n") {
			t.Errorf("proto.ValidateHostHeader(%q) = %q: not one line", v, err)
		}
	}
}

// TestCanonicalHost checks how the relay reads a visitor's Host header
// before routing it: lower case, without port or trailing dot, with no
// allocation for the usual port-less name.
func TestCanonicalHost(t *testing.T) {
	for in, want := range map[string]string{
		"demo.example.com":       "demo.example.com",
		"Demo.Example.COM:8443":  "demo.example.com",
		"demo.example.com.":      "demo.example.com",
		"demo.example.com.:443":  "demo.example.com",
		"127.0.0.1:80":           "127.0.0.1",
		"[::1]:8080":             "::1",
		"[::1]":                  "[::1]",
		"demo.example.com:80:80": "demo.example.com:80:80",
		"":                       "",
	} {
		if got := canonicalHost(in); got != want {
			t.Errorf("canonicalHost(%q) = %q, want %q", in, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { canonicalHost("demo.example.com") }); n != 0 {
		t.Errorf("canonicalHost of a port-less name allocated %v times, want 0", n)
	}
}
