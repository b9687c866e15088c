package relay

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/tunnel-dev/tunnel/tunnel"
)

type upgradeKey struct{}

// upgrade carries what switchProtocols needs from the handler to the
// ReverseProxy's ModifyResponse hook: the visitor's response writer, and the
// stream the transport used for the request (reported by httptrace).
type upgrade struct {
	rec     *recorder
	backend net.Conn
	counts  tunnel.Counts
}

// errUpgraded tells the error handler that the upgraded connection was
// served and has ended; there is nothing left to answer.
var errUpgraded = errors.New("upgraded connection finished")

// switchProtocols takes over a 101 response from the local server. It
// switches the visitor's connection to a byte pipe only when the request
// asked for a WebSocket upgrade and the local server really agreed to it:
// anything else would let a backend smuggle requests past the relay. Then it
// joins the two connections with tunnel.Join, which propagates half-close in
// both directions and holds no big buffer while the WebSocket is idle.
func (as *agentSession) switchProtocols(res *http.Response) error {
	up, _ := res.Request.Context().Value(upgradeKey{}).(*upgrade)
	reqType, resType := upgradeType(res.Request.Header), upgradeType(res.Header)
	switch {
	case up == nil || reqType == "":
		return errors.New("the local server answered 101 Switching Protocols to a request that asked for no upgrade")
	case !strings.EqualFold(reqType, "websocket"):
		return fmt.Errorf("upgrade to %q is not supported; only websocket", reqType)
	case !strings.EqualFold(resType, reqType):
		return fmt.Errorf("the local server switched to %q when %q was requested", resType, reqType)
	case up.backend == nil:
		return errors.New("internal error: no stream recorded for the upgrade")
	}
	body, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		return errors.New("internal error: 101 response with a read-only body")
	}
	back := &upgradedBackend{Conn: up.backend, body: body}
	conn, brw, err := up.rec.Hijack()
	if err != nil {
		back.Close()
		return fmt.Errorf("hijack visitor connection: %w", err)
	}
	// Counted before the visitor can see the 101.
	as.srv.metrics.websockets.Inc()
	defer as.srv.metrics.websockets.Dec()
	fmt.Fprintf(brw, "HTTP/1.1 101 %s\r\n", http.StatusText(http.StatusSwitchingProtocols))
	res.Header.Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		conn.Close()
		back.Close()
		return errUpgraded
	}
	visitor := net.Conn(conn)
	if brw.Reader.Buffered() > 0 {
		visitor = &bufferedVisitor{Conn: conn, r: brw.Reader}
	}
	opts := tunnel.JoinOptions{Counts: &up.counts, WriteIdleTimeout: as.srv.cfg.Limits.WriteIdleTimeout}
	if err := tunnel.JoinWith(visitor, back, opts); err != nil {
		as.log.Debug("websocket ended with error", "err", err)
	}
	return errUpgraded
}

func upgradeType(h http.Header) string {
	if !tunnel.HeaderHasToken(h, "Connection", "upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// upgradedBackend is the stream to the agent after a 101: reads go through
// the transport's response body (which may hold read-ahead bytes), and
// CloseWrite reaches the stream itself so half-close crosses the tunnel.
type upgradedBackend struct {
	net.Conn // the stream, for CloseWrite, addresses and deadlines
	body     io.ReadWriteCloser
}

func (b *upgradedBackend) Read(p []byte) (int, error)  { return b.body.Read(p) }
func (b *upgradedBackend) Write(p []byte) (int, error) { return b.body.Write(p) }
func (b *upgradedBackend) Close() error                { return b.body.Close() }
func (b *upgradedBackend) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return b.Close()
}

// bufferedVisitor returns bytes the HTTP server read ahead before reading
// the connection itself.
type bufferedVisitor struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedVisitor) Read(p []byte) (int, error) {
	if c.r.Buffered() > 0 {
		return c.r.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *bufferedVisitor) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
