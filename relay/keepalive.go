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
		c, reused := t.get(key)
		if c == nil {
			host, _, _ := strings.Cut(key, ":")
			name, _, _ := strings.Cut(host, ".")
			var err error
			if c, err = t.as.openStream(req.Context(), name); err != nil {
				return nil, err
			}
		}
		res, err := t.roundTrip(c, req, key, reused)
		if errors.Is(err, errStale) && reused && replayable(req) {
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
// unless the response's body, once read to its end, gives it back.
func (t *keepAliveTransport) roundTrip(c net.Conn, req *http.Request, key string, reused bool) (*http.Response, error) {
	ctx := req.Context()
	// The request's context bounds the whole exchange, body included.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		c.Close()
		return nil, roundTripErr(ctx, c, err)
	}
	// The response header must come within the timeout of the request's
	// end. With a body the writer sets it, unless the header came first.
	timeout := t.as.srv.cfg.Limits.ResponseHeaderTimeout
	var (
		dl         sync.Mutex
		headerRead bool
	)
	await := func() {
		dl.Lock()
		if !headerRead && timeout > 0 {
			c.SetReadDeadline(time.Now().Add(timeout))
		}
		dl.Unlock()
	}
	var written chan error // nil: written before the response was read
	if req.Body == nil || req.Body == http.NoBody {
		if err := writeRequest(c, req); err != nil {
			if !reused {
				return fail(err) // a new stream: the agent's refusal, say
			}
			return fail(errStale)
		}
		await()
	} else {
		written = make(chan error, 1)
		go func() {
			err := writeRequest(c, req)
			if err != nil {
				// A request cut short: no answer can come on this stream.
				c.Close()
			} else {
				await()
			}
			written <- err
		}()
	}
	br := bufReaders.Get().(*bufio.Reader)
	lr := &io.LimitedReader{R: c, N: maxResponseHeader}
	br.Reset(lr)
	release := func() {
		br.Reset(nil)
		bufReaders.Put(br)
	}
	if _, err := br.Peek(1); err != nil {
		release()
		if written != nil {
			c.Close() // the writer may be blocked on a window that never opens
			if werr := <-written; werr != nil && ctx.Err() == nil && !isTimeout(err) {
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
		res, err = http.ReadResponse(br, req)
		if err != nil {
			release()
			if lr.N <= 0 {
				err = fmt.Errorf("response header larger than %d bytes", maxResponseHeader)
			}
			return fail(err)
		}
		if res.StatusCode >= 200 || res.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// An interim response (100 Continue, 103 Early Hints): the reverse
		// proxy passes it on to the visitor through its trace hook.
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(res.StatusCode, textproto.MIMEHeader(res.Header)); err != nil {
				release()
				return fail(err)
			}
		}
	}
	lr.N = math.MaxInt64 // the body is not bounded
	dl.Lock()
	headerRead = true
	c.SetReadDeadline(time.Time{})
	dl.Unlock()
	vc, _ := ctx.Value(visitorConnKey{}).(*visitorConn)
	res.Body = &keptBody{
		ReadCloser: res.Body, t: t, key: key, vc: vc, c: c, release: release, stop: stop, written: written,
		reuse: !res.Close && !req.Close && res.StatusCode != http.StatusSwitchingProtocols,
	}
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
// connection's next request once it has been read to its end.
type keptBody struct {
	io.ReadCloser
	t       *keepAliveTransport
	key     string
	vc      *visitorConn // the visitor's connection; nil if unknown
	c       net.Conn
	release func()      // gives the reader back
	stop    func() bool // ends the context's hold on c
	written chan error  // the request body's writer, if any
	reuse   bool        // the response and request allow it
	once    sync.Once
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
	reuse := eof && b.reuse && b.stop()
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
	b.t.put(b.key, b.vc, b.c)
}

// get returns a kept stream for key, if there is one.
func (t *keepAliveTransport) get(key string) (net.Conn, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.idle[key]
	if len(list) == 0 {
		return nil, false
	}
	e := list[len(list)-1]
	list[len(list)-1] = nil
	if list = list[:len(list)-1]; len(list) == 0 {
		delete(t.idle, key)
	} else {
		t.idle[key] = list
	}
	t.nidle--
	e.timer.Stop()
	return e.c, true
}

// put keeps c for key's next request, or closes it when the session is
// closing or has kept enough. vc, the visitor connection the key stands
// for, drops the key's streams when it closes.
func (t *keepAliveTransport) put(key string, vc *visitorConn, c net.Conn) {
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
	e := &idleStream{c: c}
	e.timer = time.AfterFunc(keepAliveIdle, func() { t.expire(key, e) })
	t.idle[key] = append(t.idle[key], e)
	t.nidle++
	t.mu.Unlock()
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

// expire closes e if it is still kept.
func (t *keepAliveTransport) expire(key string, e *idleStream) {
	t.mu.Lock()
	list := t.idle[key]
	i := -1
	for j, x := range list {
		if x == e {
			i = j
		}
	}
	if i < 0 {
		t.mu.Unlock()
		return
	}
	list = append(list[:i], list[i+1:]...)
	if len(list) == 0 {
		delete(t.idle, key)
	} else {
		t.idle[key] = list
	}
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
