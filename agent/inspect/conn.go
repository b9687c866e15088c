package inspect

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// parseBuf is the HTTP parser's read-ahead per direction. It is small
// because every observed HTTP connection, idle keep-alive ones included,
// holds two (a WebSocket drops them); longer header lines are still read
// whole.
const parseBuf = 4 << 10

// Directions of a connection, as indexes.
const (
	dirIn  = 0 // visitor → local server: requests, client frames
	dirOut = 1 // local server → visitor: responses, server frames
)

var dirNames = [2]string{"in", "out"}

// ConnInfo says whose connection a Conn observes, and how to reach its
// local server again for a replay.
type ConnInfo struct {
	Tunnel string // the public name
	Local  string // the local target it was dialled at
	Remote string // the visitor's address
	// TLS is the client configuration the connection to Local was made
	// with when the local server speaks HTTPS; nil means plain HTTP.
	// Replays of the connection's requests use it too, so they reach the
	// server by the same name, verified the same way. It is shared, not
	// copied: do not modify it afterwards.
	TLS *tls.Config
}

// Conn observes one connection between the relay and the local server: it
// parses HTTP/1.1 requests and responses, in order on a keep-alive
// connection, and after a WebSocket upgrade the frames both ways. Feed it
// with Tap; Close it once the connection has ended.
//
// HTTP is parsed on two goroutines, one per direction, each reading a feed
// through a bufio.Reader. Once a WebSocket has begun, they hand their
// direction over to a frameParser that Tap drives itself and end: an idle
// WebSocket holds no goroutine and no buffer of the inspector's.
type Conn struct {
	in    *Inspector
	info  ConnInfo
	dirs  [2]direction
	total [2]atomic.Int64 // bytes tapped per direction
	seq   atomic.Int64    // chunks tapped, both directions
	wg    sync.WaitGroup

	mu     sync.Mutex
	open   []*pending // requests not yet reported
	ws     *wsState
	wsBase [2]int64 // bytes per direction before the WebSocket began
}

// direction is where one direction's taps go: the HTTP parser's feed, then
// after the switch to WebSocket the frame parser, then (capture over)
// nowhere. mu orders each tap with the switch, so that no byte is lost,
// repeated or reordered on the way.
type direction struct {
	mu     sync.Mutex
	feed   *feed
	frames *frameParser
}

// pending is a request waiting for its response.
type pending struct {
	ex       *Exchange
	req      *http.Request
	bodyDone chan struct{} // closed when the request body was read (or not)
	wantWS   bool          // asked for a WebSocket
	upgrade  bool          // asked for any protocol switch
	switched chan *wsState // the response parser's verdict on an upgrade
	once     sync.Once
}

func (p *pending) resolve(ws *wsState) {
	p.once.Do(func() { p.switched <- ws })
}

// Observe starts observing a connection. The caller must call Tap with its
// bytes and Close when it has ended.
func (in *Inspector) Observe(info ConnInfo) *Conn {
	c := &Conn{in: in, info: info}
	fin, fout := newFeed(), newFeed()
	c.dirs[dirIn].feed, c.dirs[dirOut].feed = fin, fout
	// Local to the parsers, so that nothing of them stays once they end.
	reqs := make(chan *pending, 16) // parsed requests, for the response parser
	respDone := make(chan struct{}) // closed when the response parser has ended
	c.wg.Go(func() { c.parseRequests(fin, reqs, respDone) })
	c.wg.Go(func() { c.parseResponses(fout, reqs, respDone) })
	return c
}

// Tap takes a chunk that went from the visitor to the local server
// (fromVisitor) or back. Before a WebSocket it queues a copy for the HTTP
// parser; after, it parses the frames itself, which takes a few steps per
// chunk and copies at most a frame's preview. It never blocks on a parser.
// Tap may be called for the two directions at once, but for each one from
// one goroutine at a time, in order.
func (c *Conn) Tap(fromVisitor bool, p []byte) {
	d := dirOut
	if fromVisitor {
		d = dirIn
	}
	c.total[d].Add(int64(len(p)))
	now, seq := time.Now(), c.seq.Add(1)
	h := &c.dirs[d]
	h.mu.Lock()
	switch {
	case h.frames != nil:
		h.frames.push(c.in, p, now, seq)
	case h.feed != nil:
		h.feed.write(p, now, seq)
	}
	h.mu.Unlock()
}

