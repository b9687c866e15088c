package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
)

// startHostLocal is a local server that reports the Host and
// X-Forwarded-Host it saw: "/" in the body, /ws as the first WebSocket
// message.
func startHostLocal(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seen := func(r *http.Request) string {
		return fmt.Sprintf("host=%s xfh=%s", r.Host, strings.Join(r.Header.Values("X-Forwarded-Host"), ","))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		if err := c.Write(r.Context(), websocket.MessageText, []byte(seen(r))); err != nil {
			return
		}
		c.Read(r.Context()) // until the visitor closes
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, seen(r)) })
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// --host-header: the local server gets the Host it asked for (its own
// address with rewrite, or a literal name), for plain requests and
// WebSocket upgrades, and the public host name in X-Forwarded-Host. A
// tunnel without it on the same agent keeps the public Host.
func TestHostHeaderRewrite(t *testing.T) {
	rl := startRelay(t, "")
	local := startHostLocal(t)
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{
		{Name: "rw", Local: local, HostHeader: agent.HostRewrite},
		{Name: "lit", Local: local, HostHeader: "myapp.test:8080"},
		{Name: "plain", Local: local},
	})
	rp := port(rl.addr)
	c := visitorClient(rl.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, tc := range []struct{ name, host string }{
		{"rw", local},
		{"lit", "myapp.test:8080"},
		{"plain", "plain.localhost:" + rp},
	} {
		public := tc.name + ".localhost:" + rp
		want := "host=" + tc.host + " xfh=" + public
		// A visitor's own X-Forwarded-Host never gets through.
		if status, body := get(t, c, urls[i]+"/", "X-Forwarded-Host", "evil.example"); status != 200 || body != want {
			t.Errorf("%s: GET = %d %q, want %q", tc.name, status, body, want)
		}
		ws, err := dialWS(ctx, rl.addr, "ws://"+public+"/ws")
		if err != nil {
			t.Fatalf("%s: WebSocket: %v", tc.name, err)
		}
		_, msg, err := ws.Read(ctx)
		ws.Close(websocket.StatusNormalClosure, "")
		if err != nil || string(msg) != want {
			t.Errorf("%s: the WebSocket upgrade reached the local server as %q (%v), want %q", tc.name, msg, err, want)
		}
	}
}

// The relay checks the value itself: an agent that skips the agent's
// check cannot make it write a header line of its choice.
func TestHostHeaderRefusedByRelay(t *testing.T) {
	rl := startRelay(t, "")
	for _, v := range []string{"my app", "a\r\nX-Injected: 1", "evil.example/path", "a:99999"} {
		err := rawHello(t, rl.url(), &proto.Hello{Version: proto.Version, Tunnels: []proto.TunnelRequest{{Name: "bad", HostHeader: v}}})
		var perr *proto.Error
		if !errors.As(err, &perr) || perr.Code != proto.CodeBadRequest || !strings.Contains(perr.Message, "is not a host or host:port") {
			t.Errorf("host_header %q: %v, want bad-request naming the host header", v, err)
		}
	}
	// Nothing was claimed.
	if status, _ := get(t, visitorClient(rl.addr), "http://bad.localhost/"); status != http.StatusNotFound {
		t.Errorf("the refused name answers %d, want 404", status)
	}
}

// A relay that predates host_header ignores it: the agent notices the
// missing echo, says goodbye (freeing the names) and stops with one line
// that says what to do, rather than serve a local server that would see
// the public host name.
func TestHostHeaderOldRelay(t *testing.T) {
	goodbye := make(chan bool, 1)
	relayURL := fakeRelay(t, func(hello *proto.Hello, ctrl net.Conn) {
		// Welcome as a relay without the field: no host_header echoed.
		if proto.WriteMessage(ctrl, grantAll(hello, "tunnel/old")) != nil {
			return
		}
		m, err := proto.ReadMessage(ctrl)
		_, ok := m.(*proto.Goodbye)
		select {
		case goodbye <- ok && err == nil:
		default:
		}
	})

	local := startHostLocal(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := agent.Run(ctx, agent.Config{
		Relay:      relayURL,
		Tunnels:    []agent.Tunnel{{Name: "legacy", Local: local, HostHeader: agent.HostRewrite}},
		Logger:     testLogger(t),
		MinBackoff: 10 * time.Millisecond,
	})
	var perm *agent.PermanentError
	if !errors.As(err, &perm) {
		t.Fatalf("Run = %v, want a PermanentError", err)
	}
	want := fmt.Sprintf("relay %s ignored the Host header %q asked for http://legacy.localhost: it is older than this agent; update the relay, or run without the host header", strings.TrimPrefix(relayURL, "http://"), local)
	if err.Error() != want {
		t.Errorf("Run = %q\nwant  %q", err, want)
	}
	select {
	case ok := <-goodbye:
		if !ok {
			t.Error("the agent did not say goodbye to the old relay")
		}
	case <-time.After(10 * time.Second):
		t.Error("no goodbye")
	}
}
