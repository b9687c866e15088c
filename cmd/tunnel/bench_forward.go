package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/spf13/cobra"
)

// BenchForwardOptions are the inputs of the hidden `tunnel bench forward`,
// one hop of the floor: a plain TCP forwarder and nothing else.
type BenchForwardOptions struct {
	IO     IOStreams
	Logger *slog.Logger

	Listen string // address to accept connections on
	To     string // address every connection is forwarded to
}

// benchForwardReady starts the line a forwarder prints on stdout once it
// listens: "bench forward on ADDR".
const benchForwardReady = "bench forward on "

// NewCmdBenchForward returns the hidden `tunnel bench forward`. runF, if not
// nil, replaces running it.
func NewCmdBenchForward(f *Factory, runF func(*BenchForwardOptions) error) *cobra.Command {
	opts := &BenchForwardOptions{IO: f.IO, Logger: f.Logger}
	cmd := &cobra.Command{
		Use:     "forward --to HOST:PORT [--listen HOST:PORT]",
		Short:   "Forward TCP connections to another address, as the bench's floor",
		Hidden:  true,
		Example: `  tunnel bench forward --listen 127.0.0.1:9001 --to 127.0.0.1:9000`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.To == "" {
				return usageErrorf(cmd, "no --to: pass the address to forward connections to")
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
	return cmd
}

// benchForwardRun accepts connections until ctx is done. Each is joined to a
// new connection to opts.To by two io.Copy calls, which between TCP sockets
// on Linux are splice(2): no user-space buffer, the least a forwarder can do.
func benchForwardRun(ctx context.Context, opts *BenchForwardOptions) error {
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
		track(in, true)
		wg.Go(func() {
			defer track(in, false)
			defer in.Close()
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			out, err := d.DialContext(dctx, "tcp", opts.To)
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
