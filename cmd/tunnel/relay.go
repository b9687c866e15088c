package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
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

	ConfigFile  string   // --config: YAML tokens and limits, reloaded on SIGHUP and on change
	TokenFlags  []string // --token values as given
	AllowNoAuth bool     // --allow-no-auth: serve beyond loopback without tokens

	Interstitial     bool // --interstitial: warn a browser's first visit to a tunnel
	InterstitialDays int  // how long the visitor's "continue" is remembered

	AdminAddr  string // --admin-addr, else $TUNNEL_ADMIN_ADDR: metrics, health and the admin API; empty disables it
	AdminToken string // --admin-token, else $TUNNEL_ADMIN_TOKEN; empty: the API answers 403
	LogFormat  string // --log-format: text or json; RunE makes Logger write it
	AccessLog  string // --access-log: "stderr", or a file to append to; empty: off
	// Tokens are those of --token and TUNNEL_TOKEN, named flag-N and env-N,
	// checked by RunE; the config file's are added when the relay starts.
	Tokens []relay.Token
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

Agents need a token as soon as one is configured, from any source: --token
(repeatable), TUNNEL_TOKEN (comma-separated) and the tokens of --config all
count. An empty token is an error, never "auth off". Without tokens the relay
starts only on a loopback address, unless --allow-no-auth asks for an open
relay on which anyone can claim names.

--config FILE is YAML; every key is optional, unknown keys are errors:

  tokens:
    - name: alice                  # shown in logs; the token never is
      sha256: 9f86d081...0f00a08   # hex SHA-256 of the token (printf %s TOKEN |
                                   # sha256sum), or token: TOKEN in clear
      names: ["alice-*"]           # names it may claim (default: any)
      reserved: [alice]            # names no other token may claim
      max_tunnels: 3               # default limits.max_tunnels_per_token
  limits:
    max_tunnels_per_token: 10      # names one token holds at once
    max_streams_per_tunnel: 1000   # open connections per tunnel (503 beyond)
    conn_rate_per_ip: 50           # new connections per second; -1: no limit
    conn_rate_loopback: false      # limit loopback addresses too
    response_header_timeout: 60s   # wait for the local server (504 beyond)
    auth_failures_per_minute: 10   # wrong tokens, and wrong visitor passwords, per address (429 beyond)

The file is read again on SIGHUP and when it changes (a saved file is
applied once it has stayed unchanged for 2 s, so that a half-written one is
never read): new tokens apply then and agents whose token is gone are
disconnected; limits apply at the next start. A file with a mistake is
logged and the running tokens stay.
Keep the file private (chmod 600) when it holds tokens in clear.

The admin listener (--admin-addr, default 127.0.0.1:9090; empty turns it off)
serves Prometheus metrics at /metrics, /healthz (200 while the process runs)
and /readyz (503 once shutdown begins), and, with --admin-token or
TUNNEL_ADMIN_TOKEN, the admin API that 'tunnel admin' uses: list tunnels, kick
an agent, revoke a name. It never shares the public port, and it is refused on
an address beyond loopback without an admin token.

Logs go to stderr as text or JSON (--log-format): a line per tunnel claim and
release, and per refused request with its reason (at most 10 a second per
reason, then a summary). --access-log stderr adds a line "access" per request
to a tunnel (host, method, path without query, status, duration, bytes,
remote); --access-log FILE appends them to FILE instead.

SIGINT or SIGTERM drains in-flight requests and exits; a second signal exits
at once.