// detach stops direction d's feed and forgets it: its parser has ended.
func (c *Conn) detach(d int) {
	h := &c.dirs[d]
	h.mu.Lock()
	if h.feed != nil {
		h.feed.stop()
		h.feed = nil
	}
	h.mu.Unlock()
}

// Close ends the observation: the parsers finish what they were given, and
// requests still without a response and an open WebSocket are reported.
func (c *Conn) Close() {
	for d := range c.dirs {
		h := &c.dirs[d]
		h.mu.Lock()
		if h.feed != nil {
			h.feed.close()
		}
		h.mu.Unlock()
	}
	c.wg.Wait()
	// The frame parsers, if any, now hold everything: a frame they are
	// still in was cut short.
	for d := range c.dirs {
		h := &c.dirs[d]
		h.mu.Lock()
		if h.frames != nil {
			h.frames.end(c.in)
		}
		h.mu.Unlock()
	}
	now := time.Now()
	c.mu.Lock()
	open, ws := c.open, c.ws
	c.open = nil
	c.mu.Unlock()
	for _, p := range open {
		if p.ex.Error == "" {
			p.ex.Error = "no response: the connection ended first"
		}
		p.ex.Duration = Duration(now.Sub(p.ex.Time))
		c.in.addExchange(p.ex)
	}
	if ws != nil {
		c.in.closeWS(ws, now, c.total[dirIn].Load()-c.wsBase[dirIn], c.total[dirOut].Load()-c.wsBase[dirOut])
	}
}

// consumed is the offset of the next byte br will return.
func consumed(f *feed, br *bufio.Reader) int64 { return f.offset() - int64(br.Buffered()) }

func (c *Conn) parseRequests(f *feed, reqs chan<- *pending, respDone <-chan struct{}) {
	br := bufio.NewReaderSize(f, parseBuf)
	defer close(reqs)
	defer c.detach(dirIn)
	for first := true; ; first = false {
		if _, err := br.Peek(1); err != nil {
			return
		}
		start := f.timeAt(consumed(f, br))
		req, err := http.ReadRequest(br)
		if err != nil {
			if first && !errors.Is(err, errOverrun) {
				// Not HTTP: count bytes only, for both directions.
				c.in.log.Debug("inspect: not an HTTP request; counting bytes only", "tunnel", c.info.Tunnel, "err", err)
				c.detach(dirOut)
			}
			return
		}
		ex := &Exchange{
			Tunnel: c.info.Tunnel, Local: c.info.Local, Remote: c.info.Remote, Time: start,
			Method: req.Method, Path: req.RequestURI, Proto: req.Proto, Host: req.Host,
			RequestHeader: req.Header, localTLS: c.info.TLS,
		}
		if len(req.TransferEncoding) > 0 {
			ex.RequestHeader.Set("Transfer-Encoding", strings.Join(req.TransferEncoding, ", "))
		}
		if req.ContentLength > 0 && len(req.TransferEncoding) == 0 {
			ex.RequestHeader.Set("Content-Length", fmt.Sprint(req.ContentLength))
		}
		p := &pending{
			ex: ex, req: req, bodyDone: make(chan struct{}),
			wantWS:   headerHas(req.Header, "Connection", "upgrade") && headerHas(req.Header, "Upgrade", "websocket"),
			switched: make(chan *wsState, 1),
			upgrade:  headerHas(req.Header, "Connection", "upgrade"),
		}
		c.mu.Lock()
		c.open = append(c.open, p)
		c.mu.Unlock()
		select {
		case reqs <- p:
		case <-respDone:
			close(p.bodyDone)
			return
		}
		ex.RequestBody, err = c.in.capture(req.Body)
		if err != nil {
			// Before bodyDone: the response parser reads ex once it is closed.
			ex.Error = captureError("request body", err)
			close(p.bodyDone)
			return
		}
		close(p.bodyDone)
		if p.upgrade {
			var ws *wsState
			select {
			case ws = <-p.switched:
			case <-respDone:
				select {
				case ws = <-p.switched:
				default:
				}
			}
			if ws != nil {
				c.startFrames(dirIn, f, br, ws)
				return
			}
			if p.ex.Status == http.StatusSwitchingProtocols || p.ex.Error != "" {
				return // another protocol, or the response could not be read
			}
		}
	}
}

