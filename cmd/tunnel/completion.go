package main

import (
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// completionShells are the shells `tunnel completion` writes scripts for.
var completionShells = []string{"bash", "zsh", "fish", "powershell"}

// NewCmdCompletion returns `tunnel completion SHELL`. It replaces cobra's
// default command so that one help text says how to install each script.
func NewCmdCompletion(f *Factory) *cobra.Command {
	var noDesc bool
	cmd := &cobra.Command{
		Use:   "completion bash|zsh|fish|powershell",
		Short: "Print a shell completion script",
		Long: `Print a script that makes your shell complete tunnel's commands, flags and
flag values (log levels and formats, file names for file flags). The script
asks the tunnel binary on your PATH what to complete, so it stays right when
you upgrade. Install it once, then open a new shell:

bash, with the bash-completion package (apt or dnf install bash-completion;
macOS: brew install bash-completion@2, or bash-completion for bash 3.2):
  Linux:  mkdir -p ~/.local/share/bash-completion/completions
          tunnel completion bash > ~/.local/share/bash-completion/completions/tunnel
  macOS:  tunnel completion bash > "$(brew --prefix)/etc/bash_completion.d/tunnel"

zsh:
  mkdir -p ~/.zfunc && tunnel completion zsh > ~/.zfunc/_tunnel
  and in ~/.zshrc, before compinit runs (or add it):
    fpath=(~/.zfunc $fpath); autoload -U compinit; compinit
  With Homebrew's zsh instead:
    tunnel completion zsh > "$(brew --prefix)/share/zsh/site-functions/_tunnel"

fish:
  mkdir -p ~/.config/fish/completions
  tunnel completion fish > ~/.config/fish/completions/tunnel.fish

PowerShell (Windows, macOS, Linux):
  if (!(Test-Path $PROFILE)) { New-Item -Type File -Force $PROFILE }
  Add-Content $PROFILE 'tunnel completion powershell | Out-String | Invoke-Expression'

To try it in the current shell only:
  bash 4+, zsh:  source <(tunnel completion bash)     (or zsh)
  fish:          tunnel completion fish | source
  PowerShell:    tunnel completion powershell | Out-String | Invoke-Expression`,
		Example: `  tunnel completion bash > ~/.local/share/bash-completion/completions/tunnel
  tunnel completion zsh > ~/.zfunc/_tunnel
  tunnel completion fish > ~/.config/fish/completions/tunnel.fish
  tunnel completion powershell | Out-String | Invoke-Expression`,
		ValidArgs: completionShells,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 || !slices.Contains(completionShells, args[0]) {
				return usageErrorf(cmd, "name one shell: %s", strings.Join(completionShells, ", "))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			root, out := cmd.Root(), f.IO.Out
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(out, !noDesc)
			case "zsh":
				if noDesc {
					return root.GenZshCompletionNoDesc(out)
				}
				return root.GenZshCompletion(out)
			case "fish":
				return root.GenFishCompletion(out, !noDesc)
			default:
				if noDesc {
					return root.GenPowerShellCompletion(out)
				}
				return root.GenPowerShellCompletionWithDesc(out)
			}
		},
	}
	cmd.Flags().BoolVar(&noDesc, "no-descriptions", false, "complete without a description next to each choice")
	return cmd
}

// flagValues are the values some flags take, by flag name, wherever the
// flag appears.
var flagValues = map[string][]string{
	"log-level":  {"debug", "info", "warn", "error"},
	"log-format": {"text", "json"},
}

// registerCompletions gives every command under root, as far as it has not
// chosen its own, the cheap completions:
//   - the values of flagValues;
//   - for a flag whose usage names its value `file`, file names (the shell's
//     default), for `directory` directories, and nothing for any other value
//     (an address, a URL, a domain, a token, a number): a file name there
//     would only be a wrong guess;
//   - no file names for positional arguments of a command that takes none.
//
// Call it once the tree is complete: commands added later keep cobra's
// defaults (file names for everything).
func registerCompletions(root *cobra.Command) {
	var walk func(*cobra.Command)
	walk = func(cmd *cobra.Command) {
		if cmd.ValidArgsFunction == nil && len(cmd.ValidArgs) == 0 && cmd.Args != nil && cmd.Args(cmd, []string{"x"}) != nil {
			cmd.ValidArgsFunction = cobra.NoFileCompletions
		}
		// Persistent flags are registered on the command that owns them;
		// its children look them up there.
		register := func(fl *pflag.Flag) {
			if _, ok := cmd.GetFlagCompletionFunc(fl.Name); ok || fl.NoOptDefVal != "" {
				return // chosen already, or a boolean that takes no value
			}
			cmd.RegisterFlagCompletionFunc(fl.Name, flagCompletion(fl))
		}
		cmd.LocalNonPersistentFlags().VisitAll(register)
		cmd.PersistentFlags().VisitAll(register)
		for _, c := range cmd.Commands() {
			walk(c)
		}
	}
	walk(root)
}

// flagCompletion returns the completion of fl's value.
func flagCompletion(fl *pflag.Flag) cobra.CompletionFunc {
	if values, ok := flagValues[fl.Name]; ok {
		return cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp)
	}
	directive := cobra.ShellCompDirectiveNoFileComp
	switch name, _ := pflag.UnquoteUsage(fl); name {
	case "file":
		directive = cobra.ShellCompDirectiveDefault
	case "directory":
		directive = cobra.ShellCompDirectiveFilterDirs
	}
	return func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return nil, directive
	}
}
