package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/agent"
)

// defaultRelay pairs with `tunnel relay --domain localhost`, which listens
// on 127.0.0.1:8000.
const defaultRelay = "http://localhost:8000"

// ExposeOptions are the inputs of `tunnel expose`.
type ExposeOptions struct {
	IO     IOStreams
	Logger *slog.Logger

	Port      int    // local port, 1-65535
	LocalHost string // host the local server listens on
	Name      string // public name to ask for; empty lets the relay pick
	Relay     string // relay URL: --relay, else $TUNNEL_RELAY, else defaultRelay
}

// NewCmdExpose returns `tunnel expose`. runF, if not nil, replaces running
// the agent, so tests can check how flags and environment are read.
func NewCmdExpose(f *Factory, runF func(*ExposeOptions) error) *cobra.Command {
	opts := &ExposeOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:   "expose -p PORT [-s NAME] [--relay URL]",
		Short: "Give a local port a public URL on a relay",
		Long: `Connect to a relay and forward the traffic for a public name to a local port.

Prints the public URL and its WebSocket form on stdout, then one line per
request. Reconnects by itself and keeps the URL; Ctrl-C releases the name.`,
		Example: `  tunnel expose -p 8080 -s demo --relay https://example.com
  TUNNEL_RELAY=http://localhost:8000 tunnel expose -p 3000`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("relay") {
				if v := os.Getenv("TUNNEL_RELAY"); v != "" {
					opts.Relay = v
				}
			}
			if !cmd.Flags().Changed("port") {
				return usageErrorf(cmd, "no local port: pass -p PORT, the port your local server listens on")
			}
			if runF != nil {
				return runF(opts)
			}
			return exposeRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.VarP((*portFlag)(&opts.Port), "port", "p", "local `port` to expose (required)")
	fl.StringVarP(&opts.Name, "subdomain", "s", "", "public `name` to ask for, e.g. demo for demo.<domain> (default: a random name)")
	fl.StringVar(&opts.LocalHost, "local-host", "localhost", "`host` the local server listens on")
	fl.StringVar(&opts.Relay, "relay", defaultRelay, "relay `URL` (env TUNNEL_RELAY)")
	return cmd
}

func exposeRun(ctx context.Context, opts *ExposeOptions) error {
	p := newStatusPrinter(opts.IO, printTunnelURLs)
	defer p.close()
	return agent.Run(ctx, agent.Config{
		Relay:   opts.Relay,
		Tunnels: []agent.Tunnel{{Name: opts.Name, Local: net.JoinHostPort(opts.LocalHost, strconv.Itoa(opts.Port))}},
		OnEvent: p.onEvent,
		Logger:  opts.Logger,
	})
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
