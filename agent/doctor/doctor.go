// Package doctor checks a relay from where an agent runs: that its host
// name and the wildcard for tunnel names resolve to it, that the
// certificates it serves verify, cover their names and are not about to
// expire, that an agent can connect and authenticate, and that a public
// HTTP request and a WebSocket reach a temporary tunnel and come back. Each
// check that fails says what was wrong and what to do about it, in one
// line each. `tunnel doctor` prints the Report.
//
// The temporary tunnel is an agent.Listen served in process, so no local
// port is needed; it is released when Run returns.
package doctor

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
	"github.com/tunnel-dev/tunnel/proto"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// DefaultTimeout bounds each check when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// expiryWarning is how close to its expiry a certificate gets a warning.
const expiryWarning = 14 * 24 * time.Hour

// Config says which relay to check and how. The zero value of each
// optional field means its default.
type Config struct {
	// Relay is the relay's URL, e.g. "https://example.com". Required.
	Relay string
	// Name is the tunnel name to ask for; empty lets the relay pick a
	// random one.
	Name string
	// Token authenticates the agent to relays that require one.
	Token string
	// RootCAs verify an https relay's certificates, for the agent, the
	// visitors' requests and the TLS checks alike; nil means the system's.
	RootCAs *x509.CertPool
	// Timeout bounds each check. Default DefaultTimeout.
	Timeout time.Duration
	// LookupHost resolves host names, for the DNS checks and for every
	// connection Run makes. Default net.DefaultResolver.LookupHost.
	LookupHost func(ctx context.Context, host string) ([]string, error)
	// DialContext dials the addresses LookupHost returned (always an IP
	// and a port). Default net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnCheck, if not nil, is called with each check as soon as it is
	// done, from the goroutine that called Run.
	OnCheck func(Check)
	// Logger receives the temporary agent's logs. Default: discarded.
	Logger *slog.Logger
	// Now returns the time to check certificates' validity against.
	// Default time.Now.
	Now func() time.Time
}

func (c *Config) check() (*url.URL, error) {
	if c.Relay == "" {
		return nil, errors.New("no relay: pass --relay URL or set TUNNEL_RELAY, e.g. https://example.com")
	}
	u, err := agent.ParseRelayURL(c.Relay)
	if err != nil {
		return nil, err
	}
	if err := tunnel.CheckToken(c.Token); err != nil {
		return nil, fmt.Errorf("the token %v", err)
	}
	if c.Name != "" {
		if err := proto.ValidateName(c.Name); err != nil {
			return nil, err
		}
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.LookupHost == nil {
		c.LookupHost = net.DefaultResolver.LookupHost
	}
	if c.DialContext == nil {
		c.DialContext = (&net.Dialer{}).DialContext
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return u, nil
}

// Run performs the checks in order and returns the report. Its error is
// for a Config it cannot use, or ctx ending (then with the checks done so
// far); what the checks find is in the Report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	u, err := cfg.check()
	if err != nil {
		return nil, err
	}
	addr, err := tunnel.RelayAddr(u)
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	d := &doctor{cfg: cfg, u: u, host: u.Hostname(), port: port, rep: &Report{Relay: cfg.Relay}}
	d.run(ctx)
	if err := ctx.Err(); err != nil {
		return d.rep, err
	}
	return d.rep, nil
}

// doctor is one Run.
type doctor struct {
	cfg  Config
	u    *url.URL
	host string // the relay's host name or IP address
	port string // the relay's port
	rep  *Report
	// relayIPs are the relay host's addresses, nil if it did not resolve.
	relayIPs []string
}

func (d *doctor) run(ctx context.Context) {
	if !d.add(ctx, d.checkRelayDNS(ctx)) || !d.add(ctx, d.checkRelayTLS(ctx)) {
		return
	}
	tt, c := d.connect(ctx)
	if tt != nil {
		defer tt.close()
		d.rep.Tunnel = tt.url.String()
	}
	if !d.add(ctx, c) || !d.add(ctx, d.checkTunnelDNS(ctx, tt)) || !d.add(ctx, d.checkTunnelTLS(ctx, tt)) {
		return
	}
	if tt == nil {
		why := "needs the temporary tunnel, which the agent check did not get"
		d.add(ctx, Check{ID: CheckHTTP, Status: Skip, Detail: why})
		d.add(ctx, Check{ID: CheckWebSocket, Status: Skip, Detail: why})
		return
	}
	if d.add(ctx, d.checkHTTP(ctx, tt)) {
		d.add(ctx, d.checkWebSocket(ctx, tt))
	}
}

// add records c and reports whether to go on: false once ctx has ended,
// since later checks would only fail for that reason.
func (d *doctor) add(ctx context.Context, c Check) bool {
	if ctx.Err() != nil {
		return false
	}
	d.rep.Checks = append(d.rep.Checks, c)
	if d.cfg.OnCheck != nil {
		d.cfg.OnCheck(c)
	}
	return true
}

// timeout returns ctx bounded by the per-check timeout.
func (d *doctor) timeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.cfg.Timeout)
}

// dial connects to addr, resolving its host with LookupHost and trying
// each address in turn.
func (d *doctor) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if net.ParseIP(host) != nil {
		return d.cfg.DialContext(ctx, network, addr)
	}
	ips, err := d.cfg.LookupHost(ctx, host)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	var first error
	for _, ip := range ips {
		c, err := d.cfg.DialContext(ctx, network, net.JoinHostPort(ip, port))
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// dialRelay connects to the relay's public address, whatever addr names:
// visitors' connections for tunnel names go there too, so the round trip
// works (and tells the relay's health apart) even when the tunnel's DNS
// record is missing.
func (d *doctor) dialRelay(ctx context.Context, network, addr string) (net.Conn, error) {
	port := d.port
	if _, p, err := net.SplitHostPort(addr); err == nil {
		port = p
	}
	return d.dial(ctx, network, net.JoinHostPort(d.host, port))
}

// hostPort is where the relay listens, for messages.
func (d *doctor) hostPort() string { return net.JoinHostPort(d.host, d.port) }
