// Package agent is the client side of the tunnel: it connects out to a relay,
// claims public names, and serves each stream the relay opens by dialing the
// local target of that name (Run) or by handing it to a Go program as a
// net.Conn (Listen). It reconnects with jittered exponential backoff and gets
// the same names back.
package agent

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// Software is reported to the relay in Hello.
const Software = "tunnel-agent/0.1"

// Config configures an agent. The zero value of each optional field means
// its default.
type Config struct {
	// Relay is the relay's URL, e.g. "http://localhost:8000" or
	// "https://example.com". Required.
	Relay string
	// Token authenticates the agent to relays that require one.
	Token string
	// Tunnels lists the public names to claim and where each one's traffic
	// goes. Run needs at least one, each with Local; Listen takes at most one
	// and ignores Local.
	Tunnels []Tunnel
	// TLSConfig is used for https relays; nil means the system roots.
	TLSConfig *tls.Config
	// DialContext dials the relay; nil means net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// LocalDialTimeout bounds each dial of a local target. Default 5 s.
	LocalDialTimeout time.Duration
	// WriteIdleTimeout ends a connection whose local server (or relay side)
	// reads nothing for this long. Default tunnel.DefaultWriteIdleTimeout.
	WriteIdleTimeout time.Duration
	// MinBackoff and MaxBackoff shape the delay between reconnect attempts:
	// the n-th retry waits a random time up to MinBackoff·2^(n-1), capped at
	// MaxBackoff ("full jitter"). Defaults 500 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// OnEvent, if not nil, receives status changes and one event per
	// request. It is called from the agent's goroutines and must not block.
	OnEvent func(Event)
	// Logger receives the agent's logs. Default slog.Default().
	Logger *slog.Logger
}

// Tunnel is one public name and its local target.
type Tunnel struct {
	// Name is the name to ask for; empty lets the relay pick a random one.
	Name string
	// Local is the host:port to dial for each visitor connection, e.g.
	// "localhost:8080".
	Local string
	// Access, if not nil, restricts who may visit; the relay enforces it
	// before anything reaches the agent.
	Access *Access
}

// Access restricts who may visit a tunnel: Basic auth users, and IP
// prefixes to allow or deny (deny wins). See proto.Access.
type Access = proto.Access

// Credential is one Basic auth user; make it with BasicUser.
type Credential = proto.Credential

// BasicUser returns the credential for user and password. Only the
// password's SHA-256 goes to the relay.
func BasicUser(user, password string) Credential {
	h := sha256.Sum256([]byte(password))
	return Credential{User: user, PasswordSHA256: hex.EncodeToString(h[:])}
}

// EventKind says what an Event reports.
type EventKind int

// Event kinds.
const (
	// EventOnline: the relay granted the names; Tunnels has their URLs.
	EventOnline EventKind = iota + 1
	// EventOffline: the connection to the relay failed or ended; Err says
	// why, Attempt and Retry say when the next attempt is.
	EventOffline
	// EventRequest: one request went through; Request describes it.
	EventRequest
	// EventNotice: the relay said something; Notice has it.
	EventNotice
)

// Notice kinds a relay sends (Event.Notice.Kind), re-exported so that users
// of this package need not import proto.
const (
	NoticeDraining   = proto.NoticeDraining
	NoticeCertReady  = proto.NoticeCertReady
	NoticeCertFailed = proto.NoticeCertFailed
)

// Event is a change of state or a request, for display.
type Event struct {
	Kind    EventKind
	Tunnels []proto.Granted
	Err     error
	Attempt int
	Retry   time.Duration
	Request *proto.Event
	Notice  *proto.Notice
}

func (c *Config) check(needLocal bool) (*url.URL, error) {
	if c.Relay == "" {
		return nil, errors.New("no relay: pass --relay URL or set TUNNEL_RELAY, e.g. http://localhost:8000")
	}
	u, err := url.Parse(c.Relay)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("relay %q is not a URL like http://localhost:8000 or https://example.com", c.Relay)
	}
	seen := map[string]bool{}
	for _, t := range c.Tunnels {
		if t.Name != "" {
			if err := proto.ValidateName(t.Name); err != nil {
				return nil, err
			}
			if seen[t.Name] {
				return nil, fmt.Errorf("name %q is listed twice", t.Name)
			}
			seen[t.Name] = true
		}
		if needLocal {
			if _, _, err := net.SplitHostPort(t.Local); err != nil {
				return nil, fmt.Errorf("local target %q is not host:port: %v", t.Local, err)
			}
		}
		if t.Access != nil {
			for _, c := range append(append([]string{}, t.Access.AllowIPs...), t.Access.DenyIPs...) {
				if _, err := netip.ParsePrefix(c); err != nil {
					if _, err := netip.ParseAddr(c); err != nil {
						return nil, fmt.Errorf("%q is not an IP address or a CIDR prefix like 203.0.113.0/24", c)
					}
				}
			}
			for _, u := range t.Access.BasicAuth {
				if u.User == "" || strings.Contains(u.User, ":") {
					return nil, fmt.Errorf("basic auth user %q must be non-empty and without ':'", u.User)
				}
			}
		}
	}
	if c.LocalDialTimeout <= 0 {
		c.LocalDialTimeout = 5 * time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return u, nil
}

// Run connects to the relay, serves the tunnels and reconnects when the
// connection drops, until ctx is done (then it tells the relay to release
// the names and returns nil) or a permanent error occurs (a name taken or
// invalid, a refused token, an unsupported version), which it returns.
func Run(ctx context.Context, cfg Config) error {
	u, err := cfg.check(true)
	if err != nil {
		return err
	}
	if len(cfg.Tunnels) == 0 {
		return errors.New("no tunnels to serve: give at least one local port")
	}
	c := newClient(cfg, u, func(ctx context.Context, st *tunnel.Stream, index int) {
		serveLocal(ctx, &cfg, st, cfg.Tunnels[index].Local)
	})
	return c.run(ctx, nil)
}
