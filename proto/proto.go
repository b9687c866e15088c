// Package proto is the wire contract between a tunnel relay and its agents.
//
// The protocol flow, in brief (SPEC.md has the full text):
//
//  1. The agent opens one TCP (or TLS) connection to the relay's public port and
//     sends an HTTP/1.1 "GET /_tunnel/connect" with "Upgrade: tunnel/1". The
//     relay answers "101 Switching Protocols" and both sides run a yamux session
//     on the connection; the relay is the yamux server.
//  2. The agent opens the first stream, the control stream, and writes a Hello.
//     The relay answers with a Welcome (the names it granted) or an Error
//     (a code and one human sentence) and, on Error, closes the session.
//  3. The control stream stays open. The relay sends Notices (draining) and, if
//     the agent asked for them, Events (one per proxied request). The agent sends
//     Goodbye before a deliberate shutdown so the relay frees its names at once.
//  4. For every visitor connection the relay opens a stream and writes a
//     StreamHeader. The agent dials the local target of that name and writes a
//     StreamReply; if it is OK, both ends copy bytes until either side is done.
//
// Every message is a frame: one type byte, a 4-byte big-endian length, then a
// JSON object of that length. Frames are at most MaxMessageSize bytes of
// payload, on write and on read. Message type numbers are never reused.
//
// This package uses the standard library only.
package proto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Version is the protocol version an agent sends in Hello.
//
// Changelog:
//   - 1: first version: hello / welcome / error / notice / goodbye / event on
//     the control stream; stream header and stream reply on data streams.
//     Added compatibly: stream-reset (9), which an older peer ignores;
//     TunnelRequest.HostHeader, which a relay that honours it echoes in
//     Granted.HostHeader.
const Version = 1

// MinVersion is the oldest agent protocol version this code accepts.
const MinVersion = 1

// UpgradeProtocol is the value of the Upgrade header of the control connection.
const UpgradeProtocol = "tunnel/1"

// ConnectPath is the path on the relay's public port where agents connect.
const ConnectPath = "/_tunnel/connect"

// MaxMessageSize is the largest payload of one frame, in bytes.
const MaxMessageSize = 64 << 10

// headerLen is the size of a frame header: type (1) + length (4).
const headerLen = 5

// Type identifies the kind of a frame. Numbers are never reused.
type Type uint8

// Message types.
const (
	TypeHello        Type = 1 // agent → relay, first frame on the control stream
	TypeWelcome      Type = 2 // relay → agent, answer to Hello
	TypeError        Type = 3 // either way: a refusal, then the sender closes
	TypeNotice       Type = 4 // relay → agent, on the control stream
	TypeGoodbye      Type = 5 // agent → relay: release my names now
	TypeEvent        Type = 6 // relay → agent: one proxied request happened
	TypeStreamHeader Type = 7 // relay → agent, first frame of a data stream
	TypeStreamReply  Type = 8 // agent → relay, answer to StreamHeader
	TypeStreamReset  Type = 9 // either way, on the control stream: abort a data stream
)

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "hello"
	case TypeWelcome:
		return "welcome"
	case TypeError:
		return "error"
	case TypeNotice:
		return "notice"
	case TypeGoodbye:
		return "goodbye"
	case TypeEvent:
		return "event"
	case TypeStreamHeader:
		return "stream-header"
	case TypeStreamReply:
		return "stream-reply"
	case TypeStreamReset:
		return "stream-reset"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Message is implemented by every message type of this package.
type Message interface {
	Type() Type
}

// Hello is the agent's first message on the control stream.
type Hello struct {
	Version int    `json:"version"`
	Client  string `json:"client,omitempty"` // e.g. "tunnel/0.1.0"
	// Tunnels lists the names the agent asks for; an empty Name asks the relay
	// to pick a random one.
	Tunnels []TunnelRequest `json:"tunnels"`
	// Secret is the reconnect secret: the one an earlier Welcome gave, or
	// one the agent made (16 to 128 characters; an agent sends its own
	// from the first Hello, so that names held after a first handshake
	// whose Welcome was lost are still its to reclaim). It lets the agent
	// reclaim names the relay holds for it after a disconnect. Empty: the
	// relay makes one.
	Secret string `json:"secret,omitempty"`
	// Events asks the relay to send an Event per proxied request.
	Events bool `json:"events,omitempty"`
}

