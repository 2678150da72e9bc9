// Package scalar implements Fleetgraph's custom GraphQL scalars: ID as a
// UUID (or a sequence number), JSON as a JSON object, Time as RFC 3339. Bad
// values become BAD_USER_INPUT faults, never internal errors.
package scalar

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/google/uuid"

	"fleetgraph/fault"
)

// MarshalID writes a UUID as a GraphQL ID.
func MarshalID(id uuid.UUID) graphql.Marshaler {
	return graphql.WriterFunc(func(w io.Writer) {
		_, _ = io.WriteString(w, strconv.Quote(id.String()))
	})
}

// UnmarshalID reads a GraphQL ID that must be a UUID.
func UnmarshalID(v any) (uuid.UUID, error) {
	s, ok := v.(string)
	if !ok {
		return uuid.Nil, fault.New(fault.BadUserInput, "an id must be a string")
	}
	id, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return uuid.Nil, fault.New(fault.BadUserInput, "%q is not a valid id", fault.Excerpt(s, 64))
	}
	return id, nil
}

// UnmarshalJSON reads a JSON object, from a variable or an inline object literal.
func UnmarshalJSON(v any) (map[string]any, error) {
	switch t := v.(type) {
	case map[string]any:
		return t, nil
	case nil:
		return nil, nil
	default:
		return nil, fault.New(fault.BadUserInput, "expected a JSON object, got %s", kind(v))
	}
}

func kind(v any) string {
	switch v.(type) {
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number, int, int64, float64:
		return "a number"
	}
	return fmt.Sprintf("%T", v)
}

// MarshalSeqID writes a sequence number (a bigint identity) as a GraphQL ID.
func MarshalSeqID(id int64) graphql.Marshaler {
	return graphql.WriterFunc(func(w io.Writer) {
		_, _ = io.WriteString(w, strconv.Quote(strconv.FormatInt(id, 10)))
	})
}

// UnmarshalSeqID reads a GraphQL ID that must be a positive integer.
func UnmarshalSeqID(v any) (int64, error) {
	s, ok := v.(string)
	if !ok {
		return 0, fault.New(fault.BadUserInput, "an id must be a string")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fault.New(fault.BadUserInput, "%q is not a valid id", fault.Excerpt(s, 64))
	}
	return n, nil
}

// MarshalTime writes a time as RFC 3339 with nanoseconds, in UTC.
func MarshalTime(t time.Time) graphql.Marshaler {
	return graphql.WriterFunc(func(w io.Writer) {
		_, _ = io.WriteString(w, strconv.Quote(t.UTC().Format(time.RFC3339Nano)))
	})
}

// UnmarshalTime reads an RFC 3339 time such as 2026-11-22T10:00:00Z.
func UnmarshalTime(v any) (time.Time, error) {
	s, ok := v.(string)
	if !ok {
		return time.Time{}, fault.New(fault.BadUserInput, "a time must be an RFC 3339 string such as 2026-11-22T10:00:00Z")
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fault.New(fault.BadUserInput, "%q is not an RFC 3339 time such as 2026-11-22T10:00:00Z", fault.Excerpt(s, 64))
	}
	return t, nil
}
