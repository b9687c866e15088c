package main

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
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
		{name: "port 0", args: []string{"-p", "0"}, wantErr: "want a TCP port from 1 to 65535"},
		{name: "port too big", args: []string{"-p", "65536"}, wantErr: "want a TCP port from 1 to 65535"},
		{name: "negative port", args: []string{"-p", "-1"}, wantErr: "want a TCP port from 1 to 65535"},
		{name: "port not a number", args: []string{"-p", "http"}, wantErr: "want a TCP port from 1 to 65535"},
		{name: "stray argument", args: []string{"-p", "80", "8080"}, wantErr: "takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TUNNEL_RELAY", tt.env)
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
			if *got != tt.want {
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
			want: RelayOptions{Domain: "localhost", Grace: 60 * time.Second, DrainTimeout: 30 * time.Second},
		},
		{
			name: "all flags",
			args: []string{"--domain", "example.com", "--addr", ":8080", "--grace", "5s", "--drain-timeout", "1m"},
			want: RelayOptions{Domain: "example.com", Addr: ":8080", Grace: 5 * time.Second, DrainTimeout: time.Minute},
		},
		{
			name: "domain from TUNNEL_DOMAIN",
			env:  "env.example.com",
			want: RelayOptions{Domain: "env.example.com", Grace: 60 * time.Second, DrainTimeout: 30 * time.Second},
		},
		{
			name: "--domain wins over TUNNEL_DOMAIN",
			env:  "env.example.com",
			args: []string{"--domain", "localhost"},
			want: RelayOptions{Domain: "localhost", Grace: 60 * time.Second, DrainTimeout: 30 * time.Second},
		},
		{name: "no domain", wantErr: "no domain: pass --domain"},
		{name: "zero drain timeout", args: []string{"--domain", "localhost", "--drain-timeout", "0"}, wantErr: "--drain-timeout must be positive"},
		{name: "bad duration", args: []string{"--domain", "localhost", "--grace", "soon"}, wantErr: `invalid argument "soon"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TUNNEL_DOMAIN", tt.env)
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
			if *got != tt.want {
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
