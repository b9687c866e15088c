package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/relay"
)

// RelayOptions are the inputs of `tunnel relay`.
type RelayOptions struct {
	IO     IOStreams
	Logger *slog.Logger

	Domain       string        // apex: --domain, else $TUNNEL_DOMAIN
	Addr         string        // main listen address; empty means relay.Config's default
	Grace        time.Duration // how long a lost agent's names stay reserved; 0 frees them at once
	DrainTimeout time.Duration // how long shutdown waits for in-flight requests

	TLSCert, TLSKey string // certificate files; both or neither
	ACME            bool   // --acme-accept-tos: automatic certificates from an ACME CA
	ACMEEmail       string // contact address given to the CA
	ACMEDirectory   string // the CA's directory URL; empty means Let's Encrypt
	StateDir        string // ACME state; resolved from the environment when ACME is on and the flag is not set
	HTTPAddr        string // port-80 listener in TLS mode; empty disables it
	HSTS            bool   // Strict-Transport-Security on TLS responses
	Plain           bool   // --plain: HTTP only, whatever the domain
}

// TLS reports whether the relay will serve HTTPS.
func (o *RelayOptions) TLS() bool { return o.TLSCert != "" || o.ACME }

const letsEncryptTerms = "https://letsencrypt.org/repository/"

// NewCmdRelay returns `tunnel relay`. runF, if not nil, replaces running the
// relay, so tests can check how flags and environment are read.
func NewCmdRelay(f *Factory, runF func(*RelayOptions) error) *cobra.Command {
	opts := &RelayOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:   "relay --domain DOMAIN (--acme-accept-tos | --tls-cert FILE --tls-key FILE | --plain) [flags]",
		Short: "Run the public relay that tunnels connect to",
		Long: `Serve tunnels at <name>.DOMAIN and accept agents on the same port.

DOMAIN and *.DOMAIN need DNS records pointing at this machine; use localhost
to try it locally, since browsers and curl resolve *.localhost to loopback.

For a real domain, choose how to serve it:
  --acme-accept-tos      certificates from Let's Encrypt (or --acme-directory),
                         requested when a name is granted; needs ports 443 and
                         80 (--http-addr) reachable; keys kept in --state-dir
  --tls-cert/--tls-key   your own certificate, e.g. a wildcard for *.DOMAIN from
                         a DNS-01 client, reloaded when the files change; with
                         --acme-accept-tos too, ACME covers the other names
  --plain                HTTP only, e.g. behind a proxy that terminates TLS

With TLS, --addr defaults to :443 and --http-addr (default :80) answers ACME
HTTP-01 challenges and redirects everything else to https. Let's Encrypt
issues at most 50 certificates per registered domain per week: a busy relay
should use a wildcard certificate file.

SIGINT or SIGTERM drains in-flight requests and exits; a second signal exits
at once.`,
		Example: `  tunnel relay --domain localhost
  tunnel relay --domain example.com --acme-accept-tos --acme-email ops@example.com
  tunnel relay --domain example.com --tls-cert /etc/tunnel/wildcard.pem --tls-key /etc/tunnel/wildcard.key
  TUNNEL_DOMAIN=example.com tunnel relay --plain --addr 127.0.0.1:8080`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("domain") {
				opts.Domain = os.Getenv("TUNNEL_DOMAIN")
			}
			if strings.TrimSpace(opts.Domain) == "" {
				return usageErrorf(cmd, "no domain: pass --domain (the apex your wildcard DNS points at, or localhost) or set TUNNEL_DOMAIN")
			}
			if opts.DrainTimeout <= 0 {
				return usageErrorf(cmd, "--drain-timeout must be positive, got %v", opts.DrainTimeout)
			}
			if err := checkRelayMode(cmd, opts); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return relayRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Domain, "domain", "", "`apex` domain; tunnels are served at <name>.DOMAIN (env TUNNEL_DOMAIN)")
	fl.StringVar(&opts.Addr, "addr", "", "main listen `address`, HTTPS in TLS mode (default :443 with TLS, 127.0.0.1:8000 for plain localhost, :80 otherwise)")
	fl.DurationVar(&opts.Grace, "grace", 60*time.Second, "how long a disconnected agent's names stay reserved for it")
	fl.DurationVar(&opts.DrainTimeout, "drain-timeout", 30*time.Second, "how long shutdown waits for in-flight requests")
	fl.StringVar(&opts.TLSCert, "tls-cert", "", "certificate `file` (PEM chain) for the names it covers, e.g. *.DOMAIN")
	fl.StringVar(&opts.TLSKey, "tls-key", "", "private key `file` (PEM) of --tls-cert")
	fl.BoolVar(&opts.ACME, "acme-accept-tos", false, "obtain certificates automatically from an ACME CA, accepting its terms of service")
	fl.StringVar(&opts.ACMEEmail, "acme-email", "", "contact `address` given to the ACME CA (optional)")
	fl.StringVar(&opts.ACMEDirectory, "acme-directory", "", "ACME directory `URL` of another CA, e.g. Let's Encrypt staging (default Let's Encrypt)")
	fl.StringVar(&opts.StateDir, "state-dir", "", "`directory` for ACME account keys and certificates (default $STATE_DIRECTORY, else $XDG_STATE_HOME/tunnel, else ~/.local/state/tunnel)")
	fl.StringVar(&opts.HTTPAddr, "http-addr", ":80", "in TLS mode, listen `address` for ACME HTTP-01 and redirects to https; empty disables it")
	fl.BoolVar(&opts.HSTS, "hsts", false, "send Strict-Transport-Security on HTTPS responses")
	fl.BoolVar(&opts.Plain, "plain", false, "serve plain HTTP only, without certificates")
	return cmd
}