The relay runs its Go code on one thread (GOMAXPROCS=1) while it uses less
than about half a core, which spares a thread wake-up at every hand-off
between goroutines and keeps WebSocket latency low, and on all CPUs once it
is busy. GOMAXPROCS in the environment fixes it instead, as for any Go
program.`,
		Example: `  tunnel relay --domain localhost
  tunnel relay --domain example.com --acme-accept-tos --acme-email ops@example.com
  tunnel relay --domain example.com --tls-cert /etc/tunnel/wildcard.pem --tls-key /etc/tunnel/wildcard.key
  TUNNEL_DOMAIN=example.com tunnel relay --plain --addr 127.0.0.1:8080
  tunnel relay --domain example.com --acme-accept-tos --config /etc/tunnel/relay.yaml
  TUNNEL_TOKEN=$(cat /etc/tunnel/token) tunnel relay --domain example.com --acme-accept-tos
  TUNNEL_ADMIN_TOKEN=$(cat /etc/tunnel/admin-token) tunnel relay --domain localhost --log-format json --access-log stderr`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("domain") {
				opts.Domain = os.Getenv("TUNNEL_DOMAIN")
			}
			if strings.TrimSpace(opts.Domain) == "" {
				return usageErrorf(cmd, "no domain: pass --domain (the apex your wildcard DNS points at, or localhost) or set TUNNEL_DOMAIN")
			}
			if err := relay.CheckDomain(opts.Domain); err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			if opts.Grace < 0 {
				return usageErrorf(cmd, "--grace must be 0 (names freed at once) or positive, got %v", opts.Grace)
			}
			if opts.DrainTimeout <= 0 {
				return usageErrorf(cmd, "--drain-timeout must be positive, got %v", opts.DrainTimeout)
			}
			if !opts.Interstitial && cmd.Flags().Changed("interstitial-days") {
				return usageErrorf(cmd, "--interstitial-days has no effect without --interstitial; add --interstitial to show the warning page")
			}
			if opts.Interstitial && (opts.InterstitialDays < 1 || opts.InterstitialDays > 400) {
				return usageErrorf(cmd, "--interstitial-days must be 1 to 400 (browsers keep cookies at most 400 days), got %d", opts.InterstitialDays)
			}
			if err := checkRelayMode(cmd, opts); err != nil {
				return err
			}
			if err := checkRelayLogs(cmd, f, opts); err != nil {
				return err
			}
			tokens, err := commandLineTokens(cmd, opts.TokenFlags)
			if err != nil {
				return err
			}
			opts.Tokens = tokens
			if runF != nil {
				return runF(opts)
			}
			defer governProcs()()
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
	fl.StringVar(&opts.ConfigFile, "config", "", "YAML `file` of agent tokens and limits, reloaded on SIGHUP and on change")
	fl.StringArrayVar(&opts.TokenFlags, "token", nil, "`token` agents must present; repeatable (env TUNNEL_TOKEN, comma-separated)")
	fl.BoolVar(&opts.AllowNoAuth, "allow-no-auth", false, "run without tokens on an address beyond loopback: anyone can claim names")
	fl.BoolVar(&opts.Interstitial, "interstitial", false, "show a browser's first visit to a tunnel an anti-phishing warning page (never WebSockets, fetch or non-browser clients)")
	fl.IntVar(&opts.InterstitialDays, "interstitial-days", 7, "how many `days` a visitor's \"continue\" on the warning page is remembered")
	fl.StringVar(&opts.AdminAddr, "admin-addr", "127.0.0.1:9090", "admin listen `address`: /metrics, /healthz, /readyz and the admin API; empty disables it (env TUNNEL_ADMIN_ADDR)")
	fl.StringVar(&opts.AdminToken, "admin-token", "", "bearer `token` of the admin API (env TUNNEL_ADMIN_TOKEN); without one the API answers 403")
	fl.StringVar(&opts.LogFormat, "log-format", "text", "log `format`: text or json")
	fl.StringVar(&opts.AccessLog, "access-log", "", "log every request to a tunnel: \"stderr\" (with the other logs) or a `file` to append to")
	return cmd
}

// checkRelayLogs reads the admin address and token from the environment,
// checks them and the log flags, and makes the relay's logger write JSON
// for --log-format json.
func checkRelayLogs(cmd *cobra.Command, f *Factory, opts *RelayOptions) error {
	const hint = "use a long random token (e.g. openssl rand -hex 24)"
	if env, ok := os.LookupEnv("TUNNEL_ADMIN_ADDR"); ok && !cmd.Flags().Changed("admin-addr") {
		opts.AdminAddr = env
	}
	if cmd.Flags().Changed("admin-token") {
		if strings.TrimSpace(opts.AdminToken) == "" {
			return usageErrorf(cmd, "--admin-token is empty: %s, or leave it out to keep the admin API off", hint)
		}
	} else if env, ok := os.LookupEnv("TUNNEL_ADMIN_TOKEN"); ok {
		if strings.TrimSpace(env) == "" {
			return usageErrorf(cmd, "TUNNEL_ADMIN_TOKEN is set but empty: %s, or unset it", hint)
		}
		opts.AdminToken = env
	}
	opts.AdminToken = strings.TrimSpace(opts.AdminToken)
	if opts.AdminToken != "" && len(opts.AdminToken) < 8 {
		return usageErrorf(cmd, "the admin token is shorter than 8 characters: %s", hint)
	}
	if err := relay.CheckToken(opts.AdminToken); err != nil {
		return usageErrorf(cmd, "the admin token %v", err)
	}
	switch opts.LogFormat {
	case "text":
	case "json":
		var ho slog.HandlerOptions
		if f.level != nil {
			ho.Level = f.level
		}
		opts.Logger = slog.New(slog.NewJSONHandler(f.IO.ErrOut, &ho))
	default:
		return usageErrorf(cmd, "--log-format must be text or json, got %q", opts.LogFormat)
	}
	return nil
}

// accessLogger opens the destination of --access-log. The returned close
// function is not nil.
func accessLogger(opts *RelayOptions) (*slog.Logger, func(), error) {
	switch opts.AccessLog {
	case "":
		return nil, func() {}, nil
	case "stderr", "-":
		// The other logs' handler, so that lines never interleave, but
		// not their --log-level: asking for an access log is asking for
		// its lines.
		return slog.New(allLevels{opts.Logger.Handler()}), func() {}, nil
	}
	f, err := os.OpenFile(opts.AccessLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("--access-log: %w", err)
	}
	var h slog.Handler = slog.NewTextHandler(f, nil)
	if opts.LogFormat == "json" {
		h = slog.NewJSONHandler(f, nil)
	}
	return slog.New(h), func() { f.Close() }, nil
}

// allLevels hands every record to its handler, whatever the handler's own
// level.
type allLevels struct{ slog.Handler }

func (allLevels) Enabled(context.Context, slog.Level) bool { return true }

func (h allLevels) WithAttrs(as []slog.Attr) slog.Handler {
	return allLevels{h.Handler.WithAttrs(as)}
}

func (h allLevels) WithGroup(name string) slog.Handler {
	return allLevels{h.Handler.WithGroup(name)}
}

// commandLineTokens collects the tokens of --token and TUNNEL_TOKEN. An
// empty one is a usage error: a variable that expanded to nothing must not
// turn auth off.
func commandLineTokens(cmd *cobra.Command, flags []string) ([]relay.Token, error) {
	const hint = "an empty token would let anyone in; use a long random token (e.g. openssl rand -hex 24)"
	var tokens []relay.Token
	for i, v := range flags {
		if strings.TrimSpace(v) == "" {
			return nil, usageErrorf(cmd, "--token is empty: %s", hint)
		}
		tokens = append(tokens, relay.Token{Name: fmt.Sprintf("flag-%d", i+1), Secret: strings.TrimSpace(v)})
	}
	if env, ok := os.LookupEnv("TUNNEL_TOKEN"); ok {
		parts := strings.Split(env, ",")
		for i, v := range parts {
			if strings.TrimSpace(v) == "" {
				if len(parts) == 1 {
					return nil, usageErrorf(cmd, "TUNNEL_TOKEN is set but empty: %s, or unset it", hint)
				}
				return nil, usageErrorf(cmd, "TUNNEL_TOKEN: token %d of %d is empty: %s", i+1, len(parts), hint)
			}
			tokens = append(tokens, relay.Token{Name: fmt.Sprintf("env-%d", i+1), Secret: strings.TrimSpace(v)})
		}
	}
	if err := relay.CheckTokens(tokens); err != nil {
		return nil, usageErrorf(cmd, "%v", err)
	}
	return tokens, nil
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
		if fl.Changed("state-dir") {
			return usageErrorf(cmd, "--state-dir holds ACME keys and certificates, and nothing without --acme-accept-tos: drop it, or add --acme-accept-tos")
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
	cfg := relayConfig(opts)
	access, closeAccess, err := accessLogger(opts)
	if err != nil {
		return err
	}
	defer closeAccess()
	cfg.AccessLog = access
	var reloader *configReloader
	if opts.ConfigFile != "" {
		// Watch for SIGHUP before reading the file, so that one sent
		// during startup reloads rather than ends the relay.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		reloader = &configReloader{path: opts.ConfigFile, fixed: opts.Tokens, log: opts.Logger, hup: hup, every: configPollInterval}
		file, err := reloader.load(stampOf(opts.ConfigFile))
		if err != nil {
			return err
		}
		reloader.limits = file.Limits
		cfg.Tokens = append(cfg.Tokens, file.Tokens...)
		cfg.Limits = file.Limits
	}
	if len(cfg.Tokens) > 0 {
		opts.Logger.Info("agents need a token", "tokens", len(cfg.Tokens))
	}

	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopWatch()
		wg.Wait()
	}()
	return relay.Run(ctx, cfg, func(s *relay.Server, addr net.Addr) {
		// With JSON logs every line on stderr is JSON: the relay's own
		// "relay listening" lines say the same.
		if opts.LogFormat != "json" {
			fmt.Fprintf(opts.IO.ErrOut, "relay listening on %s, serving %s\n", addr, exampleURL(opts.Domain, addr, opts.TLS()))
			if a := s.AdminAddr(); a != nil {
				fmt.Fprintf(opts.IO.ErrOut, "relay admin on http://%s (metrics, health, admin API)\n", a)
			}
		}
		if reloader != nil {
			wg.Go(func() { reloader.run(watchCtx, s) })
		}
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
		Tokens:       opts.Tokens,
		AllowNoAuth:  opts.AllowNoAuth,
		AdminAddr:    opts.AdminAddr,
		AdminToken:   opts.AdminToken,
	}
	if opts.Interstitial {
		cfg.Interstitial = time.Duration(opts.InterstitialDays) * 24 * time.Hour
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
