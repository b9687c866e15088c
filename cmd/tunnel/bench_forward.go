package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/tunnel-dev/tunnel/agent"
)

// BenchForwardOptions are the inputs of the hidden `tunnel bench forward`,
// one hop of the floor: a plain TCP forwarder and nothing else, or with
// TLS on either side (the floor of `tunnel bench --tls`).
type BenchForwardOptions struct {
	IO     IOStreams
	Logger *slog.Logger

	Listen string // address to accept connections on
	To     string // address every connection is forwarded to

	// TLSCert and TLSKey, if set, have the forwarder accept TLS and
	// forward what it decrypts.
	TLSCert, TLSKey string
	// ToCA, if set, has it speak TLS to To (as "localhost"), trusting
	// the CA certificates in this PEM file.
	ToCA string
}

// benchForwardReady starts the line a forwarder prints on stdout once it
// listens: "bench forward on ADDR".
const benchForwardReady = "bench forward on "

// NewCmdBenchForward returns the hidden `tunnel bench forward`. runF, if not
// nil, replaces running it.
func NewCmdBenchForward(f *Factory, runF func(*BenchForwardOptions) error) *cobra.Command {
	opts := &BenchForwardOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:     "forward --to HOST:PORT [--listen HOST:PORT] [--tls-cert FILE --tls-key FILE] [--to-ca FILE]",
		Short:   "Forward TCP connections to another address, as the bench's floor",
		Hidden:  true,
		Example: `  tunnel bench forward --listen 127.0.0.1:9001 --to 127.0.0.1:9000`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.To == "" {
				return usageErrorf(cmd, "no --to: pass the address to forward connections to")
			}
			if (opts.TLSCert == "") != (opts.TLSKey == "") {
				return usageErrorf(cmd, "--tls-cert and --tls-key go together: pass both, the certificate chain and its private key")
			}
			if runF != nil {
				return runF(opts)
			}
			return benchForwardRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Listen, "listen", "127.0.0.1:0", "listen `address`")
	fl.StringVar(&opts.To, "to", "", "`address` to forward each connection to")
	fl.StringVar(&opts.TLSCert, "tls-cert", "", "certificate `file` (PEM): accept TLS")
	fl.StringVar(&opts.TLSKey, "tls-key", "", "private key `file` (PEM) of --tls-cert")
	fl.StringVar(&opts.ToCA, "to-ca", "", "speak TLS to --to, trusting the CA certificates in this PEM `file`")
	return cmd
}

// benchForwardRun accepts connections until ctx is done. Each is joined to a
// new connection to opts.To by two io.Copy calls, which between TCP sockets
// on Linux are splice(2): no user-space buffer, the least a forwarder can do.
// With TLS on a side, that side is a tls.Conn and io.Copy copies through a
// buffer.
func benchForwardRun(ctx context.Context, opts *BenchForwardOptions) error {
	var serverTLS, clientTLS *tls.Config
	if opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			return fmt.Errorf("bench forward: %w", err)
		}
		serverTLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	if opts.ToCA != "" {
		pool := x509.NewCertPool()
		if err := agent.AddCertsFromPEMFile(pool, opts.ToCA); err != nil {
			return fmt.Errorf("bench forward: %w", err)
		}
		clientTLS = &tls.Config{RootCAs: pool, ServerName: "localhost"}
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return fmt.Errorf("bench forward: %w", err)
	}
	fmt.Fprintf(opts.IO.Out, "%s%s\n", benchForwardReady, ln.Addr())

	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = struct{}{}
		} else {
			delete(conns, c)
		}
	}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()

	var d net.Dialer
	dial := d.DialContext
	if clientTLS != nil {
		td := &tls.Dialer{Config: clientTLS}
		dial = td.DialContext
	}
	for {
		in, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			opts.Logger.Warn("accept", "err", err)
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors: do not spin
			continue
		}
		if serverTLS != nil {
			in = tls.Server(in, serverTLS) // the handshake runs on the first Read
		}
		track(in, true)
		wg.Go(func() {
			defer track(in, false)
			defer in.Close()
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			out, err := dial(dctx, "tcp", opts.To)
			cancel()
			if err != nil {
				opts.Logger.Warn("dial", "to", opts.To, "err", err)
				return
			}
			track(out, true)
			defer track(out, false)
			defer out.Close()
			if ctx.Err() != nil {
				return // stopping began while dialing: out may have missed the close
			}
			var pipes sync.WaitGroup
			pipes.Go(func() { benchPipe(out, in) })
			benchPipe(in, out)
			pipes.Wait()
		})
	}
	stop()
	// Close what is still open: after ln.Close no connection is added.
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	return nil
}

// benchPipe copies src to dst, then half-closes dst, or closes both on an
// error so that the other direction ends too.
func benchPipe(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if err != nil {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
