package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/tunnel-dev/tunnel/agent"
)

// A local server that answers an upload early with a large body, in full,
// and then resets (the upload unread): the visitor gets the whole answer,
// as it would from the server directly. The relay's writer of the upload
// fails on the agent's reset meanwhile; the answer is read on all the same.
func TestEarlyLargeAnswerThenResetReachesVisitor(t *testing.T) {
	waitLingeringCloses(t)
	const size = 1536 << 10
	body := make([]byte, size)
	io.ReadFull(newPattern(), body)
	local := serveConns(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: %d\r\n\r\n", size)
		c.Write(body)
		// Every byte acknowledged by the agent's kernel, so that a
		// direct client would get it all; then the reset.
		for deadline := time.Now().Add(20 * time.Second); unacked(c.(*net.TCPConn)) > 0 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Microsecond)
		}
		c.(*net.TCPConn).SetLinger(0)
	})
	rl := startRelay(t, "")
	_, urls := startAgent(t, rl.url(), []agent.Tunnel{{Name: "demo", Local: local}})
	host := strings.TrimPrefix(urls[0], "http://")
	for i := range 10 {
		c, err := net.Dial("tcp", rl.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		go func() { // 8 MiB declared, 4 MiB sent
			fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", host, 8<<20)
			io.Copy(c, io.LimitReader(newPattern(), 4<<20))
		}()
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			c.Close()
			t.Fatalf("upload %d: %v", i, err)
		}
		n, err := io.Copy(io.Discard, res.Body)
		c.Close()
		if res.StatusCode != 413 || n != size || err != nil {
			t.Fatalf("upload %d: %s, %d of %d body bytes, %v", i, res.Status, n, size, err)
		}
	}
}

// unacked is how much of what c sent its peer has not acknowledged yet
// (TIOCOUTQ).
func unacked(c *net.TCPConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var n int32
	rc.Control(func(fd uintptr) {
		syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&n)))
	})
	return int(n)
}
