package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

func TestSmoke(t *testing.T) {
	rs, err := relay.New(relay.Config{Domain: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go rs.Serve(ln)
	defer rs.Close()

	local := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s %s xff=%s", r.Host, r.URL.Path, r.Header.Get("X-Forwarded-For"))
	})}
	lln, _ := net.Listen("tcp", "127.0.0.1:0")
	go local.Serve(lln)
	defer local.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	online := make(chan agent.Event, 1)
	go func() {
		done <- agent.Run(ctx, agent.Config{Relay: "http://" + ln.Addr().String(), Tunnels: []agent.Tunnel{{Name: "demo", Local: lln.Addr().String()}},
			OnEvent: func(e agent.Event) {
				t.Logf("event %+v", e)
				if e.Kind == agent.EventOnline {
					online <- e
				}
			}})
	}()
	ev := <-online
	t.Log(ev.Tunnels)
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/x", nil)
	req.Host = "demo.localhost"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	t.Log(resp.Status, string(b))
	cancel()
	t.Log(<-done)
}
