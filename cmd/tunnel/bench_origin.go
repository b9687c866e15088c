package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/spf13/cobra"
)

// BenchOriginOptions are the inputs of the hidden `tunnel bench origin`,
// the local server `tunnel bench` measures every path against.
type BenchOriginOptions struct {
	IO     IOStreams
	Logger *slog.Logger

	Addr string // listen address of the origin

	// TLSCert and TLSKey, if set, have the origin serve HTTPS as well, on
	// a port of its own (the direct path of `tunnel bench --tls`).
	TLSCert, TLSKey string
}

// benchOriginReady starts the line the origin prints on stdout once it
// listens: "bench origin on ADDR, stats on ADDR", and with TLS
// ", https on ADDR".
const benchOriginReady = "bench origin on "

// NewCmdBenchOrigin returns the hidden `tunnel bench origin`. runF, if not
// nil, replaces running it.
func NewCmdBenchOrigin(f *Factory, runF func(*BenchOriginOptions) error) *cobra.Command {
	opts := &BenchOriginOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:     "origin [--addr HOST:PORT] [--tls-cert FILE --tls-key FILE]",
		Short:   "Serve the bench's origin: /bulk, /small and a WebSocket echo at /ws",
		Hidden:  true,
		Example: `  tunnel bench origin --addr 127.0.0.1:9000`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (opts.TLSCert == "") != (opts.TLSKey == "") {
				return usageErrorf(cmd, "--tls-cert and --tls-key go together: pass both, the certificate chain and its private key")
			}
			if runF != nil {
				return runF(opts)
			}
			return benchOriginRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Addr, "addr", "127.0.0.1:0", "listen `address`")
	fl.StringVar(&opts.TLSCert, "tls-cert", "", "certificate `file` (PEM): serve HTTPS too, on a port of its own")
	fl.StringVar(&opts.TLSKey, "tls-key", "", "private key `file` (PEM) of --tls-cert")
	return cmd
}

// benchOrigin serves what the bench asks for as cheaply as it can, so that
// the paths in front of it are what is measured.
type benchOrigin struct {
	conns atomic.Int64 // TCP connections accepted on the main port
	ctx   context.Context

	mu     sync.Mutex
	closed bool
	ws     sync.WaitGroup // one per WebSocket, since Close does not wait for hijacked connections
}

func (o *benchOrigin) beginEcho() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	o.ws.Add(1)
	return true
}

// benchBulkChunk is written again and again by /bulk.
var benchBulkChunk = make([]byte, 1<<20)

// benchSmallBody is the 1 KiB answer of /small.
var benchSmallBody = make([]byte, 1024)

func benchOriginRun(ctx context.Context, opts *BenchOriginOptions) error {
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return fmt.Errorf("bench origin: %w", err)
	}
	// New connections are counted on the main port; the bench asks for the
	// count on a port of its own, so asking does not change it.
	statsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ln.Close()
		return fmt.Errorf("bench origin: %w", err)
	}
	srvCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	o := &benchOrigin{ctx: srvCtx}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /bulk", o.bulk)
	mux.HandleFunc("GET /small", o.small)
	mux.HandleFunc("GET /ws", o.echo)
	errLog := slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          errLog,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				o.conns.Add(1)
			}
		},
	}
	stats := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%d\n", o.conns.Load())
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          errLog,
	}
	ready := fmt.Sprintf("%s%s, stats on %s", benchOriginReady, ln.Addr(), statsLn.Addr())
	// HTTPS is a second server on the same handler, so that it counts
	// its connections too.
	var tlsSrv *http.Server
	var tlsLn net.Listener
	if opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			ln.Close()
			statsLn.Close()
			return fmt.Errorf("bench origin: %w", err)
		}
		if tlsLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			ln.Close()
			statsLn.Close()
			return fmt.Errorf("bench origin: %w", err)
		}
		tlsSrv = &http.Server{
			Handler:           srv.Handler,
			ReadHeaderTimeout: srv.ReadHeaderTimeout,
			ErrorLog:          errLog,
			ConnState:         srv.ConnState,
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}},
		}
		ready += ", https on " + tlsLn.Addr().String()
	}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	wg.Go(func() { stats.Serve(statsLn) })
	if tlsSrv != nil {
		wg.Go(func() { tlsSrv.ServeTLS(tlsLn, "", "") })
	}
	fmt.Fprintln(opts.IO.Out, ready)

	<-ctx.Done()
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	cancel() // ends the echo loops
	srv.Close()
	stats.Close()
	if tlsSrv != nil {
		tlsSrv.Close()
	}
	wg.Wait()
	o.ws.Wait()
	return nil
}

// bulk answers GET /bulk?bytes=N with N zero bytes.
func (o *benchOrigin) bulk(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "want ?bytes=N", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	for n > 0 {
		chunk := benchBulkChunk[:min(n, int64(len(benchBulkChunk)))]
		if _, err := w.Write(chunk); err != nil {
			return
		}
		n -= int64(len(chunk))
	}
}

func (o *benchOrigin) small(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", "1024")
	w.Write(benchSmallBody)
}

// echo answers every WebSocket message with the same message.
func (o *benchOrigin) echo(w http.ResponseWriter, r *http.Request) {
	if !o.beginEcho() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	defer o.ws.Done()
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	for {
		typ, msg, err := c.Read(o.ctx)
		if err != nil {
			return
		}
		wctx, cancel := context.WithTimeout(o.ctx, 30*time.Second)
		err = c.Write(wctx, typ, msg)
		cancel()
		if err != nil {
			return
		}
	}
}
