package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// A visitor that stops reading a download holds the stream only until the
// write-idle timeout: then the relay ends it, the local server's write
// fails, and the tunnel's stream slot is free for the next visitor.
func TestStalledVisitorIsCutOff(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) {
		c.Limits.WriteIdleTimeout = time.Second
		c.Limits.MaxStreamsPerTunnel = 1
	})
	writeErr := make(chan error, 1)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/flood" {
			io.WriteString(w, "ok")
			return
		}
		flood(w, writeErr)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: ln.Addr().String()}})

	// The visitor reads the headers and then nothing.
	c, err := net.Dial("tcp", rl.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	io.WriteString(c, "GET /flood HTTP/1.1\r\nHost: demo.localhost\r\n\r\n")
	waitFloodCut(t, writeErr)
	// The slot is free again: the next visitor gets through.
	waitFor(t, 5*time.Second, "the stream slot to be freed", func() bool {
		status, _ := get(t, visitorClient(rl.addr), "http://demo.localhost/next")
		return status == 200
	})
}

// A WebSocket visitor that stops reading while the server keeps sending is
// disconnected after the write-idle timeout.
func TestStalledWebSocketIsCutOff(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) { c.Limits.WriteIdleTimeout = time.Second })
	ended := make(chan error, 1)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		msg := make([]byte, 32<<10)
		for i := 0; i < 32768; i++ { // at most 1 GiB
			ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
			err := ws.Write(ctx, websocket.MessageBinary, msg)
			cancel()
			if err != nil {
				ended <- err
				return
			}
		}
		ended <- nil
	})}
	go srv.Serve(ln)
	defer srv.Close()
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: ln.Addr().String()}})

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	ws, err := dialWS(ctx, rl.addr, "ws://demo.localhost/ws")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	select {
	case err := <-ended:
		if err == nil {
			t.Fatal("1 GiB went to a WebSocket visitor that reads nothing")
		}
	case <-ctx.Done():
		t.Fatal("the stalled WebSocket was not cut off")
	}
}

// A local server that never reads an upload: the agent ends the stream
// after its write-idle timeout, and the visitor gets an answer instead of
// waiting for ever.
func TestLocalServerNotReading(t *testing.T) {
	rl := startRelay(t, "")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // accepted, never read
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: ln.Addr().String()}},
		func(c *agent.Config) { c.WriteIdleTimeout = time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://demo.localhost/upload", io.LimitReader(newPattern(), 1<<30))
	resp, err := visitorClient(rl.addr).Do(req)
	if ctx.Err() != nil {
		t.Fatal("the upload to a local server that never reads hung")
	}
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode < 500 {
			t.Fatalf("upload answered %d", resp.StatusCode)
		}
	}
}

// 300 visitors at once to an agent that never accepts its streams: each
// waits a bounded time and gets 503 or 504 with a reason; the agent's
// session survives it.
func TestAgentThatNeverAccepts(t *testing.T) {
	rl := startRelay(t, "", func(c *relay.Config) { c.OpenTimeout = time.Second })
	sess := silentAgent(t, rl.url(), "stuck")

	var wg sync.WaitGroup
	errs := make(chan error, 300)
	for i := range 300 {
		wg.Go(func() {
			ip := net.ParseIP(fmt.Sprintf("127.0.1.%d", 1+i%250))
			c := &http.Client{Transport: visitorTransport(rl.addr, &net.TCPAddr{IP: ip}), Timeout: 30 * time.Second}
			defer c.CloseIdleConnections()
			resp, err := c.Get("http://stuck.localhost/")
			if err != nil {
				errs <- err
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case resp.StatusCode == 504 && strings.Contains(string(body), "did not answer in time"):
			case resp.StatusCode == 503 && (strings.Contains(string(body), "connections open at once") || strings.Contains(string(body), "waiting for it to answer")):
			default:
				errs <- fmt.Errorf("%d %q", resp.StatusCode, body)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("a visitor waited 30s: %v", err)
		}
		t.Error(err)
	}
	if sess.IsClosed() {
		t.Fatal("the agent's session did not survive")
	}
	// The relay still routes to it: the answer is "did not answer", not
	// "offline".
	if status, _ := get(t, visitorClient(rl.addr), "http://stuck.localhost/"); status != 504 && status != 503 {
		t.Fatalf("after the flood: %d", status)
	}
}

// An event stream whose server stays quiet longer than the write-idle
// timeout between events is not cut, over HTTP/1.1 or HTTP/2: the timeout
// bounds a write the visitor does not take, not the wait for the next
// event. (Over HTTP/2 the deadline left armed between writes reset the
// stream.)
func TestQuietEventStreamOutlivesWriteIdleTimeout(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "http1", true: "http2"}[h2], func(t *testing.T) {
			rl := startTLSRelay(t, func(c *relay.Config) { c.Limits.WriteIdleTimeout = time.Second })
			local := serveHandler(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				for i := range 3 {
					if i > 0 {
						time.Sleep(1500 * time.Millisecond)
					}
					fmt.Fprintf(w, "data: %d\n\n", i)
					w.(http.Flusher).Flush()
				}
			})
			_, urls := startAgent(t, "https://localhost:"+port(rl.addr), []agent.Tunnel{{Name: "demo", Local: local}}, agentTLS(rl.ca, rl.addr))
			res, err := httpsClient(rl.ca, rl.addr, h2).Get(urls[0] + "/events")
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if res.ProtoMajor != map[bool]int{false: 1, true: 2}[h2] {
				t.Fatalf("the visitor spoke %s", res.Proto)
			}
			b, err := io.ReadAll(res.Body)
			if err != nil || string(b) != "data: 0\n\ndata: 1\n\ndata: 2\n\n" {
				t.Errorf("%s: read %q, %v; want three events", res.Proto, b, err)
			}
		})
	}
}

