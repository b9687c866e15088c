package relay

import (
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
)

// A deny rule written as an IPv4-mapped IPv6 address or prefix
// (--deny-ip ::ffff:203.0.113.7, which the agent accepts) must refuse the
// IPv4 visitor it names, and a visitor whose address carries an IPv6 zone
// (link-local, "[fe80::1%eth0]:port" as net/http reports it) must not slip
// past every deny rule.
func TestDenyRulesMatchMappedAndZonedAddresses(t *testing.T) {
	for _, tc := range []struct{ rule, remote string }{
		{"::ffff:203.0.113.7", "203.0.113.7:5555"},
		{"::ffff:203.0.113.0/120", "203.0.113.7:5555"},
		{"fe80::/10", "[fe80::1%eth0]:5555"},
		{"fe80::1", "[fe80::1%eth0]:5555"},
	} {
		acc, err := compileAccess("demo", &proto.Access{DenyIPs: []string{tc.rule}})
		if err != nil {
			t.Fatal(err)
		}
		if acc.allowsIP(tc.remote) {
			t.Errorf("deny %s: visitor %s admitted", tc.rule, tc.remote)
		}
	}
	// The allow list likewise admits the IPv4 visitor a mapped rule names.
	acc, err := compileAccess("demo", &proto.Access{AllowIPs: []string{"::ffff:203.0.113.0/120"}})
	if err != nil {
		t.Fatal(err)
	}
	if !acc.allowsIP("203.0.113.7:5555") {
		t.Error("allow ::ffff:203.0.113.0/120: visitor 203.0.113.7 refused")
	}
}

// Failures from one IPv6 /64 share a budget: a host that holds a /64 (most
// do) cannot rotate through its addresses for fresh ones. An IPv4 address
// counts the same however it is written.
func TestFailLimiterKeysIPv6ByPrefix(t *testing.T) {
	l := failLimiter{newIPLimiter(time.Hour, 2)}
	l.fail("2001:db8:0:7::1")
	l.fail("2001:db8:0:7::2")
	if l.ok("2001:db8:0:7:ffff::9") {
		t.Error("a third address of the same /64 still had failures left")
	}
	if !l.ok("fe80::1%eth0") || !l.ok("2001:db8:0:8::1") {
		t.Error("another /64 was limited")
	}
	l.fail("203.0.113.7")
	l.fail("::ffff:203.0.113.7")
	if l.ok("203.0.113.7") {
		t.Error("an IPv4 address written IPv4-mapped had a budget of its own")
	}
	if !l.ok("203.0.113.8") {
		t.Error("the next IPv4 address was limited")
	}
}
