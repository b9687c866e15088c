package tunnel_test

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// Parks racing everything that can start a parked direction, beyond
// TestParkRacesData (a stream direction's park against data): TCP and TLS
// directions' parks against data, and Close, Abort, the owner's close of the
// socket and the session's end against either kind of park. The wake tests
// (park_test.go) start each of these from a settled parked state.

// raceJoin is client ⇄ a ═JoinAsync═ st ⇄ server, as at the relay.
type raceJoin struct {
	client, a, server net.Conn
	st                *tunnel.Stream
	done              chan error
}

func newRaceJoin(t *testing.T, pair func() (client, a net.Conn), open func() (opened, accepted *tunnel.Stream)) *raceJoin {
	t.Helper()
	client, a := pair()
	st, server := open()
	j := &raceJoin{client: client, a: a, server: server, st: st, done: make(chan error, 1)}
	tunnel.JoinAsync(a, st, tunnel.JoinOptions{}, func(err error) { j.done <- err })
	return j
}

func (j *raceJoin) ended(t *testing.T, what string) bool {
	t.Helper()
	select {
	case <-j.done:
		return true
	case <-time.After(4 * time.Second):
		t.Errorf("Join did not end after %s", what)
		return false
	}
}

// TestParkRacesTCPData sends a byte from the client just as the TCP
// (or TLS) direction parks, over and over, on several joins at once.
func TestParkRacesTCPData(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		agent, relay, stop := sessionPair(t)
		pair := func() (net.Conn, net.Conn) {
			if useTLS {
				c, s, _ := tlsPair(t)
				return c, s
			}
			return tcpPair(t)
		}
		open := func() (*tunnel.Stream, *tunnel.Stream) {
			o, a := rawStreamPair(t, relay, agent)
			return tunnel.NewStream(o, nil), tunnel.NewStream(a, nil)
		}
		const joins, rounds = 10, 10
		var wg sync.WaitGroup
		errs := make(chan error, joins)
		for range joins {
			j := newRaceJoin(t, pair, open)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { j.client.Close(); j.server.Close(); j.ended(t, "both far ends closed") }()
				if err := sendAsItParks(j.client, j.server, rounds, 3*time.Second); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		stop()
		close(errs)
		for err := range errs {
			t.Errorf("TLS %v: a byte sent as the direction parked was lost: %v", useTLS, err)
		}
	}
}

// TestParkRacesClose ends joins just as their directions park: the
// owner closes or aborts the stream, or closes the socket (with and
// without Unpark, as trackedConn.Close does and a bare close does).
func TestParkRacesClose(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	defer stop()
	open := func() (*tunnel.Stream, *tunnel.Stream) {
		o, a := rawStreamPair(t, relay, agent)
		return tunnel.NewStream(o, nil), tunnel.NewStream(a, nil)
	}
	const joins = 24
	var wg sync.WaitGroup
	for i := range joins {
		j := newRaceJoin(t, func() (net.Conn, net.Conn) { return tcpPair(t) }, open)
		send(t, j.client, j.server, "x")
		send(t, j.server, j.client, "y")
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer j.client.Close()
			defer j.server.Close()
			time.Sleep(30*time.Millisecond + rand.N(20*time.Millisecond))
			what := []string{"Close", "Abort", "socket Close+Unpark", "socket Close"}[i%4]
			switch i % 4 {
			case 0:
				j.st.Close()
			case 1:
				j.st.Abort()
			case 2:
				j.a.Close()
				tunnel.Unpark(j.a)
			case 3:
				j.a.Close()
			}
			j.ended(t, what)
		}()
	}
	wg.Wait()
}

// TestParkRacesSessionEnd ends the session (either end) just as the
// joins' directions park: every client sees the end, every join returns.
func TestParkRacesSessionEnd(t *testing.T) {
	for round := range 4 {
		agent, relay, stop := sessionPair(t)
		open := func() (*tunnel.Stream, *tunnel.Stream) {
			o, a := rawStreamPair(t, relay, agent)
			return tunnel.NewStream(o, nil), tunnel.NewStream(a, nil)
		}
		var js []*raceJoin
		for range 15 {
			j := newRaceJoin(t, func() (net.Conn, net.Conn) { return tcpPair(t) }, open)
			send(t, j.client, j.server, "x")
			send(t, j.server, j.client, "y")
			js = append(js, j)
		}
		time.Sleep(time.Duration(32+round*4) * time.Millisecond)
		if round%2 == 0 {
			agent.Close()
		} else {
			relay.Close()
		}
		var wg sync.WaitGroup
		for _, j := range js {
			wg.Add(1)
			go func() {
				defer wg.Done()
				j.client.SetReadDeadline(time.Now().Add(4 * time.Second))
				if n, err := j.client.Read(make([]byte, 1)); err != io.EOF {
					t.Errorf("round %d: client read %d, %v after the session ended; want EOF", round, n, err)
				}
				j.client.Close()
				j.ended(t, "the session ended and the client closed")
			}()
		}
		wg.Wait()
		stop()
	}
}
