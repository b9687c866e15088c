package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// helloTimeout bounds the time from the upgrade to a sent Welcome.
const helloTimeout = 10 * time.Second

// agentSession is one connected agent: its yamux session, the names it holds
// and the reverse proxy that reaches it.
type agentSession struct {
	srv  *Server
	sess *yamux.Session
	log  *slog.Logger // never reassigned: other goroutines use it
	// nlog adds the granted names; only the session's own goroutine uses it.
	nlog   *slog.Logger
	remote string
	secret string
	names  []string
	urls   map[string]string
	events bool
	// scheme and port make the tunnels' URLs; since is when the session
	// claimed its names. All three are set before the claim and never change.
	scheme, port string
	since        time.Time

	ctrl    net.Conn
	out     chan proto.Message // to the control stream; dropped when full
	streams chan struct{}      // a slot per stream being opened, at most tunnel.MaxStreams
	proxy   *httputil.ReverseProxy
	ka      *keepAliveTransport

	// flushes asks writeControl to write what out holds, then close the
	// channel it was sent.
	flushes chan chan struct{}

	// hostHeaders maps each tunnel name whose agent asked for it to the
	// Host header its requests carry; claimed is closed once it is
	// complete (or the handshake failed), and the proxy reads it only
	// after that, so it needs no lock.
	hostHeaders map[string]string
	claimed     chan struct{}

	tok     *token                  // the agent's token; nil without auth
	resets  *tunnel.Resets          // data streams, for resets both ways
	tunnels map[string]*tunnelState // per tunnel name, created on first use
	tunMu   sync.Mutex

	goodbye   atomic.Bool
	revoked   atomic.Bool // names are freed, not held, when it ends
	kicked    atomic.Bool // closed by the operator; names are held
	closeOnce sync.Once
	done      chan struct{}
}

// handleConnect upgrades an agent's control connection and serves its
// session until it ends. It runs in the HTTP handler's goroutine, which the
// relay tracks, so the session is owned and waited for.
func (s *Server) handleConnect(w http.ResponseWriter, r *http.Request) {
	if !tunnel.IsControlRequest(r) {
		http.Error(w, tunnel.ErrNotUpgrade.Error(), http.StatusUpgradeRequired)
		return
	}
	// Auth comes before the upgrade: without a valid token no session, not
	// even a yamux one, exists.
	tok, err := s.authenticate(r)
	if err != nil {
		var aerr *authError
		errors.As(err, &aerr)
		reason := rejectAuthFailed
		if aerr.status == http.StatusTooManyRequests {
			reason = rejectAuthRateLimited
		}
		s.metrics.reject(reason)
		s.rejects.add("agent refused", reason, slog.String("remote", r.RemoteAddr), slog.Int("status", aerr.status), slog.String("detail", aerr.reason))
		http.Error(w, aerr.reason, aerr.status)
		return
	}
	if !s.beginSession() {
		s.metrics.reject(rejectDraining)
		s.rejects.add("agent refused", rejectDraining, slog.String("remote", r.RemoteAddr), slog.Int("status", http.StatusServiceUnavailable))
		http.Error(w, "relay is shutting down; retry shortly", http.StatusServiceUnavailable)
		return
	}
	defer s.sessWG.Done()
	conn, err := tunnel.AcceptControl(w, r)
	if err != nil {
		s.log.Warn("agent upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	log := s.log.With("agent", r.RemoteAddr)
	sess, err := tunnel.Server(conn, log)
	if err != nil {
		conn.Close()
		log.Warn("start session", "err", err)
		return
	}
	as := &agentSession{
		srv:     s,
		sess:    sess,
		log:     log,
		remote:  r.RemoteAddr,
		urls:    make(map[string]string),
		out:     make(chan proto.Message, 256),
		flushes: make(chan chan struct{}),
		streams: make(chan struct{}, tunnel.MaxStreams),
		tunnels: make(map[string]*tunnelState),
		tok:     tok,
		done:    make(chan struct{}),
		claimed: make(chan struct{}),
	}
	as.resets = tunnel.NewResets(func(id uint32) { as.notify(&proto.StreamReset{Stream: id}) })
	if tok != nil {
		as.log = log.With("token", tok.Name)
	}
	if !s.addSession(as) {
		sess.Close()
		return
	}
	defer s.removeSession(as)
	as.scheme = "http"
	if r.TLS != nil {
		as.scheme = "https"
	}
	_, as.port, _ = net.SplitHostPort(r.Host)
	if err := as.handshake(); err != nil {
		as.refuse(err)
		return
	}
	defer s.metrics.agents.Dec() // counted by handshake, before the welcome
	as.serve()
}

// beginSession counts a new agent session, unless the relay is shutting
// down. The check and the Add are under s.mu, which closeAll also takes
// before it waits, so no Add can race with the Wait.
func (s *Server) beginSession() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() || s.hijackClosed {
		return false
	}
	s.sessWG.Add(1)
	return true
}

func (s *Server) addSession(as *agentSession) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hijackClosed {
		return false
	}
	s.sessions[as] = struct{}{}
	return true
}

