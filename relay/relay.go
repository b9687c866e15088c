// Package relay is the public side of the tunnel: an http.Handler that routes
// each visitor request by Host name to the agent session that holds the name,
// accepts agents' control connections on the same port, and keeps names
// reserved across reconnects.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"

	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// Software is reported to agents in Welcome.
const Software = "tunnel-relay/0.1"

// Config configures a relay. The zero value of each field but Domain means
// its default.
type Config struct {
	// Domain is the apex the relay serves: tunnel "demo" is reached at
	// demo.<Domain>. Required. "localhost" suits local use, since browsers
	// and curl resolve *.localhost to loopback.
	Domain string
	// Addr is the listen address used by Run. Default "127.0.0.1:8000" when
	// Domain is "localhost", otherwise ":80".
	Addr string
	// Grace is how long a disconnected agent's names stay reserved for its
	// reconnect secret. Default 60 s; negative frees names at once.
	Grace time.Duration
	// DrainTimeout bounds how long Run's shutdown waits for in-flight
	// requests. Default 30 s.
	DrainTimeout time.Duration
	// OpenTimeout bounds opening a stream to an agent, including the agent's
	// dial of its local target. Default 10 s.
	OpenTimeout time.Duration
	// Logger receives the relay's logs. Default slog.Default().
	Logger *slog.Logger
	// AccessLog, if not nil, receives one Info line "access" per visitor
	// request to a tunnel: host, method, path (without query), status,
	// duration, bytes each way and the visitor's address. Never headers.
	AccessLog *slog.Logger

	// AdminAddr is where Run serves the admin listener: /metrics, /healthz,
	// /readyz and the admin API under /api/. Empty means none. Run refuses
	// an address beyond loopback unless AdminToken is set.
	AdminAddr string
	// AdminToken is the bearer token of the admin API. Empty: the API
	// answers 403, while metrics and health stay open on the admin listener.
	AdminToken string

	// TLSCertFile and TLSKeyFile name a certificate and its key, e.g. a
	// wildcard for *.Domain from a DNS-01 client. It serves the names it
	// covers and is reloaded when the files change.
	TLSCertFile, TLSKeyFile string
	// ACME, if not nil, obtains certificates for the names the files do not
	// cover. With neither ACME nor files the relay serves plain HTTP.
	ACME *ACMEConfig
	// StateDir keeps ACME account keys and certificates (directory 0700,
	// files 0600). Required with ACME.
	StateDir string
	// HTTPAddr is Run's second listener in TLS mode: ACME HTTP-01 challenges
	// and redirects to https. Empty means none.
	HTTPAddr string
	// HSTS adds Strict-Transport-Security to every response over TLS.
	HSTS bool

	// Tokens are the credentials agents may present; auth is on when there
	// is at least one. SetTokens replaces them at run time.
	Tokens []Token
	// AllowNoAuth lets Run serve without tokens on an address beyond
	// loopback: an open relay where anyone may claim names.
	AllowNoAuth bool
	// Limits are the relay's edge limits; zero fields mean their defaults.
	Limits Limits
	// Interstitial, when positive, shows a browser's first top-level
	// visit to a tunnel a warning page (anti-phishing), and remembers the
	// visitor's "continue" for this long. WebSocket upgrades, fetch/XHR
	// and non-browser clients never see it. Zero: off.
	Interstitial time.Duration
}

