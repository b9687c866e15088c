package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Bounds on each measurement of one path, so that a stuck path ends the
// bench with an error instead of hanging it.
const (
	benchBulkTimeout = 2 * time.Minute // one bulk download
	benchWSTimeout   = time.Minute     // each WebSocket test
	benchIdleTimeout = 3 * time.Minute // opening every idle WebSocket
	benchSmallGrace  = 30 * time.Second
	benchWSMessage   = 32       // bytes per echo of the latency and many-WebSockets tests
	benchIdleMessage = 32 << 10 // the one echo of each idle WebSocket
	benchSources     = 16       // 127.0.0.2 to 127.0.0.17: 16 times the ephemeral ports of one source address
)

// runAll runs every scenario on every path and adds the rows to res.
func (b *bench) runAll(ctx context.Context, res *benchResult) error {
	o := b.opts
	bulkBytes := int64(o.BulkMiB) << 20

	// 1. Bulk.
	var mbps [3]float64
	var bulkCPU, bulkKernel [3]hopFigures
	for i, p := range b.paths {
		b.progress("bulk: %s, %d × %d MiB", p.name, o.BulkRuns, o.BulkMiB)
		var v float64
		cpu, kernel, err := b.measure(p, func() (err error) {
			v, err = benchBulk(ctx, p, bulkBytes, o.BulkRuns)
			return err
		})
		if err != nil {
			return fmt.Errorf("bulk, %s: %w", p.name, err)
		}
		mbps[i] = v
		gb := float64(bulkBytes*int64(o.BulkRuns)) / 1e9
		bulkCPU[i], bulkKernel[i] = cpu.per(gb), kernel.per(gb)
	}
	res.add("bulk", "MB/s", higher, mbps[0], mbps[1], mbps[2])

	// 2. Small requests.
	var small [3]benchSmallResult
	var smallCPU, smallKernel [3]hopFigures
	for i, p := range b.paths {
		b.progress("small: %s, %d clients for %v", p.name, o.SmallClients, o.SmallDuration)
		cpu, kernel, err := b.measure(p, func() (err error) {
			small[i], err = b.benchSmall(ctx, p)
			return err
		})
		if err != nil {
			return fmt.Errorf("small requests, %s: %w", p.name, err)
		}
		k := float64(small[i].requests) / 1000
		smallCPU[i], smallKernel[i] = cpu.per(k), kernel.per(k)
	}
	res.add("small", "req/s", higher, small[0].reqPerSec, small[1].reqPerSec, small[2].reqPerSec)
	res.add("small", "p50 ms", lower, ms(small[0].p50), ms(small[1].p50), ms(small[2].p50))
	res.add("small", "p99 ms", lower, ms(small[0].p99), ms(small[1].p99), ms(small[2].p99))
	res.add("small", "new origin conns", lower, float64(small[0].newConns), float64(small[1].newConns), float64(small[2].newConns))

	// 3. WebSocket echo round trip.
	var echo [3][2]time.Duration
	for i, p := range b.paths {
		b.progress("WebSocket echo: %s, %d messages", p.name, o.Echoes)
		var err error
		echo[i][0], echo[i][1], err = benchWSEcho(ctx, p, o.Echoes)
		if err != nil {
			return fmt.Errorf("WebSocket echo, %s: %w", p.name, err)
		}
		if err := b.alive(); err != nil {
			return err
		}
	}
	res.add("ws-echo", "p50 ms", lower, ms(echo[0][0]), ms(echo[1][0]), ms(echo[2][0]))
	res.add("ws-echo", "p99 ms", lower, ms(echo[0][1]), ms(echo[1][1]), ms(echo[2][1]))

	// 4. Many WebSockets.
	var many [3]float64
	var manyCPU, manyKernel [3]hopFigures
	for i, p := range b.paths {
		b.progress("many WebSockets: %s, %d × %d messages", p.name, o.WSConns, o.WSMessages)
		cpu, kernel, err := b.measure(p, func() (err error) {
			many[i], err = benchWSMany(ctx, p, o.WSConns, o.WSMessages)
			return err
		})
		if err != nil {
			return fmt.Errorf("many WebSockets, %s: %w", p.name, err)
		}
		// Per 1,000 echoes, each a message each way; the connections'
		// setup is in it too, a small part at the default sizes.
		k := float64(o.WSConns*o.WSMessages) / 1000
		manyCPU[i], manyKernel[i] = cpu.per(k), kernel.per(k)
	}
	res.add("ws-many", "msgs/s", higher, many[0], many[1], many[2])

	// 5. New WebSocket and one echo.
	var fresh [3][2]time.Duration
	for i, p := range b.paths {
		b.progress("new WebSocket + echo: %s, %d tries", p.name, o.NewWS)
		var err error
		fresh[i][0], fresh[i][1], err = benchWSNew(ctx, p, o.NewWS)
		if err != nil {
			return fmt.Errorf("new WebSocket, %s: %w", p.name, err)
		}
		if err := b.alive(); err != nil {
			return err
		}
	}
	res.add("ws-new", "p50 ms", lower, ms(fresh[0][0]), ms(fresh[1][0]), ms(fresh[2][0]))
	res.add("ws-new", "p99 ms", lower, ms(fresh[0][1]), ms(fresh[1][1]), ms(fresh[2][1]))

	// 6. Idle WebSockets, in fresh processes.
	floorIdle := min(o.Idle, benchMaxIdleFloor)
	b.progress("idle: floor, %d WebSockets through two fresh forwarders", floorIdle)
	fMem, fSlope, fCPU, err := b.idleFloor(ctx, floorIdle)
	if err != nil {
		return fmt.Errorf("idle WebSockets, floor: %w", err)
	}
	agents := 1
	if o.Relay == "" {
		b.progress("idle: tunnel, %d WebSockets through a fresh relay and a fresh agent", o.Idle)
	} else {
		b.progress("idle: tunnel, %d WebSockets through %s and a fresh agent", o.Idle, o.Relay)
	}
	tMem, tSlope, tCPU, err := b.idleTunnel(ctx, o.Idle, agents)
	if err != nil {
		return fmt.Errorf("idle WebSockets, tunnel: %w", err)
	}
	res.Params.IdleFloor, res.Params.IdleAgents = floorIdle, agents
	res.addHops("idle", "KiB/conn", fMem, tMem)
	res.addHops("idle", "slope KiB/conn", fSlope, tSlope)
	// The slope projected to a million connections, in GiB.
	perMillion := float64(1<<20) / 1e6
	res.addHops("idle", "GiB/1M conns", fSlope.per(perMillion), tSlope.per(perMillion))

	// 7. CPU.
	// The kernel's part shows what moving the bytes costs by itself: a
	// forwarder spends nearly all of its CPU there (splice), a relay or
	// an agent the same system calls and more, plus its own work above.
	res.addHops("bulk", "CPU s/GB", bulkCPU[1], bulkCPU[2])
	res.addHops("bulk", "kernel CPU s/GB", bulkKernel[1], bulkKernel[2])
	res.addHops("small", "CPU s/1k req", smallCPU[1], smallCPU[2])
	res.addHops("small", "kernel CPU s/1k req", smallKernel[1], smallKernel[2])
	res.addHops("ws-many", "CPU s/1k echoes", manyCPU[1], manyCPU[2])
	res.addHops("ws-many", "kernel CPU s/1k echoes", manyKernel[1], manyKernel[2])
	res.addHops("idle", "CPU ms/conn", fCPU.per(float64(floorIdle)/1000), tCPU.per(float64(o.Idle)/1000))
	return nil
}

