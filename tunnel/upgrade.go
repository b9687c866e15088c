package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
)

// HandshakeTimeout bounds the control-connection upgrade when the caller's
// context has no earlier deadline.
const HandshakeTimeout = 15 * time.Second

// UpgradeError is the relay's refusal of a control connection: the HTTP
// status and the one-line reason from the response body.
type UpgradeError struct {
	Status int
	Reason string
}

func (e *UpgradeError) Error() string {
	msg := fmt.Sprintf("relay refused the connection: %d %s", e.Status, http.StatusText(e.Status))
	if e.Reason != "" && !strings.HasPrefix(e.Reason, "<") { // not an HTML page
		msg += ": " + e.Reason
	}
	switch {
	case e.PlainToHTTPS():
		msg += " (the relay serves HTTPS on that port: use https:// in the relay URL)"
	case e.Status == http.StatusNotFound, e.Status == http.StatusMethodNotAllowed:
		msg += " (is the relay URL that of a tunnel relay?)"
	case e.Status == http.StatusUpgradeRequired, e.Status == http.StatusBadRequest:
		msg += " (a proxy in front of the relay must pass the Connection and Upgrade headers)"
	}
	return msg
}

// PlainToHTTPS reports whether the refusal is Go's answer to plain HTTP
// sent to an HTTPS port: an http:// relay URL for a relay with TLS.
func (e *UpgradeError) PlainToHTTPS() bool {
	return e.Status == http.StatusBadRequest && strings.Contains(e.Reason, "HTTP request to an HTTPS server")
}

// DialOptions configures DialControl. The zero value dials with net.Dialer
// and the system's roots for https relays.
type DialOptions struct {
	// Token is sent as "Authorization: Bearer <token>" when not empty.
	Token string
	// TLSConfig is used for https relays; if nil, a config with the system
	// roots is used. ServerName defaults to the relay's host.
	TLSConfig *tls.Config
	// DialContext dials the TCP connection; if nil, net.Dialer is used.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// CheckToken refuses a token that holds an environment file's comment: a
// space or tab followed by '#'. systemd's EnvironmentFile, Docker's
// --env-file and Compose take everything after the '=' as the value, so
// "TUNNEL_TOKEN=abc   # for the laptop" makes a token no agent has.
func CheckToken(token string) error {
	if strings.Contains(token, " #") || strings.Contains(token, "\t#") {
		return errors.New(`holds " #…", a comment after the value in an environment file? There the comment is part of the value: put it on a line of its own`)
	}
	return nil
}

// DialControl connects to the relay at relayURL ("http://host:port" or
// "https://host") and performs the upgrade of the control connection. On
// success the connection is ready for Client.
func DialControl(ctx context.Context, relayURL *url.URL, opts DialOptions) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, HandshakeTimeout)
		defer cancel()
	}
	addr, err := RelayAddr(relayURL)
	if err != nil {
		return nil, err
	}
	dial := opts.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial relay %s: %w", addr, err)
	}
	clear := deadline(ctx, conn)
	conn, err = handshake(ctx, conn, relayURL, opts)
	if err != nil {
		clear()
		conn.Close()
		return nil, err
	}
	clear()
	return conn, nil
}

// RelayAddr returns the host:port to dial for a relay URL.
func RelayAddr(u *url.URL) (string, error) {
	port := u.Port()
	switch u.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "https":
		if port == "" {
			port = "443"
		}
	default:
		return "", fmt.Errorf("relay URL %q: scheme must be http or https", u.String())
	}
	if u.Hostname() == "" {
		return "", fmt.Errorf("relay URL %q has no host", u.String())
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

func handshake(ctx context.Context, conn net.Conn, relayURL *url.URL, opts DialOptions) (net.Conn, error) {
	if relayURL.Scheme == "https" {
		cfg := opts.TLSConfig.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg.ServerName = relayURL.Hostname()
		}
		// The upgrade is an HTTP/1.1 mechanism.
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			var verr *tls.CertificateVerificationError
			if errors.As(err, &verr) {
				return conn, fmt.Errorf("relay certificate not trusted (%w); for a private CA pass its certificate with --ca-file", err)
			}
			return conn, fmt.Errorf("TLS handshake with relay: %w", ctxErr(ctx, err))
		}
		conn = tc
	}
	req := &http.Request{
		Method:     http.MethodGet,
		URL:        &url.URL{Path: proto.ConnectPath},
		Host:       relayURL.Host,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header: http.Header{
			"Connection": {"Upgrade"},
			"Upgrade":    {proto.UpgradeProtocol},
			"User-Agent": {"tunnel-agent"},
		},
	}
	if opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+opts.Token)
	}
	if err := req.Write(conn); err != nil {
		return conn, fmt.Errorf("send upgrade request: %w", ctxErr(ctx, err))
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return conn, fmt.Errorf("read upgrade response: %w", ctxErr(ctx, err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		reason := strings.TrimSpace(strings.SplitN(string(body), "\n", 2)[0])
		if loc := resp.Header.Get("Location"); resp.StatusCode/100 == 3 && loc != "" {
			reason = "redirected to " + loc + "; use that scheme and host in the relay URL"
		}
		return conn, &UpgradeError{Status: resp.StatusCode, Reason: reason}
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), proto.UpgradeProtocol) {
		return conn, fmt.Errorf("relay answered 101 with Upgrade %q, want %q", resp.Header.Get("Upgrade"), proto.UpgradeProtocol)
	}
	if br.Buffered() > 0 {
		return &bufferedConn{Conn: conn, r: br}, nil
	}
	return conn, nil
}

// ErrNotUpgrade is returned by AcceptControl for a request that is not a
// control-connection upgrade.
var ErrNotUpgrade = errors.New("not a tunnel upgrade request: want GET with Connection: Upgrade and Upgrade: " + proto.UpgradeProtocol)

// IsControlRequest reports whether r asks for the control-connection upgrade.
func IsControlRequest(r *http.Request) bool {
	return r.Method == http.MethodGet &&
		r.URL.Path == proto.ConnectPath &&
		HeaderHasToken(r.Header, "Connection", "upgrade") &&
		HeaderHasToken(r.Header, "Upgrade", proto.UpgradeProtocol)
}

// AcceptControl performs the relay's side of the upgrade: it hijacks the
// HTTP/1.1 connection, answers 101 and returns the raw connection, ready for
// Server. Callers check authentication before calling it.
func AcceptControl(w http.ResponseWriter, r *http.Request) (net.Conn, error) {
	if !IsControlRequest(r) {
		return nil, ErrNotUpgrade
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, fmt.Errorf("hijack control connection: %w", err)
	}
	// http.Server may have set deadlines for reading the request.
	conn.SetDeadline(time.Time{})
	conn.SetWriteDeadline(time.Now().Add(WriteTimeout))
	_, err = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+proto.UpgradeProtocol+"\r\n\r\n")
	conn.SetWriteDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("answer control upgrade: %w", err)
	}
	if brw.Reader.Buffered() > 0 {
		return &bufferedConn{Conn: conn, r: brw.Reader}, nil
	}
	return conn, nil
}

// HeaderHasToken reports whether a comma-separated header such as
// Connection lists token, case-insensitively.
func HeaderHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// bufferedConn returns bytes a bufio.Reader read ahead before reading the
// connection itself.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.r.Buffered() > 0 {
		return c.r.Read(p)
	}
	return c.Conn.Read(p)
}
