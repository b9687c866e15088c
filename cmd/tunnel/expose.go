package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/agent"
)

// defaultRelay pairs with `tunnel relay --domain localhost`, which listens
// on 127.0.0.1:8000.
const defaultRelay = "http://localhost:8000"

// defaultInspectAddr is where the inspector listens: loopback only, on the
// port developers know from other tunnels.
const defaultInspectAddr = "127.0.0.1:4040"

// ExposeOptions are the inputs of `tunnel expose`.
type ExposeOptions struct {
	IO     IOStreams
	Logger *slog.Logger

	Port      int    // local port, 1-65535
	LocalHost string // host the local server listens on
	Name      string // public name to ask for; empty lets the relay pick
	Relay     string // relay URL: --relay, else $TUNNEL_RELAY, else defaultRelay
	CAFile    string // extra root certificates to trust for an https relay
	Token     string // the relay's agent token: --token, else $TUNNEL_TOKEN

	LocalHTTPS    bool   // --local-https: the local server speaks HTTPS
	LocalCAFile   string // --local-ca: PEM file of the CA of the local server's certificate
	LocalInsecure bool   // --local-insecure: do not verify the local server's certificate
	HostHeader    string // --host-header: Host for the local server; "rewrite" for its address

	BasicAuth []string // --basic-auth user:password, for visitors
	AllowIPs  []string // --allow-ip: admit visitors only from these prefixes
	DenyIPs   []string // --deny-ip: refuse visitors from these prefixes

	InspectAddr string // --inspect-addr; empty means defaultInspectAddr
	NoInspect   bool   // --no-inspect
	JSON        bool   // --json: one JSON object per event on stdout
	Quiet       bool   // --quiet: only the URLs and errors

	// TLSConfig trusts the system roots and CAFile's; nil without --ca-file.
	TLSConfig *tls.Config
	// LocalCA holds LocalCAFile's certificates; nil without --local-ca.
	LocalCA *x509.CertPool
	// Access holds the visitor rules of BasicAuth, AllowIPs and DenyIPs;
	// nil without any.
	Access *agent.Access
}

