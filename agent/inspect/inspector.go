// Package inspect shows what goes through a tunnel without touching it. A
// Conn is fed the bytes of one connection by a passive tap on the agent's
// byte pipe (tunnel.JoinOptions.Tap), and parses them in the tap as they
// pass: HTTP/1.1 requests and responses, then after a WebSocket upgrade
// the frames both ways. It starts no goroutine and copies only what it
// keeps, so that an idle connection costs a few hundred bytes. If the
// bytes are not HTTP, or would make it hold more than its bounds, it
// stops capturing; the traffic never waits for it.
//
// An Inspector keeps the last requests and WebSocket sessions (bounded),
// reports each to a callback, and serves them on a local web page with a
// JSON API, live updates (server-sent events) and replay to the local
// server.
package inspect

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Options configure an Inspector. The zero value of each field means its
// default.
type Options struct {
	// BodyCap is how many bytes of each body are kept. Default 64 KiB; the
	// rest is counted.
	BodyCap int
	// MaxRequests is how many exchanges are kept. Default 200.
	MaxRequests int
	// MaxWebSockets is how many WebSocket sessions are kept. Default 50.
	MaxWebSockets int
	// MaxFrames is how many frames of each session are kept (the last
	// ones). Default 500.
	MaxFrames int
	// OnExchange, if not nil, is called with each finished exchange,
	// replays included. It must not block nor modify it.
	OnExchange func(*Exchange)
	// OnWebSocket, if not nil, is called when a session opens and when it
	// closes, with a copy without frames. It must not block.
	OnWebSocket func(WebSocket)
	// Logger receives debug logs. Default slog.Default().
	Logger *slog.Logger
}

// Inspector records what Conns observe. Its methods are safe for
// concurrent use.
type Inspector struct {
	opts   Options
	log    *slog.Logger
	client *http.Client // for replays

	mu        sync.Mutex
	reqID     int64
	wsID      int64
	exchanges []*Exchange // oldest first
	sockets   []*wsState  // oldest first
	subs      map[chan []byte]struct{}
	status    Status
	closed    bool
	done      chan struct{} // closed by Close: live streams end

	handlers sync.WaitGroup // live-update streams
}

// wsState is a WebSocket session being recorded, guarded by Inspector.mu.
type wsState struct {
	WebSocket
	closeSeq int64 // arrival order of the close frame recorded
	first    int   // index of the oldest frame in Frames
	// forgotten is set once the session is no longer kept: nothing can
	// show its frames any more, so they are not kept either, however
	// long it stays open.
	forgotten bool
}

// forget drops the sessions of ss from what is kept.
func forget(ss []*wsState) {
	for _, s := range ss {
		s.forgotten, s.Frames, s.first = true, nil, 0
	}
}

// Status is the agent's state, shown by the page and /api/status.
type Status struct {
	State     string    `json:"state"` // "connecting", "online", "reconnecting"
	URLs      []string  `json:"urls,omitempty"`
	Local     []string  `json:"local,omitempty"`
	Relay     string    `json:"relay,omitempty"`
	RTT       Duration  `json:"rtt,omitempty"`
	Error     string    `json:"error,omitempty"` // why it is reconnecting
	Attempt   int       `json:"attempt,omitempty"`
	NextTry   time.Time `json:"next_try,omitzero"`
	Requests  int64     `json:"requests"`   // exchanges seen since start
	WebSocket int64     `json:"websockets"` // sessions seen since start
}

// New returns an Inspector.
func New(opts Options) *Inspector {
	if opts.BodyCap <= 0 {
		opts.BodyCap = 64 << 10
	}
	if opts.MaxRequests <= 0 {
		opts.MaxRequests = 200
	}
	if opts.MaxWebSockets <= 0 {
		opts.MaxWebSockets = 50
	}
	if opts.MaxFrames <= 0 {
		opts.MaxFrames = 500
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Inspector{
		opts: opts,
		log:  opts.Logger,
		client: &http.Client{
			Timeout: 30 * time.Second,
			// Replays show what the local server answered, redirects included.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Transport: &http.Transport{
				DisableKeepAlives:  true,
				DisableCompression: true,
				Proxy:              nil,
			},
		},
		subs: map[chan []byte]struct{}{},
		done: make(chan struct{}),
	}
}

// Close ends the live-update streams and waits for them.
func (in *Inspector) Close() {
	in.mu.Lock()
	if !in.closed {
		in.closed = true
		close(in.done)
	}
	in.mu.Unlock()
	in.handlers.Wait()
}

// SetStatus updates the status the page shows.
func (in *Inspector) SetStatus(update func(*Status)) {
	in.mu.Lock()
	update(&in.status)
	st := in.status.clone()
	in.mu.Unlock()
	in.publish("status", st)
}

// clone returns a copy of s that a later update, which may reuse its
// slices (append to URLs[:0]), leaves alone.
func (s Status) clone() Status {
	s.URLs, s.Local = slices.Clone(s.URLs), slices.Clone(s.Local)
	return s
}

func (in *Inspector) addExchange(ex *Exchange) {
	in.mu.Lock()
	if ex.ID == 0 {
		in.reqID++
		ex.ID = in.reqID
	}
	in.status.Requests++
	in.exchanges = append(in.exchanges, ex)
	if n := len(in.exchanges) - in.opts.MaxRequests; n > 0 {
		clear(in.exchanges[:n])
		in.exchanges = append(in.exchanges[:0], in.exchanges[n:]...)
	}
	// Without a live stream to send it to, the summary is not made: this
	// runs for every request, on the byte pipe.
	live := len(in.subs) > 0
	in.mu.Unlock()
	if live {
		in.publish("request", ex.Summary())
	}
	if in.opts.OnExchange != nil {
		in.opts.OnExchange(ex)
	}
}

