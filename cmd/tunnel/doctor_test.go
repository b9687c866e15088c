package main

import (
	"encoding/json"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDoctorFlags checks how doctor reads its flags, TUNNEL_RELAY and
// TUNNEL_TOKEN, through the runF seam.
func TestDoctorFlags(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	writeFile(t, caFile, "not a certificate")
	tests := []struct {
		name    string
		env     []string // KEY=VALUE
		args    []string
		want    DoctorOptions // only the flag fields are compared
		wantErr string
	}{
		{
			name: "defaults",
			want: DoctorOptions{Relay: defaultRelay, Timeout: 10 * time.Second},
		},
		{
			name: "all flags",
			args: []string{"--relay", "https://example.com", "-s", "demo", "--token", " sesame ", "--timeout", "3s", "--json"},
			want: DoctorOptions{Relay: "https://example.com", Name: "demo", Token: "sesame", Timeout: 3 * time.Second, JSON: true},
		},
		{
			name: "environment",
			env:  []string{"TUNNEL_RELAY=https://env.example.com", "TUNNEL_TOKEN=from-env"},
			want: DoctorOptions{Relay: "https://env.example.com", Token: "from-env", Timeout: 10 * time.Second},
		},
		{
			name: "flags win over the environment",
			env:  []string{"TUNNEL_RELAY=https://env.example.com", "TUNNEL_TOKEN=from-env"},
			args: []string{"--relay", "https://flag.example.com", "--token", "from-flag"},
			want: DoctorOptions{Relay: "https://flag.example.com", Token: "from-flag", Timeout: 10 * time.Second},
		},
		{name: "empty token", args: []string{"--token", " "}, wantErr: "--token is empty"},
		{name: "bad TUNNEL_RELAY", env: []string{"TUNNEL_RELAY=example.com"}, wantErr: `TUNNEL_RELAY "example.com" is not a relay URL`},
		{name: "bad TUNNEL_RELAY under --relay", env: []string{"TUNNEL_RELAY=example.com"}, args: []string{"--relay", "https://flag.example.com"},
			want: DoctorOptions{Relay: "https://flag.example.com", Timeout: 10 * time.Second}},
		{name: "zero timeout", args: []string{"--timeout", "0s"}, wantErr: "--timeout must be positive"},
		{name: "bad CA file", args: []string{"--ca-file", caFile}, wantErr: "--ca-file: " + caFile + " holds no PEM certificate"},
		{name: "stray argument", args: []string{"https://example.com"}, wantErr: "takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t, "TUNNEL_RELAY")
			unsetEnv(t, "TUNNEL_TOKEN")
			for _, kv := range tt.env {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			var got *DoctorOptions
			err := execute(NewCmdDoctor(testFactory(), func(o *DoctorOptions) error { got = o; return nil }), tt.args...)
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

// TestDoctorUnreachableRelay runs `tunnel doctor` against a port where
// nothing listens: exit 1, the agent check failed with its fix on stdout,
// and one line on stderr saying what was wrong and what to do.
func TestDoctorUnreachableRelay(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)

	p := startTunnel(t, "doctor", []string{"TUNNEL_TOKEN=", "TUNNEL_RELAY="}, "doctor", "--relay", "http://"+addr, "--timeout", "5s")
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("doctor exited %d, want 1", code)
	}
	want := "tunnel: agent check failed: nothing answers at " + addr + " (connection refused); " +
		"fix: start the relay (tunnel relay), check the host and port in --relay, and open port " + port + " in the relay's firewall"
	if got := p.stderr.first(t, 1); got[0] != want {
		t.Errorf("stderr %q, want %q", got[0], want)
	}
	p.stdout.find(t, "the agent check's line", func(s string) bool {
		return strings.HasPrefix(s, "FAIL  agent ") && strings.Contains(s, "nothing answers at "+addr)
	})
	p.stdout.find(t, "the summary", func(s string) bool { return s == "1 of 7 checks failed: agent." })
}

// TestDoctorThroughRelay runs `tunnel doctor --json` against `tunnel relay
// --domain localhost`: every check passes or does not apply (no TLS), and
// the JSON says so.
func TestDoctorThroughRelay(t *testing.T) {
	_, relayAddr := startRelay(t)
	_, port, _ := net.SplitHostPort(relayAddr)
	p := startTunnel(t, "doctor", []string{"TUNNEL_TOKEN=", "TUNNEL_RELAY=http://localhost:" + port}, "doctor", "-s", "checkup", "--json")
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("doctor exited %d, want 0", code)
	}
	var rep struct {
		OK     bool   `json:"ok"`
		Tunnel string `json:"tunnel"`
		Checks []struct {
			ID, Status, Detail string
		} `json:"checks"`
	}
	// The process has exited, so its output is all read.
	p.stdout.mu.Lock()
	out := strings.Join(p.stdout.all, "\n")
	p.stdout.mu.Unlock()
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v in %s", err, out)
	}
	if !rep.OK || rep.Tunnel != "http://checkup.localhost:"+port || len(rep.Checks) != 7 {
		t.Fatalf("report %+v", rep)
	}
	for _, c := range rep.Checks {
		want := "pass"
		if strings.HasPrefix(c.ID, "tls-") {
			want = "skip"
		}
		if c.Status != want {
			t.Errorf("%s: %s (%s), want %s", c.ID, c.Status, c.Detail, want)
		}
	}
}

// TestDoctorOverTLS runs `tunnel doctor` in text mode against an https
// relay whose certificate comes from a test CA: with --ca-file every check
// passes (the certificate lasts a day: warnings), without it the TLS check
// fails and says to pass --ca-file.
func TestDoctorOverTLS(t *testing.T) {
	certs := newTestCerts(t, "localhost", "*.localhost")
	_, relayAddr := startTLSRelay(t, certs)
	_, port, _ := net.SplitHostPort(relayAddr)
	relayURL := "https://localhost:" + port

	p := startTunnel(t, "doctor", []string{"TUNNEL_TOKEN=", "TUNNEL_RELAY="}, "doctor", "--relay", relayURL, "--ca-file", certs.CAFile, "-s", "tls-checkup")
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("doctor exited %d, want 0", code)
	}
	lines := p.stdout.first(t, 13)
	want := []string{
		"Checking relay " + relayURL,
		"",
		"PASS  DNS relay   localhost resolves to ",
		"WARN  TLS relay   localhost: chain verified, issued by tunnel local CA, expires ",
		"      fix:        renew the certificate soon",
		"PASS  agent       connected to localhost:" + port + " (no token needed) and got the temporary tunnel https://tls-checkup.localhost:" + port + " in ",
		"PASS  DNS tunnel  tls-checkup.localhost is under .localhost",
		"WARN  TLS tunnel  tls-checkup.localhost: chain verified, issued by tunnel local CA, expires ",
		"      fix:        renew the certificate soon",
		"PASS  HTTP        GET https://tls-checkup.localhost:" + port + "/ came back through the tunnel with its nonce in ",
		"PASS  WebSocket   wss://tls-checkup.localhost:" + port + "/ echoed a message through the tunnel: handshake ",
		"",
		"All 7 checks passed; 2 warnings.",
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("line %d: %q, want it to start with %q", i+1, lines[i], want[i])
		}
	}

	p = startTunnel(t, "doctor-untrusted", []string{"TUNNEL_TOKEN=", "TUNNEL_RELAY="}, "doctor", "--relay", relayURL)
	if code := p.exitCode(t); code != 1 {
		t.Fatalf("doctor without --ca-file exited %d, want 1", code)
	}
	line := p.stderr.first(t, 1)[0]
	for _, want := range []string{
		"tunnel: TLS relay check failed: localhost: issued by tunnel local CA, which this machine does not trust",
		"; fix: if the relay's CA is private (or a test CA), pass its certificate with --ca-file",
		"(and 1 more failed check above)", // the agent's, for the same reason
	} {
		if !strings.Contains(line, want) {
			t.Errorf("stderr %q, want %q in it", line, want)
		}
	}
}

