package agent

import (
	"strings"
	"testing"
)

// A token with an environment file's comment after it is refused in one
// line that says so.
func TestConfigTokenWithComment(t *testing.T) {
	c := Config{Relay: "https://example.com", Token: "0123456789abcdef   # the laptop", Tunnels: []Tunnel{{Name: "demo", Local: "127.0.0.1:8080"}}}
	if _, err := c.check(true); err == nil || !strings.Contains(err.Error(), `the token holds " #…"`) {
		t.Errorf("token with a comment: %v", err)
	}
	c.Token = "0123456789abcdef#not-a-comment"
	if _, err := c.check(true); err != nil {
		t.Errorf("token with a '#' in it: %v", err)
	}
}

// A relay URL is its scheme and host: a path, query, fragment or user,
// which the agent would drop without a word, is refused in one line.
func TestConfigRelayURL(t *testing.T) {
	for relay, want := range map[string]string{
		"https://example.com":             "",
		"https://example.com/":            "",
		"http://localhost:8000":           "",
		"example.com":                     `relay "example.com" is not a URL like http://localhost:8000 or https://example.com`,
		"https://example.com/tunnel?x=1":  `relay "https://example.com/tunnel?x=1" has more than a scheme and a host, which the agent would ignore: give it as https://example.com`,
		"https://user:pw@example.com":     `relay "https://user:xxxxx@example.com" has more than a scheme and a host, which the agent would ignore: give it as https://example.com`,
		"https://example.com/#fragment":   `has more than a scheme and a host`,
		"http://localhost:8000/some/path": `give it as http://localhost:8000`,
		// Malformed, and shown: its password is not.
		"https://ann:hunter2%zz@relay.example.com": `relay "https://xxxxx@relay.example.com" is not a URL like`,
	} {
		c := Config{Relay: relay, Tunnels: []Tunnel{{Name: "demo", Local: "127.0.0.1:8080"}}}
		_, err := c.check(true)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", relay, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: %v, want an error containing %q", relay, err, want)
		}
	}
}
