package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

// tunnelBin is the tunnel binary built once for the process tests.
var tunnelBin string

// waitTimeout bounds every wait for a child process's output or exit. It is
// generous because -race builds on a busy machine are slow; a passing test
// never waits for it.
const waitTimeout = 30 * time.Second

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tunnel-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tunnelBin = filepath.Join(dir, "tunnel")
	args := []string{"build", "-o", tunnelBin}
	if raceEnabled() {
		// A race inside the child makes it exit 66, which fails the test
		// that started it.
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building tunnel:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// proc is a tunnel process started by a test. Its output is collected line
// by line and echoed to the test log.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout *lines
	stderr *lines
	exited chan struct{} // closed once the process has exited and its output is read
	err    error         // cmd.Wait's result, set before exited is closed
}

// startTunnel runs the tunnel binary with args. The process is killed, if it
// still runs, when the test ends.
func startTunnel(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(tunnelBin, args...)
	// A relay's admin listener goes on a free port, not on the default
	// 9090 that parallel tests (and a relay on this machine) would share.
	cmd.Env = append(append(os.Environ(), "TUNNEL_ADMIN_ADDR=127.0.0.1:0"), env...)
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
	t.Logf("%s: started pid %d: tunnel %s", name, cmd.Process.Pid, strings.Join(args, " "))
	p := &proc{name: name, cmd: cmd, stdout: newLines(), stderr: newLines(), exited: make(chan struct{})}
	var readers sync.WaitGroup
	readers.Go(func() { p.stdout.readAll(t, name+" stdout", outPipe) })
	readers.Go(func() { p.stderr.readAll(t, name+" stderr", errPipe) })
	go func() {
		readers.Wait() // cmd.Wait closes the pipes, so read them to the end first
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// signal sends sig to the process.
func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

// exitCode waits for the process to exit and returns its exit status, or -1
// if a signal killed it.
func (p *proc) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(waitTimeout):
		t.Fatalf("%s: still running after %v", p.name, waitTimeout)
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

// lines collects a stream's lines and lets tests wait for them.
type lines struct {
	mu      sync.Mutex
	all     []string
	eof     bool
	changed chan struct{} // closed and replaced whenever all or eof changes
}

func newLines() *lines { return &lines{changed: make(chan struct{})} }

func (l *lines) readAll(t *testing.T, label string, r io.Reader) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			line = strings.TrimSuffix(line, "\n")
			t.Logf("%s: %s", label, line)
			l.update(func() { l.all = append(l.all, line) })
		}
		if err != nil {
			l.update(func() { l.eof = true })
			return
		}
	}
}

func (l *lines) update(f func()) {
	l.mu.Lock()
	f()
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// first waits until the stream has n lines and returns them.
func (l *lines) first(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	l.wait(t, fmt.Sprintf("%d lines", n), func(all []string) bool {
		if len(all) < n {
			return false
		}
		got = all[:n]
		return true
	})
	return got
}

// find waits for a line that satisfies match and returns it.
func (l *lines) find(t *testing.T, what string, match func(string) bool) string {
	t.Helper()
	var got string
	l.wait(t, what, func(all []string) bool {
		for _, s := range all {
			if match(s) {
				got = s
				return true
			}
		}
		return false
	})
	return got
}

// contains reports whether some line so far contains sub.
func (l *lines) contains(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.all {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func (l *lines) wait(t *testing.T, what string, done func(all []string) bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		ok, eof, changed := done(l.all), l.eof, l.changed
		all := strings.Join(l.all, "\n")
		l.mu.Unlock()
		if ok {
			return
		}
		if eof {
			t.Fatalf("stream ended without %s; it said:\n%s", what, all)
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no %s after %v; so far:\n%s", what, waitTimeout, all)
		}
	}
}

// startRelay runs `tunnel relay --domain localhost` on a free port and
// returns it with its address, once it listens.
func startRelay(t *testing.T, extra ...string) (*proc, string) {
	t.Helper()
	return startRelayEnv(t, nil, extra...)
}

// startRelayEnv is startRelay with env added to the relay's environment.
func startRelayEnv(t *testing.T, env []string, extra ...string) (*proc, string) {
	t.Helper()
	p := startTunnel(t, "relay", env, append([]string{"relay", "--domain", "localhost", "--addr", "127.0.0.1:0"}, extra...)...)
	line := p.stderr.find(t, "listening line", func(s string) bool { return strings.HasPrefix(s, "relay listening on ") })
	addr, _, _ := strings.Cut(strings.TrimPrefix(line, "relay listening on "), ",")
	return p, addr
}

// startExpose runs `tunnel expose` against the relay at relayAddr.
func startExpose(t *testing.T, name, relayAddr string, args ...string) *proc {
	t.Helper()
	return startTunnel(t, name, nil, append([]string{"expose", "--relay", "http://" + relayAddr}, args...)...)
}

// viaRelay returns an HTTP client that sends every request to relayAddr,
// whatever the host in the URL: Go does not resolve *.localhost, and the
// relay routes by the Host header anyway.
func viaRelay(t *testing.T, relayAddr string) *http.Client {
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, relayAddr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// localServer is the local app that expose forwards to: GET / answers text,
// /ws echoes WebSocket text messages with "echo: " in front, /slow answers
// only when released.
type localServer struct {
	*httptest.Server
	slowEntered chan struct{} // receives when a /slow request arrived
	release     chan struct{} // closed to let /slow requests answer
}

func startLocalServer(t *testing.T) *localServer {
	ls := &localServer{slowEntered: make(chan struct{}, 1), release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from local")
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		ls.slowEntered <- struct{}{}
		select {
		case <-ls.release:
		case <-r.Context().Done():
		}
		fmt.Fprint(w, "slow")
	})
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	})
	ls.Server = httptest.NewServer(mux)
	t.Cleanup(func() {
		close(ls.release)
		ls.Close()
	})
	return ls
}

func (ls *localServer) port() string {
	_, port, _ := net.SplitHostPort(ls.Listener.Addr().String())
	return port
}

// wsEcho dials url through client, sends msg, returns the answer and closes
// the WebSocket normally.
func wsEcho(t *testing.T, client *http.Client, url, msg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("dial %s: status %s", url, resp.Status)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	typ, got, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.MessageText {
		t.Fatalf("answer is a %v message, want text", typ)
	}
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		t.Fatalf("close: %v", err)
	}
	return string(got)
}

// get fetches url through client and returns the status and body.
func get(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}
