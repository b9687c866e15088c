package proto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
)

// FuzzReadMessage feeds arbitrary bytes to ReadMessage. It must never panic,
// never read more than one maximal frame, and a message it accepts must come
// back unchanged from WriteMessage and ReadMessage again.
func FuzzReadMessage(f *testing.F) {
	for _, m := range sampleMessages() {
		var buf bytes.Buffer
		if err := proto.WriteMessage(&buf, m); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte{})
	f.Add(frame(proto.TypeGoodbye, `{}`))
	f.Add(frame(proto.TypeHello, `{"version":1,"tunnels":[null,{}]}`))
	f.Add(frame(proto.TypeEvent, `{"time":"2024-01-02T03:04:05.5+01:00"}`))
	f.Add(frame(proto.TypeStreamReply, `{"error":{"code":9}}`))
	f.Add(frame(proto.TypeNotice, `{}}`))
	f.Add(frame(9, `{}`))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff})

	f.Fuzz(func(t *testing.T, data []byte) {
		r := &countingReader{r: bytes.NewReader(data)}
		m, err := proto.ReadMessage(r)
		if r.n > 5+proto.MaxMessageSize {
			t.Fatalf("ReadMessage read %d bytes, more than one maximal frame", r.n)
		}
		if errors.Is(err, proto.ErrTooLarge) && r.n != 5 {
			t.Fatalf("oversized frame: read %d bytes, want only the header", r.n)
		}
		if err != nil {
			if m != nil {
				t.Fatalf("ReadMessage returned both %#v and %v", m, err)
			}
			return
		}

		var buf bytes.Buffer
		if err := proto.WriteMessage(&buf, m); err != nil {
			if errors.Is(err, proto.ErrTooLarge) {
				// JSON escaping can make the re-encoding longer than the
				// input (e.g. '<' becomes \u003c); the limit still holds.
				return
			}
			t.Fatalf("WriteMessage of a decoded %v: %v", m.Type(), err)
		}
		first := bytes.Clone(buf.Bytes())
		m2, err := proto.ReadMessage(&buf)
		if err != nil {
			t.Fatalf("ReadMessage of re-encoded %v: %v\nframe: %q", m.Type(), err, first)
		}
		if !reflect.DeepEqual(normalize(m), normalize(m2)) {
			t.Fatalf("round trip changed the message:\nfirst  %#v\nsecond %#v", m, m2)
		}
		if err := proto.WriteMessage(&buf, m2); err != nil {
			t.Fatalf("WriteMessage of the round-tripped %v: %v", m.Type(), err)
		}
		if !bytes.Equal(first, buf.Bytes()) {
			t.Fatalf("encoding is not stable:\nfirst  %q\nsecond %q", first, buf.Bytes())
		}
	})
}

// normalize makes Event times comparable with DeepEqual: the same instant
// may be parsed into different *time.Location values, and the stable
// encoding (checked separately) already covers the offset.
func normalize(m proto.Message) proto.Message {
	if e, ok := m.(*proto.Event); ok {
		c := *e
		c.Time = time.Unix(0, e.Time.UnixNano()).UTC()
		if e.Time.IsZero() {
			c.Time = time.Time{}
		}
		return &c
	}
	return m
}

// dnsLabel is RFC 1123's host label, lower-case only.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// FuzzValidateName checks ValidateName against an independent statement of
// the rules: a name is accepted exactly when it is a lower-case DNS label,
// not punycode and not reserved; a refusal is always a name-invalid error.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"demo", "brave-otter-42", "", "-a", "a-", "A", "www", "xn--abc", "a.b", "é",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := proto.ValidateName(name)
		want := dnsLabel.MatchString(name) && !strings.HasPrefix(name, "xn--") && !proto.IsReserved(name)
		if want != (err == nil) {
			t.Fatalf("ValidateName(%q) = %v, but the DNS-label rules say valid=%v", name, err, want)
		}
		if err != nil && !errors.Is(err, proto.ErrNameInvalid) {
			t.Fatalf("ValidateName(%q) = %v, not an ErrNameInvalid", name, err)
		}
	})
}

// TestFrameHelper keeps the hand-made frames of these tests honest.
func TestFrameHelper(t *testing.T) {
	var buf bytes.Buffer
	proto.WriteMessage(&buf, &proto.Goodbye{})
	if want := frame(proto.TypeGoodbye, `{}`); !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteMessage(Goodbye) = %q, frame() = %q", buf.Bytes(), want)
	}
	if binary.BigEndian.Uint32(buf.Bytes()[1:5]) != 2 {
		t.Fatal("length field is not big-endian")
	}
}
