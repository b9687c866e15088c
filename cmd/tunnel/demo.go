package main

import (
	"context"
	"crypto/tls"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// DemoOptions are the inputs of `tunnel demo`.
type DemoOptions struct {
	IO     IOStreams
	Logger *slog.Logger

	Addr string // the relay's listen address
	Name string // the tunnel's name

	TLSCert, TLSKey string // with these, the relay serves HTTPS on Addr
	CAFile          string // extra roots the agent trusts for the relay

	// TLSConfig is what the agent trusts: the system roots and CAFile's;
	// nil without --ca-file.
	TLSConfig *tls.Config
}

// NewCmdDemo returns `tunnel demo`. runF, if not nil, replaces running the
// demo, so tests can check how flags are read.
func NewCmdDemo(f *Factory, runF func(*DemoOptions) error) *cobra.Command {
	opts := &DemoOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:   "demo [--addr HOST:PORT] [-s NAME] [--tls-cert FILE --tls-key FILE [--ca-file FILE]]",
		Short: "Run a relay, an agent and a WebSocket echo page in one process",
		Long: `Start a relay for *.localhost, a small local web app with a WebSocket echo
server, and an agent that exposes the app through the relay; then print the
app's public URL. Open it in a browser to watch a WebSocket go through the
tunnel. Ctrl-C stops everything.

With --tls-cert and --tls-key (a certificate for localhost and NAME.localhost,
e.g. mkcert localhost demo.localhost: browsers and curl refuse a wildcard
*.localhost) the relay serves HTTPS and the page uses wss; --ca-file names the CA that
issued it, if the system does not trust it already.`,
		Example: `  tunnel demo
  tunnel demo --tls-cert localhost.pem --tls-key localhost-key.pem --ca-file ca.pem`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if host, _, err := net.SplitHostPort(opts.Addr); err != nil {
				return usageErrorf(cmd, "--addr %q is not HOST:PORT, e.g. 127.0.0.1:8000", opts.Addr)
			} else if ip, err := netip.ParseAddr(host); host != "localhost" && (err != nil || !ip.IsLoopback()) {
				return usageErrorf(cmd, "--addr %q is not a loopback address: the demo's relay has no tokens and serves this machine only; use 127.0.0.1:PORT", opts.Addr)
			}
			if (opts.TLSCert == "") != (opts.TLSKey == "") {
				return usageErrorf(cmd, "--tls-cert and --tls-key go together: pass both, the certificate chain and its private key")
			}
			// Before anything starts, as expose says it: exit 1 with the
			// rule the name breaks, and no relay log around it.
			if err := agent.ValidateName(opts.Name); err != nil {
				return err
			}
			if opts.CAFile != "" {
				if opts.TLSCert == "" {
					return usageErrorf(cmd, "--ca-file is the CA of --tls-cert: pass --tls-cert and --tls-key too, or drop --ca-file")
				}
				cfg, err := tlsConfigTrusting(opts.CAFile)
				if err != nil {
					return usageErrorf(cmd, "--ca-file: %v", err)
				}
				opts.TLSConfig = cfg
			}
			if runF != nil {
				return runF(opts)
			}
			defer governProcs()()
			return demoRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Addr, "addr", "127.0.0.1:0", "the relay's listen `address` (port 0 picks a free one)")
	fl.StringVarP(&opts.Name, "subdomain", "s", "demo", "tunnel `name`: the page is at http(s)://NAME.localhost:PORT")
	fl.StringVar(&opts.TLSCert, "tls-cert", "", "certificate `file` (PEM) for localhost and NAME.localhost: serve the demo over HTTPS")
	fl.StringVar(&opts.TLSKey, "tls-key", "", "private key `file` (PEM) of --tls-cert")
	fl.StringVar(&opts.CAFile, "ca-file", "", "PEM `file` of the CA that issued --tls-cert, if the system does not trust it")
	return cmd
}

