// Command tunnel is a self-hosted localtunnel: `tunnel relay` runs the public
// side on a server, `tunnel expose` gives a local port a public URL through
// it, and `tunnel demo` runs both ends with a small WebSocket page.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
)

// Exit codes. They are decided here and nowhere else.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	procsGoverned = true
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The first signal cancels ctx and every command shuts down cleanly; a
	// second one means the person does not want to wait for that.
	stopHurry := exitOnSecondSignal()
	defer stopHurry()

	stopProfile, err := startCPUProfile()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tunnel: %v\n", err)
		return exitError
	}
	defer stopProfile()

	cmd := NewCmdRoot(IOStreams{Out: os.Stdout, ErrOut: os.Stderr})
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var uerr *usageError
	if errors.As(err, &uerr) {
		fmt.Fprintf(os.Stderr, "tunnel: %s\nRun '%s --help' for usage.\n", oneLine(err), uerr.cmd)
		return exitUsage
	}
	fmt.Fprintf(os.Stderr, "tunnel: %s\n", oneLine(err))
	return exitError
}

// exitOnSecondSignal exits with status 1 when a second SIGINT or SIGTERM
// arrives. The returned function stops watching and waits for the watcher.
func exitOnSecondSignal() (stop func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for n := 0; ; {
			select {
			case <-sigs:
				if n++; n == 2 {
					fmt.Fprintln(os.Stderr, "tunnel: second signal; exiting without finishing shutdown")
					os.Exit(exitError)
				}
			case <-done:
				return
			}
		}
	})
	return func() {
		signal.Stop(sigs)
		close(done)
		wg.Wait()
	}
}

// oneLine keeps an error message on one line, as every error line we print
// should be.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
