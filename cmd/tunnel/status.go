package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
)

// statusPrinter turns agent events into what a person watches: URLs and
// request lines on Out, connection changes on ErrOut. While the relay
// obtains certificates it says so and holds the URLs back until every
// pending name is ready or has failed; a failed name's URL is not printed.
//
// The agent calls OnEvent from its own goroutines and must not be blocked, by
// a paused terminal for instance, so events are queued and one goroutine
// prints them; if the queue is full, events are dropped and counted.
type statusPrinter struct {
	io        IOStreams
	printURLs func(w io.Writer, urls []string)
	opts      printerOptions
	events    chan agent.Event
	wg        sync.WaitGroup
	// out and errOut are io's streams, batched (see batched).
	out, errOut *batched

	// Owned by the printing goroutine.
	urls       []string // the URLs printed last
	online     bool
	granted    []grant // the tunnels of the last EventOnline
	inspector  string  // the inspector's URL
	inspectErr error   // why there is no inspector
	counts     counts  // traffic so far, for the status lines
	reported   counts  // as of the last status line
	reportedAt time.Time

	mu         sync.Mutex
	closed     bool
	dropQueued int
}

// counts is the traffic a status line reports.
type counts struct {
	requests, failed int // failed: 5xx or no response
	wsOpen, wsTotal  int
}

func (c counts) String() string {
	return fmt.Sprintf("requests %d (%d failed) · WebSockets %d open, %d in all", c.requests, c.failed, c.wsOpen, c.wsTotal)
}

// statusEvery is how often, at most, a status line with the round-trip
// time and the counts is printed while traffic changes them.
const statusEvery = time.Minute

// grant is a granted tunnel and where its certificate stands.
type grant struct {
	name, url string
	pending   bool // the relay is obtaining its certificate
	failed    bool // the relay could not: its URL is not printed
}

// printerOptions choose what a statusPrinter shows. The zero value prints
// URLs, state changes and request lines, without colour or status block.
type printerOptions struct {
	// JSON prints every event as one JSON object per line on Out, and
	// nothing else (errors still go to ErrOut, from main).
	JSON bool
	// Quiet prints only the URLs and errors.
	Quiet bool
	// Color marks statuses with ANSI colours; only for a terminal.
	Color bool
	// Block prints a status block on ErrOut when first online: the local
	// target, the relay, the round-trip time and the inspector.
	Block        bool
	Local, Relay string
	// Locals, if set, are the local targets of the tunnels in the order
	// they were asked for, in place of Local (tunnel start).
	Locals []string
	// InspectSetting says where the inspector's address is set, for when
	// its port is taken; empty: expose's --inspect-addr.
	InspectSetting string
}

// newStatusPrinter starts a printer. printURLs prints the granted URLs the
// first time and whenever they change. close must be called once the agent
// has returned.
func newStatusPrinter(ios IOStreams, printURLs func(w io.Writer, urls []string)) *statusPrinter {
	return newPrinter(ios, printURLs, printerOptions{})
}

// newPrinter is newStatusPrinter with options.
func newPrinter(ios IOStreams, printURLs func(w io.Writer, urls []string), opts printerOptions) *statusPrinter {
	p := &statusPrinter{printURLs: printURLs, opts: opts, events: make(chan agent.Event, 1024)}
	p.out, p.errOut = newBatchedPair(ios.Out, ios.ErrOut)
	p.io = IOStreams{Out: p.out, ErrOut: p.errOut}
	p.wg.Go(p.loop)
	return p
}

// batched buffers what the printer writes to one stream while more events
// are queued, so that a busy tunnel costs one write per batch of request
// lines instead of one per request. Writing to one stream flushes the
// other first, so lines keep their order across Out and ErrOut.
type batched struct {
	w     *bufio.Writer
	other *batched
}

func newBatchedPair(out, errOut io.Writer) (*batched, *batched) {
	o := &batched{w: bufio.NewWriterSize(out, 16<<10)}
	e := &batched{w: bufio.NewWriterSize(errOut, 4<<10), other: o}
	o.other = e
	return o, e
}

func (b *batched) Write(p []byte) (int, error) {
	if b.other.w.Buffered() > 0 {
		b.other.w.Flush()
	}
	return b.w.Write(p)
}

func (b *batched) flush() { b.w.Flush() }

// onEvent is the agent's OnEvent: it never blocks.
func (p *statusPrinter) onEvent(ev agent.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	select {
	case p.events <- ev:
	default:
		p.dropQueued++
	}
}

