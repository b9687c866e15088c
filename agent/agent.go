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
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tunnel-dev/tunnel/agent/inspect"
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
	// and ignores Local and the other Local fields.
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
	// OnEvent, if not nil, receives status changes, one event per HTTP
	// request and two per WebSocket (opened, closed). It is called from the
	// agent's goroutines and must not block.
	OnEvent func(Event)
	// InspectAddr, if not empty, is where Run serves the inspector: a web
	// page and JSON API listing recent requests and WebSocket sessions, with
	// replay (see package agent/inspect). Use a loopback address such as
	// "127.0.0.1:4040"; port 0 picks one. If it cannot listen, Run says so
	// with an EventInspector and goes on without it. Listen ignores it.
	InspectAddr string
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

	// LocalHTTPS dials Local over TLS (HTTP/1.1 only: the relay forwards
	// HTTP/1.1), for local servers that speak only HTTPS. The local
	// server's certificate is verified against LocalCA for
	// LocalServerName. Visitors still use the relay's own scheme.
	LocalHTTPS bool
	// LocalCA holds the roots that verify the local server's certificate;
	// nil means the system's roots. Only with LocalHTTPS.
	LocalCA *x509.CertPool
	// LocalServerName is the name the local server's certificate must
	// cover (and the SNI sent); empty means Local's host. Only with
	// LocalHTTPS.
	LocalServerName string
	// LocalInsecure skips verifying the local server's certificate: any
	// certificate is accepted. Only with LocalHTTPS, never with LocalCA.
	LocalInsecure bool

	// HostHeader, if not empty, is the Host header the local server gets
	// instead of the public host name (which it then finds in
	// X-Forwarded-Host), for servers that answer only to their own name:
	// a host or host:port, or HostRewrite for Local itself. The relay
	// writes it; Run and Listen fail with a PermanentError if the relay is
	// too old to.
	HostHeader string

	// tlsConfig is localTLSConfig made once by Run, for every handshake
	// with the local server and the inspector's replays to it.
	tlsConfig *tls.Config
}

// HostRewrite as Tunnel.HostHeader sends Local (e.g. "localhost:8080") as
// the Host header, as ngrok's --host-header=rewrite does.
const HostRewrite = "rewrite"

// hostHeader is the Host header to ask the relay for: HostHeader with
// HostRewrite resolved.
func (t *Tunnel) hostHeader() string {
	if t.HostHeader == HostRewrite {
		return t.Local
	}
	return t.HostHeader
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
	// EventWebSocketOpen: a WebSocket session began; WebSocket has it.
	EventWebSocketOpen
	// EventWebSocketClose: a WebSocket session ended; WebSocket has its
	// close code, duration, messages and bytes.
	EventWebSocketClose
	// EventRTT: a new measure of the round-trip time to the relay, in RTT.
	EventRTT
	// EventInspector: the inspector is serving at Inspector, or could not
	// start (Err).
	EventInspector
)

// Exchange, WebSocket and Frame are what the agent observed of the traffic;
// see package agent/inspect.
type (
	Exchange  = inspect.Exchange
	WebSocket = inspect.WebSocket
	Frame     = inspect.Frame
)

// Notice kinds a relay sends (Event.Notice.Kind), re-exported so that users
// of this package need not import proto.
const (
	NoticeDraining   = proto.NoticeDraining
	NoticeCertReady  = proto.NoticeCertReady
	NoticeCertFailed = proto.NoticeCertFailed
)

// The relay's refusals of a name, re-exported so that users of this
// package can tell them apart (errors.Is) without importing proto.
var (
	ErrNameTaken      = proto.ErrNameTaken
	ErrNameNotAllowed = proto.ErrNameNotAllowed
)

// ValidateName checks a name to ask for (Tunnel.Name) by the protocol's
// rules, proto.ValidateName, which Run and the relay check again.
func ValidateName(name string) error { return proto.ValidateName(name) }

// Event is a change of state or a request, for display.
type Event struct {
	Kind    EventKind
	Time    time.Time // when it happened
	Tunnels []proto.Granted
	Err     error
	Attempt int
	Retry   time.Duration
	// Request summarises an EventRequest: the agent's own observation, or
	// what an older relay sent (then HTTP is nil).
	Request *proto.Event
	// HTTP is the whole exchange of an EventRequest: headers and the
	// first bytes of the bodies. Do not modify it.
	HTTP      *Exchange
	WebSocket *WebSocket
	Notice    *proto.Notice
	// RTT is the round-trip time to the relay (EventRTT, EventOnline).
	RTT time.Duration
	// Inspector is the inspector's URL (EventInspector, EventOnline).
	Inspector string
}

