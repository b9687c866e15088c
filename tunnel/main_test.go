package tunnel_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// TestMain fails the package if a test leaves a goroutine behind: sessions,
// streams, Join and the upgrade must all stop when their owner closes them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tcpPair returns the two ends of a real TCP connection on 127.0.0.1.
func tcpPair(t testing.TB) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		d.Close()
		t.Fatal(r.err)
	}
	return d.(*net.TCPConn), r.c.(*net.TCPConn)
}

// sessionPair starts a yamux session over real loopback TCP, configured the
// way the agent (client) and the relay (server) configure it. stop closes
// both sessions.
func sessionPair(t testing.TB) (agent, relay *yamux.Session, stop func()) {
	t.Helper()
	c1, c2 := tcpPair(t)
	agent, err := tunnel.Client(c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	relay, err = tunnel.Server(c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	return agent, relay, func() {
		agent.Close()
		relay.Close()
	}
}

// rawStreamPair opens a yamux stream on one session and accepts it on the
// other, without the StreamHeader exchange.
func rawStreamPair(t testing.TB, opener, acceptor *yamux.Session) (opened, accepted *yamux.Stream) {
	t.Helper()
	opened, err := opener.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	accepted, err = acceptor.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	return opened, accepted
}

// testCert is a self-signed certificate for tunnel.test, made once.
var testCert = sync.OnceValues(func() (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		DNSNames:     []string{"tunnel.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, roots
})

// tlsPair returns a TLS connection over TCP on 127.0.0.1, both ends, after
// the handshake; server is the accepting end's *tls.Conn, raw its socket.
func tlsPair(t testing.TB) (client, server *tls.Conn, raw *net.TCPConn) {
	t.Helper()
	cert, roots := testCert()
	c, s := tcpPair(t)
	client = tls.Client(c, &tls.Config{ServerName: "tunnel.test", RootCAs: roots})
	server = tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return client, server, s
}
