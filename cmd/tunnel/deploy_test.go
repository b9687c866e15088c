package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/tunnel-dev/tunnel/relay"
)

// The deploy tests check the files under deploy/ and docs/deploy.md against
// the real binary: the Dockerfile's build command run outside Docker, the
// systemd units verified and started as their ExecStart says, compose.yaml
// and the example relay config parsed, the release script run, and every
// tunnel flag the docs show looked up.

// deployInstalledBinary is where the units, the docs and the archives put
// the binary.
const deployInstalledBinary = "/usr/local/bin/tunnel"

// deployRoot is the repository's root; the tests run in cmd/tunnel.
func deployRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func deployFile(t *testing.T, rel string) string {
	t.Helper()
	return filepath.Join(deployRoot(t), filepath.FromSlash(rel))
}

func deployRead(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(deployFile(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ---- Dockerfile ----

// deployInstr is one Dockerfile instruction, continuation lines joined.
type deployInstr struct {
	line int
	cmd  string // upper case: FROM, RUN, …
	args string
}

func deployParseDockerfile(t *testing.T) []deployInstr {
	t.Helper()
	var out []deployInstr
	lines := strings.Split(deployRead(t, "deploy/Dockerfile"), "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		start := i + 1
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			next := strings.TrimSpace(lines[i])
			if strings.HasPrefix(next, "#") {
				continue
			}
			line = strings.TrimSuffix(line, `\`) + " " + next
		}
		cmd, args, _ := strings.Cut(line, " ")
		out = append(out, deployInstr{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)})
	}
	return out
}

// deployJSONArray parses an exec-form argument such as ["tunnel"].
func deployJSONArray(t *testing.T, in deployInstr) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(in.args), &v); err != nil {
		t.Fatalf("Dockerfile:%d: %s %s: want the exec form, a JSON array: %v", in.line, in.cmd, in.args, err)
	}
	return v
}

// deployDockerImage is what the tests need to know of the final image.
type deployDockerImage struct {
	volume  string
	env     map[string]string
	expose  []string
	user    string
	binary  string // where the final stage copies the binary from the build stage
	buildRU string // the RUN line of the build stage that runs go build
}

// deployDockerfile checks the Dockerfile's structure, as a linter would:
// hadolint is not packaged for Debian nor on the Go module proxy.
func deployDockerfile(t *testing.T) deployDockerImage {
	t.Helper()
	instrs := deployParseDockerfile(t)
	img := deployDockerImage{env: map[string]string{}}
	var froms []deployInstr
	stage := -1
	args := map[string]string{}
	for _, in := range instrs {
		switch in.cmd {
		case "FROM":
			froms = append(froms, in)
			stage++
			img = deployDockerImage{env: map[string]string{}, buildRU: img.buildRU, binary: img.binary}
		case "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			args[k] = v
		case "ADD":
			// COPY says what it does; ADD also fetches URLs and unpacks
			// archives.
			t.Errorf("Dockerfile:%d: ADD %s: use COPY", in.line, in.args)
		case "RUN":
			if strings.Contains(in.args, "go build") {
				if stage != 0 {
					t.Errorf("Dockerfile:%d: go build outside the build stage", in.line)
				}
				if img.buildRU != "" {
					t.Errorf("Dockerfile:%d: a second go build", in.line)
				}
				img.buildRU = in.args
			}
			if stage > 0 {
				t.Errorf("Dockerfile:%d: RUN in the final stage, which has no shell", in.line)
			}
		case "COPY":
			f := strings.Fields(in.args)
			if slices.Contains(f, "--from=build") && len(f) >= 3 && strings.HasSuffix(f[len(f)-1], "/bin/tunnel") {
				img.binary = f[len(f)-2]
			}
		case "ENV":
			k, v, ok := strings.Cut(in.args, "=")
			if !ok || strings.ContainsAny(v, " \t") {
				t.Errorf("Dockerfile:%d: ENV %s: want one KEY=value", in.line, in.args)
			}
			img.env[k] = v
		case "VOLUME":
			v := deployJSONArray(t, in)
			if len(v) != 1 {
				t.Errorf("Dockerfile:%d: VOLUME %v: want the state directory alone", in.line, v)
			} else {
				img.volume = v[0]
			}
		case "EXPOSE":
			img.expose = strings.Fields(in.args)
		case "USER":
			img.user = in.args
		case "ENTRYPOINT":
			if v := deployJSONArray(t, in); !slices.Equal(v, []string{"tunnel"}) {
				t.Errorf("Dockerfile:%d: ENTRYPOINT %q, want [\"tunnel\"]", in.line, v)
			}
		}
	}
	if len(froms) != 2 {
		t.Fatalf("Dockerfile has %d stages, want 2: a build stage and a small final one", len(froms))
	}
	if f := strings.Fields(froms[0].args); len(f) != 3 || !strings.EqualFold(f[1], "AS") || f[2] != "build" || !strings.HasPrefix(f[0], "golang:") {
		t.Errorf("Dockerfile:%d: FROM %s, want golang:… AS build", froms[0].line, froms[0].args)
	}
	final := strings.Fields(froms[1].args)[0]
	if final != "scratch" && !strings.HasPrefix(final, "gcr.io/distroless/static") {
		t.Errorf("Dockerfile:%d: final image %s, want distroless/static or scratch", froms[1].line, final)
	}
	// The build stage's Go is the one go.mod asks for.
	goMod := deployRead(t, "go.mod")
	if m := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(goMod); m == nil || args["GO_VERSION"] != m[1] {
		t.Errorf("Dockerfile: ARG GO_VERSION=%s, want go.mod's go %v", args["GO_VERSION"], m)
	}
	if img.user == "" || img.user == "root" || strings.HasPrefix(img.user, "0:") || img.user == "0" {
		t.Errorf("Dockerfile: final USER %q, want a non-root user", img.user)
	}
	if exp := slices.Sorted(slices.Values(img.expose)); !slices.Equal(exp, []string{"443", "80"}) {
		t.Errorf("Dockerfile: EXPOSE %v, want 80 443", img.expose)
	}
	if img.volume == "" || img.env["STATE_DIRECTORY"] != img.volume {
		t.Errorf("Dockerfile: VOLUME %q and STATE_DIRECTORY %q: want the relay's default state directory on the volume", img.volume, img.env["STATE_DIRECTORY"])
	}
	if img.buildRU == "" || img.binary == "" {
		t.Fatalf("Dockerfile: no go build (%q) or no COPY --from=build of its binary (%q)", img.buildRU, img.binary)
	}
	for _, want := range []string{"CGO_ENABLED=0 ", "-trimpath", "-X main.version=${VERSION}", "-o " + img.binary + " ", "./cmd/tunnel"} {
		if !strings.Contains(img.buildRU, want) {
			t.Errorf("Dockerfile: go build line %q lacks %q", img.buildRU, want)
		}
	}
	return img
}

func deployBase(p string) string { return p[strings.LastIndex(p, "/")+1:] }

// TestDeployDockerfile checks the Dockerfile's structure and runs its go
// build line outside Docker, as the build stage would (WORKDIR is the
// repository's root, VERSION a build argument), then checks the binary:
// static, built with -trimpath and CGO_ENABLED=0, stamped with VERSION.
func TestDeployDockerfile(t *testing.T) {
	img := deployDockerfile(t)
	if t.Failed() {
		return
	}
	out := t.TempDir()
	bin := filepath.Join(out, "tunnel")
	line := strings.Replace(img.buildRU, "-o "+img.binary+" ", "-o "+bin+" ", 1)
	const version = "v9.9.9-deploytest"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "sh", "-c", line)
	build.Dir = deployRoot(t)
	build.Env = append(os.Environ(), "VERSION="+version, "GOFLAGS=")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("the Dockerfile's build line failed: %s: %v\n%s", line, err, b)
	}
	if runtime.GOOS == "linux" {
		deployCheckStatic(t, bin)
	}
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q, want 0 and true", settings["CGO_ENABLED"], settings["-trimpath"])
	}
	got, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(got), "tunnel "+version+" ") {
		t.Errorf("tunnel version printed %q, want it to start with %q", got, "tunnel "+version)
	}
}

// deployCheckStatic fails unless the ELF file at path is statically linked.
func deployCheckStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a dynamic loader: not static", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs %v: not static", path, libs)
	}
}

// ---- systemd units ----

// deployUnit is a parsed unit file: section → key → values in order, an
// empty assignment clearing the values before it, as systemd reads them.
type deployUnit struct {
	name     string // e.g. tunnel-agent@demo.service
	instance string
	keys     map[string]map[string][]string
}

func deployParseUnit(t *testing.T, rel, instance string) *deployUnit {
	t.Helper()
	name := deployBase(rel)
	if instance != "" {
		name = strings.Replace(name, "@.", "@"+instance+".", 1)
	}
	u := &deployUnit{name: name, instance: instance, keys: map[string]map[string][]string{}}
	lines := strings.Split(deployRead(t, rel), "\n")
	section := ""
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			next := strings.TrimSpace(lines[i])
			if next != "" && (next[0] == '#' || next[0] == ';') {
				continue
			}
			line = strings.TrimSuffix(line, `\`) + " " + next
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			if u.keys[section] == nil {
				u.keys[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("%s:%d: %q is not KEY=value in a section", rel, i+1, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if v == "" {
			u.keys[section][k] = nil
			continue
		}
		u.keys[section][k] = append(u.keys[section][k], v)
	}
	return u
}

func (u *deployUnit) all(section, key string) []string { return u.keys[section][key] }

// one returns the key's single value, specifiers resolved.
func (u *deployUnit) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u.all(section, key)
	if len(v) != 1 {
		t.Fatalf("%s: [%s] %s has %d values %q, want one", u.name, section, key, len(v), v)
	}
	return u.specifiers(t, v[0])
}

// specifiers resolves the few unit specifiers the units use.
func (u *deployUnit) specifiers(t *testing.T, s string) string {
	t.Helper()
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		i++
		if i == len(s) {
			t.Fatalf("%s: %q ends in %%", u.name, s)
		}
		switch s[i] {
		case '%':
			b.WriteByte('%')
		case 'i', 'I':
			b.WriteString(u.instance)
		case 'n':
			b.WriteString(u.name)
		default:
			t.Fatalf("%s: specifier %%%c in %q: teach deployUnit.specifiers", u.name, s[i], s)
		}
	}
	return b.String()
}

// deployWord is a word of a systemd command line or assignment list: its
// text with quotes removed, and whether it had none.
type deployWord struct {
	text string
	bare bool
}

// deploySplit splits s into words as systemd does: at whitespace, with
// "double" and 'single' quotes and backslash escapes.
func deploySplit(t *testing.T, s string) []deployWord {
	t.Helper()
	var words []deployWord
	var cur strings.Builder
	in, bare, quote := false, true, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '"' || c == '\''):
			quote, bare, in = c, false, true
		case c == '\\' && quote != '\'' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			in = true
		case quote == 0 && (c == ' ' || c == '\t'):
			if in {
				words = append(words, deployWord{cur.String(), bare})
			}
			cur.Reset()
			in, bare = false, true
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		t.Fatalf("unbalanced quote in %q", s)
	}
	if in {
		words = append(words, deployWord{cur.String(), bare})
	}
	return words
}

var (
	deployWholeVar = regexp.MustCompile(`^\$([A-Za-z_][A-Za-z0-9_]*)$`)
	deployBraced   = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
)

// deployCommand expands a unit's command line as systemd does when it runs
// it: a bare word $VAR becomes the variable's value split at whitespace
// (nothing when unset or empty), ${VAR} is replaced by the value as it is.
func deployCommand(t *testing.T, u *deployUnit, line string, env map[string]string) []string {
	t.Helper()
	var argv []string
	for i, w := range deploySplit(t, u.specifiers(t, line)) {
		if i == 0 {
			w.text = strings.TrimLeft(w.text, "-@:+!")
		}
		if m := deployWholeVar.FindStringSubmatch(w.text); m != nil && w.bare {
			argv = append(argv, strings.Fields(env[m[1]])...)
			continue
		}
		text := strings.ReplaceAll(w.text, "$$", "\x00")
		text = deployBraced.ReplaceAllStringFunc(text, func(ref string) string {
			return env[deployBraced.FindStringSubmatch(ref)[1]]
		})
		if strings.Contains(text, "$") {
			t.Fatalf("%s: %q: a $ this test does not expand like systemd", u.name, w.text)
		}
		argv = append(argv, strings.ReplaceAll(text, "\x00", "$"))
	}
	return argv
}

// deployEnv is the environment systemd gives the unit's process: its
// Environment= assignments, then the EnvironmentFile= files, which override
// them. files maps each EnvironmentFile= path to the file the test wrote in
// its place.
func deployEnv(t *testing.T, u *deployUnit, files map[string]string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, v := range u.all("Service", "Environment") {
		for _, w := range deploySplit(t, u.specifiers(t, v)) {
			k, val, ok := strings.Cut(w.text, "=")
			if !ok {
				t.Fatalf("%s: Environment=%s: %q is not KEY=value", u.name, v, w.text)
			}
			env[k] = val
		}
	}
	for _, v := range u.all("Service", "EnvironmentFile") {
		p := u.specifiers(t, v)
		optional := strings.HasPrefix(p, "-")
		p = strings.TrimPrefix(p, "-")
		f, ok := files[p]
		if !ok {
			if optional {
				continue
			}
			t.Fatalf("%s: EnvironmentFile=%s: the test wrote no file for it", u.name, p)
		}
		for line := range strings.SplitSeq(deployReadAbs(t, f), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || line[0] == '#' || line[0] == ';' {
				continue
			}
			k, val, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is not KEY=value", f, line)
			}
			val = strings.TrimSpace(val)
			if len(val) >= 2 && (val[0] == '"' || val[0] == '\'') && val[len(val)-1] == val[0] {
				val = val[1 : len(val)-1]
			}
			env[strings.TrimSpace(k)] = val
		}
	}
	return env
}

func deployReadAbs(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func deployWriteEnvFile(t *testing.T, vars ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "unit.env")
	if err := os.WriteFile(p, []byte("# written by the deploy test\n"+strings.Join(vars, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDeploySystemdUnits checks the hardening the units promise, then runs
// systemd-analyze verify and security on them (Debian package systemd;
// required under CI).
func TestDeploySystemdUnits(t *testing.T) {
	relayUnit := deployParseUnit(t, "deploy/systemd/tunnel-relay.service", "")
	agentUnit := deployParseUnit(t, "deploy/systemd/tunnel-agent@.service", "demo")
	hardening := map[string]string{
		"DynamicUser":             "yes",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectKernelLogs":       "yes",
		"ProtectControlGroups":    "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"RestrictNamespaces":      "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallFilter":        "@system-service",
		"SystemCallArchitectures": "native",
		"Restart":                 "on-failure",
	}
	relayOnly := map[string]string{
		"StateDirectory":        "tunnel",
		"AmbientCapabilities":   "CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
		"EnvironmentFile":       "/etc/tunnel/relay.env",
		"ExecReload":            "/bin/kill -HUP $MAINPID",
	}
	// The agent's configuration is root's file, handed to the dynamic user
	// as a credential; the environment file is optional.
	agentOnly := map[string]string{
		"LoadCredential":  "tunnels.yaml:/etc/tunnel/agent-demo.yaml",
		"EnvironmentFile": "-/etc/tunnel/agent-demo.env",
	}
	for _, c := range []struct {
		u    *deployUnit
		want []map[string]string
	}{
		{relayUnit, []map[string]string{hardening, relayOnly}},
		{agentUnit, []map[string]string{hardening, agentOnly}},
	} {
		for _, want := range c.want {
			for k, v := range want {
				var got []string
				for _, g := range c.u.all("Service", k) {
					got = append(got, c.u.specifiers(t, g))
				}
				if !slices.Contains(got, v) {
					t.Errorf("%s: %s=%q, want %s=%s", c.u.name, k, got, k, v)
				}
			}
		}
		if got := deploySplit(t, c.u.one(t, "Service", "ExecStart"))[0].text; got != deployInstalledBinary {
			t.Errorf("%s: ExecStart runs %s, want %s as the docs install it", c.u.name, got, deployInstalledBinary)
		}
	}
	// systemd's stop timeout leaves the relay its drain.
	stop, err := time.ParseDuration(relayUnit.one(t, "Service", "TimeoutStopSec"))
	if err != nil || stop <= 30*time.Second {
		t.Errorf("%s: TimeoutStopSec=%v (%v), want more than the 30s --drain-timeout", relayUnit.name, stop, err)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is missing; under CI it must run (Debian package systemd)")
		}
		t.Skip("systemd-analyze is missing (Debian package systemd); set CI=1 to make this a failure")
	}
	// verify checks that ExecStart's binary exists: give it the one built
	// for the tests, in copies of the units that differ in that alone.
	dir := t.TempDir()
	var copies []string
	for _, name := range []string{"tunnel-relay.service", "tunnel-agent@.service"} {
		text := deployRead(t, "deploy/systemd/"+name)
		if n := strings.Count(text, "ExecStart="+deployInstalledBinary+" "); n != 1 {
			t.Fatalf("%s: %d ExecStart lines run %s, want 1", name, n, deployInstalledBinary)
		}
		text = strings.Replace(text, "ExecStart="+deployInstalledBinary+" ", "ExecStart="+tunnelBin+" ", 1)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		copies = append(copies, p)
	}
	cmd := exec.Command(analyze, append([]string{"verify"}, copies...)...)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	// verify exits 0 on unknown keys and other warnings: any output fails.
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// security --offline (systemd 250 and later) rates the sandboxing:
	// keep both units at 2.0 ("OK") or better.
	agentCopy := filepath.Join(dir, "tunnel-agent@demo.service")
	if err := os.Link(copies[1], agentCopy); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{copies[0], agentCopy} {
		cmd := exec.Command(analyze, "security", "--offline=true", "--threshold=20", "--no-pager", p)
		cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_COLORS=0")
		out, err := cmd.CombinedOutput()
		if strings.Contains(string(out), "nrecognized option") || strings.Contains(string(out), "Unknown command") {
			t.Logf("systemd-analyze security --offline is not supported here: %s", out)
			break
		}
		last := strings.TrimSpace(string(out))
		last = last[strings.LastIndex(last, "\n")+1:]
		t.Logf("systemd-analyze security %s: %s", deployBase(p), last)
		if err != nil {
			t.Errorf("systemd-analyze security %s: %v: exposure above 2.0:\n%s", deployBase(p), err, out)
		}
	}
}

// deployProc is a process a unit's command line started.
type deployProc struct {
	name   string
	cmd    *exec.Cmd
	stdout *lines
	stderr *lines
	exited chan struct{}
	err    error
}

// deployStart runs argv with exactly env, as systemd would, but as this
// test's user.
func deployStart(t *testing.T, name string, argv []string, env map[string]string) *deployProc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	slices.Sort(cmd.Env)
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
	t.Logf("%s: started pid %d: %q with %q", name, cmd.Process.Pid, argv, cmd.Env)
	p := &deployProc{name: name, cmd: cmd, stdout: newLines(), stderr: newLines(), exited: make(chan struct{})}
	done := make(chan struct{}, 2)
	go func() { p.stdout.readAll(t, name+" stdout", outPipe); done <- struct{}{} }()
	go func() { p.stderr.readAll(t, name+" stderr", errPipe); done <- struct{}{} }()
	go func() {
		<-done
		<-done
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

func (p *deployProc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, systemd's KillSignal, and wants exit status 0 within
// limit.
func (p *deployProc) stop(t *testing.T, limit time.Duration) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("%s: SIGTERM: %v", p.name, err)
	}
	select {
	case <-p.exited:
	case <-time.After(limit):
		t.Fatalf("%s: still running %v after SIGTERM", p.name, limit)
	}
	if p.err != nil {
		t.Errorf("%s: after SIGTERM: %v, want exit status 0", p.name, p.err)
	}
}

func deployFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func deployRandomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// deployGet asks url on a fresh connection; status 0 means no answer.
func deployGet(client *http.Client, url string) (int, string, http.Header) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error(), nil
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error(), nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), resp.Header
}

// deployWaitOK polls url until it answers 200 with body want.
func deployWaitOK(t *testing.T, p *deployProc, client *http.Client, url, want string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		status, body, _ := deployGet(client, url)
		if status == http.StatusOK && body == want {
			return
		}
		if !p.running() {
			t.Fatalf("%s exited (%v) before %s answered", p.name, p.err, url)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %d %q after %v, want 200 %q", url, status, body, waitTimeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDeploySystemdRun starts the relay exactly as tunnel-relay.service's
// ExecStart says, with the environment its Environment= and EnvironmentFile=
// give, a temporary $STATE_DIRECTORY, deploy/relay.example.yaml as its
// config, and loopback addresses in the environment file; then an agent as
// tunnel-agent@demo.service says. It checks /healthz, a request through the
// tunnel, ExecReload (SIGHUP) and the stop (SIGTERM) of both.
func TestDeploySystemdRun(t *testing.T) {
	relayUnit := deployParseUnit(t, "deploy/systemd/tunnel-relay.service", "")
	agentUnit := deployParseUnit(t, "deploy/systemd/tunnel-agent@.service", "demo")

	certs := newTestCerts(t, "localhost", "*.localhost")
	token := deployRandomHex(t, 24)
	addr, httpAddr, adminAddr := deployFreeAddr(t), deployFreeAddr(t), deployFreeAddr(t)
	stateDir := t.TempDir()
	relayEnvFile := deployWriteEnvFile(t,
		"TUNNEL_DOMAIN=localhost",
		"TUNNEL_TOKEN="+token,
		"TUNNEL_ADDR="+addr,
		"TUNNEL_HTTP_ADDR="+httpAddr,
		"TUNNEL_ADMIN_ADDR="+adminAddr,
		"TUNNEL_CONFIG="+deployFile(t, "deploy/relay.example.yaml"),
		// A certificate file for the names, and no way out to a real CA.
		"TUNNEL_ARGS=--tls-cert "+certs.CertFile+" --tls-key "+certs.KeyFile+" --acme-directory http://127.0.0.1:1/directory",
	)
	env := deployEnv(t, relayUnit, map[string]string{"/etc/tunnel/relay.env": relayEnvFile})
	env["PATH"] = os.Getenv("PATH")
	env["STATE_DIRECTORY"] = stateDir // what StateDirectory=tunnel sets
	argv := deployCommand(t, relayUnit, relayUnit.one(t, "Service", "ExecStart"), env)
	if !slices.Contains(argv, "--acme-accept-tos") {
		t.Errorf("relay unit: ExecStart %q lacks --acme-accept-tos", argv)
	}

	// The options the relay reads from that command line and environment.
	opts := deployRelayOptions(t, argv[1:], env)
	if opts.StateDir != stateDir || !opts.ACME || opts.ConfigFile == "" || opts.Addr != addr {
		t.Errorf("relay unit: state dir %q, ACME %v, config %q, addr %q; want %q, true, the config, %q",
			opts.StateDir, opts.ACME, opts.ConfigFile, opts.Addr, stateDir, addr)
	}

	argv[0] = tunnelBin
	relayProc := deployStart(t, "relay unit", argv, env)
	admin := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	deployWaitOK(t, relayProc, admin, "http://"+adminAddr+"/healthz", "ok")
	deployWaitOK(t, relayProc, admin, "http://"+adminAddr+"/readyz", "ready")
	apex := viaTLSRelay(t, addr, certs, "localhost")
	if status, body, _ := deployGet(apex, "https://localhost/healthz"); status != http.StatusOK || body != "ok" {
		t.Errorf("GET https://localhost/healthz: %d %q, want 200 ok", status, body)
	}
	noRedirect := &http.Client{
		Transport:     &http.Transport{DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if status, _, h := deployGet(noRedirect, "http://"+httpAddr+"/x"); status/100 != 3 || !strings.HasPrefix(h.Get("Location"), "https://") {
		t.Errorf("GET on TUNNEL_HTTP_ADDR: %d to %q, want a redirect to https", status, h.Get("Location"))
	}

	// The agent, as tunnel-agent@demo.service runs it: its configuration
	// in /etc/tunnel/agent-demo.yaml with the token, its environment file
	// left out (it is optional).
	local := startLocalServer(t)
	_, port, _ := net.SplitHostPort(addr)
	agentYAML := filepath.Join(t.TempDir(), "agent-demo.yaml")
	if err := os.WriteFile(agentYAML, []byte("relay: https://localhost:"+port+"\ntoken: "+token+"\nca_file: "+certs.CAFile+
		"\ntunnels:\n  - name: demo\n    port: "+local.port()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agentEnv := deployEnv(t, agentUnit, nil)
	agentEnv["PATH"] = os.Getenv("PATH")
	agentEnv["CREDENTIALS_DIRECTORY"] = deployCredentials(t, agentUnit, map[string]string{"/etc/tunnel/agent-demo.yaml": agentYAML})
	agentArgv := deployCommand(t, agentUnit, agentUnit.one(t, "Service", "ExecStart"), agentEnv)
	if len(agentArgv) < 2 || agentArgv[1] != "start" {
		t.Fatalf("agent unit: ExecStart %q does not run tunnel start", agentArgv)
	}
	agentArgv[0] = tunnelBin
	agent := deployStart(t, "agent unit", agentArgv, agentEnv)
	if got, want := agent.stdout.first(t, 1)[0], "https://demo.localhost:"+port; got != want {
		t.Fatalf("agent printed %q, want %q", got, want)
	}
	demo := viaTLSRelay(t, addr, certs, "demo.localhost")
	if status, body := get(t, demo, "https://demo.localhost:"+port+"/"); status != http.StatusOK || body != "hello from local" {
		t.Fatalf("GET through the agent unit's tunnel: %d %q", status, body)
	}

	// systemctl reload runs ExecReload: the relay re-reads its config and
	// goes on serving.
	reload := deployCommand(t, relayUnit, relayUnit.one(t, "Service", "ExecReload"),
		map[string]string{"MAINPID": strconv.Itoa(relayProc.cmd.Process.Pid)})
	if b, err := exec.Command(reload[0], reload[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("ExecReload %q: %v\n%s", reload, err, b)
	}
	relayProc.stderr.find(t, "a reload line after ExecReload", func(s string) bool { return strings.Contains(s, "reloaded") })
	if !relayProc.running() {
		t.Fatalf("the relay exited on ExecReload: %v", relayProc.err)
	}
	if status, body := get(t, demo, "https://demo.localhost:"+port+"/"); status != http.StatusOK || body != "hello from local" {
		t.Fatalf("GET after reload: %d %q", status, body)
	}
	if relayProc.stderr.contains("config not reloaded") {
		t.Error("the relay could not reload deploy/relay.example.yaml")
	}

	agent.stop(t, waitTimeout)
	stop, _ := time.ParseDuration(relayUnit.one(t, "Service", "TimeoutStopSec"))
	relayProc.stop(t, stop)
}

// deployCredentials does what systemd does for the unit's LoadCredential=
// lines: it copies each source file (files maps each LoadCredential= path
// to the file the test wrote in its place) into a fresh directory under
// the credential's name, readable by the service alone, and returns the
// directory, the service's $CREDENTIALS_DIRECTORY.
func deployCredentials(t *testing.T, u *deployUnit, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for _, v := range u.all("Service", "LoadCredential") {
		id, src, ok := strings.Cut(u.specifiers(t, v), ":")
		if !ok || id == "" || strings.Contains(id, "/") {
			t.Fatalf("%s: LoadCredential=%s: want ID:PATH", u.name, v)
		}
		f, ok := files[src]
		if !ok {
			t.Fatalf("%s: LoadCredential=%s: the test wrote no file for %s", u.name, v, src)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, id), b, 0o400); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestDeployTunnelsExample loads deploy/tunnels.example.yaml as tunnel
// start would, and checks that it shows every key the agent's
// configuration file knows (commented out or not), and that its tunnels
// mean what its comments say.
func TestDeployTunnelsExample(t *testing.T) {
	path := deployFile(t, "deploy/tunnels.example.yaml")
	unsetEnv(t, "TUNNEL_RELAY")
	unsetEnv(t, "TUNNEL_TOKEN")
	var got *StartOptions
	if err := execute(NewCmdStart(testFactory(), func(o *StartOptions) error { got = o; return nil }), "--config", path); err != nil {
		t.Fatalf("tunnel start --config %s: %v", path, err)
	}
	cfg := got.Config
	if cfg.Relay != "https://example.com" || cfg.Token != "" || len(cfg.Tunnels) < 2 {
		t.Fatalf("relay %q, token set %v, %d tunnels", cfg.Relay, cfg.Token != "", len(cfg.Tunnels))
	}
	text := deployRead(t, "deploy/tunnels.example.yaml")
	for _, key := range []string{"relay", "token", "token_file", "ca_file", "inspect_addr", "tunnels",
		"name", "port", "local", "local_https", "local_ca", "local_insecure", "host_header", "basic_auth", "allow_ip", "deny_ip"} {
		if !regexp.MustCompile(`(?m)^[ #]*(- )?` + key + `:`).MatchString(text) {
			t.Errorf("tunnels.example.yaml does not show the key %s", key)
		}
	}
	for _, tun := range cfg.Tunnels {
		if tun.Access != nil && len(tun.Access.BasicAuth) > 0 && !strings.Contains(text, "replace-this-password") {
			t.Errorf("tunnel %s: an example password that does not say to replace it", tun.Name)
		}
	}
}

// deployRelayOptions parses a relay command line and environment as
// `tunnel relay` does, without running it.
func deployRelayOptions(t *testing.T, args []string, env map[string]string) *RelayOptions {
	t.Helper()
	for _, k := range []string{"TUNNEL_DOMAIN", "TUNNEL_TOKEN", "TUNNEL_ADMIN_ADDR", "TUNNEL_ADMIN_TOKEN", "STATE_DIRECTORY", "XDG_STATE_HOME"} {
		if v, ok := env[k]; ok {
			t.Setenv(k, v)
		} else {
			unsetEnv(t, k)
		}
	}
	var got *RelayOptions
	cmd := NewCmdRelay(testFactory(), func(o *RelayOptions) error { got = o; return nil })
	if len(args) == 0 || args[0] != "relay" {
		t.Fatalf("command %q is not tunnel relay", args)
	}
	if err := execute(cmd, args[1:]...); err != nil {
		t.Fatalf("tunnel %q: %v", args, err)
	}
	return got
}

// ---- compose.yaml ----

// TestDeployCompose checks that compose.yaml parses and agrees with the
// Dockerfile: the build, the ports it exposes, the state volume, and a
// relay command that `tunnel relay` accepts and that keeps its state on the
// volume.
func TestDeployCompose(t *testing.T) {
	img := deployDockerfile(t)
	var c struct {
		Services map[string]struct {
			Image   string
			Build   struct{ Context, Dockerfile string }
			Command []string
			EnvFile any `yaml:"env_file"`
			Ports   []string
			Volumes []string
			Sysctls map[string]any
			User    string
		}
		Volumes map[string]any
	}
	dec := yaml.NewDecoder(strings.NewReader(deployRead(t, "deploy/compose.yaml")))
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	s, ok := c.Services["relay"]
	if !ok || len(c.Services) != 1 {
		t.Fatalf("compose.yaml: services %v, want relay alone", c.Services)
	}
	if s.Image == "" {
		t.Error("compose.yaml: relay has no image name")
	}
	if ctx := filepath.Join(deployFile(t, "deploy"), s.Build.Context); filepath.Clean(ctx) != deployRoot(t) || s.Build.Dockerfile != "deploy/Dockerfile" {
		t.Errorf("compose.yaml: build %+v, want context .. (the repository) and deploy/Dockerfile", s.Build)
	}
	if s.User != "" {
		t.Errorf("compose.yaml: user %q overrides the image's", s.User)
	}
	var exposed []string
	for _, p := range s.Ports {
		host, ctr, ok := strings.Cut(p, ":")
		if !ok || host != ctr {
			t.Errorf("compose.yaml: port %q, want HOST:CONTAINER on the same number", p)
		}
		exposed = append(exposed, ctr)
	}
	if slices.Sort(exposed); !slices.Equal(exposed, slices.Sorted(slices.Values(img.expose))) {
		t.Errorf("compose.yaml: ports %v, want the Dockerfile's EXPOSE %v", s.Ports, img.expose)
	}
	if len(s.Volumes) != 1 {
		t.Fatalf("compose.yaml: volumes %v, want the state volume alone", s.Volumes)
	}
	name, target, _ := strings.Cut(s.Volumes[0], ":")
	if _, ok := c.Volumes[name]; !ok || target != img.volume {
		t.Errorf("compose.yaml: volume %q, want a named volume (top-level volumes: %v) on the Dockerfile's VOLUME %s", s.Volumes[0], c.Volumes, img.volume)
	}
	if v := fmt.Sprint(s.Sysctls["net.ipv4.ip_unprivileged_port_start"]); v != "0" {
		t.Errorf("compose.yaml: net.ipv4.ip_unprivileged_port_start %s, want 0: the image's user is not root and binds 80 and 443", v)
	}
	if fmt.Sprint(s.EnvFile) != "relay.env" {
		t.Errorf("compose.yaml: env_file %v, want relay.env (TUNNEL_DOMAIN, TUNNEL_TOKEN)", s.EnvFile)
	}
	// The token file sits in the build context (the repository): the
	// build stage's COPY would keep it in the builder's cache.
	if !slices.Contains(strings.Split(deployRead(t, "deploy/Dockerfile.dockerignore"), "\n"), "deploy/relay.env") {
		t.Error("Dockerfile.dockerignore does not leave out deploy/relay.env, the token file compose.yaml reads")
	}
	env := map[string]string{
		"TUNNEL_DOMAIN":   "example.com",
		"TUNNEL_TOKEN":    deployRandomHex(t, 24),
		"STATE_DIRECTORY": img.env["STATE_DIRECTORY"],
	}
	opts := deployRelayOptions(t, s.Command, env)
	if !opts.ACME || opts.StateDir != img.volume || opts.Addr != "" || opts.HTTPAddr != ":80" {
		t.Errorf("compose.yaml: relay %q runs with ACME %v, state %q, addr %q, http-addr %q; want ACME, state on %s, ports 443 and 80",
			s.Command, opts.ACME, opts.StateDir, opts.Addr, opts.HTTPAddr, img.volume)
	}
}

// ---- relay.example.yaml ----

// TestDeployRelayExample loads the example config as the relay would and
// checks that it holds no usable token: hashes only, of nothing guessable.
func TestDeployRelayExample(t *testing.T) {
	path := deployFile(t, "deploy/relay.example.yaml")
	cfg, err := relay.LoadConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) > 0 {
		t.Errorf("warnings: %q", cfg.Warnings)
	}
	if len(cfg.Tokens) == 0 {
		t.Error("no example tokens")
	}
	weak := map[string]bool{}
	for _, s := range []string{"", "test", "token", "secret", "changeme", "password", "example", "alice", "bob", "ci", "TOKEN"} {
		sum := sha256.Sum256([]byte(s))
		weak[hex.EncodeToString(sum[:])] = true
	}
	for _, tok := range cfg.Tokens {
		if tok.Secret != "" || tok.SHA256 == "" {
			t.Errorf("token %s: in clear; the example must hold sha256 entries only", tok.Name)
		}
		if weak[strings.ToLower(tok.SHA256)] {
			t.Errorf("token %s: its sha256 is of a guessable word: anyone could use it", tok.Name)
		}
	}
	want := relay.Limits{
		MaxTunnelsPerToken:    10,
		MaxStreamsPerTunnel:   1000,
		ConnRatePerIP:         50,
		ResponseHeaderTimeout: 60 * time.Second,
		AuthFailuresPerMinute: 10,
	}
	if cfg.Limits != want {
		t.Errorf("limits %+v, want the defaults it says it writes out, %+v", cfg.Limits, want)
	}
}

// ---- docs/deploy.md ----

// TestDeployDocs checks docs/deploy.md: the topics the page promises, and
// that every flag it passes to tunnel, directly or in TUNNEL_ARGS, exists.
func TestDeployDocs(t *testing.T) {
	doc := deployRead(t, "docs/deploy.md")
	for _, want := range []string{
		"*.example.com", "AAAA", // DNS
		"443", "127.0.0.1:9090", // ports
		"go install github.com/tunnel-dev/tunnel/cmd/tunnel@latest", "SHA256SUMS", "docker build -f deploy/Dockerfile",
		"openssl rand -hex 24", "TUNNEL_DOMAIN=", "systemctl enable --now tunnel-relay",
		"journalctl -u tunnel-relay", "https://example.com/healthz", "tunnel expose",
		"/var/lib/private/tunnel", "50 certificates per registered domain per week", "DNS-01",
		"docker compose", deployInstalledBinary,
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("docs/deploy.md does not mention %q", want)
		}
	}
	// Files the page names exist (deploy/dist is release.sh's output).
	for _, m := range regexp.MustCompile(`\bdeploy/[A-Za-z0-9_.@/-]+[A-Za-z0-9]`).FindAllString(doc, -1) {
		if m == "deploy/dist" {
			continue
		}
		if _, err := os.Stat(deployFile(t, m)); err != nil {
			t.Errorf("docs/deploy.md names %s: %v", m, err)
		}
	}

	root := NewCmdRoot(IOStreams{Out: io.Discard, ErrOut: io.Discard})
	re := deployInvocation(root)
	sources := map[string]string{"docs/deploy.md": doc}
	for _, f := range []string{"deploy/Dockerfile", "deploy/compose.yaml", "deploy/systemd/tunnel-relay.service", "deploy/systemd/tunnel-agent@.service"} {
		sources[f] = deployRead(t, f)
	}
	for file, text := range sources {
		text = strings.ReplaceAll(text, "\\\n", " ")
		for n, line := range strings.Split(text, "\n") {
			for _, p := range deployFlagProblems(root, re, fmt.Sprintf("%s:%d", file, n+1), line) {
				t.Error(p)
			}
		}
	}
}

var (
	deployArgsVar = regexp.MustCompile(`TUNNEL_ARGS=["']?([^"'\n]*)`)
	deployCmdEnd  = regexp.MustCompile("[`|;#)]|&&| \\[")
)

// deployInvocation returns the pattern of a tunnel command line: "tunnel"
// and the names of one or more commands of root's tree, all of them, so
// that a new command's lines are checked without a change here.
func deployInvocation(root *cobra.Command) *regexp.Regexp {
	names := map[string]bool{}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			names[regexp.QuoteMeta(sub.Name())] = true
			for _, a := range sub.Aliases {
				names[regexp.QuoteMeta(a)] = true
			}
			walk(sub)
		}
	}
	walk(root)
	return regexp.MustCompile(`\btunnel((?: (?:` + strings.Join(slices.Sorted(maps.Keys(names)), "|") + `))+)\b`)
}