// Limits bound what one agent, token or address can take.
type Limits struct {
	// MaxTunnelsPerToken caps the names one token holds at once (live or
	// held for reconnect), unless the token sets its own. Default 10.
	MaxTunnelsPerToken int
	// MaxStreamsPerTunnel caps the connections open at once to one tunnel
	// (idle keep-alive streams and WebSockets included); more get 503 with
	// Retry-After. Default 1000, at most MaxStreamsLimit.
	MaxStreamsPerTunnel int
	// ConnRatePerIP is how many new connections per second one address may
	// open, with bursts of ten times that. Default 50; negative: no limit.
	ConnRatePerIP float64
	// ConnRateLoopback applies ConnRatePerIP to loopback addresses too. By
	// default they are exempt: a reverse proxy on the same machine connects
	// from loopback for every visitor.
	ConnRateLoopback bool
	// ResponseHeaderTimeout bounds the wait for the local server's response
	// headers; then the visitor gets 504. Default 60 s.
	ResponseHeaderTimeout time.Duration
	// AuthFailuresPerMinute is how many failed token attempts one address
	// may make before it gets 429 for a while, and likewise how many wrong
	// Basic auth credentials for tunnels (counted apart). An IPv6 address
	// counts as its /64. Default 10.
	AuthFailuresPerMinute int
	// WriteIdleTimeout ends a response or WebSocket whose visitor reads
	// nothing for this long, so a stalled reader cannot hold a stream and
	// its window for ever. Default 60 s.
	WriteIdleTimeout time.Duration
}

// MaxStreamsLimit is the largest MaxStreamsPerTunnel: each stream is a
// visitor connection at the relay and a local connection at the agent, and
// a process here may hold 20,000 open files.
const MaxStreamsLimit = 50000

func (l *Limits) setDefaults() {
	if l.MaxTunnelsPerToken <= 0 {
		l.MaxTunnelsPerToken = 10
	}
	if l.MaxStreamsPerTunnel <= 0 {
		l.MaxStreamsPerTunnel = 1000
	}
	l.MaxStreamsPerTunnel = min(l.MaxStreamsPerTunnel, MaxStreamsLimit)
	if l.ConnRatePerIP == 0 {
		l.ConnRatePerIP = 50
	}
	if l.ResponseHeaderTimeout <= 0 {
		l.ResponseHeaderTimeout = 60 * time.Second
	}
	if l.AuthFailuresPerMinute <= 0 {
		l.AuthFailuresPerMinute = 10
	}
	if l.WriteIdleTimeout <= 0 {
		l.WriteIdleTimeout = tunnel.DefaultWriteIdleTimeout
	}
}

// CheckDomain reports why domain cannot be the apex under which the relay
// serves <name>.DOMAIN, e.g. to check a command line before the relay
// starts. It takes the domain as New does: case and a final dot do not
// matter.
func CheckDomain(domain string) error {
	d := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(domain)), ".")
	switch {
	case d == "":
		return errors.New("no domain: set --domain to the apex your wildcard DNS points at (e.g. example.com), or localhost for local use")
	case strings.ContainsAny(d, ":/ "):
		return fmt.Errorf("domain %q must be a bare host name such as example.com, without scheme or port", domain)
	case strings.HasPrefix(d, "*."):
		return fmt.Errorf("domain %q is the wildcard DNS record; give the apex under it: %s", domain, d[2:])
	}
	if _, err := netip.ParseAddr(d); err == nil {
		return fmt.Errorf("domain %q is an IP address, and tunnels are served at <name>.DOMAIN: give a domain whose wildcard record points at this machine, or localhost", domain)
	}
	for label := range strings.SplitSeq(d, ".") {
		bad := strings.ContainsFunc(label, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') })
		if label == "" || len(label) > 63 || bad || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("domain %q is not a host name: labels of letters, digits and '-', separated by dots, like example.com", domain)
		}
	}
	return nil
}

// tlsOn reports whether the relay serves TLS.
func (c *Config) tlsOn() bool { return c.ACME != nil || c.TLSCertFile != "" || c.TLSKeyFile != "" }

