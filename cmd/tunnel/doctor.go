package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/agent/doctor"
)

// DoctorOptions are the inputs of `tunnel doctor`.
type DoctorOptions struct {
	IO     IOStreams
	Logger *slog.Logger

	Relay   string        // relay URL: --relay, else $TUNNEL_RELAY, else defaultRelay
	Name    string        // tunnel name to test with; empty: a random one
	Token   string        // --token, else $TUNNEL_TOKEN
	CAFile  string        // extra root certificates to trust for an https relay
	Timeout time.Duration // bound of each check
	JSON    bool          // --json: the report as one JSON object

	// RootCAs are the system roots and CAFile's; nil without --ca-file.
	RootCAs *x509.CertPool
}

// NewCmdDoctor returns `tunnel doctor`. runF, if not nil, replaces running
// the checks, so tests can check how flags and environment are read.
func NewCmdDoctor(f *Factory, runF func(*DoctorOptions) error) *cobra.Command {
	opts := &DoctorOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:   "doctor [--relay URL] [-s NAME] [--token TOKEN] [--ca-file FILE]",
		Short: "Check that a relay is ready: DNS, certificates, token, and a round trip",
		Long: `Check a relay from this machine, as an agent and as a visitor would use it,
and print one line per check with a one-line fix for each failure:

  DNS relay    the relay's host name resolves
  TLS relay    its certificate verifies (system roots, or --ca-file), covers
               the name, and is not expired; days left (warning under 14)
               and issuer
  agent        an agent connects and authenticates (--token or TUNNEL_TOKEN)
               and gets a temporary tunnel: -s NAME, or a random name
  DNS tunnel   the tunnel's name resolves to the relay's addresses, which
               only a wildcard record (*.example.com) provides
  TLS tunnel   the certificate for the tunnel's name, as for the relay's
  HTTP         a public request to the tunnel comes back with a random nonce
  WebSocket    a public WebSocket to the tunnel echoes a message

The temporary tunnel is served inside this command: no local port is needed,
and the name is released when it ends. With -s, pick a name none of your
agents holds: a connected agent keeps its name (the agent check fails), and a
disconnected one's held name passes to doctor, so that agent's reconnect is
refused and it stops. Visitors' requests go to the relay's
address with the tunnel's name as Host, so the round trip is tested even when
the tunnel's DNS record is missing. Each check gives up after --timeout.

Exits 1 if any check failed (warnings do not count). --json prints the
report as one object: relay, tunnel, ok, and checks, each with id, title,
status (pass, warn, fail or skip) and detail, and fix (for warn and fail)
and latency_ms (where a time was measured) when they apply.`,
		Example: `  tunnel doctor --relay https://example.com
  tunnel doctor --relay https://example.com -s demo --token "$(cat ~/.tunnel-token)"
  tunnel doctor --relay https://relay.internal --ca-file internal-ca.pem
  TUNNEL_RELAY=https://example.com tunnel doctor --json | jq -r '.checks[] | select(.status == "fail") | .fix'`,
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
			if cmd.Flags().Changed("token") {
				if strings.TrimSpace(opts.Token) == "" {
					return usageErrorf(cmd, "--token is empty: pass the relay's token, or leave --token out for a relay without tokens")
				}
			} else {
				opts.Token = os.Getenv("TUNNEL_TOKEN")
			}
			opts.Token = strings.TrimSpace(opts.Token)
			if opts.CAFile != "" {
				cfg, err := tlsConfigTrusting(opts.CAFile)
				if err != nil {
					return usageErrorf(cmd, "--ca-file: %v", err)
				}
				opts.RootCAs = cfg.RootCAs
			}
			if opts.Timeout <= 0 {
				return usageErrorf(cmd, "--timeout must be positive, e.g. 10s")
			}
			if runF != nil {
				return runF(opts)
			}
			return doctorRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Relay, "relay", defaultRelay, "relay `URL` (env TUNNEL_RELAY)")
	fl.StringVarP(&opts.Name, "subdomain", "s", "", "tunnel `name` to test with (default: a random name)")
	fl.StringVar(&opts.Token, "token", "", "`token` the relay requires of agents (env TUNNEL_TOKEN)")
	fl.StringVar(&opts.CAFile, "ca-file", "", "PEM `file` of CA certificates to trust for the relay, besides the system's")
	fl.DurationVar(&opts.Timeout, "timeout", doctor.DefaultTimeout, "give up on each check after this `duration`")
	fl.BoolVar(&opts.JSON, "json", false, "print the report as one JSON object")
	return cmd
}

func doctorRun(ctx context.Context, opts *DoctorOptions) error {
	cfg := doctor.Config{
		Relay:   opts.Relay,
		Name:    opts.Name,
		Token:   opts.Token,
		RootCAs: opts.RootCAs,
		Timeout: opts.Timeout,
		Logger:  opts.Logger,
	}
	if !opts.JSON {
		// The header comes with the first check, after the configuration
		// passed doctor.Run's own checks.
		header := doctor.Header(opts.Relay)
		cfg.OnCheck = func(c doctor.Check) {
			io.WriteString(opts.IO.Out, header+doctor.FormatCheck(c))
			header = ""
		}
	}
	rep, err := doctor.Run(ctx, cfg)
	if rep == nil {
		return err
	}
	if errors.Is(err, context.Canceled) {
		// The checks that did not run are not in the report: its summary
		// ("No check failed", "ok": true) would vouch for them.
		return errors.New("doctor interrupted before all checks ran")
	}
	if opts.JSON {
		if err := rep.WriteJSON(opts.IO.Out); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(opts.IO.Out, "\n%s\n", rep.Summary())
	}
	if err != nil {
		return err
	}
	return doctorError(rep)
}

// doctorError is the one line main prints when checks failed: the first
// failure with its fix, and how many more there are.
func doctorError(rep *doctor.Report) error {
	failed := rep.Failed()
	if len(failed) == 0 {
		return nil
	}
	c := failed[0]
	msg := fmt.Sprintf("%s check failed: %s; fix: %s", c.Title(), c.Detail, c.Fix)
	switch n := len(failed) - 1; n {
	case 0:
	case 1:
		msg += " (and 1 more failed check above)"
	default:
		msg += fmt.Sprintf(" (and %d more failed checks above)", n)
	}
	return errors.New(msg)
}
