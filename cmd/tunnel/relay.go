package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
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
	Addr         string        // listen address; empty means relay.Config's default
	Grace        time.Duration // how long a lost agent's names stay reserved; 0 frees them at once
	DrainTimeout time.Duration // how long shutdown waits for in-flight requests
}

// NewCmdRelay returns `tunnel relay`. runF, if not nil, replaces running the
// relay, so tests can check how flags and environment are read.
func NewCmdRelay(f *Factory, runF func(*RelayOptions) error) *cobra.Command {
	opts := &RelayOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:   "relay --domain DOMAIN [--addr HOST:PORT]",
		Short: "Run the public relay that tunnels connect to",
		Long: `Serve tunnels at <name>.DOMAIN and accept agents on the same port.

DOMAIN needs a wildcard DNS record (*.DOMAIN) pointing at this machine; use
localhost to try it locally, since browsers and curl resolve *.localhost to
loopback. SIGINT or SIGTERM drains in-flight requests and exits; a second
signal exits at once.`,
		Example: `  tunnel relay --domain localhost
  TUNNEL_DOMAIN=example.com tunnel relay --addr :80`,
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
			if runF != nil {
				return runF(opts)
			}
			return relayRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Domain, "domain", "", "`apex` domain; tunnels are served at <name>.DOMAIN (env TUNNEL_DOMAIN)")
	fl.StringVar(&opts.Addr, "addr", "", "listen `address` (default 127.0.0.1:8000 for localhost, :80 otherwise)")
	fl.DurationVar(&opts.Grace, "grace", 60*time.Second, "how long a disconnected agent's names stay reserved for it")
	fl.DurationVar(&opts.DrainTimeout, "drain-timeout", 30*time.Second, "how long shutdown waits for in-flight requests")
	return cmd
}

func relayRun(ctx context.Context, opts *RelayOptions) error {
	return relay.Run(ctx, relayConfig(opts), func(addr net.Addr) {
		fmt.Fprintf(opts.IO.ErrOut, "relay listening on %s, serving %s\n", addr, exampleURL(opts.Domain, addr))
	})
}

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
	return cfg
}

// exampleURL shows where a tunnel will be reached, e.g.
// "http://<name>.localhost:8000".
func exampleURL(domain string, addr net.Addr) string {
	u := "http://<name>." + strings.TrimSuffix(strings.ToLower(strings.TrimSpace(domain)), ".")
	if _, port, err := net.SplitHostPort(addr.String()); err == nil && port != "80" {
		u += ":" + port
	}
	return u
}
