package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// BenchOptions are the inputs of `tunnel bench`.
type BenchOptions struct {
	IO     IOStreams
	Logger *slog.Logger

	// Relay is a relay URL to measure instead of a relay process of our
	// own; its CPU and memory cannot be read then.
	Relay string
	Token string // the agent token for Relay: --token, else $TUNNEL_TOKEN
	JSON  bool   // print one JSON document instead of the table
	Quick bool   // small sizes and counts, for a smoke test
	// TLS has every visitor speak TLS: to the origin (direct), to a
	// forwarder that terminates it (floor) and to the relay (tunnel).
	TLS bool
	// TunnelGOMAXPROCS, if not 0, is the GOMAXPROCS of the relay and the
	// agent the bench starts (an operator's knob it lets one measure).
	TunnelGOMAXPROCS int

	BulkMiB       int           // size of each bulk download
	BulkRuns      int           // bulk downloads per path; the median counts
	SmallClients  int           // keep-alive clients of the small-request test
	SmallDuration time.Duration // how long the small-request test runs per path
	Echoes        int           // sequential WebSocket echoes of the RTT test
	WSConns       int           // WebSockets of the many-WebSockets test
	WSMessages    int           // echoes per WebSocket of the many-WebSockets test
	NewWS         int           // tries of the new-WebSocket test
	Idle          int           // idle WebSockets of the memory test

	// CPUProfile is a directory for a CPU profile of every process of the
	// run, the bench's own included; "" for none.
	CPUProfile string
}

// Limits of the bench's flags, each explained where it is checked.
const (
	// benchMaxIdle keeps the bench process and the relay, which each hold
	// one socket per idle WebSocket, under the 20,000 open files a process
	// may have here, with room for everything else.
	benchMaxIdle = 18000
	// benchMaxIdleFloor caps the floor's idle test: a forwarder blocked in
	// splice(2) holds a pipe (two descriptors) per direction, so each
	// connection costs it six descriptors.
	benchMaxIdleFloor = 3000
)

