package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestRelayRestartManyAgents restarts a relay under 1,000 connected agents
// and checks that every agent is back under its old name, random names
// included, and that the relay routes each name to its own agent again. It
// logs how long re-registration took after the new relay listened (the goal
// is p99 ≤ 5 s; the time is reported, not asserted, since the machine is
// shared and noisy).
//
// The relay (`tunnel relay`) and the agents (internal/swarm, agent.Run ×
// 1,000) run as processes built without -race: a race-enabled process may
// hold at most 8,128 goroutines, and each agent needs several.
//
// The relay is killed with SIGKILL, as a crash, an OOM kill or a power cut
// would end it: no agent hears "draining", every control connection breaks at
// the same instant, and all agents back off and retry together, which is the
// storm the full-jitter backoff must spread. (SIGTERM would also let the
// old relay drain for a while before the port is free again, which measures
// the drain, not the reconnect. Names are not the difference: a relay keeps
// them in memory, so the new one starts empty either way and grants each
// agent the name it asks for again.)
func TestRelayRestartManyAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 1,000 agents in a helper process")
	}
	const (
		n        = 1000
		named    = n / 2 // the others get random names
		deadline = 60 * time.Second
	)
	dir := t.TempDir()
	tunnelBin := filepath.Join(dir, "tunnel")
	swarmBin := filepath.Join(dir, "swarm")
	restartBuild(t, tunnelBin, "../cmd/tunnel")
	restartBuild(t, swarmBin, "./internal/swarm")

	addr := restartFreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	relay1, _ := restartStartRelay(t, tunnelBin, addr)

	sw := &swarmState{online: make(map[int][]swarmOnline), changed: make(chan struct{})}
	swarm := startRestartProc(t, "swarm", sw.line, nil, swarmBin,
		"-relay", "http://"+addr, "-n", strconv.Itoa(n), "-named", strconv.Itoa(named), "-prefix", "swarm")

	started := time.Now()
	sw.wait(t, deadline, fmt.Sprintf("%d agents online", n), func() bool { return len(sw.online) == n })
	t.Logf("%d agents online %v after the swarm started", n, time.Since(started).Round(time.Millisecond))
	before := make(map[int]string, n)
	seen := make(map[string]int, n)
	sw.mu.Lock()
	for i, evs := range sw.online {
		u := evs[0].url
		before[i] = u
		if j, dup := seen[u]; dup {
			t.Errorf("agents %d and %d were both granted %s", i, j, u)
		}
		seen[u] = i
		if want := fmt.Sprintf("http://swarm%d.localhost:%s", i, port); i < named && u != want {
			t.Errorf("agent %d asked for swarm%d and got %s", i, i, u)
		}
	}
	sw.mu.Unlock()
	if t.Failed() {
		t.FailNow()
	}

	killedAt := time.Now()
	relay1.kill(t)
	relay2, listenAt := restartStartRelay(t, tunnelBin, addr)
	t.Logf("relay killed; the new one listened %v later", listenAt.Sub(killedAt).Round(time.Millisecond))

	// Each agent's first online event after the kill is its re-registration
	// with the new relay.
	var after map[int]swarmOnline
	sw.wait(t, deadline, fmt.Sprintf("%d agents back online", n), func() bool {
		after = make(map[int]swarmOnline, n)
		for i, evs := range sw.online {
			for _, ev := range evs {
				if ev.at.After(killedAt) {
					after[i] = ev
					break
				}
			}
		}
		return len(after) == n
	})
	var took []time.Duration
	early := 0
	for i := range n {
		ev := after[i]
		if ev.url != before[i] {
			t.Errorf("agent %d came back as %s, was %s", i, ev.url, before[i])
		}
		d := ev.at.Sub(listenAt)
		if d < 0 {
			// Online between the listen and the "listening" line reaching
			// the test: count it as immediate.
			early++
			d = 0
		}
		took = append(took, d)
	}
	slices.Sort(took)
	pct := func(p float64) time.Duration {
		k := int(p*float64(len(took))+0.999999) - 1
		return took[max(k, 0)].Round(time.Millisecond)
	}
	sw.mu.Lock()
	offline, agentErrs := sw.offline, slices.Clone(sw.errors)
	sw.mu.Unlock()
	t.Logf("re-registration after the new relay listened, %d agents: p50 %v, p90 %v, p99 %v, max %v (%d before the listening line was read; %d offline events in all)",
		n, pct(0.50), pct(0.90), pct(0.99), took[len(took)-1].Round(time.Millisecond), early, offline)
	if len(agentErrs) > 0 {
		t.Errorf("agents stopped for good: %q", agentErrs)
	}

	// The new relay routes each name to its own agent: the local server
	// answers with the Host it was asked for.
	restartCheckRouting(t, addr, before)

	// Goodbye: the swarm exits 0 once every agent has returned.
	swarm.signal(t, syscall.SIGTERM)
	if code := swarm.exitCode(t, 30*time.Second); code != 0 {
		t.Errorf("swarm exited %d after SIGTERM, want 0", code)
	}
	sw.mu.Lock()
	bye := sw.bye
	sw.mu.Unlock()
	if bye != n {
		t.Errorf("swarm said goodbye for %d agents, want %d", bye, n)
	}
	relay2.signal(t, syscall.SIGTERM)
	if code := relay2.exitCode(t, 30*time.Second); code != 0 {
		t.Errorf("relay exited %d after SIGTERM, want 0", code)
	}
}

