package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

type upgradeKey struct{}

// upgrade carries what switchProtocols needs from the handler to the
// ReverseProxy's ModifyResponse hook: the visitor's response writer, and
// the byte counts of the WebSocket once it runs.
type upgrade struct {
	rec    *recorder
	v      *visitReq
	counts tunnel.Counts
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
	}
	back, ok := res.Body.(*upgradedStream)
	if !ok {
		return errors.New("internal error: 101 response not read by upgradeTransport")
	}
	conn, brw, err := up.rec.Hijack()
	if err != nil {
		back.Close()
		return fmt.Errorf("hijack visitor connection: %w", err)
	}
	// Counted before the visitor can see the 101.
	as.srv.metrics.websockets.Inc()
	fmt.Fprintf(brw, "HTTP/1.1 101 %s\r\n", http.StatusText(http.StatusSwitchingProtocols))
	res.Header.Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		as.srv.metrics.websockets.Dec()
		conn.Close()
		back.Close()
		return errUpgraded
	}
	visitor := net.Conn(conn)
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the visitor sent after its request: keep a copy, not the
		// server's 4 KiB reader.
		early, _ := brw.Reader.Peek(n)
		visitor = &bufferedVisitor{Conn: conn, early: bytes.Clone(early)}
	}
	// The WebSocket runs on the join's own goroutines, and the handler
	// returns: the HTTP server's connection state (its 4 KiB reader and
	// writer, the request, the handler's deep stack) is then garbage,
	// and an idle WebSocket holds its two connections, and a goroutine
	// on a small stack for a side that cannot park (tunnel.Park). When the
	// WebSocket ends, the join accounts for the request and releases its
	// place in the shutdown's wait.
	up.v.detached = true
	res.Body = http.NoBody // ReverseProxy closes it after this error
	// The recorder outlives the handler (the goroutine reads its counts):
	// drop its reference to the server's response, which would keep the
	// whole connection state alive. Nothing writes to it after the 101.
	up.rec.ResponseWriter = nil
	// Likewise keep only what the access log and the event need of the
	// request, not its headers.
	r := up.v.req
	up.v.req = &http.Request{Method: r.Method, URL: &url.URL{Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}, Host: r.Host, RemoteAddr: r.RemoteAddr}
	opts := tunnel.JoinOptions{Counts: &up.counts, WriteIdleTimeout: as.srv.cfg.Limits.WriteIdleTimeout}
	tunnel.JoinAsync(visitor, back, opts, func(err error) {
		defer as.srv.reqWG.Done()
		if err != nil {
			as.log.Debug("websocket ended with error", "err", err)
		}
		as.srv.metrics.websockets.Dec()
		up.v.finish()
	})
	return errUpgraded
}

