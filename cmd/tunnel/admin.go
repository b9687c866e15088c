package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/relay"
)

// AdminOptions are the inputs of `tunnel admin ls|kick|revoke`.
type AdminOptions struct {
	IO IOStreams

	URL   string // --admin-url, else $TUNNEL_ADMIN_URL: the relay's admin listener
	Token string // --admin-token, else $TUNNEL_ADMIN_TOKEN
	JSON  bool   // ls --json: the API's JSON instead of a table

	Action string // "ls", "kick" or "revoke"
	Name   string // the tunnel name kick and revoke act on
}

// adminTimeout bounds one call of the admin API.
const adminTimeout = 30 * time.Second

// NewCmdAdmin returns `tunnel admin` and its subcommands. runF, if not nil,
// replaces calling the API, so tests can check how arguments are read.
func NewCmdAdmin(f *Factory, runF func(*AdminOptions) error) *cobra.Command {
	opts := &AdminOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "admin <command> [flags]",
		Short: "Manage a running relay through its admin API",
		Long: `Talk to a relay's admin listener (tunnel relay --admin-addr, default
127.0.0.1:9090), with the admin token the relay was started with
(--admin-token or TUNNEL_ADMIN_TOKEN on both sides).

  ls            list the tunnel names, live and held for a reconnect
  kick NAME     disconnect NAME's agent; its names are held and it reconnects
  revoke NAME   free NAME at once; its agent stops with a permanent error`,
		Example: `  TUNNEL_ADMIN_TOKEN=$(cat /etc/tunnel/admin-token) tunnel admin ls
  tunnel admin kick demo --admin-url http://127.0.0.1:9090
  tunnel admin ls --json | jq '.[] | select(.state == "held") | .name'`,
		Args: unknownCommand,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	cmd.SuggestionsMinimumDistance = 2
	pf := cmd.PersistentFlags()
	pf.StringVar(&opts.URL, "admin-url", "http://127.0.0.1:9090", "`URL` of the relay's admin listener (env TUNNEL_ADMIN_URL)")
	pf.StringVar(&opts.Token, "admin-token", "", "the relay's admin `token` (env TUNNEL_ADMIN_TOKEN)")

	run := func(cmd *cobra.Command, action, name string) error {
		opts.Action, opts.Name = action, name
		if err := opts.resolve(cmd); err != nil {
			return err
		}
		if runF != nil {
			return runF(opts)
		}
		return adminRun(cmd.Context(), opts)
	}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the relay's tunnels",
		Example: `  tunnel admin ls
  tunnel admin ls --admin-url http://127.0.0.1:9090 --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return run(cmd, "ls", "") },
	}
	ls.Flags().BoolVar(&opts.JSON, "json", false, "print the API's JSON list instead of a table")
	cmd.AddCommand(ls)
	for _, c := range []struct{ action, short string }{
		{"kick", "Disconnect a tunnel's agent; its names are held for its reconnect"},
		{"revoke", "Free a tunnel name; its agent stops with a permanent error"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:     c.action + " NAME",
			Short:   c.short,
			Example: "  tunnel admin " + c.action + " demo\n  TUNNEL_ADMIN_TOKEN=$(cat /etc/tunnel/admin-token) tunnel admin " + c.action + " demo",
			Args:    oneName,
			// Asking the relay for its names would need the admin token
			// before the command runs; complete nothing rather than files.
			ValidArgsFunction: cobra.NoFileCompletions,
			RunE:              func(cmd *cobra.Command, args []string) error { return run(cmd, c.action, args[0]) },
		})
	}
	return cmd
}

// oneName accepts exactly one argument, a tunnel name.
func oneName(cmd *cobra.Command, args []string) error {
	if len(args) != 1 || strings.TrimSpace(args[0]) == "" {
		return usageErrorf(cmd, "%s takes one tunnel name, got %d arguments", cmd.CommandPath(), len(args))
	}
	return nil
}

// resolve fills in the environment's URL and token and checks the URL.
func (o *AdminOptions) resolve(cmd *cobra.Command) error {
	if env, ok := os.LookupEnv("TUNNEL_ADMIN_URL"); ok && env != "" && !cmd.Flags().Changed("admin-url") {
		o.URL = env
	}
	if !cmd.Flags().Changed("admin-token") {
		o.Token = os.Getenv("TUNNEL_ADMIN_TOKEN")
	}
	o.Token = strings.TrimSpace(o.Token)
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageErrorf(cmd, "--admin-url %q must be an http:// or https:// URL such as http://127.0.0.1:9090", o.URL)
	}
	o.URL = strings.TrimSuffix(u.String(), "/")
	return nil
}

// adminRun calls the admin API and prints its answer.
func adminRun(ctx context.Context, o *AdminOptions) error {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	method, path := http.MethodPost, "/api/tunnels/"+url.PathEscape(o.Name)+"/"+o.Action
	if o.Action == "ls" {
		method, path = http.MethodGet, "/api/tunnels"
	}
	body, err := adminCall(ctx, o, method, path)
	if err != nil {
		return err
	}
	switch o.Action {
	case "kick":
		fmt.Fprintf(o.IO.Out, "kicked %s: its agent was disconnected; its names are held for its reconnect\n", o.Name)
		return nil
	case "revoke":
		fmt.Fprintf(o.IO.Out, "revoked %s: the name is free and its agent was told to stop\n", o.Name)
		return nil
	}
	if o.JSON {
		_, err := o.IO.Out.Write(body)
		return err
	}
	var list []relay.TunnelInfo
	if err := json.Unmarshal(body, &list); err != nil {
		return fmt.Errorf("admin API at %s: unexpected answer: %w", o.URL, err)
	}
	printTunnels(o.IO.Out, list, time.Now())
	return nil
}

// adminCall sends one request and returns the body of a 2xx answer; any
// other answer becomes an error carrying the API's message.
func adminCall(ctx context.Context, o *AdminOptions, method, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, o.URL+path, nil)
	if err != nil {
		return nil, err
	}
	if o.Token != "" {
		req.Header.Set("Authorization", "Bearer "+o.Token)
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w (is the relay running with this --admin-addr?)", o.URL, unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w", o.URL, err)
	}
	if resp.StatusCode/100 == 2 {
		return body, nil
	}
	var apiErr struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &apiErr) != nil || apiErr.Error == "" {
		apiErr.Error = strings.TrimSpace(string(body))
	}
	// The relay's own words are for its operator and for curl; say what
	// to do with this command instead.
	switch {
	case resp.StatusCode == http.StatusUnauthorized && o.Token == "":
		apiErr.Error = "no admin token given: pass the relay's admin token with --admin-token or TUNNEL_ADMIN_TOKEN"
	case resp.StatusCode == http.StatusUnauthorized:
		apiErr.Error = "the relay did not accept this admin token: pass the one it was started with (its --admin-token or TUNNEL_ADMIN_TOKEN)"
	case resp.StatusCode == http.StatusForbidden:
		apiErr.Error = "the relay's admin API is off: restart the relay with --admin-token or TUNNEL_ADMIN_TOKEN set, then pass the same token here"
	}
	return nil, fmt.Errorf("admin API: %s: %s", resp.Status, apiErr.Error)
}

// unwrapURLError drops *url.Error's repetition of the method and URL.
func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// printTunnels writes the table of `tunnel admin ls`.
func printTunnels(w io.Writer, list []relay.TunnelInfo, now time.Time) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no tunnels")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tURL\tAGENT\tTOKEN\tSINCE\tSTREAMS\tREQUESTS\tIN\tOUT")
	for _, t := range list {
		state := t.State
		if t.State == "held" && !t.HeldUntil.IsZero() {
			state = fmt.Sprintf("held (%s left)", shortDuration(t.HeldUntil.Sub(now)))
		}
		token := t.Token
		if token == "" {
			token = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", t.Name, state, t.URL, t.Agent, token,
			shortDuration(now.Sub(t.Since))+" ago", t.Streams, t.Requests, byteSize(t.BytesIn), byteSize(t.BytesOut))
	}
	tw.Flush()
}

// shortDuration rounds d for a table: 42s, 5m3s, 2h5m, 3d4h.
func shortDuration(d time.Duration) string {
	d = max(d, 0).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", d/time.Second)
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", d/time.Minute, d%time.Minute/time.Second)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	default:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	}
}

// byteSize spells n bytes as 512B, 1.5KiB, 3.2MiB.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTP"[exp])
}