// checkRelayMode enforces the rules that pick plain HTTP or TLS, and fills
// in the state directory when ACME needs one.
func checkRelayMode(cmd *cobra.Command, opts *RelayOptions) error {
	fl := cmd.Flags()
	var tlsFlags []string
	for _, name := range []string{"tls-cert", "tls-key", "acme-accept-tos", "acme-email", "acme-directory"} {
		if fl.Changed(name) {
			tlsFlags = append(tlsFlags, "--"+name)
		}
	}
	if opts.Plain && len(tlsFlags) > 0 {
		return usageErrorf(cmd, "--plain serves HTTP only and cannot go with %s: drop one or the other", strings.Join(tlsFlags, ", "))
	}
	if (opts.TLSCert == "") != (opts.TLSKey == "") {
		return usageErrorf(cmd, "--tls-cert and --tls-key go together: pass both, the certificate chain and its private key")
	}
	if !opts.ACME {
		for _, name := range []string{"acme-email", "acme-directory"} {
			if fl.Changed(name) {
				return usageErrorf(cmd, "--%s needs --acme-accept-tos: read the CA's terms of service (Let's Encrypt's: %s) and add --acme-accept-tos", name, letsEncryptTerms)
			}
		}
	}
	domain := normDomain(opts.Domain)
	if !opts.TLS() {
		if !opts.Plain && domain != "localhost" && !strings.HasSuffix(domain, ".localhost") {
			return usageErrorf(cmd, "choose how to serve %s: --acme-accept-tos [--acme-email you@%s] for automatic certificates, --tls-cert/--tls-key for your own, or --plain for HTTP only", domain, domain)
		}
		if opts.HSTS {
			return usageErrorf(cmd, "--hsts needs HTTPS: add --acme-accept-tos or --tls-cert/--tls-key")
		}
		if fl.Changed("http-addr") && opts.HTTPAddr != "" {
			return usageErrorf(cmd, "--http-addr is the port-80 listener of an HTTPS relay; in plain mode the relay listens on --addr only")
		}
	}
	if opts.ACME && opts.StateDir == "" {
		dir, err := defaultStateDir()
		if err != nil {
			return usageErrorf(cmd, "no state directory for ACME (%v): pass --state-dir", err)
		}
		opts.StateDir = dir
	}
	return nil
}

// defaultStateDir is systemd's $STATE_DIRECTORY (StateDirectory=), else
// $XDG_STATE_HOME/tunnel, else ~/.local/state/tunnel.
func defaultStateDir() (string, error) {
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		// systemd lists several directories separated by colons when the
		// unit has several; the first is ours.
		d, _, _ = strings.Cut(d, ":")
		return d, nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "tunnel"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	if home == "" {
		return "", errors.New("no home directory")
	}
	return filepath.Join(home, ".local", "state", "tunnel"), nil
}

func relayRun(ctx context.Context, opts *RelayOptions) error {
	return relay.Run(ctx, relayConfig(opts), func(addr net.Addr) {
		fmt.Fprintf(opts.IO.ErrOut, "relay listening on %s, serving %s\n", addr, exampleURL(opts.Domain, addr, opts.TLS()))
	})
}

// relayConfig turns checked options into the relay's configuration.
func relayConfig(opts *RelayOptions) relay.Config {
	cfg := relay.Config{
		Domain:       opts.Domain,
		Addr:         opts.Addr,
		Grace:        opts.Grace,
		DrainTimeout: opts.DrainTimeout,
		Logger:       opts.Logger,
	}
	if cfg.Grace <= 0 {
		cfg.Grace = -1 // relay.Config reads 0 as "default"; --grace 0 means none
	}
	if !opts.TLS() {
		return cfg
	}
	cfg.TLSCertFile, cfg.TLSKeyFile = opts.TLSCert, opts.TLSKey
	cfg.HTTPAddr = opts.HTTPAddr
	cfg.HSTS = opts.HSTS
	if opts.ACME {
		cfg.ACME = &relay.ACMEConfig{AcceptTOS: true, Email: opts.ACMEEmail, DirectoryURL: opts.ACMEDirectory}
		cfg.StateDir = opts.StateDir
	}
	return cfg
}

// exampleURL shows where a tunnel will be reached, e.g.
// "http://<name>.localhost:8000" or "https://<name>.example.com".
func exampleURL(domain string, addr net.Addr, tls bool) string {
	scheme, defaultPort := "http", "80"
	if tls {
		scheme, defaultPort = "https", "443"
	}
	u := scheme + "://<name>." + normDomain(domain)
	if _, port, err := net.SplitHostPort(addr.String()); err == nil && port != defaultPort {
		u += ":" + port
	}
	return u
}

// normDomain spells a domain as the relay does.
func normDomain(domain string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(domain)), ".")
}
