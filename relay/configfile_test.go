package relay

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
)

// testSHA is the SHA-256 of "test".
const testSHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

const fullConfig = `# tunnel relay configuration
tokens:
  - name: alice
    sha256: ` + testSHA + `   # or: token: <the token>
    names: ["alice-*"]
    reserved: [alice]
    max_tunnels: 3
  - name: bob
    token: bob-secret-0123456789
    names: bob-*
limits:
  max_tunnels_per_token: 10
  max_streams_per_tunnel: 100
  conn_rate_per_ip: 50
  conn_rate_loopback: true
  response_header_timeout: 60s
  auth_failures_per_minute: 10
`

// TestParseConfig checks what a file turns into.
func TestParseConfig(t *testing.T) {
	tests := []struct {
		name string
		data string
		want FileConfig
	}{
		{
			name: "full",
			data: fullConfig,
			want: FileConfig{
				Tokens: []Token{
					{Name: "alice", SHA256: testSHA, Names: []string{"alice-*"}, Reserved: []string{"alice"}, MaxTunnels: 3},
					{Name: "bob", Secret: "bob-secret-0123456789", Names: []string{"bob-*"}},
				},
				Limits: Limits{MaxTunnelsPerToken: 10, MaxStreamsPerTunnel: 100, ConnRatePerIP: 50, ConnRateLoopback: true,
					ResponseHeaderTimeout: time.Minute, AuthFailuresPerMinute: 10},
			},
		},
		{name: "empty", data: ""},
		{name: "comments only", data: "# nothing yet\n"},
		{name: "null document", data: "~\n"},
		{
			name: "default names by position",
			data: "tokens:\n  - token: first-secret-1\n  - sha256: " + testSHA + "\n",
			want: FileConfig{Tokens: []Token{{Name: "token-1", Secret: "first-secret-1"}, {Name: "token-2", SHA256: testSHA}}},
		},
		{
			name: "limits only; no limit on connection rate",
			data: "limits:\n  conn_rate_per_ip: -1\n  response_header_timeout: 1m30s\n",
			want: FileConfig{Limits: Limits{ConnRatePerIP: -1, ResponseHeaderTimeout: 90 * time.Second}},
		},
		{
			name: "aliases",
			data: "tokens:\n  - name: a\n    token: aaaaaaaaaa\n    names: &n [\"team-*\"]\n  - name: b\n    token: bbbbbbbbbb\n    names: *n\n",
			want: FileConfig{Tokens: []Token{
				{Name: "a", Secret: "aaaaaaaaaa", Names: []string{"team-*"}},
				{Name: "b", Secret: "bbbbbbbbbb", Names: []string{"team-*"}},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfig("relay.yaml", []byte(tt.data))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", *got, tt.want)
			}
			if err := CheckTokens(got.Tokens); err != nil {
				t.Errorf("the relay refuses the parsed tokens: %v", err)
			}
		})
	}
}

