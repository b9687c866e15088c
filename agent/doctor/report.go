package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// Status is a check's outcome.
type Status string

// Outcomes. Only Fail makes a Report fail.
const (
	Pass Status = "pass"
	Warn Status = "warn" // works, but needs attention soon (e.g. a certificate about to expire)
	Fail Status = "fail"
	Skip Status = "skip" // not applicable, or an earlier check it needs failed
)

// Check IDs, in the order Run performs them.
const (
	CheckDNSRelay  = "dns-relay"  // the relay's host name resolves
	CheckTLSRelay  = "tls-relay"  // the certificate served for the relay's host
	CheckAgent     = "agent"      // an agent connects, authenticates and gets a tunnel
	CheckDNSTunnel = "dns-tunnel" // the tunnel's name resolves to the relay (the wildcard record)
	CheckTLSTunnel = "tls-tunnel" // the certificate served for the tunnel's name
	CheckHTTP      = "http"       // a public HTTP request comes back through the tunnel
	CheckWebSocket = "websocket"  // a public WebSocket echoes through the tunnel
)

var titles = map[string]string{
	CheckDNSRelay:  "DNS relay",
	CheckTLSRelay:  "TLS relay",
	CheckAgent:     "agent",
	CheckDNSTunnel: "DNS tunnel",
	CheckTLSTunnel: "TLS tunnel",
	CheckHTTP:      "HTTP",
	CheckWebSocket: "WebSocket",
}

// Check is the result of one check.
type Check struct {
	ID     string // one of the Check* constants
	Status Status
	// Detail says what was found, in one line.
	Detail string
	// Fix says what to do, in one line; set for Fail and Warn.
	Fix string
	// Latency is how long the checked operation took; zero when it does
	// not apply. Details that matter mention it; JSON has it as
	// latency_ms when it is not zero.
	Latency time.Duration
}

// Title is the check's short name, e.g. "DNS tunnel".
func (c Check) Title() string {
	if t, ok := titles[c.ID]; ok {
		return t
	}
	return c.ID
}

// MarshalJSON writes the check with its title and the latency in
// milliseconds.
func (c Check) MarshalJSON() ([]byte, error) {
	var ms *float64
	if c.Latency > 0 {
		v := float64(c.Latency.Microseconds()) / 1000
		ms = &v
	}
	return json.Marshal(struct {
		ID        string   `json:"id"`
		Title     string   `json:"title"`
		Status    Status   `json:"status"`
		Detail    string   `json:"detail"`
		Fix       string   `json:"fix,omitempty"`
		LatencyMS *float64 `json:"latency_ms,omitempty"`
	}{c.ID, c.Title(), c.Status, c.Detail, c.Fix, ms})
}

// Report is what Run found.
type Report struct {
	Relay string `json:"relay"`
	// Tunnel is the temporary tunnel's URL; empty if none was granted.
	Tunnel string  `json:"tunnel,omitempty"`
	Checks []Check `json:"checks"`
}

// Failed returns the checks that failed.
func (r *Report) Failed() []Check {
	var failed []Check
	for _, c := range r.Checks {
		if c.Status == Fail {
			failed = append(failed, c)
		}
	}
	return failed
}

// Find returns the check with id.
func (r *Report) Find(id string) (Check, bool) {
	for _, c := range r.Checks {
		if c.ID == id {
			return c, true
		}
	}
	return Check{}, false
}

// WriteJSON writes the report as one indented JSON object, with "ok" false
// when a check failed.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		OK bool `json:"ok"`
		*Report
	}{len(r.Failed()) == 0, r})
}

// titleWidth aligns the details of FormatCheck's lines.
const titleWidth = 11

// FormatCheck renders a check as text: one line with its status, title
// and detail, and for a failure or warning a second, indented line with
// the fix. Lines end in "\n".
func FormatCheck(c Check) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-4s  %-*s %s\n", strings.ToUpper(string(c.Status)), titleWidth, c.Title(), oneLine(c.Detail))
	if c.Fix != "" && (c.Status == Fail || c.Status == Warn) {
		fmt.Fprintf(&b, "      %-*s %s\n", titleWidth, "fix:", oneLine(c.Fix))
	}
	return b.String()
}

// Summary is the report's last line, without "\n": all passed, or how many
// checks failed and which.
func (r *Report) Summary() string {
	failed := r.Failed()
	warned := 0
	for _, c := range r.Checks {
		if c.Status == Warn {
			warned++
		}
	}
	if len(failed) == 0 {
		s := fmt.Sprintf("All %d checks passed", len(r.Checks))
		for _, c := range r.Checks {
			if c.Status == Skip {
				s = "No check failed"
				break
			}
		}
		switch warned {
		case 0:
			return s + "."
		case 1:
			return s + "; 1 warning."
		default:
			return fmt.Sprintf("%s; %d warnings.", s, warned)
		}
	}
	var names []string
	for _, c := range failed {
		names = append(names, c.Title())
	}
	return fmt.Sprintf("%d of %d checks failed: %s.", len(failed), len(r.Checks), strings.Join(names, ", "))
}

// WriteText writes the header, every check and the summary, as `tunnel
// doctor` prints them.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	b.WriteString(Header(r.Relay))
	for _, c := range r.Checks {
		b.WriteString(FormatCheck(c))
	}
	b.WriteString("\n" + r.Summary() + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// Header is the line printed before the checks, "\n" included.
func Header(relay string) string {
	return "Checking relay " + relay + "\n\n"
}

func roundLatency(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(10 * time.Millisecond).String()
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
