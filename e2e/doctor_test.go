package e2e

import (
	"context"
	"crypto/tls"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/agent/doctor"
	"github.com/tunnel-dev/tunnel/relay"
)

// doctorDNS is the DNS the doctor sees: the relay's domain resolves to
// 127.0.0.1, and with wildcard every name under it too. Anything else does
// not exist.
func doctorDNS(domain string, wildcard bool) func(context.Context, string) ([]string, error) {
	return func(_ context.Context, host string) ([]string, error) {
		host = strings.TrimSuffix(strings.ToLower(host), ".")
		if host == domain || wildcard && strings.HasSuffix(host, "."+domain) {
			return []string{"127.0.0.1"}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
}

// runDoctor runs the checks with cfg against the loopback DNS of doctorDNS
// (unless cfg has its own) and returns the report.
func runDoctor(t *testing.T, cfg doctor.Config) *doctor.Report {
	t.Helper()
	if cfg.LookupHost == nil {
		cfg.LookupHost = doctorDNS(acmeDomain, true)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second // a -race build on a busy machine, and ACME orders
	}
	cfg.Logger = testLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := doctor.Run(ctx, cfg)
	if err != nil {
		t.Fatalf("doctor.Run: %v", err)
	}
	var text strings.Builder
	rep.WriteText(&text)
	t.Logf("report:\n%s", text.String())
	return rep
}

// expectChecks checks the status of every check in the report, in order:
// as in want, else Pass (the harness's Pebble issues 90-day certificates,
// so no TLS check warns of an expiry).
func expectChecks(t *testing.T, rep *doctor.Report, want map[string]doctor.Status) {
	t.Helper()
	order := []string{doctor.CheckDNSRelay, doctor.CheckTLSRelay, doctor.CheckAgent, doctor.CheckDNSTunnel,
		doctor.CheckTLSTunnel, doctor.CheckHTTP, doctor.CheckWebSocket}
	var ids []string
	for _, c := range rep.Checks {
		ids = append(ids, c.ID)
	}
	if !slices.Equal(ids, order) {
		t.Fatalf("checks %q, want %q", ids, order)
	}
	for _, c := range rep.Checks {
		w, ok := want[c.ID]
		switch {
		case ok:
		default:
			w = doctor.Pass
		}
		if c.Status != w {
			t.Errorf("%s: %s (%s; fix: %s), want %s", c.ID, c.Status, c.Detail, c.Fix, w)
		}
		if (c.Status == doctor.Fail || c.Status == doctor.Warn) && c.Fix == "" {
			t.Errorf("%s: %s without a fix", c.ID, c.Status)
		}
	}
}

// expectText checks that a check's detail and fix contain the given texts.
func expectText(t *testing.T, rep *doctor.Report, id, detail, fix string) {
	t.Helper()
	c, ok := rep.Find(id)
	if !ok {
		t.Fatalf("no %s check", id)
	}
	if !strings.Contains(c.Detail, detail) {
		t.Errorf("%s detail %q, want it to contain %q", id, c.Detail, detail)
	}
	if !strings.Contains(c.Fix, fix) {
		t.Errorf("%s fix %q, want it to contain %q", id, c.Fix, fix)
	}
}

// TestDoctor runs `tunnel doctor`'s checks against a relay on loopback
// whose certificates come from Pebble (real validation), in a working setup
// and in broken ones, each of which must fail the right check with its fix.
func TestDoctor(t *testing.T) {
	const token, otherToken = "doctor-token-0123456789", "another-token-0123456789"
	rl := startACMERelay(t, false, validateBoth, withTokens(relay.Token{Secret: token}, relay.Token{Secret: otherToken}))
	base := doctor.Config{Relay: rl.relayURL(), Token: token, RootCAs: rl.ca.Roots}
	p := port(rl.addr)

	t.Run("passing", func(t *testing.T) {
		rep := runDoctor(t, base) // a random name
		expectChecks(t, rep, nil)
		if len(rep.Failed()) != 0 || !strings.HasPrefix(rep.Tunnel, "https://") || !strings.HasSuffix(rep.Tunnel, "."+acmeDomain+":"+p) {
			t.Errorf("tunnel %q, failed %v", rep.Tunnel, rep.Failed())
		}
		expectText(t, rep, doctor.CheckTLSRelay, acmeDomain+": chain verified, issued by Pebble Intermediate CA", "")
		expectText(t, rep, doctor.CheckTLSTunnel, "chain verified, issued by Pebble", "")
		expectText(t, rep, doctor.CheckDNSTunnel, "resolves to the relay's address 127.0.0.1", "")
		expectText(t, rep, doctor.CheckHTTP, "came back through the tunnel with its nonce", "")
		expectText(t, rep, doctor.CheckWebSocket, "echoed a message through the tunnel", "")
		for _, id := range []string{doctor.CheckAgent, doctor.CheckHTTP, doctor.CheckWebSocket} {
			if c, _ := rep.Find(id); c.Latency <= 0 {
				t.Errorf("%s: no latency", id)
			}
		}
	})

	t.Run("named tunnel", func(t *testing.T) {
		cfg := base
		cfg.Name = "doctor-named"
		rep := runDoctor(t, cfg)
		expectChecks(t, rep, nil)
		if want := "https://doctor-named." + acmeDomain + ":" + p; rep.Tunnel != want {
			t.Errorf("tunnel %q, want %q", rep.Tunnel, want)
		}
		expectText(t, rep, doctor.CheckTLSTunnel, "doctor-named."+acmeDomain+": chain verified", "")
	})

	t.Run("wildcard DNS record missing", func(t *testing.T) {
		cfg := base
		cfg.LookupHost = doctorDNS(acmeDomain, false)
		rep := runDoctor(t, cfg)
		// The round trip goes to the relay's address and still works.
		expectChecks(t, rep, map[string]doctor.Status{doctor.CheckDNSTunnel: doctor.Fail})
		expectText(t, rep, doctor.CheckDNSTunnel, "does not resolve: no such host",
			"the wildcard DNS record is missing: add *."+acmeDomain+" A 127.0.0.1")
	})

	t.Run("certificate from an untrusted CA", func(t *testing.T) {
		cfg := base
		cfg.RootCAs = nil // the system's roots, which do not include Pebble's
		rep := runDoctor(t, cfg)
		expectChecks(t, rep, map[string]doctor.Status{
			doctor.CheckTLSRelay: doctor.Fail, doctor.CheckAgent: doctor.Fail, doctor.CheckDNSTunnel: doctor.Pass,
			doctor.CheckTLSTunnel: doctor.Skip, doctor.CheckHTTP: doctor.Skip, doctor.CheckWebSocket: doctor.Skip,
		})
		expectText(t, rep, doctor.CheckTLSRelay, "which this machine does not trust", "pass its certificate with --ca-file")
		expectText(t, rep, doctor.CheckAgent, "certificate", "pass its certificate with --ca-file")
	})

	t.Run("certificate for another name", func(t *testing.T) {
		cfg := base
		// By IP address: the relay serves its apex certificate, which does
		// not cover the address.
		cfg.Relay = "https://127.0.0.1:" + p
		rep := runDoctor(t, cfg)
		expectChecks(t, rep, map[string]doctor.Status{
			doctor.CheckDNSRelay: doctor.Skip, doctor.CheckTLSRelay: doctor.Fail, doctor.CheckAgent: doctor.Fail,
			doctor.CheckDNSTunnel: doctor.Skip, doctor.CheckTLSTunnel: doctor.Skip, doctor.CheckHTTP: doctor.Skip, doctor.CheckWebSocket: doctor.Skip,
		})
		expectText(t, rep, doctor.CheckTLSRelay, "it is for "+acmeDomain+", not 127.0.0.1", "put the name the relay's certificate is for (its --domain) in --relay")
		expectText(t, rep, doctor.CheckAgent, "127.0.0.1", "put the name the relay's certificate is for")
	})

	t.Run("wrong token", func(t *testing.T) {
		cfg := base
		cfg.Token = "not-the-token"
		rep := runDoctor(t, cfg)
		expectChecks(t, rep, map[string]doctor.Status{
			doctor.CheckAgent: doctor.Fail, doctor.CheckTLSTunnel: doctor.Skip, doctor.CheckHTTP: doctor.Skip, doctor.CheckWebSocket: doctor.Skip,
		})
		expectText(t, rep, doctor.CheckAgent, "token not accepted by this relay", "pass one of its agent tokens with --token or TUNNEL_TOKEN")
	})

	t.Run("no token", func(t *testing.T) {
		cfg := base
		cfg.Token = ""
		rep := runDoctor(t, cfg)
		expectChecks(t, rep, map[string]doctor.Status{
			doctor.CheckAgent: doctor.Fail, doctor.CheckTLSTunnel: doctor.Skip, doctor.CheckHTTP: doctor.Skip, doctor.CheckWebSocket: doctor.Skip,
		})
		expectText(t, rep, doctor.CheckAgent, "401 Unauthorized", "this relay needs an agent token: pass --token or set TUNNEL_TOKEN")
	})

	t.Run("name held by another agent", func(t *testing.T) {
		// Another token's agent: one with the doctor's token would hand the
		// name over to the doctor (the relay's rule for reconnects).
		local := startLocal(t)
		startAgent(t, rl.relayURL(), []agent.Tunnel{{Name: "doctor-taken", Local: local.addr}},
			agentTrusting(&tls.Config{RootCAs: rl.ca.Roots}, rl.addr), withToken(otherToken))
		cfg := base
		cfg.Name = "doctor-taken"
		rep := runDoctor(t, cfg)
		expectChecks(t, rep, map[string]doctor.Status{
			doctor.CheckAgent: doctor.Fail, doctor.CheckTLSTunnel: doctor.Skip, doctor.CheckHTTP: doctor.Skip, doctor.CheckWebSocket: doctor.Skip,
		})
		expectText(t, rep, doctor.CheckAgent, "doctor-taken", "leave -s out for a random name")
	})
}

// TestDoctorUnreachable checks a relay that does not run: nothing listens
// on its port, or its host name does not resolve.
func TestDoctorUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := port(ln.Addr().String())
	ln.Close()

	t.Run("nothing listens", func(t *testing.T) {
		rep := runDoctor(t, doctor.Config{Relay: "https://" + acmeDomain + ":" + closed, Timeout: 5 * time.Second})
		expectChecks(t, rep, map[string]doctor.Status{
			doctor.CheckTLSRelay: doctor.Fail, doctor.CheckAgent: doctor.Fail,
			doctor.CheckTLSTunnel: doctor.Skip, doctor.CheckHTTP: doctor.Skip, doctor.CheckWebSocket: doctor.Skip,
		})
		for _, id := range []string{doctor.CheckTLSRelay, doctor.CheckAgent} {
			expectText(t, rep, id, "nothing answers at "+acmeDomain+":"+closed+" (connection refused)", "start the relay (tunnel relay)")
		}
		if got := len(rep.Failed()); got != 2 {
			t.Errorf("%d failed checks, want 2", got)
		}
	})

	t.Run("host does not resolve", func(t *testing.T) {
		rep := runDoctor(t, doctor.Config{
			Relay:      "https://" + acmeDomain + ":" + closed,
			LookupHost: doctorDNS("elsewhere.test", true),
			Timeout:    5 * time.Second,
		})
		expectChecks(t, rep, map[string]doctor.Status{
			doctor.CheckDNSRelay: doctor.Fail, doctor.CheckTLSRelay: doctor.Fail, doctor.CheckAgent: doctor.Fail,
			doctor.CheckDNSTunnel: doctor.Fail, doctor.CheckTLSTunnel: doctor.Skip, doctor.CheckHTTP: doctor.Skip, doctor.CheckWebSocket: doctor.Skip,
		})
		expectText(t, rep, doctor.CheckDNSRelay, acmeDomain+" does not resolve: no such host", "add an A record for "+acmeDomain)
		expectText(t, rep, doctor.CheckAgent, "does not resolve", "see DNS relay")
		expectText(t, rep, doctor.CheckDNSTunnel, "assuming tunnels are named <name>."+acmeDomain, "add *."+acmeDomain+" with the same A/AAAA addresses as "+acmeDomain)
	})
}

// TestDoctorACMEFails checks a relay whose own certificate comes from a
// file while its CA cannot validate tunnel names (ports 80 and 443 closed to
// the CA): the tunnel's certificate check fails with the relay's reason, and
// the round trip points at it.
func TestDoctorACMEFails(t *testing.T) {
	ca := newTestCA(t)
	certPath, keyPath := ca.issue(t, t.TempDir(), acmeDomain)
	rl := startACMERelay(t, false, validateNone, func(c *relay.Config) {
		c.TLSCertFile, c.TLSKeyFile = certPath, keyPath
	})
	roots := rl.ca.Roots.Clone()
	roots.AppendCertsFromPEM(ca.PEM)
	// The relay's certificate is the test CA's, which runDoctor does not
	// know, and lasts a day: a warning.
	rep := runDoctor(t, doctor.Config{Relay: rl.relayURL(), RootCAs: roots})
	expectChecks(t, rep, map[string]doctor.Status{
		doctor.CheckTLSRelay:  doctor.Warn,
		doctor.CheckTLSTunnel: doctor.Fail, doctor.CheckHTTP: doctor.Fail, doctor.CheckWebSocket: doctor.Fail,
	})
	expectText(t, rep, doctor.CheckTLSRelay, "issued by tunnel test CA", "renew the certificate soon")
	expectText(t, rep, doctor.CheckTLSTunnel, "the relay could not get a certificate for ", "ports 80 and 443 be open")
	expectText(t, rep, doctor.CheckHTTP, "GET https://", "see TLS tunnel")
	expectText(t, rep, doctor.CheckWebSocket, "wss://", "see TLS tunnel")
}

// A relay that asks no token never checked the one the doctor was given:
// the agent check warns that it was not checked, and that the relay is
// open, instead of reporting it accepted.
func TestDoctorTokenNotChecked(t *testing.T) {
	rl := startRelay(t, "") // no tokens
	rep := runDoctor(t, doctor.Config{Relay: rl.url(), Token: "a-token-with-a-typo", LookupHost: doctorDNS("localhost", true)})
	c, ok := rep.Find(doctor.CheckAgent)
	if !ok {
		t.Fatal("no agent check")
	}
	if c.Status != doctor.Warn || strings.Contains(c.Detail, "token accepted") ||
		!strings.Contains(c.Detail, "the relay asks no token, so the one given was not checked") || !strings.Contains(c.Fix, "give it agent tokens") {
		t.Fatalf("agent check against a relay without tokens: %s %q (fix %q); want a warning that the token was not checked", c.Status, c.Detail, c.Fix)
	}
}
