package doctor

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// tempTunnel is the tunnel Run opens with agent.Listen and serves in
// process: any HTTP request gets the nonce, a WebSocket gets its messages
// echoed.
type tempTunnel struct {
	ln    *agent.Listener
	url   *url.URL
	nonce string
	// certPending: the relay is getting the name's certificate (ACME) and
	// will send a notice on notices when it is done.
	certPending bool
	notices     chan *proto.Notice // certificate notices, for any name

	srv    *http.Server
	stop   context.CancelFunc // ends the handlers, WebSockets included
	served chan struct{}      // closed when srv.Serve has returned

	mu       sync.Mutex
	closing  bool
	handlers sync.WaitGroup
}

// connect opens the temporary tunnel: the agent check.
func (d *doctor) connect(ctx context.Context) (*tempTunnel, Check) {
	c := Check{ID: CheckAgent}
	online := make(chan []proto.Granted, 1)
	notices := make(chan *proto.Notice, 16)
	var tunnels []agent.Tunnel
	if d.cfg.Name != "" {
		tunnels = []agent.Tunnel{{Name: d.cfg.Name}}
	}
	cfg := agent.Config{
		Relay:       d.cfg.Relay,
		Token:       d.cfg.Token,
		Tunnels:     tunnels,
		TLSConfig:   &tls.Config{RootCAs: d.cfg.RootCAs},
		DialContext: d.dial,
		Logger:      d.cfg.Logger,
		// Called from the agent's goroutines: never block them.
		OnEvent: func(ev agent.Event) {
			switch {
			case ev.Kind == agent.EventOnline:
				select {
				case online <- ev.Tunnels:
				default:
				}
			case ev.Kind == agent.EventNotice && (ev.Notice.Kind == proto.NoticeCertReady || ev.Notice.Kind == proto.NoticeCertFailed):
				select {
				case notices <- ev.Notice:
				default:
				}
			}
		},
	}
	lctx, cancel := d.timeout(ctx)
	defer cancel()
	start := time.Now()
	ln, err := agent.Listen(lctx, cfg)
	c.Latency = time.Since(start)
	if err != nil {
		c.Status = Fail
		c.Detail, c.Fix = d.agentFailure(lctx, err)
		return nil, c
	}
	u, err := url.Parse(ln.URL())
	if err != nil || u.Hostname() == "" {
		ln.Close()
		c.Status = Fail
		c.Detail = fmt.Sprintf("the relay granted a tunnel with the URL %q, which is not a URL", ln.URL())
		c.Fix = "upgrade the relay and this tunnel to the same version"
		return nil, c
	}
	tt := &tempTunnel{ln: ln, url: u, nonce: randomHex(16), notices: notices, served: make(chan struct{})}
	// The online event follows Listen's return at once.
	select {
	case granted := <-online:
		for _, g := range granted {
			tt.certPending = tt.certPending || g.CertPending
		}
	case <-lctx.Done():
	}
	tt.serve(ctx)

	auth := "no token needed"
	c.Status = Pass
	if d.cfg.Token != "" {
		auth = "token accepted"
		// A relay without tokens lets any agent in: the token was not
		// checked, and a wrong one would pass too.
		pctx, pcancel := d.timeout(ctx)
		if conn, err := tunnel.DialControl(pctx, d.u, tunnel.DialOptions{TLSConfig: &tls.Config{RootCAs: d.cfg.RootCAs}, DialContext: d.dial}); err == nil {
			conn.Close()
			auth = "the relay asks no token, so the one given was not checked"
			c.Status = Warn
			c.Fix = "anyone who reaches this relay can claim names: give it agent tokens (tunnel relay --token or its --config)"
		}
		pcancel()
	}
	c.Detail = fmt.Sprintf("connected to %s (%s) and got the temporary tunnel %s in %s", d.hostPort(), auth, u, roundLatency(c.Latency))
	return tt, c
}

