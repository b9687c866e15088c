package tunnel

import "net"

// TCPParked reports whether c has a Join direction parked on it.
func TCPParked(c *net.TCPConn) bool { return tcpParker.isParked(c) }
