package agent

import (
	"math/rand/v2"
	"time"
)

// backoff computes full-jitter exponential delays: the n-th delay is uniform
// in [0, min(max, min·2^n)), so many agents cut off together do not come back
// in lock step.
type backoff struct {
	min, max time.Duration
	n        int
}

func (b *backoff) next() time.Duration {
	ceil := b.min << min(b.n, 20)
	if ceil > b.max || ceil <= 0 {
		ceil = b.max
	}
	b.n++
	return time.Duration(rand.Int64N(int64(ceil)) + 1)
}

func (b *backoff) reset() { b.n = 0 }
