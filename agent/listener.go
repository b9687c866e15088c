package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// Listener is a public name on a relay as a net.Listener: each visitor
// connection arrives from Accept as a net.Conn, with no local port involved.
// Serve HTTP on it with http.Serve. It reconnects like Run and keeps its URL.
type Listener struct {
	url    string
	conns  chan net.Conn
	cancel context.CancelFunc
	done   chan struct{} // closed when the reconnect loop has ended
	err    error         // why it ended, set before done is closed
	once   sync.Once

	closed  chan struct{} // closed by Close: Accept fails, new streams are refused
	mu      sync.Mutex
	closing bool // Close was called
	live    int  // accepted connections not closed yet
	drains  sync.WaitGroup
}

// Listen claims a public name on the relay and returns a Listener for it. It
// returns once the relay granted the name, or with the error of that first
// attempt (it does not retry it); ctx bounds only this first connection.
// Later outages are retried in the background. cfg.Tunnels may hold one Tunnel
// (its Local is ignored) or none for a random name.
func Listen(ctx context.Context, cfg Config) (*Listener, error) {
	if len(cfg.Tunnels) > 1 {
		return nil, errors.New("agent.Listen serves one name; call it once per name")
	}
	if len(cfg.Tunnels) == 0 {
		cfg.Tunnels = []Tunnel{{}}
	}
	u, err := cfg.check(false)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	l := &Listener{conns: make(chan net.Conn), cancel: cancel, done: make(chan struct{}), closed: make(chan struct{})}
	c := newClient(cfg, u, func(ctx context.Context, st *tunnel.Stream, _ string, _ int, _ *sync.WaitGroup) {
		if err := st.Accept(); err != nil {
			st.Close()
			return
		}
		select {
		case l.conns <- &listenConn{Stream: st, l: l}:
		case <-ctx.Done():
			st.Close()
		case <-l.closed:
			st.Close()
		}
	})
	c.failFirst = true
	c.relayEvents = cfg.OnEvent != nil
	ready := make(chan []proto.Granted, 1)
	go func() {
		defer close(l.done)
		l.err = c.run(runCtx, func(g []proto.Granted) {
			// From now on, outages are retried like Run does.
			c.failFirst = false
			select {
			case ready <- g:
			default:
			}
		})
	}()
	select {
	case g := <-ready:
		l.url = g[0].URL
		return l, nil
	case <-l.done:
		cancel()
		if l.err == nil {
			l.err = context.Canceled
		}
		return nil, l.err
	case <-ctx.Done():
		cancel()
		<-l.done
		return nil, ctx.Err()
	}
}

// URL returns the public URL, e.g. "http://demo.localhost:8000".
func (l *Listener) URL() string { return l.url }

// Accept waits for the next visitor connection. Its RemoteAddr is the
// visitor's address as the relay saw it.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.conns:
		l.mu.Lock()
		if l.closing {
			l.mu.Unlock()
			c.(*listenConn).Stream.Close()
			return nil, net.ErrClosed
		}
		l.live++
		l.mu.Unlock()
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.done:
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting, as closing a TCP listener does: Accept returns
// net.ErrClosed at once, and connections it returned go on until they are
// closed (http.Server.Shutdown closes the listener first, then waits for
// the requests in flight). Once none is open, the name is released at the
// relay and reconnecting stops; if none is open when Close is called, it
// returns once the connection to the relay is closed.
func (l *Listener) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		l.closing = true
		live := l.live
		l.mu.Unlock()
		close(l.closed)
		if live == 0 {
			l.cancel()
			<-l.done
			l.drains.Wait()
		}
	})
	return nil
}

// connClosed counts a closed connection, and releases the name when it
// was the last one of a closed Listener.
func (l *Listener) connClosed() {
	l.mu.Lock()
	l.live--
	last := l.closing && l.live == 0
	l.mu.Unlock()
	if last {
		l.cancel()
	}
}

// closeLinger bounds how long a closed connection waits for the relay to
// finish with it before it is reset.
const closeLinger = 10 * time.Second

// listenConn is a visitor connection Accept returned. Its Close is a TCP
// close: what was written reaches the visitor. A Stream's own Close resets
// the stream when the relay has not finished with it yet, and the relay
// then drops what it had not forwarded; this one sends a FIN and waits for
// the relay's end (at most closeLinger) before it closes the stream.
type listenConn struct {
	*tunnel.Stream
	l       *Listener
	once    sync.Once
	closed  atomic.Bool
	readers atomic.Int32
}

func (c *listenConn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	c.readers.Add(1)
	n, err := c.Stream.Read(p)
	c.readers.Add(-1)
	if err != nil && c.closed.Load() {
		err = net.ErrClosed
	}
	return n, err
}

func (c *listenConn) Write(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	return c.Stream.Write(p)
}

func (c *listenConn) Close() error {
	c.once.Do(func() {
		c.closed.Store(true)
		c.Stream.CloseWrite()                     // a FIN after everything written
		c.Stream.SetReadDeadline(time.Unix(1, 0)) // wake a blocked Read
		c.l.drains.Add(1)
		go func() {
			defer c.l.drains.Done()
			for i := 0; c.readers.Load() > 0 && i < 1000; i++ {
				time.Sleep(time.Millisecond)
			}
			c.Stream.SetReadDeadline(time.Now().Add(closeLinger))
			io.Copy(io.Discard, c.Stream) // until the relay's FIN, the session's end, or the linger
			c.Stream.Close()              // a stream-reset only if the relay has not finished
		}()
		c.l.connClosed()
	})
	return nil
}

// Addr returns the public address: network "tunnel", the URL as string.
func (l *Listener) Addr() net.Addr { return urlAddr(l.url) }

type urlAddr string

func (a urlAddr) Network() string { return "tunnel" }
func (a urlAddr) String() string  { return string(a) }
