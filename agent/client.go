package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/agent/inspect"
	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// helloTimeout bounds the wait for the relay's Welcome.
const helloTimeout = 15 * time.Second

// streamHeaderTimeout bounds reading a stream's header after it opened.
const streamHeaderTimeout = 10 * time.Second

// livedLongEnough is how long a session must have lasted for the next
// reconnect to start again from the shortest backoff.
const livedLongEnough = 10 * time.Second

// client is the reconnect loop shared by Run and Listen.
type client struct {
	cfg Config
	u   *url.URL
	log *slog.Logger
	// handle serves a stream of the tunnel at index. Work it leaves
	// running when it returns is counted in wg, which the session waits
	// for.
	handle func(ctx context.Context, st *tunnel.Stream, name string, index int, wg *sync.WaitGroup)

	// ins, if not nil, observes the traffic and shows the agent's state;
	// inspectURL is where it serves, if it does.
	ins        *inspect.Inspector
	inspectURL string
	// relayEvents asks the relay for an Event per request: for Listen,
	// whose streams the agent does not observe itself.
	relayEvents bool

	// Kept across attempts so a reconnect asks for the same names, with the
	// secret that proves they are ours.
	secret string
	names  []string

	// failFirst makes run return the first attempt's error, whatever it is,
	// instead of retrying (Listen reports it to its caller).
	failFirst bool
	draining  bool         // the relay announced a shutdown during this session
	refused   *proto.Error // the relay ended the session with this error
}

func newClient(cfg Config, u *url.URL, handle func(context.Context, *tunnel.Stream, string, int, *sync.WaitGroup)) *client {
	names := make([]string, len(cfg.Tunnels))
	for i, t := range cfg.Tunnels {
		names[i] = t.Name
	}
	return &client{cfg: cfg, u: u, log: cfg.Logger.With("relay", u.Host), handle: handle, names: names, secret: newSecret()}
}