// Over HTTP/2 too, a visitor that stops reading a download holds the
// stream only until the write-idle timeout.
func TestStalledHTTP2VisitorIsCutOff(t *testing.T) {
	rl := startTLSRelay(t, func(c *relay.Config) { c.Limits.WriteIdleTimeout = time.Second })
	writeErr := make(chan error, 1)
	local := serveHandler(t, func(w http.ResponseWriter, r *http.Request) { flood(w, writeErr) })
	_, urls := startAgent(t, "https://localhost:"+port(rl.addr), []agent.Tunnel{{Name: "demo", Local: local}}, agentTLS(rl.ca, rl.addr))
	res, err := httpsClient(rl.ca, rl.addr, true).Get(urls[0] + "/flood")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close() // read nothing
	if res.ProtoMajor != 2 {
		t.Fatalf("the visitor spoke %s", res.Proto)
	}
	waitFloodCut(t, writeErr)
}

// flood writes up to 1 GiB as a local server's answer, and reports its
// first write error (nil: it all went out) on writeErr.
func flood(w http.ResponseWriter, writeErr chan<- error) {
	buf := make([]byte, 64<<10)
	for i := 0; i < 16384; i++ {
		if _, err := w.Write(buf); err != nil {
			writeErr <- err
			return
		}
	}
	writeErr <- nil
}

// waitFloodCut fails t unless flood's writes to a visitor that reads
// nothing fail within 30 s: the relay cut the stalled visitor off.
func waitFloodCut(t *testing.T, writeErr <-chan error) {
	t.Helper()
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("the local server wrote 1 GiB to a visitor that reads nothing")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the stalled visitor still holds the stream after 30s")
	}
}

// An HTTP/2 visitor's upload that its local server does not read holds
// back that request only: another request on the same connection is
// answered at once. (The streams share the connection's receive window,
// which Go sizes for one stream by default.)
func TestStalledHTTP2UploadDoesNotBlockOthers(t *testing.T) {
	rl := startTLSRelay(t)
	release := make(chan struct{})
	local := serveHandler(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stall" {
			select { // reads nothing
			case <-release:
			case <-r.Context().Done():
			}
			io.Copy(io.Discard, r.Body) // then ends cleanly
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	})
	_, urls := startAgent(t, "https://localhost:"+port(rl.addr), []agent.Tunnel{{Name: "demo", Local: local}}, agentTLS(rl.ca, rl.addr))
	c := httpsClient(rl.ca, rl.addr, true)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stalled := make(chan struct{})
	go func() {
		defer close(stalled)
		req, _ := http.NewRequestWithContext(ctx, "POST", urls[0]+"/stall", io.LimitReader(newPattern(), 32<<20))
		req.ContentLength = 32 << 20
		if res, err := c.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	defer func() {
		// The local server reads the stalled upload to its end, so
		// that every connection ends cleanly.
		close(release)
		<-stalled
	}()
	time.Sleep(time.Second) // the stalled upload fills what it may
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	req, _ := http.NewRequestWithContext(sctx, "POST", urls[0]+"/small", io.LimitReader(newPattern(), 100<<10))
	req.ContentLength = 100 << 10
	start := time.Now()
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("a 100 KiB upload beside a stalled one on the same connection: %v after %v", err, time.Since(start).Round(time.Millisecond))
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.ProtoMajor != 2 || string(b) != fmt.Sprint(100<<10) {
		t.Errorf("%s %d %q", res.Proto, res.StatusCode, b)
	}
}
