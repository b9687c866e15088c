package inspect

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"time"
	"unicode/utf8"
)

// Exchange is one HTTP request and its response as the agent saw them pass
// between the relay and the local server.
type Exchange struct {
	ID       int64     `json:"id"`
	Tunnel   string    `json:"tunnel"`           // the public name
	Local    string    `json:"local"`            // the local target, host:port
	Remote   string    `json:"remote,omitempty"` // the visitor, as the relay saw it
	Time     time.Time `json:"time"`             // first byte of the request
	Duration Duration  `json:"duration"`         // to the last byte of the response

	Method        string      `json:"method"`
	Path          string      `json:"path"` // the request target, e.g. /a?b=c
	Proto         string      `json:"proto"`
	Host          string      `json:"host"`
	RequestHeader http.Header `json:"request_headers"`
	RequestBody   Body        `json:"request_body"`

	Status         int         `json:"status"` // 0: no response seen
	StatusText     string      `json:"status_text,omitempty"`
	ResponseHeader http.Header `json:"response_headers,omitempty"`
	ResponseBody   Body        `json:"response_body"`

	// WebSocket is the ID of the WebSocket session the request opened.
	WebSocket int64 `json:"websocket,omitempty"`
	// ReplayOf is the ID of the exchange this one replayed.
	ReplayOf int64 `json:"replay_of,omitempty"`
	Replay   bool  `json:"replay,omitempty"`
	// Error says what went wrong: no response, capture stopped.
	Error string `json:"error,omitempty"`

	// localTLS is ConnInfo.TLS of the connection: how a replay reaches
	// Local.
	localTLS *tls.Config
}

// Body is a captured message body: its full size, and its first bytes up to
// the capture cap.
type Body struct {
	Size      int64  // bytes in the body (decoded from chunked)
	Data      []byte // the first bytes, at most the cap
	Truncated bool   // Data is shorter than Size
}

// MarshalJSON writes the body as text when it is UTF-8, else as base64.
// A truncated body is text also when the cap cut its last character, and
// says how many bytes were kept.
func (b Body) MarshalJSON() ([]byte, error) {
	v := struct {
		Size      int64  `json:"size"`
		Truncated bool   `json:"truncated,omitempty"`
		Kept      int    `json:"kept,omitempty"`
		Text      string `json:"text,omitempty"`
		Base64    []byte `json:"base64,omitempty"`
	}{Size: b.Size, Truncated: b.Truncated}
	if b.Truncated {
		v.Kept = len(b.Data)
	}
	if utf8.Valid(b.Data) {
		v.Text = string(b.Data)
	} else if s := validPrefix(b.Data); b.Truncated && s != "" {
		v.Text = s
	} else {
		v.Base64 = b.Data
	}
	return json.Marshal(v)
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (b *Body) UnmarshalJSON(p []byte) error {
	var v struct {
		Size      int64  `json:"size"`
		Truncated bool   `json:"truncated"`
		Text      string `json:"text"`
		Base64    []byte `json:"base64"`
	}
	if err := json.Unmarshal(p, &v); err != nil {
		return err
	}
	b.Size, b.Truncated, b.Data = v.Size, v.Truncated, v.Base64
	if v.Text != "" {
		b.Data = []byte(v.Text)
	}
	return nil
}

// Duration is a time.Duration that reads as milliseconds in JSON.
type Duration time.Duration

// MarshalJSON writes milliseconds with microsecond precision.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(float64(time.Duration(d).Microseconds()) / 1000)
}

// UnmarshalJSON reads milliseconds.
func (d *Duration) UnmarshalJSON(p []byte) error {
	var ms float64
	if err := json.Unmarshal(p, &ms); err != nil {
		return err
	}
	*d = Duration(ms * float64(time.Millisecond))
	return nil
}

