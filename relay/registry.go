package relay

import (
	"fmt"
	"sync"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
)

// registry maps public names to the agent sessions that serve them. A name is
// live while its session runs, then held for the grace period for whoever
// presents the same reconnect secret, then free.
type registry struct {
	grace time.Duration

	mu    sync.Mutex
	names map[string]*entry
}

type entry struct {
	sess      *agentSession // nil while held
	secret    string
	heldUntil time.Time
	timer     *time.Timer // frees a held name when the grace period ends
}

func newRegistry(grace time.Duration) *registry {
	return &registry{grace: grace, names: make(map[string]*entry)}
}

// lookup returns the live session for name, or whether the name is held for
// a disconnected agent (and until when).
func (r *registry) lookup(name string) (sess *agentSession, heldUntil time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.names[name]
	if e == nil {
		return nil, time.Time{}
	}
	return e.sess, e.heldUntil
}

// claim grants all requested names to sess, or none. An empty name gets a
// random free one. Sessions that held a name under the same secret are
// returned so the caller can close them: a reconnecting agent replaces its
// own stale session at once.
func (r *registry) claim(sess *agentSession, reqs []proto.TunnelRequest, secret string) (names []string, replaced []*agentSession, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := make(map[string]bool)
	for _, req := range reqs {
		name := req.Name
		if name == "" {
			continue
		}
		if err := proto.ValidateName(name); err != nil {
			return nil, nil, err
		}
		if seen[name] {
			return nil, nil, proto.Errorf(proto.CodeBadRequest, "name %q was asked for twice", name)
		}
		seen[name] = true
		e := r.names[name]
		switch {
		case e == nil:
		case e.secret == secret:
			// Our own name, live on a stale session or held for us.
		case e.sess != nil:
			return nil, nil, proto.Errorf(proto.CodeNameTaken, "name %q is in use by another agent; choose another with -s", name)
		default:
			left := time.Until(e.heldUntil).Round(time.Second)
			return nil, nil, proto.Errorf(proto.CodeNameTaken, "name %q is held for its disconnected agent for another %v; choose another with -s", name, left)
		}
	}
	for _, req := range reqs {
		name := req.Name
		if name == "" {
			name = r.randomNameLocked(seen)
			if name == "" {
				return nil, nil, proto.Errorf(proto.CodeInternal, "could not find a free random name; ask for one with -s")
			}
			seen[name] = true
		}
		if e := r.names[name]; e != nil {
			if e.sess != nil && e.sess != sess {
				replaced = append(replaced, e.sess)
			}
			if e.timer != nil {
				e.timer.Stop()
			}
		}
		r.names[name] = &entry{sess: sess, secret: secret}
		names = append(names, name)
	}
	return names, replaced, nil
}

func (r *registry) randomNameLocked(taken map[string]bool) string {
	for range 100 {
		n := proto.RandomName()
		if r.names[n] == nil && !taken[n] {
			return n
		}
	}
	return ""
}

// release ends sess's hold on its names. With hold, each name stays reserved
// for the session's secret for the grace period; otherwise it is free at once.
// Names that another session took over meanwhile are left alone.
func (r *registry) release(sess *agentSession, names []string, hold bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, name := range names {
		e := r.names[name]
		if e == nil || e.sess != sess {
			continue
		}
		if !hold || r.grace <= 0 {
			delete(r.names, name)
			continue
		}
		e.sess = nil
		e.heldUntil = time.Now().Add(r.grace)
		e.timer = time.AfterFunc(r.grace, func() { r.expire(name, e) })
	}
}

func (r *registry) expire(name string, e *entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names[name] == e && e.sess == nil {
		delete(r.names, name)
	}
}

// stop cancels the timers of held names.
func (r *registry) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.names {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
}

// String is for debugging.
func (r *registry) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("registry(%d names)", len(r.names))
}
