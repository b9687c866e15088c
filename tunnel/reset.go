package tunnel

import "sync"

// Resets aborts streams across a session. yamux v0.1.2 cannot reset a
// stream: closing one only sends a FIN, and a peer blocked writing into it
// (its window full, since nobody reads any more) stays blocked, holding
// its local connection, until some timeout. So when a stream is closed
// before its peer finished, the closing side sends a StreamReset with the
// stream's ID on the control stream, and the peer aborts its end at once.
//
// Each end of a session keeps one Resets; Track every data stream with it.
type Resets struct {
	send func(id uint32) // queues a StreamReset for the peer; must not block

	mu      sync.Mutex
	streams map[uint32]*Stream
	aborted map[uint32]bool // reset by the peer: closing them sends nothing back
}

// NewResets returns a table that sends resets with send.
func NewResets(send func(id uint32)) *Resets {
	return &Resets{send: send, streams: make(map[uint32]*Stream), aborted: make(map[uint32]bool)}
}

// Track registers st. When st is closed before the peer finished writing,
// the peer is sent a reset, unless the peer reset it first.
func (r *Resets) Track(st *Stream) {
	id := st.ID()
	// onClose is set before st is in the table: a reset from the peer may
	// find it there and Close it at once (an agent refusing a stream
	// answers that fast), and Close reads onClose.
	st.onClose = func(st *Stream, peerDone bool) {
		r.mu.Lock()
		delete(r.streams, id)
		byPeer := r.aborted[id]
		delete(r.aborted, id)
		r.mu.Unlock()
		if !peerDone && !byPeer {
			r.send(id)
		}
	}
	r.mu.Lock()
	r.streams[id] = st
	r.mu.Unlock()
}

// Reset aborts the stream the peer reset: its Writes fail at once, and its
// Reads once they have returned what came before the reset (see
// resetByPeer), so whatever joins it lets go of its other connection too.
func (r *Resets) Reset(id uint32) {
	r.mu.Lock()
	st := r.streams[id]
	if st != nil {
		r.aborted[id] = true
		delete(r.streams, id) // nothing more to do with it here
	}
	r.mu.Unlock()
	if st != nil {
		st.resetByPeer()
	}
}

// Len reports how many streams are tracked.
func (r *Resets) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.streams)
}
