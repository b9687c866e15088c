package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
)

// sampleEvents has one event of every kind expose prints.
func sampleEvents() []agent.Event {
	at := time.Date(2026, 1, 2, 14, 3, 7, 0, time.Local)
	ex := &agent.Exchange{ID: 3, Tunnel: "demo", Remote: "192.0.2.7:5000", Time: at, Method: "POST", Path: "/api", Status: 500}
	ws := agent.WebSocket{ID: 1, Tunnel: "demo", Remote: "192.0.2.7:5001", Path: "/chat", Time: at, Open: true}
	closed := ws
	closed.Open, closed.CloseCode, closed.CloseReason, closed.ClosedBy = false, 4001, "kicked", "server"
	closed.Duration += 41500e6 // 41.5 s, in the nanoseconds of time.Duration
	closed.MessagesIn, closed.MessagesOut, closed.BytesIn, closed.BytesOut = 3, 5, 120, 3400
	return []agent.Event{
		{Kind: agent.EventInspector, Time: at, Inspector: "http://127.0.0.1:4040"},
		{Kind: agent.EventOnline, Time: at, RTT: 1500 * time.Microsecond, Inspector: "http://127.0.0.1:4040", Tunnels: []proto.Granted{{Name: "demo", URL: "https://demo.example.com"}}},
		{Kind: agent.EventRequest, Time: at, HTTP: ex, Request: &proto.Event{Name: "demo", Time: at, Method: "POST", Path: "/api", Status: 500, Duration: 2 * time.Millisecond, BytesIn: 10, BytesOut: 20}},
		{Kind: agent.EventWebSocketOpen, Time: at, WebSocket: &ws},
		{Kind: agent.EventWebSocketClose, Time: at.Add(41500 * time.Millisecond), WebSocket: &closed},
		{Kind: agent.EventRTT, Time: at, RTT: 2 * time.Millisecond},
		{Kind: agent.EventNotice, Time: at, Notice: &proto.Notice{Kind: proto.NoticeDraining, Message: "relay is shutting down"}},
		{Kind: agent.EventOffline, Time: at, Attempt: 1, Retry: 1200 * time.Millisecond, Err: errors.New("connection to relay lost")},
	}
}

func runPrinter(opts printerOptions, events []agent.Event) (out, errOut string) {
	var o, e bytes.Buffer
	p := newPrinter(IOStreams{Out: &o, ErrOut: &e}, printTunnelURLs, opts)
	for _, ev := range events {
		p.onEvent(ev)
	}
	p.close()
	return o.String(), e.String()
}

// TestPrinterJSON checks that with --json every line of stdout is a JSON
// object with the fields the help documents for its event, and that nothing
// else is printed.
func TestPrinterJSON(t *testing.T) {
	out, errOut := runPrinter(printerOptions{JSON: true, Block: true}, sampleEvents())
	if errOut != "" {
		t.Errorf("stderr: %q, want nothing", errOut)
	}
	checkJSONLines(t, out, []string{"inspector", "online", "request", "websocket_open", "websocket_close", "rtt", "notice", "offline"})
}

// documentedFields are the fields expose's help promises for each event
// (optional ones such as replay and error are left out).
var documentedFields = map[string][]string{
	"online":          {"tunnels", "rtt_ms", "inspector"},
	"offline":         {"error", "attempt", "retry_ms"},
	"notice":          {"kind", "message"},
	"request":         {"tunnel", "method", "path", "status", "duration_ms", "bytes_in", "bytes_out"},
	"websocket_open":  {"id", "tunnel", "path"},
	"websocket_close": {"id", "tunnel", "path", "code", "duration_ms", "messages_in", "messages_out", "bytes_in", "bytes_out"},
	"rtt":             {"rtt_ms"},
	"inspector":       {"inspector"},
}

