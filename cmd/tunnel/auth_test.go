package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// unsetEnv unsets key for the test and restores it afterwards.
func unsetEnv(t *testing.T, key string) {
	t.Helper()
	t.Setenv(key, "") // registers the restore
	os.Unsetenv(key)
}

// TestRelayTokenFlags checks how relay reads --token, TUNNEL_TOKEN,
// --config and --allow-no-auth: every source counts, each token gets a
// name, and an empty token is a usage error rather than "auth off".
func TestRelayTokenFlags(t *testing.T) {
	const tokA, tokB = "token-a-0123456789", "token-b-0123456789"
	tests := []struct {
		name    string
		env     *string // TUNNEL_TOKEN; nil: unset
		args    []string
		want    []relay.Token
		wantErr []string
	}{
		{name: "none", args: nil, want: nil},
		{name: "one flag", args: []string{"--token", tokA},
			want: []relay.Token{{Name: "flag-1", Secret: tokA}}},
		{name: "env only", env: ptr(tokA),
			want: []relay.Token{{Name: "env-1", Secret: tokA}}},
		{name: "every source", env: ptr(" " + tokA + " , " + tokB), args: []string{"--token", tokB, "--token", tokA},
			want: []relay.Token{{Name: "flag-1", Secret: tokB}, {Name: "flag-2", Secret: tokA}, {Name: "env-1", Secret: tokA}, {Name: "env-2", Secret: tokB}}},
		{name: "empty --token", args: []string{"--token", ""}, wantErr: []string{"--token is empty: an empty token would let anyone in"}},
		{name: "blank --token", args: []string{"--token", tokA, "--token", "  "}, wantErr: []string{"--token is empty"}},
		{name: "--token= form", args: []string{"--token="}, wantErr: []string{"--token is empty"}},
		{name: "empty TUNNEL_TOKEN", env: ptr(""), wantErr: []string{"TUNNEL_TOKEN is set but empty", "or unset it"}},
		{name: "empty entry in TUNNEL_TOKEN", env: ptr(tokA + ",," + tokB), wantErr: []string{"TUNNEL_TOKEN: token 2 of 3 is empty"}},
		{name: "trailing comma", env: ptr(tokA + ","), wantErr: []string{"TUNNEL_TOKEN: token 2 of 2 is empty"}},
		{name: "short token", args: []string{"--token", "abc"}, wantErr: []string{`token "flag-1" is shorter than 8 characters`}},
		// relay.env's "TUNNEL_TOKEN=…   # comment": systemd keeps the comment.
		{name: "comment in TUNNEL_TOKEN", env: ptr(tokA + "   # the laptop"), wantErr: []string{`token "env-1" holds " #…"`, "put it on a line of its own"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t, "TUNNEL_TOKEN")
			if tt.env != nil {
				t.Setenv("TUNNEL_TOKEN", *tt.env)
			}
			var got *RelayOptions
			err := execute(NewCmdRelay(testFactory(), func(o *RelayOptions) error { got = o; return nil }),
				append([]string{"--domain", "localhost"}, tt.args...)...)
			if tt.wantErr != nil {
				checkUsageError(t, err, tt.wantErr...)
				if strings.Contains(err.Error(), "abc") {
					t.Errorf("the error shows the token: %v", err)
				}
				if got != nil {
					t.Fatal("runF ran despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Tokens, tt.want) {
				t.Errorf("tokens = %+v, want %+v", got.Tokens, tt.want)
			}
			if cfg := relayConfig(got); !reflect.DeepEqual(cfg.Tokens, tt.want) || cfg.AllowNoAuth {
				t.Errorf("config tokens = %+v, allow no auth %v; want %+v, false", cfg.Tokens, cfg.AllowNoAuth, tt.want)
			}
		})
	}

	t.Run("--config and --allow-no-auth", func(t *testing.T) {
		unsetEnv(t, "TUNNEL_TOKEN")
		var got *RelayOptions
		err := execute(NewCmdRelay(testFactory(), func(o *RelayOptions) error { got = o; return nil }),
			"--domain", "localhost", "--config", "/etc/tunnel/relay.yaml", "--allow-no-auth")
		if err != nil {
			t.Fatal(err)
		}
		if got.ConfigFile != "/etc/tunnel/relay.yaml" || !got.AllowNoAuth || !relayConfig(got).AllowNoAuth {
			t.Errorf("options = %+v", *got)
		}
	})
}

func ptr[T any](v T) *T { return &v }

// TestExposeAccessFlags checks --token, TUNNEL_TOKEN and the visitor-rule
// flags of expose, and that bad values are usage errors that do not echo a
// password.
func TestExposeAccessFlags(t *testing.T) {
	tests := []struct {
		name       string
		env        string // TUNNEL_TOKEN
		args       []string
		wantToken  string
		wantAccess *agent.Access
		wantErr    []string
	}{
		{name: "no token, no rules"},
		{name: "token from flag", args: []string{"--token", "flag-token"}, wantToken: "flag-token"},
		{name: "token from env", env: "env-token", wantToken: "env-token"},
		{name: "--token wins over TUNNEL_TOKEN", env: "env-token", args: []string{"--token", "flag-token"}, wantToken: "flag-token"},
		{name: "empty --token", env: "env-token", args: []string{"--token", ""}, wantErr: []string{"--token is empty"}},
		{
			name: "basic auth",
			args: []string{"--basic-auth", "ann:pw", "--basic-auth", "bob:pa:ss:word", "--basic-auth", "cy:"},
			wantAccess: &agent.Access{BasicAuth: []agent.Credential{
				agent.BasicUser("ann", "pw"), agent.BasicUser("bob", "pa:ss:word"), agent.BasicUser("cy", ""),
			}},
		},
		{
			name:       "IP rules",
			args:       []string{"--allow-ip", "10.0.0.0/8", "--allow-ip", "192.0.2.7", "--deny-ip", "2001:db8::/32", "--deny-ip", "10.1.2.3"},
			wantAccess: &agent.Access{AllowIPs: []string{"10.0.0.0/8", "192.0.2.7"}, DenyIPs: []string{"2001:db8::/32", "10.1.2.3"}},
		},
		{name: "basic auth without colon", args: []string{"--basic-auth", "secretpw"}, wantErr: []string{"--basic-auth wants user:password", "no ':'"}},
		{name: "basic auth without user", args: []string{"--basic-auth", ":secretpw"}, wantErr: []string{"--basic-auth wants user:password", "no user"}},
		{name: "bad allow-ip", args: []string{"--allow-ip", "10.0.0.0/33"}, wantErr: []string{`--allow-ip "10.0.0.0/33" is not an IP address or a CIDR prefix`}},
		{name: "host name as deny-ip", args: []string{"--deny-ip", "example.com"}, wantErr: []string{`--deny-ip "example.com" is not an IP address or a CIDR prefix`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TUNNEL_TOKEN", tt.env)
			var got *ExposeOptions
			err := execute(NewCmdExpose(testFactory(), func(o *ExposeOptions) error { got = o; return nil }),
				append([]string{"-p", "8080"}, tt.args...)...)
			if tt.wantErr != nil {
				checkUsageError(t, err, tt.wantErr...)
				if strings.Contains(err.Error(), "secretpw") {
					t.Errorf("the error shows the password: %v", err)
				}
				if got != nil {
					t.Fatal("runF ran despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Token != tt.wantToken {
				t.Errorf("token = %q, want %q", got.Token, tt.wantToken)
			}
			if !reflect.DeepEqual(got.Access, tt.wantAccess) {
				t.Errorf("access = %+v, want %+v", got.Access, tt.wantAccess)
			}
		})
	}
}

// The process tests below run the binary: a relay with tokens from each
// source, agents with and without them.

const needsToken = "tunnel: relay refused the connection: 401 Unauthorized: this relay needs a token: pass --token or set TUNNEL_TOKEN"

// noToken is the environment of an agent that must not pick up a token
// from the test's own environment. (A relay would refuse it: for the relay
// a set but empty TUNNEL_TOKEN is a mistake.)
var noToken = []string{"TUNNEL_TOKEN="}

// exposeWith runs expose for name against relayAddr with env.
func exposeWith(t *testing.T, label string, env []string, relayAddr string, args ...string) *proc {
	t.Helper()
	return startTunnel(t, label, env, append([]string{"expose", "--relay", "http://" + relayAddr}, args...)...)
}

// expectRefused waits for an agent to exit 1 with the line want.
func expectRefused(t *testing.T, p *proc, want string) {
	t.Helper()
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("%s exited %d, want 1", p.name, code)
	}
	p.stderr.find(t, fmt.Sprintf("%q", want), func(s string) bool { return s == want })
}

// expectServing waits for an agent's URL and fetches / through the relay.
func expectServing(t *testing.T, p *proc, relayAddr string) {
	t.Helper()
	url := p.stdout.first(t, 1)[0]
	if status, body := get(t, viaRelay(t, relayAddr), url+"/"); status != http.StatusOK || body != "hello from local" {
		t.Fatalf("GET %s: %d %q", url, status, body)
	}
}

// TestRelayAuthSources checks that a token from the flag, the environment
// or the config file each turns auth on: an agent without a token or with a
// wrong one is refused with a one-line reason and exit 1, and one with the
// token is served. The token never shows in the relay's output.
func TestRelayAuthSources(t *testing.T) {
	const token = "the-right-token-123"
	sum := sha256.Sum256([]byte(token))
	for _, src := range []string{"flag", "env", "file"} {
		t.Run(src, func(t *testing.T) {
			local := startLocalServer(t)
			args := []string{"relay", "--domain", "localhost", "--addr", "127.0.0.1:0"}
			var env []string
			switch src {
			case "flag":
				args = append(args, "--token", token)
			case "env":
				env = []string{"TUNNEL_TOKEN=other-token-456," + token}
			case "file":
				path := filepath.Join(t.TempDir(), "relay.yaml")
				writeFile(t, path, "tokens:\n  - name: ann\n    sha256: "+hex.EncodeToString(sum[:])+"\n")
				args = append(args, "--config", path)
			}
			relayProc := startTunnel(t, "relay", env, args...)
			line := relayProc.stderr.find(t, "listening line", func(s string) bool { return strings.HasPrefix(s, "relay listening on ") })
			relayAddr, _, _ := strings.Cut(strings.TrimPrefix(line, "relay listening on "), ",")

			expectRefused(t, exposeWith(t, "no token", noToken, relayAddr, "-p", local.port(), "-s", "demo"), needsToken)
			expectRefused(t, exposeWith(t, "wrong token", noToken, relayAddr, "-p", local.port(), "-s", "demo", "--token", "wrong-token-789"),
				"tunnel: relay refused the connection: 401 Unauthorized: token not accepted by this relay")
			good := exposeWith(t, "right token", []string{"TUNNEL_TOKEN=" + token}, relayAddr, "-p", local.port(), "-s", "demo")
			expectServing(t, good, relayAddr)

			relayProc.signal(t, syscall.SIGTERM)
			if code := relayProc.exitCode(t); code != 0 {
				t.Fatalf("relay exited %d after SIGTERM, want 0", code)
			}
			if relayProc.stderr.contains(token) || relayProc.stdout.contains(token) {
				t.Error("the relay printed the token")
			}
		})
	}
}

// TestRelayRefusesEmptyToken checks that an empty token from the flag or
// the environment stops the relay with a usage error (exit 2), never
// starting it without auth.
func TestRelayRefusesEmptyToken(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"flag", nil, []string{"--token", ""}, "tunnel: --token is empty: "},
		{"env", []string{"TUNNEL_TOKEN="}, nil, "tunnel: TUNNEL_TOKEN is set but empty: "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := startTunnel(t, "relay", tt.env, append([]string{"relay", "--domain", "localhost", "--addr", "127.0.0.1:0"}, tt.args...)...)
			if code := p.exitCode(t); code != 2 {
				t.Fatalf("relay exited %d, want 2", code)
			}
			p.stderr.find(t, "the empty-token error", func(s string) bool { return strings.HasPrefix(s, tt.want) })
			if p.stderr.contains("relay listening") {
				t.Error("the relay started")
			}
		})
	}
}

