package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/relay"
)

// TestAdminFlags checks how `tunnel admin` reads its arguments, flags and
// environment, and that mistakes are usage errors before anything runs.
func TestAdminFlags(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    AdminOptions
		wantErr string
	}{
		{name: "defaults", args: []string{"ls"}, want: AdminOptions{URL: "http://127.0.0.1:9090", Action: "ls"}},
		{name: "json", args: []string{"ls", "--json"}, want: AdminOptions{URL: "http://127.0.0.1:9090", Action: "ls", JSON: true}},
		{
			name: "environment",
			env:  map[string]string{"TUNNEL_ADMIN_URL": "http://relay.internal:9090/", "TUNNEL_ADMIN_TOKEN": "env-admin-token"},
			args: []string{"kick", "demo"},
			want: AdminOptions{URL: "http://relay.internal:9090", Token: "env-admin-token", Action: "kick", Name: "demo"},
		},
		{
			name: "flags win over the environment",
			env:  map[string]string{"TUNNEL_ADMIN_URL": "http://relay.internal:9090", "TUNNEL_ADMIN_TOKEN": "env-admin-token"},
			args: []string{"revoke", "demo", "--admin-url", "https://127.0.0.1:9443", "--admin-token", "flag-admin-token"},
			want: AdminOptions{URL: "https://127.0.0.1:9443", Token: "flag-admin-token", Action: "revoke", Name: "demo"},
		},
		{name: "kick without a name", args: []string{"kick"}, wantErr: "admin kick takes one tunnel name, got 0 arguments"},
		{name: "revoke with two names", args: []string{"revoke", "a", "b"}, wantErr: "takes one tunnel name, got 2 arguments"},
		{name: "ls with an argument", args: []string{"ls", "demo"}, wantErr: "admin ls takes no arguments"},
		{name: "not an HTTP URL", args: []string{"ls", "--admin-url", "127.0.0.1:9090"}, wantErr: "must be an http:// or https:// URL"},
		{name: "unknown subcommand", args: []string{"lst"}, wantErr: `unknown command "lst"; did you mean "ls"?`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"TUNNEL_ADMIN_URL", "TUNNEL_ADMIN_TOKEN"} {
				unsetEnv(t, k)
				if v, ok := tt.env[k]; ok {
					t.Setenv(k, v)
				}
			}
			var got *AdminOptions
			err := execute(NewCmdAdmin(testFactory(), func(o *AdminOptions) error { got = o; return nil }), tt.args...)
			if tt.wantErr != "" {
				checkUsageError(t, err, tt.wantErr)
				if got != nil {
					t.Fatal("runF ran despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.IO = IOStreams{}
			if *got != tt.want {
				t.Errorf("options = %+v, want %+v", *got, tt.want)
			}
		})
	}
}