// NewCmdBench returns `tunnel bench`. runF, if not nil, replaces running
// the bench, so tests can check how flags are read.
func NewCmdBench(f *Factory, runF func(*BenchOptions) error) *cobra.Command {
	opts := &BenchOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:   "bench [--quick] [--json] [--tls] [--relay URL] [flags]",
		Short: "Measure the tunnel against a direct connection and two plain forwarders",
		Long: `Measure what the tunnel costs on this machine.

The bench starts a local server (the origin), a relay and an agent
('tunnel relay' and 'tunnel expose', or an agent for --relay URL), and the
floor: two plain TCP forwarders chained where the relay and the agent sit,
the least any relay-and-agent design could cost. Each is a process of its
own. Then it measures, in the same run, the three paths to the origin:

  direct   visitor → origin
  floor    visitor → forwarder → forwarder → origin
  tunnel   visitor → relay → agent → origin

and prints each figure with its ratio to direct and to the floor:

  1. bulk: MB/s of a large GET (median of --bulk-runs)
  2. small: 1 KiB GETs from --small-clients keep-alive clients: req/s,
     p50/p99 latency, new connections the origin saw during the run
  3. WebSocket echo round trip over sequential 32-byte messages, p50/p99
  4. --ws-conns WebSockets echoing --ws-messages messages each: msgs/s
  5. a new WebSocket and one echo, p50/p99
  6. idle WebSockets, each having echoed one 32 KiB message: memory (RSS)
     per connection of the relay and the agent, in fresh processes, and
     the slope over the second half (what one more connection costs, and
     projected to a million); then every one of them must echo again
  7. CPU time of the relay and the agent per GB, per 1,000 requests, per
     1,000 echoes of the many-WebSockets test and per idle connection; for
     the first three also the part spent in the kernel, which for a
     forwarder is nearly all of it

With --cpuprofile DIR each process writes a CPU profile for its whole run
into DIR, named after it (origin.pprof, relay.pprof, agent.pprof,
floor-forwarder-1.pprof, idle-relay.pprof, bench.pprof for the visitors,
…): read one with 'go tool pprof DIR/relay.pprof'. To profile one scenario,
shrink the others (--bulk-mib 1 --echoes 1 …). Any tunnel command writes
such a profile to the file named by $TUNNEL_CPUPROFILE.

With --tls every visitor speaks HTTPS and wss://, as visitors of a
public relay do: the origin serves HTTPS for the direct path, both
forwarders accept TLS and the first speaks TLS to the second, and the relay
serves HTTPS to visitors and to its agent, all with a certificate for
localhost from a CA made for the run. The floor then copies through user
space too: TLS cannot be spliced.

The relay and the agent govern their own GOMAXPROCS, as they do outside the
bench: one P while lightly loaded (sparing the scheduler's thread wake-ups
at every hand-off), all of them once busy. --tunnel-gomaxprocs N fixes it
at N for both instead (the floor's forwarders keep Go's default).

Ratios within one run are what to compare: absolute figures depend on the
machine and on what else runs on it. The default run takes under a minute on
two cores; --quick takes a few seconds and proves nothing.

The idle test puts every WebSocket through one tunnel of one agent, as a
user's busy tunnel would be; the relay it starts for it allows that many
streams per tunnel (limits.max_streams_per_tunnel in a --config file).`,
		Example: `  tunnel bench
  tunnel bench --json > bench.json
  tunnel bench --idle 5000
  tunnel bench --tls
  tunnel bench --tunnel-gomaxprocs 1
  tunnel bench --relay https://example.com --token "$TOKEN"`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fl := cmd.Flags()
			if opts.Quick {
				// --quick shrinks whatever was not set explicitly.
				for name, v := range map[string]string{
					"bulk-mib": "16", "small-duration": "1s", "echoes": "300",
					"ws-conns": "20", "ws-messages": "50", "new-ws": "30", "idle": "200",
				} {
					if !fl.Changed(name) {
						fl.Set(name, v)
					}
				}
			}
			if err := checkBenchOptions(opts); err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			if fl.Changed("token") && opts.Relay == "" {
				return usageErrorf(cmd, "--token is the agent token for --relay; the relay the bench starts itself needs none: drop --token, or add --relay URL")
			}
			if !fl.Changed("token") && opts.Relay != "" {
				opts.Token = os.Getenv("TUNNEL_TOKEN")
			}
			if runF != nil {
				return runF(opts)
			}
			return benchRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Relay, "relay", "", "measure the relay at this `URL` instead of starting one (its CPU and memory are not measured)")
	fl.StringVar(&opts.Token, "token", "", "agent `token` for --relay (env TUNNEL_TOKEN)")
	fl.BoolVar(&opts.JSON, "json", false, "print one JSON document with every figure instead of the table")
	fl.BoolVar(&opts.Quick, "quick", false, "a short run with small sizes, to check that everything works")
	fl.BoolVar(&opts.TLS, "tls", false, "visitors speak HTTPS and wss:// on every path, with a throwaway CA for localhost")
	fl.IntVar(&opts.TunnelGOMAXPROCS, "tunnel-gomaxprocs", 0, "run the relay and the agent with GOMAXPROCS fixed at `N` (0: their own, one P while lightly loaded, all once busy)")
	fl.IntVar(&opts.BulkMiB, "bulk-mib", 256, "`MiB` per bulk download")
	fl.IntVar(&opts.BulkRuns, "bulk-runs", 3, "bulk downloads per path; the median is reported")
	fl.IntVar(&opts.SmallClients, "small-clients", 32, "keep-alive `clients` of the small-request test")
	fl.DurationVar(&opts.SmallDuration, "small-duration", 5*time.Second, "how long the small-request test runs per path")
	fl.IntVar(&opts.Echoes, "echoes", 3000, "sequential 32-byte WebSocket echoes of the round-trip test")
	fl.IntVar(&opts.WSConns, "ws-conns", 100, "WebSockets of the many-WebSockets test (at most 150)")
	fl.IntVar(&opts.WSMessages, "ws-messages", 500, "echoes per WebSocket of the many-WebSockets test")
	fl.IntVar(&opts.NewWS, "new-ws", 300, "tries of the new-WebSocket-and-one-echo test")
	fl.IntVar(&opts.Idle, "idle", 1000, fmt.Sprintf("idle WebSockets of the memory test (at most %d)", benchMaxIdle))
	fl.StringVar(&opts.CPUProfile, "cpuprofile", "", "write a CPU profile (pprof) of each process of the run into `directory`: relay.pprof, agent.pprof, …")
	cmd.AddCommand(NewCmdBenchOrigin(f, nil), NewCmdBenchForward(f, nil))
	return cmd
}

