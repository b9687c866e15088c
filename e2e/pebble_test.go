package e2e

// A real ACME server for the HTTPS tests: Pebble (github.com/letsencrypt/pebble)
// and its DNS helper pebble-challtestsrv, run as child processes on 127.0.0.1.
//
// Binaries. The two commands are built once per test process (sync.Once) with
// `go install …@v2.10.1` and cached, together with the config and certificate
// files they need (copied from the module, so the cache does not depend on the
// module cache staying put), in
//
//	$TMPDIR/tunnel-e2e-pebble-v2.10.1-GOOS-GOARCH/
//
// The directory is filled in a private temporary directory and renamed into
// place, so concurrent test processes never see half a cache; later processes
// reuse it without invoking the go command. Delete it to force a rebuild. The
// first build downloads Pebble's modules through the module proxy.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// acmeDomain is the domain the ACME tests get certificates for. Pebble
// accepts any syntactically valid DNS name (it has no public-suffix or TLD
// checks; only the names in the config's domainBlocklist are refused), and
// pebble-challtestsrv answers every A query with 127.0.0.1. ".test" is
// reserved (RFC 2606), so it can never reach a real name. autocert needs at
// least one dot in a server name, so use "demo."+acmeDomain and the like.
const acmeDomain = "tunnel.test"

const pebbleVersion = "v2.10.1"

// pebbleCA is a running Pebble ACME server with its DNS helper.
type pebbleCA struct {
	DirectoryURL string         // https://127.0.0.1:PORT/dir
	Client       *http.Client   // trusts Pebble's API certificate (test/certs/pebble.minica.pem); counts requests
	Roots        *x509.CertPool // the root that signs issued certificates (GET https://127.0.0.1:MGMT/roots/0)
	RootsPEM     []byte
	// NewOrders returns how many newOrder requests (POSTs to the directory's
	// newOrder URL) went through Client.
	NewOrders func() int64
	// Requests returns how many requests of any kind went through Client.
	Requests func() int64
	// ManagementURL is Pebble's management interface, https://127.0.0.1:MGMT
	// (same API certificate as DirectoryURL).
	ManagementURL string
}

// pebbleFiles is the cache directory with the binaries and the files they need.
type pebbleFiles struct {
	dir string
}

func (f pebbleFiles) pebble() string       { return filepath.Join(f.dir, "pebble") }
func (f pebbleFiles) challtestsrv() string { return filepath.Join(f.dir, "pebble-challtestsrv") }
func (f pebbleFiles) config() string       { return filepath.Join(f.dir, "pebble-config.json") }
func (f pebbleFiles) apiCert() string      { return filepath.Join(f.dir, "localhost-cert.pem") }
func (f pebbleFiles) apiKey() string       { return filepath.Join(f.dir, "localhost-key.pem") }
func (f pebbleFiles) minicaPEM() string    { return filepath.Join(f.dir, "pebble.minica.pem") }
func (f pebbleFiles) complete() bool {
	for _, p := range []string{f.pebble(), f.challtestsrv(), f.config(), f.apiCert(), f.apiKey(), f.minicaPEM()} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			return false
		}
	}
	return true
}

var (
	pebbleBuildOnce  sync.Once
	pebbleBuilt      pebbleFiles
	pebbleBuildError error
)

// pebbleBinaries returns the cached Pebble files, building them on first use.
func pebbleBinaries(t testing.TB) pebbleFiles {
	t.Helper()
	pebbleBuildOnce.Do(func() {
		pebbleBuilt, pebbleBuildError = buildPebble()
	})
	if pebbleBuildError != nil {
		t.Fatalf("building pebble %s failed: %v", pebbleVersion, pebbleBuildError)
	}
	return pebbleBuilt
}

