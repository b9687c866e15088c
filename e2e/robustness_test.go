package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// A visitor's very long URL cannot disconnect the agent: the request event
// carries a truncated path, and the tunnel keeps serving.
func TestLongURLDoesNotKillSession(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	ag, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	c := visitorClient(rl.addr)
	// '<' becomes six bytes in JSON: 12,000 of them would exceed the 64 KiB
	// message limit if the path were sent whole.
	long := "/?q=" + strings.Repeat("<", 12000)
	if status, _ := get(t, c, "http://demo.localhost"+long); status != 200 {
		t.Fatalf("long URL: %d", status)
	}
	select {
	case ev := <-ag.events:
		if p := ev.Request.Path; len(p) > 2048 || !strings.HasPrefix(p, "/?q=<<<") {
			t.Fatalf("event path of %d bytes: %.40q", len(p), p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for the long request")
	}
	if status, _ := get(t, c, "http://demo.localhost/after"); status != 200 {
		t.Fatalf("after the long URL: %d", status)
	}
	select {
	case err := <-ag.offline:
		t.Fatalf("agent went offline: %v", err)
	default:
	}
}

// Visitors hammering a tunnel while its agent reconnects again and again get
// answers or clean errors; the race detector and the relay's panic recovery
// would catch a session that is visible before it is ready.
func TestVisitorsDuringReconnects(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	proxy := startCutProxy(t, rl.addr)
	ag, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}}, dialVia(proxy))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, bad atomic.Int64
	for range 4 {
		wg.Go(func() {
			c := visitorClient(rl.addr)
			defer c.CloseIdleConnections()
			for i := 0; i < 5000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get("http://demo.localhost/x")
				if err != nil {
					continue
				}
				resp.Body.Close()
				switch resp.StatusCode {
				case 200:
					ok.Add(1)
				case 502, 404:
				default:
					bad.Add(1)
				}
			}
		})
	}
	for i := range 5 {
		proxy.cut()
		select {
		case <-ag.online:
		case <-time.After(10 * time.Second):
			t.Fatalf("cut %d: agent not back", i)
		}
	}
	close(stop)
	wg.Wait()
	if bad.Load() > 0 || ok.Load() == 0 {
		t.Fatalf("%d answers 200, %d unexpected statuses", ok.Load(), bad.Load())
	}
}

// agent.Listen reports each visitor's own address, also when two visitors
// follow each other: keep-alive streams are not shared between visitors.
func TestListenRemoteAddrPerVisitor(t *testing.T) {
	rl := startRelay(t, "")
	ln, err := agent.Listen(context.Background(), agent.Config{Relay: rl.url(), Tunnels: []agent.Tunnel{{Name: "ra"}}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.RemoteAddr)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.2"} {
		c := &http.Client{Transport: visitorTransport(rl.addr, &net.TCPAddr{IP: net.ParseIP(ip)})}
		if _, body := get(t, c, ln.URL()+"/"); !strings.HasPrefix(body, ip+":") {
			t.Errorf("visitor %s seen as %s", ip, body)
		}
		c.CloseIdleConnections()
	}
}

// agent.Listen returns the first attempt's error instead of retrying
// silently forever.
func TestListenRelayDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	_, err := agent.Listen(context.Background(), agent.Config{Relay: "http://" + addr, Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Listen to a closed port: %v", err)
	}
}

// A local request that never ends does not keep the agent from reconnecting
// when its relay connection is cut.
func TestReconnectWithLocalRequestInFlight(t *testing.T) {
	rl := startRelay(t, "")
	block := make(chan struct{})
	defer close(block)
	entered := make(chan struct{}, 1)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-block // a handler that ignores r.Context()
	})}
	go srv.Serve(ln)
	defer srv.Close()
	proxy := startCutProxy(t, rl.addr)
	ag, _ := startAgent(t, rl.url(), []agent.Tunnel{{Name: "lp", Local: ln.Addr().String()}}, dialVia(proxy))
	go func() {
		resp, err := visitorClient(rl.addr).Get("http://lp.localhost/")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	proxy.cut()
	select {
	case <-ag.online:
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not reconnect while a local request was in flight")
	}
}

// A local server that answers with a status code below 100 ("099") gets
// its request a 502, and the exchange frees its stream: it must neither
// panic the relay's handler nor leak the tunnel's stream slot.
func TestStatusBelow100FreesStream(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) {
		c.Limits.MaxStreamsPerTunnel = 2
		c.OpenTimeout = time.Second
	})
	local := serveConns(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if req.URL.Path == "/bad" {
				io.WriteString(c, "HTTP/1.1 099 Odd\r\n\r\n")
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local}})
	for i := range 3 {
		c := visitorClient(rl.addr)
		c.Timeout = 5 * time.Second
		resp, err := c.Get("http://demo.localhost/bad")
		if err != nil {
			t.Fatalf("odd answer %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "malformed status code 099") {
			t.Errorf("odd answer %d: %d %.120q; want 502 saying the status code is malformed", i, resp.StatusCode, b)
		}
		c.CloseIdleConnections()
	}
	c := visitorClient(rl.addr)
	c.Timeout = 5 * time.Second
	resp, err := c.Get("http://demo.localhost/good")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Fatalf("after three odd answers, a normal request got %d %.100q (stream slots leaked?)", resp.StatusCode, strings.TrimSpace(string(b)))
	}
}