func (c *Config) setDefaults() error {
	c.Domain = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(c.Domain)), ".")
	if c.Domain == "" {
		return errors.New("relay: no domain: set --domain to the apex your wildcard DNS points at (e.g. example.com), or localhost for local use")
	}
	if err := CheckDomain(c.Domain); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	if c.Addr == "" {
		switch {
		case c.tlsOn():
			c.Addr = ":443"
		case c.Domain == "localhost" || strings.HasSuffix(c.Domain, ".localhost"):
			// *.localhost is this machine's alone (RFC 6761): no reason
			// to listen beyond loopback.
			c.Addr = "127.0.0.1:8000"
		default:
			c.Addr = ":80"
		}
	}
	if c.Grace == 0 {
		c.Grace = 60 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.OpenTimeout <= 0 {
		c.OpenTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.AdminToken != "" && len(strings.TrimSpace(c.AdminToken)) < 8 {
		return errors.New("relay: the admin token is shorter than 8 characters; use a long random token (e.g. openssl rand -hex 24)")
	}
	if err := tunnel.CheckToken(c.AdminToken); err != nil {
		return fmt.Errorf("relay: the admin token %v", err)
	}
	c.Limits.setDefaults()
	return nil
}

// Server is a relay. It is an http.Handler for the public port; Serve runs it
// on a listener with suitable server settings.
type Server struct {
	cfg   Config
	log   *slog.Logger
	reg   *registry
	certs *certs // nil in plain-HTTP mode

	draining atomic.Bool
	serving  atomic.Bool // a public listener was served
	apexOnce sync.Once

	metrics    *metrics
	rejects    *rejectLog
	adminFails failLimiter
	adminAddr  atomic.Pointer[net.Addr]

	inter     *interstitial // nil when off
	tokens    atomic.Pointer[tokenSet]
	authFails failLimiter
	// visitorFails counts wrong Basic auth credentials of visitors.
	visitorFails failLimiter
	connLimit    *ipLimiter // nil: no limit

	mu      sync.Mutex
	closed  bool
	servers map[*http.Server]struct{}
	// admin servers stay up while the relay drains, so /readyz can say so.
	admin    map[*http.Server]struct{}
	sessions map[*agentSession]struct{}
	hijacked map[net.Conn]struct{}
	// fresh holds connections that have not sent a request yet. Browsers
	// open such spare sockets; http.Server.Shutdown would wait 5 s for each.
	fresh map[net.Conn]struct{}
	// hijackClosed is set once shutdown has closed the upgraded connections;
	// later upgrades are refused.
	hijackClosed bool
	adminClosed  bool

	sessWG sync.WaitGroup // one per agent session
	bgWG   sync.WaitGroup // certificate fetches
	reqWG  sync.WaitGroup // one per proxied request, including upgraded ones
	// visitorConns maps each visitor connection to what is kept for it
	// (see keepAliveTransport), until it closes.
	visitorConns sync.Map
}

// New returns a relay for cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		reg:      newRegistry(cfg.Grace),
		servers:  make(map[*http.Server]struct{}),
		admin:    make(map[*http.Server]struct{}),
		rejects:  newRejectLog(cfg.Logger),
		sessions: make(map[*agentSession]struct{}),
		hijacked: make(map[net.Conn]struct{}),
		fresh:    make(map[net.Conn]struct{}),
	}
	ts, err := newTokenSet(cfg.Tokens)
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	s.tokens.Store(ts)
	s.cfg.Tokens = nil // the token set holds only hashes
	s.authFails = failLimiter{newIPLimiter(time.Minute/time.Duration(cfg.Limits.AuthFailuresPerMinute), cfg.Limits.AuthFailuresPerMinute)}
	s.visitorFails = failLimiter{newIPLimiter(time.Minute/time.Duration(cfg.Limits.AuthFailuresPerMinute), cfg.Limits.AuthFailuresPerMinute)}
	s.adminFails = failLimiter{newIPLimiter(time.Minute/10, 10)}
	s.metrics = newMetrics(s)
	if cfg.Interstitial > 0 {
		s.inter = newInterstitial(cfg.Interstitial)
	}
	if r := cfg.Limits.ConnRatePerIP; r > 0 {
		s.connLimit = newIPLimiter(time.Duration(float64(time.Second)/r), int(10*r)+1)
	}
	if cfg.tlsOn() {
		c, err := newCerts(&s.cfg, s.reg)
		if err != nil {
			return nil, err
		}
		s.certs = c
	}
	return s, nil
}

