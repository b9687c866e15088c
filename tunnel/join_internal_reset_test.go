package tunnel

import (
	"fmt"
	"net"
	"syscall"
	"testing"
)

// Only a socket's reset spares the other direction of a join: a stream
// whose session's connection died has nothing left to read.
func TestPeerResetIsASocketsOwn(t *testing.T) {
	socket := &net.OpError{Op: "write", Net: "tcp", Err: fmt.Errorf("write: %w", syscall.ECONNRESET)}
	stream := &net.OpError{Op: "write", Net: "tunnel", Err: fmt.Errorf("write: %w", syscall.ECONNRESET)}
	if !peerReset(socket) || !peerReset(&net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}) {
		t.Error("a socket's ECONNRESET or EPIPE is not taken for its peer's reset")
	}
	if peerReset(stream) {
		t.Error("a stream's write error on a dead session is taken for a socket's reset")
	}
	if peerReset(syscall.ECONNREFUSED) {
		t.Error("ECONNREFUSED taken for a reset")
	}
}