// TestRelayAdminFlags checks the relay's admin and log flags: defaults,
// environment, the usage errors, and that --log-format json makes the
// relay's logger write JSON.
func TestRelayAdminFlags(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		args      []string
		addr, tok string
		wantErr   string
	}{
		{name: "defaults", addr: "127.0.0.1:9090"},
		{name: "flags", args: []string{"--admin-addr", "127.0.0.1:9999", "--admin-token", "admin-token-1"}, addr: "127.0.0.1:9999", tok: "admin-token-1"},
		{name: "environment", env: map[string]string{"TUNNEL_ADMIN_ADDR": "", "TUNNEL_ADMIN_TOKEN": "env-admin-token"}, tok: "env-admin-token"},
		{name: "flags win", env: map[string]string{"TUNNEL_ADMIN_ADDR": ":9090", "TUNNEL_ADMIN_TOKEN": "env-admin-token"},
			args: []string{"--admin-addr", "127.0.0.1:1", "--admin-token", "flag-admin-token"}, addr: "127.0.0.1:1", tok: "flag-admin-token"},
		{name: "empty token flag", args: []string{"--admin-token", " "}, wantErr: "--admin-token is empty"},
		{name: "empty token variable", env: map[string]string{"TUNNEL_ADMIN_TOKEN": ""}, wantErr: "TUNNEL_ADMIN_TOKEN is set but empty"},
		{name: "short token", args: []string{"--admin-token", "short"}, wantErr: "shorter than 8 characters"},
		{name: "comment in TUNNEL_ADMIN_TOKEN", env: map[string]string{"TUNNEL_ADMIN_TOKEN": "env-admin-token\t# for ops"}, wantErr: `the admin token holds " #…"`},
		{name: "log format", args: []string{"--log-format", "yaml"}, wantErr: `--log-format must be text or json, got "yaml"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"TUNNEL_DOMAIN", "TUNNEL_TOKEN", "TUNNEL_ADMIN_ADDR", "TUNNEL_ADMIN_TOKEN"} {
				unsetEnv(t, k)
				if v, ok := tt.env[k]; ok {
					t.Setenv(k, v)
				}
			}
			var got *RelayOptions
			err := execute(NewCmdRelay(testFactory(), func(o *RelayOptions) error { got = o; return nil }), append([]string{"--domain", "localhost"}, tt.args...)...)
			if tt.wantErr != "" {
				checkUsageError(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.AdminAddr != tt.addr || got.AdminToken != tt.tok {
				t.Errorf("admin %q token %q, want %q %q", got.AdminAddr, got.AdminToken, tt.addr, tt.tok)
			}
			if cfg := relayConfig(got); cfg.AdminAddr != tt.addr || cfg.AdminToken != tt.tok {
				t.Errorf("config: admin %q token %q", cfg.AdminAddr, cfg.AdminToken)
			}
		})
	}

	t.Run("json logs", func(t *testing.T) {
		unsetEnv(t, "TUNNEL_TOKEN")
		var buf bytes.Buffer
		f := newFactory(IOStreams{Out: &buf, ErrOut: &buf})
		var got *RelayOptions
		if err := execute(NewCmdRelay(f, func(o *RelayOptions) error { got = o; return nil }), "--domain", "localhost", "--log-format", "json"); err != nil {
			t.Fatal(err)
		}
		got.Logger.Info("hello", "n", 1)
		var line struct {
			Msg string `json:"msg"`
			N   int    `json:"n"`
		}
		if err := json.Unmarshal(buf.Bytes(), &line); err != nil || line.Msg != "hello" || line.N != 1 {
			t.Errorf("log line %q: %v", buf.String(), err)
		}
	})
}

// TestPrintTunnels checks the table of `tunnel admin ls`.
func TestPrintTunnels(t *testing.T) {
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	var buf bytes.Buffer
	printTunnels(&buf, []relay.TunnelInfo{
		{Name: "demo", URL: "https://demo.example.com", State: "live", Agent: "203.0.113.7:50000", Token: "alice",
			Since: now.Add(-5*time.Minute - 3*time.Second), Streams: 2, Requests: 40, BytesIn: 1536, BytesOut: 3 << 20},
		{Name: "old", URL: "https://old.example.com", State: "held", Agent: "203.0.113.8:50001",
			Since: now.Add(-50 * time.Hour), HeldUntil: now.Add(42 * time.Second), Requests: 1, BytesOut: 12},
	}, now)
	want := `NAME  STATE            URL                       AGENT              TOKEN  SINCE     STREAMS  REQUESTS  IN      OUT
demo  live             https://demo.example.com  203.0.113.7:50000  alice  5m3s ago  2        40        1.5KiB  3.0MiB
old   held (42s left)  https://old.example.com   203.0.113.8:50001  -      2d2h ago  0        1         0B      12B
`
	if buf.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", buf.String(), want)
	}
	buf.Reset()
	printTunnels(&buf, nil, now)
	if buf.String() != "no tunnels\n" {
		t.Errorf("empty list: %q", buf.String())
	}
}

// adminURLFrom waits for the relay's admin line and returns its URL.
func adminURLFrom(t *testing.T, p *proc) string {
	t.Helper()
	line := p.stderr.find(t, "admin line", func(s string) bool { return strings.HasPrefix(s, "relay admin on http://") })
	return strings.Fields(line)[3]
}

// TestAdminCommand runs `tunnel admin` against a relay process: ls as a
// table and as JSON, the one-line errors, kick (expose reconnects by
// itself) and revoke (expose stops), and the access log file.
func TestAdminCommand(t *testing.T) {
	const token = "admin-token-for-tests"
	accessLog := filepath.Join(t.TempDir(), "access.log")
	local := startLocalServer(t)
	relayProc, relayAddr := startRelay(t, "--admin-token", token, "--access-log", accessLog)
	adminURL := adminURLFrom(t, relayProc)
	expose := startExpose(t, "expose", relayAddr, "-p", local.port(), "-s", "demo")
	url := expose.stdout.first(t, 1)[0]
	if status, _ := get(t, viaRelay(t, relayAddr), url+"/?token=not-for-logs"); status != http.StatusOK {
		t.Fatalf("GET: %d", status)
	}

	admin := func(env []string, args ...string) *proc {
		t.Helper()
		return startTunnel(t, "admin", append([]string{"TUNNEL_ADMIN_URL=" + adminURL}, env...), append([]string{"admin"}, args...)...)
	}
	withToken := []string{"TUNNEL_ADMIN_TOKEN=" + token}
	succeed := func(env []string, args ...string) *proc {
		t.Helper()
		p := admin(env, args...)
		if code := p.exitCode(t); code != 0 {
			t.Fatalf("tunnel admin %q exited %d", args, code)
		}
		return p
	}
	fail := func(env []string, wantLine string, args ...string) {
		t.Helper()
		p := admin(env, args...)
		if code := p.exitCode(t); code != 1 {
			t.Fatalf("tunnel admin %q exited %d, want 1", args, code)
		}
		if got := p.stderr.first(t, 1)[0]; !strings.HasPrefix(got, wantLine) {
			t.Errorf("tunnel admin %q said %q, want %q", args, got, wantLine)
		}
		p.stderr.wait(t, "the end of stderr", func(all []string) bool { return len(all) == 1 })
	}

	ls := succeed(withToken, "ls")
	lines := ls.stdout.first(t, 2)
	if !strings.HasPrefix(lines[0], "NAME  ") {
		t.Errorf("header %q", lines[0])
	}
	if f := strings.Fields(lines[1]); len(f) < 4 || f[0] != "demo" || f[1] != "live" || f[2] != url {
		t.Errorf("row %q, want demo live %s …", lines[1], url)
	}

	var list []relay.TunnelInfo
	lsJSON := succeed(withToken, "ls", "--json") // exited: its output is complete
	if err := json.Unmarshal([]byte(strings.Join(lsJSON.stdout.all, "\n")), &list); err != nil || len(list) != 1 || list[0].Name != "demo" || list[0].URL != url {
		t.Errorf("ls --json: %+v %v", list, err)
	}

	fail(nil, "tunnel: admin API: 401 Unauthorized: no admin token given: pass the relay's admin token with --admin-token or TUNNEL_ADMIN_TOKEN", "ls")
	fail([]string{"TUNNEL_ADMIN_TOKEN=not-the-admin-token"}, "tunnel: admin API: 401 Unauthorized: the relay did not accept this admin token", "ls")
	fail(withToken, `tunnel: admin API: 404 Not Found: no tunnel named "nosuch"`, "kick", "nosuch")
	fail([]string{"TUNNEL_ADMIN_URL=http://127.0.0.1:1"}, "tunnel: admin API at http://127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused", "ls")

	if got := succeed(withToken, "kick", "demo").stdout.first(t, 1)[0]; !strings.HasPrefix(got, "kicked demo: ") {
		t.Errorf("kick said %q", got)
	}
	relayProc.stderr.find(t, "the reconnect", func(s string) bool {
		return strings.Contains(s, `msg="tunnel online"`) && strings.Contains(s, "reconnect=true")
	})

	if got := succeed(withToken, "revoke", "demo").stdout.first(t, 1)[0]; !strings.HasPrefix(got, "revoked demo: ") {
		t.Errorf("revoke said %q", got)
	}
	if code := expose.exitCode(t); code != 1 {
		t.Errorf("expose exited %d after revoke, want 1", code)
	}
	expose.stderr.find(t, "the revoke reason", func(s string) bool {
		return s == `tunnel: name "demo" was revoked by the relay's operator`
	})

	relayProc.signal(t, syscall.SIGTERM)
	if code := relayProc.exitCode(t); code != 0 {
		t.Fatalf("relay exited %d", code)
	}
	b, err := os.ReadFile(accessLog)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); !strings.Contains(s, `msg=access host=demo.localhost method=GET path=/ `) || !strings.Contains(s, "status=200") || strings.Contains(s, "not-for-logs") {
		t.Errorf("access log:\n%s", s)
	}
}

