package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/relay"
)

// These tests parse command lines through each command's runF seam: nothing
// listens or dials.

func testFactory() *Factory {
	return &Factory{
		IO:     IOStreams{Out: io.Discard, ErrOut: io.Discard},
		Logger: slog.New(slog.DiscardHandler),
	}
}

// execute runs cmd with args and returns its error.
func execute(cmd *cobra.Command, args ...string) error {
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	return cmd.Execute()
}

// TestExposeFlags checks how expose reads its flags and TUNNEL_RELAY: the
// defaults, the environment, the flag winning over it, and bad ports
// refused before anything runs.
func TestExposeFlags(t *testing.T) {
	tests := []struct {
		name    string
		env     string // TUNNEL_RELAY
		args    []string
		want    ExposeOptions // only the flag fields are compared
		wantErr string
	}{
		{
			name: "defaults",
			args: []string{"-p", "8080"},
			want: ExposeOptions{Port: 8080, LocalHost: "localhost", Relay: "http://localhost:8000"},
		},
		{
			name: "all flags",
			args: []string{"--port", "3000", "--subdomain", "demo", "--local-host", "127.0.0.1", "--relay", "https://example.com"},
			want: ExposeOptions{Port: 3000, Name: "demo", LocalHost: "127.0.0.1", Relay: "https://example.com"},
		},
		{
			name: "relay from TUNNEL_RELAY",
			env:  "https://env.example.com",
			args: []string{"-p", "8080", "-s", "demo"},
			want: ExposeOptions{Port: 8080, Name: "demo", LocalHost: "localhost", Relay: "https://env.example.com"},
		},
		{
			name: "--relay wins over TUNNEL_RELAY",
			env:  "https://env.example.com",
			args: []string{"-p", "8080", "--relay", "http://flag.example.com"},
			want: ExposeOptions{Port: 8080, LocalHost: "localhost", Relay: "http://flag.example.com"},
		},
		{name: "no port", args: []string{"-s", "demo"}, wantErr: "no local port: pass -p PORT"},
		{name: "bad TUNNEL_RELAY", env: "localhost:8000", args: []string{"-p", "8080"},
			wantErr: `TUNNEL_RELAY "localhost:8000" is not a relay URL like https://example.com or http://localhost:8000 (it is used when --relay is not given): correct it or unset it`},
		{name: "TUNNEL_RELAY with a path", env: "https://example.com/tunnel", args: []string{"-p", "8080"}, wantErr: `TUNNEL_RELAY "https://example.com/tunnel" is not a relay URL`},
		{name: "port 0", args: []string{"-p", "0"}, wantErr: "want a TCP port from 1 to 65535"},
		{name: "port too big", args: []string{"-p", "65536"}, wantErr: "want a TCP port from 1 to 65535"},
		{name: "negative port", args: []string{"-p", "-1"}, wantErr: "want a TCP port from 1 to 65535"},
		{name: "port not a number", args: []string{"-p", "http"}, wantErr: "want a TCP port from 1 to 65535"},
		{name: "stray argument", args: []string{"-p", "80", "8080"}, wantErr: "takes no arguments"},
		{
			name: "IPv6 local host",
			args: []string{"-p", "8080", "--local-host", "::1"},
			want: ExposeOptions{Port: 8080, LocalHost: "::1", Relay: "http://localhost:8000"},
		},
		// The port is -p's: a host with one, a URL or nothing is refused
		// here, not found out as a 502 by the first visitor.
		{name: "local host with a port", args: []string{"-p", "8080", "--local-host", "localhost:8080"}, wantErr: `--local-host "localhost:8080" is not a host name or IP address`},
		{name: "local host as a URL", args: []string{"-p", "8080", "--local-host", "http://localhost"}, wantErr: `--local-host "http://localhost" is not a host name`},
		{name: "empty local host", args: []string{"-p", "8080", "--local-host", ""}, wantErr: `--local-host "" is not a host name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TUNNEL_RELAY", tt.env)
			unsetEnv(t, "TUNNEL_TOKEN")
			var got *ExposeOptions
			err := execute(NewCmdExpose(testFactory(), func(o *ExposeOptions) error { got = o; return nil }), tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				if got != nil {
					t.Fatal("runF ran despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.IO, got.Logger = IOStreams{}, nil
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("options = %+v, want %+v", *got, tt.want)
			}
		})
	}
}

// TestRelayFlags checks how relay reads its flags and TUNNEL_DOMAIN, and
// that a missing domain or a useless drain timeout is refused.
func TestRelayFlags(t *testing.T) {
	tests := []struct {
		name    string
		env     string // TUNNEL_DOMAIN
		args    []string
		want    RelayOptions
		wantErr string
	}{
		{
			name: "defaults",
			args: []string{"--domain", "localhost"},
			want: RelayOptions{Domain: "localhost", Grace: 60 * time.Second, DrainTimeout: 30 * time.Second, HTTPAddr: ":80"},
		},
		{
			name: "interstitial",
			args: []string{"--domain", "localhost", "--interstitial", "--interstitial-days", "30"},
			want: RelayOptions{Domain: "localhost", Grace: 60 * time.Second, DrainTimeout: 30 * time.Second, HTTPAddr: ":80", Interstitial: true, InterstitialDays: 30},
		},
		{
			name:    "interstitial days out of range",
			args:    []string{"--domain", "localhost", "--interstitial", "--interstitial-days", "0"},
			wantErr: "--interstitial-days must be 1 to 400",
		},
		{
			name:    "interstitial days without the interstitial",
			args:    []string{"--domain", "localhost", "--interstitial-days", "30"},
			wantErr: "--interstitial-days has no effect without --interstitial",
		},
		{
			name: "all plain flags",
			args: []string{"--domain", "example.com", "--plain", "--addr", ":8080", "--grace", "5s", "--drain-timeout", "1m"},
			want: RelayOptions{Domain: "example.com", Plain: true, Addr: ":8080", Grace: 5 * time.Second, DrainTimeout: time.Minute, HTTPAddr: ":80"},
		},
		{
			name: "all TLS flags",
			args: []string{"--domain", "example.com", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--acme-accept-tos",
				"--acme-email", "ops@example.com", "--acme-directory", "https://ca.test/dir", "--state-dir", "/var/lib/tunnel",
				"--http-addr", ":8080", "--hsts"},
			want: RelayOptions{Domain: "example.com", Grace: 60 * time.Second, DrainTimeout: 30 * time.Second,
				TLSCert: "c.pem", TLSKey: "k.pem", ACME: true, ACMEEmail: "ops@example.com", ACMEDirectory: "https://ca.test/dir",
				StateDir: "/var/lib/tunnel", HTTPAddr: ":8080", HSTS: true},
		},
		{
			name: "domain from TUNNEL_DOMAIN",
			env:  "env.example.com",
			args: []string{"--plain"},
			want: RelayOptions{Domain: "env.example.com", Plain: true, Grace: 60 * time.Second, DrainTimeout: 30 * time.Second, HTTPAddr: ":80"},
		},
		{
			name: "--domain wins over TUNNEL_DOMAIN",
			env:  "env.example.com",
			args: []string{"--domain", "localhost"},
			want: RelayOptions{Domain: "localhost", Grace: 60 * time.Second, DrainTimeout: 30 * time.Second, HTTPAddr: ":80"},
		},
		{name: "no domain", wantErr: "no domain: pass --domain"},
		// The DNS record is *.example.com and the help speaks of *.DOMAIN:
		// a relay started with either would serve names nobody can reach.
		{name: "wildcard domain", args: []string{"--domain", "*.example.com", "--plain"}, wantErr: `domain "*.example.com" is the wildcard DNS record; give the apex under it: example.com`},
		{name: "wildcard domain from TUNNEL_DOMAIN", env: "*.example.com", args: []string{"--plain"}, wantErr: "give the apex under it: example.com"},
		{name: "IP address as domain", args: []string{"--domain", "203.0.113.10", "--plain"}, wantErr: `domain "203.0.113.10" is an IP address`},
		{name: "domain not a host name", args: []string{"--domain", "my_relay.example.com", "--plain"}, wantErr: `domain "my_relay.example.com" is not a host name`},
		{name: "domain with a scheme", args: []string{"--domain", "https://example.com", "--plain"}, wantErr: "must be a bare host name"},
		{name: "zero drain timeout", args: []string{"--domain", "localhost", "--drain-timeout", "0"}, wantErr: "--drain-timeout must be positive"},
		{name: "negative grace", args: []string{"--domain", "localhost", "--grace", "-5s"}, wantErr: "--grace must be 0 (names freed at once) or positive, got -5s"},
		{name: "bad duration", args: []string{"--domain", "localhost", "--grace", "soon"}, wantErr: `invalid argument "soon"`},
		{name: "state dir without ACME", args: []string{"--domain", "localhost", "--state-dir", "/s"}, wantErr: "--state-dir holds ACME keys and certificates, and nothing without --acme-accept-tos"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TUNNEL_DOMAIN", tt.env)
			for _, k := range []string{"TUNNEL_TOKEN", "TUNNEL_ADMIN_ADDR", "TUNNEL_ADMIN_TOKEN"} {
				unsetEnv(t, k)
			}
			var got *RelayOptions
			err := execute(NewCmdRelay(testFactory(), func(o *RelayOptions) error { got = o; return nil }), tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				if got != nil {
					t.Fatal("runF ran despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.IO, got.Logger = IOStreams{}, nil
			if tt.want.InterstitialDays == 0 {
				tt.want.InterstitialDays = 7 // the flag's default
			}
			tt.want.AdminAddr, tt.want.LogFormat = "127.0.0.1:9090", "text" // the flags' defaults
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("options = %+v, want %+v", *got, tt.want)
			}
		})
	}
}

// TestRelayConfig checks that --grace 0 reaches the relay as "no grace"
// rather than as relay.Config's "default".
func TestRelayConfig(t *testing.T) {
	for grace, want := range map[time.Duration]time.Duration{0: -1, -time.Second: -1, 5 * time.Second: 5 * time.Second} {
		if got := relayConfig(&RelayOptions{Domain: "localhost", Grace: grace, DrainTimeout: time.Second}).Grace; got != want {
			t.Errorf("--grace %v: Config.Grace = %v, want %v", grace, got, want)
		}
	}
}

// TestDemoFlags checks demo's defaults and flags.
func TestDemoFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want DemoOptions
	}{
		{nil, DemoOptions{Addr: "127.0.0.1:0", Name: "demo"}},
		{[]string{"--addr", "127.0.0.1:9000", "-s", "chat"}, DemoOptions{Addr: "127.0.0.1:9000", Name: "chat"}},
	} {
		var got *DemoOptions
		if err := execute(NewCmdDemo(testFactory(), func(o *DemoOptions) error { got = o; return nil }), tt.args...); err != nil {
			t.Fatal(err)
		}
		got.IO, got.Logger = IOStreams{}, nil
		if *got != tt.want {
			t.Errorf("%q: options = %+v, want %+v", tt.args, *got, tt.want)
		}
	}
}

// TestUsageErrors checks that command-line mistakes anywhere in the tree
// come back as usage errors (exit 2 in main) and failures of a run do not.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"nosuch"},
		{"--log-level", "loud", "version"},
		{"expose", "-p", "0"},
		{"expose", "--no-such-flag"},
		{"relay"},
		{"relay", "--domain", "localhost", "extra"},
		{"version", "extra"},
	} {
		err := execute(NewCmdRoot(IOStreams{Out: io.Discard, ErrOut: io.Discard}), args...)
		var uerr *usageError
		if !errors.As(err, &uerr) {
			t.Errorf("%q: error = %v (%T), want a usage error", args, err, err)
		}
	}
}

// TestLogLevel checks that --log-level sets the level of the logger that
// commands receive.
func TestLogLevel(t *testing.T) {
	var buf bytes.Buffer
	f := newFactory(IOStreams{Out: io.Discard, ErrOut: &buf})
	if err := execute(newCmdRoot(f), "--log-level", "warn", "version"); err != nil {
		t.Fatal(err)
	}
	f.Logger.Info("hidden")
	f.Logger.Warn("shown")
	if out := buf.String(); strings.Contains(out, "hidden") || !strings.Contains(out, "shown") {
		t.Errorf("log output with --log-level warn:\n%s", out)
	}
}

// TestAccessLogStderrIgnoresLogLevel: --access-log stderr writes a line per
// request whatever --log-level says, as --access-log FILE does; the other
// logs keep their level.
func TestAccessLogStderrIgnoresLogLevel(t *testing.T) {
	var buf bytes.Buffer
	f := newFactory(IOStreams{Out: io.Discard, ErrOut: &buf})
	if err := execute(newCmdRoot(f), "--log-level", "error", "version"); err != nil {
		t.Fatal(err)
	}
	access, closeAccess, err := accessLogger(&RelayOptions{Logger: f.Logger, AccessLog: "stderr"})
	if err != nil {
		t.Fatal(err)
	}
	defer closeAccess()
	access.Info("access", "path", "/x", "status", 200)
	f.Logger.Warn("hidden")
	if out := buf.String(); !strings.Contains(out, "msg=access path=/x status=200") || strings.Contains(out, "hidden") {
		t.Errorf("stderr with --log-level error --access-log stderr:\n%s", out)
	}
}

// TestRelayModes checks the rules that choose plain HTTP or TLS: each
// mistake is a one-line usage error that says what to do, and each accepted
// command line builds the relay.Config it should.
func TestRelayModes(t *testing.T) {
	base := relay.Config{Grace: 60 * time.Second, DrainTimeout: 30 * time.Second}
	with := func(f func(*relay.Config)) relay.Config {
		c := base
		f(&c)
		return c
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    relay.Config
		wantErr []string // substrings of the error
	}{
		// Plain HTTP.
		{
			name: "localhost is plain",
			args: []string{"--domain", "localhost"},
			want: with(func(c *relay.Config) { c.Domain = "localhost" }),
		},
		{
			name: "a .localhost domain is plain",
			args: []string{"--domain", "Tunnel.Localhost."},
			want: with(func(c *relay.Config) { c.Domain = "Tunnel.Localhost." }),
		},
		{
			name: "--plain for a real domain, no port-80 listener",
			args: []string{"--domain", "example.com", "--plain", "--addr", ":8080"},
			want: with(func(c *relay.Config) { c.Domain, c.Addr = "example.com", ":8080" }),
		},
		{
			name:    "a real domain needs a choice",
			args:    []string{"--domain", "Example.com"},
			wantErr: []string{"choose how to serve example.com: --acme-accept-tos [--acme-email you@example.com] for automatic certificates, --tls-cert/--tls-key for your own, or --plain for HTTP only"},
		},
		{
			name:    "a real domain from TUNNEL_DOMAIN needs a choice",
			env:     map[string]string{"TUNNEL_DOMAIN": "env.example.com"},
			wantErr: []string{"choose how to serve env.example.com:"},
		},
		{
			name:    "--plain with --tls-cert",
			args:    []string{"--domain", "example.com", "--plain", "--tls-cert", "c.pem", "--tls-key", "k.pem"},
			wantErr: []string{"--plain", "--tls-cert, --tls-key", "drop one or the other"},
		},
		{
			name:    "--plain with --acme-accept-tos",
			args:    []string{"--domain", "example.com", "--plain", "--acme-accept-tos"},
			wantErr: []string{"--plain", "--acme-accept-tos"},
		},
		{
			name:    "--plain with --acme-email",
			args:    []string{"--domain", "localhost", "--plain", "--acme-email", "ops@example.com"},
			wantErr: []string{"--plain", "--acme-email"},
		},
		{
			name:    "--plain with --acme-directory",
			args:    []string{"--domain", "example.com", "--plain", "--acme-directory", "https://ca.test/dir"},
			wantErr: []string{"--plain", "--acme-directory"},
		},
		{
			name:    "--hsts without TLS",
			args:    []string{"--domain", "localhost", "--hsts"},
			wantErr: []string{"--hsts needs HTTPS"},
		},
		{
			name:    "--http-addr without TLS",
			args:    []string{"--domain", "example.com", "--plain", "--http-addr", ":8080"},
			wantErr: []string{"--http-addr", "plain mode"},
		},
		{
			name: "--http-addr empty without TLS is fine",
			args: []string{"--domain", "example.com", "--plain", "--http-addr", ""},
			want: with(func(c *relay.Config) { c.Domain = "example.com" }),
		},

		// Certificate files.
		{
			name: "certificate files",
			args: []string{"--domain", "example.com", "--tls-cert", "c.pem", "--tls-key", "k.pem"},
			want: with(func(c *relay.Config) {
				c.Domain, c.TLSCertFile, c.TLSKeyFile, c.HTTPAddr = "example.com", "c.pem", "k.pem", ":80"
			}),
		},
		{
			name: "certificate files for localhost, no port-80 listener, HSTS",
			args: []string{"--domain", "localhost", "--addr", "127.0.0.1:8443", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--http-addr", "", "--hsts"},
			want: with(func(c *relay.Config) {
				c.Domain, c.Addr, c.TLSCertFile, c.TLSKeyFile, c.HSTS = "localhost", "127.0.0.1:8443", "c.pem", "k.pem", true
			}),
		},
		{
			name:    "--tls-cert alone",
			args:    []string{"--domain", "example.com", "--tls-cert", "c.pem"},
			wantErr: []string{"--tls-cert and --tls-key go together: pass both"},
		},
		{
			name:    "--tls-key alone",
			args:    []string{"--domain", "example.com", "--tls-key", "k.pem", "--acme-accept-tos"},
			wantErr: []string{"--tls-cert and --tls-key go together: pass both"},
		},

		// ACME.
		{
			name: "ACME",
			args: []string{"--domain", "example.com", "--acme-accept-tos", "--acme-email", "ops@example.com", "--state-dir", "/var/lib/tunnel"},
			want: with(func(c *relay.Config) {
				c.Domain, c.HTTPAddr, c.StateDir = "example.com", ":80", "/var/lib/tunnel"
				c.ACME = &relay.ACMEConfig{AcceptTOS: true, Email: "ops@example.com"}
			}),
		},
		{
			name: "ACME with another CA, its own ports",
			args: []string{"--domain", "example.com", "--acme-accept-tos", "--acme-directory", "https://ca.test/dir",
				"--state-dir", "/s", "--addr", "127.0.0.1:5001", "--http-addr", "127.0.0.1:5002"},
			want: with(func(c *relay.Config) {
				c.Domain, c.Addr, c.HTTPAddr, c.StateDir = "example.com", "127.0.0.1:5001", "127.0.0.1:5002", "/s"
				c.ACME = &relay.ACMEConfig{AcceptTOS: true, DirectoryURL: "https://ca.test/dir"}
			}),
		},
		{
			name: "files and ACME together",
			args: []string{"--domain", "example.com", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--acme-accept-tos", "--state-dir", "/s"},
			want: with(func(c *relay.Config) {
				c.Domain, c.TLSCertFile, c.TLSKeyFile, c.HTTPAddr, c.StateDir = "example.com", "c.pem", "k.pem", ":80", "/s"
				c.ACME = &relay.ACMEConfig{AcceptTOS: true}
			}),
		},
		{
			name: "state directory from systemd",
			args: []string{"--domain", "example.com", "--acme-accept-tos"},
			env:  map[string]string{"STATE_DIRECTORY": "/var/lib/tunnel:/var/lib/other", "XDG_STATE_HOME": "/xdg", "HOME": "/home/me"},
			want: with(func(c *relay.Config) {
				c.Domain, c.HTTPAddr, c.StateDir = "example.com", ":80", "/var/lib/tunnel"
				c.ACME = &relay.ACMEConfig{AcceptTOS: true}
			}),
		},
		{
			name: "state directory from XDG_STATE_HOME",
			args: []string{"--domain", "example.com", "--acme-accept-tos"},
			env:  map[string]string{"XDG_STATE_HOME": "/xdg", "HOME": "/home/me"},
			want: with(func(c *relay.Config) {
				c.Domain, c.HTTPAddr, c.StateDir = "example.com", ":80", "/xdg/tunnel"
				c.ACME = &relay.ACMEConfig{AcceptTOS: true}
			}),
		},
		{
			name: "state directory in the home directory",
			args: []string{"--domain", "example.com", "--acme-accept-tos"},
			env:  map[string]string{"XDG_STATE_HOME": "relative/is/ignored", "HOME": "/home/me"},
			want: with(func(c *relay.Config) {
				c.Domain, c.HTTPAddr, c.StateDir = "example.com", ":80", "/home/me/.local/state/tunnel"
				c.ACME = &relay.ACMEConfig{AcceptTOS: true}
			}),
		},
		{
			name: "--state-dir wins over the environment",
			args: []string{"--domain", "example.com", "--acme-accept-tos", "--state-dir", "/s"},
			env:  map[string]string{"STATE_DIRECTORY": "/var/lib/tunnel"},
			want: with(func(c *relay.Config) {
				c.Domain, c.HTTPAddr, c.StateDir = "example.com", ":80", "/s"
				c.ACME = &relay.ACMEConfig{AcceptTOS: true}
			}),
		},
		{
			name:    "no state directory anywhere",
			args:    []string{"--domain", "example.com", "--acme-accept-tos"},
			env:     map[string]string{"HOME": ""},
			wantErr: []string{"pass --state-dir"},
		},
		{
			name:    "--acme-email without --acme-accept-tos",
			args:    []string{"--domain", "example.com", "--acme-email", "ops@example.com"},
			wantErr: []string{"--acme-email needs --acme-accept-tos", "terms of service", "add --acme-accept-tos"},
		},
		{
			name:    "--acme-directory without --acme-accept-tos",
			args:    []string{"--domain", "example.com", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--acme-directory", "https://ca.test/dir"},
			wantErr: []string{"--acme-directory needs --acme-accept-tos"},
		},
		{
			name:    "--acme-accept-tos=false with --acme-email",
			args:    []string{"--domain", "example.com", "--acme-accept-tos=false", "--acme-email", "ops@example.com"},
			wantErr: []string{"--acme-email needs --acme-accept-tos"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"TUNNEL_DOMAIN", "STATE_DIRECTORY", "XDG_STATE_HOME"} {
				t.Setenv(k, tt.env[k])
			}
			if h, ok := tt.env["HOME"]; ok {
				t.Setenv("HOME", h)
			}
			unsetEnv(t, "TUNNEL_TOKEN")
			var got *RelayOptions
			err := execute(NewCmdRelay(testFactory(), func(o *RelayOptions) error { got = o; return nil }), tt.args...)
			if tt.wantErr != nil {
				checkUsageError(t, err, tt.wantErr...)
				if got != nil {
					t.Fatal("runF ran despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cfg := relayConfig(got)
			cfg.Logger = nil
			cfg.AdminAddr = "" // TestRelayAdminFlags checks the admin settings
			if (cfg.ACME == nil) != (tt.want.ACME == nil) || cfg.ACME != nil && *cfg.ACME != *tt.want.ACME {
				t.Errorf("ACME = %+v, want %+v", cfg.ACME, tt.want.ACME)
			}
			cfg.ACME, tt.want.ACME = nil, nil
			if !reflect.DeepEqual(cfg, tt.want) {
				t.Errorf("config = %+v\nwant     %+v", cfg, tt.want)
			}
		})
	}
}

// checkUsageError checks that err is a one-line usage error (exit 2)
// containing each of subs.
func checkUsageError(t *testing.T, err error, subs ...string) {
	t.Helper()
	var uerr *usageError
	if !errors.As(err, &uerr) {
		t.Fatalf("error = %v (%T), want a usage error", err, err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error spans lines: %q", msg)
	}
	for _, sub := range subs {
		if !strings.Contains(msg, sub) {
			t.Errorf("error %q does not contain %q", msg, sub)
		}
	}
}

// TestExampleURL checks the URL in the relay's listening line.
func TestExampleURL(t *testing.T) {
	for _, tt := range []struct {
		domain, addr string
		tls          bool
		want         string
	}{
		{"localhost", "127.0.0.1:8000", false, "http://<name>.localhost:8000"},
		{"Example.com.", "[::]:80", false, "http://<name>.example.com"},
		{"example.com", "[::]:443", true, "https://<name>.example.com"},
		{"example.com", "[::]:80", true, "https://<name>.example.com:80"},
		{"localhost", "127.0.0.1:8443", true, "https://<name>.localhost:8443"},
	} {
		addr, err := net.ResolveTCPAddr("tcp", tt.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := exampleURL(tt.domain, addr, tt.tls); got != tt.want {
			t.Errorf("exampleURL(%q, %s, %v) = %q, want %q", tt.domain, tt.addr, tt.tls, got, tt.want)
		}
	}
}

// TestCAFile checks --ca-file of expose and demo: the CA in the file is
// trusted along with the system's roots, and a file that cannot be read or
// holds no certificate is a usage error.
func TestCAFile(t *testing.T) {
	certs := newTestCerts(t, "localhost", "*.localhost")
	dir := t.TempDir()
	keyOnly := filepath.Join(dir, "key-only.pem")
	if err := os.WriteFile(keyOnly, mustRead(t, certs.KeyFile), 0o600); err != nil {
		t.Fatal(err)
	}
	garbled := filepath.Join(dir, "garbled.pem")
	if err := os.WriteFile(garbled, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	commands := map[string]func(file string) (*tls.Config, error){
		"expose": func(file string) (*tls.Config, error) {
			var got *ExposeOptions
			err := execute(NewCmdExpose(testFactory(), func(o *ExposeOptions) error { got = o; return nil }), "-p", "8080", "--ca-file", file)
			if got != nil {
				if got.CAFile != file {
					t.Errorf("CAFile = %q", got.CAFile)
				}
				return got.TLSConfig, err
			}
			return nil, err
		},
		"demo": func(file string) (*tls.Config, error) {
			var got *DemoOptions
			err := execute(NewCmdDemo(testFactory(), func(o *DemoOptions) error { got = o; return nil }),
				"--tls-cert", certs.CertFile, "--tls-key", certs.KeyFile, "--ca-file", file)
			if got != nil {
				return got.TLSConfig, err
			}
			return nil, err
		},
	}
	for name, run := range commands {
		t.Run(name, func(t *testing.T) {
			cfg, err := run(certs.CAFile)
			if err != nil {
				t.Fatal(err)
			}
			if cfg == nil || cfg.RootCAs == nil || cfg.InsecureSkipVerify {
				t.Fatalf("TLSConfig = %+v, want RootCAs and verification", cfg)
			}
			if _, err := certs.Leaf.Verify(x509.VerifyOptions{DNSName: "demo.localhost", Roots: cfg.RootCAs}); err != nil {
				t.Errorf("the leaf does not verify with the pool from --ca-file: %v", err)
			}
			if sys, err := x509.SystemCertPool(); err == nil {
				sys.AddCert(caOf(t, certs))
				if !cfg.RootCAs.Equal(sys) {
					t.Error("the pool is not the system roots plus the CA")
				}
			}
			for file, want := range map[string]string{
				missing: "--ca-file: open " + missing + ": no such file",
				keyOnly: "holds no PEM certificate",
				garbled: "certificate 1:",
			} {
				_, err := run(file)
				checkUsageError(t, err, want)
			}
		})
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func caOf(t *testing.T, c *testCerts) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(mustRead(t, c.CAFile))
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestDemoTLSFlags checks demo's certificate flags and their mistakes.
func TestDemoTLSFlags(t *testing.T) {
	var got *DemoOptions
	if err := execute(NewCmdDemo(testFactory(), func(o *DemoOptions) error { got = o; return nil }), "--tls-cert", "c.pem", "--tls-key", "k.pem"); err != nil {
		t.Fatal(err)
	}
	got.IO, got.Logger = IOStreams{}, nil
	if want := (DemoOptions{Addr: "127.0.0.1:0", Name: "demo", TLSCert: "c.pem", TLSKey: "k.pem"}); *got != want {
		t.Errorf("options = %+v, want %+v", *got, want)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-cert", "c.pem"}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-key", "k.pem"}, "--tls-cert and --tls-key go together"},
		{[]string{"--ca-file", "ca.pem"}, "--ca-file is the CA of --tls-cert"},
		{[]string{"--addr", "foo"}, `--addr "foo" is not HOST:PORT`},
		// The demo's relay has no tokens: it never listens beyond loopback.
		{[]string{"--addr", "0.0.0.0:0"}, `--addr "0.0.0.0:0" is not a loopback address`},
	} {
		ran := false
		err := execute(NewCmdDemo(testFactory(), func(*DemoOptions) error { ran = true; return nil }), tt.args...)
		checkUsageError(t, err, tt.want)
		if ran {
			t.Errorf("%q: runF ran despite the error", tt.args)
		}
	}
}

// TestExposeBlankTokenEnv checks that a TUNNEL_TOKEN of only spaces is
// refused, like an empty --token, rather than taken for no token (the
// relay would then ask for a token the user believes they gave).
func TestExposeBlankTokenEnv(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "   ")
	ran := false
	err := execute(NewCmdExpose(testFactory(), func(*ExposeOptions) error { ran = true; return nil }), "-p", "8080")
	checkUsageError(t, err, "TUNNEL_TOKEN is only spaces")
	if ran {
		t.Error("runF ran despite the error")
	}
}
