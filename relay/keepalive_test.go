package relay

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// fakeStream is a kept stream that only knows whether it was closed.
type fakeStream struct {
	net.Conn // nil: the pool only closes its streams
	closed   atomic.Bool
}

func (c *fakeStream) Close() error { c.closed.Store(true); return nil }

func closedConn(c net.Conn) bool { return c.(*fakeStream).closed.Load() }

func newFakeStream() net.Conn { return &fakeStream{} }

// A visitor's keep-alive connection takes its stream from the pool for
// each request and gives it back after: the stream keeps one pool entry
// and one timer for its life, so a request allocates nothing here.
func TestKeptStreamReusesItsEntry(t *testing.T) {
	tr := &keepAliveTransport{}
	vc := &visitorConn{}
	c := newFakeStream()
	tr.put("demo.7f000001-1f90", vc, c, nil)
	e := tr.get("demo.7f000001-1f90")
	if e == nil || e.c != c {
		t.Fatalf("get = %v, want the kept stream", e)
	}
	timer := e.timer
	allocs := testing.AllocsPerRun(100, func() {
		tr.put("demo.7f000001-1f90", vc, c, e)
		if tr.get("demo.7f000001-1f90") != e {
			t.Fatal("the stream came back under another entry")
		}
	})
	if allocs != 0 {
		t.Errorf("a keep and take of a kept stream allocated %v times, want 0", allocs)
	}
	if e.timer != timer {
		t.Error("keeping the stream again made a new timer")
	}
	if tr.get("demo.7f000001-1f90") != nil {
		t.Error("a stream taken from the pool was returned again")
	}
	if closedConn(c) {
		t.Error("the stream was closed while in use")
	}
	vc.close() // the visitor's connection ends: nothing is left for its key
	if _, ok := tr.idle["demo.7f000001-1f90"]; ok || tr.watched["demo.7f000001-1f90"] {
		t.Error("the closed visitor connection's key is still in the pool")
	}
}

// The idle timer of a kept stream can fire just as the stream is taken for
// a request; once the stream is kept again, that late firing must not close
// it. A firing at the stream's own time does.
func TestKeptStreamLateTimer(t *testing.T) {
	tr := &keepAliveTransport{}
	vc := &visitorConn{}
	c := newFakeStream()
	const key = "demo.7f000001-1f90"
	tr.put(key, vc, c, nil)
	e := tr.get(key)
	tr.put(key, vc, c, e) // kept again, for keepAliveIdle from now

	tr.expire(key, e) // the earlier keep's timer, late
	if closedConn(c) || tr.nidle != 1 {
		t.Fatalf("a late timer closed a stream kept again (closed %v, %d kept)", closedConn(c), tr.nidle)
	}

	tr.mu.Lock()
	e.until = time.Now().Add(-time.Second) // its time has come
	tr.mu.Unlock()
	tr.expire(key, e)
	if !closedConn(c) || tr.nidle != 0 {
		t.Fatalf("the stream's own timer left it open (closed %v, %d kept)", closedConn(c), tr.nidle)
	}
	if tr.get(key) != nil {
		t.Error("an expired stream was handed out")
	}
	e.timer.Stop()
}

// A stream for a visitor connection whose close the pool cannot watch is
// kept too, and its key leaves the map once its streams are taken.
func TestKeptStreamUnwatchedKey(t *testing.T) {
	tr := &keepAliveTransport{}
	c := newFakeStream()
	tr.put("demo", nil, c, nil)
	e := tr.get("demo")
	if e == nil {
		t.Fatal("the stream was not kept")
	}
	e.timer.Stop()
	if _, ok := tr.idle["demo"]; ok {
		t.Error("an unwatched key stayed in the pool with nothing kept")
	}
}

// cancelOnWrite is a stream whose request write completes just as the
// visitor goes away: its context ends, and the transport's cancellation
// has set the stream's deadline, before Write returns.
type cancelOnWrite struct {
	net.Conn
	cancel   context.CancelFunc
	deadline chan struct{}
	once     bool
}

func (c *cancelOnWrite) SetDeadline(t time.Time) error {
	err := c.Conn.SetDeadline(t)
	if t.Equal(time.Unix(1, 0)) {
		close(c.deadline)
	}
	return err
}

func (c *cancelOnWrite) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if !c.once {
		c.once = true
		c.cancel()
		<-c.deadline // the context's AfterFunc has run
	}
	return n, err
}

// A visitor that leaves once its request is written must free the
// exchange at once, not after the response header timeout.
func TestKeepAliveCancelNotOverwritten(t *testing.T) {
	const rht = 3 * time.Second
	tr := &keepAliveTransport{as: &agentSession{srv: &Server{cfg: Config{Limits: Limits{ResponseHeaderTimeout: rht}}}}}
	relaySide, agentSide := net.Pipe()
	defer agentSide.Close()
	go io.Copy(io.Discard, agentSide) // a local server that never answers
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := &cancelOnWrite{Conn: relaySide, cancel: cancel, deadline: make(chan struct{})}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://demo.7f000001-1f90/", nil)
	start := time.Now()
	_, err := tr.roundTrip(c, nil, req, "demo.7f000001-1f90")
	if d := time.Since(start); d > time.Second {
		t.Fatalf("roundTrip returned after %v (err %v): the visitor's cancellation was overwritten by the response header deadline", d.Round(time.Millisecond), err)
	}
	if err == nil {
		t.Fatal("roundTrip succeeded")
	}
}