// TestRelayJSONLogs checks --log-format json: every line the relay writes
// to stderr is a JSON object, including the access log and the refusals.
func TestRelayJSONLogs(t *testing.T) {
	local := startLocalServer(t)
	relayProc := startTunnel(t, "relay", nil, "relay", "--domain", "localhost", "--addr", "127.0.0.1:0", "--log-format", "json", "--access-log", "stderr")
	parse := func(s string) map[string]any {
		var m map[string]any
		if json.Unmarshal([]byte(s), &m) != nil {
			return nil
		}
		return m
	}
	withMsg := func(msg string, fields map[string]any) func(string) bool {
		return func(s string) bool {
			m := parse(s)
			if m == nil || m["msg"] != msg {
				return false
			}
			for k, v := range fields {
				if fmt.Sprint(m[k]) != fmt.Sprint(v) {
					return false
				}
			}
			return true
		}
	}
	relayAddr := parse(relayProc.stderr.find(t, "the listening line", withMsg("relay listening", nil)))["addr"].(string)
	relayProc.stderr.find(t, "the admin line", withMsg("relay admin listening", nil))

	expose := startExpose(t, "expose", relayAddr, "-p", local.port(), "-s", "demo")
	url := expose.stdout.first(t, 1)[0]
	client := viaRelay(t, relayAddr)
	if status, _ := get(t, client, url+"/"); status != http.StatusOK {
		t.Fatalf("GET: %d", status)
	}
	if status, _ := get(t, client, "http://nosuch.localhost/x"); status != http.StatusNotFound {
		t.Fatalf("GET unknown tunnel: %d", status)
	}
	relayProc.stderr.find(t, "the claim line", withMsg("tunnel online", map[string]any{"names": "demo"}))
	access := parse(relayProc.stderr.find(t, "the access line", withMsg("access", map[string]any{"host": "demo.localhost", "path": "/"})))
	for _, k := range []string{"time", "method", "status", "duration", "bytes_in", "bytes_out", "remote"} {
		if _, ok := access[k]; !ok {
			t.Errorf("access line without %q: %v", k, access)
		}
	}
	relayProc.stderr.find(t, "the refusal", withMsg("request refused", map[string]any{"reason": "no_tunnel", "status": 404, "path": "/x"}))

	relayProc.signal(t, syscall.SIGTERM)
	if code := relayProc.exitCode(t); code != 0 {
		t.Fatalf("relay exited %d", code)
	}
	for _, s := range relayProc.stderr.all {
		if parse(s) == nil {
			t.Errorf("not a JSON line: %q", s)
		}
	}
}