// TestDeployInvocation: the command-line pattern knows every command the
// docs run, and finds the flags after each.
func TestDeployInvocation(t *testing.T) {
	root := NewCmdRoot(IOStreams{Out: io.Discard, ErrOut: io.Discard})
	re := deployInvocation(root)
	for line, want := range map[string]string{
		"tunnel start --config /etc/tunnel/agent-demo.yaml":    " start",
		"tunnel doctor --relay https://example.com -s demo":    " doctor",
		"tunnel completion bash > ~/.bash_completion.d/tunnel": " completion",
		"tunnel admin kick alice --admin-token T":              " admin kick",
		"tunnel relay --domain example.com":                    " relay",
		"tunnel version --json":                                " version",
		"the tunnel is online":                                 "",
	} {
		got := ""
		if m := re.FindStringSubmatch(line); m != nil {
			got = m[1]
		}
		if got != want {
			t.Errorf("%q: commands %q, want %q", line, got, want)
		}
	}
	// A wrong flag on any of them is found.
	for _, line := range []string{"tunnel start --no-such-flag", "tunnel doctor --no-such-flag", "tunnel completion bash --no-such-flag"} {
		if p := deployFlagProblems(root, re, "test", line); len(p) != 1 || !strings.Contains(p[0], "has no flag --no-such-flag") {
			t.Errorf("%q: problems %q, want the unknown flag", line, p)
		}
	}
}

