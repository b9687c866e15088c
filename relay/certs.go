package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// ACMEConfig turns on automatic certificates from an ACME CA (Let's Encrypt
// by default) for the apex and every granted or reserved name.
type ACMEConfig struct {
	// AcceptTOS must be true: using an ACME CA means agreeing to its terms
	// of service, and the relay does not do that on the operator's behalf.
	AcceptTOS bool
	// Email is the contact address given to the CA; optional.
	Email string
	// DirectoryURL is the CA's ACME directory. Default: Let's Encrypt
	// production (acme.LetsEncryptURL).
	DirectoryURL string
	// HTTPClient talks to the CA; nil means http.DefaultClient. Tests use it
	// to trust a test CA.
	HTTPClient *http.Client
	// Cooldown is how long a name whose order failed is refused before the
	// next try, so a failing name cannot cause an order per handshake.
	// Default 10 minutes.
	Cooldown time.Duration
}

// certs chooses the certificate for each TLS handshake: certificate files
// first, then ACME for names they do not cover. Only the apex and names the
// registry currently holds get a certificate; any other server name fails
// the handshake at once, without an ACME order.
type certs struct {
	domain string
	reg    *registry
	log    *slog.Logger
	files  *certFile         // nil without --tls-cert
	acme   *autocert.Manager // nil without ACME
	cool   time.Duration

	mu     sync.Mutex
	failed map[string]failure // name → why and until when its order is not retried
	// ordering holds the autocert call running for each name: handshakes
	// that come meanwhile share its result, so that a failed order is
	// recorded once, with the CA's reason, not with what autocert tells
	// each waiter ("missing certificate").
	ordering map[string]*order
}

// order is one autocert call for a name, and its result once done is closed.
type order struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

type failure struct {
	err   error
	until time.Time
}

func newCerts(cfg *Config, reg *registry) (*certs, error) {
	c := &certs{domain: cfg.Domain, reg: reg, log: cfg.Logger, failed: make(map[string]failure), ordering: make(map[string]*order)}
	if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
		if cfg.TLSCertFile == "" || cfg.TLSKeyFile == "" {
			return nil, errors.New("relay: a certificate needs both --tls-cert and --tls-key")
		}
		f, err := loadCertFile(cfg.TLSCertFile, cfg.TLSKeyFile, cfg.Domain)
		if err != nil {
			return nil, err
		}
		c.files = f
		if !coversDomain(f.cert.Leaf, cfg.Domain) {
			msg := fmt.Sprintf("--tls-cert %s covers %s, neither %s nor a name under it", cfg.TLSCertFile, strings.Join(f.cert.Leaf.DNSNames, ", "), cfg.Domain)
			if cfg.ACME == nil {
				// Every handshake would fail, and only a debug log would say why.
				return nil, fmt.Errorf("relay: %s: use a certificate for %s and *.%s, or the --domain it was made for", msg, cfg.Domain, cfg.Domain)
			}
			cfg.Logger.Warn(msg + "; ACME serves every name")
		}
	}
	if a := cfg.ACME; a != nil {
		if !a.AcceptTOS {
			dir := a.DirectoryURL
			if dir == "" {
				dir = acme.LetsEncryptURL
			}
			return nil, fmt.Errorf("relay: ACME certificates need the CA's terms of service accepted: read them (directory %s) and pass --acme-accept-tos", dir)
		}
		if cfg.StateDir == "" {
			return nil, errors.New("relay: ACME needs a state directory for keys and certificates: set --state-dir")
		}
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("relay: state directory: %w", err)
		}
		c.cool = a.Cooldown
		if c.cool <= 0 {
			c.cool = 10 * time.Minute
		}
		c.acme = &autocert.Manager{
			Prompt:     autocert.AcceptTOS,
			Cache:      autocert.DirCache(cfg.StateDir + "/acme"),
			HostPolicy: c.policy,
			Email:      a.Email,
			Client:     &acme.Client{DirectoryURL: a.DirectoryURL, HTTPClient: a.HTTPClient},
		}
	}
	return c, nil
}