// restartCheckRouting fetches every URL through the relay at addr and checks
// that the answer comes from a local server asked for that URL's host.
func restartCheckRouting(t *testing.T, addr string, urls map[int]string) {
	t.Helper()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 16,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	work := make(chan string)
	var mu sync.Mutex
	var bad []string
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for u := range work {
				got, err := restartGet(client, u+"/")
				want := "200 host=" + strings.TrimPrefix(u, "http://")
				if err != nil || got != want {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s: %q %v", u, got, err))
					mu.Unlock()
				}
			}
		})
	}
	for _, u := range urls {
		work <- u
	}
	close(work)
	wg.Wait()
	if len(bad) > 0 {
		t.Errorf("%d of %d tunnels answered wrongly after the restart, e.g. %s", len(bad), len(urls), bad[0])
	}
}

func restartGet(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, b), err
}

// swarmState collects the swarm's stdout lines.
type swarmState struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every line
	online  map[int][]swarmOnline
	offline int
	errors  []string
	bye     int
	eof     bool
}

type swarmOnline struct {
	url string
	at  time.Time // the swarm's clock: same machine, same wall clock
}

func (s *swarmState) line(line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		close(s.changed)
		s.changed = make(chan struct{})
	}()
	if line == "" { // end of stream
		s.eof = true
		return
	}
	f := strings.Fields(line)
	switch {
	case f[0] == "online" && len(f) == 4:
		i, _ := strconv.Atoi(f[1])
		ns, _ := strconv.ParseInt(f[3], 10, 64)
		s.online[i] = append(s.online[i], swarmOnline{url: f[2], at: time.Unix(0, ns)})
	case f[0] == "offline":
		s.offline++
	case f[0] == "error":
		s.errors = append(s.errors, line)
	case f[0] == "bye" && len(f) == 2:
		s.bye, _ = strconv.Atoi(f[1])
	}
}

// wait polls cond (called with s.mu held) on every line until it holds.
func (s *swarmState) wait(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		s.mu.Lock()
		ok, eof, changed, got := cond(), s.eof, s.changed, len(s.online)
		s.mu.Unlock()
		if ok {
			return
		}
		if eof {
			t.Fatalf("swarm exited before %s (%d agents seen online)", what, got)
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("no %s after %v (%d agents seen online)", what, d, got)
		}
	}
}

// restartBuild builds the main package at pkg (relative to this directory)
// into out, without -race.
func restartBuild(t *testing.T, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// restartFreeAddr returns a free loopback address whose port lies below the
// ephemeral range, so that no agent's outgoing connection can take the port
// (or connect to itself on it) while the relay is down.
func restartFreeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(20000+rand.IntN(12000)))
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free port in 20000-31999")
	return ""
}

// restartStartRelay runs `tunnel relay` on addr and returns it with the
// time the test read its "relay listening" line. A port still held by a
// dying socket is retried for a few seconds.
func restartStartRelay(t *testing.T, bin, addr string) (*restartProc, time.Time) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		listening := make(chan time.Time, 1)
		onStderr := func(line string) {
			if strings.HasPrefix(line, "relay listening on ") {
				select {
				case listening <- time.Now():
				default:
				}
			}
		}
		p := startRestartProc(t, "relay", nil, onStderr, bin, "relay", "--domain", "localhost", "--addr", addr, "--log-level", "warn")
		select {
		case at := <-listening:
			return p, at
		case <-p.exited:
			if attempt == 50 {
				t.Fatalf("relay could not start on %s: %v", addr, p.err)
			}
			time.Sleep(100 * time.Millisecond)
		case <-time.After(30 * time.Second):
			t.Fatal("relay not listening after 30s")
		}
	}
}

// restartProc is a child process whose output is read line by line.
type restartProc struct {
	name     string
	cmd      *exec.Cmd
	stdout   io.Reader
	stderr   io.Reader
	onStdout func(string) // nil: log the line; "" marks the end
	onStderr func(string) // besides logging it
	exited   chan struct{}
	err      error
}

// startRestartProc starts bin; onStdout and onStderr may be nil. The
// process is killed, if it still runs, when the test ends.
func startRestartProc(t *testing.T, name string, onStdout, onStderr func(string), bin string, args ...string) *restartProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &restartProc{name: name, cmd: cmd, stdout: outPipe, stderr: errPipe, onStdout: onStdout, onStderr: onStderr, exited: make(chan struct{})}
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
	})
	p.startReaders(t)
	return p
}

func (p *restartProc) startReaders(t *testing.T) {
	var readers sync.WaitGroup
	readers.Go(func() {
		sc := bufio.NewScanner(p.stdout)
		for sc.Scan() {
			if p.onStdout != nil {
				p.onStdout(sc.Text())
			} else {
				t.Logf("%s stdout: %s", p.name, sc.Text())
			}
		}
		io.Copy(io.Discard, p.stdout)
		if p.onStdout != nil {
			p.onStdout("")
		}
	})
	readers.Go(func() {
		sc := bufio.NewScanner(p.stderr)
		for sc.Scan() {
			t.Logf("%s stderr: %s", p.name, sc.Text())
			if p.onStderr != nil {
				p.onStderr(sc.Text())
			}
		}
		io.Copy(io.Discard, p.stderr)
	})
	go func() {
		readers.Wait() // Wait closes the pipes: read them to the end first
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
}

func (p *restartProc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

// kill sends SIGKILL and waits until the process is gone.
func (p *restartProc) kill(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: still running 30s after SIGKILL", p.name)
	}
}

// exitCode waits up to d for the process to exit and returns its status
// (-1 if a signal ended it).
func (p *restartProc) exitCode(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(d):
		t.Fatalf("%s: still running after %v", p.name, d)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("%s: %v", p.name, p.err)
	}
	return 0
}
