package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/relay"
)

// A local server that crashes in the middle of a response whose end is the
// connection's close: the visitor must see the response fail, not a short
// body passed off as complete. The agent aborts the stream (a stream-reset,
// no FIN that the relay could read as the end of the body), whether the
// reset comes while bytes flow or after a pause, when the agent's direction
// has gone idle.
func TestLocalServerCrashMidResponse(t *testing.T) {
	for _, pause := range []time.Duration{0, 100 * time.Millisecond} {
		t.Run(fmt.Sprintf("pause=%v", pause), func(t *testing.T) {
			rl := startRelay(t, "")
			local := serveConns(t, func(c net.Conn) {
				http.ReadRequest(bufio.NewReader(c))
				io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\npart one of a longer body;")
				time.Sleep(pause)
				c.(*net.TCPConn).SetLinger(0) // the Close is a RST: the server crashed mid-response
			})
			startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local}})
			for i := range 5 {
				resp, err := visitorClient(rl.addr).Get("http://demo.localhost/")
				if err != nil {
					continue // cut before the header: an error too
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				// A crash before the header reached the relay is a 502
				// page: also a failure the visitor can see.
				if err == nil && resp.StatusCode == http.StatusOK {
					t.Fatalf("try %d: %d %q read to its end: a crashed response passed for complete", i, resp.StatusCode, body)
				}
			}
		})
	}
}

// lockedBuffer is a bytes.Buffer that a relay's logger writes to while
// the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *lockedBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *lockedBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A visitor that leaves in the middle of a download is still accounted
// for by the relay: access log (and metrics, and the event to the agent),
// like any other request.
func TestAbortedDownloadIsAccounted(t *testing.T) {
	var logBuf lockedBuffer
	rl := startRelay(t, "", func(c *relay.Config) { c.AccessLog = slog.New(slog.NewTextHandler(&logBuf, nil)) })
	local := startLocal(t)
	startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local.addr}})

	conn, err := net.Dial("tcp", rl.addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /bytes?n=1000000000 HTTP/1.1\r\nHost: demo.localhost\r\n\r\n")
	if _, err := io.CopyN(io.Discard, conn, 1<<20); err != nil {
		t.Fatal(err)
	}
	conn.Close() // the visitor leaves mid-download

	// A later request is logged; the aborted one must be too.
	if status, _ := get(t, visitorClient(rl.addr), "http://demo.localhost/after"); status != http.StatusOK {
		t.Fatalf("after: %d", status)
	}
	waitFor(t, 5*time.Second, "an access log line for the aborted download", func() bool {
		return strings.Contains(logBuf.String(), "path=/bytes")
	})
}
