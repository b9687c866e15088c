package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
)

// The inspector replays a request of an HTTPS local server (--local-https
// --local-ca) the way the agent reached it: over TLS, verified with the
// same CA, with ALPN http/1.1. The local server sees the replay.
func TestInspectorReplayLocalHTTPS(t *testing.T) {
	rl := startRelay(t, "")
	ts, pool := startHTTPSLocal(t)
	inspector := make(chan string, 1)
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "secure", Local: ts.Listener.Addr().String(), LocalHTTPS: true, LocalCA: pool}}, func(c *agent.Config) {
		c.InspectAddr = "127.0.0.1:0"
		prev := c.OnEvent
		c.OnEvent = func(e agent.Event) {
			if e.Kind == agent.EventInspector {
				if e.Err != nil {
					t.Errorf("inspector: %v", e.Err)
				}
				inspector <- e.Inspector
			}
			prev(e)
		}
	})
	var base string
	select {
	case base = <-inspector:
	case <-time.After(10 * time.Second):
		t.Fatal("no EventInspector")
	}

	want := "tls=true alpn=http/1.1 proto=HTTP/1.1 host=secure.localhost:" + port(rl.addr) + " path=/hello"
	if status, body := get(t, visitorClient(rl.addr), urls[0]+"/hello"); status != 200 || body != want {
		t.Fatalf("GET = %d %q, want 200 %q", status, body, want)
	}
	id := waitRequest(t, base, "GET", "/hello", false)

	for _, edit := range []string{"", `{"path":"/edited"}`} {
		resp, err := http.Post(fmt.Sprintf("%s/api/requests/%d/replay", base, id), "application/json", strings.NewReader(edit))
		if err != nil {
			t.Fatal(err)
		}
		var ex agent.Exchange
		err = json.NewDecoder(resp.Body).Decode(&ex)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("replay %q: %s %v", edit, resp.Status, err)
		}
		path := "/hello"
		if edit != "" {
			path = "/edited"
		}
		want := "tls=true alpn=http/1.1 proto=HTTP/1.1 host=secure.localhost:" + port(rl.addr) + " path=" + path
		if ex.Error != "" || ex.Status != 200 || string(ex.ResponseBody.Data) != want {
			t.Errorf("replay %q: status %d error %q body %q; want 200 %q", edit, ex.Status, ex.Error, ex.ResponseBody.Data, want)
		}
	}
}
