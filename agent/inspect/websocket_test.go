package inspect

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel"
)

// refFrames parses one direction's frames the way the inspector did before
// frames were parsed in the tap, pulling from a bufio.Reader on a goroutine
// of their own (Conn.frames as of commit 09b13b4). It is the reference the
// frame parser must agree with, byte for byte of its output. starts are
// the offsets in p of the frames recorded.
func refFrames(p []byte, dir int) (frames []Frame, starts []int, errMsg string) {
	src := &countingReader{r: bytes.NewReader(p)}
	br := bufio.NewReaderSize(src, 4<<10) // the read-ahead of the time
	var msgOp int
	var msgDeflated bool
	var hdr [8]byte
	for {
		if _, err := br.Peek(1); err != nil {
			return
		}
		start := int(src.n) - br.Buffered()
		fr, n, masked, key, err := refFrameHeader(br, hdr[:])
		if err != nil {
			return frames, starts, "frames " + dirNames[dir] + ": " + err.Error()
		}
		fr.Dir = dirNames[dir]
		want := min(n, previewLen)
		if fr.Opcode >= 8 {
			want = n
		}
		buf := make([]byte, want)
		if _, err := io.ReadFull(br, buf); err != nil {
			return frames, starts, "frames " + dirNames[dir] + ": frame cut short"
		}
		if masked {
			for i := range buf {
				buf[i] ^= key[i%4]
			}
		}
		if n > want {
			if _, err := br.Discard(int(n - want)); err != nil {
				return frames, starts, "frames " + dirNames[dir] + ": frame cut short"
			}
		}
		op := fr.Opcode
		if op == 0 && msgDeflated {
			// RSV1 is on a compressed message's first frame only.
			fr.Compressed = true
		}
		if op == 1 || op == 2 {
			msgOp, msgDeflated = op, fr.Compressed
		}
		switch {
		case fr.Compressed:
		case op == 8:
			if len(buf) >= 2 {
				fr.CloseCode = int(binary.BigEndian.Uint16(buf))
				fr.Preview = validPrefix(buf[2:])
			} else {
				fr.CloseCode = 1005
			}
		case op == 1 || (op == 0 && msgOp == 1) || op == 9 || op == 10:
			fr.Preview = validPrefix(buf)
		}
		frames = append(frames, fr)
		starts = append(starts, start)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func refFrameHeader(br *bufio.Reader, hdr []byte) (fr Frame, n int64, masked bool, key [4]byte, err error) {
	if _, err = io.ReadFull(br, hdr[:2]); err != nil {
		return
	}
	fr.Fin = hdr[0]&0x80 != 0
	fr.Compressed = hdr[0]&0x40 != 0
	fr.Opcode = int(hdr[0] & 0x0f)
	fr.Op = opName(fr.Opcode)
	if fr.Op == "reserved" {
		err = errBadOpcode
		return
	}
	masked = hdr[1]&0x80 != 0
	fr.Masked = masked
	n = int64(hdr[1] & 0x7f)
	switch n {
	case 126:
		if _, err = io.ReadFull(br, hdr[:2]); err != nil {
			return
		}
		n = int64(binary.BigEndian.Uint16(hdr[:2]))
	case 127:
		if _, err = io.ReadFull(br, hdr[:8]); err != nil {
			return
		}
		u := binary.BigEndian.Uint64(hdr[:8])
		if u>>63 != 0 {
			err = errBadLength
			return
		}
		n = int64(u)
	}
	if fr.Opcode >= 8 && (n > 125 || !fr.Fin) {
		err = errBadLength
		return
	}
	if masked {
		if _, err = io.ReadFull(br, key[:]); err != nil {
			return
		}
	}
	fr.Size = n
	return
}

// wsStream is one direction's bytes and the offsets where its parts (the
// upgrade, each frame) begin.
type wsStream struct {
	b      []byte
	starts []int
}

func (s *wsStream) add(parts ...[]byte) *wsStream {
	for _, p := range parts {
		s.starts = append(s.starts, len(s.b))
		s.b = append(s.b, p...)
	}
	return s
}

// cuts are the offsets of s worth cutting at: every one within the first
// head bytes of a part and the last 20 (the interior of a long payload is
// all alike).
func (s *wsStream) cuts(head int) []int {
	var out []int
	for i, start := range s.starts {
		end := len(s.b)
		if i+1 < len(s.starts) {
			end = s.starts[i+1]
		}
		for k := start; k <= end; k++ {
			if k-start <= head || end-k <= 20 {
				out = append(out, k)
			}
		}
	}
	return slices.Compact(out)
}

// frame64 is frame with its length in the 8-byte form, however short:
// the longest header there is.
func frame64(op byte, masked bool, payload []byte) []byte {
	f := frame(true, op, masked, payload)
	hdr := append([]byte{f[0], f[1]&0x80 | 127}, binary.BigEndian.AppendUint64(nil, uint64(len(payload)))...)
	return append(hdr, f[2:]...)
}

// someFrames are one direction's frames of every kind the parser tells
// apart: fragmented text and binary, control frames, 7-, 16- and 64-bit
// lengths, empty payloads, compression, close with and without a code.
func someFrames(masked bool, big int) *wsStream {
	s := &wsStream{}
	s.add(
		frame(false, 1, masked, []byte("hel")),
		frame(true, 0, masked, []byte("lo")),
		frame(true, 9, masked, []byte("are you there")),
		frame(true, 1, masked, []byte(strings.Repeat("é", 200))),
		frame(false, 2, masked, []byte{1, 2, 3}),
		frame(true, 0, masked, []byte{4, 5}),
		frame64(1, masked, []byte("long form")),
		frame(true, 0x41, masked, []byte{0xf2, 0x48, 0xcd}), // compressed text
		frame(true, 1, masked, nil),
		frame(true, 10, masked, nil),
	)
	if big > 0 {
		s.add(frame(true, 2, masked, bytes.Repeat([]byte{0xa5}, big)))
	}
	return s.add(
		frame(true, 8, masked, nil),
		frame(true, 8, masked, closePayload(1001, "going away")),
	)
}

// shortFrames are frames with short payloads and every header form, for
// cutting at every pair of offsets.
func shortFrames() *wsStream {
	return (&wsStream{}).add(
		frame(false, 1, true, []byte("ab")),
		frame64(0, true, []byte("c")),
		frame(true, 9, false, nil),
		frame(true, 1, false, []byte("dé")),
		frame64(2, false, []byte{7}),
		frame(true, 8, true, closePayload(1000, "")),
	)
}

// badStreams end in something that is not WebSocket.
func badStreams() map[string][]byte {
	ok := frame(true, 1, true, []byte("fine"))
	return map[string][]byte{
		"reserved opcode":     append(slices.Clone(ok), 0x83, 0x00),
		"reserved control":    append(slices.Clone(ok), 0x8b, 0x80, 1, 2, 3, 4),
		"long ping":           append(slices.Clone(ok), 0x89, 126, 0, 126),
		"fragmented close":    append(slices.Clone(ok), 0x08, 0x00),
		"64-bit length top":   append(append(slices.Clone(ok), 0x82, 127), 0x80, 0, 0, 0, 0, 0, 0, 1),
		"garbage after close": append(frame(true, 8, false, closePayload(1000, "")), "HTTP/1.1 200 OK\r\n"...),
	}
}

// tapChunks taps p cut at cuts, each chunk from a scratch buffer that is
// overwritten once Tap returns, as tunnel.Join reuses its buffer.
func tapChunks(c *Conn, fromVisitor bool, p []byte, cuts ...int) {
	scratch := make([]byte, len(p))
	for _, ch := range chunks(p, cuts) {
		b := scratch[:len(ch)]
		copy(b, ch)
		c.Tap(fromVisitor, b)
		for i := range b {
			b[i] = 0xee
		}
	}
}

// chunks cuts p at the ascending offsets cuts; chunks may be empty.
func chunks(p []byte, cuts []int) [][]byte {
	var out [][]byte
	prev := 0
	for _, k := range cuts {
		out = append(out, p[prev:k])
		prev = k
	}
	return append(out, p[prev:])
}

// bytewise are the cuts that make every chunk one byte.
func bytewise(n int) []int {
	cuts := make([]int, 0, n)
	for k := 1; k < n; k++ {
		cuts = append(cuts, k)
	}
	return cuts
}

var (
	parserInspector = New(Options{MaxFrames: 1 << 20})
	chunkTime       = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

// pushed runs a frame parser over p cut at cuts, as taps hand it over,
// and ends it as Close does. Chunk i arrives at chunkTime + i seconds.
func pushed(p []byte, cuts []int) *wsState {
	ws := &wsState{}
	fp := newFrameParser(dirIn, ws)
	for i, ch := range chunks(p, cuts) {
		b := slices.Clone(ch)
		fp.push(parserInspector, b, chunkTime.Add(time.Duration(i)*time.Second), int64(i+1))
		for j := range b {
			b[j] = 0xee
		}
	}
	fp.end(parserInspector)
	return ws
}

// samePushed checks that the frame parser, fed p cut at cuts, records what
// the reference parser does, each frame timed by the chunk of its first
// byte.
func samePushed(t *testing.T, p []byte, cuts []int) {
	t.Helper()
	want, starts, wantErr := refFrames(p, dirIn)
	ws := pushed(p, cuts)
	var messages int64
	for _, f := range want {
		if f.Fin && f.Opcode <= 2 {
			messages++
		}
	}
	got := make([]Frame, len(ws.Frames))
	for i, f := range ws.Frames {
		if i < len(starts) {
			chunk := 0 // of the byte at starts[i]; empty chunks count
			for _, k := range cuts {
				if k <= starts[i] {
					chunk++
				}
			}
			if want := chunkTime.Add(time.Duration(chunk) * time.Second); !f.Time.Equal(want) || f.seq != int64(chunk+1) {
				t.Errorf("cuts %v: frame %d starting at %d timed %v #%d, want %v #%d", cuts, i, starts[i], f.Time, f.seq, want, chunk+1)
			}
		}
		f.Time, f.seq = time.Time{}, 0
		got[i] = f
	}
	if !slices.Equal(got, want) || ws.Error != wantErr || ws.MessagesIn != messages {
		t.Fatalf("cuts %v of %x:\ngot  %+v %q %d messages\nwant %+v %q %d messages", cuts, p, got, ws.Error, ws.MessagesIn, want, wantErr, messages)
	}
}

// The frame parser records what the reference parser does, however the
// bytes are cut into chunks and wherever the stream ends: each stream cut
// once at every offset (but inside a long payload), ending there whole and
// one byte at a time, and short frames cut at every pair of offsets.
func TestFrameParserMatchesReference(t *testing.T) {
	streams := map[string]*wsStream{
		"masked":   someFrames(true, 0),
		"unmasked": someFrames(false, 70000),
	}
	for name, b := range badStreams() {
		streams[name] = (&wsStream{}).add(b)
	}
	for name, s := range streams {
		t.Run(name, func(t *testing.T) {
			for _, k := range s.cuts(200) {
				samePushed(t, s.b[:k], nil)
				samePushed(t, s.b[:k], bytewise(k))
				samePushed(t, s.b, []int{k})
			}
		})
	}
	p := shortFrames().b
	for i := 0; i <= len(p); i++ {
		for j := i; j <= len(p); j++ {
			samePushed(t, p, []int{i, j})
		}
	}
}

// FuzzFrameParser compares the frame parser with the reference on any
// bytes, cut at two offsets.
func FuzzFrameParser(f *testing.F) {
	f.Add(someFrames(true, 300).b, uint16(1), uint16(7))
	f.Add(shortFrames().b, uint16(3), uint16(40))
	for _, b := range badStreams() {
		f.Add(b, uint16(5), uint16(9))
	}
	f.Fuzz(func(t *testing.T, p []byte, a, b uint16) {
		i, j := int(a)%(len(p)+1), int(b)%(len(p)+1)
		samePushed(t, p, []int{min(i, j), max(i, j)})
	})
}

// conversation is a WebSocket session as the taps see it, the upgrade
// included: in from the visitor, out from the local server. big is the
// size of one binary message each way.
func conversation(big int) (in, out *wsStream) {
	in = (&wsStream{}).add([]byte(upgradeIn)).then(someFrames(true, big))
	out = (&wsStream{}).add([]byte(upgradeOut)).then(someFrames(false, big))
	return in, out
}

// then appends o's parts to s.
func (s *wsStream) then(o *wsStream) *wsStream {
	for _, k := range o.starts {
		s.starts = append(s.starts, len(s.b)+k)
	}
	s.b = append(s.b, o.b...)
	return s
}

// connHead is how far into each frame a conversation is cut at every
// offset: past the longest header and into the payload. The frame parser's
// own test cuts further.
const connHead = 24

// connCuts are the offsets of a conversation's direction worth cutting at:
// every one in the upgrade, then those of the frames.
func (s *wsStream) connCuts() []int {
	cuts := append(bytewise(s.starts[1]), s.cuts(connHead)...)
	slices.Sort(cuts)
	return slices.Compact(cuts)
}

// framesAt are the cuts of s from offset at on, counted from there.
func (s *wsStream) framesAt(at int) []int {
	var out []int
	for _, k := range s.cuts(connHead) {
		if k >= at {
			out = append(out, k-at)
		}
	}
	return out
}

// checkConversation checks what r recorded of a conversation: the upgrade,
// and each direction's frames as the reference parser reads them, in order
// and timed in order. closedBy is who sent the first close frame, or ""
// when either may have.
func checkConversation(t *testing.T, label string, r *recorder, in, out *wsStream, closedBy string) {
	t.Helper()
	if len(r.ex) != 1 || r.ex[0].Status != 101 || r.ex[0].WebSocket == 0 || len(r.opened) != 1 || len(r.closed) != 1 {
		t.Fatalf("%s: exchanges %+v, %d opened, %d closed", label, r.ex, len(r.opened), len(r.closed))
	}
	ws := r.closed[0]
	full, _ := r.in.WebSocket(ws.ID)
	for d, s := range []*wsStream{in, out} {
		want, _, wantErr := refFrames(s.b[s.starts[1]:], d)
		if wantErr != "" {
			t.Fatalf("reference: %s", wantErr)
		}
		var got []Frame
		var last time.Time
		var messages int64
		for _, f := range full.Frames {
			if f.Dir != dirNames[d] {
				continue
			}
			if f.Time.IsZero() || f.Time.Before(last) {
				t.Errorf("%s: %s frame %d at %v, after %v", label, f.Dir, len(got), f.Time, last)
			}
			last = f.Time
			f.Time, f.seq = time.Time{}, 0
			got = append(got, f)
		}
		for _, f := range want {
			if f.Fin && f.Opcode <= 2 {
				messages++
			}
		}
		gotMessages, gotBytes := ws.MessagesIn, ws.BytesIn
		if d == dirOut {
			gotMessages, gotBytes = ws.MessagesOut, ws.BytesOut
		}
		if !slices.Equal(got, want) || gotMessages != messages || gotBytes != int64(len(s.b)-s.starts[1]) {
			t.Errorf("%s: frames %s:\ngot  %+v, %d messages, %d bytes\nwant %+v, %d messages, %d bytes",
				label, dirNames[d], got, gotMessages, gotBytes, want, messages, len(s.b)-s.starts[1])
		}
	}
	// Both directions' first close frame has no status code.
	if ws.CloseCode != 1005 || ws.CloseReason != "" || ws.Error != "" || (closedBy != "" && ws.ClosedBy != closedBy) {
		t.Errorf("%s: closed %d %q by %q, error %q", label, ws.CloseCode, ws.CloseReason, ws.ClosedBy, ws.Error)
	}
}

// waitSwitched waits until both directions of c parse frames in the tap.
func waitSwitched(t *testing.T, c *Conn) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Microsecond) {
		n := 0
		for d := range c.dirs {
			h := &c.dirs[d]
			h.mu.Lock()
			if h.frames != nil {
				n++
			}
			h.mu.Unlock()
		}
		if n == 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the parsers did not hand the WebSocket over")
		}
	}
}

