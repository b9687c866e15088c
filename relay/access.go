package relay

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/netip"

	"github.com/tunnel-dev/tunnel/proto"
)

// access is a tunnel owner's rules for visitors, checked by the relay before
// a byte reaches the agent, for plain requests and WebSocket upgrades alike.
type access struct {
	allow, deny []netip.Prefix
	users       []user
}

type user struct {
	name string
	hash [sha256.Size]byte
}

// compileAccess checks an agent's rules and prepares them; nil allows all.
func compileAccess(name string, a *proto.Access) (*access, error) {
	if a == nil || (len(a.AllowIPs) == 0 && len(a.DenyIPs) == 0 && len(a.BasicAuth) == 0) {
		return nil, nil
	}
	bad := func(format string, args ...any) error {
		return proto.Errorf(proto.CodeBadRequest, "tunnel %q: "+format, append([]any{name}, args...)...)
	}
	var acc access
	for _, list := range []struct {
		flag string
		in   []string
		out  *[]netip.Prefix
	}{{"allow-ip", a.AllowIPs, &acc.allow}, {"deny-ip", a.DenyIPs, &acc.deny}} {
		for _, c := range list.in {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				addr, aerr := netip.ParseAddr(c)
				if aerr != nil {
					return nil, bad("--%s %q is not an address or a CIDR prefix like 203.0.113.0/24", list.flag, c)
				}
				p = netip.PrefixFrom(addr, addr.BitLen())
			}
			if p.Addr().Is4In6() && p.Bits() >= 96 {
				// Visitors' addresses are compared unmapped (allowsIP):
				// so are the rules that name IPv4 addresses as IPv6.
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			*list.out = append(*list.out, p.Masked())
		}
	}
	for _, c := range a.BasicAuth {
		b, err := hex.DecodeString(c.PasswordSHA256)
		if c.User == "" || err != nil || len(b) != sha256.Size {
			return nil, bad("a --basic-auth entry needs a user and a password")
		}
		u := user{name: c.User}
		copy(u.hash[:], b)
		acc.users = append(acc.users, u)
	}
	return &acc, nil
}

// allowsIP applies the IP rules: deny wins; a non-empty allow list admits
// only its prefixes.
func (a *access) allowsIP(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false
	}
	// Prefix.Contains never matches an address with a zone (a link-local
	// visitor, "[fe80::1%eth0]:port"), which would pass every deny rule.
	ip := ap.Addr().Unmap().WithZone("")
	for _, p := range a.deny {
		if p.Contains(ip) {
			return false
		}
	}
	if len(a.allow) == 0 {
		return true
	}
	for _, p := range a.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// allowsUser checks the request's Basic credentials in constant time
// against every user.
func (a *access) allowsUser(r *http.Request) bool {
	if len(a.users) == 0 {
		return true
	}
	name, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	h := sha256.Sum256([]byte(pass))
	match := 0
	for _, u := range a.users {
		match |= subtle.ConstantTimeCompare([]byte(name), []byte(u.name)) & subtle.ConstantTimeCompare(h[:], u.hash[:])
	}
	return match == 1
}

// check enforces the rules on r and answers it if refused, returning the
// reason (rejectAccessDenied*), or "" when the request may go on. Wrong
// passwords count against the visitor's address in fails: once over its
// limit every attempt from there gets 429, the right password too, so that
// guessing stays at the limit's pace.
func (a *access) check(w http.ResponseWriter, r *http.Request, host string, fails failLimiter) (refused string) {
	if a == nil {
		return ""
	}
	if !a.allowsIP(r.RemoteAddr) {
		writePage(w, r, http.StatusForbidden, "Forbidden",
			fmt.Sprintf("The owner of %s does not admit visitors from your address (%s).", host, remoteIP(r.RemoteAddr)))
		return rejectAccessDeniedIP
	}
	ip := remoteIP(r.RemoteAddr)
	if len(a.users) > 0 && !fails.ok(ip) {
		w.Header().Set("Retry-After", "60")
		writePage(w, r, http.StatusTooManyRequests, "Too many wrong passwords",
			fmt.Sprintf("Too many wrong user names or passwords for %s came from your address; wait a minute, then check them.", host))
		return rejectAccessRateLimited
	}
	if !a.allowsUser(r) {
		if r.Header.Get("Authorization") != "" {
			// No credentials is a browser's first request, not a guess.
			fails.fail(ip)
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q, charset=\"UTF-8\"", host))
		writePage(w, r, http.StatusUnauthorized, "Authentication required",
			fmt.Sprintf("%s needs a user name and password from its owner.", host))
		return rejectAccessDeniedBasic
	}
	if len(a.users) > 0 {
		// The credentials were for the tunnel, not for the local server.
		r.Header.Del("Authorization")
	}
	return ""
}