func (c *Config) check(needLocal bool) (*url.URL, error) {
	if c.Relay == "" {
		return nil, errors.New("no relay: pass --relay URL or set TUNNEL_RELAY, e.g. http://localhost:8000")
	}
	u, err := ParseRelayURL(c.Relay)
	if err != nil {
		return nil, err
	}
	if err := tunnel.CheckToken(c.Token); err != nil {
		return nil, fmt.Errorf("the token %v", err)
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
		if err := t.checkLocalTLS(); err != nil {
			return nil, err
		}
		switch {
		case t.HostHeader == HostRewrite && !needLocal:
			return nil, fmt.Errorf("host header %q needs a local target; give the host name to send instead", HostRewrite)
		case t.HostHeader != "":
			if err := ValidateHostHeader(t.hostHeader()); err != nil {
				return nil, err
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
	// A copy, so that the caller's slice is not written.
	cfg.Tunnels = slices.Clone(cfg.Tunnels)
	for i := range cfg.Tunnels {
		if t := &cfg.Tunnels[i]; t.LocalHTTPS {
			t.tlsConfig = t.localTLSConfig()
		}
	}
	var c *client
	var ins *inspect.Inspector
	if cfg.OnEvent != nil || cfg.InspectAddr != "" {
		ins = inspect.New(inspect.Options{
			Logger: cfg.Logger,
			OnExchange: func(ex *Exchange) {
				// An upgrade is reported as EventWebSocketOpen instead.
				if ex.WebSocket == 0 {
					c.emit(requestEvent(ex))
				}
			},
			OnWebSocket: func(ws WebSocket) { c.emit(webSocketEvent(ws)) },
		})
	}
	c = newClient(cfg, u, func(ctx context.Context, st *tunnel.Stream, name string, index int, wg *sync.WaitGroup) {
		serveLocal(ctx, &cfg, st, &cfg.Tunnels[index], name, ins, wg)
	})
	c.ins = ins
	if ins != nil {
		var locals []string
		for _, t := range cfg.Tunnels {
			locals = append(locals, t.Local)
		}
		ins.SetStatus(func(s *inspect.Status) { s.State, s.Relay, s.Local = "connecting", cfg.Relay, locals })
	}
	if cfg.InspectAddr != "" {
		ictx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		ln, err := net.Listen("tcp", cfg.InspectAddr)
		if err != nil {
			close(done)
			err = fmt.Errorf("inspector not started: %w", err)
			cfg.Logger.Debug("inspector not started", "err", err)
			c.emit(Event{Kind: EventInspector, Err: err})
		} else {
			c.inspectURL = "http://" + ln.Addr().String()
			go func() {
				defer close(done)
				if err := ins.Serve(ictx, ln); err != nil {
					cfg.Logger.Warn("inspector stopped", "err", err)
				}
			}()
			c.emit(Event{Kind: EventInspector, Inspector: c.inspectURL})
		}
		defer func() {
			stop()
			<-done
		}()
	}
	return c.run(ctx, nil)
}

// requestEvent reports an observed exchange, with the summary older
// consumers of EventRequest read.
func requestEvent(ex *Exchange) Event {
	path := ex.Path
	if len(path) > maxEventPath {
		path = path[:maxEventPath]
	}
	return Event{
		Kind: EventRequest,
		Time: ex.Time,
		HTTP: ex,
		Request: &proto.Event{
			Name: ex.Tunnel, Time: ex.Time, Remote: ex.Remote, Method: ex.Method, Path: path,
			Status: ex.Status, Duration: time.Duration(ex.Duration),
			BytesIn: ex.RequestBody.Size, BytesOut: ex.ResponseBody.Size,
		},
	}
}

// maxEventPath bounds the path in Event.Request, as the relay's events do.
const maxEventPath = 2048

func webSocketEvent(ws WebSocket) Event {
	ev := Event{Kind: EventWebSocketOpen, Time: ws.Time, WebSocket: &ws}
	if !ws.Open {
		ev.Kind = EventWebSocketClose
		ev.Time = ws.Time.Add(time.Duration(ws.Duration))
	}
	return ev
}

// checkLocalTLS checks that the local TLS options go together.
func (t *Tunnel) checkLocalTLS() error {
	switch {
	case t.LocalInsecure && t.LocalCA != nil:
		return fmt.Errorf("local target %q: LocalCA (verify with this CA) and LocalInsecure (do not verify) do not go together; choose one", t.Local)
	case !t.LocalHTTPS && (t.LocalCA != nil || t.LocalInsecure || t.LocalServerName != ""):
		return fmt.Errorf("local target %q: LocalCA, LocalInsecure and LocalServerName apply only with LocalHTTPS", t.Local)
	}
	return nil
}

// localTLSConfig is the TLS client configuration for t's local server.
func (t *Tunnel) localTLSConfig() *tls.Config {
	if t.tlsConfig != nil {
		return t.tlsConfig
	}
	name := t.LocalServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(t.Local)
	}
	return &tls.Config{
		ServerName: name,
		RootCAs:    t.LocalCA,
		// The stream carries HTTP/1.1 from the relay, byte for byte.
		NextProtos:         []string{"http/1.1"},
		InsecureSkipVerify: t.LocalInsecure,
	}
}

// ValidateHostHeader checks a value for Tunnel.HostHeader (other than
// HostRewrite); the rules are the protocol's, proto.ValidateHostHeader,
// which the relay checks again.
func ValidateHostHeader(v string) error { return proto.ValidateHostHeader(v) }

// ParseRelayURL parses a relay's URL: a scheme (http or https) and a host,
// nothing else. Its errors quote raw without its password (RedactURL).
func ParseRelayURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("relay %q is not a URL like http://localhost:8000 or https://example.com", RedactURL(raw))
	}
	if !bareRelayURL(u) {
		return nil, fmt.Errorf("relay %q has more than a scheme and a host, which the agent would ignore: give it as %s://%s", RedactURL(raw), u.Scheme, u.Host)
	}
	return u, nil
}

// RedactURL returns raw with the password of its user info, if any,
// replaced by "xxxxx", for error messages and logs. Of a raw that does not
// parse, everything between "://" and the last '@' is replaced: a
// malformed URL is the one an error message shows.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err == nil {
		if u.User == nil {
			return raw
		}
		return u.Redacted()
	}
	start := 0
	if i := strings.Index(raw, "://"); i >= 0 {
		start = i + len("://")
	}
	at := strings.LastIndex(raw, "@")
	if at < start {
		return raw
	}
	return raw[:start] + "xxxxx" + raw[at:]
}

// bareRelayURL reports whether u is a relay's URL with nothing the agent
// would drop: no path but "/", no query, fragment or user.
func bareRelayURL(u *url.URL) bool {
	return (u.Path == "" || u.Path == "/") && u.RawQuery == "" && u.Fragment == "" && u.User == nil && !u.ForceQuery
}
