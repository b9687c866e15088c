package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"time"
)

// keepAliveTransport sends one agent session's requests (all but WebSocket
// upgrades), each on a stream kept for the visitor connection it came from
// (the pool key, see poolKey), so a visitor's keep-alive connection is one
// stream and one local connection end to end.
//
// It does what http.Transport did here without its two goroutines per
// connection: the handler's goroutine writes the request and reads the
// response itself, so a request costs no goroutine hand-offs at the relay.
// A request with a body is the exception: its body is written by a
// goroutine of its own while the response is read, as a local server may
// answer before it has read the body.
type keepAliveTransport struct {
	as *agentSession

	mu      sync.Mutex
	idle    map[string][]*idleStream // by pool key, most recent last
	nidle   int
	closed  bool
	watched map[string]bool // keys whose visitor connection will tell us it closed
}

type idleStream struct {
	c     net.Conn
	timer *time.Timer // closes it after keepAliveIdle
	until time.Time   // when it is closed if still kept; guarded by mu
}

const (
	// keepAliveIdle is how long a stream is kept for a visitor connection
	// that sends nothing more. The visitor's own connection may have
	// closed; the stream then waits out this time.
	keepAliveIdle = 60 * time.Second
	// maxIdlePerKey allows an HTTP/2 visitor's parallel requests, which
	// share one pool key, a few kept streams.
	maxIdlePerKey = 8
	// maxIdleStreams bounds the kept streams of one session; they hold
	// stream slots and local connections at the agent.
	maxIdleStreams = 512
	// maxResponseHeader bounds a response's header, interim ones
	// included; Go's default of 10 MiB per stream would let one agent make
	// the relay hold GiBs.
	maxResponseHeader = 64 << 10
)

