package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/agent"
)

// agent.Listen gives a Go program a public URL with no local port: the code
// below is the README's example, with the relay started by the test.
func TestListenReadmeExample(t *testing.T) {
	rl := startRelay(t, "")
	relayURL := rl.url()

	// --- README example ---
	ctx := context.Background()
	ln, err := agent.Listen(ctx, agent.Config{
		Relay:   relayURL, // e.g. "https://example.com"
		Tunnels: []agent.Tunnel{{Name: "myapp"}},
	})
	if err != nil {
		t.Fatal(err) // log.Fatal in the README
	}
	defer ln.Close()
	t.Log("serving on", ln.URL()) // fmt.Println in the README
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s, visitor %s\n", r.Host, r.RemoteAddr)
	})}
	go srv.Serve(ln)
	// --- end of example ---
	defer srv.Close()

	if want := "http://myapp.localhost:" + port(rl.addr); ln.URL() != want {
		t.Fatalf("URL() = %q, want %q", ln.URL(), want)
	}
	if ln.Addr().Network() != "tunnel" || ln.Addr().String() != ln.URL() {
		t.Fatalf("Addr() = %v %v", ln.Addr().Network(), ln.Addr())
	}
	// A visitor from 127.0.0.3: the program sees that address as RemoteAddr.
	c := &http.Client{Transport: visitorTransport(rl.addr, &net.TCPAddr{IP: net.ParseIP("127.0.0.3")})}
	status, body := get(t, c, ln.URL()+"/")
	if status != 200 || !strings.HasPrefix(body, "hello from myapp.localhost:"+port(rl.addr)+", visitor 127.0.0.3:") {
		t.Fatalf("through Listen: %d %q", status, body)
	}
}

// Closing the Listener releases the name at once and makes Accept return.
func TestListenClose(t *testing.T) {
	rl := startRelay(t, "")
	ln, err := agent.Listen(context.Background(), agent.Config{Relay: rl.url(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		accepted <- err
	}()
	ln.Close()
	select {
	case err := <-accepted:
		if err == nil {
			t.Fatal("Accept returned a connection after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
	if status, _ := get(t, visitorClient(rl.addr), ln.URL()+"/"); status != 404 {
		t.Fatalf("after Close the name answers %d, want 404", status)
	}
}

// Listen reports a permanent refusal (here: the name is taken) as its error.
func TestListenNameTaken(t *testing.T) {
	rl := startRelay(t, "")
	first, err := agent.Listen(context.Background(), agent.Config{Relay: rl.url(), Tunnels: []agent.Tunnel{{Name: "dup"}}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	_, err = agent.Listen(context.Background(), agent.Config{Relay: rl.url(), Tunnels: []agent.Tunnel{{Name: "dup"}}, Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Fatalf("second Listen: %v", err)
	}
}