func buildPebble() (pebbleFiles, error) {
	final := pebbleFiles{dir: filepath.Join(os.TempDir(),
		fmt.Sprintf("tunnel-e2e-pebble-%s-%s-%s", pebbleVersion, runtime.GOOS, runtime.GOARCH))}
	if final.complete() {
		return final, nil
	}
	tmp, err := os.MkdirTemp(os.TempDir(), "tunnel-e2e-pebble-build-")
	if err != nil {
		return pebbleFiles{}, err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	goCmd := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = tmp // outside any module: `go install pkg@version` needs none
		cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOWORK=off", "GOFLAGS=-buildvcs=false")
		out, err := cmd.CombinedOutput()
		if err != nil {
			msg := fmt.Sprintf("go %s: %v", strings.Join(args, " "), err)
			if o := strings.Join(strings.Fields(string(out)), " "); o != "" {
				msg += ": " + o
			}
			return "", errors.New(msg)
		}
		return strings.TrimSpace(string(out)), nil
	}
	const mod = "github.com/letsencrypt/pebble/v2"
	if _, err := goCmd("install", mod+"/cmd/pebble@"+pebbleVersion, mod+"/cmd/pebble-challtestsrv@"+pebbleVersion); err != nil {
		return pebbleFiles{}, err
	}
	modCache, err := goCmd("env", "GOMODCACHE")
	if err != nil {
		return pebbleFiles{}, err
	}
	src := filepath.Join(strings.Split(modCache, string(os.PathListSeparator))[0],
		"github.com", "letsencrypt", "pebble", "v2@"+pebbleVersion, "test")
	built := pebbleFiles{dir: tmp}
	for from, to := range map[string]string{
		filepath.Join(src, "config", "pebble-config.json"):   built.config(),
		filepath.Join(src, "certs", "localhost", "cert.pem"): built.apiCert(),
		filepath.Join(src, "certs", "localhost", "key.pem"):  built.apiKey(),
		filepath.Join(src, "certs", "pebble.minica.pem"):     built.minicaPEM(),
	} {
		b, err := os.ReadFile(from)
		if err != nil {
			return pebbleFiles{}, err
		}
		if err := os.WriteFile(to, b, 0o644); err != nil {
			return pebbleFiles{}, err
		}
	}
	if !built.complete() {
		return pebbleFiles{}, fmt.Errorf("go install left no binaries in %s", tmp)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return pebbleFiles{}, err
	}
	if err := os.Rename(tmp, final.dir); err != nil {
		// Another test process got there first: use its copy.
		if final.complete() {
			return final, nil
		}
		return pebbleFiles{}, err
	}
	return final, nil
}

// startPebble starts pebble and pebble-challtestsrv (DNS answering 127.0.0.1
// for every A query, nothing for AAAA) as child processes; Pebble's validator
// connects to 127.0.0.1:httpPort for HTTP-01 and 127.0.0.1:tlsPort for
// TLS-ALPN-01. alwaysValid sets PEBBLE_VA_ALWAYS_VALID=1 (skip validation);
// false keeps real validation. Both processes are killed when the test ends.
//
// Pebble's Retry-After hints are turned off (the shipped config asks for 3 s
// per authorization poll and 5 s per order poll); acme.Client then polls
// every second.
func startPebble(t testing.TB, httpPort, tlsPort int, alwaysValid bool) *pebbleCA {
	t.Helper()
	files := pebbleBinaries(t)
	dir := t.TempDir()

	minica, err := os.ReadFile(files.minicaPEM())
	if err != nil {
		t.Fatal(err)
	}
	apiRoots := x509.NewCertPool()
	if !apiRoots.AppendCertsFromPEM(minica) {
		t.Fatal("pebble: no certificate in pebble.minica.pem")
	}
	base := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: apiRoots},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
	}
	plain := &http.Client{Transport: base, Timeout: 2 * time.Second} // readiness and management; not counted
	counting := &pebbleTransport{base: base}
	t.Cleanup(base.CloseIdleConnections) // also if startPebble fails

	var (
		procs   []*pebbleProc
		apiAddr string
		mgmt    string
	)
	for attempt := 1; ; attempt++ {
		ports := pebbleFreePorts(t, 4)
		apiAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		mgmt = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
		dnsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2]))
		challMgmt := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3]))

		cfgFile := filepath.Join(dir, fmt.Sprintf("pebble-config-%d.json", attempt))
		writePebbleConfig(t, files, cfgFile, apiAddr, mgmt, httpPort, tlsPort)

		env := []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"}
		if alwaysValid {
			env = append(env, "PEBBLE_VA_ALWAYS_VALID=1")
		}
		procs = []*pebbleProc{
			startPebbleProc(t, "challtestsrv", dir, nil, files.challtestsrv(),
				"-dnsserver", dnsAddr,
				"-management", challMgmt, // cannot be turned off; keep it off :8055
				"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
				"-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""),
			startPebbleProc(t, "pebble", dir, env, files.pebble(),
				"-config", cfgFile, "-dnsserver", dnsAddr, "-strict=false"),
		}
		err := waitPebbleReady(plain, procs, apiAddr, mgmt, dnsAddr, 20*time.Second)
		if err == nil {
			break
		}
		for _, p := range procs {
			p.stop()
		}
		var exited *pebbleExitError
		if !errors.As(err, &exited) || attempt == 3 {
			t.Fatalf("pebble did not start: %v", err)
		}
		t.Logf("pebble: %v; retrying with other ports", err) // most likely a port taken meanwhile
	}

	t.Cleanup(func() {
		// Runs before the processes are killed (cleanups run last first).
		// Let requests still under way (autocert deactivates authorizations
		// from a goroutine of its own) finish before Pebble goes away.
		deadline := time.Now().Add(5 * time.Second)
		for counting.inflight.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		base.CloseIdleConnections()
	})

	directoryURL := "https://" + apiAddr + "/dir"
	var directory struct {
		NewOrder string `json:"newOrder"`
	}
	if err := pebbleGetJSON(plain, directoryURL, &directory); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(directory.NewOrder)
	if err != nil || u.Host == "" {
		t.Fatalf("pebble: bad newOrder URL %q in directory: %v", directory.NewOrder, err)
	}
	counting.newOrderHost, counting.newOrderPath = u.Host, u.Path

	rootsPEM, err := pebbleGet(plain, "https://"+mgmt+"/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootsPEM) {
		t.Fatalf("pebble: no certificate in /roots/0: %q", rootsPEM)
	}

	return &pebbleCA{
		DirectoryURL:  directoryURL,
		Client:        &http.Client{Transport: counting, Timeout: 30 * time.Second},
		Roots:         roots,
		RootsPEM:      rootsPEM,
		NewOrders:     counting.newOrders.Load,
		Requests:      counting.requests.Load,
		ManagementURL: "https://" + mgmt,
	}
}

