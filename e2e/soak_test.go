package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tunnel-dev/tunnel/agent"
)

// soakDuration is how long TestSoak runs: TUNNEL_SOAK (a Go duration)
// wins, CI runs it for 2 minutes, and elsewhere it is skipped.
func soakDuration(t *testing.T) time.Duration {
	if v := os.Getenv("TUNNEL_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("TUNNEL_SOAK=%q: %v", v, err)
		}
		return d
	}
	if os.Getenv("CI") != "" && !testing.Short() {
		return 2 * time.Minute
	}
	t.Skip("soak test: runs under CI=true, or with TUNNEL_SOAK=5m")
	return 0
}

// TestSoak runs mixed HTTP and WebSocket traffic through five agents while
// their connections are cut and stalled now and then, and checks that
// traffic keeps flowing and that goroutines, open files and heap come back
// to where they started.
func TestSoak(t *testing.T) {
	d := soakDuration(t)
	baseG, baseFD, baseHeap := runtime.NumGoroutine(), openFiles(), heapInUse()

	// The traffic runs in a subtest, whose cleanups (relay, agents, servers)
	// have all run when it returns; then the resources must be back.
	t.Run("traffic", func(t *testing.T) {
		rl := startRelay(t, "")
		local := startLocal(t)
		const agents = 5
		proxies := make([]*cutProxy, agents)
		for i := range agents {
			proxies[i] = startCutProxy(t, rl.addr)
			startAgent(t, rl.url(), []agent.Tunnel{{Name: fmt.Sprintf("soak%d", i), Local: local.addr}}, dialVia(proxies[i]))
		}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var ok, failed, wsOK atomic.Int64
		var wg sync.WaitGroup

		// HTTP visitors: GETs and POSTs of up to 256 KiB, each with its own
		// deadline so nothing hangs.
		for v := range 8 {
			wg.Go(func() {
				c := &http.Client{Transport: visitorTransport(rl.addr, nil), Timeout: 30 * time.Second}
				defer c.CloseIdleConnections()
				for i := 0; ctx.Err() == nil && i < 1_000_000; i++ {
					url := fmt.Sprintf("http://soak%d.localhost/r/%d/%d", rand.IntN(agents), v, i)
					var resp *http.Response
					var err error
					if i%4 == 0 {
						resp, err = c.Post(url, "application/octet-stream", io.LimitReader(newPattern(), rand.Int64N(256<<10)))
					} else {
						resp, err = c.Get(url)
					}
					if err != nil {
						failed.Add(1)
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 200 {
						ok.Add(1)
					} else {
						failed.Add(1)
					}
				}
			})
		}
		// WebSocket visitors: sessions of 50 echoes, over and over.
		for v := range 4 {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil && i < 100_000; i++ {
					sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
					c, _, err := websocket.Dial(sctx, fmt.Sprintf("ws://soak%d.localhost/ws", rand.IntN(agents)), &websocket.DialOptions{HTTPClient: visitorClient(rl.addr)})
					if err == nil {
						for j := range 50 {
							msg := fmt.Sprintf("v%d s%d m%d", v, i, j)
							if c.Write(sctx, websocket.MessageText, []byte(msg)) != nil {
								break
							}
							if _, got, err := c.Read(sctx); err != nil || string(got) != msg {
								break
							}
							wsOK.Add(1)
						}
						c.Close(websocket.StatusNormalClosure, "")
					}
					scancel()
				}
			})
		}
		// Chaos: every few seconds one agent's connection is cut (it
		// reconnects and keeps its name) or stalled for two seconds.
		wg.Go(func() {
			tick := time.NewTicker(3 * time.Second)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				p := proxies[rand.IntN(agents)]
				if i%2 == 0 {
					p.cut()
				} else {
					p.stall(2 * time.Second)
				}
			}
		})
		wg.Wait()
		t.Logf("soak %v: %d HTTP ok, %d failed (during cuts and stalls), %d WebSocket echoes", d, ok.Load(), failed.Load(), wsOK.Load())
		if ok.Load() == 0 || wsOK.Load() == 0 || failed.Load() > ok.Load()/4 {
			t.Errorf("traffic did not keep flowing: %d ok, %d failed, %d echoes", ok.Load(), failed.Load(), wsOK.Load())
		}
		// Everything is still up: each tunnel answers at the end.
		for i := range agents {
			waitFor(t, 30*time.Second, fmt.Sprintf("soak%d to answer", i), func() bool {
				status, _ := get(t, visitorClient(rl.addr), fmt.Sprintf("http://soak%d.localhost/end", i))
				return status == 200
			})
		}
	})

	var g, fd int
	var heap uint64
	// yamux keeps a stream closed by one side for up to StreamCloseTimeout
	// (1 minute) before it frees it, so the heap may take that long.
	deadline := time.Now().Add(90 * time.Second)
	for {
		g, fd, heap = runtime.NumGoroutine(), openFiles(), heapInUse()
		if (g <= baseG+10 && fd <= baseFD+10 && heap <= baseHeap+64<<20) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("before: %d goroutines, %d open files, %.1f MiB heap; after: %d, %d, %.1f MiB",
		baseG, baseFD, float64(baseHeap)/(1<<20), g, fd, float64(heap)/(1<<20))
	if g > baseG+10 || fd > baseFD+10 || heap > baseHeap+64<<20 {
		t.Errorf("resources not released after the soak")
	}
}

func openFiles() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(entries)
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
