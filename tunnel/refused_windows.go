//go:build windows

package tunnel

import (
	"errors"
	"syscall"
)

// Windows error codes for a refused connection. The syscall package does
// not name them (golang.org/x/sys/windows does, but is not worth a
// dependency for two numbers).
const (
	// wsaeconnrefused is what a refused dial returns on a socket
	// (internal/poll reads it with WSAGetOverlappedResult).
	wsaeconnrefused syscall.Errno = 10061
	// errorConnectionRefused is the Win32 form of the same error, which
	// GetOverlappedResult reports.
	errorConnectionRefused syscall.Errno = 1225
)

func isConnRefusedOS(err error) bool {
	return errors.Is(err, wsaeconnrefused) || errors.Is(err, errorConnectionRefused)
}