// demoRun runs the three pieces until ctx is done, then stops them in the
// order that lets each say goodbye: the agent releases its name, the relay
// drains, the app closes its WebSockets.
func demoRun(ctx context.Context, opts *DemoOptions) error {
	app, err := startDemoApp(opts.Logger)
	if err != nil {
		return err
	}
	defer app.close()

	// The relay outlives ctx until the agent has said goodbye; if the relay
	// fails on its own, the agent stops too.
	relayCtx, stopRelay := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRelay()
	agentCtx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	ready := make(chan net.Addr, 1)
	relayDone := make(chan error, 1)
	go func() {
		err := relay.Run(relayCtx, relay.Config{
			Domain: "localhost",
			Addr:   opts.Addr,
			Grace:  -1, // nobody else will reconnect to this relay
			// By the time the relay stops, the agent has gone and no request
			// can finish; what is left are browsers' idle preconnected
			// sockets, which http.Server.Shutdown waits up to 5 s for.
			DrainTimeout: time.Second,
			Logger:       opts.Logger,
			// HTTPS on Addr only: no ACME, no port-80 listener.
			TLSCertFile: opts.TLSCert,
			TLSKeyFile:  opts.TLSKey,
		}, func(_ *relay.Server, addr net.Addr) { ready <- addr })
		stopAgent()
		relayDone <- err
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-relayDone:
		return err
	}

	p := newStatusPrinter(opts.IO, func(w io.Writer, urls []string) {
		for _, u := range urls {
			fmt.Fprintln(w, u)
		}
		fmt.Fprintln(w, "open it in a browser and send a message; Ctrl-C to stop")
	})
	cfg := agent.Config{
		Relay:   "http://" + addr.String(),
		Tunnels: []agent.Tunnel{{Name: opts.Name, Local: app.addr}},
		OnEvent: p.onEvent,
		Logger:  opts.Logger,
	}
	if opts.TLSCert != "" {
		// The certificate names localhost, not the listener's IP address,
		// and the relay wants the Host it serves to match the TLS server
		// name: ask for https://localhost and dial the listener itself.
		_, port, _ := net.SplitHostPort(addr.String())
		cfg.Relay = "https://" + net.JoinHostPort("localhost", port)
		cfg.TLSConfig = opts.TLSConfig
		cfg.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr.String())
		}
	}
	err = agent.Run(agentCtx, cfg)
	p.close()
	stopRelay()
	return errors.Join(err, <-relayDone)
}

//go:embed demo.html
var demoPage []byte

// demoApp is the local server the demo exposes: the page at / and a
// WebSocket echo at /ws.
type demoApp struct {
	addr      string
	log       *slog.Logger
	srv       *http.Server
	serveDone chan struct{}
	// ctx ends the echo loops at close: http.Server.Shutdown does not wait
	// for hijacked connections, so the app tracks them itself.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	echoes sync.WaitGroup // one per WebSocket
}

func startDemoApp(log *slog.Logger) (*demoApp, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo app: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &demoApp{
		addr:      ln.Addr().String(),
		log:       log.With("component", "demo-app"),
		serveDone: make(chan struct{}),
		ctx:       ctx,
		cancel:    cancel,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", servePage)
	mux.HandleFunc("GET /ws", a.echo)
	a.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(a.serveDone)
		a.srv.Serve(ln)
	}()
	return a, nil
}

func servePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(demoPage)
}

// echo answers each text message with "echo: " and the message.
func (a *demoApp) echo(w http.ResponseWriter, r *http.Request) {
	if !a.beginEcho() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	defer a.echoes.Done()
	// Accept checks that the page's Origin matches the Host, which the relay
	// passes through unchanged.
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		a.log.Debug("websocket handshake failed", "err", err)
		return
	}
	defer c.CloseNow()
	for {
		typ, msg, err := c.Read(a.ctx)
		if err != nil {
			return
		}
		if typ != websocket.MessageText {
			c.Close(websocket.StatusUnsupportedData, "this demo echoes text messages")
			return
		}
		wctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		err = c.Write(wctx, websocket.MessageText, append([]byte("echo: "), msg...))
		cancel()
		if err != nil {
			return
		}
	}
}

func (a *demoApp) beginEcho() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	a.echoes.Add(1)
	return true
}

// close stops the app and returns once every handler has returned.
func (a *demoApp) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		a.srv.Close()
	}
	<-a.serveDone
	a.echoes.Wait()
}
