package proto

import (
	"crypto/rand"
	"fmt"
	"math/big"
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