// TestParseConfigErrors checks that each mistake is one line naming the
// file, the line and what is wrong, and never shows a token.
func TestParseConfigErrors(t *testing.T) {
	const secret = "s3cret-value-xyz"
	tests := []struct {
		name string
		data string
		want string // the whole error
	}{
		{"unknown top-level key", "tokens:\n  - token: " + secret + "\nlimit:\n  x: 1\n",
			`relay.yaml:3: the configuration: unknown key "limit"; known keys are tokens, limits`},
		{"unknown token key", "tokens:\n  - name: alice\n    token: " + secret + "\n    max_tunnel: 3\n",
			`relay.yaml:4: token "alice": unknown key "max_tunnel"; known keys are name, token, sha256, names, reserved, max_tunnels`},
		{"unknown limits key", "limits:\n  max_streams: 5\n",
			`relay.yaml:2: limits: unknown key "max_streams"; known keys are max_tunnels_per_token, max_streams_per_tunnel, conn_rate_per_ip, conn_rate_loopback, response_header_timeout, auth_failures_per_minute`},
		{"key twice", "limits:\n  conn_rate_per_ip: 5\n  conn_rate_per_ip: 6\n",
			`relay.yaml:3: limits: key "conn_rate_per_ip" is given twice (first at line 2)`},
		{"empty token", "tokens:\n  - name: alice\n    token: \"\"\n",
			`relay.yaml:3: token "alice": token is empty: an empty token would let anyone in; give a long random token (openssl rand -hex 24)`},
		{"null token", "tokens:\n  - name: alice\n    token:\n",
			`relay.yaml:3: token "alice": token is empty: an empty token would let anyone in; give a long random token (openssl rand -hex 24)`},
		{"empty sha256", "tokens:\n  - name: alice\n    sha256: ''\n",
			`relay.yaml:3: token "alice": sha256 is empty: an empty token would let anyone in; give the token's hex SHA-256`},
		{"token without secret", "tokens:\n  - name: alice\n    names: [a]\n",
			`relay.yaml:2: token "alice" is empty: an empty token would let anyone in; set its secret or sha256`},
		{"empty entry", "tokens:\n  -\n",
			`relay.yaml:2: token "token-1" must be a mapping of keys (name, token, sha256, names, reserved, max_tunnels)`},
		{"empty tokens list", "tokens: []\n",
			`relay.yaml:1: tokens must be a list with at least one token (- name: …); leave the key out to run without tokens`},
		{"tokens with nothing", "tokens:\n",
			`relay.yaml:1: tokens must be a list with at least one token (- name: …); leave the key out to run without tokens`},
		{"short token", "tokens:\n  - name: alice\n    token: short\n",
			`relay.yaml:2: token "alice" is shorter than 8 characters; use a long random token (e.g. openssl rand -hex 24)`},
		{"bad sha256", "tokens:\n  - name: alice\n    sha256: abc\n",
			`relay.yaml:2: token "alice": sha256 must be 64 hex digits`},
		{"secret and sha256", "tokens:\n  - name: alice\n    token: " + secret + "\n    sha256: " + testSHA + "\n",
			`relay.yaml:2: token "alice" has both a secret and a sha256; give one`},
		{"token not a string", "tokens:\n  - name: alice\n    token: [" + secret + "]\n",
			`relay.yaml:3: token "alice": token must be a string`},
		{"duplicate name", "tokens:\n  - name: alice\n    token: " + secret + "\n  - name: alice\n    sha256: " + testSHA + "\n",
			`relay.yaml:4: token name "alice" is used twice (first at line 2); give each token its own name`},
		// The relay tells tokens apart by their secret: a second token
		// with the first one's would silently take its place.
		{"same secret twice", "tokens:\n  - name: alice\n    token: " + secret + "\n    names: [\"alice-*\"]\n  - name: bob\n    token: " + secret + "\n    names: [\"bob-*\"]\n",
			`relay.yaml:5: tokens "alice" and "bob" are the same token with different names or limits, and only one of them could ever apply; give each its own (openssl rand -hex 24)`},
		{"same secret as sha256", "tokens:\n  - name: alice\n    sha256: 4ebe2209faa8b2ad9f5942b442d787d62b68964519e2d572737d2d23529e45ba\n    max_tunnels: 2\n  - name: bob\n    token: " + secret + "\n",
			`relay.yaml:5: tokens "alice" and "bob" are the same token with different names or limits, and only one of them could ever apply; give each its own (openssl rand -hex 24)`},
		{"reserved twice", "tokens:\n  - name: a\n    token: " + secret + "\n    reserved: [x]\n  - name: b\n    sha256: " + testSHA + "\n    reserved: [x]\n",
			`relay.yaml:5: token "b": name "x" is already reserved by token "a"`},
		{"bad reserved name", "tokens:\n  - name: a\n    token: " + secret + "\n    reserved: [Bad_Name]\n",
			`relay.yaml:2: token "a": reserved name "Bad_Name" `},
		{"bad pattern", "tokens:\n  - name: a\n    token: " + secret + "\n    names: [\"[a\"]\n",
			`relay.yaml:2: token "a": name pattern "[a": syntax error in pattern`},
		// A name is one lower-case label: such patterns would grant names
		// that no visitor can reach (random names like Alice-sunny-fox-16).
		{"pattern with capitals", "tokens:\n  - name: a\n    token: " + secret + "\n    names: [\"Alice-*\"]\n",
			`relay.yaml:2: token "a": name pattern "Alice-*" can match no tunnel name: names are lower-case letters, digits and '-' (with * ? [ ] as wildcards)`},
		{"pattern with a dot", "tokens:\n  - name: a\n    token: " + secret + "\n    names: [\"dev.*\"]\n",
			`relay.yaml:2: token "a": name pattern "dev.*" can match no tunnel name`},
		{"negative max_tunnels", "tokens:\n  - name: a\n    token: " + secret + "\n    max_tunnels: -1\n",
			`relay.yaml:4: token "a": max_tunnels: must be at least 0, got -1`},
		{"max_tunnels not a number", "tokens:\n  - name: a\n    token: " + secret + "\n    max_tunnels: many\n",
			`relay.yaml:4: token "a": max_tunnels: want a whole number, got "many"`},
		{"names not a list", "tokens:\n  - name: a\n    token: " + secret + "\n    names: {a: b}\n",
			`relay.yaml:4: token "a": names: want a list like [alice, "alice-*"]`},
		{"duration without unit", "limits:\n  response_header_timeout: 60\n",
			`relay.yaml:2: limits: response_header_timeout: want a duration like 60s or 2m, got "60"`},
		{"negative duration", "limits:\n  response_header_timeout: -5s\n",
			`relay.yaml:2: limits: response_header_timeout: must not be negative, got -5s`},
		{"too many streams", "limits:\n  max_streams_per_tunnel: 60000\n",
			`relay.yaml:2: limits: max_streams_per_tunnel: at most 50000`},
		{"bad rate", "limits:\n  conn_rate_per_ip: fast\n",
			`relay.yaml:2: limits: conn_rate_per_ip: want a number of connections per second (negative: no limit), got "fast"`},
		{"bad bool", "limits:\n  conn_rate_loopback: yes\n",
			`relay.yaml:2: limits: conn_rate_loopback: want true or false, got "yes"`},
		{"limits not a mapping", "limits: 5\n",
			`relay.yaml:1: limits must be a mapping of keys (max_tunnels_per_token, max_streams_per_tunnel, conn_rate_per_ip, conn_rate_loopback, response_header_timeout, auth_failures_per_minute)`},
		{"top level a list", "- tokens\n",
			`relay.yaml:1: the configuration must be a mapping of keys (tokens, limits)`},
		{"syntax error", "tokens:\n  - name: a\n   token: x\n",
			`relay.yaml:1: did not find expected '-' indicator`},
		{"tab indentation", "tokens:\n\t- name: a\n",
			`relay.yaml:2: `},
		{"two documents", "limits: {}\n---\nlimits: {}\n",
			`relay.yaml:2: a second YAML document (after ---); keep the configuration in one`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig("relay.yaml", []byte(tt.data))
			if err == nil {
				t.Fatalf("no error; parsed %+v", cfg)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.want) {
				t.Errorf("error:\n%s\nwant it to start with:\n%s", msg, tt.want)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			if strings.Contains(msg, secret) {
				t.Errorf("error shows the token: %q", msg)
			}
		})
	}
}