func (in *Inspector) openWS(ex *Exchange, info ConnInfo) *wsState {
	in.mu.Lock()
	in.reqID++
	ex.ID = in.reqID
	in.wsID++
	ws := &wsState{WebSocket: WebSocket{
		ID: in.wsID, Tunnel: info.Tunnel, Remote: info.Remote, Path: ex.Path,
		Request: ex.ID, Time: ex.Time.Add(time.Duration(ex.Duration)), Open: true,
	}}
	ex.WebSocket = ws.ID
	in.status.WebSocket++
	in.sockets = append(in.sockets, ws)
	if n := len(in.sockets) - in.opts.MaxWebSockets; n > 0 {
		forget(in.sockets[:n])
		clear(in.sockets[:n])
		in.sockets = append(in.sockets[:0], in.sockets[n:]...)
	}
	cp := ws.WebSocket
	in.mu.Unlock()
	in.publish("websocket", cp)
	if in.opts.OnWebSocket != nil {
		in.opts.OnWebSocket(cp)
	}
	return ws
}

func (in *Inspector) addFrame(ws *wsState, dir int, fr Frame, message bool) {
	in.mu.Lock()
	if message {
		if dir == dirIn {
			ws.MessagesIn++
		} else {
			ws.MessagesOut++
		}
	}
	// The two directions are parsed concurrently: the close frame that
	// arrived first, not the one parsed first, says who closed.
	if fr.Opcode == 8 && (ws.CloseCode == 0 || fr.seq < ws.closeSeq) {
		ws.CloseCode, ws.CloseReason, ws.closeSeq = fr.CloseCode, fr.Preview, fr.seq
		ws.ClosedBy = [2]string{dirIn: "visitor", dirOut: "server"}[dir]
	}
	// Frames is a ring of the last MaxFrames once full; first is its oldest.
	switch {
	case ws.forgotten:
	case len(ws.Frames) < in.opts.MaxFrames:
		ws.Frames = append(ws.Frames, fr)
	default:
		ws.Frames[ws.first] = fr
		ws.first = (ws.first + 1) % len(ws.Frames)
		ws.FramesDropped++
	}
	id := ws.ID
	// As for requests: without a live stream the event is not made (it
	// would cost an allocation per message, on the byte pipe).
	live := len(in.subs) > 0
	in.mu.Unlock()
	if live {
		in.publish("frame", struct {
			WebSocket int64 `json:"websocket"`
			Frame
		}{id, fr})
	}
}

func (in *Inspector) wsError(ws *wsState, msg string) {
	in.mu.Lock()
	if ws.Error == "" {
		ws.Error = msg
	}
	in.mu.Unlock()
}

func (in *Inspector) closeWS(ws *wsState, now time.Time, bytesIn, bytesOut int64) {
	in.mu.Lock()
	ws.Open = false
	ws.Duration = Duration(now.Sub(ws.Time))
	ws.BytesIn, ws.BytesOut = bytesIn, bytesOut
	if ws.CloseCode == 0 {
		ws.CloseCode = 1006 // closed without a close frame
	}
	cp := ws.WebSocket
	cp.Frames = nil
	in.mu.Unlock()
	in.publish("websocket", cp)
	if in.opts.OnWebSocket != nil {
		in.opts.OnWebSocket(cp)
	}
}

// Exchanges returns the kept exchanges, newest first.
func (in *Inspector) Exchanges() []Summary {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]Summary, 0, len(in.exchanges))
	for i := len(in.exchanges) - 1; i >= 0; i-- {
		out = append(out, in.exchanges[i].Summary())
	}
	return out
}

// Exchange returns the kept exchange id, or nil.
func (in *Inspector) Exchange(id int64) *Exchange {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, ex := range in.exchanges {
		if ex.ID == id {
			return ex
		}
	}
	return nil
}

// WebSockets returns the kept sessions without their frames, newest first.
func (in *Inspector) WebSockets() []WebSocket {
	in.mu.Lock()
	defer in.mu.Unlock()
	now := time.Now()
	out := make([]WebSocket, 0, len(in.sockets))
	for i := len(in.sockets) - 1; i >= 0; i-- {
		ws := in.sockets[i].WebSocket
		ws.Frames = nil
		if ws.Open {
			ws.Duration = Duration(now.Sub(ws.Time))
		}
		out = append(out, ws)
	}
	return out
}

// WebSocket returns the kept session id with its frames, or false.
func (in *Inspector) WebSocket(id int64) (WebSocket, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, s := range in.sockets {
		if s.ID == id {
			ws := s.WebSocket
			ws.Frames = append(append(make([]Frame, 0, len(s.Frames)), s.Frames[s.first:]...), s.Frames[:s.first]...)
			if ws.Open {
				ws.Duration = Duration(time.Since(ws.Time))
			}
			return ws, true
		}
	}
	return WebSocket{}, false
}

// clear forgets every kept exchange and session.
func (in *Inspector) clear() {
	in.mu.Lock()
	forget(in.sockets)
	in.exchanges, in.sockets = nil, nil
	in.mu.Unlock()
	in.publish("clear", struct{}{})
}

// publish sends an event to the live-update streams; a stream that cannot
// keep up misses it (the page reloads the lists when it notices).
func (in *Inspector) publish(typ string, v any) {
	in.mu.Lock()
	n := len(in.subs)
	in.mu.Unlock()
	if n == 0 {
		return
	}
	// Encoded without the lock: frames are published from the taps of
	// every connection, on the byte pipe. v is a copy, and one caller's
	// events stay in order.
	data, err := json.Marshal(struct {
		Type string `json:"type"`
		Data any    `json:"data"`
	}{typ, v})
	if err != nil {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for ch := range in.subs {
		select {
		case ch <- data:
		default:
		}
	}
}