// name is the tunnel's name, the first label of its host.
func (tt *tempTunnel) name() string {
	name, _, _ := strings.Cut(tt.url.Hostname(), ".")
	return name
}

// serve answers the public requests on the tunnel until close.
func (tt *tempTunnel) serve(ctx context.Context) {
	hctx, stop := context.WithCancel(ctx)
	tt.stop = stop
	tt.srv = &http.Server{
		Handler:           http.HandlerFunc(tt.handle),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return hctx },
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(tt.served)
		_ = tt.srv.Serve(tt.ln) // returns once close has closed the listener
	}()
}

func (tt *tempTunnel) handle(w http.ResponseWriter, r *http.Request) {
	tt.mu.Lock()
	if tt.closing {
		tt.mu.Unlock()
		return
	}
	tt.handlers.Add(1)
	tt.mu.Unlock()
	defer tt.handlers.Done()
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, tt.nonce)
		return
	}
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer ws.CloseNow()
	ws.SetReadLimit(4096)
	// r.Context ends when close stops the handlers.
	for range 16 {
		typ, msg, err := ws.Read(r.Context())
		if err != nil {
			return
		}
		if err := ws.Write(r.Context(), typ, msg); err != nil {
			return
		}
	}
}

// close releases the tunnel and waits for everything serving it.
func (tt *tempTunnel) close() {
	tt.mu.Lock()
	tt.closing = true
	tt.mu.Unlock()
	tt.stop()
	tt.srv.Close() // closes tt.ln, which releases the name at the relay
	<-tt.served
	tt.handlers.Wait()
	tt.ln.Close()
}

// publicClient returns an HTTP client for visitors' requests to the
// tunnel: each connection goes to the relay's address, with the tunnel's
// name as Host and SNI, and is used once.
func (d *doctor) publicClient() (*http.Client, func()) {
	tr := &http.Transport{
		DialContext:       d.dialRelay,
		TLSClientConfig:   &tls.Config{RootCAs: d.cfg.RootCAs},
		DisableKeepAlives: true,
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, tr.CloseIdleConnections
}

// checkHTTP sends a visitor's GET to the tunnel and expects the nonce.
func (d *doctor) checkHTTP(ctx context.Context, tt *tempTunnel) Check {
	c := Check{ID: CheckHTTP}
	ctx, cancel := d.timeout(ctx)
	defer cancel()
	client, done := d.publicClient()
	defer done()
	target := tt.url.JoinPath("/").String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		return c
	}
	req.Header.Set("User-Agent", "tunnel-doctor")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		c.Status = Fail
		c.Detail, c.Fix = d.publicFailure(ctx, "GET "+target, err)
		return c
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	c.Latency = time.Since(start)
	switch {
	case err != nil:
		c.Status = Fail
		c.Detail, c.Fix = d.publicFailure(ctx, "GET "+target, err)
	case resp.StatusCode == http.StatusOK && string(body) == tt.nonce:
		c.Status = Pass
		c.Detail = fmt.Sprintf("GET %s came back through the tunnel with its nonce in %s", target, roundLatency(c.Latency))
	default:
		c.Status = Fail
		c.Detail = fmt.Sprintf("GET %s answered %s, not the tunnel's nonce: %q", target, resp.Status, firstLine(string(body)))
		c.Fix = "something between this machine and the relay answered instead: a proxy or CDN in front of the relay must pass every request, with its Host header, to the relay"
	}
	return c
}