// TestLoadConfigFileWarnings checks that clear-text tokens in a file others
// can read give a warning, and that hashed ones or a private file do not.
func TestLoadConfigFileWarnings(t *testing.T) {
	dir := t.TempDir()
	clear := "tokens:\n  - name: a\n    token: clear-text-secret\n"
	hashed := "tokens:\n  - name: a\n    sha256: " + testSHA + "\n"
	for _, tt := range []struct {
		name, data string
		mode       os.FileMode
		warn       bool
	}{
		{"clear, world-readable", clear, 0o644, true},
		{"clear, private", clear, 0o600, false},
		{"clear, group-readable", clear, 0o640, false},
		{"hashed, world-readable", hashed, 0o644, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "relay.yaml")
			if err := os.WriteFile(path, []byte(tt.data), tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil { // whatever the umask
				t.Fatal(err)
			}
			cfg, err := LoadConfigFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(cfg.Warnings) > 0; got != tt.warn {
				t.Fatalf("warnings = %q, want some: %v", cfg.Warnings, tt.warn)
			}
			for _, w := range cfg.Warnings {
				if !strings.Contains(w, "chmod 600") || strings.Contains(w, "clear-text-secret") {
					t.Errorf("warning %q should say what to do and not show the token", w)
				}
			}
		})
	}
}

