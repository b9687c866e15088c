package relay

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// Token is one credential agents may present. Auth is on when the relay has
// at least one token.
type Token struct {
	// Name labels the token in logs and errors; the token itself is never
	// logged. Default: "token-N" by position.
	Name string
	// Secret is the token itself. Give either Secret or SHA256.
	Secret string
	// SHA256 is the hex SHA-256 of the token, for configuration files that
	// should not hold it in clear.
	SHA256 string
	// Names, if not empty, are the patterns (path.Match syntax, e.g.
	// "alice-*") of the names this token may claim besides its Reserved
	// ones. Empty means any name not reserved for another token.
	Names []string
	// Reserved names belong to this token permanently: no other credential
	// can claim them, even when this token's agent is offline.
	Reserved []string
	// MaxTunnels caps the names this token holds at once, live or held for
	// reconnect. Zero means Limits.MaxTunnelsPerToken.
	MaxTunnels int
}

// tokenSet is the relay's current tokens, replaced as a whole on reload.
type tokenSet struct {
	tokens     []*token
	reservedBy map[string]*token // name → the token it is reserved for
}

type token struct {
	Token
	hash [sha256.Size]byte
}

// CheckToken refuses a token (agent or admin) that holds an environment
// file's comment, as tunnel.CheckToken says.
func CheckToken(token string) error { return tunnel.CheckToken(token) }

func newTokenSet(tokens []Token) (*tokenSet, error) {
	ts := &tokenSet{reservedBy: make(map[string]*token)}
	names := make(map[string]bool)
	for i, t := range tokens {
		if t.Name == "" {
			t.Name = fmt.Sprintf("token-%d", i+1)
		}
		if names[t.Name] {
			return nil, fmt.Errorf("token name %q is used twice; give each token its own name", t.Name)
		}
		names[t.Name] = true
		tk := &token{Token: t}
		switch {
		case t.Secret != "" && t.SHA256 != "":
			return nil, fmt.Errorf("token %q has both a secret and a sha256; give one", t.Name)
		case t.Secret != "":
			if len(strings.TrimSpace(t.Secret)) < 8 {
				return nil, fmt.Errorf("token %q is shorter than 8 characters; use a long random token (e.g. openssl rand -hex 24)", t.Name)
			}
			if err := tunnel.CheckToken(t.Secret); err != nil {
				return nil, fmt.Errorf("token %q %v", t.Name, err)
			}
			// authenticate trims what agents present; so is the token.
			tk.hash = sha256.Sum256([]byte(strings.TrimSpace(t.Secret)))
		case t.SHA256 != "":
			b, err := hex.DecodeString(t.SHA256)
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("token %q: sha256 must be 64 hex digits", t.Name)
			}
			copy(tk.hash[:], b)
		default:
			return nil, fmt.Errorf("token %q is empty: an empty token would let anyone in; set its secret or sha256", t.Name)
		}
		tk.Secret = "" // keep only the hash in memory
		// match picks one token per secret: a second token with the same
		// secret and other rules would silently take the first one's
		// place. The same token from several sources (--token and
		// TUNNEL_TOKEN) is harmless.
		for _, other := range ts.tokens {
			if other.hash == tk.hash && !sameRules(other.Token, t) {
				return nil, fmt.Errorf("tokens %q and %q are the same token with different names or limits, and only one of them could ever apply; give each its own (openssl rand -hex 24)", other.Name, t.Name)
			}
		}
		for _, p := range t.Names {
			if _, err := path.Match(p, "x"); err != nil {
				return nil, fmt.Errorf("token %q: name pattern %q: %v", t.Name, p, err)
			}
			if strings.ContainsFunc(p, func(c rune) bool { return !strings.ContainsRune(patternChars, c) }) {
				// A name is one lower-case label: a pattern with capitals
				// or dots would match no name a visitor can reach.
				return nil, fmt.Errorf("token %q: name pattern %q can match no tunnel name: names are lower-case letters, digits and '-' (with * ? [ ] as wildcards)", t.Name, p)
			}
		}
		for _, n := range t.Reserved {
			if err := proto.ValidateName(n); err != nil {
				return nil, fmt.Errorf("token %q: reserved %w", t.Name, err)
			}
			if other := ts.reservedBy[n]; other != nil {
				return nil, fmt.Errorf("name %q is reserved by both token %q and token %q", n, other.Name, t.Name)
			}
			ts.reservedBy[n] = tk
		}
		if t.MaxTunnels < 0 {
			return nil, fmt.Errorf("token %q: max tunnels must not be negative", t.Name)
		}
		ts.tokens = append(ts.tokens, tk)
	}
	return ts, nil
}

// sameRules reports whether a and b allow the same names and tunnels.
func sameRules(a, b Token) bool {
	return slices.Equal(a.Names, b.Names) && slices.Equal(a.Reserved, b.Reserved) && a.MaxTunnels == b.MaxTunnels
}

// match returns the token whose hash equals secret's, comparing in constant
// time against every token so that timing tells nothing.
func (ts *tokenSet) match(secret string) *token {
	h := sha256.Sum256([]byte(secret))
	var found *token
	for _, t := range ts.tokens {
		if subtle.ConstantTimeCompare(h[:], t.hash[:]) == 1 {
			found = t
		}
	}
	return found
}

// current returns ts's token for tok, one of an earlier set: the same
// hash, whatever its name now (an unnamed token's is its position). ok is
// false when the token is gone or changed, and for a nil tok (auth was
// off) once ts has tokens.
func (ts *tokenSet) current(tok *token) (cur *token, ok bool) {
	if tok == nil {
		return nil, len(ts.tokens) == 0
	}
	cur = ts.byHash(tok.hash)
	return cur, cur != nil
}