// hopFigures is a figure (CPU or memory) for each hop of a path; ok is
// false for a hop whose processes the bench cannot see (a --relay it did
// not start) or that does not exist (direct).
type hopFigures struct {
	hops [2]float64
	ok   [2]bool
}

// per divides the hops' figures by n.
func (c hopFigures) per(n float64) hopFigures {
	for i := range c.hops {
		c.hops[i] /= n
	}
	return c
}

// measure runs f and returns the CPU seconds each hop of p used meanwhile,
// and the part of them spent in the kernel.
func (b *bench) measure(p *benchPath, f func() error) (cpu, kernel hopFigures, err error) {
	read := func() (total, sys hopFigures, err error) {
		for i, g := range p.hops {
			if len(g) == 0 {
				continue
			}
			if total.hops[i], sys.hops[i], err = g.cpuSeconds(); err != nil {
				return total, sys, err
			}
			total.ok[i], sys.ok[i] = true, true
		}
		return total, sys, nil
	}
	beforeCPU, beforeKernel, err := read()
	if err != nil {
		return cpu, kernel, err
	}
	if err := f(); err != nil {
		return cpu, kernel, err
	}
	if err := b.alive(); err != nil {
		return cpu, kernel, err
	}
	if cpu, kernel, err = read(); err != nil {
		return cpu, kernel, err
	}
	for i := range cpu.hops {
		cpu.hops[i] -= beforeCPU.hops[i]
		kernel.hops[i] -= beforeKernel.hops[i]
	}
	return cpu, kernel, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// sourceSpread hands out source addresses 127.0.0.2, 127.0.0.3, … in turn,
// so that many connections to one address do not run out of ephemeral
// ports (28,000 per source address and destination).
type sourceSpread struct{ n atomic.Uint32 }

func (s *sourceSpread) next() *net.TCPAddr {
	i := s.n.Add(1) % benchSources
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))}
}

