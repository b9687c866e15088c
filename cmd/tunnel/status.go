package main

import (
	"fmt"
	"io"
	"net/url"
	"slices"
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
	events    chan agent.Event
	wg        sync.WaitGroup

	// Owned by the printing goroutine.
	urls    []string // the URLs printed last
	online  bool
	granted []grant // the tunnels of the last EventOnline

	mu         sync.Mutex
	closed     bool
	dropQueued int
}

// grant is a granted tunnel and where its certificate stands.
type grant struct {
	name, url string
	pending   bool // the relay is obtaining its certificate
	failed    bool // the relay could not: its URL is not printed
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
		if p.online {
			fmt.Fprintln(p.io.ErrOut, "online again")
		}
		p.online = true
		p.granted = p.granted[:0]
		for _, g := range ev.Tunnels {
			p.granted = append(p.granted, grant{name: g.Name, url: g.URL, pending: g.CertPending})
			if g.CertPending {
				fmt.Fprintf(p.io.ErrOut, "waiting for certificate for %s…\n", hostOf(g.URL, g.Name))
			}
		}
		p.printReadyURLs()
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
			fmt.Fprintf(p.io.ErrOut, "relay says: %s\n", n.Message)
		}
	case agent.EventRequest:
		fmt.Fprintln(p.io.Out, requestLine(ev))
	}
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
