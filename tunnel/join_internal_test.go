package tunnel

import (
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// countingTCP is a TCP connection that counts Join's reads of it; it
// waits as a bare *net.TCPConn would (WaitRead passes through).
type countingTCP struct {
	*net.TCPConn
	reads atomic.Int32
}

func (c *countingTCP) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.TCPConn.Read(p)
}

func (c *countingTCP) WaitRead() { WaitRead(c.TCPConn) }

func loopbackPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	if a == nil {
		t.Fatal("accept failed")
	}
	return d.(*net.TCPConn), a.(*net.TCPConn)
}

// TestJoinIdleNoPollWithoutWaitRead: where a TCP connection can neither
// park nor be waited on without a read (every OS but Linux: waitTCP and
// parkTCP are nil there), an idle Join direction must wait in one
// blocking read, not wake every bigLinger+parkAfter (40 ms) to start a
// goroutine, take a buffer, arm a deadline and read again.
func TestJoinIdleNoPollWithoutWaitRead(t *testing.T) {
	savedWait, savedPark, savedUnpark := waitTCP, parkTCP, unparkTCP
	waitTCP, parkTCP, unparkTCP = nil, nil, nil // as on Windows, macOS, BSD
	defer func() { waitTCP, parkTCP, unparkTCP = savedWait, savedPark, savedUnpark }()

	client, a := loopbackPair(t)
	b, server := loopbackPair(t)
	src := &countingTCP{TCPConn: a}
	done := make(chan error, 1)
	JoinAsync(src, b, JoinOptions{}, func(err error) { done <- err })
	defer func() {
		client.Close()
		server.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Join did not return")
		}
	}()

	time.Sleep(100 * time.Millisecond) // past the first idle wait
	before := src.reads.Load()
	time.Sleep(time.Second)
	if n := src.reads.Load() - before; n > 2 {
		t.Errorf("an idle direction read its source %d times in 1 s (polling), want at most 2", n)
	}
	// Data still flows afterwards.
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := server.Read(buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
}
