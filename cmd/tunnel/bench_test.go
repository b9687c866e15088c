package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBenchQuickJSON runs `tunnel bench --quick --json` through the built
// binary, which starts the origin, forwarders, relay and agents as
// processes of their own, and checks that the document holds every figure
// with ratios computed from the same run; then the same with --tls, where
// every hop a visitor reaches accepts TLS only, so a run that completes
// spoke TLS on every path. It asserts nothing about speed: the machine is
// shared and a quick run measures nothing worth comparing.
func TestBenchQuickJSON(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "tls"}[tls], func(t *testing.T) {
			testBenchQuickJSON(t, tls)
		})
	}
}

func testBenchQuickJSON(t *testing.T, tls bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := []string{"bench", "--quick", "--json"}
	if tls {
		args = append(args, "--tls")
	}
	cmd := exec.CommandContext(ctx, tunnelBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("tunnel %s took %v; stderr:\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), stderr.String())
	if err != nil {
		t.Fatalf("tunnel bench: %v", err)
	}
	out := stdout.Bytes()
	var res benchResult
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("decoding the JSON: %v\n%s", err, out)
	}
	if rest := strings.TrimSpace(string(out[dec.InputOffset():])); rest != "" {
		t.Errorf("more than one JSON document on stdout; after it: %q", rest)
	}

	m := res.Machine
	if m.CPU == "" || m.Cores < 1 || m.GOMAXPROCS < 1 || !strings.HasPrefix(m.Go, "go") || m.OS == "" {
		t.Errorf("machine = %+v, want CPU, cores, OS, Go version and GOMAXPROCS", m)
	}
	if _, err := time.Parse(time.RFC3339, m.Date); err != nil {
		t.Errorf("date %q: %v", m.Date, err)
	}
	if p := res.Params; !p.Quick || p.Idle < 1 || p.IdleFloor < 1 || p.IdleAgents < 1 || p.TLS != tls {
		t.Errorf("params = %+v, want a quick run with idle connections and agents, TLS %v", p, tls)
	}

	// kind says what every figure of a row must be.
	const (
		positive    = iota // rates and latencies
		nonNegative        // counts and CPU time at 10 ms resolution
		finite             // memory growth, which the runtime may give back
	)
	want := []struct {
		scenario, metric string
		kind             int
		hops             bool // a relay or agent row: no direct figure
	}{
		{"bulk", "MB/s", positive, false},
		{"small", "req/s", positive, false},
		{"small", "p50 ms", positive, false},
		{"small", "p99 ms", positive, false},
		{"small", "new origin conns", nonNegative, false},
		{"ws-echo", "p50 ms", positive, false},
		{"ws-echo", "p99 ms", positive, false},
		{"ws-many", "msgs/s", positive, false},
		{"ws-new", "p50 ms", positive, false},
		{"ws-new", "p99 ms", positive, false},
		{"idle", "relay KiB/conn", finite, true},
		{"idle", "agent KiB/conn", finite, true},
		{"idle", "relay slope KiB/conn", finite, true},
		{"idle", "agent slope KiB/conn", finite, true},
		{"idle", "relay GiB/1M conns", finite, true},
		{"idle", "agent GiB/1M conns", finite, true},
		{"bulk", "relay CPU s/GB", nonNegative, true},
		{"bulk", "agent CPU s/GB", nonNegative, true},
		{"bulk", "relay kernel CPU s/GB", nonNegative, true},
		{"bulk", "agent kernel CPU s/GB", nonNegative, true},
		{"small", "relay CPU s/1k req", nonNegative, true},
		{"small", "agent CPU s/1k req", nonNegative, true},
		{"small", "relay kernel CPU s/1k req", nonNegative, true},
		{"small", "agent kernel CPU s/1k req", nonNegative, true},
		{"ws-many", "relay CPU s/1k echoes", nonNegative, true},
		{"ws-many", "agent CPU s/1k echoes", nonNegative, true},
		{"ws-many", "relay kernel CPU s/1k echoes", nonNegative, true},
		{"ws-many", "agent kernel CPU s/1k echoes", nonNegative, true},
		{"idle", "relay CPU ms/conn", nonNegative, true},
		{"idle", "agent CPU ms/conn", nonNegative, true},
	}
	if len(res.Rows) != len(want) {
		t.Errorf("%d rows, want %d", len(res.Rows), len(want))
	}
	for i, w := range want {
		if i >= len(res.Rows) {
			t.Errorf("no row %s %q", w.scenario, w.metric)
			continue
		}
		row := res.Rows[i]
		name := row.Scenario + " " + row.Metric
		if row.Scenario != w.scenario || row.Metric != w.metric {
			t.Errorf("row %d is %q, want %s %s", i, name, w.scenario, w.metric)
			continue
		}
		check := func(path string, v *float64) {
			if v == nil {
				t.Errorf("%s: no %s figure", name, path)
				return
			}
			x := *v
			switch {
			case math.IsNaN(x) || math.IsInf(x, 0):
				t.Errorf("%s: %s = %v, want a finite number", name, path, x)
			case w.kind == positive && x <= 0:
				t.Errorf("%s: %s = %v, want > 0", name, path, x)
			case w.kind == nonNegative && x < 0:
				t.Errorf("%s: %s = %v, want >= 0", name, path, x)
			}
		}
		if w.hops {
			if row.Direct != nil {
				t.Errorf("%s: direct = %v, want null: the direct path has no relay or agent", name, *row.Direct)
			}
		} else {
			check("direct", row.Direct)
		}
		check("floor", row.Floor)
		check("tunnel", row.Tunnel)
		checkRatio(t, name+": floor/direct", row.FloorVsDirect, row.Floor, row.Direct)
		checkRatio(t, name+": tunnel/direct", row.TunnelVsDirect, row.Tunnel, row.Direct)
		checkRatio(t, name+": tunnel/floor", row.TunnelVsFloor, row.Tunnel, row.Floor)
	}
	// The kernel's part of a hop's CPU time is read with the whole of it,
	// from the same /proc/PID/stat line: it cannot be more. (When it is
	// all of it, the two figures are computed apart and may differ in
	// the last bit: the comparison allows for that, and nothing else.)
	rows := map[string]benchRow{}
	for _, row := range res.Rows {
		rows[row.Scenario+" "+row.Metric] = row
	}
	for name, k := range rows {
		whole, ok := rows[strings.Replace(name, " kernel CPU", " CPU", 1)]
		if !strings.Contains(name, " kernel CPU") || !ok {
			continue
		}
		for _, v := range [][2]*float64{{k.Floor, whole.Floor}, {k.Tunnel, whole.Tunnel}} {
			if v[0] != nil && v[1] != nil && *v[0] > *v[1]*(1+1e-12) {
				t.Errorf("%s = %v, more than the whole CPU time %v", name, *v[0], *v[1])
			}
		}
	}
}

// TestBenchCPUProfiles runs a tiny bench with --cpuprofile and checks that
// every process of the run, the bench's own included, left a whole
// profile named after it (pprof files are gzip-compressed: a profile cut
// short by a kill does not decompress).
func TestBenchCPUProfiles(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tunnelBin, "bench", "--quick", "--json", "--cpuprofile", dir,
		"--bulk-mib", "1", "--small-duration", "200ms", "--echoes", "10", "--ws-conns", "2",
		"--ws-messages", "2", "--new-ws", "2", "--idle", "10")
	// The bench's own $TUNNEL_CPUPROFILE must not reach its children: they
	// would all write to one file.
	own := filepath.Join(t.TempDir(), "own.pprof")
	cmd.Env = append(os.Environ(), cpuProfileEnv+"="+own)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tunnel bench: %v\n%s", err, stderr.String())
	}
	want := []string{"own.pprof"}
	for _, name := range []string{"origin", "floor-forwarder-1", "floor-forwarder-2", "relay", "agent",
		"idle-floor-forwarder-1", "idle-floor-forwarder-2", "idle-relay", "idle-agent-1"} {
		want = append(want, name+".pprof")
	}
	for _, name := range want {
		file := filepath.Join(dir, name)
		if name == "own.pprof" {
			file = own // the bench itself, profiled by the environment
		}
		checkProfile(t, file)
	}
	if _, err := os.Stat(filepath.Join(dir, "bench.pprof")); err == nil {
		t.Error("bench.pprof written although $TUNNEL_CPUPROFILE had the bench profiled already")
	}
	if !strings.Contains(stderr.String(), "CPU profiles in "+dir) {
		t.Errorf("stderr does not say where the profiles are:\n%s", stderr.String())
	}
}