// checkWebSocket opens a visitor's WebSocket to the tunnel and expects its
// message echoed.
func (d *doctor) checkWebSocket(ctx context.Context, tt *tempTunnel) Check {
	c := Check{ID: CheckWebSocket}
	ctx, cancel := d.timeout(ctx)
	defer cancel()
	client, done := d.publicClient()
	defer done()
	u := *tt.url
	u.Scheme = map[string]string{"https": "wss", "http": "ws"}[u.Scheme]
	target := u.JoinPath("/").String()
	start := time.Now()
	ws, resp, err := websocket.Dial(ctx, target, &websocket.DialOptions{
		HTTPClient: client,
		HTTPHeader: http.Header{"User-Agent": {"tunnel-doctor"}},
	})
	handshake := time.Since(start)
	if err != nil {
		c.Status = Fail
		if resp != nil {
			c.Detail = fmt.Sprintf("WebSocket handshake with %s answered %s", target, resp.Status)
			c.Fix = `a proxy in front of the relay must pass WebSocket upgrades (nginx: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade")`
			return c
		}
		c.Detail, c.Fix = d.publicFailure(ctx, "WebSocket to "+target, err)
		return c
	}
	defer ws.CloseNow()
	msg := "tunnel-doctor " + tt.nonce
	echoStart := time.Now()
	err = ws.Write(ctx, websocket.MessageText, []byte(msg))
	var got []byte
	if err == nil {
		_, got, err = ws.Read(ctx)
	}
	echo := time.Since(echoStart)
	c.Latency = time.Since(start)
	switch {
	case err != nil:
		c.Status = Fail
		c.Detail = fmt.Sprintf("WebSocket to %s opened, but the echo failed: %v", target, err)
		c.Fix = "a proxy in front of the relay may close upgraded connections: it must keep them open and pass their bytes both ways"
	case string(got) != msg:
		c.Status = Fail
		c.Detail = fmt.Sprintf("WebSocket to %s echoed %q, not the message sent", target, firstLine(string(got)))
		c.Fix = "something between this machine and the relay alters WebSocket traffic: let it pass unchanged"
	default:
		ws.Close(websocket.StatusNormalClosure, "")
		c.Status = Pass
		c.Detail = fmt.Sprintf("%s echoed a message through the tunnel: handshake %s, echo %s", target, roundLatency(handshake), roundLatency(echo))
	}
	return c
}

// publicFailure explains a visitor's request that got no answer.
func (d *doctor) publicFailure(ctx context.Context, what string, err error) (detail, fix string) {
	switch {
	case isTLSError(err):
		fix = "the relay's certificate for the tunnel does not work: see TLS tunnel; visitors' browsers fail the same way"
		if c, ok := d.rep.Find(CheckTLSTunnel); ok && c.Status == Fail {
			fix = "see TLS tunnel: " + c.Fix
		}
		return fmt.Sprintf("%s: %v", what, err), fix
	case ctx.Err() != nil:
		return fmt.Sprintf("%s: no answer within %s", what, d.cfg.Timeout), "check the relay's logs for this request; a slow relay or a proxy in front of it may hold it"
	case isDialError(err):
		detail, fix = d.unreachable(err)
		return what + ": " + detail, fix
	}
	return fmt.Sprintf("%s: %v", what, err), "check the relay's logs for this request"
}

// isTLSError reports whether err is a TLS handshake failure: a
// certificate that does not verify, or the relay's alert.
func isTLSError(err error) bool {
	var verr *tls.CertificateVerificationError
	var opErr *net.OpError
	var recErr tls.RecordHeaderError
	return errors.As(err, &verr) || errors.As(err, &recErr) || errors.As(err, &opErr) && opErr.Op == "remote error"
}

// isDialError reports whether err is a failure to connect at all.
func isDialError(err error) bool {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	return errors.As(err, &dnsErr) || errors.As(err, &opErr) && opErr.Op == "dial"
}

