package relay

import (
	"strings"
	"testing"
)

// TestDomainChecks checks the domains a relay refuses, each with what to
// give instead, and the default listen address of a plain relay.
func TestDomainChecks(t *testing.T) {
	for domain, want := range map[string]string{
		"example.com":      "",
		"EXAMPLE.com.":     "",
		"localhost":        "",
		"dev.localhost":    "",
		"xn--bcher-kva.de": "",
		"*.example.com":    `domain "*.example.com" is the wildcard DNS record; give the apex under it: example.com`,
		"203.0.113.10":     `domain "203.0.113.10" is an IP address`,
		"my_relay.example": `domain "my_relay.example" is not a host name`,
		"example..com":     `domain "example..com" is not a host name`,
		"-example.com":     `domain "-example.com" is not a host name`,
		"example.com:443":  "must be a bare host name",
	} {
		err := CheckDomain(domain)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("CheckDomain(%q) = %v, want %q", domain, err, want)
		}
	}
	for domain, want := range map[string]string{"localhost": "127.0.0.1:8000", "dev.localhost": "127.0.0.1:8000", "example.com": ":80"} {
		c := Config{Domain: domain}
		if err := c.setDefaults(); err != nil || c.Addr != want {
			t.Errorf("plain relay for %s: addr %q (%v), want %q", domain, c.Addr, err, want)
		}
	}
}