// coversDomain reports whether leaf serves domain or a name under it (one
// label, as tunnel names are).
func coversDomain(leaf *x509.Certificate, domain string) bool {
	if leaf.VerifyHostname(domain) == nil {
		return true
	}
	for _, n := range leaf.DNSNames {
		if label, ok := strings.CutSuffix(strings.ToLower(n), "."+domain); ok && label != "" && !strings.Contains(label, ".") {
			return true
		}
	}
	return false
}

// known reports whether name may have a certificate: the apex, or a tunnel
// name the registry holds (live or reserved).
func (c *certs) known(name string) bool {
	if name == c.domain {
		return true
	}
	label, ok := strings.CutSuffix(name, "."+c.domain)
	if !ok || label == "" || strings.Contains(label, ".") {
		return false
	}
	sess, _, held := c.reg.lookup(label)
	return sess != nil || !held.IsZero()
}

func (c *certs) policy(_ context.Context, host string) error {
	// autocert's HTTP-01 handler passes the Host header, port included.
	if !c.known(canonicalHost(host)) {
		return fmt.Errorf("no tunnel is named %s here", host)
	}
	return nil
}

// GetCertificate is the tls.Config hook.
func (c *certs) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.TrimSuffix(strings.ToLower(hello.ServerName), ".")
	if name == "" {
		// Clients that send no SNI (e.g. dialing by IP) get the apex.
		name = c.domain
		h := *hello
		h.ServerName = name
		hello = &h
	}
	if c.acme != nil && len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto {
		// A CA validating a TLS-ALPN-01 challenge: autocert has the token
		// certificate if, and only if, it asked for this name.
		return c.acme.GetCertificate(hello)
	}
	if !c.known(name) {
		return nil, fmt.Errorf("no certificate for %q: not the apex nor a tunnel held here", name)
	}
	if c.files != nil {
		if cert := c.files.get(name, c.log); cert != nil {
			return cert, nil
		}
	}
	if c.acme == nil {
		return nil, fmt.Errorf("no certificate covers %q; the certificate file has other names and ACME is off", name)
	}
	// Always the ECDSA certificate: autocert would order an RSA one for a
	// client that offers only RSA, and anyone could make the relay place a
	// second order for every name it serves. Every client of the last
	// decade supports ECDSA.
	return c.obtain(name, ecdsaHello(name))
}

// ecdsaHello is a modern client's hello for name, as far as autocert looks:
// it picks the ECDSA certificate.
func ecdsaHello(name string) *tls.ClientHelloInfo {
	return &tls.ClientHelloInfo{
		ServerName:       name,
		CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedCurves:  []tls.CurveID{tls.CurveP256},
	}
}

// obtain asks autocert for name's certificate unless a recent order for it
// failed. Handshakes for a name whose call is running wait for its result.
func (c *certs) obtain(name string, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	f, ok := c.failed[name]
	if ok && time.Now().After(f.until) {
		delete(c.failed, name)
		ok = false
	}
	if ok {
		c.mu.Unlock()
		return nil, fmt.Errorf("certificate for %s failed, next try after %s: %w", name, f.until.Format(time.TimeOnly), f.err)
	}
	if o := c.ordering[name]; o != nil {
		c.mu.Unlock()
		<-o.done
		return o.cert, o.err
	}
	o := &order{done: make(chan struct{})}
	c.ordering[name] = o
	c.mu.Unlock()
	o.cert, o.err = c.acme.GetCertificate(hello)
	c.mu.Lock()
	delete(c.ordering, name)
	if o.err != nil {
		now := time.Now()
		// Names released since are never asked for again: forget the
		// failures past their cool-down here (failures are rare, each a
		// round trip to the CA).
		maps.DeleteFunc(c.failed, func(_ string, f failure) bool { return now.After(f.until) })
		c.failed[name] = failure{err: o.err, until: now.Add(c.cool)}
	}
	c.mu.Unlock()
	close(o.done)
	if o.err != nil {
		c.log.Warn("certificate order failed", "name", name, "retry_after", c.cool.String(), "err", o.err)
	}
	return o.cert, o.err
}

