package main

import (
	"bytes"
	"errors"
	"strings"
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
