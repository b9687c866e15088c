package proto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/proto"
)

// sampleMessages holds one filled-in value of every message type, so a new
// type that is missing here shows up in TestEveryTypeHasASample.
func sampleMessages() []proto.Message {
	return []proto.Message{
		&proto.Hello{
			Version: proto.Version,
			Client:  "tunnel/0.1.0",
			Tunnels: []proto.TunnelRequest{{Name: "demo"}, {}},
			Secret:  "s3cret",
			Events:  true,
		},
		&proto.Welcome{
			Tunnels: []proto.Granted{{Name: "demo", URL: "http://demo.localhost:8000"}},
			Secret:  "next-secret",
			Grace:   time.Minute,
			Server:  "tunnel/0.1.0",
		},
		proto.Errorf(proto.CodeNameTaken, "name %q is taken", "demo"),
		&proto.Notice{Kind: proto.NoticeDraining, Message: "relay restarting"},
		&proto.Goodbye{},
		&proto.Event{
			Name:      "demo",
			Time:      time.Date(2024, 5, 6, 7, 8, 9, 10, time.UTC),
			Remote:    "192.0.2.1:4321",
			Method:    "GET",
			Path:      "/ws",
			Status:    101,
			Duration:  1500 * time.Millisecond,
			BytesIn:   12,
			BytesOut:  34,
			WebSocket: true,
		},
		&proto.StreamHeader{Name: "demo", Remote: netip.MustParseAddrPort("192.0.2.1:4321"), Scheme: "https"},
		&proto.StreamReply{},
		&proto.StreamReply{Error: proto.Errorf(proto.CodeLocalDial, "connection refused")},
		&proto.StreamReset{Stream: 7},
	}
}

// frame builds a raw frame by hand, independent of WriteMessage.
func frame(t proto.Type, body string) []byte {
	b := make([]byte, 5+len(body))
	b[0] = byte(t)
	binary.BigEndian.PutUint32(b[1:5], uint32(len(body)))
	copy(b[5:], body)
	return b
}

// TestRoundTrip checks that every message type survives WriteMessage then
// ReadMessage unchanged, and that the frame header carries its type number
// and the payload length.
func TestRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		t.Run(m.Type().String(), func(t *testing.T) {
			var buf bytes.Buffer
			if err := proto.WriteMessage(&buf, m); err != nil {
				t.Fatalf("WriteMessage: %v", err)
			}
			raw := buf.Bytes()
			if proto.Type(raw[0]) != m.Type() {
				t.Errorf("type byte = %d, want %d", raw[0], m.Type())
			}
			if n := binary.BigEndian.Uint32(raw[1:5]); int(n) != len(raw)-5 {
				t.Errorf("length field = %d, payload is %d bytes", n, len(raw)-5)
			}
			got, err := proto.ReadMessage(&buf)
			if err != nil {
				t.Fatalf("ReadMessage: %v", err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Errorf("round trip changed the message:\n got %#v\nwant %#v", got, m)
			}
			if buf.Len() != 0 {
				t.Errorf("%d bytes left unread", buf.Len())
			}
		})
	}
}

// TestEveryTypeHasASample guards TestRoundTrip: every known type number
// (1..9 today) must appear among the samples.
func TestEveryTypeHasASample(t *testing.T) {
	seen := map[proto.Type]bool{}
	for _, m := range sampleMessages() {
		seen[m.Type()] = true
	}
	for ty := proto.Type(1); ty <= proto.TypeStreamReset; ty++ {
		if !seen[ty] {
			t.Errorf("no sample message of type %v", ty)
		}
	}
}

