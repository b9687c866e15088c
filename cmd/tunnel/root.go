package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
)

// IOStreams are the streams a command writes to; tests replace them.
type IOStreams struct {
	// Out receives what a person or a script reads: URLs and request lines.
	Out io.Writer
	// ErrOut receives status lines and logs.
	ErrOut io.Writer
}

// Factory carries what the root command gives every subcommand.
type Factory struct {
	IO IOStreams
	// Logger writes text logs to IO.ErrOut at the level set by --log-level.
	Logger *slog.Logger
	level  *slog.LevelVar
}

func newFactory(ios IOStreams) *Factory {
	level := new(slog.LevelVar)
	return &Factory{
		IO:     ios,
		Logger: slog.New(slog.NewTextHandler(ios.ErrOut, &slog.HandlerOptions{Level: level})),
		level:  level,
	}
}

// NewCmdRoot returns the `tunnel` command with all its subcommands.
func NewCmdRoot(ios IOStreams) *cobra.Command { return newCmdRoot(newFactory(ios)) }

func newCmdRoot(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tunnel <command> [flags]",
		Short: "Expose local HTTP and WebSocket servers through your own relay",
		Long: `tunnel gives a server on your laptop a public URL on a relay you run.

On a VPS with a wildcard DNS record:   tunnel relay --domain example.com --acme-accept-tos
On the laptop:                         tunnel expose -p 8080 -s demo --relay https://example.com
Try both ends in one process:          tunnel demo`,
		Example: `  tunnel demo
  tunnel relay --domain example.com --acme-accept-tos --acme-email ops@example.com
  tunnel expose -p 8080 -s demo --relay https://example.com
  tunnel help expose
  tunnel completion bash > ~/.local/share/bash-completion/completions/tunnel`,
		SilenceUsage:  true,
		SilenceErrors: true,
		// Without Args cobra answers an unknown command with a plain error
		// that main could not tell apart from a failure.
		Args: unknownCommand,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	// NewCmdCompletion replaces cobra's completion command.
	cmd.CompletionOptions.DisableDefaultCmd = true
	cmd.SuggestionsMinimumDistance = 2
	cmd.SetOut(f.IO.Out)
	cmd.SetErr(f.IO.ErrOut)
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{cmd: c.CommandPath(), err: err}
	})
	cmd.PersistentFlags().Var(levelFlag{f.level}, "log-level", "log `level`: debug, info, warn or error")

	cmd.AddCommand(
		NewCmdRelay(f, nil),
		NewCmdExpose(f, nil),
		NewCmdStart(f, nil),
		NewCmdDemo(f, nil),
		NewCmdAdmin(f, nil),
		NewCmdBench(f, nil),
		NewCmdDoctor(f, nil),
		NewCmdVersion(f, nil),
		NewCmdCompletion(f),
	)
	// cobra adds `help` when the command runs; adding it now lets it have
	// an example like every other command.
	cmd.InitDefaultHelpCmd()
	if help, _, err := cmd.Find([]string{"help"}); err == nil && help != cmd {
		help.Example = "  tunnel help expose\n  tunnel help admin kick"
		// cobra's own would show the root's help for `tunnel help exoose`
		// and exit 0: unknownCommand keeps its Find from failing.
		show := help.Run
		help.Run = nil
		help.RunE = func(c *cobra.Command, args []string) error {
			if target, rest, err := cmd.Find(args); err == nil && len(rest) > 0 {
				if s := target.SuggestionsFor(rest[0]); len(s) > 0 {
					return usageErrorf(cmd, "no help topic %q; did you mean %q?", strings.Join(args, " "), s[0])
				}
				return usageErrorf(cmd, "no help topic %q: %s has no command %q", strings.Join(args, " "), target.CommandPath(), rest[0])
			}
			show(c, args)
			return nil
		}
	}
	registerCompletions(cmd) // last: it completes the flags of the whole tree
	return cmd
}

// usageError is a mistake on the command line. main exits 2 for it and
// points at --help.
type usageError struct {
	cmd string // the command path, e.g. "tunnel expose"
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usageErrorf returns a usageError for cmd with a formatted message.
func usageErrorf(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf(format, args...)}
}

// noArgs rejects positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf(cmd, "%s takes no arguments, got %q", cmd.CommandPath(), strings.Join(args, " "))
	}
	return nil
}

func unknownCommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		return usageErrorf(cmd, "unknown command %q; did you mean %q?", args[0], s[0])
	}
	return usageErrorf(cmd, "unknown command %q", args[0])
}

// levelFlag sets a slog.LevelVar from --log-level.
type levelFlag struct{ v *slog.LevelVar }

func (f levelFlag) String() string {
	if f.v == nil { // pflag calls String on a zero value to spot defaults

		return ""
	}
	return strings.ToLower(f.v.Level().String())
}

func (f levelFlag) Set(s string) error {
	switch strings.ToLower(s) {
	case "debug":
		f.v.Set(slog.LevelDebug)
	case "info":
		f.v.Set(slog.LevelInfo)
	case "warn":
		f.v.Set(slog.LevelWarn)
	case "error":
		f.v.Set(slog.LevelError)
	default:
		return fmt.Errorf("want debug, info, warn or error")
	}
	return nil
}

func (levelFlag) Type() string { return "level" }
