package e2e

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
)

// streamingLocal answers every request with a 200 and a chunked body that
// sends one chunk and then stays silent until release is closed (an SSE
// endpoint, or any handler that ignores the Upgrade header).
func streamingLocal(t *testing.T, release chan struct{}) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
				<-release
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func streamsOf(rl *testRelay) int64 {
	for _, ti := range rl.Tunnels() {
		if ti.Name == "up" {
			return ti.Streams
		}
	}
	return -1
}

// visitAndLeave sends raw, reads the response header and first chunk, then
// closes the visitor connection.
func visitAndLeave(t *testing.T, rl *testRelay, raw string) {
	t.Helper()
	c := abuseDial(t, rl.addr, nil)
	io.WriteString(c, raw)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, b); err != nil {
		t.Fatalf("first chunk: %v", err)
	}
	c.Close()
}

// Control: a plain request whose streaming response the visitor abandons
// frees its stream at once (keepAliveTransport keeps ctx on the body).
func TestPlainStreamingVisitorLeaves(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	local := streamingLocal(t, release)
	rl := startRelay(t, "")
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "up", Local: local}})
	visitAndLeave(t, rl, "GET /events HTTP/1.1\r\nHost: up.localhost\r\n\r\n")
	waitFor(t, 3*time.Second, "the plain request's stream to be freed", func() bool { return streamsOf(rl) == 0 })
}

// The same response to a request that asked for a WebSocket upgrade goes
// through upgradeTransport, which stops watching the request's context
// before the body is read: the visitor leaves, and the handler stays
// blocked reading a body nobody wants, holding a stream slot (and a place
// in reqWG, which blocks Server.Close/Shutdown) until the local server
// ends its response.
func TestUpgradeAnsweredWithStreamVisitorLeaves(t *testing.T) {
	release := make(chan struct{})
	local := streamingLocal(t, release)
	rl := startRelay(t, "")
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "up", Local: local}})
	visitAndLeave(t, rl, upgradeRequest)

	freed := false
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if streamsOf(rl) == 0 {
			freed = true
			break
		}
	}
	if !freed {
		t.Errorf("3 s after the visitor left, the relay still holds %d stream(s) for it", streamsOf(rl))
	}

	closed := make(chan struct{})
	go func() { rl.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		t.Errorf("relay.Server.Close has not returned after 3 s: reqWG waits for the abandoned handler")
	}
	close(release) // lets the handler, and Close, finish
	<-closed
}