// fetchCert obtains name's certificate in the background and calls done, if
// not nil, with the result.
func (s *Server) fetchCert(name string, done func(error)) {
	s.bgWG.Go(func() {
		err := s.certs.prefetch(name)
		if err == nil {
			s.metrics.certs.WithLabelValues("ready").Inc()
			s.log.Info("certificate ready", "name", name)
		} else {
			s.metrics.certs.WithLabelValues("failed").Inc()
		}
		if done != nil {
			done(err)
		}
	})
}

// AuthOn reports whether agents need a token.
func (s *Server) AuthOn() bool { return len(s.tokens.Load().tokens) > 0 }

// SetTokens replaces the agent tokens, e.g. after the configuration file
// changed. Agents whose token is gone are disconnected and their names
// freed, as are agents without a token once there are tokens; the others
// keep running, and every later claim is checked against
// the new tokens. An invalid set is refused and the old one stays.
func (s *Server) SetTokens(tokens []Token) error {
	ts, err := newTokenSet(tokens)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	if len(ts.tokens) == 0 && s.AuthOn() {
		return errors.New("relay: the new configuration has no tokens, which would turn auth off; keep at least one, or restart the relay to run without auth")
	}
	s.tokens.Store(ts)
	// Agents that connected while auth was off have no token: once there
	// are tokens, theirs is gone too. A token is its hash: an unnamed
	// one's name is its position, which a removal before it changes.
	gone := s.reg.sessionsWithout(ts)
	s.mu.Lock()
	for as := range s.sessions {
		if _, ok := ts.current(as.tok); !ok && !slices.Contains(gone, as) {
			gone = append(gone, as)
		}
	}
	s.mu.Unlock()
	for _, as := range gone {
		as.log.Info("token removed or changed, or now required; disconnecting agent")
		as.revokeWith(as.tokenGone())
	}
	s.log.Info("tokens reloaded", "tokens", len(ts.tokens))
	return nil
}

// Revoke frees a name at once: its agent, if connected, is disconnected,
// and no hold is kept for it. It reports whether the name was in use.
func (s *Server) Revoke(name string) bool {
	as, ok := s.reg.revoke(name)
	if as != nil {
		as.log.Info("name revoked; disconnecting agent", "name", name)
		as.revokeWith(proto.Errorf(proto.CodeNameNotAllowed, "name %q was revoked by the relay's operator", name))
	}
	return ok
}

// TLS reports whether the relay serves HTTPS.
func (s *Server) TLS() bool { return s.certs != nil }

// Domain returns the apex domain the relay serves.
func (s *Server) Domain() string { return s.cfg.Domain }

// ServeHTTP routes a request: tunnel hosts to their agent, everything else to
// the relay's own pages and the agents' connect endpoint.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The relay is not a proxy for the visitor: it never dials anywhere on a
	// visitor's behalf, so proxy requests are refused outright.
	if r.Method == http.MethodConnect {
		s.rejectRequest(r, rejectNotAProxy, http.StatusMethodNotAllowed)
		writePage(w, r, http.StatusMethodNotAllowed, "Not a proxy", "CONNECT is refused: this relay serves tunnels by host name and is not a proxy.")
		return
	}
	if r.URL.IsAbs() || r.URL.Host != "" {
		s.rejectRequest(r, rejectNotAProxy, http.StatusBadRequest)
		writePage(w, r, http.StatusBadRequest, "Not a proxy", "Absolute-form request targets are refused: this relay serves tunnels by host name and is not a proxy.")
		return
	}
	host := canonicalHost(r.Host)
	if r.TLS != nil {
		// A browser may reuse one TLS connection for several names (HTTP/2
		// coalescing with a wildcard certificate). Send it to a connection
		// of its own, so one tunnel's connection never carries another's.
		if sni := strings.TrimSuffix(strings.ToLower(r.TLS.ServerName), "."); sni != "" && sni != host {
			s.rejectRequest(r, rejectMisdirected, http.StatusMisdirectedRequest)
			writePage(w, r, http.StatusMisdirectedRequest, "Misdirected request",
				fmt.Sprintf("This connection was opened for %s, not %s; retry on a new connection.", sni, host))
			return
		}
		if s.cfg.HSTS {
			w.Header().Set("Strict-Transport-Security", "max-age=31536000")
		}
	}
	if name, ok := strings.CutSuffix(host, "."+s.cfg.Domain); ok {
		s.proxy(w, r, name)
		return
	}
	s.serveApex(w, r, host)
}

