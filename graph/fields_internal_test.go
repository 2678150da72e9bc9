package graph

import (
	"bytes"
	"testing"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
)

// object writes what graphql.FieldSet writes for the same fields and
// values: each alias once, the first time it appears, in order.
func TestObjectMarshalsAsFieldSetDoes(t *testing.T) {
	str := func(s string) graphql.Marshaler { return graphql.MarshalString(s) }
	for _, c := range []struct {
		aliases []string
		values  []graphql.Marshaler
	}{
		{nil, nil},
		{[]string{"id"}, []graphql.Marshaler{str("a")}},
		{[]string{"id", "name", "status"}, []graphql.Marshaler{str("a"), graphql.Null, str("b\"\n")}},
		{[]string{"a", "b", "a", "c", "b"}, []graphql.Marshaler{str("1"), str("2"), str("3"), str("4"), str("5")}},
		{[]string{"_x", "_x", "_x"}, []graphql.Marshaler{graphql.Null, str("2"), str("3")}},
	} {
		fields := make([]graphql.CollectedField, len(c.aliases))
		for i, a := range c.aliases {
			fields[i].Field = &ast.Field{Alias: a}
		}
		fs := graphql.NewFieldSet(fields)
		copy(fs.Values, c.values)
		var want, got bytes.Buffer
		fs.MarshalGQL(&want)
		object{fields, c.values}.MarshalGQL(&got)
		if got.String() != want.String() {
			t.Errorf("%v: got %s, want %s", c.aliases, got.String(), want.String())
		}
	}
}