// writePebbleConfig writes the shipped config with our addresses, ports and
// absolute certificate paths.
func writePebbleConfig(t testing.TB, files pebbleFiles, to, apiAddr, mgmtAddr string, httpPort, tlsPort int) {
	t.Helper()
	raw, err := os.ReadFile(files.config())
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil || cfg["pebble"] == nil {
		t.Fatalf("pebble: cannot read shipped config: %v", err)
	}
	p := cfg["pebble"]
	p["listenAddress"] = apiAddr
	p["managementListenAddress"] = mgmtAddr
	p["certificate"] = files.apiCert()
	p["privateKey"] = files.apiKey()
	p["httpPort"] = httpPort
	p["tlsPort"] = tlsPort
	p["ocspResponderURL"] = ""
	p["retryAfter"] = map[string]int{"authz": 0, "order": 0}
	// One profile, Pebble's default of 90 days (pebbleValidity). The shipped
	// config also has "shortlived" (6 days), and Pebble picks one of them
	// at random for every order that names none, as autocert's do: checks
	// of a certificate's lifetime, like the doctor's warning under 14 days
	// left, would pass or fail by chance.
	p["profiles"] = map[string]any{
		"default": map[string]any{"description": "90 days", "validityPeriod": int64(pebbleValidity / time.Second)},
	}
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// pebbleFreePorts returns n distinct ports free on 127.0.0.1 for TCP (and,
// as far as can be checked, UDP, for the DNS server).
func pebbleFreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, ln)
		p := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // UDP side taken: skip this port (the TCP listener stays open until we return)
		}
		closers = append(closers, pc)
		ports = append(ports, p)
	}
	return ports
}

// pebbleTransport counts the requests going to Pebble.
type pebbleTransport struct {
	base                       http.RoundTripper
	newOrderHost, newOrderPath string // set before the client is handed out
	requests, newOrders        atomic.Int64
	inflight                   atomic.Int64
}

func (c *pebbleTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.requests.Add(1)
	if req.Method == http.MethodPost && req.URL.Host == c.newOrderHost && req.URL.Path == c.newOrderPath {
		c.newOrders.Add(1)
	}
	c.inflight.Add(1)
	defer c.inflight.Add(-1)
	return c.base.RoundTrip(req)
}

// pebbleProc is a child process whose output goes to t.Log.
type pebbleProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and its output is drained
	err  error         // from Wait, valid after done
	once sync.Once
}

type pebbleExitError struct {
	name string
	err  error
}

func (e *pebbleExitError) Error() string { return fmt.Sprintf("%s exited early: %v", e.name, e.err) }

