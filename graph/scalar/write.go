package scalar

import (
	"bytes"
	"encoding/hex"
	"io"
	"strconv"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/google/uuid"
)

// The scalars' marshallers are small values rather than closures, and write
// into the response's own buffer when it is a *bytes.Buffer (gqlgen
// marshals a response into one) by appending to its spare capacity
// (AvailableBuffer), so that a scalar costs one small allocation (the value
// in its interface) instead of a closure, a formatted string and a quoted
// copy of it. What they write is byte for byte what gqlgen's and strconv's
// functions wrote (scalar_test.go holds them to it).

// write appends to w what add appends to a byte slice.
func write(w io.Writer, add func([]byte) []byte) {
	if b, ok := w.(*bytes.Buffer); ok {
		_, _ = b.Write(add(b.AvailableBuffer()))
		return
	}
	_, _ = w.Write(add(nil))
}

// stringValue is a String (MarshalString): quoted as gqlgen quotes, with
// only control characters, the backslash and the double quote escaped.
type stringValue string

func (s stringValue) MarshalGQL(w io.Writer) {
	if overBudget(w) {
		_, _ = io.WriteString(w, "null")
		return
	}
	write(w, func(b []byte) []byte { return appendQuoted(b, string(s)) })
}

// appendQuoted is gqlgen's writeQuotedString as an append: the bytes of a
// multi-byte character are all 0x80 or more, so going byte by byte escapes
// what going rune by rune did, and passes invalid UTF-8 through as it did.
func appendQuoted(b []byte, s string) []byte {
	const hexDigits = "0123456789ABCDEF" // gqlgen writes \u001F
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '\\' && c != '"' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '\t':
			b = append(b, `\t`...)
		case '\r':
			b = append(b, `\r`...)
		case '\n':
			b = append(b, `\n`...)
		case '\\':
			b = append(b, `\\`...)
		case '"':
			b = append(b, `\"`...)
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// idValue is a UUID as a GraphQL ID (MarshalID).
type idValue uuid.UUID

func (id idValue) MarshalGQL(w io.Writer) {
	write(w, func(b []byte) []byte {
		b = append(b, '"')
		for i, part := range [5][2]int{{0, 4}, {4, 6}, {6, 8}, {8, 10}, {10, 16}} {
			if i > 0 {
				b = append(b, '-')
			}
			b = hex.AppendEncode(b, id[part[0]:part[1]])
		}
		return append(b, '"')
	})
}

// seqIDValue is a sequence number as a GraphQL ID (MarshalSeqID).
type seqIDValue int64

func (id seqIDValue) MarshalGQL(w io.Writer) {
	write(w, func(b []byte) []byte { return append(strconv.AppendInt(append(b, '"'), int64(id), 10), '"') })
}

// timeValue is a time in RFC 3339 with nanoseconds, in UTC (MarshalTime).
type timeValue time.Time

func (t timeValue) MarshalGQL(w io.Writer) {
	write(w, func(b []byte) []byte {
		return append(time.Time(t).UTC().AppendFormat(append(b, '"'), time.RFC3339Nano), '"')
	})
}

// intValue is an Int (MarshalInt, MarshalInt64).
type intValue int64

func (i intValue) MarshalGQL(w io.Writer) {
	write(w, func(b []byte) []byte { return strconv.AppendInt(b, int64(i), 10) })
}

// StringAt, IDAt and TimeAt marshal the value at p as MarshalString,
// MarshalID and MarshalTime marshal *p, reading it when the response is
// written: a pointer goes into an interface without the allocation a
// string, UUID or time boxed there costs. go generate returns them for
// plain fields, which point into their row (graph/internal/sequential);
// nothing changes a row between resolving and writing its response.
func StringAt(p *string) graphql.Marshaler { return (*stringAt)(p) }

// IDAt is MarshalID of *p, read when written (see StringAt).
func IDAt(p *uuid.UUID) graphql.Marshaler { return (*idAt)(p) }

// TimeAt is MarshalTime of *p, read when written (see StringAt).
func TimeAt(p *time.Time) graphql.Marshaler { return (*timeAt)(p) }

type (
	stringAt string
	idAt     uuid.UUID
	timeAt   time.Time
)

func (p *stringAt) MarshalGQL(w io.Writer) { stringValue(*p).MarshalGQL(w) }
func (p *idAt) MarshalGQL(w io.Writer)     { idValue(*p).MarshalGQL(w) }
func (p *timeAt) MarshalGQL(w io.Writer)   { timeValue(*p).MarshalGQL(w) }
