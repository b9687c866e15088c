package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
)

// TestStatusPrinter checks what expose prints for a sequence of agent
// events: URLs once, again only when they change, the reconnect and
// "online again" lines on stderr, and the request lines.
func TestStatusPrinter(t *testing.T) {
	var out, errOut bytes.Buffer
	p := newStatusPrinter(IOStreams{Out: &out, ErrOut: &errOut}, printTunnelURLs)
	at := time.Date(2026, 1, 2, 14, 3, 7, 0, time.Local)
	online := func(url string) agent.Event {
		return agent.Event{Kind: agent.EventOnline, Tunnels: []proto.Granted{{Name: "demo", URL: url}}}
	}
	for _, ev := range []agent.Event{
		online("http://demo.localhost:8000"),
		{Kind: agent.EventRequest, Request: &proto.Event{Time: at, Method: "GET", Path: "/index.html?q=1", Status: 200, Duration: 1234567 * time.Nanosecond, BytesOut: 5120}},
		{Kind: agent.EventOffline, Attempt: 1, Retry: 31415926 * time.Nanosecond, Err: errors.New("connection to relay lost")},
		online("http://demo.localhost:8000"), // same URL: not printed again
		{Kind: agent.EventNotice, Notice: &proto.Notice{Kind: proto.NoticeDraining, Message: "relay is shutting down"}},
		{Kind: agent.EventOffline, Attempt: 2, Retry: 1234 * time.Millisecond, Err: errors.New("connection refused")},
		online("https://demo.example.com"), // a new relay URL: printed
		{Kind: agent.EventRequest, Request: &proto.Event{Time: at, Method: "GET", Path: "/ws", Status: 101, Duration: 41500 * time.Millisecond, BytesIn: 120, BytesOut: 3400, WebSocket: true}},
	} {
		p.onEvent(ev)
	}
	p.close()
	p.onEvent(online("http://late.localhost")) // after close: ignored, no panic

	wantOut := `http://demo.localhost:8000
ws://demo.localhost:8000
14:03:07 GET /index.html?q=1 200 1.23ms 5120B
https://demo.example.com
wss://demo.example.com
14:03:07 WS /ws 101 41.5s 120B/3400B closed
`
	wantErr := `reconnecting (attempt 1, next in 31ms): connection to relay lost
online again
relay says: relay is shutting down
reconnecting (attempt 2, next in 1.2s): connection refused
online again
`
	if got := out.String(); got != wantOut {
		t.Errorf("stdout:\n%s\nwant:\n%s", got, wantOut)
	}
	if got := errOut.String(); got != wantErr {
		t.Errorf("stderr:\n%s\nwant:\n%s", got, wantErr)
	}
}

// TestRequestLineDurations checks that durations in request lines are
// rounded to a readable precision.
func TestRequestLineDurations(t *testing.T) {
	for d, want := range map[time.Duration]string{
		340 * time.Microsecond:   "340µs",
		1234567:                  "1.23ms",
		2345678901:               "2.35s",
		90*time.Second + 400e6:   "1m30s",
		1500 * time.Nanosecond:   "2µs",
		999999 * time.Nanosecond: "1ms",
	} {
		if got := roundDuration(d).String(); got != want {
			t.Errorf("roundDuration(%v) = %s, want %s", d, got, want)
		}
	}
	if got := requestLine(agent.Event{Request: &proto.Event{Method: "POST", Path: "/", Status: 502}}); !strings.HasSuffix(got, " POST / 502 0s 0B") {
		t.Errorf("requestLine = %q", got)
	}
}