// NewCmdExpose returns `tunnel expose`. runF, if not nil, replaces running
// the agent, so tests can check how flags and environment are read.
func NewCmdExpose(f *Factory, runF func(*ExposeOptions) error) *cobra.Command {
	opts := &ExposeOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:   "expose -p PORT [-s NAME] [--relay URL] [--token TOKEN]",
		Short: "Give a local port a public URL on a relay",
		Long: `Connect to a relay and forward the traffic for a public name to a local port.

Prints the public URL and its WebSocket form on stdout (with a relay that
obtains certificates, once the name's certificate is ready), then one line
per HTTP request and two per WebSocket (opened; closed with its code,
duration, bytes and messages each way, visitor→server/server→visitor).
Status goes to stderr: where traffic goes, the relay and its round-trip
time, the inspector, reconnects. Reconnects by itself and keeps the URL;
Ctrl-C releases the name. Colour only on a terminal, never with NO_COLOR.
--quiet prints only the URLs and errors.

The inspector (http://127.0.0.1:4040 unless --inspect-addr says otherwise,
off with --no-inspect) lists recent requests with headers and bodies, replays
them to your server, and shows WebSocket frames and close codes, live. It
listens on loopback only unless you give another address (it then answers
to IP addresses only, not to host names: DNS rebinding). If its port is
taken, expose says so and runs without it. Its JSON API: GET /api/requests,
/api/requests/{id}, POST /api/requests/{id}/replay, GET /api/websockets,
/api/websockets/{id}, /api/events (server-sent events).

An https relay's certificate is verified against the system's roots; for a
relay whose certificate comes from a private CA, pass that CA's certificate
with --ca-file. A relay with agent tokens needs one: --token or TUNNEL_TOKEN.

Who may visit is yours to decide, and the relay enforces it before anything
reaches this machine, for plain requests and WebSockets alike:
  --basic-auth user:pass   visitors must log in as one of these users
                           (repeatable; only the password's SHA-256 is sent)
  --allow-ip CIDR          admit only these addresses (repeatable)
  --deny-ip CIDR           refuse these addresses; wins over --allow-ip
Addresses are CIDR prefixes like 203.0.113.0/24 or single IPs.

A local server that speaks only HTTPS: --local-https. Its certificate is
checked for --local-host against the system's roots, or only against the CA
in --local-ca (mkcert's rootCA.pem, say); --local-insecure accepts any
certificate, for a self-signed one you cannot get the CA of.
A local server that answers only to its own name: --host-header NAME sends
Host: NAME instead of the public host name, which it then finds in
X-Forwarded-Host; --host-header rewrite sends its address (localhost:PORT).
The relay does the rewrite; expose stops with an error if the relay is too
old to. Browsers still send Origin with the public host: a WebSocket server
that compares Origin with Host refuses the upgrade unless it allows that
origin.

Several tunnels, or settings in a file: see tunnel start --help.

Like the relay, expose runs on one thread of Go code (GOMAXPROCS=1) while
lightly loaded and on all CPUs once busy; GOMAXPROCS in the environment
fixes it instead.

` + jsonFields,
		Example: `  tunnel expose -p 8080 -s demo --relay https://example.com
  tunnel expose -p 8080 --relay https://relay.internal --ca-file internal-ca.pem
  TUNNEL_RELAY=http://localhost:8000 tunnel expose -p 3000
  TUNNEL_TOKEN=$(cat ~/.tunnel-token) tunnel expose -p 8080 -s demo --relay https://example.com
  tunnel expose -p 8080 --basic-auth ann:correct-horse --allow-ip 203.0.113.0/24
  tunnel expose -p 8080 --json | jq 'select(.event == "request" and .status >= 500)'
  tunnel expose -p 8443 --local-https --local-ca "$(mkcert -CAROOT)/rootCA.pem"
  tunnel expose -p 8443 --local-host 127.0.0.1 --local-https --local-insecure
  tunnel expose -p 8080 --host-header rewrite
  tunnel expose -p 80 --host-header myapp.test`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("relay") {
				v, err := envRelay(cmd, "it is used when --relay is not given")
				if err != nil {
					return err
				}
				if v != "" {
					opts.Relay = v
				}
			}
			if !cmd.Flags().Changed("port") {
				return usageErrorf(cmd, "no local port: pass -p PORT, the port your local server listens on")
			}
			if !validLocalHost(opts.LocalHost) {
				return usageErrorf(cmd, "--local-host %q is not a host name or IP address: give the host alone (the port is -p), e.g. localhost, 127.0.0.1 or ::1", opts.LocalHost)
			}
			if opts.CAFile != "" {
				cfg, err := tlsConfigTrusting(opts.CAFile)
				if err != nil {
					return usageErrorf(cmd, "--ca-file: %v", err)
				}
				opts.TLSConfig = cfg
			}
			if cmd.Flags().Changed("token") {
				if strings.TrimSpace(opts.Token) == "" {
					return usageErrorf(cmd, "--token is empty: pass the relay's token, or leave --token out for a relay without tokens")
				}
			} else if v := os.Getenv("TUNNEL_TOKEN"); v != "" {
				if strings.TrimSpace(v) == "" {
					return usageErrorf(cmd, "TUNNEL_TOKEN is only spaces: set it to the relay's token, or unset it for a relay without tokens")
				}
				opts.Token = v
			}
			opts.Token = strings.TrimSpace(opts.Token)
			access, err := visitorRules(opts)
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			opts.Access = access
			if err := localOptions(cmd, opts); err != nil {
				return err
			}
			if opts.JSON && opts.Quiet {
				return usageErrorf(cmd, "--json and --quiet do not go together: --json prints every event, --quiet almost none")
			}
			if opts.NoInspect && cmd.Flags().Changed("inspect-addr") {
				return usageErrorf(cmd, "--no-inspect and --inspect-addr do not go together")
			}
			if opts.InspectAddr != "" {
				if _, _, err := net.SplitHostPort(opts.InspectAddr); err != nil {
					return usageErrorf(cmd, "--inspect-addr %q is not host:port, e.g. 127.0.0.1:4040", opts.InspectAddr)
				}
			}
			if runF != nil {
				return runF(opts)
			}
			defer governProcs()()
			return exposeRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.VarP((*portFlag)(&opts.Port), "port", "p", "local `port` to expose (required)")
	fl.StringVarP(&opts.Name, "subdomain", "s", "", "public `name` to ask for, e.g. demo for demo.<domain> (default: a random name)")
	fl.StringVar(&opts.LocalHost, "local-host", "localhost", "`host` the local server listens on")
	fl.StringVar(&opts.Relay, "relay", defaultRelay, "relay `URL` (env TUNNEL_RELAY)")
	fl.StringVar(&opts.CAFile, "ca-file", "", "PEM `file` of CA certificates to trust for the relay, besides the system's")
	fl.StringVar(&opts.Token, "token", "", "`token` the relay requires of agents (env TUNNEL_TOKEN)")
	fl.BoolVar(&opts.LocalHTTPS, "local-https", false, "connect to the local server over HTTPS")
	fl.StringVar(&opts.LocalCAFile, "local-ca", "", "PEM `file` of the CA that signed the local server's certificate (with --local-https)")
	fl.BoolVar(&opts.LocalInsecure, "local-insecure", false, "accept any certificate from the local server (with --local-https)")
	fl.StringVar(&opts.HostHeader, "host-header", "", "Host header the local server gets: a `host[:port]`, or rewrite for its own address (default: the public host)")
	fl.StringArrayVar(&opts.BasicAuth, "basic-auth", nil, "`user:password` visitors must give; repeatable")
	fl.StringArrayVar(&opts.AllowIPs, "allow-ip", nil, "admit visitors only from this `CIDR` or IP; repeatable")
	fl.StringArrayVar(&opts.DenyIPs, "deny-ip", nil, "refuse visitors from this `CIDR` or IP; repeatable, wins over --allow-ip")
	fl.Var((*defaultString)(&opts.InspectAddr), "inspect-addr", "`address` of the local inspector (default "+defaultInspectAddr+")")
	fl.BoolVar(&opts.NoInspect, "no-inspect", false, "do not run the local inspector")
	fl.BoolVar(&opts.JSON, "json", false, "print every event as one JSON object per line on stdout (fields below)")
	fl.BoolVarP(&opts.Quiet, "quiet", "q", false, "print only the URLs and errors")
	return cmd
}