func (s *Server) removeSession(as *agentSession) {
	s.mu.Lock()
	delete(s.sessions, as)
	s.mu.Unlock()
}

// handshake reads the agent's Hello and answers Welcome.
func (as *agentSession) handshake() error {
	ctx, cancel := context.WithTimeout(context.Background(), helloTimeout)
	defer cancel()
	ys, err := as.sess.AcceptStreamWithContext(ctx)
	if err != nil {
		return fmt.Errorf("accept control stream: %w", err)
	}
	as.ctrl = ys
	ys.SetDeadline(time.Now().Add(helloTimeout))
	hello, err := proto.ReadAs[*proto.Hello](ys)
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	if hello.Version < proto.MinVersion {
		return proto.Errorf(proto.CodeVersion, "agent protocol version %d is too old; this relay needs %d or newer: update tunnel", hello.Version, proto.MinVersion)
	}
	if len(hello.Tunnels) == 0 {
		return proto.Errorf(proto.CodeBadRequest, "hello asks for no tunnels")
	}
	if len(hello.Tunnels) > 16 {
		return proto.Errorf(proto.CodeBadRequest, "hello asks for %d tunnels; at most 16 per agent", len(hello.Tunnels))
	}
	secret := hello.Secret
	if secret == "" {
		secret = newSecret()
	} else if len(secret) < 16 || len(secret) > 128 {
		return proto.Errorf(proto.CodeBadRequest, "reconnect secret must be 16 to 128 characters")
	}
	as.secret = secret
	as.events = hello.Events
	// Everything a request may touch is ready before claim makes the session
	// visible to visitors.
	as.setupProxy()
	rules := make([]*access, len(hello.Tunnels))
	for i, t := range hello.Tunnels {
		if rules[i], err = compileAccess(t.Name, t.Access); err != nil {
			return err
		}
		if t.HostHeader != "" {
			if err := proto.ValidateHostHeader(t.HostHeader); err != nil {
				which := fmt.Sprintf("tunnel %q", t.Name)
				if t.Name == "" {
					which = "a tunnel with a random name"
				}
				return proto.Errorf(proto.CodeBadRequest, "%s: %v", which, err)
			}
		}
	}
	// Requests may reach the session as soon as claim returns: they wait
	// for claimed before reading hostHeaders.
	var claimOnce sync.Once
	markClaimed := func() { claimOnce.Do(func() { close(as.claimed) }) }
	defer markClaimed()
	maxTunnels := as.srv.cfg.Limits.MaxTunnelsPerToken
	if as.tok != nil && as.tok.MaxTunnels > 0 {
		maxTunnels = as.tok.MaxTunnels
	}
	// A name held live under the same token but another secret is this
	// agent's own session that has not noticed it is gone yet (a laptop
	// that slept, a restarted agent: replaced at once), or a second agent
	// running with the same token: that one answers a ping and keeps its
	// name, or the two would take it from each other for ever.
	names, replaced, reconnect, err := as.claim(secret, maxTunnels, hello.Tunnels, rules)
	if err != nil {
		return err
	}
	as.names = names
	for i, n := range names {
		if h := hello.Tunnels[i].HostHeader; h != "" {
			if as.hostHeaders == nil {
				as.hostHeaders = make(map[string]string)
			}
			as.hostHeaders[n] = h
		}
	}
	markClaimed()
	if reconnect {
		as.srv.metrics.reconnects.Inc()
	}
	for _, old := range replaced {
		old.log.Info("replaced by the same agent's new session")
		old.close()
	}
	welcome := &proto.Welcome{Secret: secret, Grace: as.srv.cfg.Grace, Server: Software}
	for _, n := range names {
		u := as.url(n)
		as.urls[n] = u
		g := proto.Granted{Name: n, URL: u, HostHeader: as.hostHeaders[n]}
		g.CertPending = as.srv.certs != nil && as.srv.certs.needsACME(n+"."+as.srv.cfg.Domain)
		welcome.Tunnels = append(welcome.Tunnels, g)
	}
	// Counted before the agent can see the welcome, so that anything the
	// agent does next (a scrape of the metrics, say) sees it connected.
	as.srv.metrics.agents.Inc()
	if err := proto.WriteMessage(ys, welcome); err != nil {
		as.srv.metrics.agents.Dec()
		// Hold the names: the agent's old session may already be closed,
		// and the agent will retry with the same secret.
		as.srv.reg.release(as, names, true)
		return fmt.Errorf("write welcome: %w", err)
	}
	ys.SetDeadline(time.Time{})
	for _, g := range welcome.Tunnels {
		if g.CertPending {
			as.srv.fetchCert(g.Name+"."+as.srv.cfg.Domain, func(err error) {
				if err != nil {
					as.notify(&proto.Notice{Kind: proto.NoticeCertFailed, Name: g.Name, Message: err.Error()})
				} else {
					as.notify(&proto.Notice{Kind: proto.NoticeCertReady, Name: g.Name})
				}
			})
		}
	}
	as.nlog = as.log.With("names", strings.Join(names, ","))
	as.nlog.Info("tunnel online", "urls", strings.Join(sortedValues(as.urls), " "), "reconnect", reconnect)
	return nil
}