// TestRelayOpenNeedsFlag checks that a relay without tokens on an address
// beyond loopback refuses to start, and starts with --allow-no-auth after a
// warning.
func TestRelayOpenNeedsFlag(t *testing.T) {
	args := []string{"relay", "--domain", "localhost", "--addr", "0.0.0.0:0"}
	refused := startTunnel(t, "refused", nil, args...)
	if code := refused.exitCode(t); code != 1 {
		t.Fatalf("relay without tokens on 0.0.0.0 exited %d, want 1", code)
	}
	refused.stderr.find(t, "the no-auth error", func(s string) bool {
		return strings.HasPrefix(s, "tunnel: relay: no tokens configured and the relay listens beyond loopback") &&
			strings.Contains(s, "--allow-no-auth")
	})

	// An address that is not one says so, not that it is beyond loopback.
	bad := startTunnel(t, "bad-addr", nil, "relay", "--domain", "localhost", "--addr", "foo")
	if code := bad.exitCode(t); code != 1 {
		t.Fatalf("relay --addr foo exited %d, want 1", code)
	}
	bad.stderr.find(t, "the bad-address error", func(s string) bool {
		return s == `tunnel: relay: listen address "foo" is not HOST:PORT (e.g. :443, 127.0.0.1:8000)`
	})

	open := startTunnel(t, "open", nil, append(args, "--allow-no-auth")...)
	open.stderr.find(t, "the open-relay warning", func(s string) bool {
		return strings.Contains(s, "level=WARN") && strings.Contains(s, "OPEN relay")
	})
	open.stderr.find(t, "listening line", func(s string) bool { return strings.HasPrefix(s, "relay listening on ") })
	open.signal(t, syscall.SIGTERM)
	if code := open.exitCode(t); code != 0 {
		t.Fatalf("open relay exited %d after SIGTERM, want 0", code)
	}
}

