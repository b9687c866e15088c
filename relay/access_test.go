package relay

import (
	"testing"

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