// deployFlagProblems looks up every flag of each tunnel command line in
// line (found with deployInvocation's pattern, re), and of a TUNNEL_ARGS
// value (relay or expose flags), and says what it did not find.
func deployFlagProblems(root *cobra.Command, re *regexp.Regexp, where, line string) []string {
	var problems []string
	for _, m := range re.FindAllStringSubmatchIndex(line, -1) {
		path := strings.Fields(line[m[2]:m[3]])
		cmd, _, err := root.Find(path)
		if err != nil || cmd == root {
			problems = append(problems, fmt.Sprintf("%s: tunnel %s: no such command", where, strings.Join(path, " ")))
			continue
		}
		rest := line[m[1]:]
		if i := deployCmdEnd.FindStringIndex(rest); i != nil {
			rest = rest[:i[0]]
		}
		for _, w := range strings.Fields(rest) {
			if !deployFlagExists(cmd, w) {
				problems = append(problems, fmt.Sprintf("%s: tunnel %s has no flag %s", where, strings.Join(path, " "), w))
			}
		}
	}
	if m := deployArgsVar.FindStringSubmatch(line); m != nil {
		relayCmd, _, _ := root.Find([]string{"relay"})
		exposeCmd, _, _ := root.Find([]string{"expose"})
		for _, w := range strings.Fields(m[1]) {
			if !deployFlagExists(relayCmd, w) && !deployFlagExists(exposeCmd, w) {
				problems = append(problems, fmt.Sprintf("%s: TUNNEL_ARGS: neither tunnel relay nor tunnel expose has flag %s", where, w))
			}
		}
	}
	return problems
}

