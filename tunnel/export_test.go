package tunnel

import (
	"time"

	"github.com/hashicorp/yamux"
)

// ParkedStreams is how many of sess's streams have a Join direction parked
// (for tests: a parked direction is otherwise invisible).
func ParkedStreams(sess *yamux.Session) int {
	v, ok := wakers.Load(sess)
	if !ok {
		return 0
	}
	w := v.(*streamWaker)
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.parked)
}

// SetStreamCloseTimeout sets yamux's StreamCloseTimeout for the sessions
// made from now on, and returns a func that restores it.
func SetStreamCloseTimeout(d time.Duration) (restore func()) {
	old := streamCloseTimeout
	streamCloseTimeout = d
	return func() { streamCloseTimeout = old }
}

// SetKeepAlive sets the ping interval, the write and ping-answer timeout
// and the grace for the sessions made from now on, and returns a func that
// restores them.
func SetKeepAlive(every, timeout, grace time.Duration) (restore func()) {
	old := currentKeepAlive()
	keepAliveInterval, writeTimeout, keepAliveGrace = every, timeout, grace
	return func() { keepAliveInterval, writeTimeout, keepAliveGrace = old.every, old.timeout, old.grace }
}

// WithoutTCPWaits makes TCP connections neither park nor wait without a
// read, as on every OS but Linux, until restore is called.
func WithoutTCPWaits() (restore func()) {
	w, p, u := waitTCP, parkTCP, unparkTCP
	waitTCP, parkTCP, unparkTCP = nil, nil, nil
	return func() { waitTCP, parkTCP, unparkTCP = w, p, u }
}