// TestReadMessageStopsAtFrameEnd checks that ReadMessage leaves the bytes
// after a frame in the reader: the data stream relies on this, since raw
// bytes follow the StreamReply.
func TestReadMessageStopsAtFrameEnd(t *testing.T) {
	var buf bytes.Buffer
	proto.WriteMessage(&buf, &proto.StreamReply{})
	buf.WriteString("raw bytes")
	if _, err := proto.ReadMessage(&buf); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "raw bytes" {
		t.Errorf("after the frame the reader holds %q, want %q", got, "raw bytes")
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestReadMessageTooLarge checks that a frame announcing more than
// MaxMessageSize is refused with ErrTooLarge after the 5-byte header, before
// any of the body is read or allocated.
func TestReadMessageTooLarge(t *testing.T) {
	for _, n := range []uint32{proto.MaxMessageSize + 1, 1 << 31, 0xffffffff} {
		hdr := make([]byte, 5)
		hdr[0] = byte(proto.TypeHello)
		binary.BigEndian.PutUint32(hdr[1:], n)
		// The body is there, so a reader that went on would find it.
		r := &countingReader{r: io.MultiReader(bytes.NewReader(hdr), strings.NewReader(strings.Repeat("x", 1024)))}
		_, err := proto.ReadMessage(r)
		if !errors.Is(err, proto.ErrTooLarge) {
			t.Errorf("length %d: err = %v, want ErrTooLarge", n, err)
		}
		if r.n != 5 {
			t.Errorf("length %d: read %d bytes, want only the 5-byte header", n, r.n)
		}
	}
}

// TestReadMessageTooLargeAllocatesLittle checks that a huge announced length
// costs the reader next to nothing in memory.
func TestReadMessageTooLargeAllocatesLittle(t *testing.T) {
	hdr := frame(proto.TypeHello, "")
	binary.BigEndian.PutUint32(hdr[1:], 0xffffffff)
	const runs = 100
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		proto.ReadMessage(bytes.NewReader(hdr))
	}
	runtime.ReadMemStats(&after)
	if perRun := (after.TotalAlloc - before.TotalAlloc) / runs; perRun > 1024 {
		t.Errorf("ReadMessage allocated %d bytes per oversized frame, want under 1 KiB", perRun)
	}
}

// TestReadMessageMaxSizeAccepted checks the limit is inclusive: a payload of
// exactly MaxMessageSize bytes is read.
func TestReadMessageMaxSizeAccepted(t *testing.T) {
	pad := proto.MaxMessageSize - len(`{"message":""}`)
	body := `{"message":"` + strings.Repeat("a", pad) + `"}`
	if len(body) != proto.MaxMessageSize {
		t.Fatalf("test bug: body is %d bytes", len(body))
	}
	m, err := proto.ReadMessage(bytes.NewReader(frame(proto.TypeError, body)))
	if err != nil {
		t.Fatalf("ReadMessage of a MaxMessageSize payload: %v", err)
	}
	if got := len(m.(*proto.Error).Message); got != pad {
		t.Errorf("message length = %d, want %d", got, pad)
	}
}

// TestReadMessageUnknownType checks that a type number this version does not
// know is an ErrUnknownType error (0 and 10 border the known range), and
// that the frame is consumed, so a reader can skip it and go on: a newer
// peer's new message types do not break an older one.
func TestReadMessageUnknownType(t *testing.T) {
	for _, ty := range []byte{0, 10, 200, 255} {
		r := bytes.NewReader(append(frame(proto.Type(ty), `{"new":"field"}`), frame(proto.TypeGoodbye, `{}`)...))
		_, err := proto.ReadMessage(r)
		if !errors.Is(err, proto.ErrUnknownType) {
			t.Errorf("type %d: err = %v, want ErrUnknownType", ty, err)
		}
		if m, err := proto.ReadMessage(r); err != nil || m.Type() != proto.TypeGoodbye {
			t.Errorf("type %d: the next frame reads as %v, %v", ty, m, err)
		}
	}
}

// TestReadMessageEOF checks the two kinds of end of input: io.EOF before a
// frame begins (a clean hang-up), io.ErrUnexpectedEOF inside a frame.
func TestReadMessageEOF(t *testing.T) {
	if _, err := proto.ReadMessage(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("empty input: err = %v, want io.EOF", err)
	}
	full := frame(proto.TypeNotice, `{"kind":"draining"}`)
	for cut := 1; cut < len(full); cut++ {
		_, err := proto.ReadMessage(bytes.NewReader(full[:cut]))
		if err != io.ErrUnexpectedEOF {
			t.Errorf("frame cut after %d of %d bytes: err = %v, want io.ErrUnexpectedEOF", cut, len(full), err)
		}
	}
}

// TestReadMessageBadPayload checks that a payload must be exactly one JSON
// value of the right shape: trailing data and malformed JSON are errors.
func TestReadMessageBadPayload(t *testing.T) {
	for _, body := range []string{
		`{}{}`,
		`{} {}`,
		`{}}`,
		`{}]`,
		`{}x`,
		`{"kind":"draining"},`,
		`{`,
		``,
		`[]`,
		`"draining"`,
		`{"kind":5}`,
	} {
		_, err := proto.ReadMessage(bytes.NewReader(frame(proto.TypeNotice, body)))
		if err == nil {
			t.Errorf("payload %q was accepted", body)
		}
	}
	// Surrounding white space is not data.
	if _, err := proto.ReadMessage(bytes.NewReader(frame(proto.TypeNotice, " {\"kind\":\"draining\"}\n"))); err != nil {
		t.Errorf("payload with white space: %v", err)
	}
}

// TestWriteMessageTooLarge checks that the writer enforces the same limit as
// the reader and writes nothing when the payload is too big.
func TestWriteMessageTooLarge(t *testing.T) {
	var buf bytes.Buffer
	err := proto.WriteMessage(&buf, &proto.Error{Code: proto.CodeInternal, Message: strings.Repeat("x", proto.MaxMessageSize)})
	if !errors.Is(err, proto.ErrTooLarge) {
		t.Errorf("err = %v, want ErrTooLarge", err)
	}
	if buf.Len() != 0 {
		t.Errorf("%d bytes written for a refused message", buf.Len())
	}
}

// TestReadAs checks the typed reader: the expected type is returned as is,
// an Error frame becomes the returned error (and matches its sentinel with
// errors.Is), and any other type is an error.
func TestReadAs(t *testing.T) {
	var buf bytes.Buffer
	proto.WriteMessage(&buf, &proto.Welcome{Secret: "x"})
	w, err := proto.ReadAs[*proto.Welcome](&buf)
	if err != nil || w.Secret != "x" {
		t.Fatalf("ReadAs[*Welcome] = %+v, %v", w, err)
	}

	buf.Reset()
	proto.WriteMessage(&buf, proto.Errorf(proto.CodeNameTaken, "demo is taken"))
	w, err = proto.ReadAs[*proto.Welcome](&buf)
	if w != nil {
		t.Errorf("ReadAs returned a message along with the error: %+v", w)
	}
	var perr *proto.Error
	if !errors.As(err, &perr) || perr.Message != "demo is taken" {
		t.Fatalf("err = %#v, want the *proto.Error that was sent", err)
	}
	if !errors.Is(err, proto.ErrNameTaken) {
		t.Errorf("errors.Is(err, ErrNameTaken) = false for %v", err)
	}
	if errors.Is(err, proto.ErrNameInvalid) {
		t.Errorf("errors.Is(err, ErrNameInvalid) = true for a name-taken error")
	}

	buf.Reset()
	proto.WriteMessage(&buf, &proto.Notice{Kind: proto.NoticeDraining})
	if _, err := proto.ReadAs[*proto.Welcome](&buf); err == nil || !strings.Contains(err.Error(), "expected welcome, got notice") {
		t.Errorf("wrong type: err = %v, want an 'expected welcome, got notice' error", err)
	}

	if _, err := proto.ReadAs[*proto.Welcome](bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("empty input: err = %v, want io.EOF", err)
	}
}

// TestErrorIs checks that errors.Is compares Errors by code only, also
// through wrapping.
func TestErrorIs(t *testing.T) {
	err := proto.Errorf(proto.CodeLocalDial, "dial 127.0.0.1:8080: refused")
	wrapped := errors.Join(errors.New("context"), err)
	if !errors.Is(wrapped, proto.ErrLocalDial) {
		t.Errorf("wrapped local-dial error does not match ErrLocalDial")
	}
	if errors.Is(err, proto.ErrInternal) {
		t.Errorf("local-dial error matches ErrInternal")
	}
	if errors.Is(err, io.EOF) {
		t.Errorf("local-dial error matches io.EOF")
	}
}

// TestErrorText checks that an Error reads as its sentence, or as its code
// name when it has none.
func TestErrorText(t *testing.T) {
	if got := proto.Errorf(proto.CodeVersion, "upgrade to %d", 2).Error(); got != "upgrade to 2" {
		t.Errorf("Error() = %q", got)
	}
	if got := proto.ErrNameTaken.Error(); got != "name-taken" {
		t.Errorf("ErrNameTaken.Error() = %q, want %q", got, "name-taken")
	}
	if got := proto.Code(99).String(); got != "code(99)" {
		t.Errorf("Code(99).String() = %q", got)
	}
}

// TestPermanent lists for each code whether retrying the same request can
// help; the agent's reconnect loop stops on permanent errors.
func TestPermanent(t *testing.T) {
	for _, tc := range []struct {
		code      proto.Code
		permanent bool
	}{
		{proto.CodeInternal, false},
		{proto.CodeBadRequest, true},
		{proto.CodeVersion, true},
		{proto.CodeUnauthorized, true},
		{proto.CodeNameInvalid, true},
		{proto.CodeNameTaken, true},
		{proto.CodeNameNotAllowed, true},
		{proto.CodeUnknownTunnel, false},
		{proto.CodeLocalDial, false},
		{proto.Code(0), false},
		{proto.Code(99), false},
	} {
		if got := (&proto.Error{Code: tc.code}).Permanent(); got != tc.permanent {
			t.Errorf("%v (%d): Permanent() = %v, want %v", tc.code, int(tc.code), got, tc.permanent)
		}
	}
}

// TestNumbersNeverChange pins the wire numbers of message types and error
// codes: they are the protocol, and a number is never reused for something
// else. Update SPEC.md with any addition.
func TestNumbersNeverChange(t *testing.T) {
	types := map[proto.Type]byte{
		proto.TypeHello: 1, proto.TypeWelcome: 2, proto.TypeError: 3, proto.TypeNotice: 4,
		proto.TypeGoodbye: 5, proto.TypeEvent: 6, proto.TypeStreamHeader: 7, proto.TypeStreamReply: 8,
		proto.TypeStreamReset: 9,
	}
	for ty, n := range types {
		if byte(ty) != n {
			t.Errorf("%v = %d, want %d", ty, byte(ty), n)
		}
	}
	codes := map[proto.Code]int{
		proto.CodeInternal: 1, proto.CodeBadRequest: 2, proto.CodeVersion: 3, proto.CodeUnauthorized: 4,
		proto.CodeNameInvalid: 5, proto.CodeNameTaken: 6, proto.CodeNameNotAllowed: 7,
		proto.CodeUnknownTunnel: 8, proto.CodeLocalDial: 9,
	}
	for c, n := range codes {
		if int(c) != n {
			t.Errorf("%v = %d, want %d", c, int(c), n)
		}
	}
	if proto.MaxMessageSize != 64<<10 {
		t.Errorf("MaxMessageSize = %d, want 64 KiB", proto.MaxMessageSize)
	}
}

// TestValidateName checks each naming rule: a broken rule gives a
// name-invalid error whose message names that rule.
func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		rule string // a piece of the error message; "" means valid
	}{
		{"demo", ""},
		{"a", ""},
		{"0", ""},
		{"brave-otter-42", ""},
		{"a--b", ""},
		{"x" + strings.Repeat("n", 62), ""},
		{"wwww", ""},
		{"api2", ""},
		{"", "empty"},
		{strings.Repeat("a", 64), "longer than 63"},
		{"-demo", "start or end with '-'"},
		{"demo-", "start or end with '-'"},
		{"-", "start or end with '-'"},
		{"Demo", "lower-case"},
		{"DEMO", "lower-case"},
		{"de_mo", "only letters a-z"},
		{"de.mo", "only letters a-z"},
		{"de mo", "only letters a-z"},
		{"démo", "only letters a-z"},
		{"demo\x00", "only letters a-z"},
		{"xn--bcher-kva", "punycode"},
		{"www", "reserved"},
		{"api", "reserved"},
		{"admin", "reserved"},
		{"localhost", "reserved"},
	} {
		err := proto.ValidateName(tc.name)
		if tc.rule == "" {
			if err != nil {
				t.Errorf("ValidateName(%q) = %v, want nil", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("ValidateName(%q) = nil, want an error about %q", tc.name, tc.rule)
			continue
		}
		if !errors.Is(err, proto.ErrNameInvalid) {
			t.Errorf("ValidateName(%q) = %v, not an ErrNameInvalid", tc.name, err)
		}
		if !strings.Contains(err.Error(), tc.rule) {
			t.Errorf("ValidateName(%q) = %q, want it to mention %q", tc.name, err, tc.rule)
		}
	}
}

// TestIsReserved checks the reserved list agrees with ValidateName.
func TestIsReserved(t *testing.T) {
	for _, name := range []string{"www", "api", "admin"} {
		if !proto.IsReserved(name) {
			t.Errorf("IsReserved(%q) = false", name)
		}
	}
	if proto.IsReserved("demo") {
		t.Errorf("IsReserved(%q) = true", "demo")
	}
}

// TestRandomName checks that random names are always valid and vary.
func TestRandomName(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		name := proto.RandomName()
		if err := proto.ValidateName(name); err != nil {
			t.Fatalf("RandomName() = %q, invalid: %v", name, err)
		}
		seen[name] = true
	}
	// 44 adjectives × 40 nouns × 90 numbers = 158400 names: 1000 draws
	// repeat only a few.
	if len(seen) < 900 {
		t.Errorf("only %d distinct names in 1000 draws", len(seen))
	}
}
