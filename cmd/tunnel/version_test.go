package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

// TestVersionInfo checks where each kind of build takes its version from:
// -ldflags wins, then a release's module version, then the commit.
func TestVersionInfo(t *testing.T) {
	const rev = "0123456789abcdef0123456789abcdef01234567"
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: rev},
			{Key: "vcs.time", Value: "2025-06-01T12:00:00Z"},
			{Key: "vcs.modified", Value: modified},
		}
	}
	plat := " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	for _, tt := range []struct {
		name    string
		ldflags string
		bi      *debug.BuildInfo
		version string // versionInfo.Version
		line    string
	}{
		{
			name:    "release.sh: ldflags and a clean checkout",
			ldflags: "v1.2.3",
			bi:      &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Settings: vcs("false")},
			version: "v1.2.3",
			line:    "tunnel v1.2.3 (commit 0123456789ab, 2025-06-01T12:00:00Z)" + plat,
		},
		{
			name:    "ldflags, dirty checkout",
			ldflags: "v1.2.3",
			bi:      &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20250601120000-0123456789ab+dirty"}, Settings: vcs("true")},
			version: "v1.2.3",
			line:    "tunnel v1.2.3 (commit 0123456789ab+dirty, 2025-06-01T12:00:00Z)" + plat,
		},
		{
			name:    "ldflags, no build info (docker: no .git)",
			ldflags: "v1.2.3",
			bi:      &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}},
			version: "v1.2.3",
			line:    "tunnel v1.2.3" + plat,
		},
		{
			name:    "go install …@v1.2.3",
			bi:      &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}},
			version: "v1.2.3",
			line:    "tunnel v1.2.3" + plat,
		},
		{
			name:    "go install …@commit: a pseudo-version without VCS settings",
			bi:      &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20250601120000-0123456789ab"}},
			version: "v0.0.0-20250601120000-0123456789ab",
			line:    "tunnel v0.0.0-20250601120000-0123456789ab" + plat,
		},
		{
			name:    "go build in a dirty checkout (Go 1.24+ makes up a pseudo-version)",
			bi:      &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20250601120000-0123456789ab+dirty"}, Settings: vcs("true")},
			version: "0123456789ab+dirty",
			line:    "tunnel 0123456789ab+dirty (2025-06-01T12:00:00Z)" + plat,
		},
		{
			name:    "go build in a clean checkout, older Go",
			bi:      &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("false")},
			version: "0123456789ab",
			line:    "tunnel 0123456789ab (2025-06-01T12:00:00Z)" + plat,
		},
		{
			name:    "go build at a tag",
			bi:      &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Settings: vcs("false")},
			version: "v1.2.3",
			line:    "tunnel v1.2.3 (commit 0123456789ab, 2025-06-01T12:00:00Z)" + plat,
		},
		{
			name:    "go run, -buildvcs=false",
			bi:      &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}},
			version: "devel",
			line:    "tunnel devel" + plat,
		},
		{
			name:    "no build info",
			version: "devel",
			line:    "tunnel devel" + plat,
		},
	} {
		v := newVersionInfo(tt.ldflags, tt.bi)
		if v.Version != tt.version || v.String() != tt.line {
			t.Errorf("%s: version %q, line %q; want %q, %q", tt.name, v.Version, v.String(), tt.version, tt.line)
		}
	}
}

// TestVersionBinary builds the binary three ways and runs `tunnel version`
// and `tunnel version --json` in each: stamped with -ldflags as
// deploy/release.sh does, from this checkout with its VCS information, and
// without it.
func TestVersionBinary(t *testing.T) {
	root := deployRoot(t)
	_, gitErr := exec.LookPath("git")
	inGit := gitErr == nil && exec.Command("git", "-C", root, "rev-parse", "--git-dir").Run() == nil
	plat := " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH

	t.Run("ldflags", func(t *testing.T) {
		t.Parallel()
		bin := buildTunnel(t, "-buildvcs=false", "-ldflags", "-X main.version=v7.7.7-test")
		if got := versionLine(t, bin); got != "tunnel v7.7.7-test"+plat {
			t.Errorf("version printed %q", got)
		}
		if v := versionJSON(t, bin); v.Version != "v7.7.7-test" || v.Commit != "" || v.Go != runtime.Version() {
			t.Errorf("version --json: %+v", v)
		}
	})
	t.Run("devel", func(t *testing.T) {
		t.Parallel()
		bin := buildTunnel(t, "-buildvcs=false")
		if got := versionLine(t, bin); got != "tunnel devel"+plat {
			t.Errorf("version printed %q", got)
		}
	})
	t.Run("checkout", func(t *testing.T) {
		if !inGit {
			t.Skip("not a git checkout, or no git: no VCS information to stamp")
		}
		t.Parallel()
		bin := buildTunnel(t, "-buildvcs=true")
		rev := gitOutput(t, root, "rev-parse", "HEAD")
		when, err := time.Parse(time.RFC3339, gitOutput(t, root, "log", "-1", "--format=%cI"))
		if err != nil {
			t.Fatal(err)
		}
		dirty := gitOutput(t, root, "status", "--porcelain") != ""
		v := versionJSON(t, bin)
		if v.Commit != rev || v.CommitTime != when.UTC().Format(time.RFC3339) || v.Dirty != dirty {
			t.Errorf("version --json: %+v; want commit %s at %v, dirty %v", v, rev, when.UTC(), dirty)
		}
		// Without tags the version is the short revision; at a tag, the tag.
		want := rev[:12]
		if dirty {
			want += "+dirty"
		}
		if tag, err := exec.Command("git", "-C", root, "describe", "--tags", "--exact-match").Output(); err == nil {
			want = strings.TrimSpace(string(tag))
		}
		if !strings.HasPrefix(v.Version, want) {
			t.Errorf("version %q, want %q", v.Version, want)
		}
		if got := versionLine(t, bin); !strings.HasPrefix(got, "tunnel "+v.Version+" (") || !strings.Contains(got, v.CommitTime+")"+plat) {
			t.Errorf("version printed %q", got)
		}
	})
	t.Run("flags", func(t *testing.T) {
		var got *VersionOptions
		if err := execute(NewCmdVersion(testFactory(), func(o *VersionOptions) error { got = o; return nil }), "--json"); err != nil {
			t.Fatal(err)
		}
		if !got.JSON {
			t.Error("--json did not set JSON")
		}
	})
}

// buildTunnel builds the tunnel binary with extra go build flags, with
// -race when the tests have it, like TestMain's.
func buildTunnel(t *testing.T, flags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tunnel")
	args := append([]string{"build", "-o", bin}, flags...)
	if raceEnabled() {
		args = append(args, "-race")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append(args, ".")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return bin
}

func versionLine(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatalf("tunnel version: %v", err)
	}
	if bytes.Count(out, []byte("\n")) != 1 {
		t.Errorf("tunnel version printed %q, want one line", out)
	}
	return strings.TrimSuffix(string(out), "\n")
}

func versionJSON(t *testing.T, bin string) versionInfo {
	t.Helper()
	out, err := exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatalf("tunnel version --json: %v", err)
	}
	var v versionInfo
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("tunnel version --json printed %s: %v", out, err)
	}
	if v.OS != runtime.GOOS || v.Arch != runtime.GOARCH || v.Relay == "" || v.Agent == "" {
		t.Errorf("version --json: %+v", v)
	}
	return v
}

func gitOutput(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_OPTIONAL_LOCKS=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}
