package proto_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/proto"
)

// codecHeaders are stream headers StreamCodec must write exactly as
// WriteMessage does and read back unchanged.
func codecHeaders() []proto.StreamHeader {
	ap := netip.MustParseAddrPort
	return []proto.StreamHeader{
		{},
		{Name: "demo"},
		{Name: "demo", Remote: ap("192.0.2.1:4321"), Scheme: "https"},
		{Name: "brave-otter-42", Remote: ap("203.0.113.255:65535"), Scheme: "http"},
		{Name: "v6", Remote: ap("[2001:db8:1234:5678:9abc:def0:1234:5678]:443")},
		{Name: "v6", Remote: ap("[::1]:0"), Scheme: "https"},
		{Name: "mapped", Remote: ap("[::ffff:192.0.2.1]:80")},
		{Name: "zone", Remote: ap("[fe80::1%eth0]:8080")},
		{Name: "zone", Remote: ap(`[fe80::1%<"\&>]:1`)}, // netip accepts any zone
		{Name: "no-port-ip", Remote: netip.AddrPortFrom(netip.Addr{}, 80)},
		{Scheme: "ws"},
		{Name: `esc"ape\s/<b>&amp;` + "\x00\x01\b\f\n\r\t\x1f\x7f", Scheme: "héllo"},
		{Name: "bad utf-8 \xff\xfe\xc0\xaf", Scheme: "\u2028\u2029 ✓ 😀"},
		{Name: strings.Repeat("a", 63), Scheme: strings.Repeat("x", 600)},
	}
}

// codecReplies are the same for stream replies.
func codecReplies() []proto.StreamReply {
	return []proto.StreamReply{
		{},
		{Error: proto.Errorf(proto.CodeLocalDial, "nothing answers on 127.0.0.1:8080 (connection refused)")},
		{Error: proto.Errorf(proto.CodeUnknownTunnel, "this agent does not serve %q", "demo")},
		{Error: &proto.Error{}},
		{Error: &proto.Error{Code: -7, Message: "<\u2028\xff\x00>"}},
		{Error: &proto.Error{Code: 1 << 40, Message: strings.Repeat("é", 400)}},
	}
}

