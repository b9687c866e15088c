package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// startAdmin serves rl's admin listener on a free loopback port and
// returns its base URL. It stops with the relay.
func startAdmin(t testing.TB, rl *testRelay) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rl.ServeAdmin(ln) }()
	t.Cleanup(func() {
		rl.stop()
		if err := <-done; err != nil {
			t.Errorf("ServeAdmin: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// scrape fetches adminURL/metrics and parses it with Prometheus' own text
// parser.
func scrape(t testing.TB, adminURL string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

// metric returns the value of the sample of family name whose labels
// include the given name/value pairs; a histogram gives its sample count.
// It reports whether the sample exists.
func metric(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	fam := fams[name]
	if fam == nil {
		return 0, false
	}
next:
	for _, m := range fam.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// want is an expected sample: a family, its labels, its value.
type want struct {
	name   string
	labels []string
	value  float64
}

func (w want) String() string {
	return fmt.Sprintf("%s{%s}", w.name, strings.Join(w.labels, ","))
}

// check compares samples with what is expected, exactly.
func check(t testing.TB, fams map[string]*dto.MetricFamily, wants ...want) {
	t.Helper()
	for _, w := range wants {
		got, ok := metric(fams, w.name, w.labels...)
		switch {
		case !ok:
			t.Errorf("%v: no such sample", w)
		case got != w.value:
			t.Errorf("%v = %v, want %v", w, got, w.value)
		}
	}
}

// waitMetrics scrapes until every sample has its expected value: counters
// are updated when the relay has finished with a request, which may be
// just after the visitor got its answer.
func waitMetrics(t testing.TB, adminURL string, wants ...want) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams := scrape(t, adminURL)
		ok := true
		for _, w := range wants {
			if got, found := metric(fams, w.name, w.labels...); !found || got != w.value {
				ok = false
			}
		}
		if ok {
			return fams
		}
		if time.Now().After(deadline) {
			check(t, fams, wants...)
			t.FailNow()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// After known traffic — ten requests answered, three to an unknown
// tunnel, one WebSocket, one agent with a wrong token — every counter has
// exactly its value, and the gauges go back to zero when the agent leaves.
func TestMetrics(t *testing.T) {
	rl := startRelay(t, "", withTokens(relay.Token{Name: "alice", Secret: "alice-secret-1"}))
	admin := startAdmin(t, rl)
	local := startLocal(t)
	ag, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}}, withToken("alice-secret-1"))
	client := visitorClient(rl.addr)

	// Before any traffic every labelled counter exists at zero.
	fams := scrape(t, admin)
	check(t, fams,
		want{"tunnel_relay_requests_total", []string{"code", "2xx"}, 0},
		want{"tunnel_relay_rejects_total", []string{"reason", "no_tunnel"}, 0},
		want{"tunnel_relay_certificate_events_total", []string{"result", "ready"}, 0},
		want{"tunnel_relay_certificate_events_total", []string{"result", "failed"}, 0},
		want{"tunnel_relay_agents_connected", nil, 1},
		want{"tunnel_relay_tunnels_online", nil, 1},
	)
	for _, name := range []string{"tunnel_relay_guard_frames_total", "tunnel_relay_guard_pings_total",
		"tunnel_relay_guard_streams_total", "tunnel_relay_guard_closed_sessions_total",
		"tunnel_relay_yamux_log_lines_total", "tunnel_relay_yamux_log_lines_suppressed_total"} {
		if fams[name] == nil {
			t.Errorf("no %s", name)
		}
	}

	// Nine GETs answered "GET /" (5 bytes each) and one POST of 1000
	// bytes answered with its length and hash (69 bytes).
	for range 9 {
		if status, body := get(t, client, urls[0]+"/"); status != 200 || body != "GET /" {
			t.Fatalf("GET: %d %q", status, body)
		}
	}
	resp, err := client.Post(urls[0]+"/sha256", "application/octet-stream", strings.NewReader(strings.Repeat("x", 1000)))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for range 3 {
		if status, _ := get(t, client, "http://nosuch.localhost/"); status != 404 {
			t.Fatalf("unknown tunnel answered %d", status)
		}
	}
	if err := agentErr(t, rl.url(), []agent.Tunnel{{Name: "other", Local: local.addr}}, withToken("wrong-token-1")); err == nil {
		t.Fatal("agent with a wrong token was admitted")
	}
	fams = waitMetrics(t, admin, want{"tunnel_relay_request_duration_seconds", nil, 10})
	check(t, fams,
		want{"tunnel_relay_requests_total", []string{"code", "2xx"}, 10},
		want{"tunnel_relay_requests_total", []string{"code", "4xx"}, 3},
		want{"tunnel_relay_requests_total", []string{"code", "1xx"}, 0},
		want{"tunnel_relay_requests_total", []string{"code", "5xx"}, 0},
		want{"tunnel_relay_bytes_in_total", nil, 1000},
		want{"tunnel_relay_bytes_out_total", nil, 9*5 + 69},
		want{"tunnel_relay_rejects_total", []string{"reason", "no_tunnel"}, 3},
		want{"tunnel_relay_rejects_total", []string{"reason", "auth_failed"}, 1},
		want{"tunnel_relay_rejects_total", []string{"reason", "tunnel_offline"}, 0},
		want{"tunnel_relay_reconnects_total", nil, 0},
		want{"tunnel_relay_agents_connected", nil, 1},
		want{"tunnel_relay_websockets_open", nil, 0},
	)

	// One WebSocket: open, then closed.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, err := dialWS(ctx, rl.addr, strings.Replace(urls[0], "http", "ws", 1)+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.Read(ctx); err != nil || string(msg) != "hello" {
		t.Fatalf("echo: %q %v", msg, err)
	}
	check(t, scrape(t, admin),
		want{"tunnel_relay_websockets_open", nil, 1},
		want{"tunnel_relay_requests_total", []string{"code", "1xx"}, 0},
	)
	if s, _ := metric(scrape(t, admin), "tunnel_relay_streams_open"); s < 1 {
		t.Errorf("streams_open = %v with a WebSocket open", s)
	}
	ws.Close(websocket.StatusNormalClosure, "bye")
	fams = waitMetrics(t, admin,
		want{"tunnel_relay_requests_total", []string{"code", "1xx"}, 1},
		want{"tunnel_relay_websockets_open", nil, 0},
	)
	check(t, fams,
		want{"tunnel_relay_requests_total", []string{"code", "2xx"}, 10},
		want{"tunnel_relay_request_duration_seconds", nil, 10}, // WebSockets are not timed
	)
	// The WebSocket's frames count both ways.
	if in, _ := metric(fams, "tunnel_relay_bytes_in_total"); in <= 1000 {
		t.Errorf("bytes_in_total = %v after a WebSocket sent data", in)
	}
	if out, _ := metric(fams, "tunnel_relay_bytes_out_total"); out <= 9*5+69 {
		t.Errorf("bytes_out_total = %v after a WebSocket received data", out)
	}

	// The agent leaves: every gauge returns to zero.
	ag.stop()
	waitMetrics(t, admin,
		want{"tunnel_relay_agents_connected", nil, 0},
		want{"tunnel_relay_tunnels_online", nil, 0},
		want{"tunnel_relay_tunnels_held", nil, 0},
		want{"tunnel_relay_streams_open", nil, 0},
		want{"tunnel_relay_websockets_open", nil, 0},
	)
}

// The bytes out are the agent's: a 502 page the relay writes itself, for
// a tunnel whose local server is down, adds nothing to bytes_out_total or
// to the tunnel's bytes_out; a 1000-byte answer from a local server adds
// 1000.
func TestBytesOutAreTheAgents(t *testing.T) {
	rl := startRelay(t, "", withAdminToken)
	admin := startAdmin(t, rl)
	local := startLocal(t)
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "down", Local: "127.0.0.1:1"}, {Name: "demo", Local: local.addr}})
	client := visitorClient(rl.addr)
	if st, body := get(t, client, urls[0]+"/x"); st != http.StatusBadGateway || body == "" {
		t.Fatalf("tunnel with its local server down: %d %q, want a 502 page", st, body)
	}
	if st, body := get(t, client, urls[1]+"/bytes?n=1000"); st != http.StatusOK || len(body) != 1000 {
		t.Fatalf("GET /bytes?n=1000: %d, %d bytes", st, len(body))
	}
	waitMetrics(t, admin, want{"tunnel_relay_request_duration_seconds", nil, 2})
	check(t, scrape(t, admin), want{"tunnel_relay_bytes_out_total", nil, 1000})
	// A tunnel's requests are counted after its bytes.
	out := map[string]int64{}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		done := int64(0)
		for _, ti := range listTunnels(t, admin) {
			out[ti.Name] = ti.BytesOut
			done += ti.Requests
		}
		if done == 2 || time.Now().After(deadline) {
			break
		}
	}
	if out["down"] != 0 || out["demo"] != 1000 {
		t.Errorf("admin API bytes_out: down %d, demo %d; want 0 and 1000", out["down"], out["demo"])
	}
}