// A WebSocket conversation is recorded the same however the taps cut it:
// in one chunk per direction (the upgrade and all the frames together, so
// that the switch hands over every frame the visitor's direction held
// until the 101), one direction cut at every offset, every chunk one
// byte, and, once both directions parse frames in the tap, the frames cut
// at every offset and byte by byte.
func TestWebSocketEverySplit(t *testing.T) {
	in, out := conversation(70000)
	visitorFirst := func(label string, inCuts, outCuts []int, switched bool) {
		t.Helper()
		r := newRecorder(Options{})
		c := r.in.Observe(ConnInfo{Tunnel: "demo"})
		inFrom, outFrom := 0, 0
		if switched {
			inFrom, outFrom = in.starts[1], out.starts[1]
			c.Tap(true, in.b[:inFrom])
			c.Tap(false, out.b[:outFrom])
			waitSwitched(t, c)
		}
		tapChunks(c, true, in.b[inFrom:], inCuts...)
		tapChunks(c, false, out.b[outFrom:], outCuts...)
		c.Close()
		checkConversation(t, label, r, in, out, "visitor")
	}
	visitorFirst("whole", nil, nil, false)
	for _, k := range in.connCuts() {
		visitorFirst(fmt.Sprintf("in cut at %d", k), []int{k}, nil, false)
		if t.Failed() {
			return
		}
	}
	for _, k := range out.connCuts() {
		visitorFirst(fmt.Sprintf("out cut at %d", k), nil, []int{k}, false)
		if t.Failed() {
			return
		}
	}
	visitorFirst("bytewise", bytewise(len(in.b)), bytewise(len(out.b)), false)
	inFrames, outFrames := in.framesAt(in.starts[1]), out.framesAt(out.starts[1])
	for _, k := range inFrames {
		visitorFirst(fmt.Sprintf("switched, in cut at %d", k), []int{k}, nil, true)
		if t.Failed() {
			return
		}
	}
	for _, k := range outFrames {
		visitorFirst(fmt.Sprintf("switched, out cut at %d", k), nil, []int{k}, true)
		if t.Failed() {
			return
		}
	}
	visitorFirst("switched, bytewise", bytewise(len(in.b)-in.starts[1]), bytewise(len(out.b)-out.starts[1]), true)
}