// encode returns WriteMessage's frame for m.
func encode(t testing.TB, m proto.Message) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := proto.WriteMessage(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestStreamCodecWrite checks that the codec writes WriteMessage's bytes,
// in one Write, and that ReadMessage reads them back unchanged.
func TestStreamCodecWrite(t *testing.T) {
	var c proto.StreamCodec
	for _, h := range codecHeaders() {
		w := &writeCounter{}
		if err := c.WriteStreamHeader(w, &h); err != nil {
			t.Fatalf("WriteStreamHeader(%+v): %v", h, err)
		}
		if want := encode(t, &h); !bytes.Equal(w.buf.Bytes(), want) || w.writes != 1 {
			t.Errorf("WriteStreamHeader(%+v) = %q in %d writes, WriteMessage wrote %q", h, w.buf.Bytes(), w.writes, want)
		}
	}
	for _, r := range codecReplies() {
		w := &writeCounter{}
		if err := c.WriteStreamReply(w, &r); err != nil {
			t.Fatalf("WriteStreamReply(%+v): %v", r, err)
		}
		if want := encode(t, &r); !bytes.Equal(w.buf.Bytes(), want) || w.writes != 1 {
			t.Errorf("WriteStreamReply(%+v) = %q in %d writes, WriteMessage wrote %q", r, w.buf.Bytes(), w.writes, want)
		}
	}

	// Too large: the same error as WriteMessage's, and nothing written.
	huge := &proto.StreamHeader{Name: strings.Repeat("<", proto.MaxMessageSize/6)}
	w := &writeCounter{}
	err, werr := c.WriteStreamHeader(w, huge), proto.WriteMessage(w, huge)
	if err == nil || werr == nil || err.Error() != werr.Error() || !errors.Is(err, proto.ErrTooLarge) || w.writes != 0 {
		t.Errorf("WriteStreamHeader of a huge header: %v after %d writes; WriteMessage: %v", err, w.writes, werr)
	}
}

type writeCounter struct {
	buf    bytes.Buffer
	writes int
}

func (w *writeCounter) Write(b []byte) (int, error) {
	w.writes++
	return w.buf.Write(b)
}

// TestStreamCodecRoundTrip reads with the codec what WriteMessage wrote
// and with ReadAs what the codec wrote; both give the message back as
// encoding/json decodes it.
func TestStreamCodecRoundTrip(t *testing.T) {
	var c proto.StreamCodec
	for _, h := range codecHeaders() {
		frame := encode(t, &h)
		want, err := proto.ReadAs[*proto.StreamHeader](bytes.NewReader(frame))
		if err != nil {
			t.Fatal(err)
		}
		for range 2 { // the second time, from the codec's caches
			var got proto.StreamHeader
			if err := c.ReadStreamHeader(bytes.NewReader(frame), &got); err != nil || got != *want {
				t.Errorf("ReadStreamHeader(%q) = %+v, %v; want %+v", frame, got, err, *want)
			}
		}
		var buf bytes.Buffer
		if err := c.WriteStreamHeader(&buf, want); err != nil {
			t.Fatal(err)
		}
		if back, err := proto.ReadAs[*proto.StreamHeader](&buf); err != nil || *back != *want {
			t.Errorf("ReadAs of WriteStreamHeader(%+v) = %+v, %v", *want, back, err)
		}
	}
	for _, r := range codecReplies() {
		frame := encode(t, &r)
		want, err := proto.ReadAs[*proto.StreamReply](bytes.NewReader(frame))
		if err != nil {
			t.Fatal(err)
		}
		var got proto.StreamReply
		if err := c.ReadStreamReply(bytes.NewReader(frame), &got); err != nil || !reflect.DeepEqual(&got, want) {
			t.Errorf("ReadStreamReply(%q) = %+v, %v; want %+v", frame, got, err, *want)
		}
	}
}

// TestStreamCodecRead feeds the codec frames that WriteMessage does not
// write: it must accept and reject exactly what ReadAs does, with the same
// result or error, and consume the same bytes.
func TestStreamCodecRead(t *testing.T) {
	var c proto.StreamCodec
	h, r := proto.TypeStreamHeader, proto.TypeStreamReply
	for _, tc := range []struct {
		typ  proto.Type
		body string
	}{
		// Accepted, by the codec's own parser or by encoding/json.
		{h, `{"scheme":"https","remote":"192.0.2.1:80","name":"demo"}`},
		{h, " \t\r\n{ \"name\" : \"demo\" , \"remote\":\"[2001:db8::1]:443\"\n}\n "},
		{h, `{"name":"demo","future":{"a":[1,-2.5e+3,true,false,null,"x",{}],"b":[]},"n":0,"s":"\u00e9"}`},
		{h, `{"x":-0,"y":1E9,"z":0.5,"w":[[[]]],"name":"demo"}`},
		{h, `{"name":"de\u006do","scheme":"http\u0073"}`},
		{h, `{"Name":"demo","REMOTE":"192.0.2.1:80","ſcheme":"https"}`},
		{h, `{"name":"a","name":"b","remote":"192.0.2.1:80","remote":""}`},
		{h, `{"name":"demo","name":null,"remote":null,"scheme":null}`},
		{h, `{"remote":"192.0.2.1:00080"}`},
		{h, `{"remote":"[fe80::1%25eth0]:80"}`},
		{h, `{"name":"é"}`},
		{h, `{"name":"` + "\xff" + `"}`},
		{h, `{"scheme":"HTTP"}`},
		{h, `{}`},
		{h, `null`},
		{h, `{"_name":"x","na-me":"y"}`},
		{h, `{"ſcheme":"https"}`},
		{h, `{"é":1,"name":"demo"}`},
		{h, `{"remote":"192.0.2.1:80"}`}, // cached for the rows below
		{h, `{"remote":"192.0.2.1:1","remote":"[2001:db8::1]:2"}`},
		{r, `{}`},
		{r, `{"error":null}`},
		{r, `{"ok":true,"error":{"code":9,"message":"refused","extra":1}}`},
		{r, `{"error":{"code":1},"error":{"message":"merged"}}`},
		{r, `{"Error":{"code":8}}`},
		{r, ` {"later":[{"a":"b"}]} `},
		{proto.TypeError, `{"code":9,"message":"refused"}`},
		// Rejected.
		{h, ``},
		{h, `   `},
		{h, `{`},
		{h, `{"name":"demo"`},
		{h, `{"name":"demo"}}`},
		{h, `{"name":"demo"} x`},
		{h, `{"name":"demo"}{}`},
		{h, `{"name":"demo",}`},
		{h, `{"name" "demo"}`},
		{h, `{name:"demo"}`},
		{h, `{"name":'demo'}`},
		{h, `{"name":"de` + "\n" + `mo"}`},
		{h, `{"name":"\x"}`},
		{h, `{"name":1}`},
		{h, `{"name":["demo"]}`},
		{h, `{"name":"demo`},
		{h, `{"scheme":5}`},
		{h, `{"remote":5}`},
		{h, `{"remote":"192.0.2.1"}`},
		{h, `{"remote":"192.0.2.1:65536"}`},
		{h, `{"remote":"192.0.2.1:-1"}`},
		{h, `{"remote":"192.0.2.1:+1"}`},
		{h, `{"remote":"192.0.2.1:"}`},
		{h, `{"remote":"192.0.2.1:1x"}`},
		{h, `{"remote":"192.0.2.1:99999999999999999999999"}`},
		{h, `{"remote":"[2001:db8::1]:65536"}`},
		{h, `{"remote":"[2001:db8::1]:"}`},
		{h, `{"remote":"[192.0.2.1]:80"}`},
		{h, `{"remote":"::1:80"}`},
		{h, `{"remote":"example.com:80"}`},
		{h, `{"remote":4321}`},
		{h, `{"x":01}`},
		{h, `{"x":1.}`},
		{h, `{"x":.5}`},
		{h, `{"x":1e}`},
		{h, `{"x":-}`},
		{h, `{"x":tru}`},
		{h, `{"x":truex}`},
		{h, `{"x":[1,]}`},
		{h, `{"x":{"a"}}`},
		{h, `{"x":` + strings.Repeat("[", 20) + strings.Repeat("]", 20) + `}`},
		{h, `{"x":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`},
		{h, `[]`},
		{h, `"demo"`},
		{r, `{"error":{"code":"9"}}`},
		{r, `{"error":5}`},
		{r, `null`},
		{r, `[]`},
		{r, `{} {}`},
		{proto.TypeError, `{"code":"x"}`},
		// Other types: ReadAs complains about the type (or the decoding).
		{proto.TypeGoodbye, `{}`},
		{proto.TypeHello, `{"version":"x"}`},
		{proto.TypeStreamReset, `{"stream":7}`},
		{h + 100, `{}`},
	} {
		for _, data := range [][]byte{frame(tc.typ, tc.body), frame(tc.typ, tc.body)[:5+len(tc.body)/2]} {
			compareRead(t, &c, data)
		}
	}
	compareRead(t, &c, []byte{byte(proto.TypeStreamHeader), 0, 1, 0, 1}) // too large
	compareRead(t, &c, nil)
	compareRead(t, &c, []byte{byte(proto.TypeStreamHeader), 0, 0})
}

// compareRead reads data with c and with ReadAs, as a header and as a
// reply, and fails if the two differ in any way. Each read is done twice,
// the second time from c's caches.
func compareRead(t testing.TB, c *proto.StreamCodec, data []byte) {
	t.Helper()
	for range 2 {
		wr := bytes.NewReader(data)
		want, werr := proto.ReadAs[*proto.StreamHeader](wr)
		gr := bytes.NewReader(data)
		var got proto.StreamHeader
		gerr := c.ReadStreamHeader(gr, &got)
		if msg := sameRead(want, werr, &got, gerr, wr.Len(), gr.Len()); msg != "" {
			t.Fatalf("frame %q as a stream header: %s", data, msg)
		}
	}
	for range 2 {
		wr := bytes.NewReader(data)
		want, werr := proto.ReadAs[*proto.StreamReply](wr)
		gr := bytes.NewReader(data)
		var got proto.StreamReply
		gerr := c.ReadStreamReply(gr, &got)
		if msg := sameRead(want, werr, &got, gerr, wr.Len(), gr.Len()); msg != "" {
			t.Fatalf("frame %q as a stream reply: %s", data, msg)
		}
	}
}

// sameRead describes how the codec's read (got, gerr, gleft bytes left)
// differs from ReadAs's, or returns "".
func sameRead[M any](want *M, werr error, got *M, gerr error, wleft, gleft int) string {
	if wleft != gleft {
		return fmt.Sprintf("codec left %d bytes unread, ReadAs %d", gleft, wleft)
	}
	if (werr == nil) != (gerr == nil) || werr != nil && (werr.Error() != gerr.Error() || fmt.Sprintf("%T", werr) != fmt.Sprintf("%T", gerr)) {
		return fmt.Sprintf("codec: %+v, %#v\nReadAs: %+v, %#v", *got, gerr, want, werr)
	}
	if werr != nil {
		var zero M
		if !reflect.DeepEqual(*got, zero) {
			return fmt.Sprintf("codec failed (%v) but left %+v", gerr, *got)
		}
		return ""
	}
	if !reflect.DeepEqual(*got, *want) {
		return fmt.Sprintf("codec read %+v, ReadAs %+v", *got, *want)
	}
	return ""
}

// TestStreamCodecCaches reads more names and addresses than the codec
// keeps, so the caches fill and are cleared, and checks every value.
func TestStreamCodecCaches(t *testing.T) {
	var c proto.StreamCodec
	var buf bytes.Buffer
	for i := range 1000 {
		want := proto.StreamHeader{
			Name:   fmt.Sprintf("name-%d", i%100),
			Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 300 / 2)}), uint16(i)),
		}
		if i%3 == 0 {
			want.Remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 1, 0xd, 0xb8, 15: byte(i)}), uint16(i))
		}
		buf.Write(encode(t, &want))
		var got proto.StreamHeader
		if err := c.ReadStreamHeader(&buf, &got); err != nil || got != want {
			t.Fatalf("read %+v, %v; want %+v", got, err, want)
		}
	}
}