// hostHeader returns the Host header the agent asked for on requests to
// name, or "" to keep the visitor's. It waits, if need be, until the
// handshake has recorded them: a request can find the session in the
// registry a moment before.
func (as *agentSession) hostHeader(ctx context.Context, name string) string {
	select {
	case <-as.claimed:
	case <-ctx.Done():
		return ""
	}
	return as.hostHeaders[name]
}

// url is the public URL of the session's tunnel name.
func (as *agentSession) url(name string) string {
	u := as.scheme + "://" + name + "." + as.srv.cfg.Domain
	if as.port != "" && !(as.scheme == "http" && as.port == "80") && !(as.scheme == "https" && as.port == "443") {
		u += ":" + as.port
	}
	return u
}

func sortedValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// refuse sends err to the agent on the control stream (when there is one),
// waits briefly for the agent to hang up so the message is not lost to a
// reset, and closes the session.
func (as *agentSession) refuse(err error) {
	var perr *proto.Error
	if !errors.As(err, &perr) {
		as.log.Warn("agent handshake failed", "err", err)
		as.sess.Close()
		return
	}
	as.srv.metrics.reject(rejectClaimRefused)
	as.srv.rejects.add("agent refused", rejectClaimRefused, slog.String("code", perr.Code.String()), slog.String("detail", perr.Message))
	if as.ctrl != nil {
		as.ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if proto.WriteMessage(as.ctrl, perr) == nil {
			as.ctrl.Close()
			select {
			case <-as.sess.CloseChan():
			case <-time.After(2 * time.Second):
			}
		}
	}
	as.sess.Close()
}

// tokenGone is the error of an agent whose token is no longer in the
// relay's set: removed or changed, or none while the relay now needs one.
func (as *agentSession) tokenGone() *proto.Error {
	if as.tok == nil {
		return proto.Errorf(proto.CodeUnauthorized, "the relay now requires an agent token; give one with --token")
	}
	return proto.Errorf(proto.CodeUnauthorized, "this agent's token was removed from the relay")
}