// localOptions checks --local-https, --local-ca, --local-insecure and
// --host-header, and reads the local CA.
func localOptions(cmd *cobra.Command, opts *ExposeOptions) error {
	switch {
	case opts.LocalCAFile != "" && opts.LocalInsecure:
		return usageErrorf(cmd, "--local-ca and --local-insecure do not go together: --local-ca verifies the local server's certificate, --local-insecure does not")
	case !opts.LocalHTTPS && (opts.LocalCAFile != "" || opts.LocalInsecure):
		flag := "--local-ca"
		if opts.LocalInsecure {
			flag = "--local-insecure"
		}
		return usageErrorf(cmd, "%s applies only to an HTTPS local server: add --local-https", flag)
	}
	if opts.LocalCAFile != "" {
		pool := x509.NewCertPool()
		if err := agent.AddCertsFromPEMFile(pool, opts.LocalCAFile); err != nil {
			return usageErrorf(cmd, "--local-ca: %v", err)
		}
		opts.LocalCA = pool
	}
	if cmd.Flags().Changed("host-header") && opts.HostHeader != agent.HostRewrite {
		if err := agent.ValidateHostHeader(opts.HostHeader); err != nil {
			return usageErrorf(cmd, "--host-header: %v (or rewrite, for the local server's address)", err)
		}
	}
	return nil
}

// visitorRules checks --basic-auth, --allow-ip and --deny-ip and turns them
// into the tunnel's access rules; nil when none is given.
func visitorRules(opts *ExposeOptions) (*agent.Access, error) {
	if len(opts.BasicAuth) == 0 && len(opts.AllowIPs) == 0 && len(opts.DenyIPs) == 0 {
		return nil, nil
	}
	a := &agent.Access{}
	for _, v := range opts.BasicAuth {
		// The value holds a password: errors describe it, never echo it.
		user, pass, ok := strings.Cut(v, ":")
		switch {
		case !ok:
			return nil, errors.New("--basic-auth wants user:password, and a value has no ':'")
		case user == "":
			return nil, errors.New("--basic-auth wants user:password, and a value has no user before the ':'")
		}
		a.BasicAuth = append(a.BasicAuth, agent.BasicUser(user, pass))
	}
	for _, list := range []struct {
		flag string
		in   []string
		out  *[]string
	}{{"--allow-ip", opts.AllowIPs, &a.AllowIPs}, {"--deny-ip", opts.DenyIPs, &a.DenyIPs}} {
		for _, v := range list.in {
			v = strings.TrimSpace(v)
			if _, err := netip.ParsePrefix(v); err != nil {
				if _, err := netip.ParseAddr(v); err != nil {
					return nil, fmt.Errorf("%s %q is not an IP address or a CIDR prefix like 203.0.113.0/24", list.flag, v)
				}
			}
			*list.out = append(*list.out, v)
		}
	}
	return a, nil
}

