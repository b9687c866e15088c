//go:build linux || darwin || freebsd || netbsd || openbsd

package tunnel

import (
	"net"

	"golang.org/x/sys/unix"
)

// waitTCP waits until c has data, its end or an error to read, without
// reading anything.
func waitTCP(c *net.TCPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Read(readable)
}

// readable is RawConn.Read's callback: true once the socket has something
// for a Read (data, the peer's FIN, an error), false (wait for readiness)
// while it has nothing. It asks poll(2), which leaves all of that in
// place: a peek with recv(2) would take a pending error such as a reset,
// and the Read after it would see a clean end of stream instead.
func readable(fd uintptr) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	if err != nil {
		return true // let the Read find out
	}
	return n > 0 && fds[0].Revents != 0
}