// checkJSONLines parses every line of out and checks its fields; want, if
// not nil, is the exact sequence of event names.
func checkJSONLines(t *testing.T, out string, want []string) []map[string]any {
	t.Helper()
	var got []string
	var objs []map[string]any
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", line, err)
		}
		ev, _ := m["event"].(string)
		if _, err := time.Parse(time.RFC3339Nano, m["time"].(string)); err != nil {
			t.Errorf("%s: time %v: %v", ev, m["time"], err)
		}
		fields, ok := documentedFields[ev]
		if !ok {
			t.Errorf("undocumented event %q in %s", ev, line)
		}
		for _, f := range fields {
			if _, ok := m[f]; !ok {
				t.Errorf("%s event lacks %q: %s", ev, f, line)
			}
		}
		got = append(got, ev)
		objs = append(objs, m)
	}
	if want != nil && strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("events %q, want %q", got, want)
	}
	return objs
}

// TestPrinterHuman checks the status block, the request and WebSocket
// lines, and that without Color nothing carries an escape code.
func TestPrinterHuman(t *testing.T) {
	out, errOut := runPrinter(printerOptions{Block: true, Local: "localhost:8080", Relay: "https://example.com"}, sampleEvents())
	wantOut := `https://demo.example.com
wss://demo.example.com
14:03:07 POST /api 500 2ms 20B
14:03:07 WS /chat 101 opened
14:03:48 WS /chat 101 41.5s 120B/3400B 3/5 msgs closed 4001 "kicked" by server
`
	wantErr := `forwarding  https://demo.example.com → localhost:8080
relay       https://example.com (round trip 1.5ms)
inspector   http://127.0.0.1:4040
status      online · round trip 2ms · requests 1 (1 failed) · WebSockets 0 open, 1 in all
relay says: relay is shutting down
reconnecting (attempt 1, next in 1.2s): connection to relay lost
summary     requests 1 (1 failed) · WebSockets 0 open, 1 in all
`
	if out != wantOut {
		t.Errorf("stdout:\n%s\nwant:\n%s", out, wantOut)
	}
	if errOut != wantErr {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, wantErr)
	}
	if strings.Contains(out+errOut, "\x1b") {
		t.Error("escape codes without colour")
	}
	// With colour, the same lines do carry them (so the check above means something).
	out, _ = runPrinter(printerOptions{Color: true}, sampleEvents())
	if !strings.Contains(out, "\x1b[31m500\x1b[0m") {
		t.Errorf("coloured output lacks a red 500:\n%q", out)
	}
}

// TestPrinterStatusLines checks the status block's counts: a status line
// comes with a round-trip measurement at most once a minute, and only when
// the counts changed; a summary ends the output.
func TestPrinterStatusLines(t *testing.T) {
	at := time.Date(2026, 1, 2, 14, 0, 0, 0, time.Local)
	ok := func(d time.Duration) agent.Event {
		return agent.Event{Kind: agent.EventRequest, Time: at.Add(d), Request: &proto.Event{Name: "demo", Method: "GET", Path: "/", Status: 200}}
	}
	rtt := func(d time.Duration) agent.Event {
		return agent.Event{Kind: agent.EventRTT, Time: at.Add(d), RTT: 3 * time.Millisecond}
	}
	events := []agent.Event{
		{Kind: agent.EventOnline, Time: at, Tunnels: []proto.Granted{{Name: "demo", URL: "https://demo.example.com"}}},
		rtt(10 * time.Second), // nothing yet: no traffic
		ok(15 * time.Second),
		rtt(20 * time.Second), // a status line
		ok(25 * time.Second),
		rtt(30 * time.Second),  // changed, but within the minute: none
		rtt(90 * time.Second),  // a status line
		rtt(160 * time.Second), // unchanged: none
	}
	_, errOut := runPrinter(printerOptions{Block: true, Local: "localhost:8080", Relay: "https://example.com"}, events)
	var status []string
	for _, line := range strings.Split(errOut, "\n") {
		if strings.HasPrefix(line, "status") || strings.HasPrefix(line, "summary") {
			status = append(status, line)
		}
	}
	want := []string{
		"status      online · round trip 3ms · requests 1 (0 failed) · WebSockets 0 open, 0 in all",
		"status      online · round trip 3ms · requests 2 (0 failed) · WebSockets 0 open, 0 in all",
		"summary     requests 2 (0 failed) · WebSockets 0 open, 0 in all",
	}
	if strings.Join(status, "\n") != strings.Join(want, "\n") {
		t.Errorf("status lines:\n%s\nwant:\n%s", strings.Join(status, "\n"), strings.Join(want, "\n"))
	}
}

