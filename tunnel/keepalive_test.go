package tunnel_test

import (
	"io"
	"net"
	"runtime"
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
	defer tunnel.SetKeepAlive(200*time.Millisecond, time.Second, 100*time.Millisecond)()
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
// FIN) is given up after a ping interval, a ping timeout and the grace.
func TestKeepAliveSilentPeerClosesSession(t *testing.T) {
	defer tunnel.SetKeepAlive(200*time.Millisecond, time.Second, 100*time.Millisecond)()
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
		t.Fatal("session with a silent peer still open after 5 s (want about 1.3 s)")
	}
}

// stalledConn is a connection whose reads wait until resume is closed, as
// a reading goroutine does in a process that is paused or too busy to run
// it: what the peer sends meanwhile waits in the kernel. It hides the
// socket, as a connection of any kind keepalive cannot look into.
type stalledConn struct {
	net.Conn
	resume chan struct{}
}

func (c *stalledConn) Read(p []byte) (int, error) {
	<-c.resume
	return c.Conn.Read(p)
}

// stalledSocket is a stalledConn that names its socket (NetConn), as
// *tls.Conn does.
type stalledSocket struct{ *stalledConn }

func (c stalledSocket) NetConn() net.Conn { return c.Conn }

// A relay whose own reading stalls past a ping's wait while the agent's
// answer waits unread in the kernel keeps the session: the answer is
// there, the slowness is the relay's. (Go runs the ping's timer before it
// hands the reader what came during a pause, so the timeout alone closed
// the session, with every WebSocket on it.) Linux, where the kernel says
// what waits; the grace is kept too short to matter.
func TestKeepAliveStalledReaderWithAnswerWaitingKeepsSession(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the kernel's receive queue is read on Linux only")
	}
	defer tunnel.SetKeepAlive(100*time.Millisecond, 300*time.Millisecond, time.Millisecond)()
	stalled := &stalledConn{resume: make(chan struct{})}
	agent, relay := keepAliveSessionsWrapped(t, nil, func(c net.Conn) net.Conn {
		stalled.Conn = c
		return stalledSocket{stalled}
	})
	time.Sleep(time.Second) // pings at 0.1 s, 0.2 s, ... each waited for 0.3 s
	close(stalled.resume)
	checkSessionWorks(t, agent, relay)
}

// Where the kernel cannot be asked, the grace gives a late reader its
// turn: a reader that catches up within it keeps the session.
func TestKeepAliveLateReaderWithinGraceKeepsSession(t *testing.T) {
	defer tunnel.SetKeepAlive(100*time.Millisecond, 300*time.Millisecond, 2*time.Second)()
	stalled := &stalledConn{resume: make(chan struct{})}
	agent, relay := keepAliveSessionsWrapped(t, nil, func(c net.Conn) net.Conn {
		stalled.Conn = c
		return stalled
	})
	time.Sleep(700 * time.Millisecond) // the first ping's wait ended at 0.4 s
	close(stalled.resume)
	checkSessionWorks(t, agent, relay)
}

// checkSessionWorks fails t unless both sessions are open and a stream
// from agent to relay carries a message.
func checkSessionWorks(t *testing.T, agent, relay *yamux.Session) {
	t.Helper()
	if agent.IsClosed() || relay.IsClosed() {
		t.Fatalf("session closed (agent closed %v, relay closed %v)", agent.IsClosed(), relay.IsClosed())
	}
	st, err := agent.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	rs, err := relay.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	b := make([]byte, 10)
	if _, err := io.ReadFull(rs, b); err != nil || string(b) != "still here" {
		t.Fatalf("relay read %q, %v", b, err)
	}
}

// The keepalive's answered pings are the round-trip measure an agent
// shows (ClientWithRTT): no pings of its own.
func TestKeepAliveReportsRTT(t *testing.T) {
	defer tunnel.SetKeepAlive(50*time.Millisecond, time.Second, 100*time.Millisecond)()
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
	return keepAliveSessionsWith(t, wrap, nil, onRTT)
}

// keepAliveSessionsWrapped is keepAliveSessions with the relay's side
// wrapped by wrapRelay.
func keepAliveSessionsWrapped(t *testing.T, wrapAgent, wrapRelay func(net.Conn) net.Conn) (agent, relay *yamux.Session) {
	t.Helper()
	return keepAliveSessionsWith(t, wrapAgent, wrapRelay, nil)
}

func keepAliveSessionsWith(t *testing.T, wrapAgent, wrapRelay func(net.Conn) net.Conn, onRTT func(time.Duration)) (agent, relay *yamux.Session) {
	t.Helper()
	c1, c2 := tcpPair(t)
	var ac, rc net.Conn = c1, c2
	if wrapAgent != nil {
		ac = wrapAgent(c1)
	}
	if wrapRelay != nil {
		rc = wrapRelay(c2)
	}
	agent, err := tunnel.ClientWithRTT(ac, nil, onRTT)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	relay, err = tunnel.Server(rc, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	return agent, relay
}
