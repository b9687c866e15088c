package relay

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/tunnel"
)

type visitorKey struct{}

// visitorInfo travels in the request context to the transport's dial, which
// writes it into the stream header.
type visitorInfo struct {
	name   string
	remote netip.AddrPort // zero if RemoteAddr is not ip:port
	scheme string
}

// setupProxy builds the reverse proxy whose transport opens streams on this
// session. Each tunnel name is its own host in the transport's pool, so
// keep-alive streams are reused per name, end to end.
func (as *agentSession) setupProxy() {
	as.ka = &keepAliveTransport{as: as}
	as.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			v, _ := pr.In.Context().Value(visitorKey{}).(visitorInfo)
			pr.Out.URL.Scheme = "http"
			// Rewrite mode has dropped every query parameter it could
			// not parse (a ';', a bad %-escape) and re-encoded the rest
			// in sorted order before calling us. The relay never reads
			// the query: the local server gets it as the visitor sent it.
			pr.Out.URL.RawQuery = pr.In.URL.RawQuery
			// The request's trailers: net/http fills them in the
			// incoming request's map once the body has been read, and
			// the outgoing request is written from a copy made before.
			pr.Out.Trailer = pr.In.Trailer
			pr.Out.URL.Host = poolKey(v.name, pr.In.RemoteAddr)
			// The local server sees the public host name it is served under,
			// unless the agent asked for another Host header (its local
			// server answers only to its own name); the public one is then
			// in X-Forwarded-Host, which SetXForwarded takes from pr.In.
			// WebSocket upgrades pass here too.
			pr.Out.Host = pr.In.Host
			if h := as.hostHeader(pr.In.Context(), v.name); h != "" {
				pr.Out.Host = h
			}
			// Rewrite mode has already removed the visitor's own
			// X-Forwarded-For/-Host/-Proto and Forwarded; set ours, and
			// drop the other client-address headers a visitor could spoof.
			pr.SetXForwarded()
			for _, h := range spoofableHeaders {
				pr.Out.Header.Del(h)
			}
			stripUnderscoreAliases(pr.Out.Header)
			pr.Out.Header.Set("X-Real-Ip", remoteIP(pr.In.RemoteAddr))
		},
		ModifyResponse: func(res *http.Response) error {
			// A tunnel's cookies are its own host's: one for the relay's
			// apex would reach every other tunnel.
			if v, ok := res.Request.Context().Value(visitorKey{}).(visitorInfo); ok {
				hostOnlyCookies(res.Header, v.name+"."+as.srv.cfg.Domain)
			}
			if as.srv.inter != nil {
				// Only the relay sets the interstitial's cookie: a local
				// server handing out a valid one would skip the page.
				stripAckSetCookie(res.Header)
			}
			if res.StatusCode == http.StatusSwitchingProtocols {
				return as.switchProtocols(res)
			}
			return nil
		},
		Transport:    proxyTransport{as.ka, upgradeTransport{as}},
		BufferPool:   proxyBuffers{},
		ErrorHandler: as.srv.proxyError,
		ErrorLog:     log.New(errorLogWriter{as.log}, "", 0),
	}
}

// spoofableHeaders name a client's address or port in conventions other
// than X-Forwarded-*; only the relay may set them.
var spoofableHeaders = []string{"X-Real-Ip", "True-Client-Ip", "X-Client-Ip", "Cf-Connecting-Ip", "X-Cluster-Client-Ip", "X-Forwarded-Port", "X-Forwarded-Server"}