// WebSocket is one WebSocket session: the upgrade, the frames both ways
// (the last MaxFrames of them), and how it closed.
type WebSocket struct {
	ID       int64     `json:"id"`
	Tunnel   string    `json:"tunnel"`
	Remote   string    `json:"remote,omitempty"`
	Path     string    `json:"path"`
	Request  int64     `json:"request"` // the Exchange of the upgrade
	Time     time.Time `json:"time"`    // when the 101 went out
	Open     bool      `json:"open"`
	Duration Duration  `json:"duration"` // until closed, or until now

	// In is visitor to local server, Out the other way. Messages count
	// complete data messages (a fragmented one once); bytes are the wire
	// bytes after the upgrade, frame headers included.
	MessagesIn  int64 `json:"messages_in"`
	MessagesOut int64 `json:"messages_out"`
	BytesIn     int64 `json:"bytes_in"`
	BytesOut    int64 `json:"bytes_out"`

	// CloseCode is the status code of the first close frame, or 1006 when
	// the connection ended without one (as browsers report it); 0 while
	// open. ClosedBy is "visitor", "server" or "" without a close frame.
	CloseCode   int    `json:"close_code,omitempty"`
	CloseReason string `json:"close_reason,omitempty"`
	ClosedBy    string `json:"closed_by,omitempty"`

	Frames        []Frame `json:"frames,omitempty"`
	FramesDropped int64   `json:"frames_dropped,omitempty"` // oldest frames forgotten
	Error         string  `json:"error,omitempty"`
}

// Frame is one WebSocket frame.
type Frame struct {
	Time    time.Time `json:"time"`
	Dir     string    `json:"dir"` // "in" (visitor → server) or "out"
	Opcode  int       `json:"opcode"`
	Op      string    `json:"op"` // text, binary, continuation, close, ping, pong
	Fin     bool      `json:"fin"`
	Masked  bool      `json:"masked,omitempty"`
	Size    int64     `json:"size"`              // payload bytes
	Preview string    `json:"preview,omitempty"` // first 100 payload bytes of text, close reason, ping
	// Compressed frames (permessage-deflate) have no readable preview.
	Compressed bool `json:"compressed,omitempty"`
	CloseCode  int  `json:"close_code,omitempty"`

	seq int64 // arrival order among both directions' chunks
}

// Summary is an Exchange without headers and bodies, for lists.
type Summary struct {
	ID          int64     `json:"id"`
	Tunnel      string    `json:"tunnel"`
	Remote      string    `json:"remote,omitempty"`
	Time        time.Time `json:"time"`
	Duration    Duration  `json:"duration"`
	Method      string    `json:"method"`
	Path        string    `json:"path"`
	Status      int       `json:"status"`
	BytesIn     int64     `json:"bytes_in"`
	BytesOut    int64     `json:"bytes_out"`
	WebSocket   int64     `json:"websocket,omitempty"`
	Replay      bool      `json:"replay,omitempty"`
	ReplayOf    int64     `json:"replay_of,omitempty"`
	Error       string    `json:"error,omitempty"`
	ContentType string    `json:"content_type,omitempty"`
}

// Summary returns the list form of e.
func (e *Exchange) Summary() Summary {
	s := Summary{
		ID: e.ID, Tunnel: e.Tunnel, Remote: e.Remote, Time: e.Time, Duration: e.Duration,
		Method: e.Method, Path: e.Path, Status: e.Status,
		BytesIn: e.RequestBody.Size, BytesOut: e.ResponseBody.Size,
		WebSocket: e.WebSocket, Replay: e.Replay, ReplayOf: e.ReplayOf, Error: e.Error,
	}
	if e.ResponseHeader != nil {
		s.ContentType = e.ResponseHeader.Get("Content-Type")
	}
	return s
}

func opName(op int) string {
	switch op {
	case 0:
		return "continuation"
	case 1:
		return "text"
	case 2:
		return "binary"
	case 8:
		return "close"
	case 9:
		return "ping"
	case 10:
		return "pong"
	}
	return "reserved"
}
