package proto

import "fmt"

// Code classifies an Error. Numbers are never reused.
type Code int

// Error codes.
const (
	CodeInternal       Code = 1  // the relay failed; retry later
	CodeBadRequest     Code = 2  // the message made no sense
	CodeVersion        Code = 3  // protocol version not supported
	CodeUnauthorized   Code = 4  // missing or wrong token
	CodeNameInvalid    Code = 5  // the requested name breaks a naming rule
	CodeNameTaken      Code = 6  // another agent holds the name, or it is held for one
	CodeNameNotAllowed Code = 7  // the token may not claim this name
	CodeUnknownTunnel  Code = 8  // a stream named a tunnel the agent does not serve
	CodeLocalDial      Code = 9  // the agent could not reach its local target
	CodeLimit          Code = 10 // a limit of the relay, e.g. tunnels per token, is reached
)

var codeNames = map[Code]string{
	CodeInternal:       "internal",
	CodeBadRequest:     "bad-request",
	CodeVersion:        "version",
	CodeUnauthorized:   "unauthorized",
	CodeNameInvalid:    "name-invalid",
	CodeNameTaken:      "name-taken",
	CodeNameNotAllowed: "name-not-allowed",
	CodeUnknownTunnel:  "unknown-tunnel",
	CodeLocalDial:      "local-dial",
	CodeLimit:          "limit",
}

func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code(%d)", int(c))
}

// Error is a refusal with a code and one human sentence. It travels as a
// message and is also an error value.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code.String()
	}
	return e.Message
}

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, proto.ErrNameTaken) works on any Error of that code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Permanent reports whether retrying the same request cannot succeed.
func (e *Error) Permanent() bool {
	switch e.Code {
	case CodeVersion, CodeUnauthorized, CodeNameInvalid, CodeNameTaken, CodeNameNotAllowed, CodeBadRequest, CodeLimit:
		return true
	}
	return false
}

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Sentinels to compare with errors.Is.
var (
	ErrInternal       = &Error{Code: CodeInternal}
	ErrBadRequest     = &Error{Code: CodeBadRequest}
	ErrVersion        = &Error{Code: CodeVersion}
	ErrUnauthorized   = &Error{Code: CodeUnauthorized}
	ErrNameInvalid    = &Error{Code: CodeNameInvalid}
	ErrNameTaken      = &Error{Code: CodeNameTaken}
	ErrNameNotAllowed = &Error{Code: CodeNameNotAllowed}
	ErrUnknownTunnel  = &Error{Code: CodeUnknownTunnel}
	ErrLocalDial      = &Error{Code: CodeLocalDial}
	ErrLimit          = &Error{Code: CodeLimit}
)
