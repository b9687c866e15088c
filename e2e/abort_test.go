package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
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