// TestDoctorInterrupted checks Ctrl-C while a check waits on a relay that
// accepts and never answers: exit 1 with one line, and no summary or JSON
// report that would vouch for the checks that never ran.
func TestDoctorInterrupted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, unanswered, until the test ends
		}
	}()
	for _, args := range [][]string{nil, {"--json"}} {
		p := startTunnel(t, "doctor", []string{"TUNNEL_TOKEN=", "TUNNEL_RELAY="}, append([]string{"doctor", "--relay", "http://" + ln.Addr().String(), "--timeout", "20s"}, args...)...)
		time.Sleep(time.Second) // into the agent check, which waits for the relay's answer
		p.signal(t, syscall.SIGINT)
		if code := p.exitCode(t); code != 1 {
			t.Fatalf("doctor %q exited %d after SIGINT, want 1", args, code)
		}
		if got := p.stderr.all; len(got) != 1 || got[0] != "tunnel: doctor interrupted before all checks ran" {
			t.Errorf("doctor %q: stderr %q", args, got)
		}
		for _, s := range p.stdout.all {
			if strings.Contains(s, "No check failed") || strings.Contains(s, "checks passed") || strings.Contains(s, `"ok"`) {
				t.Errorf("doctor %q: %q after an interrupt", args, s)
			}
		}
	}
}
