package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
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
)

// 100 MiB up and 100 MiB down arrive byte-exact.
func TestLargeTransfers(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	c := visitorClient(rl.addr)
	const n = 100 << 20
	want := patternHash(n)

	resp, err := c.Post("http://demo.localhost/sha256", "application/octet-stream", io.LimitReader(newPattern(), n))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := string(b); got != fmt.Sprintf("%d %s", n, want) {
		t.Fatalf("upload: local server got %q, want %d %s", got, n, want)
	}

	resp, err = c.Get(fmt.Sprintf("http://demo.localhost/bytes?n=%d", n))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	got, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || got != n || hex.EncodeToString(h.Sum(nil)) != want {
		t.Fatalf("download: %d bytes, err %v, hash match %v", got, err, hex.EncodeToString(h.Sum(nil)) == want)
	}
}

// 200 WebSockets at once, 1000 messages each: every message comes back, in
// order, on its own connection.
func TestManyWebSockets(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const conns, msgs = 200, 1000
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Go(func() {
			if err := echoSession(ctx, rl.addr, i, msgs); err != nil {
				errs <- fmt.Errorf("websocket %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// echoSession sends msgs distinct messages on one WebSocket while reading
// the echoes, and checks each echo against what was sent.
func echoSession(ctx context.Context, relayAddr string, id, msgs int) error {
	c, err := dialWS(ctx, relayAddr, "ws://demo.localhost/ws")
	if err != nil {
		return err
	}
	defer c.CloseNow()
	werr := make(chan error, 1)
	go func() {
		for j := range msgs {
			if err := c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, "conn %d message %d", id, j)); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	for j := range msgs {
		_, got, err := c.Read(ctx)
		if err != nil {
			return fmt.Errorf("read echo %d: %w", j, err)
		}
		if want := fmt.Sprintf("conn %d message %d", id, j); string(got) != want {
			return fmt.Errorf("echo %d = %q, want %q", j, got, want)
		}
	}
	if err := <-werr; err != nil {
		return err
	}
	return c.Close(websocket.StatusNormalClosure, "")
}

// A client that shuts its write side after an upgrade still gets the
// server's reply: half-close crosses relay, tunnel and agent both ways.
func TestHalfClose(t *testing.T) {
	rl := startRelay(t, "")
	// A raw upgraded server: it reads everything until EOF, then answers
	// with how much it got and closes.
	local := serveConns(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		n, _ := io.Copy(io.Discard, br)
		fmt.Fprintf(c, "got %d bytes", n)
	})
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local}})

	c, err := net.Dial("tcp", rl.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /raw HTTP/1.1\r\nHost: demo.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	io.WriteString(c, "hello world")
	c.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(br)
	if err != nil || string(reply) != "got 11 bytes" {
		t.Fatalf("reply after half-close = %q, %v; want %q", reply, err, "got 11 bytes")
	}
}

// The relay switches to a byte pipe only on a real 101 to a WebSocket
// upgrade: a local server that answers 101 to anything else gets a 502.
func TestSwitchProtocolsGuard(t *testing.T) {
	rl := startRelay(t, "")
	// A bad server that answers every request with a 101 to "h2c".
	local := serveConns(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
		io.Copy(io.Discard, c)
	})
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local}})
	c := visitorClient(rl.addr)
	status, body := get(t, c, "http://demo.localhost/plain")
	if status != http.StatusBadGateway || !strings.Contains(body, "asked for no upgrade") {
		t.Fatalf("101 to a plain request: %d %q", status, body)
	}
	status, body = get(t, c, "http://demo.localhost/ws", "Connection", "Upgrade", "Upgrade", "websocket")
	if status != http.StatusBadGateway || !strings.Contains(body, `switched to "h2c" when "websocket" was requested`) {
		t.Fatalf("101 to h2c for a websocket request: %d %q", status, body)
	}
}

// A visitor that stops reading a large download does not slow a second
// visitor of the same tunnel: flow control is per stream.
func TestHeadOfLine(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})

	// Visitor 1 asks for 1 GiB and reads only the headers.
	stalled := visitorClient(rl.addr)
	resp, err := stalled.Get("http://demo.localhost/bytes?n=1073741824")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 1<<20)
	io.ReadFull(resp.Body, buf) // some data moved, then nobody reads

	// Visitor 2 downloads 20 MiB and talks over a WebSocket meanwhile; under
	// head-of-line blocking both would hang until the 10 s deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := visitorClient(rl.addr)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://demo.localhost/bytes?n=20971520", nil)
	resp2, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp2.Body)
	resp2.Body.Close()
	if err != nil || n != 20<<20 {
		t.Fatalf("second visitor got %d bytes, %v", n, err)
	}
	if err := echoSession(ctx, rl.addr, 1, 100); err != nil {
		t.Fatalf("websocket during stalled download: %v", err)
	}
}

// One agent carries more WebSockets at once than yamux's backlog of
// pending opens (256): only opening is bounded agent-wide, established
// streams only by the per-tunnel limit.
func TestManyOpenWebSocketsOneAgent(t *testing.T) {
	rl := startRelay(t, "")
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 400
	conns := make([]*websocket.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.CloseNow()
		}
	}()
	for i := range n {
		c, err := dialWS(ctx, rl.addr, "ws://demo.localhost/ws")
		if err != nil {
			t.Fatalf("WebSocket %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// All open at once, every one still echoes.
	for i, c := range conns {
		msg := fmt.Appendf(nil, "still here %d", i)
		if err := c.Write(ctx, websocket.MessageText, msg); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, got, err := c.Read(ctx); err != nil || string(got) != string(msg) {
			t.Fatalf("echo %d: %q %v", i, got, err)
		}
	}
}