// TestStreamCodecAllocs checks the point of the codec: a warm codec writes
// and reads a header, and a reply, without allocating.
func TestStreamCodecAllocs(t *testing.T) {
	var c proto.StreamCodec
	var buf bytes.Buffer
	buf.Grow(256)
	for _, remote := range []string{"203.0.113.57:51234", "[2001:db8:1234:5678:9abc:def0:1234:5678]:51234", "[fe80::1%eth0]:1"} {
		h := proto.StreamHeader{Name: "brave-otter-42", Remote: netip.MustParseAddrPort(remote), Scheme: "https"}
		var got proto.StreamHeader
		allocs := testing.AllocsPerRun(100, func() {
			buf.Reset()
			if err := c.WriteStreamHeader(&buf, &h); err != nil {
				t.Fatal(err)
			}
			if err := c.ReadStreamHeader(&buf, &got); err != nil || got != h {
				t.Fatalf("read %+v, %v; want %+v", got, err, h)
			}
		})
		if allocs != 0 {
			t.Errorf("header with remote %s: %v allocations per write and read, want 0", remote, allocs)
		}
	}
	var got proto.StreamReply
	allocs := testing.AllocsPerRun(100, func() {
		buf.Reset()
		if err := c.WriteStreamReply(&buf, &proto.StreamReply{}); err != nil {
			t.Fatal(err)
		}
		if err := c.ReadStreamReply(&buf, &got); err != nil || got.Error != nil {
			t.Fatalf("read %+v, %v", got, err)
		}
	})
	if allocs != 0 {
		t.Errorf("reply: %v allocations per write and read, want 0", allocs)
	}
}

