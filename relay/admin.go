package relay

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"time"
)

// The admin listener is the operator's port, never the public one:
//
//	GET  /metrics                     Prometheus metrics
//	GET  /healthz                     200 while the process runs
//	GET  /readyz                      200 while serving, 503 once shutdown begins
//	GET  /api/tunnels                 the tunnel names, live and held (TunnelInfo)
//	POST /api/tunnels/{name}/kick     disconnect the agent; its names are held for its reconnect
//	POST /api/tunnels/{name}/revoke   free the name; the agent stops with a permanent error
//
// The API needs "Authorization: Bearer <Config.AdminToken>"; without an
// admin token it answers 403. Errors are JSON: {"error": "..."}.

// TunnelInfo is one tunnel name as the admin API lists it.
type TunnelInfo struct {
	Name  string `json:"name"`
	URL   string `json:"url"`
	State string `json:"state"` // "live", or "held" for a disconnected agent's reconnect
	// Agent is the address of the agent's connection (while held: of the
	// last one).
	Agent string `json:"agent"`
	// Token is the name of the agent's token; empty without auth.
	Token     string    `json:"token,omitempty"`
	Since     time.Time `json:"since"` // when the agent's session claimed the name
	HeldUntil time.Time `json:"held_until,omitzero"`
	// The counters are the current (or last) session's: streams open now,
	// requests finished, bytes from and to visitors.
	Streams  int64 `json:"streams"`
	Requests int64 `json:"requests"`
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
}

// Tunnels lists the relay's tunnel names, sorted, live and held.
func (s *Server) Tunnels() []TunnelInfo {
	list := s.reg.list()
	out := make([]TunnelInfo, 0, len(list))
	for _, l := range list {
		ti := TunnelInfo{Name: l.name, State: "live", Token: l.owner}
		if !l.live {
			ti.State, ti.HeldUntil = "held", l.heldUntil
		}
		if as := l.sess; as != nil {
			ti.URL, ti.Agent, ti.Since = as.url(l.name), as.remote, as.since
			ts := as.tunnel(l.name)
			ti.Requests, ti.BytesIn, ti.BytesOut = ts.requests.Load(), ts.bytesIn.Load(), ts.bytesOut.Load()
			if l.live {
				ti.Streams = ts.streams.Load()
			}
		}
		out = append(out, ti)
	}
	return out
}

// Kick disconnects the agent serving name, as if its network dropped: its
// names are held for its reconnect, which the agent makes on its own. It
// reports whether a connected agent served name.
func (s *Server) Kick(name string) bool {
	as, _, _ := s.reg.lookup(name)
	if as == nil {
		return false
	}
	as.kicked.Store(true)
	as.log.Info("agent kicked by the operator", "name", name)
	as.close()
	return true
}

// AdminAddr returns the address of the admin listener Run or ServeAdmin
// serves, or nil.
func (s *Server) AdminAddr() net.Addr {
	if a := s.adminAddr.Load(); a != nil {
		return *a
	}
	return nil
}

// AdminHandler returns the handler of the admin listener.
func (s *Server) AdminHandler() http.Handler {
	api := http.NewServeMux()
	api.HandleFunc("GET /api/tunnels", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Tunnels())
	})
	api.HandleFunc("POST /api/tunnels/{name}/kick", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !s.Kick(name) {
			if _, _, held := s.reg.lookup(name); !held.IsZero() {
				writeJSONError(w, http.StatusConflict, fmt.Sprintf("tunnel %q is offline already: its name is held for its agent", name))
				return
			}
			writeJSONError(w, http.StatusNotFound, fmt.Sprintf("no tunnel named %q", name))
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"kicked": name})
	})
	api.HandleFunc("POST /api/tunnels/{name}/revoke", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !s.Revoke(name) {
			writeJSONError(w, http.StatusNotFound, fmt.Sprintf("no tunnel named %q", name))
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"revoked": name})
	})
	api.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeJSONError(w, http.StatusNotFound, fmt.Sprintf("no admin API endpoint %s %s", r.Method, truncate(r.URL.Path, maxLoggedPath)))
	})

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metrics.handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case s.draining.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "draining")
		case !s.serving.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not serving yet")
		default:
			fmt.Fprintln(w, "ready")
		}
	})
	mux.Handle("/api/", s.adminAuth(api))
	return mux
}

// adminAuth lets through requests with the admin token, compared in
// constant time; wrong tokens are counted per address like agents' ones.
func (s *Server) adminAuth(h http.Handler) http.Handler {
	want := sha256.Sum256([]byte(s.cfg.AdminToken))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.AdminToken == "" {
			writeJSONError(w, http.StatusForbidden, "set --admin-token to use the admin API")
			return
		}
		ip := remoteIP(r.RemoteAddr)
		if !s.adminFails.ok(ip) {
			s.metrics.reject(rejectAdminAuthFailed)
			writeJSONError(w, http.StatusTooManyRequests, "too many wrong admin tokens from your address; wait a minute")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			s.adminFails.fail(ip)
			s.metrics.reject(rejectAdminAuthFailed)
			s.rejects.add("admin request refused", rejectAdminAuthFailed, requestAttrs(r)...)
			w.Header().Set("WWW-Authenticate", `Bearer realm="tunnel relay admin"`)
			writeJSONError(w, http.StatusUnauthorized, "admin token missing or wrong: send Authorization: Bearer <admin token>")
			return
		}
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// ServeAdmin serves the admin listener on ln until the relay has shut
// down: unlike the public listeners it stays up while the relay drains, so
// /readyz can answer 503. It returns nil after a shutdown.
func (s *Server) ServeAdmin(ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.AdminHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(errorLogWriter{s.log}, "", 0),
	}
	s.mu.Lock()
	if s.adminClosed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.admin[hs] = struct{}{}
	s.mu.Unlock()
	addr := ln.Addr()
	s.adminAddr.Store(&addr)
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// closeAdmin stops the admin listeners, letting their requests (all short)
// finish for a moment.
func (s *Server) closeAdmin() {
	s.mu.Lock()
	s.adminClosed = true
	servers := make([]*http.Server, 0, len(s.admin))
	for hs := range s.admin {
		servers = append(servers, hs)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, hs := range servers {
		if hs.Shutdown(ctx) != nil {
			hs.Close()
		}
	}
}
