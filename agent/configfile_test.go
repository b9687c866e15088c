package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeCA writes a self-signed CA certificate to dir/name and returns it.
func writeCA(t *testing.T, dir, name string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "config test CA " + name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoadConfigFile loads a file with every key and checks the Config it
// makes: tunnels in order, local addresses, TLS options with the CA files
// read relative to the file, the token from its file, visitor rules with
// the password hashed.
func TestLoadConfigFile(t *testing.T) {
	dir := t.TempDir()
	localCA := writeCA(t, dir, "dev-ca.pem")
	relayCA := writeCA(t, dir, "relay-ca.pem")
	writeFile(t, dir, "relay-token", "  s3cret-token-0123\n")
	path := writeFile(t, dir, "tunnels.yaml", `# two tunnels
relay: https://relay.example.com
token_file: relay-token
ca_file: relay-ca.pem
inspect_addr: 127.0.0.1:4041
tunnels:
  - name: demo
    port: 8080
    basic_auth: ["ann:correct:horse", "bob:pw"]
    allow_ip: [203.0.113.0/24, 2001:db8::1]
    deny_ip: 203.0.113.7
  - name: backend
    local: 127.0.0.1:8443
    local_https: true
    local_ca: dev-ca.pem
    host_header: rewrite
  - local: "[::1]:9000"
    local_https: true
    local_insecure: true
    host_header: myapp.test:8080
`)
	cfg, err := LoadConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Relay != "https://relay.example.com" || cfg.Token != "s3cret-token-0123" || cfg.InspectAddr != "127.0.0.1:4041" {
		t.Errorf("relay %q, token %q, inspect %q", cfg.Relay, cfg.Token, cfg.InspectAddr)
	}
	if cfg.TLSConfig == nil || !hasCert(cfg.TLSConfig.RootCAs, relayCA) {
		t.Error("ca_file: the relay's CA is not among the roots")
	}
	if len(cfg.Tunnels) != 3 {
		t.Fatalf("%d tunnels, want 3: %+v", len(cfg.Tunnels), cfg.Tunnels)
	}
	demo, api, third := cfg.Tunnels[0], cfg.Tunnels[1], cfg.Tunnels[2]
	wantAccess := &Access{
		BasicAuth: []Credential{BasicUser("ann", "correct:horse"), BasicUser("bob", "pw")},
		AllowIPs:  []string{"203.0.113.0/24", "2001:db8::1"},
		DenyIPs:   []string{"203.0.113.7"},
	}
	if demo.Name != "demo" || demo.Local != "localhost:8080" || demo.LocalHTTPS || !reflect.DeepEqual(demo.Access, wantAccess) {
		t.Errorf("demo = %+v, access %+v; want localhost:8080 with %+v", demo, demo.Access, wantAccess)
	}
	if api.Name != "backend" || api.Local != "127.0.0.1:8443" || !api.LocalHTTPS || api.LocalInsecure || api.HostHeader != HostRewrite || api.Access != nil {
		t.Errorf("api = %+v", api)
	}
	if api.LocalCA == nil || !hasCert(api.LocalCA, localCA) || hasCert(api.LocalCA, relayCA) {
		t.Error("local_ca: the pool must hold the local CA, and only it")
	}
	if third.Name != "" || third.Local != "[::1]:9000" || !third.LocalInsecure || third.LocalCA != nil || third.HostHeader != "myapp.test:8080" {
		t.Errorf("third = %+v", third)
	}
	if h := api.hostHeader(); h != "127.0.0.1:8443" {
		t.Errorf("host_header rewrite sends %q, want the local address", h)
	}
	// What Run checks passes, too.
	if _, err := cfg.check(true); err != nil {
		t.Errorf("check: %v", err)
	}
}

func hasCert(pool *x509.CertPool, c *x509.Certificate) bool {
	_, err := c.Verify(x509.VerifyOptions{Roots: pool})
	return err == nil
}

// TestParseConfigErrors checks that each mistake is refused with the
// file's name, the line, and a sentence that names the key, and that no
// error repeats a token or a password.
func TestParseConfigErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "empty-token", "\n")
	ca := filepath.Join(dir, "ca.pem")
	writeCA(t, dir, "ca.pem")
	notPEM := writeFile(t, dir, "not.pem", "hello\n")
	const secret = "hunter2-secret"
	tests := []struct {
		name, data string
		want       string // the error starts with "t.yaml:" and contains this
	}{
		{"unknown top-level key", "relay: http://x:1\ntunels:\n  - port: 1\n", `t.yaml:2: the configuration: unknown key "tunels"; known keys are relay, token, token_file, ca_file, inspect_addr, tunnels`},
		{"unknown tunnel key", "tunnels:\n  - name: demo\n    port: 8080\n    subdomain: x\n", `t.yaml:4: tunnel "demo": unknown key "subdomain"`},
		{"unknown key in an unnamed tunnel", "tunnels:\n  - port: 8080\n  - port: 8081\n    hostheader: x\n", `t.yaml:4: tunnel 2: unknown key "hostheader"`},
		{"key twice", "tunnels:\n  - port: 8080\n    port: 8081\n", `t.yaml:3: tunnel 1: key "port" is given twice (first at line 2)`},
		{"syntax", "relay: a\ntunnels:\n  - port: 8080\n\tname: x\n", "found a tab character"},
		{"empty", "", "t.yaml: the file is empty"},
		{"not a mapping", "- port: 8080\n", "t.yaml:1: the configuration must be a mapping"},
		{"no tunnels", "relay: http://localhost:8000\n", "t.yaml:1: no tunnels: list them under tunnels:"},
		{"tunnels empty", "tunnels: []\n", "t.yaml:1: tunnels must be a list with at least one tunnel"},
		{"two documents", "tunnels:\n  - port: 1\n---\ntunnels:\n  - port: 2\n", "t.yaml:3: a second YAML document"},
		{"relay not a URL", "relay: example.com\ntunnels:\n  - port: 1\n", `t.yaml:1: relay "example.com" is not a URL`},
		{"relay ftp", "relay: ftp://example.com\ntunnels:\n  - port: 1\n", `t.yaml:1: relay "ftp://example.com" is not a URL`},
		{"relay with a path", "relay: https://example.com/tunnel?x=1\ntunnels:\n  - port: 1\n", `t.yaml:1: relay "https://example.com/tunnel?x=1" has more than a scheme and a host, which the agent would ignore: give it as https://example.com`},
		{"port 0", "tunnels:\n  - port: 0\n", `t.yaml:2: tunnel 1: port: want a TCP port from 1 to 65535, got "0"`},
		{"port word", "tunnels:\n  - port: http\n", `t.yaml:2: tunnel 1: port: want a TCP port from 1 to 65535, got "http"`},
		{"port too big", "tunnels:\n  - port: 70000\n", `want a TCP port from 1 to 65535, got "70000"`},
		{"local without port", "tunnels:\n  - local: localhost\n", `t.yaml:2: tunnel 1: local "localhost" is not host:port`},
		{"local bad port", "tunnels:\n  - local: localhost:0\n", `t.yaml:2: tunnel 1: local "localhost:0" is not host:port`},
		{"port and local", "tunnels:\n  - port: 80\n    local: a:80\n", "t.yaml:3: tunnel 1: port and local do not go together (port is at line 2)"},
		{"no local", "tunnels:\n  - name: demo\n", `t.yaml:2: tunnel "demo": no local server: give its port`},
		{"bad name", "tunnels:\n  - name: Bad_Name\n    port: 1\n", `t.yaml:2: name "Bad_Name" is invalid: use lower-case letters only`},
		{"reserved name", "tunnels:\n  - name: www\n    port: 1\n", `t.yaml:2: name "www" is invalid: it is reserved`},
		{"name twice", "tunnels:\n  - name: a\n    port: 1\n  - name: a\n    port: 2\n", `t.yaml:4: tunnel "a" is listed twice (first at line 2)`},
		{"https not a bool", "tunnels:\n  - port: 1\n    local_https: yes\n", `t.yaml:3: tunnel 1: local_https: want true or false, got "yes"`},
		{"ca without https", "tunnels:\n  - port: 1\n    local_ca: " + ca + "\n", "t.yaml:3: tunnel 1: local_ca applies only to an HTTPS local server; add local_https: true"},
		{"insecure without https", "tunnels:\n  - port: 1\n    local_insecure: true\n", "t.yaml:3: tunnel 1: local_insecure applies only to an HTTPS local server"},
		{"ca and insecure", "tunnels:\n  - port: 1\n    local_https: true\n    local_ca: " + ca + "\n    local_insecure: true\n", "t.yaml:5: tunnel 1: local_ca and local_insecure do not go together (local_ca is at line 4)"},
		{"ca missing", "tunnels:\n  - port: 1\n    local_https: true\n    local_ca: nope.pem\n", "t.yaml:4: tunnel 1: local_ca: open "},
		{"ca not PEM", "tunnels:\n  - port: 1\n    local_https: true\n    local_ca: " + notPEM + "\n", "holds no PEM certificate"},
		{"host header with space", "tunnels:\n  - port: 1\n    host_header: my app\n", `t.yaml:3: tunnel 1: host header "my app" is not a host or host:port like localhost:8080: character ' ' is not allowed`},
		{"host header with CRLF", "tunnels:\n  - port: 1\n    host_header: \"a\\r\\nX-Evil: 1\"\n", `t.yaml:3: tunnel 1: host header "a\r\nX-Evil: 1" is not a host or host:port`},
		{"host header URL", "tunnels:\n  - port: 1\n    host_header: http://a\n", `character '/' is not allowed`},
		{"host header bad port", "tunnels:\n  - port: 1\n    host_header: a:99999\n", "the port must be a number from 1 to 65535"},
		{"host header empty", "tunnels:\n  - port: 1\n    host_header: \"\"\n", "t.yaml:3: tunnel 1: host_header is empty"},
		{"basic auth without colon", "tunnels:\n  - port: 1\n    basic_auth: [" + secret + "]\n", "t.yaml:3: tunnel 1: basic_auth: each entry is user:password"},
		{"basic auth without user", "tunnels:\n  - port: 1\n    basic_auth: [\":" + secret + "\"]\n", "each entry is user:password, and one has no user"},
		{"basic auth a mapping", "tunnels:\n  - port: 1\n    basic_auth: {ann: " + secret + "}\n", `t.yaml:3: tunnel 1: basic_auth: want a list like ["user:password"]`},
		{"bad CIDR", "tunnels:\n  - port: 1\n    allow_ip: [203.0.113.0/33]\n", `t.yaml:3: tunnel 1: allow_ip: "203.0.113.0/33" is not an IP address or a CIDR prefix`},
		{"bad deny", "tunnels:\n  - port: 1\n    deny_ip: nowhere\n", `t.yaml:3: tunnel 1: deny_ip: "nowhere" is not an IP address`},
		{"token and token_file", "token: " + secret + "\ntoken_file: x\ntunnels:\n  - port: 1\n", "t.yaml:2: token and token_file do not go together (the other is at line 1)"},
		{"token empty", "token: \"\"\ntunnels:\n  - port: 1\n", "t.yaml:1: token is empty or not a string"},
		{"token a list", "token: [" + secret + "]\ntunnels:\n  - port: 1\n", "t.yaml:1: token is empty or not a string"},
		{"token file missing", "token_file: nope\ntunnels:\n  - port: 1\n", "t.yaml:1: token_file: open "},
		{"token file empty", "token_file: " + filepath.Join(dir, "empty-token") + "\ntunnels:\n  - port: 1\n", "is empty; write the relay's token in it"},
		{"inspect addr", "inspect_addr: 4040\ntunnels:\n  - port: 1\n", `t.yaml:1: inspect_addr "4040" is not host:port`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig("t.yaml", []byte(tt.data))
			if err == nil {
				t.Fatalf("no error; config %+v", cfg)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "t.yaml") || !strings.Contains(msg, tt.want) {
				t.Errorf("error:\n  %s\nwant one containing\n  %s", msg, tt.want)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error %q is not one line", msg)
			}
			if strings.Contains(msg, secret) {
				t.Errorf("error %q repeats a secret", msg)
			}
		})
	}
}

