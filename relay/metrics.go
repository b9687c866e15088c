package relay

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// metricsNamespace prefixes every metric of the relay.
const metricsNamespace = "tunnel_relay"

// Reasons a request or an agent connection is refused: the values of the
// rejects counter's "reason" label and of the "reason" field of the log
// line. The set is fixed so that the label's cardinality stays bounded.
const (
	rejectNoTunnel          = "no_tunnel"           // no agent holds the name (404)
	rejectTunnelOffline     = "tunnel_offline"      // the name is held for a disconnected agent, or its agent left mid-request (502)
	rejectLocalDown         = "local_down"          // the agent is online but its local server refused (502)
	rejectAuthFailed        = "auth_failed"         // an agent presented no or a wrong token (401)
	rejectAuthRateLimited   = "auth_rate_limited"   // an address made too many failed token attempts (429)
	rejectAdminAuthFailed   = "admin_auth_failed"   // a wrong admin API token (401, 429 once rate limited)
	rejectAccessDeniedIP    = "access_denied_ip"    // the tunnel's allow/deny rules refused the visitor's address (403)
	rejectAccessDeniedBasic = "access_denied_basic" // the tunnel's Basic auth was missing or wrong (401)
	rejectAccessRateLimited = "access_rate_limited" // an address gave too many wrong Basic auth credentials (429)
	rejectTooManyStreams    = "too_many_streams"    // the tunnel's stream slots stayed full (503)
	rejectAgentTimeout      = "agent_timeout"       // the agent did not answer a new stream in time (504)
	rejectResponseTimeout   = "response_timeout"    // the local server sent no response headers in time (504)
	rejectNotAProxy         = "not_a_proxy"         // CONNECT or an absolute-form target (405, 400)
	rejectMisdirected       = "misdirected"         // Host differs from the TLS server name (421)
	rejectDraining          = "draining"            // the relay is shutting down (503)
	rejectInterstitial      = "interstitial"        // a browser's first visit got the warning page (403)
	rejectClaimRefused      = "claim_refused"       // an agent's hello was refused: name taken, not allowed, bad request
	rejectBadGateway        = "bad_gateway"         // any other failure on the way to the local server (502)
)

var rejectReasons = []string{
	rejectNoTunnel, rejectTunnelOffline, rejectLocalDown, rejectAuthFailed, rejectAuthRateLimited,
	rejectAdminAuthFailed, rejectAccessDeniedIP, rejectAccessDeniedBasic, rejectAccessRateLimited, rejectTooManyStreams,
	rejectAgentTimeout, rejectResponseTimeout, rejectNotAProxy, rejectMisdirected, rejectDraining,
	rejectInterstitial, rejectClaimRefused, rejectBadGateway,
}

// metrics are one relay's Prometheus metrics, on a registry of its own so
// that several relays in one process (tests) do not collide. No label ever
// carries a tunnel name or an address: their number is unbounded.
type metrics struct {
	reg *prometheus.Registry

	agents     prometheus.Gauge
	streams    prometheus.Gauge
	websockets prometheus.Gauge
	requests   *prometheus.CounterVec // by status class
	duration   prometheus.Histogram
	bytesIn    prometheus.Counter
	bytesOut   prometheus.Counter
	rejects    *prometheus.CounterVec // by reason
	certs      *prometheus.CounterVec // by result
	reconnects prometheus.Counter
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		agents: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "agents_connected",
			Help: "Agent sessions established (handshake done) and not yet ended.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "streams_open",
			Help: "Data streams open to agents, idle keep-alive ones included.",
		}),
		websockets: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "websockets_open",
			Help: "Visitor WebSockets switched through the relay and not yet closed.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "requests_total",
			Help: "Visitor requests to tunnel names, refused ones included, by status class (1xx for WebSockets, counted when they close; 4xx includes 499, the visitor went away).",
		}, []string{"code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "request_duration_seconds",
			Help:    "Time from a visitor request's arrival to the end of its response, for requests forwarded to an agent (not WebSockets).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "bytes_in_total",
			Help: "Bytes from visitors to agents: request bodies and WebSocket data.",
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "bytes_out_total",
			Help: "Bytes from agents to visitors: response bodies and WebSocket data.",
		}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "rejects_total",
			Help: "Visitor requests and agent connections refused by the relay, by reason.",
		}, []string{"reason"}),
		certs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "certificate_events_total",
			Help: "Certificates fetched for the apex and granted names, by result (ready or failed).",
		}, []string{"result"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "reconnects_total",
			Help: "Agent claims that took back a name held for their reconnect secret or token, or replaced their own stale session.",
		}),
	}
	for _, class := range []string{"1xx", "2xx", "3xx", "4xx", "5xx"} {
		m.requests.WithLabelValues(class)
	}
	for _, r := range rejectReasons {
		m.rejects.WithLabelValues(r)
	}
	m.certs.WithLabelValues("ready")
	m.certs.WithLabelValues("failed")

	m.reg.MustRegister(
		m.agents, m.streams, m.websockets, m.requests, m.duration,
		m.bytesIn, m.bytesOut, m.rejects, m.certs, m.reconnects,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "tunnels_online",
			Help: "Tunnel names served by a connected agent.",
		}, func() float64 { live, _ := s.reg.counts(); return float64(live) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "tunnels_held",
			Help: "Tunnel names held for a disconnected agent's reconnect.",
		}, func() float64 { _, held := s.reg.counts(); return float64(held) }),
		guardCollector{},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// handler serves the metrics in Prometheus' exposition formats.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// reject counts a refusal.