func upgradeType(h http.Header) string {
	if !tunnel.HeaderHasToken(h, "Connection", "upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// upgradeTransport sends the requests that ask for a WebSocket upgrade,
// each on a stream of its own, and reads the response itself. http.Transport
// would do the same but then keep, for the life of the WebSocket, a 4 KiB
// reader, a 4 KiB writer and a goroutine per connection; here the stream is
// all that stays once the 101 is through, and the reader that parsed the
// response is dropped as soon as its read-ahead is consumed.
type upgradeTransport struct {
	as *agentSession
}

// upgradeReadBuf is the read-ahead used for a response's header: header
// lines longer than it are still read whole.
const upgradeReadBuf = 1 << 10

func (t upgradeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	host, _, _ := strings.Cut(req.URL.Host, ":")
	name, _, _ := strings.Cut(host, ".")
	ctx := req.Context()
	st, err := t.as.openStream(ctx, name)
	if err != nil {
		return nil, err
	}
	// Until the response header is in, the request's context bounds every
	// read and write on the stream, and the response header timeout runs
	// from the end of the request (its body included), as for other
	// requests; the timeout is set first, so that a cancellation cannot
	// be overwritten.
	rht := t.as.srv.cfg.Limits.ResponseHeaderTimeout
	hasBody := req.Body != nil && req.Body != http.NoBody
	if rht > 0 && !hasBody {
		st.SetDeadline(time.Now().Add(rht))
	}
	cancel := func() { st.SetDeadline(time.Unix(1, 0)) }
	stop := context.AfterFunc(ctx, cancel)
	var res *http.Response
	var br *bufio.Reader
	if a, ok := st.(interface{ AwaitReply() error }); ok && hasBody {
		// A body may trickle in for as long as the request's deadline
		// allows; the agent's answer, and the opening slot it frees,
		// must not wait for it.
		err = a.AwaitReply()
	}
	if err == nil {
		var written func() error
		if rht > 0 && hasBody {
			written = func() error {
				if !stop() {
					return ctx.Err()
				}
				st.SetDeadline(time.Now().Add(rht))
				stop = context.AfterFunc(ctx, cancel)
				return nil
			}
		}
		res, br, err = roundTripOn(st, req, written)
	}
	if err != nil || ctx.Err() != nil {
		stop()
		st.Close()
		return nil, roundTripErr(ctx, st, err)
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// The WebSocket outlives the request: it is no longer bound by
		// the request's context.
		if !stop() {
			st.Close()
			return nil, ctx.Err()
		}
		st.SetDeadline(time.Time{})
		res.Body = &upgradedStream{Conn: st, br: br}
	} else {
		// Any other answer ends the stream with its body, which stays
		// bound by the request's context: a visitor that leaves frees
		// the stream at once. It is not reused for another request.
		st.SetDeadline(time.Time{})
		res.Body = &closingBody{ReadCloser: res.Body, c: st, stop: stop}
	}
	return res, nil
}

// maxUpgradeResponseHeader bounds the response header of an upgrade, as
// the keep-alive transport's MaxResponseHeaderBytes bounds the others.
const maxUpgradeResponseHeader = 64 << 10

// roundTripOn writes req on c, calls written (if not nil), and reads the
// response, skipping interim (1xx) responses other than 101. The header,
// interim ones included, may be at most maxUpgradeResponseHeader bytes.
func roundTripOn(c net.Conn, req *http.Request, written func() error) (*http.Response, *bufio.Reader, error) {
	if err := req.Write(c); err != nil {
		return nil, nil, err
	}
	if written != nil {
		if err := written(); err != nil {
			return nil, nil, err
		}
	}
	lr := &io.LimitedReader{R: c, N: maxUpgradeResponseHeader}
	br := bufio.NewReaderSize(lr, upgradeReadBuf)
	for {
		res, err := http.ReadResponse(br, req)
		if err != nil {
			if lr.N <= 0 {
				err = fmt.Errorf("response header larger than %d bytes", maxUpgradeResponseHeader)
			}
			return nil, nil, err
		}
		if res.StatusCode < 200 && res.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		lr.N = math.MaxInt64 // the body, or the upgraded bytes, are not bounded
		return res, br, nil
	}
}

// closingBody closes the stream with the response body.
type closingBody struct {
	io.ReadCloser
	c    net.Conn
	stop func() bool // ends the request context's hold on c
}

// Close closes the stream first, so that the body's own Close, which reads
// to the end, fails at once instead of pulling the rest through.
func (b *closingBody) Close() error {
	b.stop()
	b.c.Close()
	return b.ReadCloser.Close()
}

// upgradedStream is the stream to the agent after a 101: reads first
// return what the response parser read ahead, then go to the stream.
// CloseWrite and Shrink reach the stream, so half-close crosses the tunnel
// and Join can release the stream's idle buffer.
type upgradedStream struct {
	net.Conn               // the stream (a slotConn)
	br       *bufio.Reader // read-ahead of the response; nil once drained
}

func (u *upgradedStream) Read(p []byte) (int, error) {
	if u.br != nil {
		if u.br.Buffered() > 0 {
			return u.br.Read(p)
		}
		u.br = nil
	}
	return u.Conn.Read(p)
}

func (u *upgradedStream) CloseWrite() error {
	return u.Conn.(interface{ CloseWrite() error }).CloseWrite()
}

// Abort reaches the stream, so that an error ends it as one at the agent.
func (u *upgradedStream) Abort() {
	if a, ok := u.Conn.(interface{ Abort() }); ok {
		a.Abort()
		return
	}
	u.Conn.Close()
}

// WaitRead lets Join wait for the stream without a buffer.
func (u *upgradedStream) WaitRead() {
	if u.br != nil && u.br.Buffered() > 0 {
		return
	}
	tunnel.WaitRead(u.Conn)
}

// Park lets Join's idle direction wait for the stream without a goroutine.
func (u *upgradedStream) Park(resume func()) bool {
	if u.br != nil && u.br.Buffered() > 0 {
		return false
	}
	return tunnel.Park(u.Conn, resume)
}

// Unpark passes Join's wake-up on to the stream.
func (u *upgradedStream) Unpark() { tunnel.Unpark(u.Conn) }

func (u *upgradedStream) Shrink() {
	if s, ok := u.Conn.(interface{ Shrink() }); ok {
		s.Shrink()
	}
}

// bufferedVisitor returns bytes the HTTP server read ahead before reading
// the connection itself.
type bufferedVisitor struct {
	net.Conn
	early []byte // what the visitor sent before the switch; nil once read
}

func (c *bufferedVisitor) Read(p []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(p, c.early)
		c.early = c.early[n:]
		if len(c.early) == 0 {
			c.early = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// WaitRead lets Join wait for the visitor without a buffer.
func (c *bufferedVisitor) WaitRead() {
	if len(c.early) > 0 {
		return
	}
	tunnel.WaitRead(c.Conn)
}

// Park lets Join's idle direction wait for the visitor without a goroutine,
// once the early bytes are read.
func (c *bufferedVisitor) Park(resume func()) bool {
	if len(c.early) > 0 {
		return false
	}
	return tunnel.Park(c.Conn, resume)
}

// Unpark passes Join's wake-up on to the visitor's connection.
func (c *bufferedVisitor) Unpark() { tunnel.Unpark(c.Conn) }

// Abort lets Join's abort reach the visitor's connection as a reset.
func (c *bufferedVisitor) Abort() {
	if a, ok := c.Conn.(interface{ Abort() }); ok {
		a.Abort()
		return
	}
	c.Conn.Close()
}

func (c *bufferedVisitor) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