// deployFlagExists reports whether word, if it is a flag, is one of cmd's.
// Words that are not flags (values, arguments) pass.
func deployFlagExists(cmd *cobra.Command, word string) bool {
	switch {
	case strings.HasPrefix(word, "--"):
		name, _, _ := strings.Cut(word[2:], "=")
		if name == "" || strings.ContainsAny(name, "<>.…") {
			return true // "--" or a placeholder
		}
		return cmd.Flags().Lookup(name) != nil || cmd.InheritedFlags().Lookup(name) != nil
	case len(word) == 2 && word[0] == '-' && word[1] >= 'a' && word[1] <= 'z':
		return cmd.Flags().ShorthandLookup(word[1:]) != nil
	}
	return true
}

// ---- release.sh ----

// deployTargets are the release's platforms.
var deployTargets = []string{"linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64", "windows/amd64", "windows/arm64"}

// TestDeployRelease runs deploy/release.sh into a temporary directory: for
// all six targets under CI (a few minutes with a cold build cache),
// elsewhere for this machine's platform and one of the other archive
// format (Windows' zip, or Linux's tar.gz on Windows). It checks the
// archives' names, SHA256SUMS, the files in each archive (the example
// `tunnel start` configuration in every one, the systemd units and the
// example relay configuration in the Linux ones), and a binary for its
// platform, static on Linux, that prints the version it was given.
func TestDeployRelease(t *testing.T) {
	for _, tool := range []string{"bash", "tar", "gzip", "zip", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				pkg := tool
				if tool == "sha256sum" {
					pkg = "coreutils"
				}
				t.Fatalf("%s is missing; release.sh needs it (Debian package %s)", tool, pkg)
			}
			t.Skipf("%s is missing; release.sh needs it", tool)
		}
	}
	if sc, err := exec.LookPath("shellcheck"); err == nil {
		if b, err := exec.Command(sc, deployFile(t, "deploy/release.sh")).CombinedOutput(); err != nil {
			t.Errorf("shellcheck deploy/release.sh: %v\n%s", err, b)
		}
	} else {
		t.Log("shellcheck is missing (Debian package shellcheck): release.sh not linted")
	}
	targets := deployTargets
	if os.Getenv("CI") == "" {
		other := "windows/amd64"
		if runtime.GOOS == "windows" {
			other = "linux/amd64"
		}
		targets = []string{runtime.GOOS + "/" + runtime.GOARCH, other}
		t.Logf("building only %v; under CI (CI=1) all of %v", targets, deployTargets)
	}
	const version = "v0.0.0-deploytest"
	out := t.TempDir()
	limit := 8 * time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d)-30*time.Second < limit {
		limit = time.Until(d) - 30*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "bash", deployFile(t, "deploy/release.sh"), version, out)
	cmd.Env = append(os.Environ(), "TARGETS="+strings.Join(targets, " "), "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("release.sh after %v: %v\n%s", time.Since(start).Round(time.Second), err, b)
	}
	t.Logf("release.sh built %d targets in %v", len(targets), time.Since(start).Round(time.Second))

	sums := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(deployReadAbs(t, filepath.Join(out, "SHA256SUMS"))), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q: want sha256sum's format", line)
		}
		sums[name] = sum
	}
	if len(sums) != len(targets) {
		t.Errorf("SHA256SUMS lists %d archives, want %d", len(sums), len(targets))
	}
	for _, target := range targets {
		goos, goarch, _ := strings.Cut(target, "/")
		name := "tunnel_" + version + "_" + goos + "_" + goarch
		archive, exe := name+".tar.gz", "tunnel"
		if goos == "windows" {
			archive, exe = name+".zip", "tunnel.exe"
		}
		data, err := os.ReadFile(filepath.Join(out, archive))
		if err != nil {
			t.Error(err)
			continue
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); sums[archive] != got {
			t.Errorf("%s: SHA256SUMS says %q, the file's is %s", archive, sums[archive], got)
		}
		files := deployUnpack(t, archive, data)
		// A laptop on any OS runs `tunnel start`; only Linux runs the
		// relay and the agent as systemd services.
		copies := map[string]string{
			"README.md":            "README.md",
			"SECURITY.md":          "SECURITY.md",
			"deploy.md":            "docs/deploy.md",
			"tunnels.example.yaml": "deploy/tunnels.example.yaml",
		}
		if goos == "linux" {
			copies["relay.example.yaml"] = "deploy/relay.example.yaml"
			copies["systemd/tunnel-relay.service"] = "deploy/systemd/tunnel-relay.service"
			copies["systemd/tunnel-agent@.service"] = "deploy/systemd/tunnel-agent@.service"
		}
		if _, ok := files[name+"/"+exe]; !ok {
			t.Errorf("%s has no %s/%s; it has %v", archive, name, exe, slices.Sorted(maps.Keys(files)))
		}
		for f, src := range copies {
			got, ok := files[name+"/"+f]
			switch {
			case !ok:
				t.Errorf("%s has no %s/%s (%s); it has %v", archive, name, f, src, slices.Sorted(maps.Keys(files)))
			case string(got) != deployRead(t, src):
				t.Errorf("%s: %s/%s is not a copy of %s", archive, name, f, src)
			}
		}
		bin := files[name+"/"+exe]
		if bin == nil {
			continue
		}
		deployCheckBinary(t, archive, goos, goarch, bin)
		if target == runtime.GOOS+"/"+runtime.GOARCH {
			p := filepath.Join(t.TempDir(), exe)
			if err := os.WriteFile(p, bin, 0o755); err != nil {
				t.Fatal(err)
			}
			if goos == "linux" {
				deployCheckStatic(t, p)
			}
			got, err := exec.Command(p, "version").Output()
			if err != nil || !strings.HasPrefix(string(got), "tunnel "+version+" ") {
				t.Errorf("%s: tunnel version printed %q (%v), want %q", archive, got, err, "tunnel "+version)
			}
		}
	}
}

