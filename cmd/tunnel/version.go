package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3", as
// deploy/release.sh and deploy/Dockerfile do; when set, it wins over the
// version in the build info.
var version = ""

// VersionOptions are the inputs of `tunnel version`.
type VersionOptions struct {
	IO   IOStreams
	JSON bool // --json: one JSON object instead of the line
}

// NewCmdVersion returns `tunnel version`. runF, if not nil, replaces
// printing, so tests can check how flags are read.
func NewCmdVersion(f *Factory, runF func(*VersionOptions) error) *cobra.Command {
	opts := &VersionOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print the version, the commit it was built from, and the Go version",
		Long: `Print tunnel's version on one line: the release version, or for a build
from a checkout the commit (+dirty when it had uncommitted changes), then the
commit's time, the Go version and the platform.

  tunnel v1.2.3 (commit 0123456789ab, 2025-06-01T12:00:00Z) go1.26.8 linux/amd64
  tunnel 0123456789ab+dirty (2025-06-01T12:00:00Z) go1.26.8 darwin/arm64

--json prints the same as one object with the fields version, commit (the
full revision), commit_time, dirty, go, os, arch, and the relay and agent
software names that the two ends tell each other.`,
		Example: `  tunnel version
  tunnel version --json | jq -r .commit`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return versionRun(opts)
		},
	}
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print one JSON object instead of the line")
	return cmd
}

func versionRun(opts *VersionOptions) error {
	bi, _ := debug.ReadBuildInfo()
	v := newVersionInfo(version, bi)
	if opts.JSON {
		enc := json.NewEncoder(opts.IO.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	_, err := fmt.Fprintln(opts.IO.Out, v.String())
	return err
}

// versionInfo is what `tunnel version` prints; --json prints it as is.
type versionInfo struct {
	// Version is -X main.version if set, else the module version (a
	// `go install …@v1.2.3` build), else the commit's short revision with
	// +dirty (a build from a checkout), else "devel".
	Version    string `json:"version"`
	Commit     string `json:"commit,omitempty"`      // the full VCS revision, if the build recorded it
	CommitTime string `json:"commit_time,omitempty"` // the commit's time, RFC 3339 in UTC
	Dirty      bool   `json:"dirty,omitempty"`       // the checkout had uncommitted changes
	Go         string `json:"go"`                    // the Go version it was built with
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	Relay      string `json:"relay"` // relay.Software
	Agent      string `json:"agent"` // agent.Software
}

// shortRevision is as long as the revision in a Go pseudo-version.
const shortRevision = 12

// newVersionInfo reads the version from ldflags (the main.version
// variable) and the build info, which may be nil.
func newVersionInfo(ldflags string, bi *debug.BuildInfo) versionInfo {
	v := versionInfo{
		Version: ldflags,
		Go:      runtime.Version(),
		OS:      runtime.GOOS,
		Arch:    runtime.GOARCH,
		Relay:   relay.Software,
		Agent:   agent.Software,
	}
	if bi == nil {
		bi = &debug.BuildInfo{}
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.CommitTime = s.Value
		case "vcs.modified":
			v.Dirty = s.Value == "true"
		}
	}
	if v.Version != "" {
		return v
	}
	short := v.Commit[:min(len(v.Commit), shortRevision)]
	switch mv := bi.Main.Version; {
	case mv != "" && mv != "(devel)" && (short == "" || !strings.Contains(mv, short)):
		// A release tag: `go install …@v1.2.3`, or since Go 1.24 a build
		// from a checkout at a tag. A pseudo-version that Go made up from
		// the checkout's commit falls through to the plainer revision.
		v.Version = mv
	case short != "":
		v.Version = short
		if v.Dirty {
			v.Version += "+dirty"
		}
	default:
		v.Version = "devel"
	}
	return v
}

// String is the one line `tunnel version` prints: the version, the commit
// and its time as far as the version does not say them, the Go version and
// the platform.
func (v versionInfo) String() string {
	var commit []string
	if short := v.Commit[:min(len(v.Commit), shortRevision)]; short != "" && !strings.HasPrefix(v.Version, short) {
		c := "commit " + short
		if v.Dirty && !strings.Contains(v.Version, "dirty") {
			c += "+dirty"
		}
		commit = append(commit, c)
	}
	if v.CommitTime != "" {
		commit = append(commit, v.CommitTime)
	}
	line := "tunnel " + v.Version
	if len(commit) > 0 {
		line += " (" + strings.Join(commit, ", ") + ")"
	}
	return line + " " + v.Go + " " + v.OS + "/" + v.Arch
}