// TunnelRequest asks for one public name.
type TunnelRequest struct {
	Name string `json:"name,omitempty"`
	// Access holds the owner's rules for visitors of this tunnel, enforced
	// by the relay before anything reaches the agent.
	Access *Access `json:"access,omitempty"`
	// HostHeader, if not empty, is the Host header the relay writes on the
	// requests it forwards to this tunnel, WebSocket upgrades included,
	// instead of the visitor's (which it sends as X-Forwarded-Host): a host
	// or host:port, for local servers that answer only to their own name.
	// A relay that honours it echoes it in Granted.HostHeader.
	HostHeader string `json:"host_header,omitempty"`
}

// Access restricts who may visit a tunnel. The zero value allows everyone.
type Access struct {
	// BasicAuth, if not empty, requires HTTP Basic credentials matching one
	// entry.
	BasicAuth []Credential `json:"basic_auth,omitempty"`
	// AllowIPs, if not empty, admits only visitors whose address is in one
	// of these CIDR prefixes (e.g. "203.0.113.0/24", "2001:db8::/32").
	AllowIPs []string `json:"allow_ips,omitempty"`
	// DenyIPs refuses visitors whose address is in one of these prefixes;
	// it wins over AllowIPs.
	DenyIPs []string `json:"deny_ips,omitempty"`
}

// Credential is one user of a tunnel's Basic auth. The password travels
// only as its SHA-256, hex encoded.
type Credential struct {
	User           string `json:"user"`
	PasswordSHA256 string `json:"password_sha256"`
}

// Welcome grants the names of a Hello, all of them or none.
type Welcome struct {
	Tunnels []Granted `json:"tunnels"`
	// Secret is the reconnect secret to present in the next Hello.
	Secret string `json:"secret"`
	// Grace is how long the relay holds the names after the connection drops.
	Grace time.Duration `json:"grace"`
	// Server names the relay software, e.g. "tunnel/0.1.0".
	Server string `json:"server,omitempty"`
}

// Granted is one name the relay gave to the agent.
type Granted struct {
	Name string `json:"name"`
	URL  string `json:"url"` // e.g. "http://demo.localhost:8000"
	// CertPending: the relay is obtaining the name's certificate; a Notice
	// cert-ready or cert-failed follows.
	CertPending bool `json:"cert_pending,omitempty"`
	// HostHeader echoes TunnelRequest.HostHeader when the relay rewrites
	// the Host header as asked; a relay that predates the field leaves it
	// empty, and the agent then knows its request was ignored.
	HostHeader string `json:"host_header,omitempty"`
}

// Notice is an informational message from the relay on the control stream.
type Notice struct {
	Kind    NoticeKind `json:"kind"`
	Name    string     `json:"name,omitempty"` // the tunnel it concerns, if any
	Message string     `json:"message,omitempty"`
}

// NoticeKind says what a Notice is about.
type NoticeKind string

// Notice kinds.
const (
	// NoticeDraining: the relay is shutting down; in-flight requests finish,
	// then the session closes and the agent should reconnect.
	NoticeDraining NoticeKind = "draining"
	// NoticeCertReady: the certificate for Name is ready; its https URL works.
	NoticeCertReady NoticeKind = "cert-ready"
	// NoticeCertFailed: the CA did not issue Name's certificate; Message
	// says why. The relay tries again after a cool-down.
	NoticeCertFailed NoticeKind = "cert-failed"
)

// Goodbye tells the relay to release the agent's names now instead of holding
// them for the grace period.
type Goodbye struct{}

// Event describes one request the relay proxied to the agent.
type Event struct {
	Name      string        `json:"name"`
	Time      time.Time     `json:"time"`
	Remote    string        `json:"remote,omitempty"`
	Method    string        `json:"method"`
	Path      string        `json:"path"`
	Status    int           `json:"status"`
	Duration  time.Duration `json:"duration"`
	BytesIn   int64         `json:"bytes_in"`  // request body bytes from the visitor
	BytesOut  int64         `json:"bytes_out"` // response body bytes to the visitor
	WebSocket bool          `json:"websocket,omitempty"`
}