// TestPrinterQuiet checks that --quiet prints the URLs and errors only.
func TestPrinterQuiet(t *testing.T) {
	out, errOut := runPrinter(printerOptions{Quiet: true, Block: true}, sampleEvents())
	if want := "https://demo.example.com\nwss://demo.example.com\n"; out != want {
		t.Errorf("stdout %q, want %q", out, want)
	}
	if want := "reconnecting (attempt 1, next in 1.2s): connection to relay lost\n"; errOut != want {
		t.Errorf("stderr %q, want %q", errOut, want)
	}
}

// TestUseColor checks when expose colours its output.
func TestUseColor(t *testing.T) {
	saved := isTerminal
	defer func() { isTerminal = saved }()
	for _, tt := range []struct {
		tty  bool
		env  map[string]string
		want bool
	}{
		{tty: true, want: true},
		{tty: false, want: false},
		{tty: true, env: map[string]string{"NO_COLOR": "1"}, want: false},
		{tty: true, env: map[string]string{"TERM": "dumb"}, want: false},
	} {
		isTerminal = func(io.Writer) bool { return tt.tty }
		if got := useColor(nil, func(k string) string { return tt.env[k] }); got != tt.want {
			t.Errorf("tty %v env %v: useColor = %v, want %v", tt.tty, tt.env, got, tt.want)
		}
	}
	// A real pipe is no terminal.
	isTerminal = saved
	var buf bytes.Buffer
	if useColor(&buf, func(string) string { return "" }) {
		t.Error("useColor on a buffer")
	}
}