// relayOwnedHeaders are the headers only the relay may set.
var relayOwnedHeaders = func() map[string]bool {
	m := map[string]bool{"Forwarded": true, "X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true}
	for _, h := range spoofableHeaders {
		m[h] = true
	}
	return m
}()

// stripUnderscoreAliases removes headers that spell a relay-owned header
// with '_' for '-' (X-Forwarded_For, X_Real_IP): CGI-style servers (PHP,
// WSGI, Rack, net/http/cgi) map both spellings to the same variable
// (HTTP_X_FORWARDED_FOR), so the visitor's value would stand next to, or
// replace, the relay's. nginx drops such headers by default for this reason.
func stripUnderscoreAliases(h http.Header) {
	for k := range h {
		if strings.Contains(k, "_") && relayOwnedHeaders[http.CanonicalHeaderKey(strings.ReplaceAll(k, "_", "-"))] {
			delete(h, k)
		}
	}
}

// hostOnlyCookies removes from the local server's Set-Cookie lines a Domain
// attribute other than host itself: a cookie for the relay's apex (or any
// parent) would be sent to every other tunnel, and to the relay's own
// pages. Without the attribute the cookie is the tunnel host's alone.
func hostOnlyCookies(h http.Header, host string) {
	vals := h["Set-Cookie"]
	for i, v := range vals {
		if !strings.Contains(strings.ToLower(v), "domain") {
			continue
		}
		parts := strings.Split(v, ";")
		keep := []string{parts[0]}
		for _, a := range parts[1:] {
			name, val, _ := strings.Cut(a, "=")
			if strings.EqualFold(strings.TrimSpace(name), "domain") {
				d := strings.TrimSuffix(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(val)), "."), ".")
				if d != host {
					continue
				}
			}
			keep = append(keep, a)
		}
		if len(keep) != len(parts) {
			vals[i] = strings.Join(keep, ";")
		}
	}
}

// poolKey is the transport's host for a request: the tunnel name, then the
// visitor's address. Keep-alive streams are thus reused only by the visitor
// connection that opened them, so the StreamHeader's visitor address (which
// agent.Listen reports as RemoteAddr) stays true for every request on it.
func poolKey(name, remote string) string {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return name
	}
	// name.<address in hex>-<port in hex>, built without fmt: one per request.
	var buf [128]byte // a name is at most 63 bytes: the key fits
	k := append(append(buf[:0], name...), '.')
	if a := ap.Addr(); a.Is4() {
		b := a.As4()
		k = hex.AppendEncode(k, b[:])
	} else {
		b := a.As16()
		k = hex.AppendEncode(k, b[:])
	}
	k = append(k, '-')
	return string(strconv.AppendUint(k, uint64(ap.Port()), 16))
}

// proxyTransport sends WebSocket upgrades through upgradeTransport and
// every other request through the keep-alive pool.
type proxyTransport struct {
	pool    *keepAliveTransport
	upgrade upgradeTransport
}

func (t proxyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// forward removed every Upgrade but WebSocket, and ReverseProxy keeps
	// the header only when Connection lists upgrade.
	if req.Header.Get("Upgrade") != "" {
		return t.upgrade.RoundTrip(req)
	}
	return t.pool.RoundTrip(req)
}

// proxyBuffers are the reverse proxy's copy buffers, pooled. Each is
// 128 KiB, the largest frame the agent's Join writes: a download is then
// written to the visitor in a quarter of the system calls 32 KiB took
// (relay CPU per GB 12% less, tunnel bench), and a small response uses
// what it needs of a buffer that goes back to the pool at once.
type proxyBuffers struct{}

var proxyBufPool = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}

func (proxyBuffers) Get() []byte  { return *proxyBufPool.Get().(*[]byte) }
func (proxyBuffers) Put(b []byte) { proxyBufPool.Put(&b) }

// visitReq is one visitor request to a tunnel, as proxy accounts for it.
type visitReq struct {
	start time.Time
	rec   *recorder
	in    countingReader
	as    *agentSession // the session it was forwarded to; nil if refused
	up    *upgrade      // nil unless it asked for an upgrade

	// detached is set when the request became a WebSocket that runs on
	// in a goroutine of its own, which accounts for it when it ends.
	detached bool
	srv      *Server
	name     string        // the tunnel's
	req      *http.Request // what finish logs
	recBody  recorder      // rec points here: one allocation for both
}

// finish accounts for the request.
func (v *visitReq) finish() { v.srv.account(v, v.req, v.name) }

