package main

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryCommandHasExample walks the whole command tree, commands added
// later included, and fails for a command that `--help` would show without
// examples. Each example line that runs tunnel must name this command or
// one under it, and only flags that exist.
func TestEveryCommandHasExample(t *testing.T) {
	root := NewCmdRoot(IOStreams{Out: io.Discard, ErrOut: io.Discard})
	// Run it once, so that whatever cobra adds at run time is there too.
	if err := execute(root, "--help"); err != nil {
		t.Fatal(err)
	}
	n := 0
	walkCommands(root, func(cmd *cobra.Command) {
		if cmd.Hidden && cmd.Example == "" {
			return // hidden commands are welcome to have examples, not obliged
		}
		n++
		path := cmd.CommandPath()
		if strings.TrimSpace(cmd.Example) == "" {
			t.Errorf("%s has no Example: add one or two typical command lines", path)
			return
		}
		runs := 0
		for line := range strings.SplitSeq(cmd.Example, "\n") {
			if !strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "   ") {
				t.Errorf("%s: example line %q: indent it by two spaces, as cobra's own are", path, line)
			}
			for _, inv := range exampleInvocations(t, root, line) {
				runs++
				if !isUnder(inv.cmd, cmd) {
					t.Errorf("%s: example %q runs %s, not this command", path, line, inv.cmd.CommandPath())
				}
				for _, w := range inv.flags {
					if !deployFlagExists(inv.cmd, w) {
						t.Errorf("%s: example %q: %s has no flag %s", path, line, inv.cmd.CommandPath(), w)
					}
				}
			}
		}
		if runs == 0 {
			t.Errorf("%s: no example line runs tunnel:\n%s", path, cmd.Example)
		}
	})
	if n < 10 {
		t.Errorf("walked %d commands; the tree has more", n)
	}
}

// TestHelpShowsExamples checks that --help prints the examples.
func TestHelpShowsExamples(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"version", "--help"}, {"admin", "kick", "--help"}, {"help", "completion"}} {
		var out bytes.Buffer
		root := NewCmdRoot(IOStreams{Out: &out, ErrOut: io.Discard})
		root.SetArgs(args)
		if err := root.Execute(); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if !strings.Contains(out.String(), "\nExamples:\n  tunnel ") {
			t.Errorf("tunnel %s: no examples:\n%s", strings.Join(args, " "), out.String())
		}
	}
}

// TestReadmeCommands checks the tunnel command lines in README.md's code
// blocks, the install and completion steps included: each names a command
// that exists, with flags that exist.
func TestReadmeCommands(t *testing.T) {
	root := NewCmdRoot(IOStreams{Out: io.Discard, ErrOut: io.Discard})
	inBlock, lang, n := false, "", 0
	for i, line := range strings.Split(deployRead(t, "README.md"), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") {
			inBlock, lang = !inBlock, strings.TrimPrefix(trimmed, "```")
			continue
		}
		if !inBlock || lang == "go" || lang == "yaml" {
			continue
		}
		for _, inv := range exampleInvocations(t, root, trimmed) {
			n++
			for _, w := range inv.flags {
				if !deployFlagExists(inv.cmd, w) {
					t.Errorf("README.md:%d: %s has no flag %s", i+1, inv.cmd.CommandPath(), w)
				}
			}
		}
	}
	if n < 10 {
		t.Errorf("found %d tunnel command lines in README.md's code blocks; the parser is off", n)
	}
}

// exampleInvocation is one `tunnel …` command in an example line.
type exampleInvocation struct {
	cmd   *cobra.Command
	flags []string // the words that start with -
}

var (
	// exampleTunnel finds "tunnel" as a command: at the line's start, after
	// env assignments, a pipe or $(.
	exampleTunnel = regexp.MustCompile(`(?:^|[\s|(])tunnel(?:\s|$)`)
	// exampleEnd ends a command: a pipe, a redirection, a list, a comment.
	exampleEnd = regexp.MustCompile("[|;#>)]|&&")
)

// exampleInvocations returns the tunnel commands that line runs.
func exampleInvocations(t *testing.T, root *cobra.Command, line string) []exampleInvocation {
	t.Helper()
	var out []exampleInvocation
	for _, m := range exampleTunnel.FindAllStringIndex(line, -1) {
		rest := line[m[1]:]
		if i := exampleEnd.FindStringIndex(rest); i != nil {
			rest = rest[:i[0]]
		}
		words := strings.Fields(rest)
		cmd, _, err := root.Find(words)
		if err != nil {
			t.Errorf("example %q: %v", line, err)
			continue
		}
		inv := exampleInvocation{cmd: cmd}
		for _, w := range words {
			if strings.HasPrefix(w, "-") {
				inv.flags = append(inv.flags, w)
			}
		}
		out = append(out, inv)
	}
	return out
}

// isUnder reports whether cmd is parent or one of its descendants.
func isUnder(cmd, parent *cobra.Command) bool {
	for c := cmd; c != nil; c = c.Parent() {
		if c == parent {
			return true
		}
	}
	return false
}

// TestHelpUnknownTopic checks that help for a command that does not exist
// is a usage error, not the root's help and exit 0.
func TestHelpUnknownTopic(t *testing.T) {
	for args, want := range map[string]string{
		"help exoose":     `no help topic "exoose"; did you mean "expose"?`,
		"help status":     `no help topic "status": tunnel has no command "status"`,
		"help admin kik":  `no help topic "admin kik"; did you mean "kick"?`,
		"help admin kick": "",
		"help":            "",
	} {
		err := execute(NewCmdRoot(IOStreams{Out: io.Discard, ErrOut: io.Discard}), strings.Fields(args)...)
		var uerr *usageError
		switch {
		case want == "" && err != nil:
			t.Errorf("tunnel %s: %v", args, err)
		case want != "" && (err == nil || err.Error() != want || !errors.As(err, &uerr)):
			t.Errorf("tunnel %s: error %v, want the usage error %q", args, err, want)
		}
	}
}
