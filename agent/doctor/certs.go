package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
)

// checkRelayTLS checks the certificate the relay serves for its own host.
func (d *doctor) checkRelayTLS(ctx context.Context) Check {
	c := Check{ID: CheckTLSRelay}
	if d.u.Scheme != "https" {
		return d.plainHTTP(c)
	}
	return d.checkCert(ctx, c, d.host, false)
}

// checkTunnelTLS checks the certificate the relay serves for the tunnel's
// name, once the relay has it.
func (d *doctor) checkTunnelTLS(ctx context.Context, tt *tempTunnel) Check {
	c := Check{ID: CheckTLSTunnel}
	switch {
	case d.u.Scheme != "https":
		return d.plainHTTP(c)
	case tt == nil:
		// The relay serves certificates only for names it holds.
		c.Status, c.Detail = Skip, "needs the temporary tunnel, which the agent check did not get"
		return c
	}
	ctx, cancel := d.timeout(ctx)
	defer cancel()
	// With ACME the relay orders the name's certificate when it grants the
	// name, and says when it has it.
	start := time.Now()
	for waiting := tt.certPending; waiting; {
		select {
		case n := <-tt.notices:
			if n.Name != tt.name() {
				continue
			}
			waiting = false
			if n.Kind == proto.NoticeCertFailed {
				c.Status, c.Latency = Fail, time.Since(start)
				c.Detail = fmt.Sprintf("the relay could not get a certificate for %s: %s", tt.url.Hostname(), n.Message)
				c.Fix = fmt.Sprintf("the relay's ACME CA must reach it: %s must resolve to the relay and ports 80 and 443 be open to the internet; or give the relay a wildcard certificate for *.%s (--tls-cert/--tls-key, from a DNS-01 client)",
					tt.url.Hostname(), domainOf(tt.url.Hostname()))
				return c
			}
		case <-ctx.Done():
			// Try the handshake anyway: it says what the relay serves.
			waiting = false
		}
	}
	return d.checkCert(ctx, c, tt.url.Hostname(), true)
}

func (d *doctor) plainHTTP(c Check) Check {
	if isLocal(d.host) {
		c.Status, c.Detail = Skip, "the relay serves plain HTTP: no certificate to check"
		return c
	}
	c.Status = Warn
	c.Detail = "the relay serves plain HTTP: visitors' traffic, and the agent's token, cross the network unencrypted"
	c.Fix = "serve HTTPS: run the relay with --acme-accept-tos (or --tls-cert/--tls-key) and use https:// in --relay"
	return c
}

