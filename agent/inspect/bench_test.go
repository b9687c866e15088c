package inspect

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// A keep-alive GET of a 1 KiB asset as a browser sends it through the
// relay, and its answer: the exchange of `tunnel bench`'s keep-alive test.
var (
	benchRequest = "GET /assets/app.js?v=3 HTTP/1.1\r\n" +
		"Host: demo.example.com\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
		"Accept: */*\r\n" +
		"Accept-Language: en-US,en;q=0.5\r\n" +
		"Accept-Encoding: gzip, deflate, br\r\n" +
		"X-Forwarded-For: 192.0.2.1\r\n" +
		"Connection: keep-alive\r\n\r\n"
	benchResponse = "HTTP/1.1 200 OK\r\n" +
		"Content-Type: text/javascript; charset=utf-8\r\n" +
		"Content-Length: 1024\r\n" +
		"Date: Sat, 22 Nov 2025 06:00:00 GMT\r\n" +
		"Cache-Control: public, max-age=3600\r\n" +
		"Etag: \"5f3a-1024\"\r\n" +
		"Last-Modified: Fri, 21 Nov 2025 12:00:00 GMT\r\n\r\n" +
		strings.Repeat("x", 1024)
)

// BenchmarkKeepAlive observes one keep-alive connection carrying one
// exchange per op, each direction in one tap, and waits for each exchange
// to be reported, as the next request on a real connection waits for the
// response. cpu-ns/op is the process's CPU time per exchange, whichever
// goroutines spent it (where the platform tells).
func BenchmarkKeepAlive(b *testing.B) {
	req, resp := []byte(benchRequest), []byte(benchResponse)
	reported := make(chan struct{}, 1)
	in := New(Options{OnExchange: func(*Exchange) { reported <- struct{}{} }})
	c := in.Observe(ConnInfo{Tunnel: "bench", Local: "127.0.0.1:3000", Remote: "192.0.2.1:5000"})
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		c.Tap(true, req)
		c.Tap(false, resp)
		<-reported
	}
	if cpu > 0 {
		b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
	}
	b.StopTimer()
	c.Close()
	heap, stack := idleConnBytes(b, req, resp)
	b.ReportMetric(heap, "idle-heap-B/conn")
	b.ReportMetric(stack, "idle-stack-B/conn")
}

// idleConnBytes observes connections that have each carried one exchange
// and gone quiet, and returns the heap and the goroutine stacks each
// holds: what an idle keep-alive connection costs the agent.
func idleConnBytes(b *testing.B, req, resp []byte) (heap, stack float64) {
	const conns = 1000
	reported := make(chan struct{}, conns)
	// One exchange kept: the exchanges are not the connections' cost.
	in := New(Options{MaxRequests: 1, OnExchange: func(*Exchange) { reported <- struct{}{} }})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cs := make([]*Conn, conns)
	for i := range cs {
		cs[i] = in.Observe(ConnInfo{Tunnel: "bench", Local: "127.0.0.1:3000", Remote: fmt.Sprintf("192.0.2.1:%d", 5000+i)})
		cs[i].Tap(true, req)
		cs[i].Tap(false, resp)
	}
	for range conns {
		<-reported
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	for _, c := range cs {
		c.Close()
	}
	heap = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / conns
	stack = float64(int64(after.StackInuse)-int64(before.StackInuse)) / conns
	return heap, stack
}
