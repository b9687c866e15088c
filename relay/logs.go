package relay

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Refused requests are logged at Info, one line each, but at most
// rejectLogBurst lines per reason in each rejectLogWindow: a flood of bad
// requests must not flood the log. The rest are counted and summed up in
// one line when the window ends. The rejects metric counts every one.
const (
	rejectLogBurst  = 10
	rejectLogWindow = time.Second
)

// rejectLog is the rate-limited log of refusals.
type rejectLog struct {
	log *slog.Logger

	mu      sync.Mutex
	closed  bool
	reasons map[string]*rejectWindow
}

type rejectWindow struct {
	start   time.Time
	logged  int
	dropped int
	timer   *time.Timer // writes the summary at the end of the window
}

func newRejectLog(log *slog.Logger) *rejectLog {
	return &rejectLog{log: log, reasons: make(map[string]*rejectWindow)}
}

// add logs one refusal with reason, unless this reason's lines are over
// the rate.
func (l *rejectLog) add(msg, reason string, attrs ...slog.Attr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	now := time.Now()
	w := l.reasons[reason]
	if w == nil {
		w = &rejectWindow{start: now}
		l.reasons[reason] = w
	}
	if now.Sub(w.start) >= rejectLogWindow {
		l.summaryLocked(reason, w)
		w.start, w.logged = now, 0
	}
	if w.logged < rejectLogBurst {
		w.logged++
		l.log.LogAttrs(context.Background(), slog.LevelInfo, msg, append([]slog.Attr{slog.String("reason", reason)}, attrs...)...)
		return
	}
	w.dropped++
	if w.timer == nil {
		var t *time.Timer
		t = time.AfterFunc(time.Until(w.start.Add(rejectLogWindow)), func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if !l.closed && w.timer == t {
				l.summaryLocked(reason, w)
			}
		})
		w.timer = t
	}
}

// summaryLocked writes the line for refusals that were not logged. Logging
// under l.mu is what lets close guarantee that no line comes after it.
func (l *rejectLog) summaryLocked(reason string, w *rejectWindow) {
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	if w.dropped == 0 {
		return
	}
	l.log.Info("more refusals not logged", "reason", reason, "count", w.dropped, "since", w.start.Format(time.RFC3339))
	w.dropped = 0
}

// close writes the pending summaries and stops logging.
func (l *rejectLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	for reason, w := range l.reasons {
		l.summaryLocked(reason, w)
	}
	l.closed = true
}

// maxLoggedPath bounds the path in a log line.
const maxLoggedPath = 256

// requestAttrs describe a visitor request in a log line: never its query
// (which may carry tokens) nor any header.
func requestAttrs(r *http.Request) []slog.Attr {
	return []slog.Attr{
		slog.String("host", canonicalHost(r.Host)),
		slog.String("method", truncate(r.Method, 32)),
		slog.String("path", truncate(r.URL.Path, maxLoggedPath)),
		slog.String("remote", r.RemoteAddr),
	}
}

// rejectRequest counts and logs a refused visitor request.
func (s *Server) rejectRequest(r *http.Request, reason string, status int) {
	s.metrics.reject(reason)
	s.rejects.add("request refused", reason, append(requestAttrs(r), slog.Int("status", status))...)
}

// accessLog writes the access log line of a finished request to a tunnel.
func (s *Server) accessLog(r *http.Request, status int, d time.Duration, in, out int64, websocket bool) {
	if s.cfg.AccessLog == nil {
		return
	}
	attrs := append(requestAttrs(r),
		slog.Int("status", status),
		slog.Duration("duration", d),
		slog.Int64("bytes_in", in),
		slog.Int64("bytes_out", out),
	)
	if websocket {
		attrs = append(attrs, slog.Bool("websocket", true))
	}
	s.cfg.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
}
