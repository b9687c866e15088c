package relay

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
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
	sess   *agentSession // nil while held
	last   *agentSession // while held, the session that held it, for the admin API
	secret string
	owner  string // the token's name; "" without auth
	// tokHash identifies the token (zero without auth): its name is only
	// a label, "token-N" by position when the configuration gives none.
	tokHash   [sha256.Size]byte
	holder    string  // who holds the name, as visitors acknowledge it (holderID)
	access    *access // the owner's visitor rules; nil allows everyone
	heldUntil time.Time
	timer     *time.Timer // frees a held name when the grace period ends
}

func newRegistry(grace time.Duration) *registry {
	return &registry{grace: grace, names: make(map[string]*entry)}
}

// lookup returns the live session for name with its visitor rules, or
// whether the name is held for a disconnected agent (and until when).
func (r *registry) lookup(name string) (sess *agentSession, acc *access, heldUntil time.Time) {
	sess, acc, _, heldUntil = r.lookupHolder(name)
	return sess, acc, heldUntil
}

// lookupHolder is lookup that also returns who holds the name (holderID).
func (r *registry) lookupHolder(name string) (sess *agentSession, acc *access, holder string, heldUntil time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.names[name]
	if e == nil {
		return nil, nil, "", time.Time{}
	}
	return e.sess, e.access, e.holder, e.heldUntil
}

// holderID identifies who holds a name, for the interstitial's
// acknowledgements: with auth the token (teammates sharing one are one
// owner; a restarted agent is the same one), without auth the agent's
// reconnect secret. A name that passes to someone else thus shows its
// visitors the warning again. It is a hash: the secret is a credential.
// The token counts by its hash, not its name, which may be its position.
func holderID(tok *token, secret string) string {
	var h [sha256.Size]byte
	if tok != nil {
		h = sha256.Sum256(append([]byte("token\x00"), tok.hash[:]...))
	} else {
		h = sha256.Sum256([]byte("agent\x00" + secret))
	}
	return hex.EncodeToString(h[:16])
}

// claimant is who asks for names: a session, its reconnect secret, and
// (with auth) its token.
type claimant struct {
	sess       *agentSession
	secret     string
	tokens     *tokenSet
	tok        *token // nil without auth
	maxTunnels int    // per token; 0 means no limit
	// pinged lists the sessions of rivals the relay pinged just before
	// the claim, and answering those that answered: another agent with
	// the same token that is alive keeps its names. A rival that claimed
	// a name after the pings went out was not pinged: claim then returns
	// errUnpinged and the caller pings again.
	pinged, answering map[*agentSession]bool
}

// errUnpinged is claim's answer when a name is held live under the
// claimant's token by a session that was not pinged: it claimed the name
// while the pings were under way. Ping the rivals again and retry.
var errUnpinged = errors.New("relay: a rival session was not pinged")

func (c *claimant) owner() string {
	if c.tok == nil {
		return ""
	}
	return c.tok.Name
}

// sameToken reports whether e is held under the claimant's token.
func (c *claimant) sameToken(e *entry) bool {
	return c.tok != nil && e.owner != "" && e.tokHash == c.tok.hash
}

func (c *claimant) tokHash() (h [sha256.Size]byte) {
	if c.tok != nil {
		h = c.tok.hash
	}
	return h
}

// mine reports whether e belongs to the claimant: the same reconnect
// secret, or, with auth, the same token unless another agent with that
// token holds it live and still answers. Either way the claimant replaces
// its own stale session at once.
func (c *claimant) mine(e *entry) bool {
	// Only called once unpinged(e) is false.
	if e.secret == c.secret {
		return true
	}
	return c.sameToken(e) && (e.sess == nil || !c.answering[e.sess])
}

// unpinged reports whether e is held live under the claimant's token, by
// another secret, by a session the caller did not ping: whether it is alive
// is unknown, so it can be neither replaced nor refused yet.
func (c *claimant) unpinged(e *entry) bool {
	return c.sameToken(e) && e.sess != nil && e.secret != c.secret && !c.pinged[e.sess]
}

// rivals returns the live sessions that hold one of names under the same
// token as the claimant but another reconnect secret: the claimant's own
// stale session, or another agent running with the same token. The caller
// pings them to tell which.
func (r *registry) rivals(secret string, tok *token, reqs []proto.TunnelRequest) []*agentSession {
	if tok == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*agentSession
	for _, req := range reqs {
		e := r.names[req.Name]
		if req.Name == "" || e == nil || e.sess == nil || e.secret == secret || e.owner == "" || e.tokHash != tok.hash || slices.Contains(out, e.sess) {
			continue
		}
		out = append(out, e.sess)
	}
	return out
}