// A local server's status outside 100-599 reaches the visitor as sent and
// is counted as 5xx, as RFC 9110 has a client treat it; not as a success.
func TestMetricsInvalidStatusIs5xx(t *testing.T) {
	rl := startRelay(t, "")
	admin := startAdmin(t, rl)
	local := serveConns(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 799 Odd\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
	})
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "odd", Local: local}})
	if st, body := get(t, visitorClient(rl.addr), urls[0]+"/"); st != 799 || body != "hi" {
		t.Fatalf("visitor got %d %q, want 799 \"hi\"", st, body)
	}
	fams := waitMetrics(t, admin, want{"tunnel_relay_request_duration_seconds", nil, 1})
	check(t, fams,
		want{"tunnel_relay_requests_total", []string{"code", "5xx"}, 1},
		want{"tunnel_relay_requests_total", []string{"code", "2xx"}, 0})
}

// Several relays in one process keep separate metrics.
func TestMetricsPerRelay(t *testing.T) {
	a, b := startRelay(t, ""), startRelay(t, "")
	adminA, adminB := startAdmin(t, a), startAdmin(t, b)
	get(t, visitorClient(a.addr), "http://nosuch.localhost/")
	waitMetrics(t, adminA, want{"tunnel_relay_rejects_total", []string{"reason", "no_tunnel"}, 1})
	check(t, scrape(t, adminB), want{"tunnel_relay_rejects_total", []string{"reason", "no_tunnel"}, 0})
}