func newSecret() string {
	var b [24]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// serve runs the established session until it ends, then releases its names.
func (as *agentSession) serve() {
	var wg sync.WaitGroup
	wg.Go(as.readControl)
	wg.Go(as.writeControl)
	wg.Go(as.refuseStreams)
	<-as.sess.CloseChan()
	as.close()
	wg.Wait()
	as.ka.closeIdle()
	hold := !as.goodbye.Load() && !as.revoked.Load()
	// After a Goodbye, readControl has released the names already.
	released := as.srv.reg.release(as, as.names, hold)
	log := as.log.With("names", strings.Join(released, ","))
	switch {
	case as.goodbye.Load():
		as.nlog.Info("tunnel closed by agent; names released")
	case as.revoked.Load():
		as.nlog.Info("tunnel revoked; names released")
	case len(released) == 0:
		// Every name was taken over by the agent's new session.
		as.nlog.Info("session replaced by the agent's new one")
	case hold && as.srv.cfg.Grace > 0:
		log.Info("tunnel offline; names held for reconnect", "grace", as.srv.cfg.Grace.String(), "kicked", as.kicked.Load())
	default:
		log.Info("tunnel offline; names released", "kicked", as.kicked.Load())
	}
}

func (as *agentSession) close() {
	as.closeOnce.Do(func() {
		close(as.done)
		as.sess.Close()
	})
}

// readControl handles messages from the agent on the control stream.
func (as *agentSession) readControl() {
	defer as.close()
	for {
		m, err := proto.ReadMessage(as.ctrl)
		if errors.Is(err, proto.ErrUnknownType) {
			continue // from a newer agent: skipped
		}
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *proto.StreamReset:
			as.resets.Reset(m.Stream)
		case *proto.Goodbye:
			// Free the names before the connection closes: the agent
			// takes the close as done, and may claim them again at once.
			as.goodbye.Store(true)
			as.srv.reg.release(as, as.names, false)
			return
		default:
			as.log.Debug("ignoring control message", "type", m.Type().String())
		}
	}
}

// writeControl sends queued notices and events to the agent.
func (as *agentSession) writeControl() {
	for {
		select {
		case <-as.done:
			return
		case m := <-as.out:
			if !as.writeOne(m) {
				return
			}
		case flushed := <-as.flushes:
			for pending := true; pending; {
				select {
				case m := <-as.out:
					if !as.writeOne(m) {
						close(flushed)
						return
					}
				default:
					pending = false
				}
			}
			close(flushed)
		}
	}
}

// writeOne writes m to the control stream. It reports false when the
// session is over.
func (as *agentSession) writeOne(m proto.Message) bool {
	as.ctrl.SetWriteDeadline(time.Now().Add(tunnel.WriteTimeout))
	err := proto.WriteMessage(as.ctrl, m)
	if _, final := m.(*proto.Error); final {
		// A refusal ends the session once it is written.
		as.close()
		return false
	}
	if err != nil {
		if errors.Is(err, proto.ErrTooLarge) {
			// Nothing was written; the message is lost, not the session.
			as.log.Debug("dropped oversized control message", "type", m.Type().String())
			return true
		}
		as.close()
		return false
	}
	return true
}

// flushControl waits until what was queued for the agent so far is
// written, the session has ended, or ctx is done: closing the session
// right after queuing a notice would drop it.
func (as *agentSession) flushControl(ctx context.Context) {
	flushed := make(chan struct{})
	select {
	case as.flushes <- flushed:
	case <-as.done:
		return
	case <-ctx.Done():
		return
	}
	select {
	case <-flushed:
	case <-as.done:
	case <-ctx.Done():
	}
}

// revokeWith ends the session for good: the agent is told why (a
// permanent error, so it stops instead of reconnecting) and its names are
// freed, not held.
func (as *agentSession) revokeWith(perr *proto.Error) {
	as.revoked.Store(true)
	select {
	case as.out <- perr:
		// writeControl closes the session after writing it; if the agent
		// does not read, the write deadline ends it anyway.
		time.AfterFunc(tunnel.WriteTimeout, as.close)
	default:
		as.close()
	}
}

// notify queues m for the agent; it never blocks, and drops m when the
// agent does not keep up.
func (as *agentSession) notify(m proto.Message) {
	select {
	case as.out <- m:
	default:
	}
}

// refuseStreams closes any stream the agent opens toward the relay: only the
// relay opens data streams, and unaccepted streams would pile up.
func (as *agentSession) refuseStreams() {
	for {
		st, err := as.sess.AcceptStream()
		if err != nil {
			return
		}
		st.Close()
	}
}

// errSessionGone is returned when a request's agent session ended.
var errSessionGone = errors.New("agent disconnected")

// errAgentTimeout is returned when the agent did not answer a new stream
// (its dial of the local target included) within OpenTimeout.
var errAgentTimeout = errors.New("the agent did not answer in time")

// errTooManyStreams is returned when the tunnel's stream slots stay full.
var errTooManyStreams = errors.New("too many concurrent connections to this tunnel")

// errAgentBusy is returned when tunnel.MaxStreams opens already wait for
// the agent to answer.
var errAgentBusy = errors.New("too many connections waiting for the agent to answer")