// benchDial dials addr as a visitor: *.localhost goes to 127.0.0.1, which
// Go would not resolve, and with spread each loopback connection comes from
// the next source address.
func benchDial(spread *sourceSpread) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if host == "localhost" || strings.HasSuffix(host, ".localhost") {
			host = "127.0.0.1"
			addr = net.JoinHostPort(host, port)
		}
		var d net.Dialer
		if ip := net.ParseIP(host); spread != nil && ip != nil && ip.IsLoopback() {
			d.LocalAddr = spread.next()
		}
		return d.DialContext(ctx, network, addr)
	}
}

// benchClient is a visitor's HTTP client: keep-alive with up to conns idle
// connections, no compression, no proxy from the environment, HTTP/1.1
// also over TLS, trusting tlsConf's roots (nil: the system's).
func benchClient(tlsConf *tls.Config, spread *sourceSpread, conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		TLSClientConfig:     tlsConf,
		DialContext:         benchDial(spread),
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}}
}

// get fetches url and reads the body into buf's space, returning its size.
func benchGet(ctx context.Context, client *http.Client, url string, buf []byte) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return 0, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	// Read straight into one buffer: io.Discard would copy through its
	// own 8 KiB one, and the visitor's cost is not what is measured.
	var n int64
	for {
		m, err := resp.Body.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
		}
	}
}

// benchBulk downloads size bytes runs times and returns the median MB/s
// (10^6 bytes a second).
func benchBulk(ctx context.Context, p *benchPath, size int64, runs int) (float64, error) {
	client := benchClient(p.tls, nil, 1)
	defer client.CloseIdleConnections()
	buf := make([]byte, 1<<20)
	url := p.bases[0] + "/bulk?bytes=" + strconv.FormatInt(size, 10)
	var rates []float64
	for range runs {
		gctx, cancel := context.WithTimeout(ctx, benchBulkTimeout)
		start := time.Now()
		n, err := benchGet(gctx, client, url, buf)
		elapsed := time.Since(start)
		cancel()
		if err != nil {
			return 0, err
		}
		if n != size {
			return 0, fmt.Errorf("GET %s: %d bytes, want %d", url, n, size)
		}
		rates = append(rates, float64(size)/elapsed.Seconds()/1e6)
	}
	slices.Sort(rates)
	return rates[len(rates)/2], nil
}

type benchSmallResult struct {
	requests  int
	reqPerSec float64
	p50, p99  time.Duration
	newConns  int64 // connections the origin accepted during the timed run
}