func checkBenchOptions(o *BenchOptions) error {
	for _, c := range []struct {
		flag      string
		v, lo, hi int
	}{
		{"--bulk-mib", o.BulkMiB, 1, 16384},
		{"--bulk-runs", o.BulkRuns, 1, 15},
		{"--small-clients", o.SmallClients, 1, 150},
		{"--echoes", o.Echoes, 1, 1_000_000},
		// Each WebSocket is a stream to the one agent of the main tests.
		{"--ws-conns", o.WSConns, 1, 150},
		{"--ws-messages", o.WSMessages, 1, 1_000_000},
		{"--new-ws", o.NewWS, 1, 100_000},
		{"--idle", o.Idle, 1, benchMaxIdle},
		{"--tunnel-gomaxprocs", o.TunnelGOMAXPROCS, 0, 1024},
	} {
		if c.v < c.lo || c.v > c.hi {
			return fmt.Errorf("%s must be %d to %d, got %d", c.flag, c.lo, c.hi, c.v)
		}
	}
	if o.SmallDuration < 100*time.Millisecond || o.SmallDuration > 10*time.Minute {
		return fmt.Errorf("--small-duration must be 100ms to 10m, got %v", o.SmallDuration)
	}
	if o.Relay != "" && !strings.HasPrefix(o.Relay, "http://") && !strings.HasPrefix(o.Relay, "https://") {
		return fmt.Errorf("--relay wants an http:// or https:// URL, got %q", o.Relay)
	}
	if o.TLS && strings.HasPrefix(o.Relay, "http://") {
		return fmt.Errorf("--tls has visitors speak HTTPS on every path, but --relay %s serves plain HTTP: give the relay's https:// URL, or drop --tls", o.Relay)
	}
	return nil
}

// bench is one run: the processes it started and the three paths.
type bench struct {
	opts     *BenchOptions
	exe      string
	children benchChildren
	progress func(format string, args ...any)

	profiles    []string    // CPU profiles the children were asked to write
	certs       *localCerts // --tls: the certificate every hop serves
	visitorTLS  *tls.Config // --tls: the system's roots and the run's CA; nil: the system's
	agentArgs   []string    // extra arguments of every `tunnel expose`
	origin      string      // the origin's address
	originStats string      // where the origin tells how many connections it accepted
	paths       []*benchPath
}

// benchPath is one way from the visitor to the origin.
type benchPath struct {
	name  string   // "direct", "floor" or "tunnel"
	bases []string // base URLs; the idle test spreads over several agents
	// hops are the processes in the middle: [0] near the visitor (relay or
	// first forwarder), [1] near the origin (agent or second forwarder).
	// Empty for direct, and [0] for a relay we did not start.
	hops [2]procGroup
	// tls is what the path's visitors trust, nil for the system's roots.
	tls *tls.Config
}

func benchRun(ctx context.Context, opts *BenchOptions) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench: finding this program to start its helpers: %w", err)
	}
	b := &bench{opts: opts, exe: exe, progress: func(format string, args ...any) {
		fmt.Fprintf(opts.IO.ErrOut, "bench: "+format+"\n", args...)
	}}
	if opts.TLS {
		dir, err := os.MkdirTemp("", "tunnel-bench-tls-")
		if err != nil {
			return fmt.Errorf("bench: --tls: %w", err)
		}
		defer os.RemoveAll(dir) // after the children have stopped
		if b.certs, err = writeLocalCerts(dir, 24*time.Hour, "localhost", "*.localhost"); err != nil {
			return fmt.Errorf("bench: --tls: %w", err)
		}
		// The system's roots too, for an https --relay.
		if b.visitorTLS, err = tlsConfigTrusting(b.certs.CAFile); err != nil {
			return fmt.Errorf("bench: --tls: %w", err)
		}
	}
	defer b.children.stopAll()
	if opts.CPUProfile != "" {
		stop, err := b.startProfiles()
		if err != nil {
			return err
		}
		defer stop()
	}
	res := &benchResult{Machine: benchMachine(), Params: benchParamsOf(opts)}
	if opts.Relay != "" {
		res.Machine.Relay = opts.Relay
	}

	if err := b.startPaths(ctx); err != nil {
		return err
	}
	if err := b.runAll(ctx, res); err != nil {
		return err
	}
	b.children.stopAll()
	b.checkProfiles()
	if opts.JSON {
		return res.writeJSON(opts.IO.Out)
	}
	return res.writeTable(opts.IO.Out)
}

// start runs `tunnel args...` as a child, with env added to the bench's
// environment, and waits for its readiness line.
func (b *bench) start(ctx context.Context, name string, env []string, onStdout bool, match func(string) (string, bool), args ...string) (*benchChild, string, error) {
	// A child profiles itself only when asked for here, never because
	// the bench's own environment says so: they would share one file.
	profile := cpuProfileEnv + "="
	if b.opts.CPUProfile != "" {
		file := filepath.Join(b.opts.CPUProfile, strings.ReplaceAll(name, " ", "-")+".pprof")
		profile = cpuProfileEnv + "=" + file
		b.profiles = append(b.profiles, file)
	}
	env = append([]string{profile}, env...)
	c, err := startBenchChild(b.exe, name, env, onStdout, match, args...)
	if err != nil {
		return nil, "", err
	}
	b.children.add(c)
	v, err := c.waitReady(ctx)
	if err != nil {
		return nil, "", err
	}
	return c, v, nil
}

