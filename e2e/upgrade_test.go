package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// The relay sends WebSocket upgrade requests on a stream of their own and
// reads the answer itself (relay/upgrade.go); these tests pin down what that
// path must do at its edges, with a local server that writes raw bytes.

const upgradeRequest = "GET /ws HTTP/1.1\r\nHost: up.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"

// rawUpgradeServer accepts one connection, reads the request and runs
// answer on it.
func rawUpgradeServer(t *testing.T, answer func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		answer(c, br)
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// Bytes that travel in the same packets as the handshake, both ways, are
// neither lost nor reordered: the local server's first frame right behind
// its 101, and the visitor's first frame right behind its request.
func TestUpgradeEarlyBytes(t *testing.T) {
	const fromServer, fromVisitor = "server-first-frame", "visitor-first-frame"
	got := make(chan string, 1)
	local := rawUpgradeServer(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"+fromServer)
		b := make([]byte, len(fromVisitor))
		io.ReadFull(br, b)
		got <- string(b)
	})
	rl := startRelay(t, "")
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "up", Local: local}})

	c := abuseDial(t, rl.addr, nil)
	defer c.Close()
	if _, err := io.WriteString(c, upgradeRequest+fromVisitor); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	b := make([]byte, len(fromServer))
	if _, err := io.ReadFull(br, b); err != nil || string(b) != fromServer {
		t.Fatalf("visitor read %q, %v after the 101; want %q", b, err, fromServer)
	}
	select {
	case s := <-got:
		if s != fromVisitor {
			t.Fatalf("local server read %q after the request, want %q", s, fromVisitor)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the local server got nothing after the request")
	}
}

// An answer to an upgrade request with a header larger than the relay
// reads (64 KiB, as for other responses) gets the visitor a 502.
func TestUpgradeHugeResponseHeader(t *testing.T) {
	local := rawUpgradeServer(t, func(c net.Conn, _ *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Big: "+strings.Repeat("h", 2<<20)+"\r\n\r\n")
	})
	rl := startRelay(t, "")
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "up", Local: local}})
	c := abuseDial(t, rl.addr, nil)
	defer c.Close()
	io.WriteString(c, upgradeRequest)
	resp, _, err := readResp(bufio.NewReader(c))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("2 MiB of header on a 101: status %d, want 502", resp.StatusCode)
	}
}

// A local server that never answers an upgrade request gets the visitor a
// 504 after the response header timeout, as for any other request.
func TestUpgradeResponseHeaderTimeout(t *testing.T) {
	local := rawUpgradeServer(t, func(c net.Conn, br *bufio.Reader) {
		io.Copy(io.Discard, br) // reads, never answers
	})
	rl := startRelay(t, "", func(c *relay.Config) { c.Limits.ResponseHeaderTimeout = 300 * time.Millisecond })
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "up", Local: local}})
	c := abuseDial(t, rl.addr, nil)
	defer c.Close()
	io.WriteString(c, upgradeRequest)
	resp, _, err := readResp(bufio.NewReader(c))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", resp.StatusCode)
	}
}

// A local WebSocket server that crashes (a TCP reset) mid-stream: the
// visitor sees its connection reset too, not a clean end.
func TestUpgradeLocalCrashResetsVisitor(t *testing.T) {
	local := serveConns(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\npartial-frame")
		time.Sleep(100 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0) // crash: RST
	})
	rl := startRelay(t, "")
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "up", Local: local}})
	c := abuseDial(t, rl.addr, nil)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, upgradeRequest)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	rest, err := io.ReadAll(br)
	t.Logf("visitor read %q, err %v", rest, err)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("visitor's WebSocket ended with %v after the local server crashed; want a connection reset, not a clean close", err)
	}
}

// upgradeAfterBody is a local server that reads an upgrade request with
// its body, then switches to a WebSocket and reads until the visitor
// leaves.
func upgradeAfterBody(t *testing.T) string {
	return serveConns(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		io.Copy(io.Discard, br)
	})
}

// The body of an upgrade request is bytes from the visitor to the agent:
// it counts in bytes_in (access log, metrics, event) with the WebSocket's.
func TestUpgradeBodyCounted(t *testing.T) {
	var logBuf lockedBuffer
	local := upgradeAfterBody(t)
	rl := startRelay(t, "", func(c *relay.Config) { c.AccessLog = slog.New(slog.NewTextHandler(&logBuf, nil)) })
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "up", Local: local}})
	c := abuseDial(t, rl.addr, nil)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	body := strings.Repeat("b", 1000)
	fmt.Fprintf(c, "POST /ws HTTP/1.1\r\nHost: up.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	io.ReadAll(br)
	c.Close()
	waitFor(t, 10*time.Second, "access line", func() bool { return strings.Contains(logBuf.String(), "msg=access") })
	if line := logBuf.String(); !strings.Contains(line, "bytes_in=1000") {
		t.Fatalf("access line for an upgrade with a 1000-byte body: %s; want bytes_in=1000", line)
	}
}

// The response header timeout of an upgrade runs from the end of its
// request, as for other requests: a body that takes longer than the
// timeout to arrive, answered at once, is a 101, not a 504 "Local server
// did not answer".
func TestUpgradeSlowBodyNotTimedOut(t *testing.T) {
	local := upgradeAfterBody(t)
	rl := startRelay(t, "", func(c *relay.Config) { c.Limits.ResponseHeaderTimeout = 500 * time.Millisecond })
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "up", Local: local}})
	c := abuseDial(t, rl.addr, nil)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /ws HTTP/1.1\r\nHost: up.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 4\r\n\r\n")
	for i := 0; i < 4; i++ { // 4 bytes over 1.2 s
		time.Sleep(300 * time.Millisecond)
		io.WriteString(c, "x")
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade whose body took 1.2 s, local server answering at once after it: status %d, want 101", resp.StatusCode)
	}
}
