package e2e

import (
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/agent"
)

// One configuration file (tunnel start --config), two tunnels: a plain
// local server and an HTTPS one verified with the CA the file names, with
// its Host rewritten. One agent serves both, each visitor reaching its own
// server.
func TestConfigFileTwoTunnels(t *testing.T) {
	rl := startRelay(t, "")
	plain := startHostLocal(t)
	secure, _ := startHTTPSLocal(t)
	dir := t.TempDir()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: secure.Certificate().Raw})
	if err := os.WriteFile(filepath.Join(dir, "local-ca.pem"), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "tunnels.yaml")
	file := `relay: ` + rl.url() + `
tunnels:
  - name: web
    local: ` + plain + `
  - name: backend
    local: ` + secure.Listener.Addr().String() + `
    local_https: true
    local_ca: local-ca.pem
    host_header: api.test
    allow_ip: [127.0.0.0/8]
`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := agent.LoadConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, urls := startAgent(t, cfg.Relay, cfg.Tunnels)
	rp := port(rl.addr)
	if len(urls) != 2 || urls[0] != "http://web.localhost:"+rp || urls[1] != "http://backend.localhost:"+rp {
		t.Fatalf("URLs %q, want web's and backend's in the file's order", urls)
	}
	c := visitorClient(rl.addr)
	if status, body := get(t, c, urls[0]+"/"); status != http.StatusOK || body != "host=web.localhost:"+rp+" xfh=web.localhost:"+rp {
		t.Errorf("web: %d %q", status, body)
	}
	status, body := get(t, c, urls[1]+"/v1")
	if want := "tls=true alpn=http/1.1 proto=HTTP/1.1 host=api.test path=/v1"; status != http.StatusOK || body != want {
		t.Errorf("backend: %d %q, want %q", status, body, want)
	}
	if strings.Contains(body, "xfh=") {
		t.Error("backend's request reached the plain server")
	}
}