func prefixMatch(prefix string) func(string) (string, bool) {
	return func(line string) (string, bool) {
		rest, ok := strings.CutPrefix(line, prefix)
		return rest, ok
	}
}

// startFloor starts two forwarders in a chain to the origin and returns
// the first one's URL. With --tls both accept TLS and the first speaks TLS
// to the second, as a relay and its agent would.
func (b *bench) startFloor(ctx context.Context, label string) (url string, hops [2]procGroup, err error) {
	var tlsIn, tlsOut []string
	if b.certs != nil {
		tlsIn = []string{"--tls-cert", b.certs.CertFile, "--tls-key", b.certs.KeyFile}
		tlsOut = []string{"--to-ca", b.certs.CAFile}
	}
	args := append([]string{"bench", "forward", "--to", b.origin}, tlsIn...)
	fwd2, addr2, err := b.start(ctx, label+" forwarder 2", nil, true, prefixMatch(benchForwardReady), args...)
	if err != nil {
		return "", hops, err
	}
	args = slices.Concat([]string{"bench", "forward", "--to", addr2}, tlsIn, tlsOut)
	fwd1, addr1, err := b.start(ctx, label+" forwarder 1", nil, true, prefixMatch(benchForwardReady), args...)
	if err != nil {
		return "", hops, err
	}
	return b.localURL(addr1), [2]procGroup{{fwd1}, {fwd2}}, nil
}

// localURL is the URL of a hop of ours listening on addr: https with
// --tls, under the name its certificate has.
func (b *bench) localURL(addr string) string {
	if b.certs == nil {
		return "http://" + addr
	}
	_, port, _ := net.SplitHostPort(addr)
	return "https://localhost:" + port
}

// tunnelEnv is what the relay and the agent get in their environment on
// top of the bench's.
func (b *bench) tunnelEnv() []string {
	if b.opts.TunnelGOMAXPROCS == 0 {
		return nil
	}
	return []string{"GOMAXPROCS=" + strconv.Itoa(b.opts.TunnelGOMAXPROCS)}
}

// startRelay starts `tunnel relay` on a free loopback port and returns its
// URL, or returns --relay's URL without starting anything.
//
// streams is the most connections one tunnel will carry at once; above the
// relay's default (1000) the relay gets a config file that allows it.
func (b *bench) startRelay(ctx context.Context, label string, streams int) (url string, relay procGroup, err error) {
	if b.opts.Relay != "" {
		return b.opts.Relay, nil, nil
	}
	args := []string{"relay", "--domain", "localhost", "--addr", "127.0.0.1:0", "--admin-addr=", "--grace", "0", "--drain-timeout", "1s"}
	if b.certs != nil {
		args = append(args, "--tls-cert", b.certs.CertFile, "--tls-key", b.certs.KeyFile, "--http-addr=")
	}
	if streams > 1000 {
		dir, err := os.MkdirTemp("", "tunnel-bench-")
		if err != nil {
			return "", nil, err
		}
		defer os.RemoveAll(dir) // the relay reads it at start
		file := filepath.Join(dir, "relay.yaml")
		conf := fmt.Sprintf("limits:\n  max_streams_per_tunnel: %d\n", streams)
		if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
			return "", nil, err
		}
		args = append(args, "--config", file)
	}
	c, line, err := b.start(ctx, label, b.tunnelEnv(), false, prefixMatch("relay listening on "), args...)
	if err != nil {
		return "", nil, err
	}
	addr, _, _ := strings.Cut(line, ",")
	return b.localURL(addr), procGroup{c}, nil
}

// startAgent starts `tunnel expose` for the origin on relayURL and returns
// the tunnel's URL.
func (b *bench) startAgent(ctx context.Context, label, relayURL, name string) (*benchChild, string, error) {
	env, args := b.agentCommand(relayURL, name)
	// expose prints the URL first, then a line per request, which the
	// child's reader drains.
	return b.start(ctx, label, env, true, func(line string) (string, bool) {
		return line, strings.HasPrefix(line, "http://") || strings.HasPrefix(line, "https://")
	}, args...)
}