// benchSmall runs SmallClients clients, each on a keep-alive connection of
// its own, that GET 1 KiB one after another for SmallDuration. Each client
// makes one request first, outside the measurement, so that its
// connection exists: the origin should then see no new connection.
func (b *bench) benchSmall(ctx context.Context, p *benchPath) (benchSmallResult, error) {
	var res benchSmallResult
	n := b.opts.SmallClients
	url := p.bases[0] + "/small"
	ctx, cancel := context.WithTimeout(ctx, b.opts.SmallDuration+benchSmallGrace)
	defer cancel()
	clients := make([]*smallClient, n)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.close()
			}
		}
	}()
	if err := parallel(n, n, func(i int) error {
		c, err := dialSmallClient(ctx, p, url)
		if err != nil {
			return err
		}
		clients[i] = c
		_, err = c.get(make([]byte, 4096))
		return err
	}); err != nil {
		return res, fmt.Errorf("first requests: %w", err)
	}

	before, err := b.originConns(ctx)
	if err != nil {
		return res, err
	}
	lat := make([][]time.Duration, n)
	start := time.Now()
	deadline := start.Add(b.opts.SmallDuration)
	err = parallel(n, n, func(i int) error {
		buf := make([]byte, 4096)
		for time.Now().Before(deadline) {
			t0 := time.Now()
			if _, err := clients[i].get(buf); err != nil {
				return err
			}
			lat[i] = append(lat[i], time.Since(t0))
		}
		return nil
	})
	elapsed := time.Since(start)
	if err != nil {
		return res, err
	}
	after, err := b.originConns(ctx)
	if err != nil {
		return res, err
	}
	all := slices.Concat(lat...)
	res.requests = len(all)
	res.reqPerSec = float64(len(all)) / elapsed.Seconds()
	res.p50, res.p99 = percentiles(all)
	res.newConns = after - before
	return res, nil
}

// smallClient is one visitor of the small-request test: one keep-alive
// connection on which it sends the same GET again and again, reading each
// response to its end. It never opens a second connection, as an
// http.Client may (its transport does not reuse a connection whose
// request write it has not seen finish within 50 ms of the response, which
// a starved machine can make happen): so every new connection the origin
// counts during the run was opened by the path under test, and a lost
// connection is an error, not a silent reconnect.
type smallClient struct {
	conn net.Conn
	br   *bufio.Reader
	req  []byte // the request, the same each time
	url  string // for errors
	stop func() bool
}

// dialSmallClient connects to rawURL's host as benchDial does, speaking
// TLS (HTTP/1.1, trusting p.tls's roots) for an https URL. The connection
// lives until close or ctx's end.
func dialSmallClient(ctx context.Context, p *benchPath, rawURL string) (*smallClient, error) {
	u, err := neturl.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	conn, err := benchDial(nil)(ctx, "tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", rawURL, err)
	}
	if u.Scheme == "https" {
		conf := &tls.Config{}
		if p.tls != nil {
			conf = p.tls.Clone()
		}
		conf.ServerName, conf.NextProtos = u.Hostname(), []string{"http/1.1"}
		tc := tls.Client(conn, conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("GET %s: %w", rawURL, err)
		}
		conn = tc
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	c := &smallClient{
		conn: conn,
		br:   bufio.NewReader(conn),
		req:  []byte("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: tunnel-bench\r\n\r\n"),
		url:  rawURL,
	}
	c.stop = context.AfterFunc(ctx, func() { conn.Close() })
	return c, nil
}

// get sends the request and reads the response's body into buf's space,
// returning its size.
func (c *smallClient) get(buf []byte) (int64, error) {
	if _, err := c.conn.Write(c.req); err != nil {
		return 0, fmt.Errorf("GET %s: %w", c.url, err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", c.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return 0, fmt.Errorf("GET %s: %s: %s", c.url, resp.Status, bytes.TrimSpace(body))
	}
	var n int64
	for {
		m, err := resp.Body.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, fmt.Errorf("GET %s: after %d bytes: %w", c.url, n, err)
		}
	}
	if resp.Close {
		return n, fmt.Errorf("GET %s: the server closed the keep-alive connection", c.url)
	}
	return n, nil
}

func (c *smallClient) close() {
	c.stop()
	c.conn.Close()
}

// originConns asks the origin how many connections it has accepted.
func (b *bench) originConns(ctx context.Context) (int64, error) {
	client := benchClient(nil, nil, 1) // the stats port is plain HTTP
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.originStats+"/", nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("origin stats: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 100))
	if err != nil {
		return 0, fmt.Errorf("origin stats: %w", err)
	}
	return strconv.ParseInt(strings.TrimSpace(string(body)), 10, 64)
}

// percentiles returns the 50th and 99th percentiles of d, which it sorts.
func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	at := func(q float64) time.Duration {
		i := int(q*float64(len(d))+0.999999) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return at(0.50), at(0.99)
}

// parallel runs f(0) … f(n-1), at most limit at a time, and returns the
// first error.
func parallel(n, limit int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, limit)
	)
	for i := range n {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}

