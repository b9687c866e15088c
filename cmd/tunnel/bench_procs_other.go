//go:build !linux

package main

import "syscall"

// childProcAttr has no portable equivalent of Pdeathsig: elsewhere the
// bench relies on killing its children by PID when it ends.
func childProcAttr() *syscall.SysProcAttr { return nil }
