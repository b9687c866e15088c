// Command swarm runs many tunnel agents in one process against one relay,
// for e2e's relay-restart test (restart_many_test.go). The agents run here
// rather than in the test because a race-enabled test process may hold at
// most 8,128 goroutines and every agent needs several (yamux).
//
// Every agent exposes the same local HTTP server, which answers each request
// with "host=" and the Host it was asked for, so a visitor can tell that the
// relay routed it to the right tunnel. The first -named agents ask for the
// names PREFIX0, PREFIX1, ...; the others let the relay pick a random name,
// which the agent then asks for again on every reconnect.
//
// Lines on stdout, one per event, fields separated by single spaces:
//
//	local ADDR                          the shared local server listens
//	online INDEX URL UNIXNANO           agent INDEX is online with URL
//	offline INDEX UNIXNANO ATTEMPT ERR  agent INDEX lost the relay (ERR may hold spaces)
//	error INDEX ERR                     agent INDEX stopped for good
//	bye N                               N agents said goodbye; exiting
//
// On SIGTERM or SIGINT every agent tells the relay goodbye (its names are
// released at once), and swarm exits 0 once all have returned, 1 if some
// did not within 20 s.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
)

func main() {
	relayURL := flag.String("relay", "", "relay `URL`, e.g. http://127.0.0.1:8000 (required)")
	n := flag.Int("n", 1000, "number of agents")
	named := flag.Int("named", 0, "how many of the agents ask for a name of their own; the rest get random names")
	prefix := flag.String("prefix", "swarm", "`prefix` of the asked-for names")
	minBackoff := flag.Duration("min-backoff", 0, "agent.Config.MinBackoff (0: the agent's default)")
	maxBackoff := flag.Duration("max-backoff", 0, "agent.Config.MaxBackoff (0: the agent's default)")
	flag.Parse()
	if *relayURL == "" || *n < 1 {
		flag.Usage()
		os.Exit(2)
	}
	os.Exit(run(*relayURL, *n, *named, *prefix, *minBackoff, *maxBackoff))
}

func run(relayURL string, n, named int, prefix string, minBackoff, maxBackoff time.Duration) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// One writer keeps lines whole; OnEvent must not block, so events queue
	// in a channel deep enough for every agent to report several times.
	out := make(chan string, 64*n)
	var writer sync.WaitGroup
	writer.Go(func() {
		w := bufio.NewWriter(os.Stdout)
		for line := range out {
			w.WriteString(line)
			w.WriteByte('\n')
			if len(out) == 0 {
				w.Flush()
			}
		}
		w.Flush()
	})
	var outMu sync.Mutex
	outClosed := false
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		if outClosed {
			return
		}
		select {
		case out <- fmt.Sprintf(format, args...):
		default:
			fmt.Fprintln(os.Stderr, "swarm: output queue full; a line was lost")
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "swarm:", err)
		return 1
	}
	local := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "host=%s", r.Host)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go local.Serve(ln)
	say("local %s", ln.Addr())

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var agents sync.WaitGroup
	for i := range n {
		name := ""
		if i < named {
			name = fmt.Sprintf("%s%d", prefix, i)
		}
		cfg := agent.Config{
			Relay:      relayURL,
			Tunnels:    []agent.Tunnel{{Name: name, Local: ln.Addr().String()}},
			MinBackoff: minBackoff,
			MaxBackoff: maxBackoff,
			Logger:     logger.With("agent", i),
			OnEvent: func(e agent.Event) {
				switch e.Kind {
				case agent.EventOnline:
					say("online %d %s %d", i, e.Tunnels[0].URL, time.Now().UnixNano())
				case agent.EventOffline:
					say("offline %d %d %d %s", i, time.Now().UnixNano(), e.Attempt, oneLine(e.Err))
				}
			},
		}
		agents.Go(func() {
			if err := agent.Run(ctx, cfg); err != nil {
				say("error %d %s", i, oneLine(err))
			}
		})
	}

	<-ctx.Done()
	done := make(chan struct{})
	go func() {
		agents.Wait()
		close(done)
	}()
	code := 0
	select {
	case <-done:
		say("bye %d", n)
	case <-time.After(20 * time.Second):
		fmt.Fprintln(os.Stderr, "swarm: agents still running 20s after the signal")
		code = 1
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	local.Shutdown(shutdownCtx)
	outMu.Lock()
	outClosed = true
	close(out)
	outMu.Unlock()
	writer.Wait()
	return code
}

func oneLine(err error) string {
	if err == nil {
		return "<nil>"
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}
