package tunnel_test

import (
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// TestResetsTrackRacesReset: the peer's reset for a stream can arrive while
// the stream is being tracked (an agent that refuses a stream answers at
// once), and Reset then closes it from the control reader's goroutine. Run
// under -race: the stream must be complete before Reset can find it.
func TestResetsTrackRacesReset(t *testing.T) {
	agent, relay, stop := sessionPair(t)
	t.Cleanup(stop)
	for range 100 {
		opened, accepted := rawStreamPair(t, relay, agent)
		st := tunnel.NewStream(opened, nil)
		sent := make(chan uint32, 1)
		r := tunnel.NewResets(func(id uint32) { sent <- id })
		done := make(chan struct{})
		go func() {
			defer close(done)
			// A no-op until Track has put st in the table; then it
			// closes st (and SetWriteDeadline fails).
			for st.SetWriteDeadline(time.Time{}) == nil {
				r.Reset(st.ID())
			}
		}()
		r.Track(st)
		<-done
		if r.Len() != 0 {
			t.Fatalf("a stream reset by the peer is still tracked")
		}
		select {
		case id := <-sent:
			t.Fatalf("a stream the peer reset was reset back (id %d)", id)
		default:
		}
		accepted.Close()
	}
}