func exposeRun(ctx context.Context, opts *ExposeOptions) error {
	local := net.JoinHostPort(opts.LocalHost, strconv.Itoa(opts.Port))
	shown := local
	if opts.LocalHTTPS {
		shown = "https://" + local
	}
	inspectAddr := opts.InspectAddr
	switch {
	case opts.NoInspect:
		inspectAddr = ""
	case inspectAddr == "":
		inspectAddr = defaultInspectAddr
	}
	p := newPrinter(opts.IO, printTunnelURLs, printerOptions{
		JSON:  opts.JSON,
		Quiet: opts.Quiet,
		Color: !opts.JSON && useColor(opts.IO.Out, os.Getenv),
		Block: true,
		Local: shown,
		Relay: opts.Relay,
	})
	defer p.close()
	err := agent.Run(ctx, agent.Config{
		Relay: opts.Relay,
		Token: opts.Token,
		Tunnels: []agent.Tunnel{{
			Name: opts.Name, Local: local, Access: opts.Access,
			LocalHTTPS: opts.LocalHTTPS, LocalCA: opts.LocalCA, LocalInsecure: opts.LocalInsecure,
			HostHeader: opts.HostHeader,
		}},
		TLSConfig:   opts.TLSConfig,
		OnEvent:     p.onEvent,
		InspectAddr: inspectAddr,
		Logger:      opts.Logger,
	})
	return nameAdvice(err, "-s NAME")
}

// nameAdvice says where the user sets the name the relay refused (the
// relay's message cannot: it serves the Go API too).
func nameAdvice(err error, where string) error {
	if rev := (*agent.Revoked)(nil); errors.As(err, &rev) {
		return err // a name revoked while in use: no other name helps
	}
	if errors.Is(err, agent.ErrNameTaken) || errors.Is(err, agent.ErrNameNotAllowed) {
		return fmt.Errorf("%w (%s)", err, where)
	}
	return err
}

// envRelay returns $TUNNEL_RELAY, or an error that names the variable if
// it is not a relay URL: the agent's own error would show the value but
// not where it came from, which a variable set long ago in a profile or
// an environment file hides. used says when the variable applies.
func envRelay(cmd *cobra.Command, used string) (string, error) {
	v := os.Getenv("TUNNEL_RELAY")
	if v == "" {
		return "", nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.ForceQuery {
		return "", usageErrorf(cmd, "TUNNEL_RELAY %q is not a relay URL like https://example.com or http://localhost:8000 (%s): correct it or unset it", agent.RedactURL(v), used)
	}
	return v, nil
}

// useColor reports whether output to w may carry ANSI colours: only on a
// terminal, and never when NO_COLOR is set (https://no-color.org) or TERM
// is dumb.
func useColor(w io.Writer, getenv func(string) string) bool {
	if getenv("NO_COLOR") != "" || getenv("TERM") == "dumb" {
		return false
	}
	return isTerminal(w)
}

// isTerminal reports whether w is a character device, such as a terminal.
var isTerminal = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// defaultString is a string flag whose zero value stands for a default that
// the help shows, so options keep their zero value unless the flag is given.
type defaultString string

func (s *defaultString) String() string     { return string(*s) }
func (s *defaultString) Set(v string) error { *s = defaultString(v); return nil }
func (s *defaultString) Type() string       { return "string" }

// tlsConfigTrusting returns a client TLS configuration that trusts the
// system's roots and the certificates in the PEM file caFile.
func tlsConfigTrusting(caFile string) (*tls.Config, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if err := agent.AddCertsFromPEMFile(pool, caFile); err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool}, nil
}

// portFlag is an int flag that accepts only TCP port numbers.
type portFlag int

func (p *portFlag) String() string { return strconv.Itoa(int(*p)) }
func (p *portFlag) Type() string   { return "port" }

func (p *portFlag) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return errors.New("want a TCP port from 1 to 65535")
	}
	*p = portFlag(n)
	return nil
}

// validLocalHost reports whether h can be --local-host: a host name or an
// IP address, without a port, scheme or path.
func validLocalHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}