// proxy answers one visitor request to tunnel name, then accounts for it:
// metrics, the access log, and the request event for the agent.
func (s *Server) proxy(w http.ResponseWriter, r *http.Request, name string) {
	v := &visitReq{start: time.Now(), srv: s, name: name}
	v.recBody = recorder{ResponseWriter: w, srv: s, idle: s.cfg.Limits.WriteIdleTimeout, h2: r.ProtoMajor == 2}
	v.rec = &v.recBody
	if r.Body != nil && r.Body != http.NoBody {
		// Counted on a copy of the request: net/http decides after the
		// handler what to do with a body left unread (an Expect:
		// 100-continue never answered closes the connection; a small
		// rest is read) by the type of its own request's Body.
		r2 := *r
		r = &r2
		v.in.r = r.Body
		r.Body = &v.in
	}
	v.req = r
	defer func() {
		if p := recover(); p != nil {
			// ReverseProxy aborts a response cut short (the visitor left,
			// the local server crashed) with http.ErrAbortHandler: it is
			// a request all the same.
			if !v.detached {
				v.finish()
			}
			panic(p)
		}
	}()
	s.forward(v, r, name)
	if v.detached {
		return
	}
	if !v.rec.armed.IsZero() && v.rec.hijacked == nil {
		// The connection may carry the visitor's next request.
		http.NewResponseController(w).SetWriteDeadline(time.Time{})
	}
	v.finish()
}

// account records a finished request: metrics, the access log, the
// tunnel's counters and the request event for the agent.
func (s *Server) account(v *visitReq, r *http.Request, name string) {
	d := time.Since(v.start)
	status := v.rec.status
	if status == 0 {
		status = http.StatusOK // nothing written: net/http answers 200
	}
	in, out := v.in.n.Load(), v.rec.bytes.Load()
	ws := v.rec.hijacked != nil
	if ws && v.up != nil {
		// The upgrade request's body, then the WebSocket's data.
		in, out = in+v.up.counts.AToB.Load(), v.up.counts.BToA.Load()
	}
	s.metrics.request(status)
	s.accessLog(r, status, d, in, out, ws) // what the visitor was sent
	as := v.as
	if as == nil {
		return
	}
	if v.rec.relayPage {
		out = 0 // the relay's own page: nothing came from the agent
	}
	s.metrics.bytesIn.Add(float64(in))
	s.metrics.bytesOut.Add(float64(out))
	if !ws {
		s.metrics.duration.Observe(d.Seconds())
	}
	// The request last: whoever reads it counted has its bytes too.
	ts := as.tunnel(name)
	ts.bytesIn.Add(in)
	ts.bytesOut.Add(out)
	ts.requests.Add(1)
	if as.events {
		as.notify(&proto.Event{
			Name:      name,
			Time:      v.start,
			Remote:    r.RemoteAddr,
			Method:    truncate(r.Method, 32),
			Path:      truncate(r.URL.RequestURI(), maxEventPath),
			Status:    status,
			Duration:  d,
			BytesIn:   in,
			BytesOut:  out,
			WebSocket: ws,
		})
	}
}

// forward sends the request to the agent holding name, unless it is
// refused first; refusals are counted and logged with their reason.
func (s *Server) forward(v *visitReq, r *http.Request, name string) {
	w := v.rec
	host := canonicalHost(r.Host)
	refused := func(reason string) { s.rejectRequest(r, reason, w.status) }
	if strings.Contains(name, ".") {
		writePage(w, r, http.StatusNotFound, "No such tunnel",
			fmt.Sprintf("%s is not a tunnel name: names are one label, like demo.%s.", host, s.cfg.Domain))
		refused(rejectNoTunnel)
		return
	}
	as, acc, holder, heldUntil := s.reg.lookupHolder(name)
	if as == nil {
		if !heldUntil.IsZero() {
			writePage(w, r, http.StatusBadGateway, "Tunnel offline",
				fmt.Sprintf("The agent for %s disconnected; the name is held for it for another %v. Try again shortly.",
					host, time.Until(heldUntil).Round(time.Second)))
			refused(rejectTunnelOffline)
			return
		}
		writePage(w, r, http.StatusNotFound, "No such tunnel",
			fmt.Sprintf("No agent holds the tunnel %q (%s). Start one with: tunnel expose -p 8080 -s %s", name, host, name))
		refused(rejectNoTunnel)
		return
	}
	if reason := acc.check(w, r, host, s.visitorFails); reason != "" {
		refused(reason)
		return
	}
	if s.draining.Load() {
		// In-flight requests finish; new ones are refused at once.
		w.Header().Set("Retry-After", "5")
		writePage(w, r, http.StatusServiceUnavailable, "Relay restarting", "The relay is shutting down; try again in a few seconds.")
		refused(rejectDraining)
		return
	}
	if s.inter != nil && s.interstitialCheck(w, r, host, holder) {
		if r.URL.Path != continuePath {
			refused(rejectInterstitial)
		}
		return
	}
	if !s.beginRequest() {
		writePage(w, r, http.StatusServiceUnavailable, "Relay restarting", "The relay is shutting down; try again shortly.")
		refused(rejectDraining)
		return
	}
	defer func() {
		if !v.detached { // else the WebSocket's goroutine is done last
			s.reqWG.Done()
		}
	}()

	stripForeignUpgrade(r.Header)
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	remote, _ := netip.ParseAddrPort(r.RemoteAddr)
	ctx := context.WithValue(r.Context(), visitorKey{}, visitorInfo{name: name, remote: remote, scheme: scheme})
	if r.Header.Get("Upgrade") != "" {
		up := &upgrade{rec: w, v: v}
		v.up = up
		ctx = context.WithValue(ctx, upgradeKey{}, up)
	}
	v.as = as
	as.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// maxEventPath bounds the path in an Event, so that a visitor's long URL
// (up to 64 KiB of headers) cannot make the message exceed MaxMessageSize.
const maxEventPath = 1024

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// beginRequest registers an in-flight request, unless shutdown has reached
// the point of closing upgraded connections.
func (s *Server) beginRequest() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hijackClosed {
		return false
	}
	s.reqWG.Add(1)
	return true
}