// wsURL is the WebSocket echo's URL on base.
func wsURL(base string) string { return base + "/ws" }

// benchWSDial opens a WebSocket to the echo.
func benchWSDial(ctx context.Context, client *http.Client, base string) (*websocket.Conn, error) {
	c, _, err := websocket.Dial(ctx, wsURL(base), &websocket.DialOptions{
		HTTPClient:      client,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(1 << 20)
	return c, nil
}

// benchEcho sends msg and waits for it to come back.
func benchEcho(ctx context.Context, c *websocket.Conn, msg []byte) error {
	if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
		return err
	}
	_, got, err := c.Read(ctx)
	if err != nil {
		return err
	}
	if len(got) != len(msg) {
		return fmt.Errorf("echo of %d bytes came back with %d", len(msg), len(got))
	}
	return nil
}

// benchWSEcho times n sequential echoes of 32 bytes on one WebSocket,
// after a few that warm it up.
func benchWSEcho(ctx context.Context, p *benchPath, n int) (p50, p99 time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, benchWSTimeout)
	defer cancel()
	client := benchClient(p.tls, nil, 1)
	c, err := benchWSDial(ctx, client, p.bases[0])
	if err != nil {
		return 0, 0, err
	}
	defer c.CloseNow()
	msg := make([]byte, benchWSMessage)
	for range min(n, 50) {
		if err := benchEcho(ctx, c, msg); err != nil {
			return 0, 0, err
		}
	}
	rtt := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if err := benchEcho(ctx, c, msg); err != nil {
			return 0, 0, err
		}
		rtt = append(rtt, time.Since(t0))
	}
	p50, p99 = percentiles(rtt)
	return p50, p99, nil
}

// benchWSMany opens conns WebSockets, then has each echo msgs messages one
// after another, all WebSockets at once, and returns the echoes a second.
func benchWSMany(ctx context.Context, p *benchPath, conns, msgs int) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, benchWSTimeout)
	defer cancel()
	client := benchClient(p.tls, nil, conns)
	cs := make([]*websocket.Conn, conns)
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.CloseNow()
			}
		}
	}()
	if err := parallel(conns, 16, func(i int) (err error) {
		cs[i], err = benchWSDial(ctx, client, p.bases[0])
		return err
	}); err != nil {
		return 0, err
	}
	start := time.Now()
	err := parallel(conns, conns, func(i int) error {
		msg := make([]byte, benchWSMessage)
		for range msgs {
			if err := benchEcho(ctx, cs[i], msg); err != nil {
				return err
			}
		}
		return nil
	})
	elapsed := time.Since(start)
	if err != nil {
		return 0, err
	}
	return float64(conns*msgs) / elapsed.Seconds(), nil
}

// benchWSNew times n tries of opening a WebSocket (a new TCP connection)
// and echoing 32 bytes on it.
func benchWSNew(ctx context.Context, p *benchPath, n int) (p50, p99 time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, benchWSTimeout)
	defer cancel()
	client := benchClient(p.tls, nil, 1)
	msg := make([]byte, benchWSMessage)
	took := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		c, err := benchWSDial(ctx, client, p.bases[0])
		if err != nil {
			return 0, 0, err
		}
		err = benchEcho(ctx, c, msg)
		d := time.Since(t0)
		c.CloseNow()
		if err != nil {
			return 0, 0, err
		}
		took = append(took, d)
	}
	p50, p99 = percentiles(took)
	return p50, p99, nil
}

// idleFloor opens n idle WebSockets through two fresh forwarders and
// returns each forwarder's memory per connection (KiB) and the CPU seconds
// they used to set the connections up.
func (b *bench) idleFloor(ctx context.Context, n int) (mem, slope, cpu hopFigures, err error) {
	url, hops, err := b.startFloor(ctx, "idle floor")
	if err != nil {
		return mem, slope, cpu, err
	}
	defer b.children.stop(slices.Concat(hops[0], hops[1]))
	p := &benchPath{name: "floor", bases: []string{url}, hops: hops, tls: b.visitorTLS}
	return b.idle(ctx, p, n)
}

