package graph

import (
	"bytes"
	"context"
	"fmt"
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

// An objectSet resolves through its FieldSet as gqlgen's own does (values
// set directly and by Concurrently then Dispatch, inline or not) and its
// object writes what the FieldSet would have.
func TestObjectSetResolvesAsFieldSetDoes(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 8, 9, 20} {
		fields := make([]graphql.CollectedField, n)
		for i := range fields {
			fields[i].Field = &ast.Field{Alias: fmt.Sprintf("f%d", i)}
		}
		set := newObjectSet(fields)
		out := &set.fs
		want := graphql.NewFieldSet(fields)
		if len(out.Values) != n || cap(out.Values) != n {
			t.Fatalf("%d fields: %d values (capacity %d)", n, len(out.Values), cap(out.Values))
		}
		for i := range fields {
			v := graphql.MarshalInt(i)
			want.Values[i] = v
			if i%2 == 0 {
				out.Values[i] = v
			} else {
				out.Concurrently(i, func(context.Context) graphql.Marshaler { return v })
			}
		}
		out.Dispatch(context.Background())
		var got, wantJSON bytes.Buffer
		set.object(fields).MarshalGQL(&got)
		want.MarshalGQL(&wantJSON)
		if got.String() != wantJSON.String() {
			t.Errorf("%d fields: got %s, want %s", n, got.String(), wantJSON.String())
		}
	}
}
