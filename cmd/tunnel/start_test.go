package main

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeTunnelsFile writes a configuration for tunnel start and returns its
// path.
func writeTunnelsFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tunnels.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStartFlags checks how start reads its file and the environment:
// TUNNEL_RELAY and TUNNEL_TOKEN win over the file's relay and token, a
// file without a relay gets expose's default, and mistakes are refused
// before anything runs.
func TestStartFlags(t *testing.T) {
	withAll := writeTunnelsFile(t, "relay: https://file.example.com\ntoken: file-token\ntunnels:\n  - name: demo\n    port: 8080\n  - port: 3000\n    host_header: rewrite\n")
	bare := writeTunnelsFile(t, "tunnels:\n  - port: 8080\n")
	bad := writeTunnelsFile(t, "tunnels:\n  - name: demo\n    prot: 8080\n")
	tests := []struct {
		name         string
		env          map[string]string
		args         []string
		relay, token string
		tunnels      int
		json, quiet  bool
		wantErr      string
		wantUsage    bool // a usage error (exit 2), not a failure (exit 1)
	}{
		{name: "the file's", args: []string{"--config", withAll}, relay: "https://file.example.com", token: "file-token", tunnels: 2},
		{name: "environment wins", env: map[string]string{"TUNNEL_RELAY": "http://env.example.com", "TUNNEL_TOKEN": " env-token\n"},
			args: []string{"--config", withAll}, relay: "http://env.example.com", token: "env-token", tunnels: 2},
		{name: "environment fills", env: map[string]string{"TUNNEL_TOKEN": "env-token"}, args: []string{"--config", bare, "--json"},
			relay: defaultRelay, token: "env-token", tunnels: 1, json: true},
		// A variable that expanded to nothing but spaces would silently
		// use the file's token; expose refuses it too.
		{name: "blank TUNNEL_TOKEN", env: map[string]string{"TUNNEL_TOKEN": "  "}, args: []string{"--config", withAll},
			wantErr: "TUNNEL_TOKEN is only spaces: set it to the relay's token, or unset it to use the file's", wantUsage: true},
		{name: "default relay, quiet", args: []string{"--config", bare, "-q"}, relay: defaultRelay, tunnels: 1, quiet: true},
		{name: "no config", args: nil, wantErr: "no configuration: pass --config FILE", wantUsage: true},
		{name: "json and quiet", args: []string{"--config", bare, "--json", "--quiet"}, wantErr: "--json and --quiet do not go together", wantUsage: true},
		{name: "stray argument", args: []string{"--config", bare, "tunnels.yaml"}, wantErr: "takes no arguments", wantUsage: true},
		{name: "unknown key", args: []string{"--config", bad}, wantErr: bad + `:3: tunnel "demo": unknown key "prot"`},
		{name: "missing file", args: []string{"--config", bad + ".missing"}, wantErr: "no such file or directory"},
		// The file's relay is right; the variable that overrides it is not,
		// and the error must say which it is.
		{name: "bad TUNNEL_RELAY", env: map[string]string{"TUNNEL_RELAY": "file.example.com"}, args: []string{"--config", withAll},
			wantErr: `TUNNEL_RELAY "file.example.com" is not a relay URL like https://example.com or http://localhost:8000 (it wins over relay: in ` + withAll + `): correct it or unset it`, wantUsage: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"TUNNEL_RELAY", "TUNNEL_TOKEN"} {
				if v, ok := tt.env[k]; ok {
					t.Setenv(k, v)
				} else {
					unsetEnv(t, k)
				}
			}
			var got *StartOptions
			err := execute(NewCmdStart(testFactory(), func(o *StartOptions) error { got = o; return nil }), tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				var uerr *usageError
				if isUsage := errors.As(err, &uerr); isUsage != tt.wantUsage {
					t.Errorf("usage error: %v, want %v", isUsage, tt.wantUsage)
				}
				if got != nil {
					t.Fatal("runF ran despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := got.Config
			if c.Relay != tt.relay || c.Token != tt.token || len(c.Tunnels) != tt.tunnels || got.JSON != tt.json || got.Quiet != tt.quiet {
				t.Errorf("relay %q, token %q, %d tunnels, json %v, quiet %v; want %q, %q, %d, %v, %v",
					c.Relay, c.Token, len(c.Tunnels), got.JSON, got.Quiet, tt.relay, tt.token, tt.tunnels, tt.json, tt.quiet)
			}
		})
	}
}

// TestStartBadConfig runs tunnel start with broken files, as a person
// would: it exits 1 with one line naming the file, the line and the
// mistake, and says nothing else.
func TestStartBadConfig(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"unknown key", "relay: http://127.0.0.1:1\ntunnels:\n  - name: demo\n    port: 8080\n    local_htps: true\n",
			`:5: tunnel "demo": unknown key "local_htps"; known keys are name, port, local, local_https, local_ca, local_insecure, host_header, basic_auth, allow_ip, deny_ip`},
		{"bad host header", "tunnels:\n  - port: 8080\n    host_header: \"a b\"\n",
			`:3: tunnel 1: host header "a b" is not a host or host:port like localhost:8080: character ' ' is not allowed (or rewrite, for the local address)`},
		{"insecure without https", "tunnels:\n  - port: 8443\n    local_insecure: true\n",
			`:3: tunnel 1: local_insecure applies only to an HTTPS local server; add local_https: true`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeTunnelsFile(t, tc.text)
			p := startTunnel(t, "start", []string{"TUNNEL_RELAY=", "TUNNEL_TOKEN="}, "start", "--config", path)
			if code := p.exitCode(t); code != exitError {
				t.Fatalf("exit %d, want %d", code, exitError)
			}
			var got []string
			p.stderr.wait(t, "end of stderr", func(all []string) bool { got = all; return p.stderr.eof })
			if want := "tunnel: " + path + tc.want; len(got) != 1 || got[0] != want {
				t.Errorf("stderr:\n%s\nwant the one line\n%s", strings.Join(got, "\n"), want)
			}
			if p.stdout.contains("") {
				t.Errorf("stdout: %q, want nothing", p.stdout.first(t, 1))
			}
		})
	}
	// Without --config: a usage error.
	p := startTunnel(t, "start", nil, "start")
	if code := p.exitCode(t); code != exitUsage {
		t.Fatalf("tunnel start without --config: exit %d, want %d", code, exitUsage)
	}
	p.stderr.find(t, "the usage error", func(s string) bool {
		return s == "tunnel: no configuration: pass --config FILE, a YAML file listing the tunnels (see --help)"
	})
}