// checkProfile checks that file is a whole, non-empty gzip stream.
func checkProfile(t *testing.T, file string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Errorf("no profile: %v", err)
		return
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Errorf("%s: %v", file, err)
		return
	}
	if n, err := io.Copy(io.Discard, zr); err != nil || n == 0 {
		t.Errorf("%s: %d bytes, %v; want a whole profile", file, n, err)
	}
}

// checkRatio checks that got is a/b from the same document, and null
// exactly when a or b is missing or b is zero.
func checkRatio(t *testing.T, name string, got, a, b *float64) {
	t.Helper()
	if a == nil || b == nil || *b == 0 {
		if got != nil {
			t.Errorf("%s = %v, want null", name, *got)
		}
		return
	}
	if got == nil {
		t.Errorf("%s is null, want %v / %v", name, *a, *b)
		return
	}
	if want := *a / *b; math.Abs(*got-want) > 1e-9*math.Max(1, math.Abs(want)) {
		t.Errorf("%s = %v, want %v / %v = %v", name, *got, *a, *b, want)
	}
}

// TestBenchFlags checks how bench reads its flags: the defaults, --quick
// shrinking only what was not set, and bad values refused before anything
// starts.
func TestBenchFlags(t *testing.T) {
	defaults := BenchOptions{
		BulkMiB: 256, BulkRuns: 3, SmallClients: 32, SmallDuration: 5 * time.Second,
		Echoes: 3000, WSConns: 100, WSMessages: 500, NewWS: 300, Idle: 1000,
	}
	quick := BenchOptions{
		Quick: true, BulkMiB: 16, BulkRuns: 3, SmallClients: 32, SmallDuration: time.Second,
		Echoes: 300, WSConns: 20, WSMessages: 50, NewWS: 30, Idle: 200,
	}
	quickIdle := quick
	quickIdle.Idle = 5000
	withTLS := defaults
	withTLS.TLS = true
	oneP := defaults
	oneP.TunnelGOMAXPROCS = 1
	tests := []struct {
		name    string
		args    []string
		want    BenchOptions
		wantErr string
	}{
		{name: "defaults", want: defaults},
		{name: "quick", args: []string{"--quick"}, want: quick},
		{name: "quick keeps what was set", args: []string{"--quick", "--idle", "5000"}, want: quickIdle},
		{name: "tls", args: []string{"--tls"}, want: withTLS},
		{name: "one P for relay and agent", args: []string{"--tunnel-gomaxprocs", "1"}, want: oneP},
		{name: "negative GOMAXPROCS", args: []string{"--tunnel-gomaxprocs", "-1"}, wantErr: "--tunnel-gomaxprocs must be 0 to 1024"},
		{name: "idle beyond the file limit", args: []string{"--idle", "20000"}, wantErr: "--idle must be 1 to 18000"},
		{name: "too many WebSockets for one agent", args: []string{"--ws-conns", "200"}, wantErr: "--ws-conns must be 1 to 150"},
		{name: "zero runs", args: []string{"--bulk-runs", "0"}, wantErr: "--bulk-runs must be"},
		{name: "relay not a URL", args: []string{"--relay", "example.com"}, wantErr: "--relay wants an http:// or https:// URL"},
		{name: "tls through a plain relay", args: []string{"--tls", "--relay", "http://localhost:8000"}, wantErr: "--tls has visitors speak HTTPS on every path, but --relay http://localhost:8000 serves plain HTTP"},
		{name: "argument", args: []string{"now"}, wantErr: "takes no arguments"},
		{name: "token without --relay", args: []string{"--token", "abc"}, wantErr: "--token is the agent token for --relay"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TUNNEL_TOKEN", "")
			var got *BenchOptions
			cmd := NewCmdBench(testFactory(), func(o *BenchOptions) error { got = o; return nil })
			err := execute(cmd, tt.args...)
			if tt.wantErr != "" {
				var uerr *usageError
				if !errors.As(err, &uerr) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.IO, got.Logger = IOStreams{}, nil
			if *got != tt.want {
				t.Errorf("options = %+v\nwant      %+v", *got, tt.want)
			}
		})
	}
}