// Both directions tap at once, in chunks of random size, while the parsers
// hand the WebSocket over to the taps: nothing is lost, repeated or
// reordered. Run with -race.
func TestWebSocketSwitchRace(t *testing.T) {
	in, out := conversation(5000)
	for i := range 300 {
		r := newRecorder(Options{})
		c := r.in.Observe(ConnInfo{Tunnel: "demo"})
		var wg sync.WaitGroup
		for d, s := range []*wsStream{in, out} {
			rng := rand.New(rand.NewPCG(uint64(i), uint64(d)))
			wg.Go(func() {
				scratch := make([]byte, 64)
				for p := s.b; len(p) > 0; {
					b := scratch[:min(len(p), 1+rng.IntN(len(scratch)))]
					copy(b, p)
					c.Tap(d == dirIn, b)
					clear(b)
					p = p[len(b):]
					if rng.IntN(4) == 0 {
						runtime.Gosched()
					}
				}
			})
		}
		wg.Wait()
		c.Close()
		checkConversation(t, fmt.Sprintf("run %d", i), r, in, out, "")
		if t.Failed() {
			return
		}
	}
}

// tapLikeJoin taps p as tunnel.Join reads it from a busy source: a small
// first read, then reads of up to 32 KiB.
func tapLikeJoin(c *Conn, fromVisitor bool, p []byte) {
	for n := 512; len(p) > 0; n = 32 << 10 {
		n = min(n, len(p))
		c.Tap(fromVisitor, p[:n])
		p = p[n:]
	}
}