func (s *Server) serveApex(w http.ResponseWriter, r *http.Request, host string) {
	switch {
	case r.URL.Path == proto.ConnectPath:
		s.handleConnect(w, r)
	case r.URL.Path == "/healthz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "draining")
			return
		}
		fmt.Fprintln(w, "ok")
	case r.URL.Path == "/" && (host == s.cfg.Domain || net.ParseIP(host) != nil):
		writeLanding(w, r, s.cfg.Domain)
	default:
		writePage(w, r, http.StatusNotFound, "Not found",
			fmt.Sprintf("This relay serves tunnels at <name>.%s; nothing is at %s%s.", s.cfg.Domain, host, r.URL.Path))
	}
}

// canonicalHost lower-cases a Host header and drops its port and any
// trailing dot.
func canonicalHost(hostport string) string {
	host := hostport
	// Browsers leave the default port out: without a colon there is no
	// port to split, and SplitHostPort's error would cost an allocation
	// per request.
	if strings.Contains(hostport, ":") {
		if h, _, err := net.SplitHostPort(hostport); err == nil {
			host = h
		}
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// Serve accepts visitors and agents on ln until Shutdown or Close: HTTPS
// when the relay has certificates, plain HTTP otherwise. It returns nil after
// a shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if s.certs != nil {
		// Fetch the apex certificate once the relay accepts connections:
		// the CA's TLS-ALPN-01 validation needs a listener to answer it.
		s.apexOnce.Do(func() {
			if s.certs.needsACME(s.cfg.Domain) {
				s.fetchCert(s.cfg.Domain, nil)
			}
		})
	}
	s.serving.Store(true)
	return s.serve(ln, s, s.certs != nil)
}

// ServeRedirect serves the port-80 listener of a TLS relay: ACME HTTP-01
// challenges, and a redirect to https for everything else.
func (s *Server) ServeRedirect(ln net.Listener) error {
	if s.certs == nil {
		ln.Close()
		return errors.New("relay: ServeRedirect needs TLS: the relay serves plain HTTP on its main listener")
	}
	return s.serve(ln, s.certs.httpHandler(), false)
}

func (s *Server) serve(ln net.Listener, h http.Handler, useTLS bool) error {
	if s.connLimit != nil {
		ln = &rateListener{Listener: ln, lim: s.connLimit, plain: !useTLS, loopback: s.cfg.Limits.ConnRateLoopback}
	}
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		// An HTTP/2 visitor's streams share the connection's receive
		// window. Go's default makes it one stream's: a single upload
		// whose local server does not read stalled every other request
		// on the connection. Four streams' worth lets the others on.
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerConnection: 4 << 20,
			MaxReceiveBufferPerStream:     1 << 20,
		},
		ErrorLog:  log.New(errorLogWriter{s.log}, "", 0),
		ConnState: s.connState,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			vc := &visitorConn{}
			s.visitorConns.Store(c, vc)
			return context.WithValue(ctx, visitorConnKey{}, vc)
		},
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.servers[hs] = struct{}{}
	s.mu.Unlock()
	var err error
	if useTLS {
		hs.TLSConfig = &tls.Config{
			GetCertificate: s.certs.GetCertificate,
			// acme-tls/1 lets the CA validate TLS-ALPN-01 on this port.
			NextProtos: []string{"h2", "http/1.1", acme.ALPNProto},
			MinVersion: tls.VersionTLS12,
		}
		err = hs.ServeTLS(ln, "", "")
	} else {
		err = hs.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *Server) connState(c net.Conn, state http.ConnState) {
	if state == http.StateClosed || state == http.StateHijacked {
		// No more requests on it: streams kept for it go.
		if vc, ok := s.visitorConns.LoadAndDelete(c); ok {
			vc.(*visitorConn).close()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if state == http.StateNew {
		s.fresh[c] = struct{}{}
	} else {
		delete(s.fresh, c)
	}
}

type errorLogWriter struct{ l *slog.Logger }

func (w errorLogWriter) Write(p []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(p)), "component", "http")
	return len(p), nil
}