// close prints what is queued and stops the printer.
func (p *statusPrinter) close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.events)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// printerFlushEvery is how often, at most, the printer writes to its
// streams while lines keep coming: a line after a quiet spell is written
// at once, lines in a burst at most this late, in one write per stream.
const printerFlushEvery = 20 * time.Millisecond

func (p *statusPrinter) loop() {
	defer p.errOut.flush()
	defer p.out.flush()
	var (
		last  time.Time                  // the last flush
		timer = time.NewTimer(time.Hour) // the next flush, while one is due
		due   <-chan time.Time           // timer's channel while it runs
	)
	timer.Stop()
	defer timer.Stop()
	flush := func() {
		p.out.flush()
		p.errOut.flush()
		last = time.Now()
	}
	for {
		select {
		case ev, ok := <-p.events:
			if !ok {
				p.finish()
				return
			}
			p.count(ev)
			p.print(ev)
			if len(p.events) > 0 || due != nil {
				continue // more to print, or a flush is due anyway
			}
			if wait := printerFlushEvery - time.Since(last); wait > 0 {
				timer.Reset(wait)
				due = timer.C
			} else {
				flush()
			}
		case <-due:
			due = nil
			flush()
		}
	}
}

// finish prints what loop leaves for the end: the summary and the count of
// events that were dropped.
func (p *statusPrinter) finish() {
	if p.opts.Block && !p.opts.Quiet && !p.opts.JSON && p.counts != (counts{}) {
		fmt.Fprintf(p.io.ErrOut, "summary     %v\n", p.counts)
	}
	p.mu.Lock()
	n := p.dropQueued
	p.mu.Unlock()
	if n > 0 {
		fmt.Fprintf(p.io.ErrOut, "(%d events were not shown: output was too slow)\n", n)
	}
}

// count adds ev to the traffic counts.
func (p *statusPrinter) count(ev agent.Event) {
	switch ev.Kind {
	case agent.EventRequest:
		p.counts.requests++
		if r := ev.Request; r == nil || r.Status >= 500 || r.Status == 0 || (ev.HTTP != nil && ev.HTTP.Error != "") {
			p.counts.failed++
		}
	case agent.EventWebSocketOpen:
		p.counts.wsOpen++
		p.counts.wsTotal++
	case agent.EventWebSocketClose:
		if p.counts.wsOpen > 0 {
			p.counts.wsOpen--
		}
	}
}

func (p *statusPrinter) print(ev agent.Event) {
	if p.opts.JSON {
		p.printJSON(ev)
		return
	}
	// info is for lines that are neither URLs nor errors.
	info := p.io.ErrOut
	if p.opts.Quiet {
		info = io.Discard
	}
	switch ev.Kind {
	case agent.EventOnline:
		first := !p.online
		if p.online {
			fmt.Fprintln(info, "online again")
		}
		p.online = true
		p.granted = p.granted[:0]
		for _, g := range ev.Tunnels {
			p.granted = append(p.granted, grant{name: g.Name, url: g.URL, pending: g.CertPending})
			if g.CertPending {
				fmt.Fprintf(info, "waiting for certificate for %s…\n", hostOf(g.URL, g.Name))
			}
		}
		p.printReadyURLs()
		if first && p.opts.Block {
			p.printBlock(info, ev)
		}
	case agent.EventInspector:
		p.inspector, p.inspectErr = ev.Inspector, ev.Err
	case agent.EventRTT:
		// A status line now and then while traffic changes the counts.
		at := ev.Time
		if at.IsZero() {
			at = time.Now()
		}
		if p.opts.Block && p.counts != p.reported && at.Sub(p.reportedAt) >= statusEvery {
			fmt.Fprintf(info, "status      online · round trip %v · %v\n", roundDuration(ev.RTT), p.counts)
			p.reported, p.reportedAt = p.counts, at
		}
	case agent.EventWebSocketOpen, agent.EventWebSocketClose:
		if !p.opts.Quiet {
			fmt.Fprintln(p.io.Out, p.webSocketLine(ev))
		}
	case agent.EventOffline:
		// The agent's delays are jittered down to near zero: keep
		// milliseconds below a second so that none reads "0s".
		retry := ev.Retry.Round(100 * time.Millisecond)
		if ev.Retry < time.Second {
			retry = ev.Retry.Round(time.Millisecond)
		}
		fmt.Fprintf(p.io.ErrOut, "reconnecting (attempt %d, next in %v): %v\n", ev.Attempt, retry, ev.Err)
	case agent.EventNotice:
		n := ev.Notice
		switch n.Kind {
		case agent.NoticeCertReady:
			// Also after a failure: the relay may have tried again.
			if g := p.grantNamed(n.Name); g != nil && (g.pending || g.failed) {
				g.pending, g.failed = false, false
				p.printReadyURLs()
			}
		case agent.NoticeCertFailed:
			host := n.Name
			if g := p.grantNamed(n.Name); g != nil {
				host = hostOf(g.url, g.name)
				g.pending, g.failed = false, true
			}
			fmt.Fprintf(p.io.ErrOut, "certificate for %s failed: %s\n", host, n.Message)
			p.printReadyURLs()
		default:
			fmt.Fprintf(info, "relay says: %s\n", n.Message)
		}
	case agent.EventRequest:
		if !p.opts.Quiet {
			fmt.Fprintln(p.io.Out, p.requestLine(ev))
		}
	}
}

