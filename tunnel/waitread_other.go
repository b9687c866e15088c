//go:build !linux

package tunnel

import "net"

// waitTCP returns at once where it is not implemented: the Read that
// follows waits instead, holding Join's small buffer.
func waitTCP(*net.TCPConn) {}
