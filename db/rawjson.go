package db

import (
	"database/sql/driver"
	"encoding/json"
	"fmt"
)

// RawJSON is a jsonb value kept as PostgreSQL sent it: a job's input and
// result (and the other JSON columns the API reads) pass from the database
// to a response (GraphQL through scalar.MarshalRawJSON, a live update, a
// webhook) as bytes, without being decoded into maps and encoded again.
// Code that needs to look inside decodes it (Object); a store writes one
// from a client's map with checkRawJSONObject. nil is SQL NULL and
// JSON null.
type RawJSON []byte

// objectJSON encodes an object the server built itself (an event's
// details: ids, names, versions), which needs none of a client's checks.
func objectJSON(v map[string]any) RawJSON {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("db: encoding a server-built object: %v", err)) // strings, numbers and lists of them encode
	}
	return b
}

// orEmptyObject is r, or {} for null.
func (r RawJSON) orEmptyObject() RawJSON {
	if r == nil {
		return RawJSON("{}")
	}
	return r
}

// Scan implements sql.Scanner, copying the driver's bytes (which it reuses).
func (r *RawJSON) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*r = nil
	case []byte:
		*r = append(RawJSON(nil), v...)
	case string:
		*r = RawJSON(v)
	default:
		return fmt.Errorf("db: cannot scan %T into RawJSON", src)
	}
	return nil
}

// Value implements driver.Valuer: the JSON text, or NULL.
func (r RawJSON) Value() (driver.Value, error) {
	if r == nil {
		return nil, nil
	}
	return string(r), nil
}

// MarshalJSON implements json.Marshaler: the bytes as they are.
func (r RawJSON) MarshalJSON() ([]byte, error) {
	if r == nil {
		return []byte("null"), nil
	}
	return r, nil
}

// UnmarshalJSON implements json.Unmarshaler, keeping a copy of b.
func (r *RawJSON) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*r = nil
		return nil
	}
	*r = append(RawJSON(nil), b...)
	return nil
}
