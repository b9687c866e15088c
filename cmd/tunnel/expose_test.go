package main

import (
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExposeLocalFlags checks --local-https, --local-ca, --local-insecure
// and --host-header: what they set, and the combinations refused as usage
// errors before anything runs.
func TestExposeLocalFlags(t *testing.T) {
	ts := httptest.NewTLSServer(http.NotFoundHandler())
	ts.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		check   func(o *ExposeOptions) bool
		wantErr string
	}{
		{"https", []string{"--local-https"}, func(o *ExposeOptions) bool { return o.LocalHTTPS && o.LocalCA == nil && !o.LocalInsecure }, ""},
		{"https with a CA", []string{"--local-https", "--local-ca", ca}, func(o *ExposeOptions) bool { return o.LocalHTTPS && o.LocalCA != nil && o.LocalCAFile == ca }, ""},
		{"https insecure", []string{"--local-https", "--local-insecure"}, func(o *ExposeOptions) bool { return o.LocalHTTPS && o.LocalInsecure && o.LocalCA == nil }, ""},
		{"host header rewrite", []string{"--host-header", "rewrite"}, func(o *ExposeOptions) bool { return o.HostHeader == "rewrite" }, ""},
		{"host header", []string{"--host-header", "myapp.test:8080"}, func(o *ExposeOptions) bool { return o.HostHeader == "myapp.test:8080" }, ""},
		{"ca without https", []string{"--local-ca", ca}, nil, "--local-ca applies only to an HTTPS local server: add --local-https"},
		{"insecure without https", []string{"--local-insecure"}, nil, "--local-insecure applies only to an HTTPS local server: add --local-https"},
		{"ca and insecure", []string{"--local-https", "--local-ca", ca, "--local-insecure"}, nil, "--local-ca and --local-insecure do not go together"},
		{"ca missing", []string{"--local-https", "--local-ca", ca + ".missing"}, nil, "--local-ca: open "},
		{"ca not PEM", []string{"--local-https", "--local-ca", notPEM}, nil, "holds no PEM certificate"},
		{"host header with a space", []string{"--host-header", "my app"}, nil, `--host-header: host header "my app" is not a host or host:port`},
		{"host header with CRLF", []string{"--host-header", "a\r\nX-Evil: 1"}, nil, "is not a host or host:port"},
		{"host header empty", []string{"--host-header", ""}, nil, "it must be 1 to 259 characters"},
		{"host header a URL", []string{"--host-header", "http://myapp.test"}, nil, "character '/' is not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unsetEnv(t, "TUNNEL_RELAY")
			unsetEnv(t, "TUNNEL_TOKEN")
			var got *ExposeOptions
			err := execute(NewCmdExpose(testFactory(), func(o *ExposeOptions) error { got = o; return nil }), append([]string{"-p", "8443"}, tt.args...)...)
			if tt.wantErr != "" {
				var uerr *usageError
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &uerr) {
					t.Fatalf("error = %v, want a usage error containing %q", err, tt.wantErr)
				}
				if strings.ContainsAny(err.Error(), "\r\n") {
					t.Errorf("error %q is not one line", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(got) {
				t.Errorf("options %+v", *got)
			}
		})
	}
}

// TestExposeLocalHTTPS runs expose against an HTTPS local server with its
// CA and the Host rewritten, as a person would: the status block shows the
// https target, and a request arrives over TLS with the local address as
// Host and the public one in X-Forwarded-Host.
func TestExposeLocalHTTPS(t *testing.T) {
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls=%v host=%s xfh=%s", r.TLS != nil, r.Host, r.Header.Get("X-Forwarded-Host"))
	}))
	t.Cleanup(ts.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	_, localPort, _ := net.SplitHostPort(ts.Listener.Addr().String())
	_, relayAddr := startRelay(t)
	_, rp, _ := strings.Cut(relayAddr, ":")
	expose := startExpose(t, "expose", relayAddr, "-p", localPort, "-s", "secure", "--local-host", "127.0.0.1",
		"--local-https", "--local-ca", ca, "--host-header", "rewrite", "--no-inspect")
	url := expose.stdout.first(t, 1)[0]
	expose.stderr.find(t, "the forwarding line", func(s string) bool {
		return s == "forwarding  "+url+" → https://127.0.0.1:"+localPort
	})
	status, body := get(t, viaRelay(t, relayAddr), url+"/")
	if want := "tls=true host=127.0.0.1:" + localPort + " xfh=secure.localhost:" + rp; status != http.StatusOK || body != want {
		t.Fatalf("GET through expose: %d %q, want 200 %q", status, body, want)
	}
}
