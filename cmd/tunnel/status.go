package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
)

// statusPrinter turns agent events into what a person watches: URLs and
// request lines on Out, connection changes on ErrOut.
//
// The agent calls OnEvent from its own goroutines and must not be blocked, by
// a paused terminal for instance, so events are queued and one goroutine
// prints them; if the queue is full, events are dropped and counted.
type statusPrinter struct {
	io        IOStreams
	printURLs func(w io.Writer, urls []string)
	events    chan agent.Event
	wg        sync.WaitGroup

	// Owned by the printing goroutine.
	urls   []string
	online bool

	mu         sync.Mutex
	closed     bool
	dropQueued int
}

// newStatusPrinter starts a printer. printURLs prints the granted URLs the
// first time and whenever they change. close must be called once the agent
// has returned.
func newStatusPrinter(ios IOStreams, printURLs func(w io.Writer, urls []string)) *statusPrinter {
	p := &statusPrinter{io: ios, printURLs: printURLs, events: make(chan agent.Event, 256)}
	p.wg.Go(p.loop)
	return p
}

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

func (p *statusPrinter) loop() {
	for ev := range p.events {
		p.print(ev)
	}
	p.mu.Lock()
	n := p.dropQueued
	p.mu.Unlock()
	if n > 0 {
		fmt.Fprintf(p.io.ErrOut, "(%d events were not shown: output was too slow)\n", n)
	}
}

func (p *statusPrinter) print(ev agent.Event) {
	switch ev.Kind {
	case agent.EventOnline:
		urls := make([]string, len(ev.Tunnels))
		for i, g := range ev.Tunnels {
			urls[i] = g.URL
		}
		if p.online {
			fmt.Fprintln(p.io.ErrOut, "online again")
		}
		if !slices.Equal(urls, p.urls) {
			p.printURLs(p.io.Out, urls)
			p.urls = urls
		}
		p.online = true
	case agent.EventOffline:
		// The agent's delays are jittered down to near zero: keep
		// milliseconds below a second so that none reads "0s".
		retry := ev.Retry.Round(100 * time.Millisecond)
		if ev.Retry < time.Second {
			retry = ev.Retry.Round(time.Millisecond)
		}
		fmt.Fprintf(p.io.ErrOut, "reconnecting (attempt %d, next in %v): %v\n", ev.Attempt, retry, ev.Err)
	case agent.EventNotice:
		fmt.Fprintf(p.io.ErrOut, "relay says: %s\n", ev.Notice.Message)
	case agent.EventRequest:
		fmt.Fprintln(p.io.Out, requestLine(ev))
	}
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
//	14:03:09 WS /chat 101 41.5s 120B/3400B closed
//
// where a WebSocket's bytes are visitor-to-server / server-to-visitor.
func requestLine(ev agent.Event) string {
	r := ev.Request
	at := r.Time.Local().Format(time.TimeOnly)
	if r.WebSocket {
		return fmt.Sprintf("%s WS %s %d %v %dB/%dB closed", at, r.Path, r.Status, roundDuration(r.Duration), r.BytesIn, r.BytesOut)
	}
	return fmt.Sprintf("%s %s %s %d %v %dB", at, r.Method, r.Path, r.Status, roundDuration(r.Duration), r.BytesOut)
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
