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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"

	"github.com/tunnel-dev/tunnel/proto"
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
}

// tlsOn reports whether the relay serves TLS.
func (c *Config) tlsOn() bool { return c.ACME != nil || c.TLSCertFile != "" || c.TLSKeyFile != "" }

func (c *Config) setDefaults() error {
	c.Domain = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(c.Domain)), ".")
	if c.Domain == "" {
		return errors.New("relay: no domain: set --domain to the apex your wildcard DNS points at (e.g. example.com), or localhost for local use")
	}
	if strings.ContainsAny(c.Domain, ":/ ") {
		return fmt.Errorf("relay: domain %q must be a bare host name such as example.com, without scheme or port", c.Domain)
	}
	if c.Addr == "" {
		switch {
		case c.tlsOn():
			c.Addr = ":443"
		case c.Domain == "localhost":
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
	apexOnce sync.Once

	mu       sync.Mutex
	closed   bool
	servers  map[*http.Server]struct{}
	sessions map[*agentSession]struct{}
	hijacked map[net.Conn]struct{}
	// fresh holds connections that have not sent a request yet. Browsers
	// open such spare sockets; http.Server.Shutdown would wait 5 s for each.
	fresh map[net.Conn]struct{}
	// hijackClosed is set once shutdown has closed the upgraded connections;
	// later upgrades are refused.
	hijackClosed bool

	sessWG sync.WaitGroup // one per agent session
	bgWG   sync.WaitGroup // certificate fetches
	reqWG  sync.WaitGroup // one per proxied request, including upgraded ones
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
		sessions: make(map[*agentSession]struct{}),
		hijacked: make(map[net.Conn]struct{}),
		fresh:    make(map[net.Conn]struct{}),
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
			s.log.Info("certificate ready", "name", name)
		}
		if done != nil {
			done(err)
		}
	})
}

// TLS reports whether the relay serves HTTPS.
func (s *Server) TLS() bool { return s.certs != nil }

// Domain returns the apex domain the relay serves.
func (s *Server) Domain() string { return s.cfg.Domain }

// ServeHTTP routes a request: tunnel hosts to their agent, everything else to
// the relay's own pages and the agents' connect endpoint.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := canonicalHost(r.Host)
	if r.TLS != nil {
		// A browser may reuse one TLS connection for several names (HTTP/2
		// coalescing with a wildcard certificate). Send it to a connection
		// of its own, so one tunnel's connection never carries another's.
		if sni := strings.TrimSuffix(strings.ToLower(r.TLS.ServerName), "."); sni != "" && sni != host {
			writePage(w, r, http.StatusMisdirectedRequest, "Misdirected request",
				fmt.Sprintf("This connection was opened for %s, not %s; retry on a new connection.", sni, host))
			return
		}
		if s.cfg.HSTS {
			w.Header().Set("Strict-Transport-Security", "max-age=31536000")
		}
	}
	if name, ok := strings.CutSuffix(host, "."+s.cfg.Domain); ok {
		if strings.Contains(name, ".") {
			writePage(w, r, http.StatusNotFound, "No such tunnel",
				fmt.Sprintf("%s is not a tunnel name: names are one label, like demo.%s.", host, s.cfg.Domain))
			return
		}
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
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
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
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(errorLogWriter{s.log}, "", 0),
		ConnState:         s.connState,
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
	for _, as := range sessions {
		as.close()
	}
	s.sessWG.Wait()
	s.bgWG.Wait()
	s.reg.stop()
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
// listener's address once it accepts connections.
func Run(ctx context.Context, cfg Config, ready func(addr net.Addr)) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("relay: listen on %s: %w", s.cfg.Addr, err)
	}
	var httpLn net.Listener
	if s.certs != nil && s.cfg.HTTPAddr != "" {
		if httpLn, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
			ln.Close()
			return fmt.Errorf("relay: listen on %s (ACME HTTP-01 and redirects; empty --http-addr turns it off): %w", s.cfg.HTTPAddr, err)
		}
		s.log.Info("relay redirecting to https", "addr", httpLn.Addr().String())
	}
	s.log.Info("relay listening", "addr", ln.Addr().String(), "domain", s.cfg.Domain, "tls", s.certs != nil)
	if ready != nil {
		ready(ln.Addr())
	}
	errc := make(chan error, 2)
	n := 1
	go func() { errc <- s.Serve(ln) }()
	if httpLn != nil {
		n++
		go func() { errc <- s.ServeRedirect(httpLn) }()
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