// TestBenchForwardFlags checks that the hidden forwarder wants --to, and
// that it and the origin want --tls-cert and --tls-key together.
func TestBenchForwardFlags(t *testing.T) {
	cmd := NewCmdBenchForward(testFactory(), func(*BenchForwardOptions) error { return nil })
	var uerr *usageError
	if err := execute(cmd); !errors.As(err, &uerr) {
		t.Errorf("without --to: err = %v, want a usage error", err)
	}
	cmd = NewCmdBenchForward(testFactory(), func(*BenchForwardOptions) error { return nil })
	if err := execute(cmd, "--to", "127.0.0.1:1", "--tls-cert", "cert.pem"); !errors.As(err, &uerr) || !strings.Contains(err.Error(), "--tls-cert and --tls-key go together") {
		t.Errorf("forward --tls-cert alone: err = %v, want a usage error naming both flags", err)
	}
	origin := NewCmdBenchOrigin(testFactory(), func(*BenchOriginOptions) error { return nil })
	if err := execute(origin, "--tls-key", "key.pem"); !errors.As(err, &uerr) || !strings.Contains(err.Error(), "--tls-cert and --tls-key go together") {
		t.Errorf("origin --tls-key alone: err = %v, want a usage error naming both flags", err)
	}
	var got *BenchForwardOptions
	cmd = NewCmdBenchForward(testFactory(), func(o *BenchForwardOptions) error { got = o; return nil })
	if err := execute(cmd, "--to", "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if got.Listen != "127.0.0.1:0" || got.To != "127.0.0.1:1" {
		t.Errorf("options = %+v", *got)
	}
}

