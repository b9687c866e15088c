//go:build linux

package main

import "syscall"

// childProcAttr puts a bench child in its own process group and has the
// kernel kill it if the bench dies without cleaning up.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
