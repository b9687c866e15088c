package tunnel

import (
	"syscall"
	"unsafe"
)

func init() { socketUnread = socketUnreadIoctl }

// socketUnreadIoctl asks the kernel for the bytes queued to be read on c's
// socket (ioctl FIONREAD, SIOCINQ for TCP).
func socketUnreadIoctl(c syscall.Conn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var n int32
	var errno syscall.Errno
	if rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	}) != nil || errno != 0 {
		return 0
	}
	return int(n)
}