// printBlock prints what a person wants to know once the tunnel is up:
//
//	forwarding  https://demo.example.com → localhost:8080
//	relay       https://example.com (round trip 23ms)
//	inspector   http://127.0.0.1:4040
func (p *statusPrinter) printBlock(w io.Writer, ev agent.Event) {
	for i, g := range ev.Tunnels {
		local := p.opts.Local
		if i < len(p.opts.Locals) {
			local = p.opts.Locals[i]
		}
		fmt.Fprintf(w, "forwarding  %s → %s\n", g.URL, local)
	}
	fmt.Fprintf(w, "relay       %s (round trip %v)\n", p.opts.Relay, roundDuration(ev.RTT))
	switch {
	case p.inspector != "":
		fmt.Fprintf(w, "inspector   %s\n", p.inspector)
	case p.inspectErr != nil:
		setting := p.opts.InspectSetting
		if setting == "" {
			setting = "--inspect-addr"
		}
		fmt.Fprintf(w, "inspector   off: %v (choose another address with %s)\n", oneLine(p.inspectErr), setting)
	}
}

// jsonEvent is one line of --json output; see expose's help for the fields.
type jsonEvent struct {
	Time  time.Time `json:"time"`
	Event string    `json:"event"`

	Tunnels   []jsonTunnel `json:"tunnels,omitempty"`
	Inspector string       `json:"inspector,omitempty"`
	RTT       *float64     `json:"rtt_ms,omitempty"`

	Error   string   `json:"error,omitempty"`
	Attempt int      `json:"attempt,omitempty"`
	RetryMS *float64 `json:"retry_ms,omitempty"`

	ID       int64    `json:"id,omitempty"`
	Tunnel   string   `json:"tunnel,omitempty"`
	Remote   string   `json:"remote,omitempty"`
	Method   string   `json:"method,omitempty"`
	Path     string   `json:"path,omitempty"`
	Status   *int     `json:"status,omitempty"`
	Duration *float64 `json:"duration_ms,omitempty"`
	BytesIn  *int64   `json:"bytes_in,omitempty"`
	BytesOut *int64   `json:"bytes_out,omitempty"`
	Replay   bool     `json:"replay,omitempty"`

	Code        *int   `json:"code,omitempty"`
	Reason      string `json:"reason,omitempty"`
	ClosedBy    string `json:"closed_by,omitempty"`
	MessagesIn  *int64 `json:"messages_in,omitempty"`
	MessagesOut *int64 `json:"messages_out,omitempty"`

	Kind    string `json:"kind,omitempty"`
	Name    string `json:"name,omitempty"`
	Message string `json:"message,omitempty"`
}

type jsonTunnel struct {
	Name        string `json:"name"`
	URL         string `json:"url"`
	WebSocket   string `json:"ws_url"`
	CertPending bool   `json:"cert_pending,omitempty"`
}

