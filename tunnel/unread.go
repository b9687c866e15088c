package tunnel

import (
	"net"
	"syscall"
)

// unread returns how many bytes from the peer wait in the kernel for c's
// reader, where the OS tells (socketUnread); 0 where it does not. It sees
// through tunnel's read-side wrappers and anything that names the
// connection it wraps (NetConn, as *tls.Conn does), and is safe to call
// while another goroutine reads c.
//
// keepalive asks it before giving up a peer: bytes waiting unread prove
// the peer is there and the slowness ours, as after this process was
// paused (a VM stalled, a machine too busy to run the reading goroutine):
// on resuming, the ping's timer runs before the poller hands the reader
// the answer that came meanwhile.
func unread(c net.Conn) int {
	c = unwrapWriter(c)
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = unwrapWriter(tc.NetConn())
	}
	sc, ok := c.(syscall.Conn)
	if !ok || socketUnread == nil {
		return 0
	}
	return socketUnread(sc)
}

// socketUnread returns the bytes in a socket's receive queue, on the
// systems where that is implemented (Linux).
var socketUnread func(syscall.Conn) int
