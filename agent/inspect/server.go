package inspect

import (
	"bytes"
	"context"
	"crypto/tls"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

//go:embed page.html
var page []byte

// Handler returns the inspector's page and JSON API:
//
//	GET  /                          the page
//	GET  /api/status                the agent's state (Status)
//	GET  /api/requests              {"requests": [Summary…], "max": N}, newest first; N kept at most
//	DELETE /api/requests            forget every request and WebSocket
//	GET  /api/requests/{id}         one Exchange with headers and bodies
//	POST /api/requests/{id}/replay  send it again to the local server;
//	                                optional JSON body of overrides
//	                                (ReplayRequest); answers the new Exchange
//	GET  /api/websockets            {"websockets": [WebSocket…], "max": N} without frames
//	GET  /api/websockets/{id}       one WebSocket with its frames
//	GET  /api/events                server-sent events: request, websocket,
//	                                frame, status, clear; data is JSON
//
// When loopback is true, requests whose Host is not a loopback name are
// refused, so a web page cannot reach the API through DNS rebinding. When
// it is false (a listener beyond loopback), a Host may also be any IP
// address, but no other name: a page rebinds a name, never an address.
func (in *Inspector) Handler(loopback bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
		w.Write(page)
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		in.mu.Lock()
		st := in.status.clone()
		in.mu.Unlock()
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /api/requests", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"requests": in.Exchanges(), "max": in.opts.MaxRequests})
	})
	mux.HandleFunc("DELETE /api/requests", func(w http.ResponseWriter, r *http.Request) {
		in.clear()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /api/requests/{id}", func(w http.ResponseWriter, r *http.Request) {
		ex := in.Exchange(pathID(r))
		if ex == nil {
			writeError(w, http.StatusNotFound, "no such request (only the last %d are kept)", in.opts.MaxRequests)
			return
		}
		writeJSON(w, http.StatusOK, ex)
	})
	mux.HandleFunc("POST /api/requests/{id}/replay", in.serveReplay)
	mux.HandleFunc("GET /api/websockets", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"websockets": in.WebSockets(), "max": in.opts.MaxWebSockets})
	})
	mux.HandleFunc("GET /api/websockets/{id}", func(w http.ResponseWriter, r *http.Request) {
		ws, ok := in.WebSocket(pathID(r))
		if !ok {
			writeError(w, http.StatusNotFound, "no such WebSocket (only the last %d are kept)", in.opts.MaxWebSockets)
			return
		}
		writeJSON(w, http.StatusOK, ws)
	})
	mux.HandleFunc("GET /api/events", in.serveEvents)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if loopback && !loopbackHost(r.Host) {
			writeError(w, http.StatusForbidden, "the inspector answers only to localhost, 127.0.0.1 or [::1]")
			return
		}
		if !loopback && !loopbackHost(r.Host) && !ipHost(r.Host) {
			writeError(w, http.StatusForbidden, "the inspector answers only to localhost or an IP address, not a name (DNS rebinding)")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !sameOrigin(r) {
			writeError(w, http.StatusForbidden, "cross-site request refused")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// Serve serves Handler on ln until ctx is done, then closes the live
// streams and returns once every handler has.
func (in *Inspector) Serve(ctx context.Context, ln net.Listener) error {
	loopback := false
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && ta.IP.IsLoopback() {
		loopback = true
	}
	srv := &http.Server{Handler: in.Handler(loopback), ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		srv.Close()
		in.Close()
	})
	defer stop()
	err := srv.Serve(ln)
	srv.Close()
	in.Close()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ipHost reports whether a Host is an IP address, with or without a port.
func ipHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	return net.ParseIP(strings.Trim(host, "[]")) != nil
}

// sameOrigin refuses requests a browser sent from another site.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	return true
}

func pathID(r *http.Request) int64 {
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	return id
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// serveEvents streams live updates as server-sent events until the client
// goes or the inspector closes.
func (in *Inspector) serveEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	ch := make(chan []byte, 256)
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, "inspector is closing")
		return
	}
	in.subs[ch] = struct{}{}
	in.handlers.Add(1)
	in.mu.Unlock()
	defer func() {
		in.mu.Lock()
		delete(in.subs, ch)
		in.mu.Unlock()
		in.handlers.Done()
	}()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "retry: 1000\n: hello\n\n")
	fl.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		select {
		case data := <-ch:
			fmt.Fprintf(w, "data: %s\n\n", data)
			// Send what queued meanwhile in the same write.
			for more := true; more; {
				select {
				case data := <-ch:
					fmt.Fprintf(w, "data: %s\n\n", data)
				default:
					more = false
				}
			}
			fl.Flush()
		case <-ping.C:
			io.WriteString(w, ": ping\n\n")
			fl.Flush()
		case <-r.Context().Done():
			return
		case <-in.done:
			return
		}
	}
}

// ReplayRequest edits a replay. Empty fields keep the captured request's.
type ReplayRequest struct {
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	// Headers, if not nil, replace the captured headers entirely.
	Headers http.Header `json:"headers,omitempty"`
	// Body, if not nil, replaces the captured body.
	Body *string `json:"body,omitempty"`
}

// hopHeaders are not replayed: they describe the captured connection, and
// the transport sets its own.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length"}