// needsACME reports whether name's certificate comes from ACME (the files
// do not cover it).
func (c *certs) needsACME(name string) bool {
	if c.acme == nil {
		return false
	}
	return c.files == nil || c.files.get(name, c.log) == nil
}

// prefetch obtains name's certificate now, as a modern client's handshake
// would (ECDSA), so the first visitor does not wait for the CA.
func (c *certs) prefetch(name string) error {
	_, err := c.obtain(name, ecdsaHello(name))
	return err
}

// httpHandler serves ACME HTTP-01 challenges and redirects everything else
// to https.
func (c *certs) httpHandler() http.Handler {
	redirect := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h := canonicalHost(r.Host); h != "" {
			host = h
			if ip, err := netip.ParseAddr(h); err == nil && ip.Is6() {
				host = "[" + h + "]" // the port went, its brackets stay
			}
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
	if c.acme == nil {
		return redirect
	}
	return c.acme.HTTPHandler(redirect)
}

// certFile is a certificate and key on disk, reloaded when either changes.
type certFile struct {
	certPath, keyPath string
	domain            string

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     string // size and mtime of both files at the last load
	lastCheck time.Time
}

// reloadCheckInterval bounds how often handshakes stat the files.
const reloadCheckInterval = time.Second

func loadCertFile(certPath, keyPath, domain string) (*certFile, error) {
	f := &certFile{certPath: certPath, keyPath: keyPath, domain: domain}
	if err := f.load(false); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *certFile) fileStamp() (string, error) {
	var b strings.Builder
	for _, p := range []string{f.certPath, f.keyPath} {
		st, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%d/%d;", st.Size(), st.ModTime().UnixNano())
	}
	return b.String(), nil
}

// load reads the files. A reload (reload true) also refuses a certificate
// that would serve no name of the domain, or that no client accepts now,
// so that the one already loaded stays; at start newCerts says what is
// wrong with the first one.
func (f *certFile) load(reload bool) error {
	stamp, err := f.fileStamp()
	if err != nil {
		return fmt.Errorf("relay: certificate file: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(f.certPath, f.keyPath)
	if err != nil {
		return fmt.Errorf("relay: load --tls-cert %s / --tls-key %s: %w", f.certPath, f.keyPath, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("relay: parse %s: %w", f.certPath, err)
		}
	}
	if reload {
		leaf, now := cert.Leaf, time.Now()
		switch {
		case !coversDomain(leaf, f.domain):
			return fmt.Errorf("relay: --tls-cert %s covers %s, neither %s nor a name under it", f.certPath, strings.Join(leaf.DNSNames, ", "), f.domain)
		case now.After(leaf.NotAfter):
			return fmt.Errorf("relay: --tls-cert %s expired on %s", f.certPath, leaf.NotAfter.Format(time.RFC3339))
		case now.Before(leaf.NotBefore):
			return fmt.Errorf("relay: --tls-cert %s is not valid before %s", f.certPath, leaf.NotBefore.Format(time.RFC3339))
		}
	}
	f.cert, f.stamp = &cert, stamp
	return nil
}

// get returns the certificate if it covers name, reloading it first when the
// files changed. A failed reload keeps the old certificate.
func (f *certFile) get(name string, log *slog.Logger) *tls.Certificate {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now := time.Now(); now.Sub(f.lastCheck) >= reloadCheckInterval {
		f.lastCheck = now
		if stamp, err := f.fileStamp(); err == nil && stamp != f.stamp {
			if err := f.load(true); err != nil {
				log.Warn("certificate files changed but do not load; keeping the old certificate", "err", err)
			} else {
				log.Info("certificate reloaded", "file", f.certPath, "names", strings.Join(f.cert.Leaf.DNSNames, ","), "expires", f.cert.Leaf.NotAfter.Format(time.DateOnly))
			}
		}
	}
	if f.cert.Leaf.VerifyHostname(name) != nil {
		return nil
	}
	return f.cert
}