// TestLoadConfigFileErrors checks the errors about the file itself, and
// that relative names are read next to it, not in the working directory.
func TestLoadConfigFileErrors(t *testing.T) {
	if _, err := LoadConfigFile(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml: no such file") {
		t.Errorf("missing file: %v", err)
	}
	dir := t.TempDir()
	writeFile(t, dir, "token", "tok-next-to-the-file")
	path := writeFile(t, dir, "a.yaml", "token_file: token\ntunnels:\n  - port: 1\n")
	cfg, err := LoadConfigFile(path)
	if err != nil || cfg.Token != "tok-next-to-the-file" {
		t.Errorf("token_file next to the file: %v, token %q", err, cfg.Token)
	}
	// ParseConfig has no file: the same name is looked up where we are.
	if _, err := ParseConfig("a.yaml", []byte("token_file: token\ntunnels:\n  - port: 1\n")); err == nil {
		t.Error("ParseConfig read token_file relative to another file's directory")
	}
}

// TestValidateHostHeader checks the values a Host header may take.
func TestValidateHostHeader(t *testing.T) {
	good := []string{"localhost", "localhost:8080", "myapp.test", "my_app.internal:443", "127.0.0.1", "127.0.0.1:8443", "[::1]", "[::1]:8443", "rewrite", "A.Example.COM"}
	bad := []string{"", " ", "a b", "a\r\nX: y", "a\n", "a\t", "a/b", "http://a", "a?b", "a#b", "user@a", `a\b`, "a:", "a:0", "a:65536", "a:+80", "a:-1", "a:b", "::1", "[::1", "[::1]x", "[127.0.0.1]", "[fe80::1%eth0]", "a..b", ".a", "a.", "ä.test", strings.Repeat("a", 64) + ".test", strings.Repeat("a.", 130) + "a"}
	for _, v := range good {
		if err := ValidateHostHeader(v); err != nil {
			t.Errorf("ValidateHostHeader(%q) = %v, want nil", v, err)
		}
	}
	for _, v := range bad {
		err := ValidateHostHeader(v)
		if err == nil {
			t.Errorf("ValidateHostHeader(%q) = nil, want an error", v)
		} else if strings.ContainsAny(err.Error(), "\r\n") {
			t.Errorf("ValidateHostHeader(%q) = %q: not one line", v, err)
		}
	}
}