// TestCPUProfileEnv checks $TUNNEL_CPUPROFILE on a command of its own: the
// profile is written when the command returns, and a file that cannot be
// created is a one-line error before anything runs.
func TestCPUProfileEnv(t *testing.T) {
	file := filepath.Join(t.TempDir(), "version.pprof")
	cmd := exec.Command(tunnelBin, "version")
	cmd.Env = append(os.Environ(), cpuProfileEnv+"="+file)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tunnel version: %v\n%s", err, out)
	}
	checkProfile(t, file)

	bad := filepath.Join(t.TempDir(), "no-such-dir", "x.pprof")
	cmd = exec.Command(tunnelBin, "version")
	cmd.Env = append(os.Environ(), cpuProfileEnv+"="+bad)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitError {
		t.Fatalf("with an unwritable profile: err = %v, want exit status %d", err, exitError)
	}
	if msg := stderr.String(); strings.Count(msg, "\n") != 1 || !strings.Contains(msg, cpuProfileEnv) || !strings.Contains(msg, "no-such-dir") {
		t.Errorf("stderr = %q, want one line naming %s and the path", msg, cpuProfileEnv)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout = %q, want nothing: the command must not run", stdout.String())
	}

	// --cpuprofile under a regular file cannot be a directory: the bench
	// says so in one line before it starts anything.
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(tunnelBin, "bench", "--quick", "--cpuprofile", filepath.Join(notDir, "prof"))
	stdout.Reset()
	stderr.Reset()
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if !errors.As(err, &exit) || exit.ExitCode() != exitError {
		t.Fatalf("bench --cpuprofile under a file: err = %v, want exit status %d", err, exitError)
	}
	if msg := stderr.String(); strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "--cpuprofile") || !strings.Contains(msg, "directory you can write") {
		t.Errorf("stderr = %q, want one line naming --cpuprofile and what to give it", msg)
	}
}

