package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// complete runs `tunnel __complete args…` in process, as the shell scripts
// do, and returns the completions (without descriptions) and the directive.
func complete(t *testing.T, args ...string) ([]string, string) {
	t.Helper()
	var out bytes.Buffer
	root := NewCmdRoot(IOStreams{Out: &out, ErrOut: io.Discard})
	root.SetArgs(append([]string{cobra.ShellCompNoDescRequestCmd}, args...))
	if err := root.Execute(); err != nil {
		t.Fatalf("__complete %q: %v", args, err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	last := len(lines) - 1
	if !strings.HasPrefix(lines[last], ":") {
		t.Fatalf("__complete %q printed %q: no directive", args, out.String())
	}
	return lines[:last], lines[last]
}

// Directives as __complete prints them.
const (
	compFiles   = ":0" // ShellCompDirectiveDefault: the shell completes file names
	compNothing = ":4" // ShellCompDirectiveNoFileComp
	compDirs    = ":16"
)

// TestCompleteFlagValues checks what the completion scripts are told for
// flag values and arguments.
func TestCompleteFlagValues(t *testing.T) {
	levels := []string{"debug", "info", "warn", "error"}
	for _, tt := range []struct {
		args      []string
		want      []string
		directive string
	}{
		{[]string{"expose", "--log-level", ""}, levels, compNothing},
		{[]string{"--log-level", ""}, levels, compNothing},
		{[]string{"admin", "ls", "--log-level", "w"}, levels, compNothing}, // the shell filters by prefix
		{[]string{"relay", "--log-format", ""}, []string{"text", "json"}, compNothing},
		{[]string{"completion", ""}, []string{"bash", "zsh", "fish", "powershell"}, compNothing},
		{[]string{"relay", "--tls-cert", ""}, nil, compFiles},
		{[]string{"relay", "--config", ""}, nil, compFiles},
		{[]string{"expose", "--ca-file", ""}, nil, compFiles},
		{[]string{"demo", "--tls-key", ""}, nil, compFiles},
		{[]string{"relay", "--state-dir", ""}, nil, compDirs},
		{[]string{"relay", "--domain", ""}, nil, compNothing},
		{[]string{"relay", "--addr", ""}, nil, compNothing},
		{[]string{"relay", "--grace", ""}, nil, compNothing},
		{[]string{"expose", "--relay", ""}, nil, compNothing},
		{[]string{"expose", "-p", ""}, nil, compNothing},
		{[]string{"admin", "kick", "--admin-url", ""}, nil, compNothing},
		{[]string{"admin", "kick", ""}, nil, compNothing},
		{[]string{"expose", ""}, nil, compNothing},  // no arguments, so no file names
		{[]string{"version", ""}, nil, compNothing}, // likewise
	} {
		got, directive := complete(t, tt.args...)
		if !slices.Equal(got, tt.want) || directive != tt.directive {
			t.Errorf("tunnel __complete %q: %q %s, want %q %s", tt.args, got, directive, tt.want, tt.directive)
		}
	}
	// Commands and subcommands complete as before.
	if got, _ := complete(t, ""); !slices.Contains(got, "expose") || !slices.Contains(got, "completion") {
		t.Errorf("tunnel <TAB>: %q", got)
	}
	if got, _ := complete(t, "admin", ""); !slices.Equal(got, []string{"kick", "ls", "revoke"}) {
		t.Errorf("tunnel admin <TAB>: %q", got)
	}
}

// TestCompletionCoversEveryFlag walks the command tree, commands added
// later included, and fails for a flag whose value would complete as a
// file name only because no one chose: registerCompletions must run after
// the last AddCommand, or the command must register its own. A flag that
// takes a path says so with the usage word `file` or `directory`, the two
// that complete as paths (flagCompletion).
func TestCompletionCoversEveryFlag(t *testing.T) {
	root := NewCmdRoot(IOStreams{Out: io.Discard, ErrOut: io.Discard})
	walkCommands(root, func(cmd *cobra.Command) {
		check := func(fl *pflag.Flag) {
			if fl.NoOptDefVal != "" {
				return
			}
			if _, ok := cmd.GetFlagCompletionFunc(fl.Name); !ok {
				t.Errorf("%s --%s: no completion; is registerCompletions still the last call in newCmdRoot?", cmd.CommandPath(), fl.Name)
			}
			switch word, _ := pflag.UnquoteUsage(fl); strings.ToLower(word) {
			case "dir", "path", "folder", "filename":
				t.Errorf("%s --%s: usage word %q completes nothing; say `file` or `directory`", cmd.CommandPath(), fl.Name, word)
			}
		}
		cmd.LocalNonPersistentFlags().VisitAll(check)
		cmd.PersistentFlags().VisitAll(check)
	})
}

// walkCommands calls f for cmd and every command under it.
func walkCommands(cmd *cobra.Command, f func(*cobra.Command)) {
	f(cmd)
	for _, c := range cmd.Commands() {
		walkCommands(c, f)
	}
}

// TestCompletionScripts checks that `tunnel completion SHELL` prints a
// script each shell accepts (bash -n, zsh -n and fish --no-execute where
// they are installed), and that an unknown shell is a usage error.
func TestCompletionScripts(t *testing.T) {
	syntax := map[string][]string{"bash": {"-n"}, "zsh": {"-n"}, "fish": {"--no-execute"}}
	for _, shell := range completionShells {
		var out bytes.Buffer
		if err := execute(NewCmdRoot(IOStreams{Out: &out, ErrOut: io.Discard}), "completion", shell); err != nil {
			t.Fatalf("completion %s: %v", shell, err)
		}
		if !strings.Contains(out.String(), "__complete") {
			t.Errorf("completion %s: the script does not call tunnel __complete:\n%.300s", shell, out.String())
		}
		var nodesc bytes.Buffer
		if err := execute(NewCmdRoot(IOStreams{Out: &nodesc, ErrOut: io.Discard}), "completion", shell, "--no-descriptions"); err != nil || nodesc.Len() == 0 {
			t.Errorf("completion %s --no-descriptions: %v", shell, err)
		}
		flags, ok := syntax[shell]
		if !ok {
			continue
		}
		sh, err := exec.LookPath(shell)
		if err != nil {
			if shell == "bash" {
				t.Fatal("bash is missing")
			}
			t.Logf("%s is missing: its script is not checked", shell)
			continue
		}
		script := filepath.Join(t.TempDir(), "tunnel."+shell)
		if err := os.WriteFile(script, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command(sh, append(flags, script)...).CombinedOutput(); err != nil {
			t.Errorf("%s %s: %v\n%s", shell, strings.Join(flags, " "), err, b)
		}
	}
	err := execute(NewCmdRoot(IOStreams{Out: io.Discard, ErrOut: io.Discard}), "completion", "tcsh")
	if _, ok := err.(*usageError); !ok {
		t.Errorf("completion tcsh: %v, want a usage error", err)
	}
}

// TestCompletionBash loads the bash script and completes command lines with
// it as bash would on TAB, against the real binary. The script needs one
// function of the bash-completion package, provided here when the package
// is not installed.
func TestCompletionBash(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is missing")
	}
	var script bytes.Buffer
	if err := execute(NewCmdRoot(IOStreams{Out: &script, ErrOut: io.Discard}), "completion", "bash"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tunnel.bash")
	if err := os.WriteFile(path, script.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	const driver = `
if [[ -r /usr/share/bash-completion/bash_completion ]]; then
	source /usr/share/bash-completion/bash_completion
else
	_get_comp_words_by_ref() { cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]}; words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }
fi
source "$1"; shift
COMP_WORDS=("$@")
COMP_CWORD=$(($# - 1))
COMP_LINE="$*"
COMP_POINT=${#COMP_LINE}
__start_tunnel 2>/dev/null # compopt complains outside a real completion
printf '%s\n' "${COMPREPLY[@]}"
`
	for _, tt := range []struct {
		words []string // after the binary
		want  []string
	}{
		{[]string{"expose", "--log-level", ""}, []string{"debug", "info", "warn", "error"}},
		{[]string{"relay", "--log-format", "j"}, []string{"json"}},
		{[]string{"completion", "f"}, []string{"fish"}},
		{[]string{"exp"}, []string{"expose"}},
		{[]string{"relay", "--domain", ""}, nil},
	} {
		args := append([]string{"-c", driver, "driver", path, tunnelBin}, tt.words...)
		out, err := exec.Command("bash", args...).Output()
		if err != nil {
			t.Fatalf("bash completing %q: %v", tt.words, err)
		}
		var got []string
		for line := range strings.SplitSeq(string(out), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				got = append(got, line)
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("tunnel %s<TAB> in bash: %q, want %q", strings.Join(tt.words, " "), got, tt.want)
		}
	}
}
