//go:build linux || darwin || freebsd || netbsd || openbsd

package tunnel

import (
	"net"
	"syscall"
)

// waitTCP waits until c has data or an error to read, peeking at one byte
// without taking it.
func waitTCP(c *net.TCPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Read(peekReady)
}

// peekReady is RawConn.Read's callback: true once the socket has a byte,
// its end, or an error to give; false (wait for readiness) while empty.
func peekReady(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN && err != syscall.EINTR
}