// openStream opens a data stream for name, waiting for a free slot and for
// the agent's answer at most OpenTimeout.
func (as *agentSession) openStream(ctx context.Context, name string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, as.srv.cfg.OpenTimeout)
	defer cancel()
	ts := as.tunnel(name)
	tunnelSlots := ts.slots
	select {
	case tunnelSlots <- struct{}{}:
	default:
		// Full. A stream kept for some visitor's next request is worth
		// less than this one: close the tunnel's longest idle, which
		// frees its slot, then wait for a slot. Meanwhile the streams
		// that finish are not kept (see waiting).
		ts.waiting.Add(1)
		if as.ka != nil {
			as.ka.evictOldest(name)
		}
		var err error
		select {
		case tunnelSlots <- struct{}{}:
		case <-as.done:
			err = errSessionGone
		case <-ctx.Done():
			err = ctx.Err()
			if errors.Is(err, context.DeadlineExceeded) {
				err = errTooManyStreams
			}
		}
		ts.waiting.Add(-1)
		if err != nil {
			return nil, err
		}
	}
	// The agent-wide slot covers only the opening: yamux blocks once 256
	// opens wait for the agent's answer, so at most tunnel.MaxStreams may.
	// Established streams are bounded per tunnel instead.
	select {
	case as.streams <- struct{}{}:
	case <-as.done:
		<-tunnelSlots
		return nil, errSessionGone
	case <-ctx.Done():
		<-tunnelSlots
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, errAgentBusy
		}
		return nil, ctx.Err()
	}
	hdr := &proto.StreamHeader{Name: name}
	if v, ok := ctx.Value(visitorKey{}).(visitorInfo); ok {
		hdr.Remote, hdr.Scheme = v.remote, v.scheme
	}
	// The agent's slot stays taken while a yamux open is still pending,
	// and until the agent's reply has been read, so abandoned opens cannot
	// pile up beyond MaxStreams. The stream is early: the request goes
	// with the header, and the reply is read with the response.
	replyBy, _ := ctx.Deadline()
	var once sync.Once
	release := func() { once.Do(func() { <-as.streams }) }
	st, err := tunnel.OpenStreamWith(ctx, as.sess, hdr, tunnel.OpenOptions{
		Failed: release, Early: true, ReplyBy: replyBy, Answered: release,
	})
	if err != nil {
		<-tunnelSlots
		if as.sess.IsClosed() {
			return nil, errSessionGone
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, errAgentTimeout
		}
		return nil, err
	}
	as.resets.Track(st)
	ts.streams.Add(1)
	as.srv.metrics.streams.Inc()
	return &slotConn{Conn: st, tunnel: ts, release: func() {
		as.srv.metrics.streams.Dec()
		ts.streams.Add(-1)
		<-tunnelSlots
	}}, nil
}

// tunnelState is one tunnel name's share of its agent session: the
// semaphore of its open streams and its counters for the admin API.
type tunnelState struct {
	slots             chan struct{} // at most Limits.MaxStreamsPerTunnel
	waiting           atomic.Int32  // requests waiting for a slot: keep no stream
	streams           atomic.Int64  // open now
	requests          atomic.Int64  // finished
	bytesIn, bytesOut atomic.Int64
}

// tunnel returns name's state, creating it on first use.
func (as *agentSession) tunnel(name string) *tunnelState {
	as.tunMu.Lock()
	defer as.tunMu.Unlock()
	ts := as.tunnels[name]
	if ts == nil {
		ts = &tunnelState{slots: make(chan struct{}, as.srv.cfg.Limits.MaxStreamsPerTunnel)}
		as.tunnels[name] = ts
	}
	return ts
}

