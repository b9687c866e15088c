package relay

import (
	"errors"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
)

// Three agents with one token and the name "demo". A session is replaced
// only when the relay pinged it and it did not answer; a session that
// claimed the name while the pings were under way was not pinged, and
// claim says so instead of taking the name from it unasked.
func TestClaimPingsEveryRivalItReplaces(t *testing.T) {
	ts, err := newTokenSet([]Token{{Name: "alice", Secret: "alice-secret-1"}})
	if err != nil {
		t.Fatal(err)
	}
	tok := ts.tokens[0]
	reg := newRegistry(time.Minute)
	reqs := []proto.TunnelRequest{{Name: "demo"}}
	rules := []*access{nil}
	claim := func(sess *agentSession, secret string, pinged, answering map[*agentSession]bool) ([]*agentSession, error) {
		t.Helper()
		_, replaced, _, err := reg.claim(claimant{sess: sess, secret: secret, tokens: ts, tok: tok, pinged: pinged, answering: answering}, reqs, rules)
		return replaced, err
	}

	first, second, third := &agentSession{}, &agentSession{}, &agentSession{}
	if _, err := claim(first, "secret-first-0123", nil, nil); err != nil {
		t.Fatal(err)
	}
	// The second agent pinged the first, which did not answer: replaced.
	replaced, err := claim(second, "secret-second-123", map[*agentSession]bool{first: true}, nil)
	if err != nil || len(replaced) != 1 || replaced[0] != first {
		t.Fatalf("second replacing the silent first: replaced %v, err %v", replaced, err)
	}
	// The third agent's pings went out while the first still held the
	// name; the second, which holds it now, was not pinged.
	if _, err := claim(third, "secret-third-0123", map[*agentSession]bool{first: true}, nil); !errors.Is(err, errUnpinged) {
		t.Fatalf("third claiming from the unpinged second: %v", err)
	}
	if got := reg.names["demo"].sess; got != second {
		t.Fatal("the unpinged second lost the name")
	}
	// Pinged again, the second answers: it keeps the name.
	both := map[*agentSession]bool{first: true, second: true}
	if _, err := claim(third, "secret-third-0123", both, map[*agentSession]bool{second: true}); !errors.Is(err, proto.ErrNameTaken) {
		t.Fatalf("third claiming from the answering second: %v", err)
	}
	// The same secret is the same agent: no ping needed.
	if _, err := claim(third, "secret-second-123", nil, nil); err != nil {
		t.Fatalf("the second's own secret: %v", err)
	}
}