func startPebbleProc(t testing.TB, name, dir string, env []string, path string, args ...string) *pebbleProc {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PEBBLE_") { // only what we set below
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	w := &pebbleLogWriter{t: t, prefix: name + ": "}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	// On Linux, have the kernel kill the child if the test binary dies
	// without running its cleanups (a -timeout panic, a kill). The field only
	// exists there, hence reflection.
	if f := reflect.ValueOf(cmd.SysProcAttr).Elem().FieldByName("Pdeathsig"); f.IsValid() && f.CanSet() {
		f.Set(reflect.ValueOf(syscall.SIGKILL))
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &pebbleProc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		w.flush()
		close(p.done)
	}()
	t.Cleanup(p.stop)
	return p
}

// stop kills the process and waits until it has exited.
func (p *pebbleProc) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
}

func (p *pebbleProc) exited() error {
	select {
	case <-p.done:
		return &pebbleExitError{name: p.name, err: p.err}
	default:
		return nil
	}
}

// pebbleLogWriter passes whole lines to t.Log.
type pebbleLogWriter struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
	buf    []byte
}

func (w *pebbleLogWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.t.Log(w.prefix + string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}

func (w *pebbleLogWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.t.Log(w.prefix + string(w.buf))
		w.buf = nil
	}
}

// waitPebbleReady polls until the directory and the management interface
// answer and the DNS server says 127.0.0.1 (and no IPv6 address) for a name
// under acmeDomain.
func waitPebbleReady(c *http.Client, procs []*pebbleProc, apiAddr, mgmtAddr, dnsAddr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	checks := []struct {
		what string
		ok   func() error
	}{
		{"ACME directory", func() error { _, err := pebbleGet(c, "https://"+apiAddr+"/dir"); return err }},
		{"management interface", func() error { _, err := pebbleGet(c, "https://"+mgmtAddr+"/roots/0"); return err }},
		{"DNS", func() error { return pebbleCheckDNS(dnsAddr, "ready."+acmeDomain) }},
	}
	for _, check := range checks {
		for {
			for _, p := range procs {
				if err := p.exited(); err != nil {
					return err
				}
			}
			err := check.ok()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not ready after %v: %v", check.what, d, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func pebbleGet(c *http.Client, url string) ([]byte, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, nil
}

func pebbleGetJSON(c *http.Client, url string, v any) error {
	b, err := pebbleGet(c, url)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: %v", url, err)
	}
	return nil
}

// pebbleCheckDNS asks the DNS server over TCP, as Pebble's validator does.
func pebbleCheckDNS(server, name string) error {
	a, err := pebbleDNSQuery(server, name, dnsmessage.TypeA)
	if err != nil {
		return err
	}
	if len(a) != 1 || !a[0].Equal(net.IPv4(127, 0, 0, 1)) {
		return fmt.Errorf("DNS A %s: got %v, want [127.0.0.1]", name, a)
	}
	aaaa, err := pebbleDNSQuery(server, name, dnsmessage.TypeAAAA)
	if err != nil {
		return err
	}
	if len(aaaa) != 0 { // Pebble dials the first AAAA answer if there is one
		return fmt.Errorf("DNS AAAA %s: got %v, want none", name, aaaa)
	}
	return nil
}

func pebbleDNSQuery(server, name string, typ dnsmessage.Type) ([]net.IP, error) {
	q, err := dnsmessage.NewName(name + ".")
	if err != nil {
		return nil, err
	}
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: 4711, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: q, Type: typ, Class: dnsmessage.ClassINET}},
	}
	packed, err := msg.Pack()
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("tcp", server, time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(packed))), packed...)); err != nil {
		return nil, err
	}
	var n uint16
	if err := binary.Read(conn, binary.BigEndian, &n); err != nil {
		return nil, err
	}
	resp := make([]byte, n)
	if _, err := io.ReadFull(conn, resp); err != nil {
		return nil, err
	}
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		return nil, err
	}
	if m.Header.ID != msg.Header.ID || m.Header.RCode != dnsmessage.RCodeSuccess {
		return nil, fmt.Errorf("DNS %v %s: id %d rcode %v", typ, name, m.Header.ID, m.Header.RCode)
	}
	var ips []net.IP
	for _, ans := range m.Answers {
		switch r := ans.Body.(type) {
		case *dnsmessage.AResource:
			ips = append(ips, net.IP(r.A[:]))
		case *dnsmessage.AAAAResource:
			ips = append(ips, net.IP(r.AAAA[:]))
		}
	}
	return ips, nil
}