// TestTunnelLocalOptions checks that Run and Listen refuse local TLS
// options that do not go together, and a rewrite without a local target.
func TestTunnelLocalOptions(t *testing.T) {
	pool := x509.NewCertPool()
	tests := []struct {
		name      string
		t         Tunnel
		needLocal bool
		want      string
	}{
		{"ca without https", Tunnel{Local: "localhost:1", LocalCA: pool}, true, "apply only with LocalHTTPS"},
		{"insecure without https", Tunnel{Local: "localhost:1", LocalInsecure: true}, true, "apply only with LocalHTTPS"},
		{"server name without https", Tunnel{Local: "localhost:1", LocalServerName: "a"}, true, "apply only with LocalHTTPS"},
		{"ca and insecure", Tunnel{Local: "localhost:1", LocalHTTPS: true, LocalCA: pool, LocalInsecure: true}, true, "do not go together"},
		{"bad host header", Tunnel{Local: "localhost:1", HostHeader: "a b"}, true, `host header "a b"`},
		{"rewrite for Listen", Tunnel{HostHeader: HostRewrite}, false, "needs a local target"},
		{"rewrite with a local target", Tunnel{Local: "localhost:1", HostHeader: HostRewrite}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Relay: "http://localhost:8000", Tunnels: []Tunnel{tt.t}}
			_, err := cfg.check(tt.needLocal)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("check: %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("check: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	tc := (&Tunnel{Local: "127.0.0.1:8443", LocalHTTPS: true}).localTLSConfig()
	if tc.ServerName != "127.0.0.1" || !reflect.DeepEqual(tc.NextProtos, []string{"http/1.1"}) || tc.InsecureSkipVerify {
		t.Errorf("local TLS config: server name %q, ALPN %q, insecure %v", tc.ServerName, tc.NextProtos, tc.InsecureSkipVerify)
	}
	tc = (&Tunnel{Local: "127.0.0.1:8443", LocalHTTPS: true, LocalServerName: "myapp.test"}).localTLSConfig()
	if tc.ServerName != "myapp.test" {
		t.Errorf("LocalServerName: server name %q", tc.ServerName)
	}
}