// stripForeignUpgrade removes any Upgrade other than WebSocket (h2c, for
// instance): only WebSocket upgrades are passed to the agent.
func stripForeignUpgrade(h http.Header) {
	up := h.Get("Upgrade")
	if up == "" || strings.EqualFold(strings.TrimSpace(up), "websocket") {
		return
	}
	h.Del("Upgrade")
	h.Del("HTTP2-Settings")
	var keep []string
	for _, v := range h.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if t != "" && !strings.EqualFold(t, "upgrade") && !strings.EqualFold(t, "http2-settings") {
				keep = append(keep, t)
			}
		}
	}
	h.Del("Connection")
	if len(keep) > 0 {
		h.Set("Connection", strings.Join(keep, ", "))
	}
}

// proxyError answers a request that could not be proxied, saying which part
// of the path failed.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	host := canonicalHost(r.Host)
	rec, _ := w.(*recorder)
	var perr *proto.Error
	switch {
	case errors.Is(err, errUpgraded):
		return
	case r.Context().Err() != nil:
		// The visitor went away; nobody is left to answer.
		if rec != nil {
			rec.status = 499
		}
		return
	case errors.As(err, &perr) && perr.Code == proto.CodeLocalDial:
		writePage(w, r, http.StatusBadGateway, "agent online, but "+perr.Message,
			fmt.Sprintf("The agent for %s is connected, but the local server it forwards to did not accept the connection. Is it running?", host))
		s.rejectRequest(r, rejectLocalDown, http.StatusBadGateway)
	case errors.Is(err, errSessionGone):
		writePage(w, r, http.StatusBadGateway, "Tunnel offline",
			fmt.Sprintf("The agent for %s disconnected while this request was on its way.", host))
		s.rejectRequest(r, rejectTunnelOffline, http.StatusBadGateway)
	case errors.Is(err, errTooManyStreams):
		w.Header().Set("Retry-After", "1")
		writePage(w, r, http.StatusServiceUnavailable, "Tunnel busy",
			fmt.Sprintf("%s has %d connections open at once, the relay's limit per tunnel; try again shortly.", host, s.cfg.Limits.MaxStreamsPerTunnel))
		s.rejectRequest(r, rejectTooManyStreams, http.StatusServiceUnavailable)
	case errors.Is(err, errAgentBusy):
		w.Header().Set("Retry-After", "1")
		writePage(w, r, http.StatusServiceUnavailable, "Agent busy",
			fmt.Sprintf("%d connections to the agent for %s are waiting for it to answer; try again shortly.", tunnel.MaxStreams, host))
		s.rejectRequest(r, rejectTooManyStreams, http.StatusServiceUnavailable)
	case errors.Is(err, errAgentTimeout), errors.Is(err, tunnel.ErrNoReply):
		writePage(w, r, http.StatusGatewayTimeout, "Agent did not answer",
			fmt.Sprintf("The agent for %s did not answer in time.", host))
		s.rejectRequest(r, rejectAgentTimeout, http.StatusGatewayTimeout)
	case isTimeout(err):
		writePage(w, r, http.StatusGatewayTimeout, "Local server did not answer",
			fmt.Sprintf("The local server behind %s sent no response headers within %v.", host, s.cfg.Limits.ResponseHeaderTimeout))
		s.rejectRequest(r, rejectResponseTimeout, http.StatusGatewayTimeout)
	default:
		s.log.Debug("proxy error", "host", host, "err", err)
		writePage(w, r, http.StatusBadGateway, "Bad gateway",
			fmt.Sprintf("The request to %s failed on its way to the local server: %v", host, err))
		s.rejectRequest(r, rejectBadGateway, http.StatusBadGateway)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// recorder captures the status and size of a proxied response and tracks a
// hijacked (upgraded) connection so shutdown can close it.
type recorder struct {
	http.ResponseWriter
	srv      *Server
	status   int
	bytes    atomic.Int64
	hijacked *trackedConn
	idle     time.Duration // each write must finish within this
	h2       bool          // an HTTP/2 stream (see arm)
	armed    time.Time     // the write deadline as last set; zero: none
	// relayPage: the response is a page of the relay's own (writePage),
	// not the agent's.
	relayPage bool
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 || (r.status >= 100 && r.status < 200 && code >= 200) {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.arm()
	n, err := r.ResponseWriter.Write(p)
	r.bytes.Add(int64(n))
	r.lift()
	return n, err
}

// FlushError flushes within the idle timeout (see arm): on HTTP/1 the
// flush is where a buffered response meets the socket.
func (r *recorder) FlushError() error {
	r.arm()
	err := http.NewResponseController(r.ResponseWriter).Flush()
	r.lift()
	return err
}

// arm gives the write or flush about to start the idle timeout: a visitor
// that stops reading must not hold the stream (and the agent's window) for
// ever. On HTTP/1 the deadline bounds only a write under way, so it stays
// and is renewed once a sixteenth of it has passed (as Join does), not for
// every write; the handler lifts it at the end.
func (r *recorder) arm() {
	now := time.Now()
	if !r.h2 && r.armed.Sub(now) >= r.idle-r.idle/16 {
		return
	}
	if http.NewResponseController(r.ResponseWriter).SetWriteDeadline(now.Add(r.idle)) == nil {
		r.armed = now.Add(r.idle)
	}
}

// lift ends an HTTP/2 write's deadline once the write returns. Go's
// HTTP/2 server makes the deadline a timer on the stream that resets it
// whether or not a write is under way: left armed, it cut an event stream
// or a long poll whose server stayed quiet that long.
func (r *recorder) lift() {
	if r.h2 && !r.armed.IsZero() {
		http.NewResponseController(r.ResponseWriter).SetWriteDeadline(time.Time{})
		r.armed = time.Time{}
	}
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack hands out the visitor's connection for an upgraded (101) response.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	tc := &trackedConn{Conn: conn, srv: r.srv}
	if !r.srv.trackHijacked(tc, true) {
		conn.Close()
		return nil, nil, errors.New("relay is shutting down")
	}
	r.status = http.StatusSwitchingProtocols
	r.hijacked = tc
	return tc, brw, nil
}

// trackedConn is an upgraded visitor connection, removed from the relay's
// set when closed.
type trackedConn struct {
	net.Conn
	srv  *Server
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.srv.trackHijacked(c, false) })
	err := c.Conn.Close()
	// A socket closed while Join's direction is parked on it gives no
	// event: start the direction, to read the close.
	tunnel.Unpark(c.Conn)
	return err
}

// WaitRead lets Join wait for the visitor without a buffer.
func (c *trackedConn) WaitRead() { tunnel.WaitRead(c.Conn) }

// Park lets Join's idle direction wait for the visitor without a goroutine.
func (c *trackedConn) Park(resume func()) bool { return tunnel.Park(c.Conn, resume) }

// Unpark passes Join's wake-up on to the visitor's connection.
func (c *trackedConn) Unpark() { tunnel.Unpark(c.Conn) }

// Abort ends the visitor's connection after an error with a TCP reset
// (under TLS too, without close_notify), as tunnel.Join does for a bare
// connection: the visitor must not take the end for a clean close.
func (c *trackedConn) Abort() {
	tunnel.ResetConn(c.Conn)
	c.Close() // untracks it
}

// CloseWrite keeps half-close working through the wrapper.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

type countingReader struct {
	r io.ReadCloser
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }
