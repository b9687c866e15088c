package e2e

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
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
