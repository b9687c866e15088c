package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"time"
	"unicode/utf8"
)

// benchResult is everything one run of `tunnel bench` measured; --json
// prints it as it is.
type benchResult struct {
	Machine benchMachineInfo `json:"machine"`
	Params  benchParams      `json:"params"`
	Rows    []benchRow       `json:"rows"`
}

type benchMachineInfo struct {
	CPU        string `json:"cpu"` // model name from /proc/cpuinfo
	Cores      int    `json:"cores"`
	OS         string `json:"os"` // GOOS/GOARCH and kernel release
	Go         string `json:"go"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	Date       string `json:"date"` // RFC 3339, UTC
	Relay      string `json:"relay"`
}

// localRelay is Relay when the bench started the relay itself.
const localRelay = "local process"

type benchParams struct {
	BulkMiB      int     `json:"bulk_mib"`
	BulkRuns     int     `json:"bulk_runs"`
	SmallClients int     `json:"small_clients"`
	SmallSeconds float64 `json:"small_seconds"`
	Echoes       int     `json:"echoes"`
	WSConns      int     `json:"ws_conns"`
	WSMessages   int     `json:"ws_messages"`
	NewWS        int     `json:"new_ws"`
	Idle         int     `json:"idle"`
	IdleFloor    int     `json:"idle_floor"`  // idle connections through the floor
	IdleAgents   int     `json:"idle_agents"` // agent processes of the idle test
	Quick        bool    `json:"quick"`
	TLS          bool    `json:"tls"` // visitors speak TLS on every path
	// TunnelGOMAXPROCS is the relay's and the agent's GOMAXPROCS if the
	// run fixed it, 0 if they governed their own (see procs.go) or took
	// GOMAXPROCS from the bench's environment.
	TunnelGOMAXPROCS int `json:"tunnel_gomaxprocs"`
}

// benchRow is one figure on the three paths. A value is null where the
// path has no such figure (direct has no relay) or the bench cannot read it
// (a --relay it did not start); a ratio is null where either side is.
type benchRow struct {
	Scenario string   `json:"scenario"` // bulk, small, ws-echo, ws-many, ws-new, idle
	Metric   string   `json:"metric"`   // e.g. "MB/s", "p99 ms", "relay KiB/conn"
	Better   string   `json:"better"`   // "higher" or "lower"
	Direct   *float64 `json:"direct"`
	Floor    *float64 `json:"floor"`
	Tunnel   *float64 `json:"tunnel"`

	FloorVsDirect  *float64 `json:"floor_vs_direct"`
	TunnelVsDirect *float64 `json:"tunnel_vs_direct"`
	TunnelVsFloor  *float64 `json:"tunnel_vs_floor"`
}

const (
	higher = "higher"
	lower  = "lower"
)

func (r *benchResult) add(scenario, metric, better string, direct, floor, tunnel float64) {
	r.addRow(scenario, metric, better, &direct, &floor, &tunnel)
}

// addHops adds a row for the relay and one for the agent. The floor's
// figures are its first forwarder's in the relay's row and its second's in
// the agent's, the processes that sit in the same places.
func (r *benchResult) addHops(scenario, unit string, floor, tunnel hopFigures) {
	for i, hop := range []string{"relay", "agent"} {
		var f, t *float64
		if floor.ok[i] {
			f = &floor.hops[i]
		}
		if tunnel.ok[i] {
			t = &tunnel.hops[i]
		}
		r.addRow(scenario, hop+" "+unit, lower, nil, f, t)
	}
}

func (r *benchResult) addRow(scenario, metric, better string, direct, floor, tunnel *float64) {
	r.Rows = append(r.Rows, benchRow{
		Scenario: scenario, Metric: metric, Better: better,
		Direct: direct, Floor: floor, Tunnel: tunnel,
		FloorVsDirect:  ratio(floor, direct),
		TunnelVsDirect: ratio(tunnel, direct),
		TunnelVsFloor:  ratio(tunnel, floor),
	})
}

// ratio is a/b, or nil when either is missing or the quotient is not a
// finite number (a CPU time of zero ticks, for instance).
func ratio(a, b *float64) *float64 {
	if a == nil || b == nil || *b == 0 {
		return nil
	}
	q := *a / *b
	if math.IsInf(q, 0) || math.IsNaN(q) {
		return nil
	}
	return &q
}

func benchMachine() benchMachineInfo {
	m := benchMachineInfo{
		CPU:        "unknown",
		Cores:      runtime.NumCPU(),
		OS:         runtime.GOOS + "/" + runtime.GOARCH,
		Go:         runtime.Version(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		Date:       time.Now().UTC().Format(time.RFC3339),
		Relay:      localRelay,
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.OS += ", Linux " + strings.TrimSpace(string(b))
	}
	return m
}

func benchParamsOf(o *BenchOptions) benchParams {
	return benchParams{
		BulkMiB: o.BulkMiB, BulkRuns: o.BulkRuns,
		SmallClients: o.SmallClients, SmallSeconds: o.SmallDuration.Seconds(),
		Echoes: o.Echoes, WSConns: o.WSConns, WSMessages: o.WSMessages,
		NewWS: o.NewWS, Idle: o.Idle, Quick: o.Quick, TLS: o.TLS, TunnelGOMAXPROCS: o.TunnelGOMAXPROCS,
	}
}

func (r *benchResult) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// label says in a few words what a row's scenario did.
func (r *benchResult) label(row benchRow) string {
	p := r.Params
	var s string
	switch row.Scenario {
	case "bulk":
		s = fmt.Sprintf("bulk GET %d MiB, median of %d", p.BulkMiB, p.BulkRuns)
	case "small":
		s = fmt.Sprintf("1 KiB GETs, %d clients, %gs", p.SmallClients, p.SmallSeconds)
	case "ws-echo":
		s = fmt.Sprintf("WebSocket echo, %d × 32 B", p.Echoes)
	case "ws-many":
		s = fmt.Sprintf("%d WebSockets × %d echoes", p.WSConns, p.WSMessages)
	case "ws-new":
		s = fmt.Sprintf("new WebSocket + echo, %d tries", p.NewWS)
	case "idle":
		s = fmt.Sprintf("%d idle WebSockets (floor %d)", p.Idle, p.IdleFloor)
	default:
		s = row.Scenario
	}
	if strings.Contains(row.Metric, "CPU") {
		s = "CPU: " + s
	}
	return s
}

func (r *benchResult) writeTable(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "tunnel bench, %s\n", m.Date)
	fmt.Fprintf(w, "machine: %s, %d cores, %s\n", m.CPU, m.Cores, m.OS)
	fmt.Fprintf(w, "go: %s, GOMAXPROCS %d", m.Go, m.GOMAXPROCS)
	if n := r.Params.TunnelGOMAXPROCS; n != 0 {
		fmt.Fprintf(w, " (relay and agent: %d)", n)
	} else if os.Getenv("GOMAXPROCS") == "" && m.GOMAXPROCS > 1 {
		// Children govern their own (see procs.go); with GOMAXPROCS in
		// the bench's environment they inherit it instead.
		who := "relay and agent"
		if m.Relay != localRelay {
			who = "agent" // the relay is elsewhere
		}
		fmt.Fprintf(w, " (%s: 1 while lightly loaded, %d once busy)", who, m.GOMAXPROCS)
	}
	fmt.Fprintln(w)
	if r.Params.TLS {
		fmt.Fprintf(w, "paths: direct  visitor → origin (HTTPS)\n")
		fmt.Fprintf(w, "       floor   visitor → forwarder → forwarder → origin (TLS, TLS, plain TCP)\n")
		fmt.Fprintf(w, "       tunnel  visitor → relay → agent → origin (TLS, TLS, plain TCP; relay: %s)\n\n", m.Relay)
	} else {
		fmt.Fprintf(w, "paths: direct  visitor → origin\n")
		fmt.Fprintf(w, "       floor   visitor → forwarder → forwarder → origin (plain TCP, splice)\n")
		fmt.Fprintf(w, "       tunnel  visitor → relay → agent → origin (relay: %s)\n\n", m.Relay)
	}

	table := [][]string{{"scenario", "figure", "direct", "floor", "tunnel", "floor/direct", "tunnel/direct", "tunnel/floor"}}
	last := ""
	for _, row := range r.Rows {
		label := r.label(row)
		if label == last {
			label = ""
		} else {
			last = label
		}
		table = append(table, []string{label, row.Metric,
			benchNum(row.Direct), benchNum(row.Floor), benchNum(row.Tunnel),
			benchRatio(row.FloorVsDirect), benchRatio(row.TunnelVsDirect), benchRatio(row.TunnelVsFloor)})
	}
	// Words to the left, numbers to the right.
	width := make([]int, len(table[0]))
	for _, cells := range table {
		for i, c := range cells {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, cells := range table {
		var line strings.Builder
		for i, c := range cells {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i < 2 {
				line.WriteString(c + pad + "  ")
			} else {
				line.WriteString("  " + pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(line.String(), " "))
	}
	_, err := fmt.Fprintf(w, `
Ratios are the row's path over the other; for "lower" figures (latency,
connections, memory, CPU) a ratio above 1 is worse, for MB/s, req/s and msgs/s
below 1 is. In relay and agent rows the floor column is the first and the
second forwarder. MB = 10^6 bytes. Idle: all WebSockets through one tunnel
of one agent (%d agent process).
`, r.Params.IdleAgents)
	return err
}

// benchNum formats a figure with three or so significant digits.
func benchNum(v *float64) string {
	if v == nil {
		return "-"
	}
	switch a := math.Abs(*v); {
	case a >= 100:
		return fmt.Sprintf("%.0f", *v)
	case a >= 10:
		return fmt.Sprintf("%.1f", *v)
	case a >= 1:
		return fmt.Sprintf("%.2f", *v)
	case a == 0:
		return "0"
	default:
		return fmt.Sprintf("%.3f", *v)
	}
}

func benchRatio(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f×", *v)
}