// TestRelayConfigReload checks that the relay takes new tokens from its
// config file on SIGHUP and when the file changes: the old token's agent is
// disconnected and refused, the new one admitted; a broken file is logged
// and the running tokens stay; tokens from --token stay in every reload.
func TestRelayConfigReload(t *testing.T) {
	const tokA, tokB, tokC, tokFlag = "token-a-0123456789", "token-b-0123456789", "token-c-0123456789", "token-flag-0123456"
	sumA := sha256.Sum256([]byte(tokA))
	local := startLocalServer(t)
	path := filepath.Join(t.TempDir(), "relay.yaml")
	writeFile(t, path, "tokens:\n  - name: a\n    sha256: "+hex.EncodeToString(sumA[:])+"\n")
	relayProc := startTunnel(t, "relay", nil, "relay", "--domain", "localhost", "--addr", "127.0.0.1:0", "--config", path, "--token", tokFlag)
	line := relayProc.stderr.find(t, "listening line", func(s string) bool { return strings.HasPrefix(s, "relay listening on ") })
	relayAddr, _, _ := strings.Cut(strings.TrimPrefix(line, "relay listening on "), ",")
	// reloaded waits for a reload logged after the mark, a count of lines
	// taken before the file was rewritten.
	mark := func() int {
		relayProc.stderr.mu.Lock()
		defer relayProc.stderr.mu.Unlock()
		return len(relayProc.stderr.all)
	}
	reloaded := func(what string, since int) {
		t.Helper()
		relayProc.stderr.wait(t, what, func(all []string) bool {
			for _, s := range all[since:] {
				if strings.Contains(s, `msg="tokens reloaded"`) {
					return true
				}
			}
			return false
		})
	}

	agentA := exposeWith(t, "agent A", noToken, relayAddr, "-p", local.port(), "-s", "a", "--token", tokA)
	expectServing(t, agentA, relayAddr)

	// SIGHUP: B replaces A. A's agent is disconnected and, refused on
	// reconnect, gives up.
	m := mark()
	writeFile(t, path, "tokens:\n  - name: b\n    token: "+tokB+"\n")
	relayProc.signal(t, syscall.SIGHUP)
	reloaded("reload after SIGHUP", m)
	if code := agentA.exitCode(t); code != 1 {
		t.Fatalf("agent A exited %d after its token was removed, want 1", code)
	}
	expectRefused(t, exposeWith(t, "A again", noToken, relayAddr, "-p", local.port(), "-s", "a2", "--token", tokA),
		"tunnel: relay refused the connection: 401 Unauthorized: token not accepted by this relay")
	expectServing(t, exposeWith(t, "agent B", noToken, relayAddr, "-p", local.port(), "-s", "b", "--token", tokB), relayAddr)
	expectServing(t, exposeWith(t, "flag agent", noToken, relayAddr, "-p", local.port(), "-s", "f", "--token", tokFlag), relayAddr)

	// A broken file changes nothing, and says why in one line.
	writeFile(t, path, "tokens:\n  - name: c\n    tokn: "+tokC+"\n")
	relayProc.stderr.find(t, "the reload error", func(s string) bool {
		return strings.Contains(s, "config not reloaded; the running tokens stay") && strings.Contains(s, `relay.yaml:3: token \"c\": unknown key \"tokn\"`)
	})
	expectServing(t, exposeWith(t, "B still", noToken, relayAddr, "-p", local.port(), "-s", "b2", "--token", tokB), relayAddr)

	// The poll notices a rewrite without a signal; limits wait for a restart.
	m = mark()
	writeFile(t, path, "tokens:\n  - name: c\n    token: "+tokC+"\nlimits:\n  max_tunnels_per_token: 2\n")
	reloaded("reload after the file changed", m)
	relayProc.stderr.find(t, "the limits line", func(s string) bool {
		return strings.Contains(s, "limits in the config file changed; they apply when the relay restarts")
	})
	expectServing(t, exposeWith(t, "agent C", noToken, relayAddr, "-p", local.port(), "-s", "c", "--token", tokC), relayAddr)
	expectRefused(t, exposeWith(t, "B again", noToken, relayAddr, "-p", local.port(), "-s", "b3", "--token", tokB),
		"tunnel: relay refused the connection: 401 Unauthorized: token not accepted by this relay")

	for _, secret := range []string{tokA, tokB, tokC, tokFlag} {
		if relayProc.stderr.contains(secret) {
			t.Errorf("the relay printed a token")
		}
	}
}