// TestIdleWebSocketMemory observes 1,000 WebSockets that have each carried
// one 32 KiB message each way and then gone quiet, the idle test of `tunnel
// bench` (docs/performance.md). Once their frames are parsed, no goroutine
// per connection is left. The heap and stack they still hold are logged,
// not asserted: the runtime's figures move between Go versions.
func TestIdleWebSocketMemory(t *testing.T) {
	const conns = 1000
	msg := bytes.Repeat([]byte("x"), 32<<10)
	in := append([]byte(upgradeIn), frame(true, 2, true, msg)...)
	out := append([]byte(upgradeOut), frame(true, 2, false, msg)...)

	goroutines := runtime.NumGoroutine()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	ins := New(Options{})
	cs := make([]*Conn, conns)
	for i := range cs {
		cs[i] = ins.Observe(ConnInfo{Tunnel: "demo", Local: "127.0.0.1:1", Remote: "192.0.2.1:5000"})
		tapLikeJoin(cs[i], true, in[:len(upgradeIn)])
		tapLikeJoin(cs[i], false, out[:len(upgradeOut)])
		tapLikeJoin(cs[i], true, in[len(upgradeIn):])
		tapLikeJoin(cs[i], false, out[len(upgradeOut):])
	}
	// The parsers hand each WebSocket over to the taps and end.
	for deadline := time.Now().Add(20 * time.Second); runtime.NumGoroutine() > goroutines; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines for %d idle WebSockets, %d before", runtime.NumGoroutine(), conns, goroutines)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / conns
	stack := float64(int64(after.StackInuse)-int64(before.StackInuse)) / conns
	t.Logf("per idle WebSocket: %.0f B heap, %.0f B stack", heap, stack)

	for _, c := range cs {
		c.Close()
	}
	ws := ins.WebSockets()
	if len(ws) != ins.opts.MaxWebSockets || ws[0].Open || ws[0].MessagesIn != 1 || ws[0].MessagesOut != 1 || ws[0].Error != "" {
		t.Errorf("newest WebSocket: %+v", ws[0])
	}
}

