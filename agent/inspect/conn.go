package inspect

import (
	"crypto/tls"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

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
// Tap parses the bytes itself, as they pass: HTTP with an httpParser per
// direction, then after a WebSocket upgrade with a frameParser per
// direction. No goroutine runs for a Conn, and between messages it holds
// no buffer: an idle connection, keep-alive or WebSocket, costs the Conn.
type Conn struct {
	in    *Inspector
	info  ConnInfo
	dirs  [2]direction
	total [2]atomic.Int64 // bytes tapped per direction
	seq   atomic.Int64    // chunks tapped, both directions

	// mu guards the HTTP parsers of both directions and what lies between
	// them: a response is read knowing its request, and the end of an
	// upgrade turns both directions over at once.
	mu     sync.Mutex
	http   [2]httpParser
	open   []*pending // requests not yet reported, oldest first
	seen   bool       // a request was read: the connection speaks HTTP
	ws     *wsState
	wsBase [2]int64 // bytes per direction before the WebSocket began
}

// direction is what Tap looks at first, under a lock of its own. Once
// the direction is no longer HTTP, its taps go straight to its frame
// parser, or nowhere, without the Conn's mu: the two directions of a
// WebSocket are parsed without waiting for each other.
type direction struct {
	mu     sync.Mutex
	frames *frameParser // the direction carries WebSocket frames
	// direct is set once no byte of the direction can be left behind in
	// the HTTP parser (see goDirect); frames alone is not enough, as
	// bytes held until the switch may still be on their way to it.
	direct bool
}

// pending is a request waiting for its response, or for the end of its
// own body when the response came first.
type pending struct {
	ex       *Exchange
	upgrade  bool  // asked for a protocol switch
	wantWS   bool  // asked for a WebSocket
	reqDone  bool  // the request has been read to its end
	respDone bool  // the response too
	switched uint8 // switchNone, or what the response switched to
}

// What a response switched the connection to.
const (
	switchNone  = iota
	switchWS    // a WebSocket: frames both ways
	switchOther // another protocol: bytes are only counted
)

// Observe starts observing a connection. The caller must call Tap with its
// bytes and Close when it has ended.
func (in *Inspector) Observe(info ConnInfo) *Conn {
	return &Conn{in: in, info: info}
}

// Tap takes a chunk that went from the visitor to the local server
// (fromVisitor) or back, and parses it then and there: a few steps per
// head, body or frame in the chunk, copying only the previews, a head not
// whole yet, and bytes that must wait for the other direction (see
// Conn.waits). It never waits but for the other direction of the same
// HTTP connection to be done with its own chunk. Tap may be called
// for the two directions at once, but for each one from one goroutine at
// a time, in order.
func (c *Conn) Tap(fromVisitor bool, p []byte) {
	d := dirOut
	if fromVisitor {
		d = dirIn
	}
	c.total[d].Add(int64(len(p)))
	now, seq := time.Now(), c.seq.Add(1)
	h := &c.dirs[d]
	h.mu.Lock()
	if h.direct {
		if h.frames != nil {
			h.frames.push(c.in, p, now, seq)
		}
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	// Still HTTP, unless the other direction turns this one over before
	// mu is ours: push sees it.
	c.mu.Lock()
	c.push(d, p, now, seq)
	c.goDirect()
	c.mu.Unlock()
}

// goDirect lets the taps of a direction that is no longer HTTP skip mu.
// It is called as mu is released, when whatever the direction held (which
// drain may be handing over piece by piece) has gone to its frame parser.
func (c *Conn) goDirect() {
	for d := range c.http {
		if s := c.http[d].step; s == hFrames || s == hOff {
			h := &c.dirs[d]
			h.mu.Lock()
			h.direct = true
			h.mu.Unlock()
		}
	}
}

// Close ends the observation: a message cut short is reported so, and so
// are requests still without a response and an open WebSocket.
func (c *Conn) Close() {
	c.mu.Lock()
	c.end(dirIn)
	c.end(dirOut)
	c.setOff(dirIn)
	c.setOff(dirOut)
	open, ws, base := c.open, c.ws, c.wsBase
	c.open = nil
	c.mu.Unlock()
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
	for _, p := range open {
		p.ex.setError("no response: the connection ended first")
		p.ex.Duration = Duration(now.Sub(p.ex.Time))
		c.in.addExchange(p.ex)
	}
	if ws != nil {
		c.in.closeWS(ws, now, c.total[dirIn].Load()-base[dirIn], c.total[dirOut].Load()-base[dirOut])
	}
}

// Refused ends the observation of a connection the local server never
// took (nothing answers on its port, its TLS handshake failed): the
// requests seen so far are recorded with reason as their error, as what
// happened to them.
func (c *Conn) Refused(reason string) {
	c.mu.Lock()
	for _, p := range c.open {
		p.ex.setError(reason)
	}
	c.mu.Unlock()
	c.Close()
}

// target is the request the next response answers: the oldest without
// one, or nil.
func (c *Conn) target() *pending {
	if len(c.open) > 0 && !c.open[0].respDone {
		return c.open[0]
	}
	return nil
}

// requestDone ends the request being read.
func (c *Conn) requestDone() {
	hp := &c.http[dirIn]
	p := hp.p
	p.reqDone = true
	hp.step, hp.p, hp.body = hHead, nil, nil
	if p.upgrade {
		hp.step, hp.p = hWait, p // what follows may not be HTTP
	}
	if p.respDone {
		c.finish(p)
	}
}

// responseDone ends the response being read, whose last byte came at t.
func (c *Conn) responseDone(t time.Time) {
	hp := &c.http[dirOut]
	p := hp.p
	p.respDone = true
	p.ex.Duration = Duration(t.Sub(p.ex.Time))
	hp.step, hp.p, hp.body = hHead, nil, nil
	if p.switched != switchNone {
		hp.step = hWait // for the end of the request, if still to come
	}
	if p.reqDone {
		c.finish(p)
	}
	c.settleOut()
}

// finish reports p, whose request and response have both been read, and
// turns the connection over if the response switched protocols.
// Exchanges finish in order: p is the oldest.
func (c *Conn) finish(p *pending) {
	if i := slices.Index(c.open, p); i >= 0 {
		// Delete clears the slot it frees: the request must not stay
		// reachable from a long-lived connection.
		c.open = slices.Delete(c.open, i, i+1)
	}
	switch p.switched {
	case switchWS:
		ws := c.in.openWS(p.ex, c.info)
		c.ws = ws
		c.in.addExchange(p.ex)
		c.startFrames(dirIn, ws)
		c.startFrames(dirOut, ws)
	case switchOther:
		c.in.addExchange(p.ex)
		c.setOff(dirIn)
		c.setOff(dirOut)
	default:
		c.in.addExchange(p.ex)
		if hp := &c.http[dirIn]; hp.step == hWait && hp.p == p {
			hp.step, hp.p = hHead, nil // an upgrade declined: HTTP goes on
		}
		c.drain(dirIn)
		c.drain(dirOut)
	}
}

// setOff ends HTTP for direction d: its bytes are only counted from now on.
func (c *Conn) setOff(d int) {
	hp := &c.http[d]
	if hp.step == hOff || hp.step == hFrames {
		return
	}
	*hp = httpParser{step: hOff, off: hp.off}
}

// stopRequests ends the reading of requests. Responses to those read are
// still read.
func (c *Conn) stopRequests() {
	c.setOff(dirIn)
	c.settleOut()
}

// settleOut ends the reading of responses once no request is left to
// answer and no more will be read.
func (c *Conn) settleOut() {
	if c.http[dirIn].step == hOff && c.http[dirOut].step == hHead && c.target() == nil {
		c.setOff(dirOut)
	}
}

// stopCapture stops the capture of the connection at p, the exchange
// under way, which says why (msg) when Close reports it.
func (c *Conn) stopCapture(p *pending, msg string) {
	p.ex.setError(msg)
	c.setOff(dirIn)
	c.setOff(dirOut)
}