var (
	bufReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	bufWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// errStale is a kept stream that turned out closed before the request got
// an answer: its local server closed the connection while it was idle.
var errStale = errors.New("kept stream closed by the agent's side")

func (t *keepAliveTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	key := req.URL.Host
	for {
		e := t.get(key)
		if e != nil {
			if r, ok := e.c.(interface{ Readable() bool }); ok && r.Readable() {
				// The agent's side closed it (or sent something
				// unasked) while it was kept: never send on it.
				e.c.Close()
				continue
			}
		}
		var c net.Conn
		if e != nil {
			c = e.c
		} else {
			host, _, _ := strings.Cut(key, ":")
			name, _, _ := strings.Cut(host, ".")
			var err error
			if c, err = t.as.openStream(req.Context(), name); err != nil {
				return nil, err
			}
		}
		res, err := t.roundTrip(c, e, req, key)
		if errors.Is(err, errStale) && e != nil && replayable(req) {
			continue // a fresh stream next time: get returns each kept one once
		}
		if errors.Is(err, errStale) {
			err = errors.New("the agent's side closed the connection before answering")
		}
		return res, err
	}
}

// replayable reports whether req may be sent again after a kept stream
// failed under it: no body, and a method that is safe to repeat.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// roundTrip sends req on c and reads the response header. c is closed
// unless the response's body, once read to its end, gives it back. e is
// c's entry in the pool if c was kept there, nil for a new stream.
func (t *keepAliveTransport) roundTrip(c net.Conn, e *idleStream, req *http.Request, key string) (*http.Response, error) {
	ctx := req.Context()
	// One allocation holds the exchange's state: the response body it
	// ends as, the header's reader, the deadline's lock.
	b := &keptBody{t: t, key: key, c: c, idle: e, timeout: t.as.srv.cfg.Limits.ResponseHeaderTimeout}
	// The request's context bounds the whole exchange, body included.
	b.stop = context.AfterFunc(ctx, b.cancel)
	var gate *continueGate
	fail := func(err error) (*http.Response, error) {
		gate.decide(false)
		b.stop()
		c.Close()
		return nil, roundTripErr(ctx, c, err)
	}
	if req.Body == nil || req.Body == http.NoBody {
		if err := writeRequest(c, req); err != nil {
			if e == nil {
				return fail(err) // a new stream: the agent's refusal, say
			}
			return fail(errStale)
		}
		b.await()
	} else {
		// The response header must come within the timeout of the
		// request's end, which the writer sets unless the header came
		// first; a local server may answer before it has read the body.
		b.written = make(chan error, 1)
		if expectsContinue(req) {
			// The visitor waits to hear whether the local server wants
			// the body: its own 100 Continue, a final answer, or none in
			// time. Reading the body here first would make net/http
			// answer 100 Continue on the local server's behalf.
			gate = newContinueGate(req.Body)
			wreq := *req
			wreq.Body = gate
			req = &wreq
		}
		go func() {
			err := writeRequest(c, req)
			if err != nil && gate.refused() {
				// The local server answered without the body: the
				// answer is read on, and done closes the stream.
				err = errNoContinue
			} else if err != nil && !resetByPeer(c) {
				// A request cut short: no answer can come on this stream.
				c.Close()
			} else if err == nil {
				b.await()
			}
			b.written <- err
		}()
	}
	b.br = bufReaders.Get().(*bufio.Reader)
	b.lr = io.LimitedReader{R: c, N: maxResponseHeader}
	b.br.Reset(&b.lr)
	if _, err := b.br.Peek(1); err != nil {
		b.release()
		if b.written != nil {
			gate.decide(false)
			c.Close() // the writer may be blocked on a window that never opens
			if werr := <-b.written; werr != nil && werr != errNoContinue && ctx.Err() == nil && !isTimeout(err) {
				err = werr
			}
		} else if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			err = errStale
		}
		return fail(err)
	}
	trace := httptrace.ContextClientTrace(ctx)
	var res *http.Response
	for {
		var err error
		res, err = http.ReadResponse(b.br, req)
		if err != nil {
			b.release()
			if b.lr.N <= 0 {
				err = fmt.Errorf("response header larger than %d bytes", maxResponseHeader)
			}
			return fail(err)
		}
		if res.StatusCode < 100 {
			// http.ReadResponse takes any three digits; net/http panics
			// on writing such a status to the visitor.
			b.release()
			return fail(fmt.Errorf("malformed status code %03d", res.StatusCode))
		}
		if res.StatusCode >= 200 || res.StatusCode == http.StatusSwitchingProtocols {
			gate.decide(false) // the body is not sent if it has not started
			break
		}
		if res.StatusCode == http.StatusContinue {
			gate.decide(true)
		}
		// An interim response (100 Continue, 103 Early Hints): the reverse
		// proxy passes it on to the visitor through its trace hook.
		// Never to an HTTP/1.0 visitor, which takes any status line
		// for the final one (RFC 9110 section 15.2: a server MUST NOT
		// send it a 1xx).
		if trace != nil && trace.Got1xxResponse != nil && req.ProtoAtLeast(1, 1) {
			// ReverseProxy passes an interim response's headers on as
			// they are; an HTTP/2 visitor takes a connection header
			// among them for a protocol error.
			removeHopHeaders(res.Header)
			if err := trace.Got1xxResponse(res.StatusCode, textproto.MIMEHeader(res.Header)); err != nil {
				b.release()
				return fail(err)
			}
		}
	}
	b.lr.N = math.MaxInt64 // the body is not bounded
	b.dl.Lock()
	b.headerRead = true
	if !b.canceled {
		c.SetReadDeadline(time.Time{})
	}
	b.dl.Unlock()
	b.vc, _ = ctx.Value(visitorConnKey{}).(*visitorConn)
	b.reuse = !res.Close && !req.Close && res.StatusCode != http.StatusSwitchingProtocols
	b.ReadCloser = res.Body
	res.Body = b
	return res, nil
}

// writeRequest writes req to c through a pooled buffer.
func writeRequest(c net.Conn, req *http.Request) error {
	bw := bufWriters.Get().(*bufio.Writer)
	bw.Reset(c)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	bufWriters.Put(bw)
	return err
}

// keptBody is a response body that gives its stream back for the visitor
// connection's next request once it has been read to its end. It holds
// the whole exchange's state from the request's write on (see roundTrip).
type keptBody struct {
	io.ReadCloser
	t       *keepAliveTransport
	key     string
	vc      *visitorConn // the visitor's connection; nil if unknown
	c       net.Conn
	idle    *idleStream   // c's pool entry, kept again with it; nil for a new stream
	br      *bufio.Reader // the response's reader, pooled
	lr      io.LimitedReader
	stop    func() bool // ends the context's hold on c
	written chan error  // the request body's writer, if any
	reuse   bool        // the response and request allow it
	once    sync.Once

	timeout    time.Duration // for the response header, from the request's end
	dl         sync.Mutex    // orders await against the header's arrival
	headerRead bool
	canceled   bool // the context ended: no deadline may be moved later
}

// cancel ends the exchange when the request's context ends: the visitor
// went away, or the relay is closing.
func (b *keptBody) cancel() {
	b.dl.Lock()
	b.canceled = true
	b.c.SetDeadline(time.Unix(1, 0))
	b.dl.Unlock()
}

// await starts the response header's timeout, unless the header is in.
func (b *keptBody) await() {
	b.dl.Lock()
	if !b.headerRead && !b.canceled && b.timeout > 0 {
		b.c.SetReadDeadline(time.Now().Add(b.timeout))
	}
	b.dl.Unlock()
}

