package doctor

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestDoctorReportText checks the text and JSON forms of a report.
func TestDoctorReportText(t *testing.T) {
	rep := &Report{Relay: "https://example.com", Tunnel: "https://demo.example.com", Checks: []Check{
		{ID: CheckDNSRelay, Status: Pass, Detail: "example.com resolves to 203.0.113.7", Latency: 3 * time.Millisecond},
		{ID: CheckDNSTunnel, Status: Fail, Detail: "demo.example.com does not resolve:\nno such host", Fix: "add *.example.com A 203.0.113.7"},
		{ID: CheckTLSRelay, Status: Warn, Detail: "example.com: expires in 9 days", Fix: "renew it"},
		{ID: CheckHTTP, Status: Skip, Detail: "needs the tunnel", Fix: "not shown for a skip"},
	}}
	var out strings.Builder
	if err := rep.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	want := `Checking relay https://example.com

PASS  DNS relay   example.com resolves to 203.0.113.7
FAIL  DNS tunnel  demo.example.com does not resolve: no such host
      fix:        add *.example.com A 203.0.113.7
WARN  TLS relay   example.com: expires in 9 days
      fix:        renew it
SKIP  HTTP        needs the tunnel

1 of 4 checks failed: DNS tunnel.
`
	if out.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", out.String(), want)
	}

	var b bytes.Buffer
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got struct {
		OK     bool   `json:"ok"`
		Relay  string `json:"relay"`
		Tunnel string `json:"tunnel"`
		Checks []struct {
			ID, Title, Status, Detail, Fix string
			LatencyMS                      *float64 `json:"latency_ms"`
		} `json:"checks"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v in %s", err, b.String())
	}
	if got.OK || got.Relay != rep.Relay || got.Tunnel != rep.Tunnel || len(got.Checks) != 4 {
		t.Fatalf("JSON %s", b.String())
	}
	if c := got.Checks[0]; c.ID != "dns-relay" || c.Title != "DNS relay" || c.Status != "pass" || c.LatencyMS == nil || *c.LatencyMS != 3 {
		t.Errorf("first check %+v", c)
	}
	if c := got.Checks[1]; c.Status != "fail" || c.Fix != "add *.example.com A 203.0.113.7" || c.LatencyMS != nil {
		t.Errorf("second check %+v", c)
	}
}

func TestDoctorSummary(t *testing.T) {
	for _, tt := range []struct {
		statuses []Status
		want     string
	}{
		{[]Status{Pass, Pass}, "All 2 checks passed."},
		{[]Status{Pass, Warn}, "All 2 checks passed; 1 warning."},
		{[]Status{Pass, Skip, Warn, Warn}, "No check failed; 2 warnings."},
		{[]Status{Fail, Pass, Fail}, "2 of 3 checks failed: DNS relay, DNS relay."},
	} {
		rep := &Report{}
		for _, s := range tt.statuses {
			rep.Checks = append(rep.Checks, Check{ID: CheckDNSRelay, Status: s})
		}
		if got := rep.Summary(); got != tt.want {
			t.Errorf("%v: %q, want %q", tt.statuses, got, tt.want)
		}
	}
}

// testCA makes certificates for inspectCert.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name, Organization: []string{"Doctor Test"}},
		NotBefore: time.Now().Add(-5 * 365 * 24 * time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) leaf(t *testing.T, notAfter time.Time, names ...string) *x509.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: notAfter.Add(-90 * 24 * time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

// TestDoctorInspectCert checks what the TLS checks say about a chain.
func TestDoctorInspectCert(t *testing.T) {
	ca := newTestCA(t, "Doctor CA 1")
	other := newTestCA(t, "Stranger CA")
	now := time.Now()
	day := 24 * time.Hour
	const wrongName = "WRONG-NAME-FIX"
	for _, tt := range []struct {
		name     string
		leaf     *x509.Certificate
		roots    *x509.CertPool
		host     string
		now      time.Time
		status   Status
		detail   []string
		fix      []string
		notInFix []string
	}{
		{
			name: "good", leaf: ca.leaf(t, now.Add(60*day+time.Hour), "example.com"), roots: ca.pool, host: "example.com", now: now,
			status: Pass, detail: []string{"example.com: chain verified, issued by Doctor Test Doctor CA 1, expires ", ", in 60 days"},
		},
		{
			name: "wildcard covers a tunnel", leaf: ca.leaf(t, now.Add(60*day), "example.com", "*.example.com"), roots: ca.pool, host: "demo.example.com", now: now,
			status: Pass, detail: []string{"demo.example.com: chain verified"},
		},
		{
			name: "expires soon", leaf: ca.leaf(t, now.Add(9*day+time.Hour), "example.com"), roots: ca.pool, host: "example.com", now: now,
			status: Warn, detail: []string{"in 9 days"}, fix: []string{"renew the certificate soon"},
		},
		{
			name: "expires today", leaf: ca.leaf(t, now.Add(5*time.Hour+time.Minute), "example.com"), roots: ca.pool, host: "example.com", now: now,
			status: Warn, detail: []string{"in 5 hours"}, fix: []string{"renew the certificate soon"},
		},
		{
			name: "expired", leaf: ca.leaf(t, now.Add(-2*day), "example.com"), roots: ca.pool, host: "example.com", now: now,
			status: Fail, detail: []string{"example.com: expired on " + now.Add(-2*day).UTC().Format(time.DateOnly)}, fix: []string{"renew the certificate"},
			notInFix: []string{"--ca-file"},
		},
		{
			name: "not yet valid", leaf: ca.leaf(t, now.Add(100*day), "example.com"), roots: ca.pool, host: "example.com", now: now.Add(-30 * day),
			status: Fail, detail: []string{"not valid before"}, fix: []string{"clock"},
		},
		{
			name: "unknown authority", leaf: other.leaf(t, now.Add(60*day), "example.com"), roots: ca.pool, host: "example.com", now: now,
			status: Fail, detail: []string{"issued by Doctor Test Stranger CA, which this machine does not trust"}, fix: []string{"--ca-file"},
			notInFix: []string{wrongName},
		},
		{
			name: "wrong name", leaf: ca.leaf(t, now.Add(60*day), "example.com"), roots: ca.pool, host: "demo.example.com", now: now,
			status: Fail, detail: []string{"it is for example.com, not demo.example.com"}, fix: []string{wrongName},
			notInFix: []string{"--ca-file"},
		},
		{
			name: "wrong name and untrusted", leaf: other.leaf(t, now.Add(60*day), "a.test", "b.test"), roots: ca.pool, host: "203.0.113.7", now: now,
			status: Fail, detail: []string{"does not trust", "it is for a.test, b.test, not 203.0.113.7"}, fix: []string{"--ca-file", wrongName},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, detail, fix := inspectCert([]*x509.Certificate{tt.leaf}, tt.roots, tt.host, tt.now, wrongName)
			if status != tt.status {
				t.Errorf("status %s, want %s (%s; %s)", status, tt.status, detail, fix)
			}
			for _, s := range tt.detail {
				if !strings.Contains(detail, s) {
					t.Errorf("detail %q, want %q in it", detail, s)
				}
			}
			for _, s := range tt.fix {
				if !strings.Contains(fix, s) {
					t.Errorf("fix %q, want %q in it", fix, s)
				}
			}
			for _, s := range tt.notInFix {
				if strings.Contains(fix, s) {
					t.Errorf("fix %q mentions %q", fix, s)
				}
			}
		})
	}
}

// TestDoctorTunnelDNS checks how the tunnel's addresses are compared with
// the relay's.
func TestDoctorTunnelDNS(t *testing.T) {
	zone := map[string][]string{
		"example.com":           {"203.0.113.7", "2001:db8::7"},
		"same.example.com":      {"2001:db8::7", "203.0.113.7"},
		"v4only.example.com":    {"203.0.113.7"},
		"elsewhere.example.com": {"198.51.100.1"},
	}
	lookup := func(_ context.Context, host string) ([]string, error) {
		if ips, ok := zone[host]; ok {
			return ips, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	cfg := Config{Relay: "https://example.com", LookupHost: lookup}
	u, err := cfg.check()
	if err != nil {
		t.Fatal(err)
	}
	d := &doctor{cfg: cfg, u: u, host: "example.com", port: "443", rep: &Report{}}
	if c := d.checkRelayDNS(context.Background()); c.Status != Pass || c.Detail != "example.com resolves to 2001:db8::7, 203.0.113.7" {
		t.Fatalf("relay DNS: %+v", c)
	}
	for _, tt := range []struct {
		host        string
		status      Status
		detail, fix string
	}{
		{"same.example.com", Pass, "resolves to the relay's address 2001:db8::7, 203.0.113.7", ""},
		{"v4only.example.com", Warn, "resolves to 203.0.113.7, the relay example.com to 2001:db8::7, 203.0.113.7", "make the wildcard record match the relay's: add *.example.com AAAA 2001:db8::7"},
		{"elsewhere.example.com", Fail, "resolves to 198.51.100.1, but the relay example.com is at", "point the wildcard record at the relay: *.example.com AAAA 2001:db8::7 and *.example.com A 203.0.113.7"},
		{"missing.example.com", Fail, "missing.example.com does not resolve: no such host", "the wildcard DNS record is missing: add *.example.com AAAA 2001:db8::7 and *.example.com A 203.0.113.7 (the relay's address)"},
		{"demo.localhost", Pass, "under .localhost", ""},
	} {
		tun := &tempTunnel{url: &url.URL{Scheme: "https", Host: tt.host}}
		c := d.checkTunnelDNS(context.Background(), tun)
		if c.Status != tt.status || !strings.Contains(c.Detail, tt.detail) || !strings.Contains(c.Fix, tt.fix) {
			t.Errorf("%s: %s %q fix %q; want %s %q fix %q", tt.host, c.Status, c.Detail, c.Fix, tt.status, tt.detail, tt.fix)
		}
	}

	// Without a tunnel, -s NAME under the relay's host stands in.
	d.cfg.Name = "same"
	if c := d.checkTunnelDNS(context.Background(), nil); c.Status != Pass || !strings.Contains(c.Detail, "same.example.com resolves") || !strings.Contains(c.Detail, "assuming") {
		t.Errorf("assumed name: %+v", c)
	}
}

// TestDoctorConfig checks the errors Run returns before checking anything.
func TestDoctorConfig(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "no relay: pass --relay URL or set TUNNEL_RELAY"},
		{Config{Relay: "example.com"}, `relay "example.com" is not a URL like`},
		{Config{Relay: "https://example.com", Name: "Not_A_Name"}, "Not_A_Name"},
		// Refused before any check, and without showing the password.
		{Config{Relay: "https://ann:hunter2@example.com"}, `relay "https://ann:xxxxx@example.com" has more than a scheme and a host`},
		{Config{Relay: "https://example.com", Token: "0123456789abcdef  # laptop"}, `the token holds " #…"`},
	} {
		rep, err := Run(context.Background(), tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) || rep != nil {
			t.Errorf("%+v: %v, want %q", tt.cfg, err, tt.want)
		}
	}
}