// TestBenchTunnelGOMAXPROCS checks that --tunnel-gomaxprocs reaches the
// relay's and the agent's environment, and nobody else's: the bench starts
// them with it (read back from /proc/PID/environ), the floor's forwarders
// without.
func TestBenchTunnelGOMAXPROCS(t *testing.T) {
	if _, err := os.Stat("/proc/self/environ"); err != nil {
		t.Skip("needs /proc/PID/environ")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := &bench{opts: &BenchOptions{TunnelGOMAXPROCS: 1}, exe: tunnelBin, progress: t.Logf}
	defer b.children.stopAll()
	if err := b.startPaths(ctx); err != nil {
		t.Fatal(err)
	}
	env := func(c *benchChild) string {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", c.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range strings.Split(string(data), "\x00") {
			if v, ok := strings.CutPrefix(kv, "GOMAXPROCS="); ok {
				return v
			}
		}
		return ""
	}
	outside := os.Getenv("GOMAXPROCS") // what every other child inherits
	for _, p := range b.paths {
		for i, g := range p.hops {
			for _, c := range g {
				want := outside
				if p.name == "tunnel" {
					want = "1"
				}
				if got := env(c); got != want {
					t.Errorf("%s hop %d (%s): GOMAXPROCS=%q, want %q", p.name, i, c.name, got, want)
				}
			}
		}
	}
}

// The agent's token reaches `tunnel expose` in its environment, never on
// its command line, which every local user can read (ps).
func TestBenchAgentTokenNotAnArgument(t *testing.T) {
	const token = "bench-token-0123456789"
	b := &bench{opts: &BenchOptions{Relay: "https://relay.example.com", Token: token}, origin: "127.0.0.1:8080"}
	env, args := b.agentCommand("https://relay.example.com", "bench-x")
	if strings.Contains(strings.Join(args, " "), token) {
		t.Errorf("token on the command line: %q", args)
	}
	if !slices.Contains(env, "TUNNEL_TOKEN="+token) {
		t.Errorf("environment %q has no TUNNEL_TOKEN", env)
	}
}

// The small test's visitors keep one connection each for the whole run, so
// that a new connection at the origin can only come from the path under
// test; a server that closes the connection fails the run instead of being
// hidden by a reconnect.
func TestBenchSmallClientKeepsOneConnection(t *testing.T) {
	var conns atomic.Int32
	closeNext := atomic.Bool{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if closeNext.Load() {
			w.Header().Set("Connection", "close")
		}
		w.Write(bytes.Repeat([]byte("x"), 1024))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialSmallClient(ctx, &benchPath{}, srv.URL+"/small")
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	buf := make([]byte, 4096)
	for i := range 200 {
		n, err := c.get(buf)
		if err != nil || n != 1024 {
			t.Fatalf("request %d: %d bytes, %v", i, n, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("200 requests used %d connections, want 1", n)
	}

	closeNext.Store(true)
	if _, err := c.get(buf); err == nil || !strings.Contains(err.Error(), "closed the keep-alive connection") {
		t.Errorf("a response that closes the connection: err = %v, want it reported", err)
	}
	if _, err := c.get(buf); err == nil {
		t.Error("a request after the server closed the connection succeeded")
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("the client opened %d connections, want 1: it must not reconnect", n)
	}
}