// TestAdminErrorsSayWhatToDo checks that the relay's refusals, worded for
// curl and for the relay's operator, become advice for this command: a
// relay without an admin token must not tell someone who passed
// --admin-token to set --admin-token.
func TestAdminErrorsSayWhatToDo(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.Header.Get("Authorization") {
		case "Bearer off-relay-token":
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"error": "set --admin-token to use the admin API"}`))
		default:
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error": "admin token missing or wrong: send Authorization: Bearer <admin token>"}`))
		}
	}))
	defer srv.Close()
	for _, tt := range []struct{ token, want string }{
		{"", "admin API: 401 Unauthorized: no admin token given: pass the relay's admin token with --admin-token or TUNNEL_ADMIN_TOKEN"},
		{"wrong-admin-token", "admin API: 401 Unauthorized: the relay did not accept this admin token: pass the one it was started with (its --admin-token or TUNNEL_ADMIN_TOKEN)"},
		{"off-relay-token", "admin API: 403 Forbidden: the relay's admin API is off: restart the relay with --admin-token or TUNNEL_ADMIN_TOKEN set, then pass the same token here"},
	} {
		err := adminRun(context.Background(), &AdminOptions{IO: IOStreams{Out: io.Discard, ErrOut: io.Discard}, URL: srv.URL, Token: tt.token, Action: "ls"})
		if err == nil || err.Error() != tt.want {
			t.Errorf("token %q: error %v, want %q", tt.token, err, tt.want)
		}
	}
}