// TestExposeOutputModes runs expose as a process in its output modes
// against one relay: --json (every stdout line parses and carries the
// documented fields), plain output to a pipe and with NO_COLOR (no escape
// codes anywhere), and --quiet (only the URL lines).
func TestExposeOutputModes(t *testing.T) {
	local := startLocalServer(t)
	_, relayAddr := startRelay(t)
	client := viaRelay(t, relayAddr)

	// traffic makes one request and one WebSocket session through url, and
	// waits until expose has reported the session's end (done).
	traffic := func(t *testing.T, p *proc, url string, done func(string) bool) {
		t.Helper()
		if status, body := get(t, client, url+"/"); status != http.StatusOK || body != "hello from local" {
			t.Fatalf("GET: %d %q", status, body)
		}
		if got := wsEcho(t, client, webSocketURL(url)+"/ws", "hi"); got != "echo: hi" {
			t.Fatalf("WebSocket: %q", got)
		}
		if done != nil {
			p.stdout.find(t, "the WebSocket's end", done)
		}
	}
	stop := func(t *testing.T, p *proc) {
		t.Helper()
		p.signal(t, syscall.SIGINT)
		if code := p.exitCode(t); code != 0 {
			t.Fatalf("expose exited %d", code)
		}
	}
	noEscapes := func(t *testing.T, p *proc) {
		t.Helper()
		for _, l := range append(append([]string{}, p.stdout.all...), p.stderr.all...) {
			if strings.Contains(l, "\x1b") {
				t.Errorf("escape code in %q", l)
			}
		}
	}

	t.Run("json", func(t *testing.T) {
		p := startExpose(t, "expose", relayAddr, "-p", local.port(), "-s", "json", "--json", "--inspect-addr", "127.0.0.1:0")
		online := p.stdout.find(t, "online event", func(s string) bool { return strings.Contains(s, `"event":"online"`) })
		var ev struct {
			Tunnels []struct{ URL string } `json:"tunnels"`
		}
		if err := json.Unmarshal([]byte(online), &ev); err != nil || len(ev.Tunnels) != 1 {
			t.Fatalf("online event %s: %v", online, err)
		}
		traffic(t, p, ev.Tunnels[0].URL, func(s string) bool { return strings.Contains(s, `"event":"websocket_close"`) })
		stop(t, p)
		objs := checkJSONLines(t, strings.Join(p.stdout.all, "\n"), nil)
		seen := map[string]map[string]any{}
		for _, o := range objs {
			seen[o["event"].(string)] = o
		}
		for _, want := range []string{"inspector", "online", "request", "websocket_open", "websocket_close"} {
			if seen[want] == nil {
				t.Errorf("no %s event in %q", want, p.stdout.all)
			}
		}
		if r := seen["request"]; r != nil && (r["method"] != "GET" || r["path"] != "/" || r["status"] != 200.0 || r["bytes_out"] != 16.0) {
			t.Errorf("request event %v", r)
		}
		if c := seen["websocket_close"]; c != nil && (c["code"] != 1000.0 || c["reason"] != "bye" || c["messages_in"] != 1.0 || c["messages_out"] != 1.0) {
			t.Errorf("websocket_close event %v", c)
		}
		noEscapes(t, p)
	})

	for _, env := range [][]string{nil, {"NO_COLOR=1"}} {
		t.Run(fmt.Sprintf("plain%v", env), func(t *testing.T) {
			p := startTunnel(t, "expose", env, "expose", "--relay", "http://"+relayAddr, "-p", local.port(), "--inspect-addr", "127.0.0.1:0")
			url := p.stdout.first(t, 1)[0]
			p.stderr.find(t, "inspector line", func(s string) bool { return strings.HasPrefix(s, "inspector   http://127.0.0.1:") })
			traffic(t, p, url, func(s string) bool {
				return strings.Contains(s, " WS /ws 101 ") && strings.Contains(s, " closed 1000 ")
			})
			stop(t, p)
			noEscapes(t, p)
		})
	}

	t.Run("quiet", func(t *testing.T) {
		p := startExpose(t, "expose", relayAddr, "-p", local.port(), "--quiet", "--no-inspect")
		lines := p.stdout.first(t, 2)
		traffic(t, p, lines[0], nil)
		stop(t, p)
		if len(p.stdout.all) != 2 || !strings.HasPrefix(p.stdout.all[1], "ws://") {
			t.Errorf("stdout %q, want the two URL lines only", p.stdout.all)
		}
		if len(p.stderr.all) != 0 {
			t.Errorf("stderr %q, want nothing", p.stderr.all)
		}
	})
}

// TestPrinterInspectorTaken checks the one line expose prints, in its status
// block, when the inspector's port is taken: it goes on without it.
func TestPrinterInspectorTaken(t *testing.T) {
	events := []agent.Event{
		{Kind: agent.EventInspector, Err: errors.New("inspector not started: listen tcp 127.0.0.1:4040: bind: address already in use")},
		{Kind: agent.EventOnline, RTT: time.Millisecond, Tunnels: []proto.Granted{{Name: "demo", URL: "http://demo.localhost:8000"}}},
	}
	_, errOut := runPrinter(printerOptions{Block: true, Local: "localhost:3000", Relay: "http://localhost:8000"}, events)
	want := `forwarding  http://demo.localhost:8000 → localhost:3000
relay       http://localhost:8000 (round trip 1ms)
inspector   off: inspector not started: listen tcp 127.0.0.1:4040: bind: address already in use (choose another address with --inspect-addr)
`
	if errOut != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, want)
	}

	// tunnel start has no --inspect-addr: its hint names the file's key.
	_, errOut = runPrinter(printerOptions{Block: true, Locals: []string{"localhost:3000"}, Relay: "http://localhost:8000", InspectSetting: "inspect_addr: in tunnels.yaml"}, events)
	if want := "(choose another address with inspect_addr: in tunnels.yaml)\n"; !strings.HasSuffix(errOut, want) {
		t.Errorf("start's stderr:\n%s\nwant it to end with %q", errOut, want)
	}
}
