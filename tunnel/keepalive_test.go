package tunnel_test

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// slowConn writes at most rate bytes a second, as a slow uplink does: what
// is written waits in line before it, pings and their answers too.
type slowConn struct {
	net.Conn
	rate int
}

func (c *slowConn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), c.rate/50)]
		time.Sleep(time.Duration(len(chunk)) * time.Second / time.Duration(c.rate))
		m, err := c.Conn.Write(chunk)
		n += m
		if err != nil {
			return n, err
		}
		p = p[len(chunk):]
	}
	return n, nil
}

// A session on a slow link stays up while its data takes longer than the
// ping timeout to get through: the pings and their answers wait behind the
// data, but the data itself shows the peer is there. (yamux's keepalive
// closed it after the first unanswered ping, with every stream on it.)
func TestKeepAliveSlowLinkKeepsSession(t *testing.T) {
	defer tunnel.SetKeepAlive(200*time.Millisecond, time.Second)()
	agent, relay := keepAliveSessions(t, func(c net.Conn) net.Conn { return &slowConn{Conn: c, rate: 64 << 10} }, nil)

	// The agent uploads 256 KiB: four seconds on this link, four ping
	// timeouts, in which it receives nothing but the relay's pings.
	const size = 256 << 10
	go func() {
		st, err := agent.OpenStream()
		if err != nil {
			return
		}
		st.Write(make([]byte, size))
		st.Close()
	}()
	st, err := relay.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, st)
	if err != nil || n != size {
		t.Fatalf("relay read %d of %d bytes: %v", n, size, err)
	}
	if agent.IsClosed() || relay.IsClosed() {
		t.Fatalf("session closed on a slow but working link (agent closed %v, relay closed %v)", agent.IsClosed(), relay.IsClosed())
	}
}

// A peer that answers nothing and sends nothing (frozen, or gone without a
// FIN) is given up after a ping interval and a ping timeout.
func TestKeepAliveSilentPeerClosesSession(t *testing.T) {
	defer tunnel.SetKeepAlive(200*time.Millisecond, time.Second)()
	c1, c2 := tcpPair(t)
	defer c1.Close() // open, but nobody reads or writes it
	relay, err := tunnel.Server(c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	select {
	case <-relay.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("session with a silent peer still open after 5 s (want about 1.2 s)")
	}
}

// The keepalive's answered pings are the round-trip measure an agent
// shows (ClientWithRTT): no pings of its own.
func TestKeepAliveReportsRTT(t *testing.T) {
	defer tunnel.SetKeepAlive(50*time.Millisecond, time.Second)()
	rtts := make(chan time.Duration, 16)
	keepAliveSessions(t, nil, func(d time.Duration) {
		select {
		case rtts <- d:
		default:
		}
	})
	select {
	case d := <-rtts:
		if d <= 0 || d > time.Second {
			t.Errorf("round trip %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no round trip reported within 5 s (pings every 50 ms)")
	}
}

// keepAliveSessions starts an agent's and a relay's session on a TCP pair,
// closed at the test's end; wrap, if not nil, wraps the agent's side of
// the connection, and onRTT is the agent's (ClientWithRTT).
func keepAliveSessions(t *testing.T, wrap func(net.Conn) net.Conn, onRTT func(time.Duration)) (agent, relay *yamux.Session) {
	t.Helper()
	c1, c2 := tcpPair(t)
	var ac net.Conn = c1
	if wrap != nil {
		ac = wrap(c1)
	}
	agent, err := tunnel.ClientWithRTT(ac, nil, onRTT)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	relay, err = tunnel.Server(c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	return agent, relay
}