func (in *Inspector) serveReplay(w http.ResponseWriter, r *http.Request) {
	orig := in.Exchange(pathID(r))
	if orig == nil {
		writeError(w, http.StatusNotFound, "no such request (only the last %d are kept)", in.opts.MaxRequests)
		return
	}
	var edit ReplayRequest
	if b, err := io.ReadAll(io.LimitReader(r.Body, 16<<20)); err != nil {
		writeError(w, http.StatusBadRequest, "read body: %v", err)
		return
	} else if len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, &edit); err != nil {
			writeError(w, http.StatusBadRequest, "the body must be JSON like {\"method\":\"POST\",\"path\":\"/x\",\"headers\":{\"A\":[\"b\"]},\"body\":\"…\"}: %v", err)
			return
		}
	}
	ex, status, err := in.Replay(r.Context(), orig, edit)
	if err != nil {
		writeError(w, status, "%v", err)
		return
	}
	writeJSON(w, status, ex)
}

// Replay sends orig again, with edit's changes, straight to the local server
// it went to, over TLS if its connection was (ConnInfo.TLS), and records
// the result as a new exchange marked as a replay.
// The status is what the API answers: 201 with the new exchange, even if
// the local server did not answer (the exchange's Error says so), or 4xx
// when orig cannot be replayed.
func (in *Inspector) Replay(ctx context.Context, orig *Exchange, edit ReplayRequest) (*Exchange, int, error) {
	if orig.WebSocket != 0 {
		return nil, http.StatusBadRequest, errors.New("a WebSocket upgrade cannot be replayed")
	}
	method, path := orig.Method, orig.Path
	if edit.Method != "" {
		method = edit.Method
	}
	if edit.Path != "" {
		path = edit.Path
	}
	if !strings.HasPrefix(path, "/") {
		return nil, http.StatusBadRequest, fmt.Errorf("path %q must start with /", path)
	}
	body := orig.RequestBody.Data
	if edit.Body != nil {
		body = []byte(*edit.Body)
	} else if orig.RequestBody.Truncated {
		return nil, http.StatusConflict, fmt.Errorf("the captured body is only the first %d of %d bytes; give a body to replay", len(body), orig.RequestBody.Size)
	}
	hdr := orig.RequestHeader.Clone()
	if edit.Headers != nil {
		hdr = edit.Headers.Clone()
	}
	host := orig.Host
	if h := hdr.Get("Host"); h != "" {
		host = h
	}
	hdr.Del("Host")
	for _, k := range hopHeaders {
		hdr.Del(k)
	}
	// The local server is reached as the agent reached it: over TLS, with
	// the same server name and roots, when it speaks HTTPS.
	scheme, client := "http", in.client
	if orig.localTLS != nil {
		scheme, client = "https", in.tlsClient(orig.localTLS)
	}
	req, err := http.NewRequestWithContext(ctx, method, scheme+"://"+orig.Local+path, bytes.NewReader(body))
	if err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf("replay: %v", err)
	}
	req.Header = hdr.Clone()
	if _, ok := hdr["User-Agent"]; !ok {
		// Without one, the transport would send its own.
		req.Header["User-Agent"] = []string{""}
	}
	req.Host = host
	if len(body) == 0 && edit.Body == nil && orig.RequestBody.Size == 0 {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	ex := &Exchange{
		Tunnel: orig.Tunnel, Local: orig.Local, Remote: "replay", Time: time.Now(),
		Method: method, Path: path, Proto: "HTTP/1.1", Host: host,
		RequestHeader: hdr.Clone(), RequestBody: Body{Size: int64(len(body)), Data: body[:min(len(body), in.opts.BodyCap)]},
		Replay: true, ReplayOf: orig.ID, localTLS: orig.localTLS,
	}
	ex.RequestBody.Truncated = len(ex.RequestBody.Data) < len(body)
	resp, err := client.Do(req)
	if err != nil {
		ex.Error = "replay to " + scheme + "://" + orig.Local + " failed: " + unwrapAll(err).Error()
	} else {
		ex.Status = resp.StatusCode
		ex.StatusText = strings.TrimSpace(strings.TrimPrefix(resp.Status, strconv.Itoa(resp.StatusCode)))
		ex.ResponseHeader = resp.Header
		ex.ResponseBody, err = in.capture(resp.Body)
		resp.Body.Close()
		if err != nil {
			ex.Error = "response body cut short: " + err.Error()
		}
	}
	ex.Duration = Duration(time.Since(ex.Time))
	in.addExchange(ex)
	return ex, http.StatusCreated, nil
}

// tlsClient returns the replay client for a local server that speaks
// HTTPS, with cfg, the agent's own TLS configuration for it. Replays are
// rare and keep no connection alive, so each gets a transport of its own.
func (in *Inspector) tlsClient(cfg *tls.Config) *http.Client {
	t := in.client.Transport.(*http.Transport).Clone()
	t.TLSClientConfig = cfg
	c := *in.client
	c.Transport = t
	return &c
}

func unwrapAll(err error) error {
	for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(err) {
		err = u
	}
	return err
}

// capture reads a body to its end, keeping the first BodyCap bytes.
func (in *Inspector) capture(r io.Reader) (Body, error) {
	var b Body
	if r == nil || r == http.NoBody {
		return b, nil
	}
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		in.keep(&b, buf[:n])
		if err == io.EOF {
			b.Truncated = int64(len(b.Data)) < b.Size
			return b, nil
		}
		if err != nil {
			b.Truncated = true
			return b, err
		}
	}
}