// A session no longer kept (beyond MaxWebSockets) keeps counting but no
// longer keeps frames, however long it stays open.
func TestForgottenWebSocket(t *testing.T) {
	r := newRecorder(Options{MaxWebSockets: 1})
	old := r.in.Observe(ConnInfo{Tunnel: "demo"})
	old.Tap(true, []byte(upgradeIn))
	old.Tap(false, []byte(upgradeOut))
	waitSwitched(t, old)
	old.Tap(true, frame(true, 1, true, []byte("kept")))
	young := r.in.Observe(ConnInfo{Tunnel: "demo"})
	young.Tap(true, []byte(upgradeIn))
	young.Tap(false, []byte(upgradeOut))
	waitSwitched(t, young)
	for range 10 {
		old.Tap(true, frame(true, 1, true, []byte("forgotten")))
	}
	young.Tap(false, frame(true, 1, false, []byte("kept")))
	old.Close()
	young.Close()

	old.mu.Lock()
	ows := old.ws
	old.mu.Unlock()
	r.in.mu.Lock()
	frames, messages := len(ows.Frames), ows.MessagesIn
	r.in.mu.Unlock()
	if frames != 0 || messages != 11 || r.closed[0].MessagesIn != 11 {
		t.Errorf("forgotten session: %d frames kept, %d messages counted, %d reported", frames, messages, r.closed[0].MessagesIn)
	}
	if _, ok := r.in.WebSocket(ows.ID); ok {
		t.Errorf("forgotten session %d still listed", ows.ID)
	}
	if ws, _ := r.in.WebSocket(ows.ID + 1); len(ws.Frames) != 1 || ws.Frames[0].Preview != "kept" {
		t.Errorf("kept session: %+v", ws)
	}
}