// release gives the response's reader back to its pool.
func (b *keptBody) release() {
	b.br.Reset(nil)
	bufReaders.Put(b.br)
	b.br = nil
}

func (b *keptBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.finish(true)
	}
	return n, err
}

// Close before the end closes the stream first, so the body's own Close,
// which reads to the end to find a trailer, fails at once instead of
// pulling the rest of a download through the tunnel.
func (b *keptBody) Close() error {
	if b.ReadCloser == http.NoBody {
		b.finish(true) // a response without a body: done once its header is
		return nil
	}
	var err error
	closed := false
	b.once.Do(func() {
		closed = true
		b.c.Close()
		err = b.ReadCloser.Close()
		b.done(false)
	})
	if !closed {
		err = b.ReadCloser.Close()
	}
	return err
}

func (b *keptBody) finish(eof bool) {
	b.once.Do(func() { b.done(eof) })
}

func (b *keptBody) done(eof bool) {
	// Bytes read past the response's end are the local server's error,
	// and what follows them on the stream is not the next answer.
	reuse := eof && b.reuse && b.br.Buffered() == 0 && b.stop()
	if b.written != nil {
		select {
		case err := <-b.written:
			reuse = reuse && err == nil
		default:
			// The local server answered before the request body was all
			// sent: the stream is not in a state to carry another request.
			reuse = false
		}
	}
	b.release()
	if !reuse {
		b.stop()
		b.c.Close()
		return
	}
	b.c.SetDeadline(time.Time{})
	b.t.put(b.key, b.vc, b.c, b.idle)
}

// get returns a kept stream's entry for key, if there is one.
func (t *keepAliveTransport) get(key string) *idleStream {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.idle[key]
	if len(list) == 0 {
		return nil
	}
	e := list[len(list)-1]
	list[len(list)-1] = nil
	t.setList(key, list[:len(list)-1])
	t.nidle--
	e.timer.Stop()
	return e
}

// setList stores key's kept streams. An emptied list stays in the map
// (and its array for the next put) while the key's visitor connection
// is watched, as drop removes it; else it goes. t.mu must be held.
func (t *keepAliveTransport) setList(key string, list []*idleStream) {
	if len(list) == 0 && !t.watched[key] {
		delete(t.idle, key)
		return
	}
	t.idle[key] = list
}

// put keeps c for key's next request, or closes it when the session is
// closing, has kept enough, or a request to the same tunnel waits for a
// slot. vc, the visitor connection the key stands
// for, drops the key's streams when it closes. e is c's entry from an
// earlier keep, nil if it has none yet.
func (t *keepAliveTransport) put(key string, vc *visitorConn, c net.Conn, e *idleStream) {
	if sc, ok := c.(*slotConn); ok && sc.tunnel.waiting.Load() > 0 {
		c.Close() // its slot serves a request that waits for one
		return
	}
	t.mu.Lock()
	if t.closed || len(t.idle[key]) >= maxIdlePerKey || t.nidle >= maxIdleStreams {
		t.mu.Unlock()
		c.Close()
		return
	}
	if t.idle == nil {
		t.idle = make(map[string][]*idleStream)
		t.watched = make(map[string]bool)
	}
	if vc != nil && !t.watched[key] {
		if !vc.onClose(func() { t.drop(key) }) {
			t.mu.Unlock()
			c.Close() // the visitor has gone already
			return
		}
		t.watched[key] = true
	}
	// A stream kept again reuses its entry and timer: a request on a
	// keep-alive connection allocates nothing here.
	if e == nil {
		e = &idleStream{c: c, until: time.Now().Add(keepAliveIdle)}
		e.timer = time.AfterFunc(keepAliveIdle, func() { t.expire(key, e) })
	} else {
		e.until = time.Now().Add(keepAliveIdle)
		e.timer.Reset(keepAliveIdle)
	}
	t.idle[key] = append(t.idle[key], e)
	t.nidle++
	t.mu.Unlock()
}

// evictOldest closes the stream of tunnel name kept idle the longest, if
// any, so that its slot serves a request that waits for one.
func (t *keepAliveTransport) evictOldest(name string) {
	t.mu.Lock()
	var key string
	var oldest *idleStream
	for k, list := range t.idle {
		if len(list) == 0 || (k != name && !strings.HasPrefix(k, name+".")) {
			continue // another tunnel's (a name has no '.'; see poolKey)
		}
		if oldest == nil || list[0].until.Before(oldest.until) {
			key, oldest = k, list[0] // most recent last
		}
	}
	if oldest == nil {
		t.mu.Unlock()
		return
	}
	t.setList(key, slices.Delete(t.idle[key], 0, 1))
	t.nidle--
	t.mu.Unlock()
	oldest.timer.Stop()
	oldest.c.Close()
}

