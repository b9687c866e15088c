package relay

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
)

// recordHandler keeps the records logged through it.
type recordHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r)
	return nil
}

// lines returns how many records had msg, and the "count" of the last one.
func (h *recordHandler) lines(msg string) (n int, count int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.records {
		if r.Message != msg {
			continue
		}
		n++
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "count" {
				count = a.Value.Int64()
			}
			return true
		})
	}
	return n, count
}

// A flood of refusals logs rejectLogBurst lines per reason and second, then
// one summary with the number left out, when the second is over; each
// reason has its own allowance, and close writes what is pending.
func TestRejectLogRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &recordHandler{}
		l := newRejectLog(slog.New(h))
		for range 25 {
			l.add("request refused", rejectNoTunnel)
		}
		l.add("agent refused", rejectAuthFailed)
		if n, _ := h.lines("request refused"); n != rejectLogBurst {
			t.Fatalf("%d lines in the first second, want %d", n, rejectLogBurst)
		}
		if n, _ := h.lines("agent refused"); n != 1 {
			t.Fatalf("another reason was held back: %d lines", n)
		}
		if n, _ := h.lines("more refusals not logged"); n != 0 {
			t.Fatal("summary before the second was over")
		}

		time.Sleep(rejectLogWindow)
		synctest.Wait()
		if n, count := h.lines("more refusals not logged"); n != 1 || count != 15 {
			t.Fatalf("summary: %d lines, count %d; want 1 line, count 15", n, count)
		}

		// A new second has a new allowance; close sums up the rest.
		for range 12 {
			l.add("request refused", rejectNoTunnel)
		}
		l.close()
		if n, _ := h.lines("request refused"); n != 2*rejectLogBurst {
			t.Fatalf("%d lines after two seconds, want %d", n, 2*rejectLogBurst)
		}
		if n, count := h.lines("more refusals not logged"); n != 2 || count != 2 {
			t.Fatalf("after close: %d summaries, last count %d; want 2, 2", n, count)
		}
		l.add("request refused", rejectNoTunnel)
		if n, _ := h.lines("request refused"); n != 2*rejectLogBurst {
			t.Fatal("logged after close")
		}
	})
}

// An agent that connects while the relay drains is refused (503) with a
// line, as every refusal is.
func TestAgentRefusedWhileDrainingIsLogged(t *testing.T) {
	h := &recordHandler{}
	s, err := New(Config{Domain: "localhost", Logger: slog.New(h)})
	if err != nil {
		t.Fatal(err)
	}
	s.draining.Store(true)
	r := httptest.NewRequest(http.MethodGet, proto.ConnectPath, nil)
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", proto.UpgradeProtocol)
	w := httptest.NewRecorder()
	s.handleConnect(w, r)
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", w.Code)
	}
	if n, _ := h.lines("agent refused"); n != 1 {
		t.Errorf("%d \"agent refused\" lines, want 1", n)
	}
}