// Frames that pile up beyond what a direction holds while it waits for the
// switch stop the capture of that direction; the other direction goes on.
func TestWebSocketOverrun(t *testing.T) {
	r := newRecorder(Options{})
	c := r.in.Observe(ConnInfo{Tunnel: "demo"})
	c.Tap(true, []byte(upgradeIn))
	// Once the request is parsed, its direction waits for the response…
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		c.mu.Lock()
		n := len(c.open)
		c.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("request head not parsed")
		}
	}
	// …while the visitor sends more than it holds meanwhile.
	tapLikeJoin(c, true, frame(true, 2, true, make([]byte, 2*holdMax)))
	c.Tap(false, []byte(upgradeOut))
	waitSwitched(t, c)
	c.Tap(true, frame(true, 1, true, []byte("lost")))
	c.Tap(false, frame(true, 1, false, []byte("seen")))
	c.Close()
	ws, _ := r.in.WebSocket(r.closed[0].ID)
	if ws.Error != "frames in: capture stopped: the inspector fell behind the traffic" || len(ws.Frames) != 1 || ws.Frames[0].Preview != "seen" || ws.MessagesIn != 0 {
		t.Errorf("WebSocket %+v", ws)
	}
	if want := int64(len(frame(true, 2, true, make([]byte, 2*holdMax))) + len(frame(true, 1, true, []byte("lost")))); ws.BytesIn != want {
		t.Errorf("%d bytes in, want %d", ws.BytesIn, want)
	}
}