// drop closes the streams kept for key: its visitor connection closed.
func (t *keepAliveTransport) drop(key string) {
	t.mu.Lock()
	list := t.idle[key]
	delete(t.idle, key)
	delete(t.watched, key)
	t.nidle -= len(list)
	t.mu.Unlock()
	for _, e := range list {
		e.timer.Stop()
		e.c.Close()
	}
}

// expire closes e if it is still kept and its time has come: a timer
// that fired for an earlier keep of the same stream finds it taken, or
// kept again with a later time.
func (t *keepAliveTransport) expire(key string, e *idleStream) {
	t.mu.Lock()
	list := t.idle[key]
	i := slices.Index(list, e)
	if i < 0 || time.Now().Before(e.until) {
		t.mu.Unlock()
		return
	}
	t.setList(key, slices.Delete(list, i, i+1))
	t.nidle--
	t.mu.Unlock()
	e.c.Close()
}

// closeIdle closes every kept stream; later ones are closed at once.
func (t *keepAliveTransport) closeIdle() {
	t.mu.Lock()
	t.closed = true
	idle := t.idle
	t.idle, t.nidle = nil, 0
	t.mu.Unlock()
	for _, list := range idle {
		for _, e := range list {
			e.timer.Stop()
			e.c.Close()
		}
	}
}

// visitorConn is a visitor's connection to the relay, as the keep-alive
// transport sees it: it runs the functions registered with onClose when
// the connection closes or is taken over by a WebSocket.
type visitorConn struct {
	mu     sync.Mutex
	closed bool
	funcs  []func()
}

type visitorConnKey struct{}

// onClose registers f; it reports false, and does not keep f, if the
// connection has closed already.
func (v *visitorConn) onClose(f func()) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return false
	}
	v.funcs = append(v.funcs, f)
	return true
}

func (v *visitorConn) close() {
	v.mu.Lock()
	funcs := v.funcs
	v.closed, v.funcs = true, nil
	v.mu.Unlock()
	for _, f := range funcs {
		f()
	}
}

// expectContinueTimeout is how long a request body held for the local
// server's 100 Continue waits before it goes anyway, as with
// http.DefaultTransport's ExpectContinueTimeout: some servers send none.
const expectContinueTimeout = time.Second

// errNoContinue is the request writer's result when the local server gave
// its final answer before it asked for the request body.
var errNoContinue = errors.New("the local server answered before it asked for the request body")

// expectsContinue reports whether the visitor sent Expect: 100-continue.
func expectsContinue(req *http.Request) bool {
	return req.ProtoAtLeast(1, 1) && strings.EqualFold(strings.TrimSpace(req.Header.Get("Expect")), "100-continue")
}

// continueGate is a request body whose first read waits for the local
// server's 100 Continue, its final answer (the body is then not sent), or
// expectContinueTimeout. A nil gate's methods do nothing.
type continueGate struct {
	io.ReadCloser
	once    sync.Once
	decided chan struct{}
	send    bool // written before decided closes
	timer   *time.Timer
}

func newContinueGate(body io.ReadCloser) *continueGate {
	g := &continueGate{ReadCloser: body, decided: make(chan struct{})}
	g.timer = time.AfterFunc(expectContinueTimeout, func() { g.set(true) })
	return g
}

// decide lets the body go, or not; only the first decision counts. Only
// the goroutine that made g calls it.
func (g *continueGate) decide(send bool) {
	if g == nil {
		return
	}
	g.timer.Stop()
	g.set(send)
}

func (g *continueGate) set(send bool) {
	g.once.Do(func() {
		g.send = send
		close(g.decided)
	})
}

// refused reports whether the body was held back for good.
func (g *continueGate) refused() bool {
	if g == nil {
		return false
	}
	select {
	case <-g.decided:
		return !g.send
	default:
		return false
	}
}

func (g *continueGate) Read(p []byte) (int, error) {
	<-g.decided
	if !g.send {
		return 0, errNoContinue
	}
	return g.ReadCloser.Read(p)
}

// hopHeaders are the headers of one connection (RFC 9110 7.6.1), which a
// proxy does not pass on; ReverseProxy removes them from final responses.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopHeaders removes the headers Connection names, then hopHeaders.
func removeHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// resetByPeer reports whether the agent reset stream c: what it sent
// before the reset, an answer to an upload it stopped reading, say, is
// still to be read, and a Read fails only after it.
func resetByPeer(c net.Conn) bool {
	r, ok := c.(interface{ ResetByPeer() bool })
	return ok && r.ResetByPeer()
}