// slotConn gives back its stream slot when closed.
type slotConn struct {
	net.Conn
	tunnel  *tunnelState // whose slot it holds
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite keeps half-close working through the wrapper.
func (c *slotConn) CloseWrite() error {
	return c.Conn.(*tunnel.Stream).CloseWrite()
}

// Shrink lets Join release the stream's idle receive buffer.
func (c *slotConn) Shrink() { c.Conn.(*tunnel.Stream).Shrink() }

// WaitRead lets Join wait for the stream without a buffer.
func (c *slotConn) WaitRead() { tunnel.WaitRead(c.Conn) }

// Park lets Join's idle direction wait for the stream without a goroutine.
func (c *slotConn) Park(resume func()) bool { return tunnel.Park(c.Conn, resume) }

// Unpark passes Join's wake-up on to the stream.
func (c *slotConn) Unpark() { tunnel.Unpark(c.Conn) }

// Abort ends the stream with an error (tunnel.Stream.Abort) and frees its
// slot.
func (c *slotConn) Abort() {
	c.Conn.(*tunnel.Stream).Abort()
	c.once.Do(c.release)
}

// AwaitReply and Replied reach the stream's early reply (see
// tunnel.OpenOptions.Early).
func (c *slotConn) AwaitReply() error { return c.Conn.(*tunnel.Stream).AwaitReply() }
func (c *slotConn) Replied() bool     { return c.Conn.(*tunnel.Stream).Replied() }
func (c *slotConn) Readable() bool    { return c.Conn.(*tunnel.Stream).Readable() }
func (c *slotConn) ResetByPeer() bool { return c.Conn.(*tunnel.Stream).ResetByPeer() }

// roundTripErr is what a round trip on c that failed with err reports:
// the request's own end if its context ended, and for a deadline that ran
// out, which one: before the agent's reply had been read, the agent did
// not answer (errAgentTimeout); after, the local server sent no response
// header in time.
func roundTripErr(ctx context.Context, c net.Conn, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if r, ok := c.(interface{ Replied() bool }); ok && !r.Replied() {
		return errAgentTimeout
	}
	return fmt.Errorf("timeout awaiting response headers: %w", err)
}

// takeoverPing is how long a session holding a name under the same token
// has to answer before a new session takes the name over. A live agent on
// loopback or across the world answers within it; one on a dead network
// path does not.
const takeoverPing = 2 * time.Second

// claimRetries bounds claim's rounds of pings: each round pings the rivals
// that claimed a name while the previous round was under way.
const claimRetries = 3

// claim takes the names asked for, after pinging the live sessions that
// hold them under the same token (see registry.claim).
func (as *agentSession) claim(secret string, maxTunnels int, reqs []proto.TunnelRequest, rules []*access) (names []string, replaced []*agentSession, reconnect bool, err error) {
	pinged := make(map[*agentSession]bool)
	answering := make(map[*agentSession]bool)
	for round := 1; ; round++ {
		var fresh []*agentSession
		for _, s := range as.srv.reg.rivals(secret, as.tok, reqs) {
			if !pinged[s] {
				fresh = append(fresh, s)
			}
		}
		for s := range answeringSessions(fresh, takeoverPing) {
			answering[s] = true
		}
		for _, s := range fresh {
			pinged[s] = true
		}
		as.since = time.Now()
		// A reload since the upgrade replaced every token object, changed
		// or not: claim with the current one, and not at all if it is gone.
		ts := as.srv.tokens.Load()
		tok, ok := ts.current(as.tok)
		if !ok {
			return nil, nil, false, as.tokenGone()
		}
		names, replaced, reconnect, err = as.srv.reg.claim(claimant{
			sess:       as,
			secret:     secret,
			tokens:     ts,
			tok:        tok,
			maxTunnels: maxTunnels,
			pinged:     pinged,
			answering:  answering,
		}, reqs, rules)
		if !errors.Is(err, errUnpinged) {
			return names, replaced, reconnect, err
		}
		if round == claimRetries {
			return nil, nil, false, proto.Errorf(proto.CodeNameTaken, "another agent with this token keeps claiming the same name at the same moment; stop it, or choose another name")
		}
	}
}

// answeringSessions pings sessions at once and returns those that answered
// within timeout.
func answeringSessions(sessions []*agentSession, timeout time.Duration) map[*agentSession]bool {
	if len(sessions) == 0 {
		return nil
	}
	type result struct {
		as *agentSession
		ok bool
	}
	// Buffered: a ping that outlives the timeout finishes into it (yamux
	// gives up after its write timeout, or when the session closes).
	results := make(chan result, len(sessions))
	for _, as := range sessions {
		go func() {
			_, err := as.sess.Ping()
			results <- result{as, err == nil}
		}()
	}
	answering := make(map[*agentSession]bool)
	deadline := time.After(timeout)
	for range sessions {
		select {
		case r := <-results:
			if r.ok {
				answering[r.as] = true
			}
		case <-deadline:
			return answering
		}
	}
	return answering
}
