package proto

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"strconv"
	"strings"
)

// MaxNameLength is the longest name: one DNS label.
const MaxNameLength = 63

// reservedNames are never granted: they look official or collide with hosts a
// relay operator is likely to use.
var reservedNames = map[string]bool{
	"www": true, "api": true, "admin": true, "app": true, "mail": true,
	"smtp": true, "imap": true, "pop": true, "ftp": true, "ns": true,
	"ns1": true, "ns2": true, "dns": true, "relay": true, "tunnel": true,
	"status": true, "dashboard": true, "login": true, "auth": true,
	"metrics": true, "localhost": true, "static": true, "cdn": true,
}

// IsReserved reports whether name is on the built-in reserved list.
func IsReserved(name string) bool { return reservedNames[name] }

// ValidateName checks that name is a usable tunnel name and returns an
// ErrNameInvalid error naming the rule it broke.
func ValidateName(name string) error {
	bad := func(rule string) error {
		return Errorf(CodeNameInvalid, "name %q is invalid: %s", name, rule)
	}
	switch {
	case name == "":
		return bad("it is empty")
	case len(name) > MaxNameLength:
		return bad(fmt.Sprintf("it is longer than %d characters", MaxNameLength))
	case name[0] == '-' || name[len(name)-1] == '-':
		return bad("it must not start or end with '-'")
	}
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
		case c >= 'A' && c <= 'Z':
			return bad("use lower-case letters only")
		default:
			return bad("only letters a-z, digits 0-9 and '-' are allowed")
		}
	}
	if strings.HasPrefix(name, "xn--") {
		return bad("punycode names (xn--) are not allowed")
	}
	if reservedNames[name] {
		return bad("it is reserved")
	}
	return nil
}

var adjectives = strings.Fields(`amber brave bright calm clever cosmic crisp
	dancing eager fancy fluffy gentle golden happy humble jolly keen lively
	lucky mellow merry misty nimble noble plucky proud quick quiet rapid
	rosy shiny silent silver sleepy smooth snowy sunny swift tidy vivid
	warm wild witty zesty`)

var nouns = strings.Fields(`badger beaver bison cobra comet coral crane
	dolphin eagle falcon ferret finch fox gecko heron ibis koala lemur
	lynx magpie marmot moose newt otter owl panda parrot pelican puffin
	quokka raven robin salmon seal sparrow tiger toucan walrus wombat yak`)

// RandomName returns a readable random name such as "brave-otter-42". It
// always passes ValidateName.
func RandomName() string {
	pick := func(n int) int {
		v, err := rand.Int(rand.Reader, big.NewInt(int64(n)))
		if err != nil {
			panic(err) // crypto/rand never fails on supported platforms
		}
		return int(v.Int64())
	}
	return fmt.Sprintf("%s-%s-%d", adjectives[pick(len(adjectives))], nouns[pick(len(nouns))], 10+pick(90))
}

// ValidateHostHeader checks a hello's host_header: a host or host:port, where the host is a DNS name, an IPv4
// address or a bracketed IPv6 address, and the port is from 1 to 65535.
// Nothing that could end the header line, or make the value a URL, gets
// through. The agent checks it before it asks, the relay again (SPEC.md, hello).
func ValidateHostHeader(v string) error {
	bad := func(why string) error {
		return fmt.Errorf("host header %q is not a host or host:port like localhost:8080: %s", v, why)
	}
	if v == "" || len(v) > 259 {
		return bad("it must be 1 to 259 characters")
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f || strings.IndexByte(`/?#@\`, c) >= 0 {
			return bad(fmt.Sprintf("character %q is not allowed", c))
		}
	}
	host, port, hasPort := v, "", false
	if strings.HasPrefix(v, "[") {
		end := strings.IndexByte(v, ']')
		if end < 0 {
			return bad("no ] after the IPv6 address")
		}
		host = v[1:end]
		if rest := v[end+1:]; rest != "" {
			var ok bool
			if port, ok = strings.CutPrefix(rest, ":"); !ok {
				return bad("only :port may follow ]")
			}
			hasPort = true
		}
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() || a.Zone() != "" {
			return bad("not an IPv6 address in brackets")
		}
	} else {
		host, port, hasPort = strings.Cut(v, ":")
		if strings.Contains(port, ":") {
			return bad("an IPv6 address goes in brackets, like [::1]:8080")
		}
		if _, err := netip.ParseAddr(host); err != nil {
			if err := checkDNSName(host); err != nil {
				return bad(err.Error())
			}
		}
	}
	if hasPort {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port[0] < '0' || port[0] > '9' {
			return bad("the port must be a number from 1 to 65535")
		}
	}
	return nil
}

// characters each, separated by dots.
func checkDNSName(h string) error {
	if h == "" || len(h) > 253 {
		return errors.New("the host name must be 1 to 253 characters")
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("each part of the host name between dots must be 1 to 63 characters")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("character %q is not allowed in a host name", c)
			}
		}
	}
	return nil
}
