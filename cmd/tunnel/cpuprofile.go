package main

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// cpuProfileEnv names a file that any tunnel command writes a CPU profile
// (pprof) to, from its start until it returns: `tunnel bench
// --cpuprofile` sets it for each process it starts, and it works the same
// for a relay or an agent run by hand. The profile is written when the
// command returns, so a process must be stopped with SIGINT or SIGTERM, not
// killed.
const cpuProfileEnv = "TUNNEL_CPUPROFILE"

// startCPUProfile starts profiling into the file named by cpuProfileEnv,
// if it is set, and returns what stops it and writes the file.
func startCPUProfile() (stop func(), err error) {
	path := os.Getenv(cpuProfileEnv)
	if path == "" {
		return func() {}, nil
	}
	stop, err = profileTo(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (name a file in a directory you can write, or unset it)", cpuProfileEnv, err)
	}
	return stop, nil
}

// profileTo starts this process's CPU profile into a new file at path,
// and returns what stops it and closes the file.
func profileTo(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
