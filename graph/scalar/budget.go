package scalar

import (
	"encoding/json"
	"errors"
	"io"

	"github.com/99designs/gqlgen/graphql"

	"fleetgraph/db"
)

// MaxResponseBytes is the response size budget: the last line behind the
// cost estimate, for values whose size the estimate cannot know (a JSON
// value may hold 64 KiB, a log message 8,000 characters). Strings and JSON
// values are written as null once the response being written is past it,
// so a response stops growing one value after the budget; a response
// longer than the budget is therefore always one that lost values, and the
// handler replaces it with one error.
const MaxResponseBytes = 16 << 20

// overBudget tells whether w, the buffer a response is marshalled into,
// already holds more than the budget.
func overBudget(w io.Writer) bool {
	b, ok := w.(interface{ Len() int })
	return ok && b.Len() > MaxResponseBytes
}

// MarshalJSON writes a JSON object, or null past the response budget.
func MarshalJSON(v map[string]any) graphql.Marshaler {
	return graphql.WriterFunc(func(w io.Writer) {
		switch {
		case overBudget(w):
			_, _ = io.WriteString(w, "null")
		case v == nil:
			_, _ = io.WriteString(w, "{}")
		default:
			if err := json.NewEncoder(w).Encode(v); err != nil {
				_, _ = io.WriteString(w, "null")
			}
		}
	})
}

// MarshalRawJSON writes a stored JSON value as PostgreSQL sent it, or null
// past the response budget (the JSON scalar of a job's input and result,
// and of the other jsonb columns the API reads).
func MarshalRawJSON(v db.RawJSON) graphql.Marshaler {
	return graphql.WriterFunc(func(w io.Writer) {
		if overBudget(w) || v == nil {
			_, _ = io.WriteString(w, "null")
			return
		}
		_, _ = w.Write(v)
	})
}

// UnmarshalRawJSON refuses: the JSON scalar's arguments and inputs arrive
// as maps (UnmarshalJSON), which the stores validate before writing.
func UnmarshalRawJSON(any) (db.RawJSON, error) {
	return nil, errors.New("a stored JSON value is not an input")
}

// MarshalString writes a String as gqlgen does, or null past the response
// budget.
func MarshalString(s string) graphql.Marshaler { return stringValue(s) }

// UnmarshalString reads a String as gqlgen does.
func UnmarshalString(v any) (string, error) { return graphql.UnmarshalString(v) }