// writeFile writes a private config file.
func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestExposeVisitorRules checks --basic-auth, --allow-ip and --deny-ip
// through the binary: the relay answers 401 without the credentials, 200
// with them, and 403 to every loopback visitor of a tunnel that denies
// 127.0.0.0/8. Bad values are usage errors.
func TestExposeVisitorRules(t *testing.T) {
	local := startLocalServer(t)
	_, relayAddr := startRelay(t)
	client := viaRelay(t, relayAddr)

	private := exposeWith(t, "private", noToken, relayAddr, "-p", local.port(), "-s", "private",
		"--basic-auth", "ann:correct-horse", "--basic-auth", "bob:battery", "--allow-ip", "127.0.0.0/8")
	url := private.stdout.first(t, 1)[0] + "/"
	for _, tt := range []struct {
		user, pass string
		want       int
	}{
		{"", "", http.StatusUnauthorized},
		{"ann", "wrong", http.StatusUnauthorized},
		{"ann", "correct-horse", http.StatusOK},
		{"bob", "battery", http.StatusOK},
	} {
		if got := getAs(t, client, url, tt.user, tt.pass); got != tt.want {
			t.Errorf("GET as %q/%q: %d, want %d", tt.user, tt.pass, got, tt.want)
		}
	}

	denied := exposeWith(t, "denied", noToken, relayAddr, "-p", local.port(), "-s", "denied", "--deny-ip", "127.0.0.0/8")
	if status, _ := get(t, client, denied.stdout.first(t, 1)[0]+"/"); status != http.StatusForbidden {
		t.Errorf("GET from loopback with --deny-ip 127.0.0.0/8: %d, want 403", status)
	}

	bad := exposeWith(t, "bad", noToken, relayAddr, "-p", local.port(), "--basic-auth", "nocolon")
	if code := bad.exitCode(t); code != 2 {
		t.Fatalf("expose --basic-auth nocolon exited %d, want 2", code)
	}
	bad.stderr.find(t, "the usage error", func(s string) bool { return strings.HasPrefix(s, "tunnel: --basic-auth wants user:password") })
}