// checkCert makes a TLS handshake with the relay for name and inspects the
// certificate it gets. tunnelName says whether name is a tunnel's (whose
// certificate comes from the wildcard or per-name ACME) or the relay's own.
func (d *doctor) checkCert(ctx context.Context, c Check, name string, tunnelName bool) Check {
	ctx, cancel := d.timeout(ctx)
	defer cancel()
	start := time.Now()
	conn, err := d.dialRelay(ctx, "tcp", d.hostPort())
	if err != nil {
		c.Status = Fail
		c.Detail, c.Fix = d.unreachable(err)
		return c
	}
	defer conn.Close()
	// Verification is done below, by hand, so that one report can say
	// everything that is wrong with the certificate.
	tc := tls.Client(conn, &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	err = tc.HandshakeContext(ctx)
	c.Latency = time.Since(start)
	if err != nil {
		c.Status = Fail
		c.Detail = fmt.Sprintf("TLS handshake for %s failed: %v", name, err)
		switch {
		case ctx.Err() != nil:
			c.Fix = "the relay took too long to answer; check that it runs and that its host can reach its ACME CA, then try again"
		case tunnelName:
			c.Fix = fmt.Sprintf("the relay has no certificate for %s: give it a wildcard certificate for *.%s (--tls-cert/--tls-key, from a DNS-01 client) or let it get one per name (--acme-accept-tos)", name, domainOf(name))
		default:
			c.Fix = fmt.Sprintf("check that %s is a tunnel relay serving HTTPS, and that it has a certificate for %s (--acme-accept-tos, or --tls-cert/--tls-key)", d.hostPort(), name)
		}
		return c
	}
	c.Status, c.Detail, c.Fix = inspectCert(tc.ConnectionState().PeerCertificates, d.cfg.RootCAs, name, d.cfg.Now(), d.relayOwnName(name, tunnelName))
	return c
}

// relayOwnName is the fix for a certificate that does not cover the relay
// URL's host: usually a URL with an IP address, or a host the relay does
// not serve.
func (d *doctor) relayOwnName(name string, tunnelName bool) string {
	if tunnelName {
		return fmt.Sprintf("the relay's certificate must cover %s: use a wildcard certificate for *.%s, or ACME (--acme-accept-tos)", name, domainOf(name))
	}
	return fmt.Sprintf("put the name the relay's certificate is for (its --domain) in --relay instead of %s", name)
}

// inspectCert verifies a certificate chain for name at now against roots
// (nil: the system's) and says what it found. wrongName is the fix for a
// certificate that does not cover name.
func inspectCert(chain []*x509.Certificate, roots *x509.CertPool, name string, now time.Time, wrongName string) (Status, string, string) {
	if len(chain) == 0 {
		return Fail, name + ": the relay sent no certificate", "check the relay's certificate files"
	}
	leaf := chain[0]
	issuer := issuerName(leaf)
	var problems, fixes []string

	// The chain, verified at a time when the leaf is valid, so that an
	// expired certificate from a trusted CA reads as just that.
	at := now
	if now.After(leaf.NotAfter) {
		at = leaf.NotAfter.Add(-time.Second)
	} else if now.Before(leaf.NotBefore) {
		at = leaf.NotBefore.Add(time.Second)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at})
	var unknown x509.UnknownAuthorityError
	switch {
	case err == nil:
	case errors.As(err, &unknown):
		problems = append(problems, "issued by "+issuer+", which this machine does not trust")
		fixes = append(fixes, "if the relay's CA is private (or a test CA), pass its certificate with --ca-file; otherwise give the relay a certificate from a public CA (--acme-accept-tos)")
	default:
		problems = append(problems, "chain does not verify: "+err.Error())
		fixes = append(fixes, "serve the full chain (leaf and intermediates) from a CA this machine trusts")
	}
	if err := leaf.VerifyHostname(name); err != nil {
		problems = append(problems, fmt.Sprintf("it is for %s, not %s", certNames(leaf), name))
		fixes = append(fixes, wrongName)
	}
	left := leaf.NotAfter.Sub(now)
	expiry := fmt.Sprintf("expires %s, in %s", leaf.NotAfter.UTC().Format(time.DateOnly), timeLeft(left))
	switch {
	case left <= 0:
		problems = append(problems, "expired on "+leaf.NotAfter.UTC().Format(time.DateOnly))
		fixes = append(fixes, "renew the certificate (with ACME the relay renews by itself: check its logs for certificate errors)")
		expiry = ""
	case now.Before(leaf.NotBefore):
		problems = append(problems, "not valid before "+leaf.NotBefore.UTC().Format(time.DateTime)+" UTC")
		fixes = append(fixes, "check this machine's clock and the relay's")
	}
	if len(problems) > 0 {
		detail := name + ": " + strings.Join(problems, "; ")
		if expiry != "" {
			detail += " (" + expiry + ")"
		}
		return Fail, detail, strings.Join(fixes, "; ")
	}
	detail := fmt.Sprintf("%s: chain verified, issued by %s, %s", name, issuer, expiry)
	if left < expiryWarning {
		return Warn, detail, "renew the certificate soon (with ACME the relay renews by itself 30 days before expiry: check its logs for certificate errors)"
	}
	return Pass, detail, ""
}

// timeLeft says how long until an expiry: in days, or hours on the last
// day.
func timeLeft(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	case d >= 24*time.Hour:
		return "1 day"
	case d >= 2*time.Hour:
		return fmt.Sprintf("%d hours", int(d.Hours()))
	default:
		return "less than 2 hours"
	}
}

func issuerName(c *x509.Certificate) string {
	switch {
	case c.Issuer.CommonName != "" && len(c.Issuer.Organization) > 0 && !strings.Contains(c.Issuer.CommonName, c.Issuer.Organization[0]):
		return c.Issuer.Organization[0] + " " + c.Issuer.CommonName
	case c.Issuer.CommonName != "":
		return c.Issuer.CommonName
	case len(c.Issuer.Organization) > 0:
		return c.Issuer.Organization[0]
	default:
		return c.Issuer.String()
	}
}

// certNames lists the names a certificate covers, at most a few.
func certNames(c *x509.Certificate) string {
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && c.Subject.CommonName != "" {
		names = append(names, c.Subject.CommonName)
	}
	if len(names) == 0 {
		return "no name"
	}
	if len(names) > 4 {
		return strings.Join(names[:4], ", ") + fmt.Sprintf(" and %d more", len(names)-4)
	}
	return strings.Join(names, ", ")
}

// domainOf returns what follows a name's first label: the relay's domain
// for a tunnel name.
func domainOf(host string) string {
	_, domain, _ := strings.Cut(host, ".")
	return domain
}

// isLocal reports whether host is this machine: localhost, a name under
// .localhost, or a loopback address.
func isLocal(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
