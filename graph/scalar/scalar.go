// Package scalar implements Fleetgraph's GraphQL scalars: ID as a UUID (or a
// sequence number), JSON as a JSON object, Time as RFC 3339 within the range
// PostgreSQL stores, and Int as the 32-bit signed integer the GraphQL
// specification defines. Bad values become BAD_USER_INPUT faults, never
// internal errors; the error presenter names the argument or input field.
package scalar

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/google/uuid"

	"fleetgraph/db"
	"fleetgraph/fault"
)

// MarshalID writes a UUID as a GraphQL ID.
func MarshalID(id uuid.UUID) graphql.Marshaler { return idValue(id) }

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
	case map[string]any:
		return "an object"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// MarshalSeqID writes a sequence number (a bigint identity) as a GraphQL ID.
func MarshalSeqID(id int64) graphql.Marshaler { return seqIDValue(id) }

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
func MarshalTime(t time.Time) graphql.Marshaler { return timeValue(t) }

// UnmarshalTime reads an RFC 3339 time such as 2026-11-22T10:00:00Z, to
// the microsecond.
func UnmarshalTime(v any) (time.Time, error) {
	s, ok := v.(string)
	if !ok {
		return time.Time{}, fault.New(fault.BadUserInput, "a time must be an RFC 3339 string such as 2026-11-22T10:00:00Z")
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fault.New(fault.BadUserInput, "%q is not an RFC 3339 time such as 2026-11-22T10:00:00Z", fault.Excerpt(s, 64))
	}
	// RFC 3339 admits year 0 (and offsets that move year 1 into it, or year
	// 9999 into 10000); PostgreSQL can neither store nor compare those.
	stored, ok := db.AsStored(t)
	if !ok {
		return time.Time{}, fault.New(fault.BadUserInput, "%q is out of range: a time must be %s", fault.Excerpt(s, 64), db.TimeRange)
	}
	return stored, nil
}

// MarshalInt writes an Int.
func MarshalInt(i int) graphql.Marshaler { return intValue(i) }

// UnmarshalInt reads an Int: a whole number from -2147483648 to 2147483647,
// as the GraphQL specification defines it. gqlgen's own Int takes any 64-bit
// value (and numeric strings), so `first: 2147483648` would pass.
func UnmarshalInt(v any) (int, error) {
	n, err := int32Of(v)
	return int(n), err
}

// MarshalInt64 writes an Int held in an int64 (a bigint column).
func MarshalInt64(i int64) graphql.Marshaler { return intValue(i) }

// UnmarshalInt64 reads an Int into an int64, within the same 32-bit range as
// UnmarshalInt: the Go type does not widen the GraphQL type.
func UnmarshalInt64(v any) (int64, error) {
	n, err := int32Of(v)
	return int64(n), err
}

const intRange = "an Int is a whole number from -2147483648 to 2147483647"

// int32Of converts an Int input value: an int64 from a literal or a coerced
// variable, a json.Number from a variable inside a list or input object, or a
// float64 from a client that decodes numbers as floats. A json.Number must be
// written as an integer (as gqlparser requires of a top-level variable);
// fractions, strings and out-of-range values are refused.
func int32Of(v any) (int32, error) {
	switch t := v.(type) {
	case int:
		return int32Of(int64(t))
	case int32:
		return t, nil
	case int64:
		if t < math.MinInt32 || t > math.MaxInt32 {
			return 0, fault.New(fault.BadUserInput, "%d is out of range: %s", t, intRange)
		}
		return int32(t), nil
	case json.Number:
		n, err := strconv.ParseInt(string(t), 10, 64)
		if err == nil {
			return int32Of(n)
		}
		lit := fault.Excerpt(string(t), 40)
		if f, ferr := strconv.ParseFloat(string(t), 64); errors.Is(err, strconv.ErrRange) || (ferr == nil && math.Abs(f) > math.MaxInt32) {
			return 0, fault.New(fault.BadUserInput, "%s is out of range: %s", lit, intRange)
		}
		return 0, fault.New(fault.BadUserInput, "%s is not written as a whole number: %s", lit, intRange)
	case float64:
		return int32From(t)
	case float32:
		return int32From(float64(t))
	}
	return 0, fault.New(fault.BadUserInput, "expected an Int, got %s", kind(v))
}

func int32From(f float64) (int32, error) {
	lit := strconv.FormatFloat(f, 'g', -1, 64)
	switch {
	case f != math.Trunc(f) || math.IsInf(f, 0) || math.IsNaN(f):
		return 0, fault.New(fault.BadUserInput, "%s is not a whole number: %s", lit, intRange)
	case f < math.MinInt32 || f > math.MaxInt32:
		return 0, fault.New(fault.BadUserInput, "%s is out of range: %s", lit, intRange)
	}
	return int32(f), nil
}