// byHash returns the token with hash h, the one match would pick, or nil.
func (ts *tokenSet) byHash(h [sha256.Size]byte) *token {
	var found *token
	for _, t := range ts.tokens {
		if t.hash == h {
			found = t
		}
	}
	return found
}

// mayClaim checks that tok may claim name: names reserved for another token
// are refused, and a token with patterns may claim only what they match.
// tok is nil when auth is off.
func (ts *tokenSet) mayClaim(tok *token, name string) error {
	if owner := ts.reservedBy[name]; owner != nil && owner != tok {
		return proto.Errorf(proto.CodeNameNotAllowed, "name %q is reserved for another token; choose another name", name)
	}
	if tok == nil || len(tok.Names) == 0 || ts.reservedBy[name] == tok {
		return nil
	}
	for _, p := range tok.Names {
		if ok, _ := path.Match(p, name); ok {
			return nil
		}
	}
	return proto.Errorf(proto.CodeNameNotAllowed, "this token may not claim %q; it may claim %s", name, strings.Join(append(append([]string{}, tok.Reserved...), tok.Names...), ", "))
}

// patternChars are those of a name pattern: a name's, and path.Match's
// wildcards and classes.
const patternChars = "abcdefghijklmnopqrstuvwxyz0123456789-*?[]^"

// randomName returns a random name tok may claim: a readable random name,
// prefixed to fit a pattern like "alice-*" when the token has patterns.
func (ts *tokenSet) randomName(tok *token) (string, error) {
	if tok == nil || len(tok.Names) == 0 {
		return proto.RandomName(), nil
	}
	for _, p := range tok.Names {
		if prefix, ok := strings.CutSuffix(p, "*"); ok && !strings.ContainsAny(prefix, "*?[\\") {
			n := prefix + proto.RandomName()
			if proto.ValidateName(n) == nil && ts.mayClaim(tok, n) == nil {
				return n, nil
			}
		}
	}
	return "", proto.Errorf(proto.CodeNameNotAllowed, "this token cannot get a random name; ask for one of %s by name", strings.Join(append(append([]string{}, tok.Reserved...), tok.Names...), ", "))
}

// authError is a refusal of the control-connection upgrade.
type authError struct {
	status int
	reason string
}

func (e *authError) Error() string { return e.reason }

// authenticate checks the agent's bearer token before the upgrade. It
// returns nil, nil when auth is off.
func (s *Server) authenticate(r *http.Request) (*token, error) {
	ts := s.tokens.Load()
	if ts == nil || len(ts.tokens) == 0 {
		return nil, nil
	}
	ip := remoteIP(r.RemoteAddr)
	if !s.authFails.ok(ip) {
		return nil, &authError{http.StatusTooManyRequests, "too many failed token attempts from your address; wait a minute and check the token"}
	}
	secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || strings.TrimSpace(secret) == "" {
		// No token guesses nothing, so it is not a failure to limit:
		// tunnel doctor asks without one, to see whether tokens are
		// checked at all, and must not lock its address out.
		return nil, &authError{http.StatusUnauthorized, "this relay needs a token: pass --token or set TUNNEL_TOKEN"}
	}
	tok := ts.match(strings.TrimSpace(secret))
	if tok == nil {
		s.authFails.fail(ip)
		return nil, &authError{http.StatusUnauthorized, "token not accepted by this relay"}
	}
	return tok, nil
}

func remoteIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// ipLimiter keeps a token bucket per IP address, bounded in size: when it
// grows past max entries, buckets idle for a while are dropped. An IPv6
// address counts as its /64: one subscriber or host usually holds a whole
// /64, so keying on single addresses would give it 2^64 fresh buckets (and
// let it push everyone else's out of a full map).
type ipLimiter struct {
	every time.Duration
	burst int
	max   int

	mu sync.Mutex
	m  map[string]*ipBucket
}

type ipBucket struct {
	lim  *rate.Limiter
	last time.Time
}

func newIPLimiter(every time.Duration, burst int) *ipLimiter {
	return &ipLimiter{every: every, burst: burst, max: 10000, m: make(map[string]*ipBucket)}
}

// limiterKey is the bucket an address counts against: an IPv4 address
// (also written IPv4-mapped) itself, an IPv6 address its /64.
func limiterKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

func (l *ipLimiter) bucket(ip string, now time.Time) *ipBucket {
	ip = limiterKey(ip)
	b := l.m[ip]
	if b == nil {
		if len(l.m) >= l.max {
			for k, v := range l.m {
				if now.Sub(v.last) > time.Duration(l.burst)*l.every {
					delete(l.m, k)
				}
			}
			if len(l.m) >= l.max {
				// Still full of active addresses: forget an arbitrary one
				// rather than grow without bound.
				for k := range l.m {
					delete(l.m, k)
					break
				}
			}
		}
		b = &ipBucket{lim: rate.NewLimiter(rate.Every(l.every), l.burst)}
		l.m[ip] = b
	}
	b.last = now
	return b
}

// allow takes a token for ip and reports whether there was one.
func (l *ipLimiter) allow(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	return l.bucket(ip, now).lim.AllowN(now, 1)
}

// failLimiter counts failures per IP: ok is false while the bucket is empty.
type failLimiter struct{ *ipLimiter }

func (l failLimiter) ok(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[limiterKey(ip)]
	return b == nil || b.lim.TokensAt(time.Now()) >= 1
}

func (l failLimiter) fail(ip string) { l.allow(ip) }

var errNoAuthOnPublic = errors.New("relay: no tokens configured and the relay listens beyond loopback: anyone could claim names. Set --token, TUNNEL_TOKEN or tokens in --config, or pass --allow-no-auth to run an open relay")
