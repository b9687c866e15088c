package inspect

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// startHTTPSLocal is a local server that speaks only HTTPS, offering h2 as
// well as http/1.1, and answers with what it saw of each request. Its
// certificate (httptest's) covers example.com and 127.0.0.1.
func startHTTPSLocal(t *testing.T) (addr string, roots *x509.CertPool) {
	t.Helper()
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sni := "-"
		if r.TLS != nil {
			sni = r.TLS.ServerName
		}
		fmt.Fprintf(w, "tls=%v sni=%s %s host=%s %s %s %s", r.TLS != nil, sni, r.Proto, r.Host, r.Method, r.RequestURI, body)
	}))
	ts.EnableHTTP2 = true
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshakes refused on purpose
	ts.StartTLS()
	t.Cleanup(ts.Close)
	roots = x509.NewCertPool()
	roots.AddCert(ts.Certificate())
	return ts.Listener.Addr().String(), roots
}

// observed has the inspector see one exchange on a connection made with
// info, and returns its ID.
func observed(t *testing.T, r *recorder, info ConnInfo) int64 {
	t.Helper()
	c := r.in.Observe(info)
	c.Tap(true, []byte("POST /orig?q=1 HTTP/1.1\r\nHost: secure.example.net\r\nContent-Length: 5\r\n\r\nhello"))
	c.Tap(false, []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ex) == 0 {
		t.Fatal("no exchange observed")
	}
	return r.ex[len(r.ex)-1].ID
}

// replayAPI replays exchange id through the inspector's API.
func replayAPI(t *testing.T, api string, id int64) *Exchange {
	t.Helper()
	resp, err := http.Post(fmt.Sprintf("%s/api/requests/%d/replay", api, id), "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ex Exchange
	if err := json.NewDecoder(resp.Body).Decode(&ex); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("replay %d: %s %v", id, resp.Status, err)
	}
	return &ex
}

// TestReplayHTTPS replays a request of a connection the agent made over TLS
// (ConnInfo.TLS): the replay reaches the HTTPS local server over TLS too,
// with the connection's server name and roots and HTTP/1.1, and so does a
// replay of the replay.
func TestReplayHTTPS(t *testing.T) {
	local, roots := startHTTPSLocal(t)
	r := newRecorder(Options{})
	defer r.in.Close()
	api := httptest.NewServer(r.in.Handler(true))
	defer api.Close()

	// A server name other than the address dialled: the replay must send
	// the connection's, not one of its own.
	cfg := &tls.Config{ServerName: "example.com", RootCAs: roots, NextProtos: []string{"http/1.1"}}
	id := observed(t, r, ConnInfo{Tunnel: "secure", Local: local, Remote: "192.0.2.1:5000", TLS: cfg})

	want := "tls=true sni=example.com HTTP/1.1 host=secure.example.net POST /orig?q=1 hello"
	first := replayAPI(t, api.URL, id)
	if first.Error != "" || first.Status != 200 || string(first.ResponseBody.Data) != want || first.Local != local {
		t.Fatalf("replay: status %d error %q body %q local %q; want 200 %q", first.Status, first.Error, first.ResponseBody.Data, first.Local, want)
	}
	again := replayAPI(t, api.URL, first.ID)
	if again.Error != "" || again.Status != 200 || string(again.ResponseBody.Data) != want || again.ReplayOf != first.ID {
		t.Fatalf("replay of the replay: status %d error %q body %q", again.Status, again.Error, again.ResponseBody.Data)
	}
}

// TestReplayHTTPSVerifies: the replay verifies the local server's
// certificate as the connection's configuration says, so roots that do
// not trust it fail the replay, and say which URL it went to.
func TestReplayHTTPSVerifies(t *testing.T) {
	local, _ := startHTTPSLocal(t)
	r := newRecorder(Options{})
	defer r.in.Close()
	api := httptest.NewServer(r.in.Handler(true))
	defer api.Close()

	cfg := &tls.Config{ServerName: "example.com", RootCAs: x509.NewCertPool(), NextProtos: []string{"http/1.1"}}
	id := observed(t, r, ConnInfo{Tunnel: "secure", Local: local, TLS: cfg})
	ex := replayAPI(t, api.URL, id)
	if ex.Status != 0 || !strings.Contains(ex.Error, "https://"+local) || !strings.Contains(ex.Error, "certificate") {
		t.Errorf("replay with roots that do not trust the server: status %d error %q", ex.Status, ex.Error)
	}
}

// TestReplayPlainHTTP: without ConnInfo.TLS a replay speaks plain HTTP, as
// the connection did.
func TestReplayPlainHTTP(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "tls=%v %s %s %s", r.TLS != nil, r.Method, r.RequestURI, body)
	}))
	defer ts.Close()
	r := newRecorder(Options{})
	defer r.in.Close()
	api := httptest.NewServer(r.in.Handler(true))
	defer api.Close()

	id := observed(t, r, ConnInfo{Tunnel: "plain", Local: ts.Listener.Addr().String()})
	if ex := replayAPI(t, api.URL, id); ex.Status != 200 || string(ex.ResponseBody.Data) != "tls=false POST /orig?q=1 hello" {
		t.Errorf("replay: status %d error %q body %q", ex.Status, ex.Error, ex.ResponseBody.Data)
	}
}
