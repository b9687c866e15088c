package main

import (
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// governorRun feeds a governor readings of a given load, tick by tick, and
// records what it sets.
type governorRun struct {
	g   *procsGovernor
	now time.Time
	cpu time.Duration
	set []int
}

func newGovernorRun(max int) *governorRun {
	r := &governorRun{now: time.Unix(1000, 0)}
	r.g = newProcsGovernor(max, func(n int) { r.set = append(r.set, n) }, r.now, r.cpu)
	return r
}

// load runs d of ticks in which the process uses cores of CPU.
func (r *governorRun) load(cores float64, d time.Duration) {
	for end := r.now.Add(d); r.now.Before(end); {
		r.now = r.now.Add(procsTick)
		r.cpu += time.Duration(cores * float64(procsTick))
		r.g.observe(r.now, r.cpu)
	}
}

// TestProcsGovernor walks the governor through a day in a relay's life:
// idle on one P, all Ps as soon as one tick is busy, kept through short
// lulls, back to one after a quiet window.
func TestProcsGovernor(t *testing.T) {
	r := newGovernorRun(4)
	if r.g.cur != 1 || len(r.set) != 1 || r.set[0] != 1 {
		t.Fatalf("a new governor set %v, want one P", r.set)
	}
	r.load(procsUp-0.1, 10*time.Second) // light traffic: one P is enough
	if r.g.cur != 1 || len(r.set) != 1 {
		t.Fatalf("at %.2f of a core: %d Ps (set %v), want 1", procsUp-0.1, r.g.cur, r.set)
	}
	r.load(procsUp+0.1, procsTick) // one busy tick
	if r.g.cur != 4 {
		t.Fatalf("after a tick at %.2f of a core: %d Ps, want all 4", procsUp+0.1, r.g.cur)
	}
	r.load(1.5, 5*time.Second)
	r.load(0, procsDownWindow/2) // a lull shorter than the window
	r.load(1.5, procsDownWindow)
	if r.g.cur != 4 {
		t.Fatalf("after a short lull: %d Ps, want 4", r.g.cur)
	}
	r.load(procsDown+0.05, 3*procsDownWindow) // still above procsDown on average
	if r.g.cur != 4 {
		t.Fatalf("at %.2f of a core: %d Ps, want 4", procsDown+0.05, r.g.cur)
	}
	r.load(0.1, 2*procsDownWindow) // quiet: back to one within two windows
	if r.g.cur != 1 {
		t.Fatalf("after %v quiet: %d Ps, want 1", 2*procsDownWindow, r.g.cur)
	}
	if want := []int{1, 4, 1}; !slices.Equal(r.set, want) {
		t.Errorf("GOMAXPROCS set to %v, want %v (no flapping)", r.set, want)
	}
}

// TestRelayGovernsProcs checks the governor in a relay process, through
// the GOMAXPROCS its /metrics reports: one P while idle, and what the
// environment says where GOMAXPROCS is set. (How it follows load is
// TestProcsGovernor's: a loaded test machine cannot promise a relay the
// CPU that would move it.)
func TestRelayGovernsProcs(t *testing.T) {
	max := runtime.NumCPU()
	if max < 2 || os.Getenv("GOMAXPROCS") != "" {
		t.Skip("needs 2 CPUs and no GOMAXPROCS in the environment")
	}
	relay, _ := startRelay(t)
	waitProcs(t, adminURLFrom(t, relay), 1, "idle")

	fixed, _ := startRelayEnv(t, []string{"GOMAXPROCS=" + strconv.Itoa(max)})
	admin := adminURLFrom(t, fixed)
	waitProcs(t, admin, max, "with GOMAXPROCS="+strconv.Itoa(max))
	time.Sleep(procsDownWindow + 2*procsTick) // idle: no governor lowers it
	waitProcs(t, admin, max, "idle with GOMAXPROCS="+strconv.Itoa(max))
}

// TestProcessCPU checks the reading the governor decides on: it grows
// with the work this process does.
func TestProcessCPU(t *testing.T) {
	start, ok := processCPU()
	if !ok {
		t.Skip("no process CPU time on " + runtime.GOOS)
	}
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for {
		for i := range 1_000_000 {
			x += i
		}
		now, _ := processCPU()
		if now-start >= 50*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s of a busy loop read as %v of CPU", now-start)
		}
	}
	_ = x
}

// waitProcs waits until the relay's /metrics reports want as GOMAXPROCS.
func waitProcs(t *testing.T, adminURL string, want int, when string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	got := -1
	for time.Now().Before(deadline) {
		if got = scrapeProcs(t, adminURL); got == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: GOMAXPROCS %d, want %d", when, got, want)
}

func scrapeProcs(t *testing.T, adminURL string) int {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(line, "go_sched_gomaxprocs_threads "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("go_sched_gomaxprocs_threads %q", v)
			}
			return n
		}
	}
	t.Fatalf("no go_sched_gomaxprocs_threads in /metrics")
	return 0
}
