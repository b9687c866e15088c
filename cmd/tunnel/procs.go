package main

import (
	"os"
	"runtime"
	"sync"
	"time"
)

// The relay and the agent run on one P (GOMAXPROCS=1) while they are
// lightly loaded, and on all of them once they are busy.
//
// Every frame through the tunnel readies a goroutine on each side (yamux's
// writer hands the frame to its send loop, its receive loop wakes the
// stream's reader). When a goroutine is readied while a P is idle, Go's
// scheduler wakes another thread to run it, which spins looking for work
// and sleeps again: a futex call and often an interrupt to another CPU per
// hand-off. On a small, shared machine that is most of what a WebSocket
// message costs in latency at light load; with one P the readied goroutine
// simply runs next on the same thread. Under load the hand-offs find busy
// threads anyway, and the process needs its cores. docs/performance.md
// ("GOMAXPROCS on a small shared machine") has the measurements.
//
// GOMAXPROCS in the environment turns this off: the process keeps what it
// says, as any Go program does. "All Ps" is GOMAXPROCS as the process
// started with it (Go's default: the CPUs, or a container's CPU limit);
// once the governor has set it, Go no longer follows a CPU limit that
// changes while the process runs.

const (
	// procsTick is how often the governor reads the process's CPU time.
	procsTick = 100 * time.Millisecond
	// procsUp: on one P, a tick that used this much of a core moves the
	// process to all of them. One P cannot use more than about a core, so
	// this is where work would start to queue.
	procsUp = 0.6
	// procsDown: on all Ps, a procsDownWindow that used less than this
	// much of a core on average moves it back to one. The same work costs
	// more CPU on several Ps than on one (the wake-ups), so the gap to
	// procsUp is wider than it looks and the two do not chase each other.
	procsDown       = 0.45
	procsDownWindow = time.Second
)

// procsGovernor decides the process's GOMAXPROCS from the CPU time it uses.
type procsGovernor struct {
	max int       // all Ps: GOMAXPROCS when the governor started
	set func(int) // runtime.GOMAXPROCS, in tests a recorder
	cur int

	lastAt  time.Time     // the last reading
	lastCPU time.Duration // the process's CPU time then
	winAt   time.Time     // on all Ps: the start of the current down window
	winCPU  time.Duration
}

// newProcsGovernor starts at one P, the idle process's best.
func newProcsGovernor(max int, set func(int), now time.Time, cpu time.Duration) *procsGovernor {
	g := &procsGovernor{max: max, set: set, cur: 1, lastAt: now, lastCPU: cpu}
	set(1)
	return g
}

// observe takes a reading of the process's CPU time and changes
// GOMAXPROCS if the load calls for it.
func (g *procsGovernor) observe(now time.Time, cpu time.Duration) {
	dt := now.Sub(g.lastAt)
	used := cpu - g.lastCPU
	g.lastAt, g.lastCPU = now, cpu
	if dt <= 0 {
		return
	}
	if g.cur == 1 {
		if used.Seconds()/dt.Seconds() >= procsUp {
			g.cur = g.max
			g.set(g.max)
			g.winAt, g.winCPU = now, cpu
		}
		return
	}
	if w := now.Sub(g.winAt); w >= procsDownWindow {
		if (cpu-g.winCPU).Seconds()/w.Seconds() < procsDown {
			g.cur = 1
			g.set(1)
		}
		g.winAt, g.winCPU = now, cpu
	}
}

// procsGoverned is set by main: commands run in-process by tests leave
// the test binary's GOMAXPROCS alone.
var procsGoverned bool

// governProcs starts the governor for a command that carries traffic
// (relay, expose, start, demo); the command defers the returned stop, which
// ends it, waits for it, and gives the process back its Ps. It does nothing
// where GOMAXPROCS is set in the environment, on a single CPU, or where the
// process's CPU time cannot be read (see processCPU).
func governProcs() (stop func()) {
	max := runtime.GOMAXPROCS(0)
	if !procsGoverned || os.Getenv("GOMAXPROCS") != "" || max < 2 {
		return func() {}
	}
	cpu, ok := processCPU()
	if !ok {
		return func() {}
	}
	g := newProcsGovernor(max, func(n int) { runtime.GOMAXPROCS(n) }, time.Now(), cpu)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(procsTick)
		defer t.Stop()
		for {
			select {
			case <-done:
				runtime.GOMAXPROCS(max)
				return
			case now := <-t.C:
				if cpu, ok := processCPU(); ok {
					g.observe(now, cpu)
				}
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}