// agentFailure explains why the agent could not get a tunnel.
func (d *doctor) agentFailure(ctx context.Context, err error) (detail, fix string) {
	detail = err.Error()
	tokenFix := "this relay needs an agent token: pass --token or set TUNNEL_TOKEN"
	if d.cfg.Token != "" {
		tokenFix = "the relay did not accept the token: pass one of its agent tokens with --token or TUNNEL_TOKEN"
	}
	name := d.cfg.Name
	var (
		uerr   *tunnel.UpgradeError
		perr   *proto.Error
		verr   *tls.CertificateVerificationError
		dnsErr *net.DNSError
	)
	switch {
	case errors.As(err, &uerr):
		switch {
		case uerr.Status == http.StatusUnauthorized || uerr.Status == http.StatusForbidden:
			fix = tokenFix
		case uerr.Status == http.StatusTooManyRequests:
			fix = "too many failed token attempts from this address: wait a minute, then pass the right token with --token or TUNNEL_TOKEN"
		case uerr.Status >= 300 && uerr.Status < 400:
			fix = "use the URL the relay redirects to in --relay (https:// for a relay with certificates)"
		case uerr.Status == http.StatusNotFound || uerr.Status == http.StatusMethodNotAllowed:
			fix = "point --relay at a tunnel relay (tunnel relay), not at another web server"
		case uerr.PlainToHTTPS():
			fix = "the relay serves HTTPS on that port: use https:// in --relay"
		case uerr.Status == http.StatusBadRequest || uerr.Status == http.StatusUpgradeRequired:
			fix = "a proxy in front of the relay must pass the Connection: Upgrade and Upgrade headers of /_tunnel/connect"
		case uerr.Status == http.StatusServiceUnavailable:
			fix = "the relay is shutting down or overloaded: try again shortly"
		default:
			fix = "check the relay's logs for why it refused the connection"
		}
	case errors.As(err, &perr):
		switch perr.Code {
		case proto.CodeUnauthorized:
			fix = tokenFix
		case proto.CodeNameTaken:
			fix = fmt.Sprintf("another agent holds %s (a running `tunnel expose -s %s`?): stop it, pick another -s, or leave -s out for a random name", name, name)
		case proto.CodeNameNotAllowed:
			fix = "this token may not claim that name: pick one it may with -s, or leave -s out"
		case proto.CodeNameInvalid:
			fix = "pick another name with -s, or leave -s out for a random one"
		case proto.CodeVersion:
			fix = "install the same version of tunnel here and on the relay"
		case proto.CodeLimit:
			fix = "this token holds as many tunnels as the relay allows: close one of them, then try again"
		default:
			fix = "check the relay's logs, then try again"
		}
	case errors.As(err, &verr):
		fix = "the agent verifies the relay's certificate as browsers do: see TLS relay"
		if c, ok := d.rep.Find(CheckTLSRelay); ok && c.Status == Fail {
			fix = c.Fix
		}
	case errors.As(err, &dnsErr):
		detail = fmt.Sprintf("%s does not resolve: %s", dnsErr.Name, describeDNSError(dnsErr))
		fix = "see DNS relay: the relay's host name must resolve"
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		detail = fmt.Sprintf("no tunnel from the relay at %s within %s", d.hostPort(), d.cfg.Timeout)
		fix = fmt.Sprintf("check that the relay runs and that no firewall drops port %s; --timeout allows more time", d.port)
	case isDialError(err):
		return d.unreachable(err)
	default:
		fix = "check --relay and the relay's logs"
	}
	return detail, fix
}

// unreachable explains a failed connection to the relay.
func (d *doctor) unreachable(err error) (detail, fix string) {
	var dnsErr *net.DNSError
	var netErr net.Error
	switch {
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("%s does not resolve: %s", dnsErr.Name, describeDNSError(dnsErr)), "see DNS relay: the relay's host name must resolve"
	case tunnel.IsConnRefused(err):
		return fmt.Sprintf("nothing answers at %s (connection refused)", d.hostPort()),
			fmt.Sprintf("start the relay (tunnel relay), check the host and port in --relay, and open port %s in the relay's firewall", d.port)
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Sprintf("no answer from %s within %s", d.hostPort(), d.cfg.Timeout),
			fmt.Sprintf("check that the relay runs and that no firewall drops port %s", d.port)
	default:
		return fmt.Sprintf("cannot reach %s: %v", d.hostPort(), err),
			fmt.Sprintf("check that the relay runs at %s and that this machine can reach it", d.hostPort())
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand documents it)
	return hex.EncodeToString(b)
}