// newSecret makes the agent's reconnect secret, sent from its first Hello
// on: if that handshake's Welcome is lost (the connection drops after the
// relay claimed the names), the names the relay holds are still the
// agent's to reclaim. A secret the relay made would have been lost with
// the Welcome, and the retry refused as name-taken for the grace period.
func newSecret() string {
	var b [24]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (c *client) emit(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if c.ins != nil {
		c.showStatus(ev)
	}
	if c.cfg.OnEvent != nil {
		c.cfg.OnEvent(ev)
	}
}

// showStatus keeps the inspector's status current.
func (c *client) showStatus(ev Event) {
	switch ev.Kind {
	case EventOnline:
		c.ins.SetStatus(func(s *inspect.Status) {
			s.State, s.Error, s.Attempt, s.NextTry = "online", "", 0, time.Time{}
			s.URLs = s.URLs[:0]
			for _, g := range ev.Tunnels {
				s.URLs = append(s.URLs, g.URL)
			}
			s.RTT = inspect.Duration(ev.RTT)
		})
	case EventOffline:
		c.ins.SetStatus(func(s *inspect.Status) {
			s.State, s.Error, s.Attempt, s.NextTry = "reconnecting", fmt.Sprint(ev.Err), ev.Attempt, ev.Time.Add(ev.Retry)
		})
	case EventRTT:
		c.ins.SetStatus(func(s *inspect.Status) { s.RTT = inspect.Duration(ev.RTT) })
	}
}

// Revoked wraps the relay's refusal that ended a running session (the
// operator revoked a name, the agent's token was removed), as against a
// refusal of a login.
type Revoked struct{ Err error }

func (e *Revoked) Error() string { return e.Err.Error() }
func (e *Revoked) Unwrap() error { return e.Err }

// PermanentError wraps an error that retrying cannot fix.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// isPermanent reports whether err means the same attempt cannot succeed
// later: the relay refused the name, the token or the version.
func isPermanent(err error) bool {
	var pe *PermanentError
	if errors.As(err, &pe) {
		return true
	}
	var perr *proto.Error
	if errors.As(err, &perr) {
		return perr.Permanent()
	}
	var uerr *tunnel.UpgradeError
	if errors.As(err, &uerr) {
		switch uerr.Status {
		case http.StatusRequestTimeout, http.StatusTooManyRequests:
			return false
		}
		// 3xx: the URL is wrong (e.g. http:// for an https relay).
		return uerr.Status >= 300 && uerr.Status < 500
	}
	// The relay's certificate cannot be trusted: retrying will not change it.
	var verr *tls.CertificateVerificationError
	return errors.As(err, &verr)
}

// notFromRelay reports whether err, permanent for a relay never reached,
// may come from something between the agent and a relay it has reached
// before, and pass: a captive portal's redirect or certificate, a proxy's
// or load balancer's 4xx page while the relay restarts. Only the relay's
// own refusals stay permanent then: a proto.Error, or 401 for a token it no
// longer accepts.
func notFromRelay(err error) bool {
	var uerr *tunnel.UpgradeError
	if errors.As(err, &uerr) {
		return uerr.Status != http.StatusUnauthorized
	}
	var verr *tls.CertificateVerificationError
	return errors.As(err, &verr)
}

// run connects and reconnects until ctx is done or a permanent error. online,
// if not nil, is called after every successful handshake.
func (c *client) run(ctx context.Context, online func([]proto.Granted)) error {
	bo := backoff{min: c.cfg.MinBackoff, max: c.cfg.MaxBackoff}
	wasOnline := false
	for attempt := 1; ; attempt++ {
		start := time.Now()
		connected, err := c.attempt(ctx, online)
		if ctx.Err() != nil {
			return nil
		}
		wasOnline = wasOnline || connected
		if isPermanent(err) && !(wasOnline && notFromRelay(err)) {
			if perr := (*PermanentError)(nil); errors.As(err, &perr) {
				return err
			}
			return &PermanentError{Err: err}
		}
		if c.failFirst && !connected && attempt == 1 {
			return err
		}
		if connected {
			if time.Since(start) >= livedLongEnough {
				bo.reset()
			}
			attempt = 1
		}
		delay := bo.next()
		c.emit(Event{Kind: EventOffline, Err: err, Attempt: attempt, Retry: delay})
		// With OnEvent set the caller shows this itself; keep the log quiet.
		level := slog.LevelWarn
		if c.cfg.OnEvent != nil {
			level = slog.LevelDebug
		}
		c.log.Log(ctx, level, "relay connection failed; reconnecting", "attempt", attempt, "next_in", delay.Round(time.Millisecond).String(), "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// attempt runs one session: connect, hello, serve until it ends. connected
// reports whether the relay granted the names.
func (c *client) attempt(ctx context.Context, online func([]proto.Granted)) (connected bool, err error) {
	conn, err := tunnel.DialControl(ctx, c.u, tunnel.DialOptions{
		Token:       c.cfg.Token,
		TLSConfig:   c.cfg.TLSConfig,
		DialContext: c.cfg.DialContext,
	})
	if err != nil {
		return false, err
	}
	// The keepalive's pings measure the round trip the agent shows.
	var onRTT func(time.Duration)
	if c.cfg.OnEvent != nil || c.ins != nil {
		onRTT = func(rtt time.Duration) { c.emit(Event{Kind: EventRTT, RTT: rtt}) }
	}
	sess, err := tunnel.ClientWithRTT(conn, c.log, onRTT)
	if err != nil {
		conn.Close()
		return false, err
	}
	defer sess.Close()

	ctrl, err := sess.OpenStream()
	if err != nil {
		return false, fmt.Errorf("open control stream: %w", err)
	}
	// The agent observes the requests itself (Run); only Listen, which
	// hands streams to its caller, asks the relay for events.
	hello := &proto.Hello{Version: proto.Version, Client: Software, Secret: c.secret, Events: c.relayEvents}
	for i, n := range c.names {
		t := &c.cfg.Tunnels[i]
		hello.Tunnels = append(hello.Tunnels, proto.TunnelRequest{Name: n, Access: t.Access, HostHeader: t.hostHeader()})
	}
	ctrl.SetDeadline(time.Now().Add(helloTimeout))
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	helloAt := time.Now()
	if err := proto.WriteMessage(ctrl, hello); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	welcome, err := proto.ReadAs[*proto.Welcome](ctrl)
	rtt := time.Since(helloAt)
	if err != nil {
		var perr *proto.Error
		if errors.As(err, &perr) {
			// Hang up first so the relay, which waits for it, can close cleanly.
			sess.Close()
			return false, perr
		}
		return false, fmt.Errorf("read welcome: %w", err)
	}
	if len(welcome.Tunnels) != len(c.names) {
		return false, fmt.Errorf("relay granted %d names for %d asked", len(welcome.Tunnels), len(c.names))
	}
	if err := c.checkHostHeaders(welcome.Tunnels); err != nil {
		// Serving would show the local server the public host name. Free
		// the names now rather than leave them held for the grace period.
		if proto.WriteMessage(ctrl, &proto.Goodbye{}) == nil {
			select {
			case <-sess.CloseChan():
			case <-time.After(2 * time.Second):
			}
		}
		return false, &PermanentError{Err: err}
	}
	ctrl.SetDeadline(time.Time{})
	if !stop() {
		return false, ctx.Err()
	}
	c.secret = welcome.Secret
	for i, g := range welcome.Tunnels {
		c.names[i] = g.Name
	}
	urls := make([]string, len(welcome.Tunnels))
	for i, g := range welcome.Tunnels {
		urls[i] = g.URL
	}
	// With OnEvent set the caller shows this itself; keep the log quiet.
	onlineLevel := slog.LevelInfo
	if c.cfg.OnEvent != nil {
		onlineLevel = slog.LevelDebug
	}
	c.log.Log(ctx, onlineLevel, "tunnel online", "urls", strings.Join(urls, " "))
	if online != nil {
		online(welcome.Tunnels)
	}
	c.emit(Event{Kind: EventOnline, Tunnels: welcome.Tunnels, RTT: rtt, Inspector: c.inspectURL})

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The control stream's writer: resets from any stream, then goodbye.
	out := make(chan proto.Message, 64)
	resets := tunnel.NewResets(func(id uint32) {
		select {
		case out <- &proto.StreamReset{Stream: id}:
		default: // the relay's idle-write timeout ends that stream anyway
		}
	})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer sess.Close()
		c.readControl(ctrl, resets)
	})
	wg.Go(func() {
		for {
			select {
			case m := <-out:
				ctrl.SetWriteDeadline(time.Now().Add(tunnel.WriteTimeout))
				if proto.WriteMessage(ctrl, m) != nil {
					sess.Close()
					return
				}
			case <-sess.CloseChan():
				return
			}
		}
	})
	wg.Go(func() {
		for {
			ys, err := sess.AcceptStream()
			if err != nil {
				return
			}
			wg.Go(func() { c.serveStream(sctx, ys, resets, &wg) })
		}
	})

	select {
	case <-ctx.Done():
		// Tell the relay to free the names now, and wait briefly for it to
		// hang up so the goodbye is not lost to a reset.
		select {
		case out <- &proto.Goodbye{}:
			select {
			case <-sess.CloseChan():
			case <-time.After(2 * time.Second):
			}
		case <-time.After(2 * time.Second):
		}
	case <-sess.CloseChan():
	}
	cancel()
	sess.Close()
	wg.Wait()
	if c.refused != nil {
		err, c.refused = &Revoked{Err: c.refused}, nil
		return true, err
	}
	if c.draining {
		c.draining = false
		return true, errors.New("relay shut down or restarted")
	}
	return true, errors.New("connection to relay lost (closed, or no answer to keepalives within 20 s)")
}

// checkHostHeaders makes sure the relay will write the Host headers the
// agent asked for: a relay older than the field ignores it, and does not
// echo it in Granted.
func (c *client) checkHostHeaders(granted []proto.Granted) error {
	for i, g := range granted {
		t := &c.cfg.Tunnels[i]
		if want := t.hostHeader(); want != "" && g.HostHeader != want {
			return fmt.Errorf("relay %s ignored the Host header %q asked for %s: it is older than this agent; update the relay, or run without the host header",
				c.u.Host, want, g.URL)
		}
	}
	return nil
}

// readControl handles the relay's messages on the control stream until it
// closes.
func (c *client) readControl(ctrl net.Conn, resets *tunnel.Resets) {
	for {
		m, err := proto.ReadMessage(ctrl)
		if errors.Is(err, proto.ErrUnknownType) {
			continue // from a newer relay: skipped
		}
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *proto.StreamReset:
			resets.Reset(m.Stream)
		case *proto.Event:
			// Sent by relays when asked (Listen), and by older ones always.
			c.emit(Event{Kind: EventRequest, Time: m.Time, Request: m})
		case *proto.Error:
			// The relay revoked the session (name revoked, token removed).
			c.refused = m
			return
		case *proto.Notice:
			if m.Kind == proto.NoticeDraining {
				c.draining = true
			}
			// With OnEvent set the caller shows this itself (expose's
			// "relay says:", --quiet, --json); keep the log quiet.
			level := slog.LevelInfo
			if c.cfg.OnEvent != nil {
				level = slog.LevelDebug
			}
			c.log.Log(context.Background(), level, "relay notice", "kind", string(m.Kind), "message", m.Message)
			c.emit(Event{Kind: EventNotice, Notice: m})
		default:
			c.log.Debug("ignoring control message", "type", m.Type().String())
		}
	}
}

// serveStream reads a stream's header and hands it to the tunnel it names.
// The agent serves only the names it was granted: a stream for any other
// name is refused.
func (c *client) serveStream(ctx context.Context, ys *yamux.Stream, resets *tunnel.Resets, wg *sync.WaitGroup) {
	hctx, cancel := context.WithTimeout(ctx, streamHeaderTimeout)
	st, hdr, err := tunnel.AcceptStream(hctx, ys)
	cancel()
	if err != nil {
		c.log.Debug("bad stream", "err", err)
		return
	}
	resets.Track(st)
	for i, n := range c.names {
		if n == hdr.Name {
			c.handle(ctx, st, n, i, wg)
			return
		}
	}
	st.Refuse(proto.Errorf(proto.CodeUnknownTunnel, "this agent does not serve %q", hdr.Name))
}

// serveLocal dials the local target for one stream and joins the two. ins,
// if not nil, observes the bytes through a tap: it never alters nor delays
// them.
//
// The connection is then served by the join's own goroutines
// (tunnel.JoinAsync), counted in wg, the session's: this one has grown its
// stack through the stream's handshake, the dial and TLS, and would
// otherwise keep it for the life of the connection, often an idle
// WebSocket.
func serveLocal(ctx context.Context, cfg *Config, st *tunnel.Stream, t *Tunnel, name string, ins *inspect.Inspector, wg *sync.WaitGroup) {
	local := t.Local
	d := net.Dialer{Timeout: cfg.LocalDialTimeout}
	lc, err := d.DialContext(ctx, "tcp", local)
	if err != nil {
		reason := err
		for u := errors.Unwrap(reason); u != nil; u = errors.Unwrap(reason) {
			reason = u
		}
		if tunnel.IsConnRefused(err) {
			reason = errors.New("connection refused")
		}
		msg := fmt.Sprintf("nothing answers on %s (%v)", local, reason)
		refuseLocal(cfg, st, ins, inspect.ConnInfo{Tunnel: name, Local: local, Remote: st.RemoteAddr().String()}, msg,
			"local target does not answer", "local", local, "err", err)
		return
	}
	if t.LocalHTTPS {
		tc, err := localHandshake(ctx, lc, t, cfg.LocalDialTimeout)
		if err != nil {
			lc.Close()
			msg := localTLSProblem(local, err)
			refuseLocal(cfg, st, ins, inspect.ConnInfo{Tunnel: name, Local: local, Remote: st.RemoteAddr().String(), TLS: t.tlsConfig},
				fmt.Sprintf("%s (%v)", msg, err), msg, "local", local, "err", err)
			return
		}
		lc = tc
	}
	if err := st.Accept(); err != nil {
		st.Close()
		lc.Close()
		return
	}
	// When the session ends, a lost relay reads as EOF on the stream and
	// Join would wait for the local server to close its side, which a
	// long-poll or a handler that ignores its context never does.
	stop := context.AfterFunc(ctx, func() {
		st.Close()
		lc.Close()
	})
	opts := tunnel.JoinOptions{WriteIdleTimeout: cfg.WriteIdleTimeout}
	var obs *inspect.Conn
	if ins != nil {
		obs = ins.Observe(inspect.ConnInfo{Tunnel: name, Local: local, Remote: st.RemoteAddr().String(), TLS: t.tlsConfig})
		opts.Tap = func(d tunnel.Direction, p []byte) { obs.Tap(d == tunnel.AToB, p) }
	}
	wg.Add(1)
	tunnel.JoinAsync(st, lc, opts, func(err error) {
		defer wg.Done()
		stop()
		if err != nil {
			cfg.Logger.Debug("stream ended with error", "local", local, "err", err)
		}
		if obs != nil {
			obs.Close() // after Join: reports what was left open
		}
	})
}

// refusedPeek bounds the wait for the request of a stream the local server
// will not take: the relay sends it right behind the stream's header.
const refusedPeek = 50 * time.Millisecond

// refusedPeekMax bounds what is read of that request: more than the
// inspector takes of a request's head.
const refusedPeekMax = 130 << 10

// refuseLocal refuses st, whose local server could not be reached, with
// reason (the visitor's 502 says it). The request that came with the
// stream is reported like any other, with reason as its error, so that
// expose prints its line and the inspector lists it; the log gets the
// problem too, at warning level unless the caller shows events itself.
func refuseLocal(cfg *Config, st *tunnel.Stream, ins *inspect.Inspector, info inspect.ConnInfo, reason, logMsg string, logArgs ...any) {
	level := slog.LevelWarn
	if cfg.OnEvent != nil {
		level = slog.LevelDebug
	}
	cfg.Logger.Log(context.Background(), level, logMsg, logArgs...)
	if ins != nil {
		obs := ins.Observe(info)
		// The request's head may come in several reads (the relay writes
		// it 4 KiB at a time), and be as long as the relay takes (64 KiB
		// and more): read until it is whole, or the wait is over.
		buf := make([]byte, 16<<10)
		var last []byte // the end of what was read: a head may end across reads
		st.SetReadDeadline(time.Now().Add(refusedPeek))
		for n := 0; n < refusedPeekMax; {
			k, err := st.Read(buf)
			obs.Tap(true, buf[:k])
			n += k
			seen := append(last, buf[:k]...)
			if err != nil || bytes.Contains(seen, []byte("\r\n\r\n")) {
				break
			}
			last = append([]byte(nil), seen[max(0, len(seen)-3):]...)
		}
		obs.Refused(reason)
	}
	st.Refuse(proto.Errorf(proto.CodeLocalDial, "%s", reason))
}

// localHandshake runs the TLS handshake with an HTTPS local server within
// timeout.
func localHandshake(ctx context.Context, conn net.Conn, t *Tunnel, timeout time.Duration) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tc := tls.Client(conn, t.localTLSConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return tc, nil
}

// localTLSProblem says in one sentence why the TLS handshake with the
// local server failed, and what to do about it.
func localTLSProblem(local string, err error) string {
	var (
		verr *tls.CertificateVerificationError
		rerr tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &verr):
		return fmt.Sprintf("the HTTPS server on %s has a certificate this agent does not trust; give the CA that signed it (--local-ca), or skip verification (--local-insecure)", local)
	case errors.As(err, &rerr):
		return fmt.Sprintf("the server on %s does not speak TLS; drop --local-https if it serves plain HTTP", local)
	}
	return fmt.Sprintf("TLS handshake with the HTTPS server on %s failed", local)
}