// TestLoadConfigFileErrors checks errors about the file itself.
func TestLoadConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadConfigFile(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: error %v, want one naming the file", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte(strings.Repeat("# padding\n", maxConfigSize/10+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfigFile(big); err == nil || !strings.Contains(err.Error(), "big.yaml: larger than") {
		t.Errorf("big file: error %v", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("limits:\n  nope: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfigFile(bad); err == nil || !strings.HasPrefix(err.Error(), "bad.yaml:2: ") {
		t.Errorf("bad file: error %v, want one starting with bad.yaml:2:", err)
	}
}

// TestConfigTokensWork checks that a token from the file is accepted by a
// relay: the hash of "test" matches the secret "test".
func TestConfigTokensWork(t *testing.T) {
	cfg, err := ParseConfig("relay.yaml", []byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	ts, err := newTokenSet(cfg.Tokens)
	if err != nil {
		t.Fatal(err)
	}
	if tok := ts.match("test"); tok == nil || tok.Name != "alice" {
		t.Errorf("secret %q matched %v, want alice", "test", tok)
	}
	if tok := ts.match("bob-secret-0123456789"); tok == nil || tok.Name != "bob" {
		t.Errorf("bob's secret matched %v, want bob", tok)
	}
	if tok := ts.match(""); tok != nil {
		t.Errorf("the empty secret matched %q", tok.Name)
	}
}

// FuzzLoadConfig feeds the parser arbitrary bytes: it must not panic, its
// errors must be one line naming the file, and whatever it accepts the
// relay must accept too.
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte(fullConfig))
	f.Add([]byte(""))
	f.Add([]byte("tokens:\n  - token: \"\"\n"))
	f.Add([]byte("tokens:\n  - name: a\n    token: aaaaaaaaaa\n    names: &n [\"team-*\"]\n  - name: b\n    token: bbbbbbbbbb\n    names: *n\n"))
	f.Add([]byte("limits: {conn_rate_per_ip: -1, response_header_timeout: 1h}\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("tokens: [{name: x, reserved: [x, x]}]\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig("fuzz.yaml", data)
		if err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, "fuzz.yaml") || strings.Contains(msg, "\n") {
				t.Fatalf("error is not one line naming the file: %q", msg)
			}
			return
		}
		if _, err := newTokenSet(cfg.Tokens); err != nil {
			t.Fatalf("parsed tokens the relay refuses: %v", err)
		}
		for _, tok := range cfg.Tokens {
			if tok.Secret == "" && tok.SHA256 == "" {
				t.Fatalf("token %q has neither secret nor hash", tok.Name)
			}
		}
	})
}

// A token written in the file with spaces around it (a paste) is the
// token without them, as what an agent presents is: the agent is let in
// whether or not it sends the spaces too.
func TestTokenWithSpacesInFileAuthenticates(t *testing.T) {
	cfg, err := ParseConfig("relay.yaml", []byte("tokens:\n  - name: alice\n    token: \"alice-secret-0123 \"\n"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Domain: "localhost", Tokens: cfg.Tokens})
	if err != nil {
		t.Fatal(err)
	}
	for _, presented := range []string{"alice-secret-0123", "alice-secret-0123 "} {
		r := httptest.NewRequest("GET", "/_tunnel/connect", nil)
		r.Header.Set("Authorization", "Bearer "+presented)
		if tok, err := s.authenticate(r); tok == nil || err != nil {
			t.Errorf("presenting %q: %v", presented, err)
		}
	}
}

// A token's random name is a valid name: a pattern whose prefix cannot
// start one ("-*") gives no random name rather than an invalid one.
func TestRandomNameValid(t *testing.T) {
	ts, err := newTokenSet([]Token{{Name: "a", Secret: "aaaaaaaaaa", Names: []string{"-*"}}, {Name: "b", Secret: "bbbbbbbbbb", Names: []string{"team-*"}}})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ts.randomName(ts.tokens[0]); err == nil {
		t.Errorf(`pattern "-*": random name %q, want an error`, n)
	}
	n, err := ts.randomName(ts.tokens[1])
	if err != nil || !strings.HasPrefix(n, "team-") || proto.ValidateName(n) != nil {
		t.Errorf(`pattern "team-*": random name %q, %v`, n, err)
	}
}