// FuzzStreamCodecRead compares the codec's reads with ReadAs's on
// arbitrary bytes, and a header or reply they accept is written by the
// codec exactly as WriteMessage writes it.
func FuzzStreamCodecRead(f *testing.F) {
	for _, h := range codecHeaders() {
		f.Add(encode(f, &h))
	}
	for _, r := range codecReplies() {
		f.Add(encode(f, &r))
	}
	f.Add(frame(proto.TypeStreamHeader, `{"x":[{"y":-1.5e3}],"NAME":"a","remote":"[::1%a]:01"}`))
	f.Add(frame(proto.TypeStreamReply, `{"z":null}`))
	f.Add(frame(proto.TypeError, `{"code":9}`))

	warm := encode(f, &proto.StreamHeader{Name: "demo", Remote: netip.MustParseAddrPort("192.0.2.1:1")})
	warm = append(warm, encode(f, &proto.StreamHeader{Name: "zone", Remote: netip.MustParseAddrPort("[fe80::1%a]:1")})...)

	f.Fuzz(func(t *testing.T, data []byte) {
		// A codec that has seen a few names and addresses, so that reads
		// of those go through its caches.
		var c proto.StreamCodec
		for r := bytes.NewReader(warm); r.Len() > 0; {
			if err := c.ReadStreamHeader(r, new(proto.StreamHeader)); err != nil {
				t.Fatal(err)
			}
		}
		compareRead(t, &c, data)
		if h, err := proto.ReadAs[*proto.StreamHeader](bytes.NewReader(data)); err == nil {
			var buf bytes.Buffer
			if err := c.WriteStreamHeader(&buf, h); err != nil || !bytes.Equal(buf.Bytes(), encode(t, h)) {
				t.Fatalf("WriteStreamHeader(%+v) = %q, %v; WriteMessage wrote %q", *h, buf.Bytes(), err, encode(t, h))
			}
		}
		if r, err := proto.ReadAs[*proto.StreamReply](bytes.NewReader(data)); err == nil {
			var buf bytes.Buffer
			if err := c.WriteStreamReply(&buf, r); err != nil || !bytes.Equal(buf.Bytes(), encode(t, r)) {
				t.Fatalf("WriteStreamReply(%+v) = %q, %v; WriteMessage wrote %q", *r, buf.Bytes(), err, encode(t, r))
			}
		}
	})
}

