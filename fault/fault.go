// Package fault defines the errors Fleetgraph shows to clients: each carries a
// stable code from a small fixed set and a message fit for a user. Anything
// that is not a *fault.Error is internal: the GraphQL error presenter logs it
// and sends the client only INTERNAL with a request id.
package fault

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// Code is the stable, machine-readable kind of a client error. It is sent as
// extensions.code in GraphQL responses.
type Code string

// The codes a client can see. Their meaning is part of the public API.
const (
	Unauthenticated Code = "UNAUTHENTICATED"
	Forbidden       Code = "FORBIDDEN"
	NotFound        Code = "NOT_FOUND"
	BadUserInput    Code = "BAD_USER_INPUT"
	Conflict        Code = "CONFLICT"
	RateLimited     Code = "RATE_LIMITED"
	Internal        Code = "INTERNAL"
)

// Error is an error a client may see verbatim.
type Error struct {
	Code    Code
	Message string
	// Field names the offending input field for BAD_USER_INPUT, when there is one.
	Field string
	// Extra holds additional extensions (for example the current state in a CONFLICT).
	Extra map[string]any
}

func (e *Error) Error() string { return e.Message }

// Is reports whether target is a *Error with the same code, so that
// errors.Is(err, &fault.Error{Code: fault.NotFound}) works.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code && t.Message == ""
}

// New returns an error with the given code and a formatted message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Invalid reports bad input in the named field.
func Invalid(field, format string, args ...any) *Error {
	return &Error{Code: BadUserInput, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Missing reports that something does not exist or is not visible to the caller;
// the two are indistinguishable on purpose.
func Missing(what string) *Error {
	return &Error{Code: NotFound, Message: what + " not found"}
}

// Excerpt shortens client input quoted in a message to at most n bytes of
// whole characters, marking the cut with "…".
func Excerpt(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// CodeOf returns the code of err, or Internal when err is not a client error.
func CodeOf(err error) Code {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Code
	}
	return Internal
}

// Has reports whether err is a client error with the given code.
func Has(err error, code Code) bool { return CodeOf(err) == code }