// TestStartTwoTunnels runs tunnel start with two tunnels against a relay
// process: it prints both URLs, a status block with where each one's
// traffic goes, and each public name reaches its own local server.
func TestStartTwoTunnels(t *testing.T) {
	a, b := startLocalServer(t), startLocalServer(t)
	_, relayAddr := startRelay(t)
	_, rp, _ := strings.Cut(relayAddr, ":")
	path := writeTunnelsFile(t, "relay: http://"+relayAddr+"\ntunnels:\n  - name: alpha\n    port: "+a.port()+
		"\n  - name: beta\n    local: 127.0.0.1:"+b.port()+"\n    host_header: beta.internal\n")
	p := startTunnel(t, "start", []string{"TUNNEL_RELAY=", "TUNNEL_TOKEN="}, "start", "--config", path)
	got := p.stdout.first(t, 4)
	alpha, beta := "http://alpha.localhost:"+rp, "http://beta.localhost:"+rp
	if want := []string{alpha, "ws://alpha.localhost:" + rp, beta, "ws://beta.localhost:" + rp}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("start printed %q, want %q", got, want)
	}
	p.stderr.find(t, "alpha's forwarding line", func(s string) bool { return s == "forwarding  "+alpha+" → localhost:"+a.port() })
	p.stderr.find(t, "beta's forwarding line", func(s string) bool { return s == "forwarding  "+beta+" → 127.0.0.1:"+b.port() })
	p.stderr.find(t, "the relay line", func(s string) bool { return strings.HasPrefix(s, "relay       http://"+relayAddr+" (round trip ") })

	client := viaRelay(t, relayAddr)
	for _, u := range []string{alpha, beta} {
		if status, body := get(t, client, u+"/"); status != http.StatusOK || body != "hello from local" {
			t.Errorf("GET %s: %d %q", u, status, body)
		}
	}
	if answer := wsEcho(t, client, "ws://alpha.localhost:"+rp+"/ws", "hi"); answer != "echo: hi" {
		t.Errorf("WebSocket through alpha: %q", answer)
	}
	p.signal(t, os.Interrupt)
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("start exited %d after SIGINT, want 0", code)
	}
}

// A name the relay refuses is reported with where the user sets it: -s for
// expose, the tunnel's name: key in the file for start.
func TestNameRefusalSaysWhereTheNameIsSet(t *testing.T) {
	local := startLocalServer(t)
	_, relayAddr := startRelay(t)
	expectServing(t, exposeWith(t, "holder", noToken, relayAddr, "-p", local.port(), "-s", "dup", "--no-inspect"), relayAddr)

	expectRefused(t, exposeWith(t, "expose", noToken, relayAddr, "-p", local.port(), "-s", "dup", "--no-inspect"),
		`tunnel: name "dup" is in use by another agent; choose another name (-s NAME)`)
	path := writeTunnelsFile(t, "relay: http://"+relayAddr+"\ntunnels:\n  - name: dup\n    port: "+local.port()+"\n")
	expectRefused(t, startTunnel(t, "start", noToken, "start", "--config", path),
		`tunnel: name "dup" is in use by another agent; choose another name (the tunnel's name: in `+path+`)`)
}