// FuzzStreamCodecWrite checks the codec's JSON string escaping against
// encoding/json's, through WriteMessage, on arbitrary strings.
func FuzzStreamCodecWrite(f *testing.F) {
	f.Add("demo", "192.0.2.1:4321", "https", 9, "refused")
	f.Add("<\u2028\xff\x00\"\\>", "[fe80::1%x\"<]:1", "\x7f\u2029", -1, "\xe2\x80")
	f.Fuzz(func(t *testing.T, name, remote, scheme string, code int, msg string) {
		var c proto.StreamCodec
		ap, _ := netip.ParseAddrPort(remote)
		h := proto.StreamHeader{Name: name, Remote: ap, Scheme: scheme}
		var buf bytes.Buffer
		err := c.WriteStreamHeader(&buf, &h)
		var want bytes.Buffer
		werr := proto.WriteMessage(&want, &h)
		if (err == nil) != (werr == nil) || err != nil && err.Error() != werr.Error() || !bytes.Equal(buf.Bytes(), want.Bytes()) {
			t.Fatalf("WriteStreamHeader(%+v) = %q, %v; WriteMessage: %q, %v", h, buf.Bytes(), err, want.Bytes(), werr)
		}
		r := proto.StreamReply{Error: &proto.Error{Code: proto.Code(code), Message: msg}}
		buf.Reset()
		want.Reset()
		err = c.WriteStreamReply(&buf, &r)
		werr = proto.WriteMessage(&want, &r)
		if (err == nil) != (werr == nil) || err != nil && err.Error() != werr.Error() || !bytes.Equal(buf.Bytes(), want.Bytes()) {
			t.Fatalf("WriteStreamReply(%+v) = %q, %v; WriteMessage: %q, %v", r, buf.Bytes(), err, want.Bytes(), werr)
		}
	})
}

var benchHeaders = []struct {
	name string
	h    proto.StreamHeader
}{
	{"ipv4", proto.StreamHeader{Name: "brave-otter-42", Remote: netip.MustParseAddrPort("203.0.113.57:51234"), Scheme: "https"}},
	{"ipv6", proto.StreamHeader{Name: "brave-otter-42", Remote: netip.MustParseAddrPort("[2001:db8:1234:5678:9abc:def0:1234:5678]:51234"), Scheme: "https"}},
}

// BenchmarkStreamHeaderCodec writes and reads one stream header with a
// StreamCodec, as the relay and the agent do for every visitor connection.
func BenchmarkStreamHeaderCodec(b *testing.B) {
	for _, bh := range benchHeaders {
		b.Run(bh.name, func(b *testing.B) {
			b.ReportAllocs()
			var c proto.StreamCodec
			var buf bytes.Buffer
			var got proto.StreamHeader
			for b.Loop() {
				buf.Reset()
				c.WriteStreamHeader(&buf, &bh.h)
				if err := c.ReadStreamHeader(&buf, &got); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStreamHeaderJSON is the same through WriteMessage and ReadAs,
// for comparison.
func BenchmarkStreamHeaderJSON(b *testing.B) {
	for _, bh := range benchHeaders {
		b.Run(bh.name, func(b *testing.B) {
			b.ReportAllocs()
			var buf bytes.Buffer
			for b.Loop() {
				buf.Reset()
				proto.WriteMessage(&buf, &bh.h)
				if _, err := proto.ReadAs[*proto.StreamHeader](&buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStreamReplyCodec writes and reads an OK stream reply with a
// StreamCodec.
func BenchmarkStreamReplyCodec(b *testing.B) {
	b.ReportAllocs()
	var c proto.StreamCodec
	var buf bytes.Buffer
	var got proto.StreamReply
	for b.Loop() {
		buf.Reset()
		c.WriteStreamReply(&buf, &proto.StreamReply{})
		if err := c.ReadStreamReply(&buf, &got); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStreamReplyJSON is the same through WriteMessage and ReadAs.
func BenchmarkStreamReplyJSON(b *testing.B) {
	b.ReportAllocs()
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		proto.WriteMessage(&buf, &proto.StreamReply{})
		if _, err := proto.ReadAs[*proto.StreamReply](&buf); err != nil {
			b.Fatal(err)
		}
	}
}
