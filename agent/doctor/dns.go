package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// checkRelayDNS resolves the relay's host and remembers its addresses, which
// the tunnel name must share.
func (d *doctor) checkRelayDNS(ctx context.Context) Check {
	c := Check{ID: CheckDNSRelay}
	if ip, err := netip.ParseAddr(d.host); err == nil {
		d.relayIPs = []string{ip.Unmap().String()}
		c.Status, c.Detail = Skip, d.host+" is an IP address: nothing to resolve"
		return c
	}
	ctx, cancel := d.timeout(ctx)
	defer cancel()
	start := time.Now()
	ips, err := d.lookup(ctx, d.host)
	c.Latency = time.Since(start)
	if err != nil {
		c.Status = Fail
		c.Detail = fmt.Sprintf("%s does not resolve: %s", d.host, describeDNSError(err))
		if isNotFound(err) {
			c.Fix = fmt.Sprintf("add an A record for %s with the relay server's IPv4 address (and AAAA for IPv6), or correct the host in --relay", d.host)
		} else {
			c.Fix = "check this machine's network and DNS resolver, then try again"
		}
		return c
	}
	d.relayIPs = ips
	c.Status, c.Detail = Pass, fmt.Sprintf("%s resolves to %s", d.host, strings.Join(ips, ", "))
	return c
}

// checkTunnelDNS resolves the tunnel's name, which only the wildcard record
// makes resolve, and compares its addresses with the relay's. Without a
// tunnel it checks -s name (or a made-up one) under the relay's host, which
// is the relay's domain in the usual setup.
func (d *doctor) checkTunnelDNS(ctx context.Context, tt *tempTunnel) Check {
	c := Check{ID: CheckDNSTunnel}
	var host, assumed string
	switch {
	case tt != nil:
		host = tt.url.Hostname()
	case net.ParseIP(d.host) != nil:
		c.Status, c.Detail = Skip, "no tunnel name to look up: the relay URL is an IP address and no tunnel was granted"
		return c
	default:
		label := d.cfg.Name
		if label == "" {
			label = "doctor-" + randomHex(4)
		}
		host = label + "." + d.host
		assumed = " (the agent got no tunnel; assuming tunnels are named <name>." + d.host + ")"
	}
	domain := domainOf(host)
	if strings.HasSuffix(host, ".localhost") {
		c.Status = Pass
		c.Detail = host + " is under .localhost, which browsers and curl send to this machine themselves" + assumed
		return c
	}
	ctx, cancel := d.timeout(ctx)
	defer cancel()
	start := time.Now()
	ips, err := d.lookup(ctx, host)
	c.Latency = time.Since(start)
	if err != nil {
		c.Status = Fail
		c.Detail = fmt.Sprintf("%s does not resolve: %s%s", host, describeDNSError(err), assumed)
		switch {
		case !isNotFound(err):
			c.Fix = "check this machine's network and DNS resolver, then try again"
		case len(d.relayIPs) > 0:
			c.Fix = fmt.Sprintf("the wildcard DNS record is missing: add %s (the relay's address)", records("*."+domain, d.relayIPs))
		default:
			c.Fix = fmt.Sprintf("the wildcard DNS record is missing: add *.%s with the same A/AAAA addresses as %s", domain, d.host)
		}
		return c
	}
	if len(d.relayIPs) == 0 {
		c.Status = Pass
		c.Detail = fmt.Sprintf("%s resolves to %s; the relay's host did not resolve to compare%s", host, strings.Join(ips, ", "), assumed)
		return c
	}
	missing := without(d.relayIPs, ips)
	extra := without(ips, d.relayIPs)
	switch {
	case len(missing) == 0 && len(extra) == 0:
		c.Status = Pass
		c.Detail = fmt.Sprintf("%s resolves to the relay's address %s%s", host, strings.Join(ips, ", "), assumed)
	case len(extra) == len(ips):
		c.Status = Fail
		c.Detail = fmt.Sprintf("%s resolves to %s, but the relay %s is at %s%s", host, strings.Join(ips, ", "), d.host, strings.Join(d.relayIPs, ", "), assumed)
		c.Fix = fmt.Sprintf("point the wildcard record at the relay: %s", records("*."+domain, d.relayIPs))
	default:
		c.Status = Warn
		c.Detail = fmt.Sprintf("%s resolves to %s, the relay %s to %s%s", host, strings.Join(ips, ", "), d.host, strings.Join(d.relayIPs, ", "), assumed)
		var fix []string
		if len(missing) > 0 {
			fix = append(fix, "add "+records("*."+domain, missing))
		}
		if len(extra) > 0 {
			fix = append(fix, "remove "+records("*."+domain, extra))
		}
		c.Fix = "make the wildcard record match the relay's: " + strings.Join(fix, "; ")
	}
	return c
}

// lookup resolves host to sorted, unique addresses.
func (d *doctor) lookup(ctx context.Context, host string) ([]string, error) {
	ips, err := d.cfg.LookupHost(ctx, host)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil {
			s = ip.Unmap().WithZone("").String()
		}
		out = append(out, s)
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	return out, nil
}

// records writes the DNS records that give name the addresses, e.g.
// "*.example.com A 203.0.113.7".
func records(name string, ips []string) string {
	var rs []string
	for _, s := range ips {
		typ := "A"
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is6() {
			typ = "AAAA"
		}
		rs = append(rs, name+" "+typ+" "+s)
	}
	return strings.Join(rs, " and ")
}

// without returns the elements of a not in b.
func without(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}

func isNotFound(err error) bool {
	var dnsErr *net.DNSError
	return errors.As(err, &dnsErr) && dnsErr.IsNotFound
}

func describeDNSError(err error) string {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer in time"
	case !errors.As(err, &dnsErr):
		return err.Error()
	case dnsErr.IsNotFound:
		return "no such host"
	case dnsErr.IsTimeout:
		return "the lookup timed out"
	default:
		return dnsErr.Err
	}
}
