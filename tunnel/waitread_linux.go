package tunnel

import (
	"net"
	"syscall"
	"unsafe"
)

func init() { waitTCP = waitTCPPoll }

// waitTCPPoll waits until c has data, its end or an error to read, without
// reading anything.
func waitTCPPoll(c *net.TCPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Read(readable)
}

// pollFd is struct pollfd of poll(2).
type pollFd struct {
	fd      int32
	events  int16
	revents int16
}

const pollIn = 0x1 // POLLIN

// readable is RawConn.Read's callback: true once the socket has something
// for a Read (data, the peer's FIN, an error), false (wait for readiness)
// while it has nothing. It asks ppoll(2) without waiting, which leaves all
// of that in place: a peek with recv(2) would take a pending error such as
// a reset, and the Read after it would see a clean end of stream instead.
func readable(fd uintptr) bool {
	pfd := pollFd{fd: int32(fd), events: pollIn}
	var now syscall.Timespec // zero: report, do not wait
	n, _, errno := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&now)), 0, 0, 0)
	if errno != 0 {
		return true // let the Read find out
	}
	return n > 0 && pfd.revents != 0
}