// BenchmarkJoinWebSocket moves 64 MiB of WebSocket messages (16 KiB binary
// frames, masked as a browser sends them) through tunnel.Join after an
// upgrade, without a tap and with an inspector's, which parses the frames
// in the tap. Compare within one run.
func BenchmarkJoinWebSocket(b *testing.B) {
	burst := bytes.Repeat(frame(true, 2, true, make([]byte, 16<<10)), 4)
	writes := (64 << 20) / len(burst)
	for _, inspected := range []bool{false, true} {
		b.Run(fmt.Sprintf("inspected=%v", inspected), func(b *testing.B) {
			b.SetBytes(int64(writes * len(burst)))
			r := newRecorder(Options{})
			for b.Loop() {
				client, x := tcpPair(b)
				y, server := tcpPair(b)
				opts := tunnel.JoinOptions{}
				var c *Conn
				if inspected {
					c = r.in.Observe(ConnInfo{Tunnel: "bench"})
					opts.Tap = func(d tunnel.Direction, p []byte) { c.Tap(d == tunnel.AToB, p) }
				}
				done := make(chan error, 1)
				go func() { done <- tunnel.JoinWith(x, y, opts) }()
				visitor := make(chan struct{})
				go func() {
					defer close(visitor)
					client.Write([]byte(upgradeIn))
					io.ReadFull(client, make([]byte, len(upgradeOut)))
					for range writes {
						client.Write(burst)
					}
					client.CloseWrite()
					io.Copy(io.Discard, client)
				}()
				io.ReadFull(server, make([]byte, len(upgradeIn)))
				server.Write([]byte(upgradeOut))
				io.CopyN(io.Discard, server, int64(writes*len(burst)))
				server.Close()
				<-done
				<-visitor
				client.Close()
				if c != nil {
					c.Close()
				}
			}
			if inspected {
				r.mu.Lock()
				var messages int64
				for _, ws := range r.closed {
					messages += ws.MessagesIn
				}
				b.ReportMetric(float64(messages)/float64(b.N), "messages/op")
				r.mu.Unlock()
			}
		})
	}
}