// claim grants all requested names to c, or none. An empty name gets a
// random free one the token may have. Sessions that held a name under the
// same credential are returned so the caller can close them; reconnect
// reports whether c took over any name it held before (live or held).
func (r *registry) claim(c claimant, reqs []proto.TunnelRequest, rules []*access) (names []string, replaced []*agentSession, reconnect bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := make(map[string]bool)
	for _, req := range reqs {
		name := req.Name
		if name == "" {
			continue
		}
		if err := proto.ValidateName(name); err != nil {
			return nil, nil, false, err
		}
		if seen[name] {
			return nil, nil, false, proto.Errorf(proto.CodeBadRequest, "name %q was asked for twice", name)
		}
		seen[name] = true
		if err := c.tokens.mayClaim(c.tok, name); err != nil {
			return nil, nil, false, err
		}
		e := r.names[name]
		switch {
		case e != nil && c.unpinged(e):
			return nil, nil, false, errUnpinged
		case e == nil || c.mine(e):
			// Free, or ours: live on a stale session or held for us.
		case e.sess != nil && c.sameToken(e):
			return nil, nil, false, proto.Errorf(proto.CodeNameTaken, "name %q is in use by another agent with this token, connected from %s, which still answers; stop it first, or choose another name", name, e.sess.remote)
		case e.sess != nil:
			return nil, nil, false, proto.Errorf(proto.CodeNameTaken, "name %q is in use by another agent; choose another name", name)
		default:
			left := time.Until(e.heldUntil).Round(time.Second)
			return nil, nil, false, proto.Errorf(proto.CodeNameTaken, "name %q is held for its disconnected agent for another %v; choose another name", name, left)
		}
	}
	// Random names asked for with a secret that holds names not asked for
	// by name get those back: the agent asked the same before and its
	// Welcome was lost (the agent sends its secret from its first Hello for
	// this), so it never learnt them. They are not a second set to count.
	var own []string
	randoms := 0
	for _, req := range reqs {
		if req.Name == "" {
			randoms++
		}
	}
	if randoms > 0 {
		for name, e := range r.names {
			if e.secret == c.secret && !seen[name] && c.tokens.mayClaim(c.tok, name) == nil {
				own = append(own, name)
			}
		}
		slices.Sort(own)
		own = own[:min(len(own), randoms)]
		for _, name := range own {
			seen[name] = true
		}
	}
	if c.tok != nil && c.maxTunnels > 0 {
		held := 0
		for name, e := range r.names {
			if c.sameToken(e) && !seen[name] {
				held++
			}
		}
		if held+len(reqs) > c.maxTunnels {
			return nil, nil, false, proto.Errorf(proto.CodeLimit, "token %q may hold %d tunnels at once and holds %d; stop one first", c.tok.Name, c.maxTunnels, held)
		}
	}
	for i, req := range reqs {
		name := req.Name
		if name == "" && len(own) > 0 {
			name, own = own[0], own[1:]
		} else if name == "" {
			name, err = r.randomNameLocked(c, seen)
			if err != nil {
				return nil, nil, false, err
			}
			seen[name] = true
		}
		if e := r.names[name]; e != nil {
			reconnect = true // only c's own entries get this far
			if e.sess != nil && e.sess != c.sess {
				replaced = append(replaced, e.sess)
			}
			if e.timer != nil {
				e.timer.Stop()
			}
		}
		r.names[name] = &entry{sess: c.sess, secret: c.secret, owner: c.owner(), tokHash: c.tokHash(), holder: holderID(c.tok, c.secret), access: rules[i]}
		names = append(names, name)
	}
	return names, replaced, reconnect, nil
}

func (r *registry) randomNameLocked(c claimant, taken map[string]bool) (string, error) {
	for range 100 {
		n, err := c.tokens.randomName(c.tok)
		if err != nil {
			return "", err
		}
		if r.names[n] == nil && !taken[n] && c.tokens.mayClaim(c.tok, n) == nil {
			return n, nil
		}
	}
	return "", proto.Errorf(proto.CodeInternal, "could not find a free random name; ask for one by name")
}

// revoke frees name at once: its session, if any, is returned so the caller
// can close it, and no hold is kept.
func (r *registry) revoke(name string) (sess *agentSession, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.names[name]
	if e == nil {
		return nil, false
	}
	if e.timer != nil {
		e.timer.Stop()
	}
	delete(r.names, name)
	return e.sess, true
}

// sessionsWithout frees the names whose token is not in ts, and returns
// their sessions for closing after a reload removed their token. A token
// is its hash: its name may be its position in the file, and names that
// stay take the token's name in ts. Names claimed without a token go once
// ts has tokens.
func (r *registry) sessionsWithout(ts *tokenSet) []*agentSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*agentSession
	seen := map[*agentSession]bool{}
	for name, e := range r.names {
		if e.owner == "" && len(ts.tokens) == 0 {
			continue
		}
		if t := ts.byHash(e.tokHash); e.owner != "" && t != nil {
			e.owner = t.Name
			continue
		}
		if e.sess != nil && !seen[e.sess] {
			seen[e.sess] = true
			out = append(out, e.sess)
		}
		if e.timer != nil {
			e.timer.Stop()
		}
		delete(r.names, name)
	}
	return out
}

// release ends sess's hold on its names. With hold, each name stays reserved
// for the session's secret for the grace period; otherwise it is free at once.
// Names that another session took over meanwhile are left alone; the others
// are returned.
func (r *registry) release(sess *agentSession, names []string, hold bool) (released []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, name := range names {
		e := r.names[name]
		if e == nil || e.sess != sess {
			continue
		}
		released = append(released, name)
		if !hold || r.grace <= 0 {
			delete(r.names, name)
			continue
		}
		e.sess, e.last = nil, sess
		e.heldUntil = time.Now().Add(r.grace)
		e.timer = time.AfterFunc(r.grace, func() { r.expire(name, e) })
	}
	return released
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

// counts returns how many names are live and how many held.
func (r *registry) counts() (live, held int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.names {
		if e.sess != nil {
			live++
		} else {
			held++
		}
	}
	return live, held
}

// listed is a name in the registry as the admin API shows it.
type listed struct {
	name      string
	sess      *agentSession // live, or the last one while held
	live      bool
	owner     string
	heldUntil time.Time
}

// list returns every name, sorted.
func (r *registry) list() []listed {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]listed, 0, len(r.names))
	for name, e := range r.names {
		l := listed{name: name, sess: e.sess, live: e.sess != nil, owner: e.owner, heldUntil: e.heldUntil}
		if !l.live {
			l.sess = e.last
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b listed) int { return strings.Compare(a.name, b.name) })
	return out
}

// String is for debugging.
func (r *registry) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("registry(%d names)", len(r.names))
}
