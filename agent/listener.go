package agent

import (
	"context"
	"errors"
	"net"
	"sync"

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
	l := &Listener{conns: make(chan net.Conn), cancel: cancel, done: make(chan struct{})}
	c := newClient(cfg, u, func(ctx context.Context, st *tunnel.Stream, _ string, _ int, _ *sync.WaitGroup) {
		if err := st.Accept(); err != nil {
			st.Close()
			return
		}
		select {
		case l.conns <- st:
		case <-ctx.Done():
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
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close releases the name at the relay and stops reconnecting. It returns
// once the connection to the relay is closed.
func (l *Listener) Close() error {
	l.once.Do(func() {
		l.cancel()
		<-l.done
	})
	return nil
}

// Addr returns the public address: network "tunnel", the URL as string.
func (l *Listener) Addr() net.Addr { return urlAddr(l.url) }

type urlAddr string

func (a urlAddr) Network() string { return "tunnel" }
func (a urlAddr) String() string  { return string(a) }