// agentCommand returns the environment and arguments of the agent's
// `tunnel expose`. The token goes in the environment (TUNNEL_TOKEN): an
// argument would show in every local user's ps.
func (b *bench) agentCommand(relayURL, name string) (env, args []string) {
	_, port, _ := net.SplitHostPort(b.origin)
	args = append([]string{"expose", "--relay", relayURL, "-p", port, "--local-host", "127.0.0.1", "-s", name}, b.agentArgs...)
	if b.certs != nil {
		args = append(args, "--ca-file", b.certs.CAFile)
	}
	env = b.tunnelEnv()
	if b.opts.Token != "" {
		env = append(env, "TUNNEL_TOKEN="+b.opts.Token)
	}
	return env, args
}

// tunnelName is the name the bench asks for: on a relay of ours any name
// is free, on someone else's a random suffix avoids taking a real one.
func (b *bench) tunnelName(base string) string {
	if b.opts.Relay == "" {
		return base
	}
	return base + "-" + strconv.FormatInt(time.Now().UnixNano()%1_000_000, 36)
}

// startPaths starts the origin, the floor, the relay and the agent.
func (b *bench) startPaths(ctx context.Context) error {
	b.progress("starting the origin, two forwarders, a relay and an agent")
	args := []string{"bench", "origin"}
	if b.certs != nil {
		args = append(args, "--tls-cert", b.certs.CertFile, "--tls-key", b.certs.KeyFile)
	}
	_, line, err := b.start(ctx, "origin", nil, true, prefixMatch(benchOriginReady), args...)
	if err != nil {
		return err
	}
	origin, stats, ok := strings.Cut(line, ", stats on ")
	if !ok {
		return fmt.Errorf("bench origin said %q", line)
	}
	stats, originTLS, _ := strings.Cut(stats, ", https on ")
	if (originTLS != "") != (b.certs != nil) {
		return fmt.Errorf("bench origin said %q", line)
	}
	b.origin, b.originStats = origin, stats
	direct := "http://" + origin
	if b.certs != nil {
		direct = b.localURL(originTLS)
	}
	// An agent with a traffic inspector runs it by default on one fixed
	// port, which only the first of several agents would get: give each
	// its own, so that every agent measured runs as a user's would.
	if help, err := exec.CommandContext(ctx, b.exe, "expose", "--help").Output(); err == nil && bytes.Contains(help, []byte("--inspect-addr")) {
		b.agentArgs = []string{"--inspect-addr", "127.0.0.1:0"}
	}

	floorURL, floorHops, err := b.startFloor(ctx, "floor")
	if err != nil {
		return err
	}
	relayURL, relay, err := b.startRelay(ctx, "relay", 0)
	if err != nil {
		return err
	}
	agent, tunnelURL, err := b.startAgent(ctx, "agent", relayURL, b.tunnelName("bench"))
	if err != nil {
		return err
	}
	b.paths = []*benchPath{
		{name: "direct", bases: []string{direct}, tls: b.visitorTLS},
		{name: "floor", bases: []string{floorURL}, hops: floorHops, tls: b.visitorTLS},
		{name: "tunnel", bases: []string{tunnelURL}, hops: [2]procGroup{relay, {agent}}, tls: b.visitorTLS},
	}
	return nil
}

// alive checks that every child is still running: a figure measured while
// one had died would be a lie.
func (b *bench) alive() error {
	b.children.mu.Lock()
	defer b.children.mu.Unlock()
	for _, c := range b.children.list {
		if err := c.alive(); err != nil {
			return err
		}
	}
	return nil
}

// startProfiles creates --cpuprofile's directory and starts the bench's
// own profile there, unless $TUNNEL_CPUPROFILE already has this process
// profiled.
func (b *bench) startProfiles() (stop func(), err error) {
	dir := b.opts.CPUProfile
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: --cpuprofile: %w (give a directory you can write)", err)
	}
	if os.Getenv(cpuProfileEnv) != "" {
		return func() {}, nil
	}
	stop, err = profileTo(filepath.Join(dir, "bench.pprof"))
	if err != nil {
		return nil, fmt.Errorf("bench: --cpuprofile: %w (give a directory you can write)", err)
	}
	return stop, nil
}

// checkProfiles says where the children's CPU profiles are, and which
// child did not write one (it was killed: it did not stop in time).
func (b *bench) checkProfiles() {
	if b.opts.CPUProfile == "" {
		return
	}
	for _, file := range b.profiles {
		if fi, err := os.Stat(file); err != nil || fi.Size() == 0 {
			b.progress("no CPU profile in %s: the process did not stop in time", file)
		}
	}
	b.progress("CPU profiles in %s", b.opts.CPUProfile)
}