// jsonFields is the --json part of expose's help.
const jsonFields = `With --json, stdout carries one JSON object per line and nothing else. Every
object has "time" (RFC 3339) and "event", one of:
  online           tunnels [{name, url, ws_url, cert_pending}], rtt_ms, inspector
  offline          error, attempt, retry_ms (the next attempt is in retry_ms)
  notice           kind (draining, cert-ready, cert-failed), name, message
  request          id, tunnel, remote, method, path, status (0: no response),
                   duration_ms, bytes_in, bytes_out (body bytes), replay, error
  websocket_open   id, tunnel, remote, path
  websocket_close  id, tunnel, remote, path, code (1006: no close frame),
                   reason, closed_by (visitor or server), duration_ms,
                   messages_in, messages_out, bytes_in, bytes_out
  rtt              rtt_ms: round-trip time to the relay, every 9 s
  inspector        inspector (its URL), or error
bytes_in and messages_in count from the visitor to your server, _out the other
way.`

func jsonMS(d time.Duration) *float64 {
	v := float64(d.Microseconds()) / 1000
	return &v
}

func jptr[T any](v T) *T { return &v }

func (p *statusPrinter) printJSON(ev agent.Event) {
	j := jsonEvent{Time: ev.Time}
	if j.Time.IsZero() {
		j.Time = time.Now()
	}
	if ev.Err != nil {
		j.Error = oneLine(ev.Err)
	}
	switch ev.Kind {
	case agent.EventOnline:
		j.Event, j.RTT, j.Inspector = "online", jsonMS(ev.RTT), ev.Inspector
		for _, g := range ev.Tunnels {
			j.Tunnels = append(j.Tunnels, jsonTunnel{Name: g.Name, URL: g.URL, WebSocket: webSocketURL(g.URL), CertPending: g.CertPending})
		}
	case agent.EventOffline:
		j.Event, j.Attempt, j.RetryMS = "offline", ev.Attempt, jsonMS(ev.Retry)
	case agent.EventNotice:
		j.Event, j.Kind, j.Name, j.Message = "notice", string(ev.Notice.Kind), ev.Notice.Name, ev.Notice.Message
	case agent.EventRTT:
		j.Event, j.RTT = "rtt", jsonMS(ev.RTT)
	case agent.EventInspector:
		j.Event, j.Inspector = "inspector", ev.Inspector
	case agent.EventRequest:
		r := ev.Request
		j.Event, j.Tunnel, j.Remote, j.Method, j.Path = "request", r.Name, r.Remote, r.Method, r.Path
		j.Status, j.Duration, j.BytesIn, j.BytesOut = jptr(r.Status), jsonMS(r.Duration), jptr(r.BytesIn), jptr(r.BytesOut)
		if r.WebSocket { // from an older relay
			j.Event = "websocket_close"
		}
		if h := ev.HTTP; h != nil {
			j.ID, j.Replay, j.Error = h.ID, h.Replay, h.Error
		}
	case agent.EventWebSocketOpen, agent.EventWebSocketClose:
		ws := ev.WebSocket
		j.Event, j.ID, j.Tunnel, j.Remote, j.Path = "websocket_open", ws.ID, ws.Tunnel, ws.Remote, ws.Path
		if ev.Kind == agent.EventWebSocketClose {
			j.Event, j.Code, j.Reason, j.ClosedBy = "websocket_close", jptr(ws.CloseCode), ws.CloseReason, ws.ClosedBy
			j.Duration = jsonMS(time.Duration(ws.Duration))
			j.MessagesIn, j.MessagesOut, j.BytesIn, j.BytesOut = jptr(ws.MessagesIn), jptr(ws.MessagesOut), jptr(ws.BytesIn), jptr(ws.BytesOut)
		}
	default:
		return
	}
	b, err := json.Marshal(j)
	if err != nil {
		return
	}
	p.io.Out.Write(append(b, '\n'))
}

// printReadyURLs prints the URLs of the granted tunnels, without those whose
// certificate failed, once no certificate is pending, if they are not the
// ones printed last.
func (p *statusPrinter) printReadyURLs() {
	var urls []string
	for _, g := range p.granted {
		if g.pending {
			return
		}
		if !g.failed {
			urls = append(urls, g.url)
		}
	}
	if len(urls) > 0 && !slices.Equal(urls, p.urls) {
		p.printURLs(p.io.Out, urls)
		p.urls = urls
	}
}

// grantNamed finds a granted tunnel by the name a notice gives: its label
// ("demo") or its host name ("demo.example.com").
func (p *statusPrinter) grantNamed(name string) *grant {
	for i := range p.granted {
		g := &p.granted[i]
		if name != "" && (name == g.name || name == hostOf(g.url, "")) {
			return g
		}
	}
	return nil
}