func (m *metrics) reject(reason string) { m.rejects.WithLabelValues(reason).Inc() }

// request counts a finished visitor request by its status class.
func (m *metrics) request(status int) {
	switch {
	case status == 0:
		status = http.StatusOK // nothing written: net/http answers 200
	case status < 100 || status > 599:
		// A local server's 600-999 reaches the visitor as sent; RFC 9110
		// (15) has a client treat a status outside 100-599 as a 5xx.
		status = http.StatusInternalServerError
	}
	m.requests.WithLabelValues(strconv.Itoa(status/100) + "xx").Inc()
}

// guardCollector exposes the frame guard's process-wide counters
// (tunnel.GuardTotals), read at scrape time. They are the process's, not
// one relay's: a process normally runs one relay.
type guardCollector struct{}

var (
	guardFramesDesc = prometheus.NewDesc(metricsNamespace+"_guard_frames_total",
		"yamux frames read from agents, counted when their session ends.", nil, nil)
	guardPingsDesc = prometheus.NewDesc(metricsNamespace+"_guard_pings_total",
		"yamux ping requests from agents.", nil, nil)
	guardStreamsDesc = prometheus.NewDesc(metricsNamespace+"_guard_streams_total",
		"yamux streams opened by agents.", nil, nil)
	guardClosedDesc = prometheus.NewDesc(metricsNamespace+"_guard_closed_sessions_total",
		"Agent sessions closed by the frame guard, by reason (ping_flood, stream_flood, malformed).", []string{"reason"}, nil)
	yamuxLogDesc = prometheus.NewDesc(metricsNamespace+"_yamux_log_lines_total",
		"Log lines from yamux sessions.", nil, nil)
	yamuxLogDroppedDesc = prometheus.NewDesc(metricsNamespace+"_yamux_log_lines_suppressed_total",
		"Log lines from yamux sessions dropped by the rate limit.", nil, nil)
)

func (guardCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{guardFramesDesc, guardPingsDesc, guardStreamsDesc, guardClosedDesc, yamuxLogDesc, yamuxLogDroppedDesc} {
		ch <- d
	}
}

func (guardCollector) Collect(ch chan<- prometheus.Metric) {
	t := tunnel.GuardTotals()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(guardFramesDesc, t.Frames)
	counter(guardPingsDesc, t.Pings)
	counter(guardStreamsDesc, t.Streams)
	counter(guardClosedDesc, t.PingFloods, "ping_flood")
	counter(guardClosedDesc, t.StreamFloods, "stream_flood")
	counter(guardClosedDesc, t.Malformed, "malformed")
	counter(yamuxLogDesc, t.YamuxLogLines)
	counter(yamuxLogDroppedDesc, t.YamuxLogSuppressed)
}