// getAs fetches url with Basic credentials (none when user is empty) and
// returns the status.
func getAs(t *testing.T, client *http.Client, url, user, pass string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// TestRelayRefusesOneTokenWithTwoRules checks that a token given twice
// with different rules, here in TUNNEL_TOKEN and, restricted, in the
// config file, stops the relay: only one of the two could ever match.
func TestRelayRefusesOneTokenWithTwoRules(t *testing.T) {
	const secret = "shared-token-0123456789"
	sum := sha256.Sum256([]byte(secret))
	cfg := filepath.Join(t.TempDir(), "relay.yaml")
	writeFile(t, cfg, "tokens:\n  - name: alice\n    sha256: "+hex.EncodeToString(sum[:])+"\n    names: [\"alice-*\"]\n")
	p := startTunnel(t, "relay", []string{"TUNNEL_TOKEN=" + secret}, "relay", "--domain", "localhost", "--addr", "127.0.0.1:0", "--config", cfg)
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("relay exited %d, want 1", code)
	}
	p.stderr.find(t, "the error", func(s string) bool {
		return strings.HasPrefix(s, `tunnel: relay: tokens "env-1" and "alice" are the same token with different names or limits`)
	})
	if p.stderr.contains("relay listening") || p.stderr.contains(secret) {
		t.Error("the relay started, or printed the token")
	}
}