// hostOf returns the host name in a tunnel's URL, or def if it has none.
func hostOf(rawURL, def string) string {
	if u, err := url.Parse(rawURL); err == nil && u.Hostname() != "" {
		return u.Hostname()
	}
	return def
}

// printTunnelURLs prints each URL and then its WebSocket form, one a line,
// so that a script can take the first line.
func printTunnelURLs(w io.Writer, urls []string) {
	for _, u := range urls {
		fmt.Fprintln(w, u)
		fmt.Fprintln(w, webSocketURL(u))
	}
}

// webSocketURL returns the ws:// or wss:// form of an http:// or https:// URL.
func webSocketURL(u string) string {
	if rest, ok := strings.CutPrefix(u, "https://"); ok {
		return "wss://" + rest
	}
	if rest, ok := strings.CutPrefix(u, "http://"); ok {
		return "ws://" + rest
	}
	return u
}

// requestLine formats one request, e.g.
//
//	14:03:07 GET /index.html 200 1.2ms 5120B
//	14:03:08 POST /api 502 3.1ms 0B (replay)
//	14:03:09 GET /slow - 30s 0B no response: the connection ended first
//	14:03:09 WS /chat 101 41.5s 120B/3400B closed   (from an older relay)
//
// where the bytes are the response body's, and a WebSocket's are
// visitor-to-server / server-to-visitor.
func requestLine(ev agent.Event) string { return (&statusPrinter{}).requestLine(ev) }

func (p *statusPrinter) requestLine(ev agent.Event) string {
	r := ev.Request
	at := r.Time.Local().Format(time.TimeOnly)
	if r.WebSocket {
		return fmt.Sprintf("%s %s %s %d %v %dB/%dB closed", at, p.paint(cWS, "WS"), r.Path, r.Status, roundDuration(r.Duration), r.BytesIn, r.BytesOut)
	}
	status := "-"
	if r.Status != 0 {
		status = p.paint(statusColor(r.Status), strconv.Itoa(r.Status))
	}
	line := fmt.Sprintf("%s %s %s %s %v %dB", at, r.Method, r.Path, status, roundDuration(r.Duration), r.BytesOut)
	if h := ev.HTTP; h != nil {
		if h.Replay {
			line += " (replay)"
		}
		if h.Error != "" {
			line += " " + p.paint(cRed, h.Error)
		}
	}
	return line
}

// webSocketLine formats a WebSocket's opening or its end, e.g.
//
//	14:03:07 WS /chat 101 opened
//	14:03:49 WS /chat 101 41.5s 120B/3400B 3/5 msgs closed 1000 "bye" by visitor
//
// where bytes and messages are visitor-to-server / server-to-visitor, and
// 1006 means the connection ended without a close frame.
func (p *statusPrinter) webSocketLine(ev agent.Event) string {
	ws := ev.WebSocket
	at := ev.Time.Local().Format(time.TimeOnly)
	if ev.Kind == agent.EventWebSocketOpen {
		return fmt.Sprintf("%s %s %s 101 opened", at, p.paint(cWS, "WS"), ws.Path)
	}
	line := fmt.Sprintf("%s %s %s 101 %v %dB/%dB %d/%d msgs closed %s", at, p.paint(cWS, "WS"), ws.Path,
		roundDuration(time.Duration(ws.Duration)), ws.BytesIn, ws.BytesOut, ws.MessagesIn, ws.MessagesOut,
		p.paint(closeColor(ws.CloseCode), strconv.Itoa(ws.CloseCode)))
	if ws.CloseReason != "" {
		line += " " + strconv.Quote(ws.CloseReason)
	}
	if ws.ClosedBy != "" {
		line += " by " + ws.ClosedBy
	} else if ws.CloseCode == 1006 {
		line += " (no close frame)"
	}
	return line
}

// ANSI colours, used only when printerOptions.Color is set.
const (
	cGreen  = "32"
	cCyan   = "36"
	cYellow = "33"
	cRed    = "31"
	cWS     = "35"
)

func statusColor(status int) string {
	switch {
	case status >= 500:
		return cRed
	case status >= 400:
		return cYellow
	case status >= 300:
		return cCyan
	}
	return cGreen
}

func closeColor(code int) string {
	if code == 1000 || code == 1001 {
		return cGreen
	}
	return cYellow
}

func (p *statusPrinter) paint(color, s string) string {
	if !p.opts.Color {
		return s
	}
	return "\x1b[" + color + "m" + s + "\x1b[0m"
}

// roundDuration keeps three significant digits or so.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
