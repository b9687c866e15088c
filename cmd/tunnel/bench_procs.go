package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// benchChild is a process `tunnel bench` started: the origin, a forwarder,
// a relay or an agent. Its output is read to the end, its last lines kept
// for error messages.
type benchChild struct {
	name string
	cmd  *exec.Cmd

	ready   chan string   // receives the readiness line's value once
	exited  chan struct{} // closed once the process has exited and its output is read
	readers sync.WaitGroup

	mu   sync.Mutex
	tail []string // the last lines of stdout and stderr
}

// benchChildWait bounds how long a child may take to say it is ready.
const benchChildWait = 30 * time.Second

// benchStopWait is how long a child may take to stop before it is killed:
// enough for the relay's one-second drain and for writing a CPU profile.
const benchStopWait = 5 * time.Second

// startBenchChild runs exe with args, and env added to this process's
// environment. match is called on every line of
// stdout (onStdout) or stderr until it first returns ok; its value is then
// what waitReady returns. The child gets SIGKILL if this process dies
// without stopping it, and its own process group, so that a Ctrl-C at the
// terminal reaches only the bench, which then stops its children in order.
func startBenchChild(exe, name string, env []string, onStdout bool, match func(line string) (string, bool), args ...string) (*benchChild, error) {
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...) // later entries win
	cmd.SysProcAttr = childProcAttr()
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &benchChild{name: name, cmd: cmd, ready: make(chan string, 1), exited: make(chan struct{})}
	var once sync.Once
	read := func(r io.Reader, matching bool) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 4096), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			c.keep(line)
			if !matching {
				continue
			}
			if v, ok := match(line); ok {
				once.Do(func() { c.ready <- v })
			}
		}
		// A line longer than the buffer ends the scan: drain the rest so
		// the child never blocks on a full pipe.
		io.Copy(io.Discard, r)
	}
	c.readers.Go(func() { read(outPipe, onStdout) })
	c.readers.Go(func() { read(errPipe, !onStdout) })
	go func() {
		c.readers.Wait() // Wait closes the pipes: read them to the end first
		cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *benchChild) keep(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.tail) == 20 {
		c.tail = append(c.tail[:0], c.tail[1:]...)
	}
	c.tail = append(c.tail, line)
}

// said returns the child's last lines, for an error message.
func (c *benchChild) said() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.tail) == 0 {
		return "(no output)"
	}
	return strings.Join(c.tail, " | ")
}

// waitReady returns the value of the child's readiness line.
func (c *benchChild) waitReady(ctx context.Context) (string, error) {
	t := time.NewTimer(benchChildWait)
	defer t.Stop()
	select {
	case v := <-c.ready:
		return v, nil
	case <-c.exited:
		return "", fmt.Errorf("%s exited before it was ready: %s", c.name, c.said())
	case <-t.C:
		return "", fmt.Errorf("%s not ready after %v: %s", c.name, benchChildWait, c.said())
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// alive returns an error if the child has exited.
func (c *benchChild) alive() error {
	select {
	case <-c.exited:
		return fmt.Errorf("%s exited: %s", c.name, c.said())
	default:
		return nil
	}
}

// stop asks the child to stop with SIGTERM, kills it after benchStopWait,
// and returns once it has exited and its output is read.
func (c *benchChild) stop() {
	select {
	case <-c.exited:
		return
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(benchStopWait)
	defer t.Stop()
	select {
	case <-c.exited:
		return
	case <-t.C:
	}
	c.cmd.Process.Kill()
	<-c.exited
}

func (c *benchChild) pid() int { return c.cmd.Process.Pid }

// benchChildren stops every child it was given, all at once.
type benchChildren struct {
	mu   sync.Mutex
	list []*benchChild
}

func (cs *benchChildren) add(c *benchChild) {
	cs.mu.Lock()
	cs.list = append(cs.list, c)
	cs.mu.Unlock()
}

func (cs *benchChildren) stopAll() {
	cs.mu.Lock()
	list := cs.list
	cs.list = nil
	cs.mu.Unlock()
	stopChildren(list)
}

// stop stops the children in list and forgets them.
func (cs *benchChildren) stop(list []*benchChild) {
	cs.mu.Lock()
	cs.list = slices.DeleteFunc(cs.list, func(c *benchChild) bool { return slices.Contains(list, c) })
	cs.mu.Unlock()
	stopChildren(list)
}

func stopChildren(list []*benchChild) {
	var wg sync.WaitGroup
	for _, c := range list {
		wg.Go(c.stop)
	}
	wg.Wait()
}

// procGroup is the processes that make one hop of a path, e.g. the relay,
// or every agent of the idle test. Their CPU time and memory are summed.
type procGroup []*benchChild

// cpuSeconds is the user and system CPU time the processes have used,
// and the system (kernel) part of it, from /proc/PID/stat, at the
// kernel's 10 ms resolution.
func (g procGroup) cpuSeconds() (total, kernel float64, err error) {
	for _, c := range g {
		t, k, err := procCPU(c.pid())
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", c.name, err)
		}
		total += t
		kernel += k
	}
	return total, kernel, nil
}

// rssKiB is the processes' resident memory (VmRSS) in KiB.
func (g procGroup) rssKiB() (float64, error) {
	var sum float64
	for _, c := range g {
		k, err := procRSS(c.pid())
		if err != nil {
			return 0, fmt.Errorf("%s: %w", c.name, err)
		}
		sum += k
	}
	return sum, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; Linux fixes it
// at 100 on every architecture Go supports.
const clockTicks = 100

// procCPU reads utime+stime of pid in seconds, and stime alone.
func procCPU(pid int) (total, kernel float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name in parentheses may hold spaces: fields count from
	// the last ')'. utime and stime are fields 14 and 15 of the line, so
	// 12 and 13 after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, errors.New("short /proc/PID/stat")
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("/proc/PID/stat: %w", err)
	}
	return float64(u+s) / clockTicks, float64(s) / clockTicks, nil
}

// procRSS reads VmRSS of pid in KiB.
func procRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "123456 kB"
			if len(f) == 2 && f[1] == "kB" {
				return strconv.ParseFloat(f[0], 64)
			}
		}
	}
	return 0, errors.New("no VmRSS in /proc/PID/status")
}
