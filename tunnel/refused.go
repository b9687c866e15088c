package tunnel

import (
	"errors"
	"syscall"
)

// IsConnRefused reports whether err, a dial error however wrapped, means
// that the peer's host refused the connection: nothing listens on that
// port. errors.Is(err, syscall.ECONNREFUSED) alone misses it on Windows,
// where a refused dial fails with the Winsock error WSAECONNREFUSED, a
// different errno.
func IsConnRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || isConnRefusedOS(err)
}