// StreamHeader is the first frame the relay writes on every data stream.
type StreamHeader struct {
	Name string `json:"name"` // which tunnel the visitor asked for
	// Remote is the visitor's address; it travels as text, "ip:port", and
	// is omitted when zero. StreamCodec reads and writes the same bytes.
	Remote netip.AddrPort `json:"remote,omitzero"`
	Scheme string         `json:"scheme,omitempty"` // "http" or "https", as the visitor used
}

// StreamReply is the agent's answer to a StreamHeader. When Error is set the
// agent closes the stream after writing it.
type StreamReply struct {
	Error *Error `json:"error,omitempty"`
}

// StreamReset tells the peer that the sender closed a data stream before
// the peer finished writing to it: the peer should abort its end (and the
// connection joined to it) at once instead of waiting for a window that
// will never open.
type StreamReset struct {
	Stream uint32 `json:"stream"` // the yamux stream ID
}

// Type implementations.
func (*Hello) Type() Type        { return TypeHello }
func (*Welcome) Type() Type      { return TypeWelcome }
func (*Error) Type() Type        { return TypeError }
func (*Notice) Type() Type       { return TypeNotice }
func (*Goodbye) Type() Type      { return TypeGoodbye }
func (*Event) Type() Type        { return TypeEvent }
func (*StreamHeader) Type() Type { return TypeStreamHeader }
func (*StreamReply) Type() Type  { return TypeStreamReply }
func (*StreamReset) Type() Type  { return TypeStreamReset }

// ErrTooLarge is returned for a frame whose payload exceeds MaxMessageSize.
var ErrTooLarge = errors.New("proto: message larger than MaxMessageSize")

// ErrUnknownType is returned for a frame of a type this version does not know.
var ErrUnknownType = errors.New("proto: unknown message type")

// WriteMessage writes m as one frame.
func WriteMessage(w io.Writer, m Message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("proto: encode %v: %w", m.Type(), err)
	}
	if len(body) > MaxMessageSize {
		return fmt.Errorf("proto: encode %v: %w", m.Type(), ErrTooLarge)
	}
	frame := make([]byte, headerLen+len(body))
	frame[0] = byte(m.Type())
	binary.BigEndian.PutUint32(frame[1:headerLen], uint32(len(body)))
	copy(frame[headerLen:], body)
	_, err = w.Write(frame)
	return err
}

// ReadMessage reads one frame. It never reads past the end of the frame, so
// the bytes that follow stay in r. A clean end of input before the first byte
// of a frame returns io.EOF; a frame cut short returns io.ErrUnexpectedEOF.
func ReadMessage(r io.Reader) (Message, error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxMessageSize {
		return nil, ErrTooLarge
	}
	m := newMessage(Type(hdr[0]))
	if m == nil {
		// Consume the frame, so the caller may skip it and read on: new
		// message types are added compatibly.
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w %d", ErrUnknownType, hdr[0])
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	// json.Unmarshal, unlike a json.Decoder, rejects anything but white space
	// after the value (a Decoder's More misses a trailing '}' or ']').
	if err := json.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("proto: decode %v: %w", m.Type(), err)
	}
	return m, nil
}

func newMessage(t Type) Message {
	switch t {
	case TypeHello:
		return new(Hello)
	case TypeWelcome:
		return new(Welcome)
	case TypeError:
		return new(Error)
	case TypeNotice:
		return new(Notice)
	case TypeGoodbye:
		return new(Goodbye)
	case TypeEvent:
		return new(Event)
	case TypeStreamHeader:
		return new(StreamHeader)
	case TypeStreamReply:
		return new(StreamReply)
	case TypeStreamReset:
		return new(StreamReset)
	}
	return nil
}

// ReadAs reads one frame and requires it to be of type T. An Error frame is
// returned as the error, so callers can branch on its code with errors.Is.
func ReadAs[T Message](r io.Reader) (T, error) {
	var zero T
	m, err := ReadMessage(r)
	if err != nil {
		return zero, err
	}
	if t, ok := m.(T); ok {
		return t, nil
	}
	if e, ok := m.(*Error); ok {
		return zero, e
	}
	return zero, fmt.Errorf("proto: expected %v, got %v", zero.Type(), m.Type())
}