// idleTunnel opens n idle WebSockets through a fresh relay (unless --relay)
// and the agents it takes, and returns the relay's and the agents' memory
// per connection (KiB) and the CPU seconds they used to set them up.
func (b *bench) idleTunnel(ctx context.Context, n, agents int) (mem, slope, cpu hopFigures, err error) {
	var started []*benchChild
	defer func() { b.children.stop(started) }()
	relayURL, relay, err := b.startRelay(ctx, "idle relay", n+100)
	if err != nil {
		return mem, slope, cpu, err
	}
	started = append(started, relay...)
	p := &benchPath{name: "tunnel", hops: [2]procGroup{relay, nil}, tls: b.visitorTLS}
	// The agents connect one after another: the relay's name registry is
	// not what is measured, and it keeps the output tidy.
	for i := range agents {
		c, url, err := b.startAgent(ctx, fmt.Sprintf("idle agent %d", i+1), relayURL, b.tunnelName(fmt.Sprintf("idle%d", i+1)))
		if err != nil {
			return mem, slope, cpu, err
		}
		started = append(started, c)
		p.hops[1] = append(p.hops[1], c)
		p.bases = append(p.bases, url)
	}
	return b.idle(ctx, p, n)
}

// idle opens n WebSockets on p, spread over its bases, each echoing one
// 32 KiB message, and then holds them all open while it reads the hops'
// memory: after the first half and after all of them. It returns the
// memory growth per connection in KiB over all n, the slope over the
// second half (the cost of one more connection, without what the first
// ones set up once), and the CPU seconds spent from the first open to the
// last echo. Then every WebSocket echoes once more: one that died while
// held fails the run.
func (b *bench) idle(ctx context.Context, p *benchPath, n int) (mem, slope, cpu hopFigures, err error) {
	rss := func() (h hopFigures, err error) {
		for i, g := range p.hops {
			if len(g) == 0 {
				continue
			}
			if h.hops[i], err = g.rssKiB(); err != nil {
				return h, err
			}
			h.ok[i] = true
		}
		return h, nil
	}
	before, err := rss()
	if err != nil {
		return mem, slope, cpu, err
	}
	spread := &sourceSpread{}
	client := benchClient(p.tls, spread, n)
	cs := make([]*websocket.Conn, n)
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.CloseNow()
			}
		}
	}()
	octx, cancel := context.WithTimeout(ctx, benchIdleTimeout)
	defer cancel()
	open := func(from, to int) error {
		return parallel(to-from, 32, func(j int) error {
			i := from + j
			c, err := benchWSDial(octx, client, p.bases[i%len(p.bases)])
			if err != nil {
				return fmt.Errorf("WebSocket %d: %w", i+1, err)
			}
			cs[i] = c
			if err := benchEcho(octx, c, make([]byte, benchIdleMessage)); err != nil {
				return fmt.Errorf("WebSocket %d: %w", i+1, err)
			}
			return nil
		})
	}
	half := n / 2
	var mid hopFigures
	cpu, _, err = b.measure(p, func() error {
		if err := open(0, half); err != nil {
			return err
		}
		if mid, err = rss(); err != nil {
			return err
		}
		return open(half, n)
	})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("not all %d WebSockets open after %v: %w", n, benchIdleTimeout, err)
		}
		return mem, slope, cpu, err
	}
	after, err := rss()
	if err != nil {
		return mem, slope, cpu, err
	}
	for i := range p.hops {
		if !after.ok[i] {
			continue
		}
		mem.hops[i], mem.ok[i] = (after.hops[i]-before.hops[i])/float64(n), true
		if n-half > 0 {
			slope.hops[i], slope.ok[i] = (after.hops[i]-mid.hops[i])/float64(n-half), true
		}
		if mem.hops[i] < 0 || slope.hops[i] < 0 {
			who := [2]string{"relay", "agent"}[i]
			if p.name == "floor" {
				who = [2]string{"first forwarder", "second forwarder"}[i]
			}
			b.progress("idle: the %s's memory fell while the WebSockets were opened (its runtime gave memory back): its figures below 0 measure that, not what a connection costs; try more of them (--idle)", who)
		}
	}
	// Every connection held is still alive and echoes.
	err = parallel(n, 32, func(i int) error {
		if err := benchEcho(octx, cs[i], make([]byte, 32)); err != nil {
			return fmt.Errorf("WebSocket %d no longer echoes after the hold: %w", i+1, err)
		}
		return nil
	})
	return mem, slope, cpu, err
}