// TestStatusPrinterCertificates checks what expose prints while the relay
// obtains certificates: "waiting" lines on stderr and no URLs until every
// pending name is ready or failed; a failed name's URL is never printed.
func TestStatusPrinterCertificates(t *testing.T) {
	granted := func(name string, pending bool) proto.Granted {
		return proto.Granted{Name: name, URL: "https://" + name + ".example.com", CertPending: pending}
	}
	online := func(gs ...proto.Granted) agent.Event { return agent.Event{Kind: agent.EventOnline, Tunnels: gs} }
	notice := func(kind proto.NoticeKind, name, msg string) agent.Event {
		return agent.Event{Kind: agent.EventNotice, Notice: &proto.Notice{Kind: kind, Name: name, Message: msg}}
	}
	offline := agent.Event{Kind: agent.EventOffline, Attempt: 1, Retry: 2 * time.Second, Err: errors.New("connection to relay lost")}

	tests := []struct {
		name            string
		events          []agent.Event
		wantOut, wantEr string
	}{
		{
			name:    "ready",
			events:  []agent.Event{online(granted("demo", true)), notice(proto.NoticeCertReady, "demo", "")},
			wantOut: "https://demo.example.com\nwss://demo.example.com\n",
			wantEr:  "waiting for certificate for demo.example.com…\n",
		},
		{
			name:   "still pending: nothing printed",
			events: []agent.Event{online(granted("demo", true))},
			wantEr: "waiting for certificate for demo.example.com…\n",
		},
		{
			name: "failed",
			events: []agent.Event{
				online(granted("demo", true)),
				notice(proto.NoticeCertFailed, "demo", "acme: authorization error for demo.example.com: 400 urn:ietf:params:acme:error:dns"),
			},
			wantEr: "waiting for certificate for demo.example.com…\n" +
				"certificate for demo.example.com failed: acme: authorization error for demo.example.com: 400 urn:ietf:params:acme:error:dns\n",
		},
		{
			name: "not pending: printed at once; stray notices ignored",
			events: []agent.Event{
				online(granted("demo", false)),
				notice(proto.NoticeCertReady, "demo", ""),
				notice(proto.NoticeCertReady, "other", ""),
			},
			wantOut: "https://demo.example.com\nwss://demo.example.com\n",
		},
		{
			name: "two names: URLs once both are resolved, without the failed one",
			events: []agent.Event{
				online(granted("api", true), granted("web", false), granted("ws", true)),
				notice(proto.NoticeCertReady, "api", ""),
				notice(proto.NoticeCertReady, "api", ""), // a repeat changes nothing
				notice(proto.NoticeCertFailed, "ws", "rate limited"),
			},
			wantOut: "https://api.example.com\nwss://api.example.com\nhttps://web.example.com\nwss://web.example.com\n",
			wantEr: "waiting for certificate for api.example.com…\nwaiting for certificate for ws.example.com…\n" +
				"certificate for ws.example.com failed: rate limited\n",
		},
		{
			name: "notice by host name",
			events: []agent.Event{
				online(granted("demo", true)),
				notice(proto.NoticeCertReady, "demo.example.com", ""),
			},
			wantOut: "https://demo.example.com\nwss://demo.example.com\n",
			wantEr:  "waiting for certificate for demo.example.com…\n",
		},
		{
			name: "reconnect while pending, then ready: URLs once",
			events: []agent.Event{
				online(granted("demo", true)),
				offline,
				online(granted("demo", true)),
				notice(proto.NoticeCertReady, "demo", ""),
				offline,
				online(granted("demo", false)), // same URLs: not printed again
			},
			wantOut: "https://demo.example.com\nwss://demo.example.com\n",
			wantEr: "waiting for certificate for demo.example.com…\n" +
				"reconnecting (attempt 1, next in 2s): connection to relay lost\n" +
				"online again\n" +
				"waiting for certificate for demo.example.com…\n" +
				"reconnecting (attempt 1, next in 2s): connection to relay lost\n" +
				"online again\n",
		},
		{
			name: "other notices as before",
			events: []agent.Event{
				online(granted("demo", true)),
				notice(proto.NoticeDraining, "", "relay is shutting down"),
				notice(proto.NoticeCertReady, "demo", ""),
			},
			wantOut: "https://demo.example.com\nwss://demo.example.com\n",
			wantEr:  "waiting for certificate for demo.example.com…\nrelay says: relay is shutting down\n",
		},
		{
			name: "ready after a failure",
			events: []agent.Event{
				online(granted("demo", true)),
				notice(proto.NoticeCertFailed, "demo", "timeout"),
				notice(proto.NoticeCertReady, "demo", ""),
			},
			wantOut: "https://demo.example.com\nwss://demo.example.com\n",
			wantEr:  "waiting for certificate for demo.example.com…\ncertificate for demo.example.com failed: timeout\n",
		},
		{
			name:   "a failure for a name that is not pending is still shown",
			events: []agent.Event{notice(proto.NoticeCertFailed, "demo", "timeout")},
			wantEr: "certificate for demo failed: timeout\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			p := newStatusPrinter(IOStreams{Out: &out, ErrOut: &errOut}, printTunnelURLs)
			for _, ev := range tt.events {
				p.onEvent(ev)
			}
			p.close()
			if got := out.String(); got != tt.wantOut {
				t.Errorf("stdout:\n%s\nwant:\n%s", got, tt.wantOut)
			}
			if got := errOut.String(); got != tt.wantEr {
				t.Errorf("stderr:\n%s\nwant:\n%s", got, tt.wantEr)
			}
		})
	}
}

// countingWriter counts the writes that reach it and keeps what they wrote.
type countingWriter struct {
	mu     sync.Mutex
	writes int
	buf    bytes.Buffer
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

func (w *countingWriter) read() (writes int, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes, w.buf.String()
}

// TestStatusPrinterBatches checks how request lines reach the terminal: a
// line after a quiet spell is written without waiting for more, and a
// burst of lines costs at most one write per printerFlushEvery or full
// buffer, not one per request, with every line there in order at the end.
func TestStatusPrinterBatches(t *testing.T) {
	var out, errOut countingWriter
	p := newStatusPrinter(IOStreams{Out: &out, ErrOut: &errOut}, printTunnelURLs)
	at := time.Date(2026, 1, 2, 14, 3, 7, 0, time.Local)
	request := func(i int) agent.Event {
		return agent.Event{Kind: agent.EventRequest, Request: &proto.Event{Time: at, Method: "GET", Path: fmt.Sprintf("/r/%d", i), Status: 200}}
	}

	p.onEvent(request(0))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, text := out.read(); strings.Contains(text, "/r/0 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a lone request line was not written while the printer ran")
		}
	}

	writesBefore, _ := out.read()
	const n = 2000
	start := time.Now()
	for i := 1; i <= n; i++ {
		p.onEvent(request(i))
		if i%50 == 0 {
			time.Sleep(time.Millisecond) // let the queue drain now and then
		}
	}
	p.close()
	elapsed := time.Since(start)
	writes, text := out.read()
	writes -= writesBefore
	// A write per flush, and one each time the 16 KiB buffer fills.
	if limit := int(elapsed/printerFlushEvery) + len(text)/(16<<10) + 3; writes > limit {
		t.Errorf("%d request lines (%d bytes) in %v took %d writes, want at most %d (one per %v or 16 KiB, and the last)",
			n, len(text), elapsed, writes, limit, printerFlushEvery)
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) != n+1 {
		t.Fatalf("%d lines written, want %d", len(lines), n+1)
	}
	for i, line := range lines {
		if !strings.Contains(line, fmt.Sprintf(" GET /r/%d 200 ", i)) {
			t.Fatalf("line %d = %q, want request %d's", i, line, i)
		}
	}
}