func (c *Conn) parseResponses(f *feed, reqs <-chan *pending, respDone chan<- struct{}) {
	br := bufio.NewReaderSize(f, parseBuf)
	defer close(respDone)
	defer c.detach(dirOut)
	for p := range reqs {
		ws, ok := c.parseResponse(f, br, p)
		p.resolve(ws)
		if ws != nil {
			c.startFrames(dirOut, f, br, ws)
			return
		}
		if !ok {
			return
		}
	}
}

// parseResponse reads the response to p and reports the exchange. It
// returns the WebSocket session if the response switched to one, and
// whether parsing can go on.
func (c *Conn) parseResponse(f *feed, br *bufio.Reader, p *pending) (*wsState, bool) {
	ex := p.ex
	// ex is shared with the request parser until bodyDone: write it after.
	if _, err := br.Peek(1); err != nil {
		if errors.Is(err, errOverrun) {
			<-p.bodyDone
			ex.Error = captureError("response", err)
		}
		return nil, false // reported by Close
	}
	resp, err := http.ReadResponse(br, p.req)
	// Interim responses (100 Continue, 103 Early Hints) precede the real one.
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
		resp, err = http.ReadResponse(br, p.req)
	}
	if err != nil {
		<-p.bodyDone
		ex.Error = captureError("response", err)
		return nil, false
	}
	ex.Status = resp.StatusCode
	ex.StatusText = strings.TrimSpace(strings.TrimPrefix(resp.Status, fmt.Sprint(resp.StatusCode)))
	ex.ResponseHeader = resp.Header
	if len(resp.TransferEncoding) > 0 {
		ex.ResponseHeader.Set("Transfer-Encoding", strings.Join(resp.TransferEncoding, ", "))
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		ex.Duration = Duration(f.timeAt(consumed(f, br) - 1).Sub(ex.Time))
		<-p.bodyDone
		if !p.wantWS || !headerHas(resp.Header, "Upgrade", "websocket") {
			c.report(p)
			return nil, false // another protocol: count bytes only
		}
		ws := c.in.openWS(ex, c.info)
		c.mu.Lock()
		c.ws = ws
		c.mu.Unlock()
		c.report(p)
		return ws, true
	}
	body, err := c.in.capture(resp.Body)
	ex.ResponseBody = body
	ex.Duration = Duration(f.timeAt(consumed(f, br) - 1).Sub(ex.Time))
	<-p.bodyDone
	if err != nil {
		ex.Error = captureError("response body", err)
		return nil, false
	}
	c.report(p)
	return nil, true
}

// report hands a finished exchange to the inspector.
func (c *Conn) report(p *pending) {
	c.mu.Lock()
	if i := slices.Index(c.open, p); i >= 0 {
		// Delete clears the slot it frees: the request must not stay
		// reachable from a long-lived connection.
		c.open = slices.Delete(c.open, i, i+1)
	}
	c.mu.Unlock()
	c.in.addExchange(p.ex)
}

func captureError(what string, err error) string {
	if errors.Is(err, errOverrun) {
		return "capture stopped: the inspector fell behind the traffic"
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return what + " cut short: the connection ended"
	}
	return "capture stopped: " + what + " is not valid HTTP/1.1: " + err.Error()
}

// capture reads a body to its end, keeping the first bodyCap bytes.
func (in *Inspector) capture(r io.Reader) (Body, error) {
	var b Body
	if r == nil || r == http.NoBody {
		return b, nil
	}
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		b.Size += int64(n)
		if keep := min(n, in.opts.BodyCap-len(b.Data)); keep > 0 {
			b.Data = append(b.Data, buf[:keep]...)
		}
		if err == io.EOF {
			b.Truncated = int64(len(b.Data)) < b.Size
			return b, nil
		}
		if err != nil {
			b.Truncated = true
			return b, err
		}
	}
}

// headerHas reports whether a comma-separated header lists token.
func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