// deployUnpack returns the regular files of a .tar.gz or .zip archive.
func deployUnpack(t *testing.T, name string, data []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	if strings.HasSuffix(name, ".zip") {
		zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, f := range zr.File {
			if f.FileInfo().IsDir() {
				continue
			}
			rc, err := f.Open()
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatalf("%s: %s: %v", name, f.Name, err)
			}
			files[f.Name] = b
		}
		return files
	}
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: %s is owned by %d:%d, want 0:0", name, h.Name, h.Uid, h.Gid)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("%s: %s: %v", name, h.Name, err)
		}
		files[h.Name] = b
	}
	return files
}

// deployCheckBinary checks that bin is an executable for goos/goarch.
func deployCheckBinary(t *testing.T, archive, goos, goarch string, bin []byte) {
	t.Helper()
	r := bytes.NewReader(bin)
	var machine string
	switch goos {
	case "linux":
		f, err := elf.NewFile(r)
		if err != nil {
			t.Errorf("%s: the binary is not ELF: %v", archive, err)
			return
		}
		machine = map[elf.Machine]string{elf.EM_X86_64: "amd64", elf.EM_AARCH64: "arm64"}[f.Machine]
	case "darwin":
		f, err := macho.NewFile(r)
		if err != nil {
			t.Errorf("%s: the binary is not Mach-O: %v", archive, err)
			return
		}
		machine = map[macho.Cpu]string{macho.CpuAmd64: "amd64", macho.CpuArm64: "arm64"}[f.Cpu]
	case "windows":
		f, err := pe.NewFile(r)
		if err != nil {
			t.Errorf("%s: the binary is not PE: %v", archive, err)
			return
		}
		machine = map[uint16]string{pe.IMAGE_FILE_MACHINE_AMD64: "amd64", pe.IMAGE_FILE_MACHINE_ARM64: "arm64"}[f.Machine]
	}
	if machine != goarch {
		t.Errorf("%s: the binary is for %q, want %s", archive, machine, goarch)
	}
	bi, err := buildinfo.Read(bytes.NewReader(bin))
	if err != nil {
		t.Errorf("%s: no build info: %v", archive, err)
		return
	}
	for _, s := range bi.Settings {
		if (s.Key == "CGO_ENABLED" && s.Value != "0") || (s.Key == "-trimpath" && s.Value != "true") {
			t.Errorf("%s: built with %s=%s", archive, s.Key, s.Value)
		}
	}
}
