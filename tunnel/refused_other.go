//go:build !windows

package tunnel

// isConnRefusedOS adds the errors other than syscall.ECONNREFUSED that
// mean a refused connection on this OS: none outside Windows.
func isConnRefusedOS(error) bool { return false }