// /readyz answers 200 while the relay serves and 503 as soon as shutdown
// begins, while in-flight requests drain; /healthz stays 200.
func TestReadyzDraining(t *testing.T) {
	rl := startRelay(t, "")
	admin := startAdmin(t, rl)
	entered, release := make(chan struct{}), make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	slow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "finished")
	})}
	go slow.Serve(ln)
	defer slow.Close()
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: ln.Addr().String()}})

	status := func(path string) int {
		t.Helper()
		resp, err := http.Get(admin + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor(t, 5*time.Second, "/readyz 200", func() bool { return status("/readyz") == 200 })

	inflight := make(chan error, 1)
	go func() {
		resp, err := visitorClient(rl.addr).Get("http://demo.localhost/")
		if err == nil {
			resp.Body.Close()
		}
		inflight <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shutdown := make(chan error, 1)
	go func() { shutdown <- rl.Shutdown(ctx) }()
	waitFor(t, 5*time.Second, "/readyz 503 while draining", func() bool { return status("/readyz") == 503 })
	if got := status("/healthz"); got != 200 {
		t.Errorf("/healthz while draining: %d", got)
	}
	close(release)
	if err := <-inflight; err != nil {
		t.Errorf("in-flight request: %v", err)
	}
	if err := <-shutdown; err != nil {
		t.Fatal(err)
	}
	// Once shut down, the admin listener is gone too.
	if resp, err := http.Get(admin + "/healthz"); err == nil {
		resp.Body.Close()
		t.Error("admin listener still answers after shutdown")
	}
}