// Shutdown stops the relay gracefully: listeners close at once, agents are
// told the relay is draining, in-flight requests may finish until ctx ends,
// then upgraded connections and agent sessions are closed. It returns once
// every goroutine of the relay has stopped.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	s.mu.Lock()
	s.closed = true
	servers := make([]*http.Server, 0, len(s.servers))
	for hs := range s.servers {
		servers = append(servers, hs)
	}
	for as := range s.sessions {
		as.notify(&proto.Notice{Kind: proto.NoticeDraining, Message: "relay is shutting down; reconnect shortly"})
	}
	fresh := make([]net.Conn, 0, len(s.fresh))
	for c := range s.fresh {
		fresh = append(fresh, c)
	}
	s.mu.Unlock()
	// No request is in flight on these; a client retries on a new connection.
	for _, c := range fresh {
		c.Close()
	}

	var wg sync.WaitGroup
	var firstErr error
	var errMu sync.Mutex
	for _, hs := range servers {
		wg.Go(func() {
			if err := hs.Shutdown(ctx); err != nil {
				hs.Close()
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
			}
		})
	}
	wg.Wait()
	s.closeAll()
	s.closeAdmin()
	return firstErr
}

// Close stops the relay at once: listeners, upgraded connections and agent
// sessions are closed. It returns once every goroutine has stopped.
func (s *Server) Close() error {
	s.draining.Store(true)
	s.mu.Lock()
	s.closed = true
	for hs := range s.servers {
		hs.Close()
	}
	s.mu.Unlock()
	s.closeAll()
	s.closeAdmin()
	return nil
}

func (s *Server) closeAll() {
	s.mu.Lock()
	s.hijackClosed = true
	conns := make([]net.Conn, 0, len(s.hijacked))
	for c := range s.hijacked {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	// Closing a tracked connection takes s.mu to untrack itself.
	for _, c := range conns {
		c.Close()
	}
	s.reqWG.Wait()
	s.mu.Lock()
	sessions := make([]*agentSession, 0, len(s.sessions))
	for as := range s.sessions {
		sessions = append(sessions, as)
	}
	s.mu.Unlock()
	// Let the agents read what they were last told, the draining notice
	// above all: an idle relay gets here at once, and closing a session
	// drops what its control stream has not written yet.
	flushCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	var flushes sync.WaitGroup
	for _, as := range sessions {
		flushes.Go(func() { as.flushControl(flushCtx) })
	}
	flushes.Wait()
	cancel()
	for _, as := range sessions {
		as.close()
	}
	s.sessWG.Wait()
	s.bgWG.Wait()
	s.reg.stop()
	s.rejects.close()
}

func (s *Server) trackHijacked(c net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.hijackClosed {
			return false
		}
		s.hijacked[c] = struct{}{}
	} else {
		delete(s.hijacked, c)
	}
	return true
}

