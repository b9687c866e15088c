package tunnel_test

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// stallConn holds every Write while stalled, as a session connection whose
// peer stopped reading (or a congested link) does.
type stallConn struct {
	net.Conn
	mu sync.RWMutex
}

func (c *stallConn) Write(p []byte) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.Conn.Write(p)
}

// TestParkedStreamCloseStalledSession: Stream.Close returns blocked Reads
// and Writes at once, and starts a direction parked on the stream at once,
// even when the session's connection takes no writes (the peer stopped
// reading), which is when Stream.Write calls Close: yamux's own Close waits
// for the FIN to be written, up to its ConnectionWriteTimeout (10 s), so the
// parked direction must be started before it. The visitor's connection
// joined to the stream must close within 2 s.
func TestParkedStreamCloseStalledSession(t *testing.T) {
	c1, c2 := tcpPair(t)
	sc := &stallConn{Conn: c2}
	agent, err := tunnel.Client(c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	relay, err := tunnel.Server(sc, nil)
	if err != nil {
		t.Fatal(err)
	}
	client, a := tcpPair(t)
	opened, accepted := rawStreamPair(t, relay, agent)
	st, server := tunnel.NewStream(opened, nil), tunnel.NewStream(accepted, nil)
	done := make(chan error, 1)
	tunnel.JoinAsync(a, st, tunnel.JoinOptions{}, func(err error) { done <- err })
	send(t, client, server, "hello")
	send(t, server, client, "hello")
	waitParked(t, relay, 1)

	sc.mu.Lock() // the relay's session connection stops taking writes
	stalled := true
	unstall := func() {
		if stalled {
			stalled = false
			sc.mu.Unlock()
		}
	}
	closed := make(chan struct{})
	defer func() {
		unstall()
		<-closed
		client.Close()
		server.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Join did not return")
		}
		agent.Close()
		relay.Close()
	}()

	start := time.Now()
	go func() { st.Close(); close(closed) }() // as Resets.Reset or Stream.Write would
	client.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = client.Read(make([]byte, 1))
	if err == nil {
		t.Fatal("client read data")
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("the visitor's connection still open %v after Close of the stream its parked direction reads", time.Since(start).Round(time.Millisecond))
	}
}
