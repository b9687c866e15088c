package main

import (
	"context"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/agent"
)

// StartOptions are the inputs of `tunnel start`.
type StartOptions struct {
	IO     IOStreams
	Logger *slog.Logger

	ConfigFile string // --config: YAML file of the relay and the tunnels
	JSON       bool   // --json: one JSON object per event on stdout
	Quiet      bool   // --quiet: only the URLs and errors

	// Config is the file's, with TUNNEL_RELAY and TUNNEL_TOKEN applied.
	Config *agent.Config
}

// NewCmdStart returns `tunnel start`. runF, if not nil, replaces running
// the agent, so tests can check how the file and environment are read.
func NewCmdStart(f *Factory, runF func(*StartOptions) error) *cobra.Command {
	opts := &StartOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:   "start --config FILE",
		Short: "Run the tunnels listed in a configuration file",
		Long: `Connect to a relay and serve every tunnel of a YAML configuration file at
once, over one connection: expose for several local servers, with the
settings in a file instead of flags (and passwords out of the process list).

  relay: https://example.com          # $TUNNEL_RELAY wins over it
  token_file: relay-token             # or token: …; $TUNNEL_TOKEN wins over it
  ca_file: relay-ca.pem               # like --ca-file
  inspect_addr: 127.0.0.1:4040        # run the inspector (default: none)
  tunnels:
    - name: demo                      # like -s; default: a random name
      port: 8080                      # like -p; or local: 192.0.2.10:8080
      basic_auth: ["ann:correct-horse"]
      allow_ip: [203.0.113.0/24]
      deny_ip: [203.0.113.7]
    - name: backend
      local: 127.0.0.1:8443
      local_https: true
      local_ca: dev-ca.pem            # or local_insecure: true
      host_header: rewrite            # or a host[:port]

A tunnel's name is expose's -s and port its -p (or local: host:port); its
other keys are expose's flags with _ for -: see tunnel expose --help for
what each does. Files the configuration names are read relative to its
directory. Unknown keys are errors, reported with their line. Without a
relay in the file or TUNNEL_RELAY: ` + defaultRelay + `.

The output is expose's: the URLs on stdout, a status block on stderr with
where each tunnel's traffic goes, then request lines. deploy/tunnels.example.yaml
is a commented example; deploy/systemd/tunnel-agent@.service runs
tunnel start as a service.`,
		Example: `  tunnel start --config tunnels.yaml
  TUNNEL_TOKEN=$(cat ~/.tunnel-token) tunnel start --config tunnels.yaml
  tunnel start --config tunnels.yaml --json | jq 'select(.event == "request")'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.ConfigFile == "" {
				return usageErrorf(cmd, "no configuration: pass --config FILE, a YAML file listing the tunnels (see --help)")
			}
			if opts.JSON && opts.Quiet {
				return usageErrorf(cmd, "--json and --quiet do not go together: --json prints every event, --quiet almost none")
			}
			cfg, err := agent.LoadConfigFile(opts.ConfigFile)
			if err != nil {
				return err
			}
			v, err := envRelay(cmd, "it wins over relay: in "+opts.ConfigFile)
			if err != nil {
				return err
			}
			if v != "" {
				cfg.Relay = v
			}
			if cfg.Relay == "" {
				cfg.Relay = defaultRelay
			}
			if v := os.Getenv("TUNNEL_TOKEN"); v != "" {
				if strings.TrimSpace(v) == "" {
					return usageErrorf(cmd, "TUNNEL_TOKEN is only spaces: set it to the relay's token, or unset it to use the file's")
				}
				cfg.Token = strings.TrimSpace(v)
			}
			opts.Config = cfg
			if runF != nil {
				return runF(opts)
			}
			defer governProcs()()
			return startRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.ConfigFile, "config", "", "YAML `file` listing the relay and the tunnels (required)")
	fl.BoolVar(&opts.JSON, "json", false, "print every event as one JSON object per line on stdout (see tunnel expose --help)")
	fl.BoolVarP(&opts.Quiet, "quiet", "q", false, "print only the URLs and errors")
	return cmd
}

func startRun(ctx context.Context, opts *StartOptions) error {
	cfg := *opts.Config
	locals := make([]string, len(cfg.Tunnels))
	for i, t := range cfg.Tunnels {
		locals[i] = t.Local
		if t.LocalHTTPS {
			locals[i] = "https://" + t.Local
		}
	}
	p := newPrinter(opts.IO, printTunnelURLs, printerOptions{
		JSON:   opts.JSON,
		Quiet:  opts.Quiet,
		Color:  !opts.JSON && useColor(opts.IO.Out, os.Getenv),
		Block:  true,
		Locals: locals,
		Relay:  cfg.Relay,
		// start has no --inspect-addr: the address is the file's.
		InspectSetting: "inspect_addr: in " + opts.ConfigFile,
	})
	defer p.close()
	cfg.OnEvent = p.onEvent
	cfg.Logger = opts.Logger
	return nameAdvice(agent.Run(ctx, cfg), "the tunnel's name: in "+opts.ConfigFile)
}