// Run listens on cfg.Addr and serves until ctx is done, then shuts down
// gracefully within cfg.DrainTimeout. ready, if not nil, is called with the
// server and the listener's address once it accepts connections, e.g. to
// reload tokens with SetTokens while it runs.
func Run(ctx context.Context, cfg Config, ready func(s *Server, addr net.Addr)) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(s.cfg.Addr); err != nil {
		return fmt.Errorf("relay: listen address %q is not HOST:PORT (e.g. :443, 127.0.0.1:8000)", s.cfg.Addr)
	}
	if !s.AuthOn() {
		if !loopbackOnly(s.cfg.Addr) && !s.cfg.AllowNoAuth {
			return errNoAuthOnPublic
		}
		if !loopbackOnly(s.cfg.Addr) {
			s.log.Warn("running an OPEN relay: no tokens, listening beyond loopback; anyone can claim names", "addr", s.cfg.Addr)
		}
	}
	if s.cfg.AdminAddr != "" && s.cfg.AdminToken == "" && !loopbackOnly(s.cfg.AdminAddr) {
		return fmt.Errorf("relay: the admin listener %s is reachable beyond loopback and has no admin token: set --admin-token or TUNNEL_ADMIN_TOKEN, or listen on 127.0.0.1", s.cfg.AdminAddr)
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("relay: listen on %s: %w", s.cfg.Addr, err)
	}
	var adminLn net.Listener
	if s.cfg.AdminAddr != "" {
		if adminLn, err = net.Listen("tcp", s.cfg.AdminAddr); err != nil {
			ln.Close()
			return fmt.Errorf("relay: listen on %s (admin: metrics, health, API; empty --admin-addr turns it off): %w", s.cfg.AdminAddr, err)
		}
		addr := adminLn.Addr()
		s.adminAddr.Store(&addr)
		s.log.Info("relay admin listening", "addr", addr.String(), "api", s.cfg.AdminToken != "")
	}
	var httpLn net.Listener
	if s.certs != nil && s.cfg.HTTPAddr != "" {
		if httpLn, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
			ln.Close()
			if adminLn != nil {
				adminLn.Close()
			}
			return fmt.Errorf("relay: listen on %s (ACME HTTP-01 and redirects; empty --http-addr turns it off): %w", s.cfg.HTTPAddr, err)
		}
		s.log.Info("relay redirecting to https", "addr", httpLn.Addr().String())
	}
	s.log.Info("relay listening", "addr", ln.Addr().String(), "domain", s.cfg.Domain, "tls", s.certs != nil)
	if ready != nil {
		ready(s, ln.Addr())
	}
	errc := make(chan error, 3)
	n := 1
	go func() { errc <- s.Serve(ln) }()
	if httpLn != nil {
		n++
		go func() { errc <- s.ServeRedirect(httpLn) }()
	}
	if adminLn != nil {
		n++
		go func() { errc <- s.ServeAdmin(adminLn) }()
	}
	select {
	case err := <-errc:
		s.Close()
		for range n - 1 {
			<-errc
		}
		return err
	case <-ctx.Done():
	}
	s.log.Info("relay shutting down", "drain_timeout", s.cfg.DrainTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil {
		s.log.Warn("drain deadline passed; closed remaining connections", "err", err)
	}
	for range n {
		<-errc
	}
	s.log.Info("relay stopped")
	return nil
}

// loopbackOnly reports whether a listen address is reachable from this
// machine only.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// rateListener closes connections from addresses that open them faster than
// their allowance; plain-HTTP ones first get a one-line 429.
type rateListener struct {
	net.Listener
	lim      *ipLimiter
	plain    bool
	loopback bool // limit loopback addresses too
}

func (l *rateListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c.RemoteAddr().String())
		if a, err := netip.ParseAddr(ip); err == nil && a.IsLoopback() && !l.loopback {
			return c, nil
		}
		if l.lim.allow(ip) {
			return c, nil
		}
		if l.plain {
			c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			const body = "429 Too many new connections from your address; slow down.\n"
			fmt.Fprintf(c, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
		c.Close()
	}
}
