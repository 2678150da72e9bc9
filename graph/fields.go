package graph

import (
	"context"
	"errors"
	"io"

	"github.com/99designs/gqlgen/graphql"
)

// scalarFieldContext is a scalar field's context; go generate puts it where
// gqlgen generates graphql.NewScalarFieldContext (graph/internal/sequential),
// which allocates, for every scalar field of every response, an error and a
// closure answering a lookup of the field's children. A scalar has no
// children and validation refuses a selection under one, so that lookup
// never runs: one shared function answers it here, and a field costs one
// allocation instead of three (a 50-robot list has some 2,000 of them).
func scalarFieldContext(object string, field graphql.CollectedField, isMethod, isResolver bool) (*graphql.FieldContext, error) {
	return &graphql.FieldContext{Object: object, Field: field, IsMethod: isMethod, IsResolver: isResolver, Child: noChildFields}, nil
}

// errNoChildFields is what asking a scalar field for a child field gets.
var errNoChildFields = errors.New("a field of a scalar type does not have child fields")

func noChildFields(context.Context, graphql.CollectedField) (*graphql.FieldContext, error) {
	return nil, errNoChildFields
}

// deferring returns an object's set of deferred fields and its views by
// label, making them when the object defers its first field; go generate
// has objects start without them (graph/internal/sequential), since
// nearly none defers anything and gqlgen allocated both for every object.
func deferring(fs *graphql.FieldSet, views map[string]*graphql.FieldSetView) (*graphql.FieldSet, map[string]*graphql.FieldSetView) {
	if fs == nil {
		fs, views = graphql.NewFieldSet(nil), map[string]*graphql.FieldSetView{}
	}
	return fs, views
}

// objectSet is what resolving one object allocates, at once: gqlgen's
// FieldSet that resolves its fields, their values (inline, see
// newObjectSet) and the object returned. go generate makes every object's
// function start with one and return its object (graph/internal/sequential),
// where gqlgen allocated the FieldSet, its values and the returned value
// each on its own. Only Values, Invalids, Concurrently and Dispatch of the
// FieldSet are used, none of which reads the fields NewFieldSet would
// have kept: object marshals them.
type objectSet struct {
	fs  graphql.FieldSet
	obj object
}

// objectSets with their values inline, in two sizes so that the many
// objects of one field (edges, a job's workflow) do not carry eight.
type (
	objectSet2 struct {
		objectSet
		inline [2]graphql.Marshaler
	}
	objectSet8 struct {
		objectSet
		inline [8]graphql.Marshaler
	}
)

// newObjectSet starts resolving an object of fields: one allocation up to
// eight fields, two past that.
func newObjectSet(fields []graphql.CollectedField) *objectSet {
	n := len(fields)
	switch {
	case n <= 2:
		s := &objectSet2{}
		s.fs.Values = s.inline[:n:n]
		return &s.objectSet
	case n <= 8:
		s := &objectSet8{}
		s.fs.Values = s.inline[:n:n]
		return &s.objectSet
	}
	s := &objectSet{}
	s.fs.Values = make([]graphql.Marshaler, n)
	return s
}

// object returns the resolved object, to be marshalled.
func (s *objectSet) object(fields []graphql.CollectedField) graphql.Marshaler {
	s.obj = object{fields, s.fs.Values}
	return &s.obj
}

// object is a resolved object's fields and their values, marshalled as
// graphql.FieldSet does (each alias once, the first time it appears, in
// order) without its per-object map of aliases written and per-field
// allocation; go generate returns it where gqlgen returned the FieldSet
// (graph/internal/sequential).
type object struct {
	fields []graphql.CollectedField
	values []graphql.Marshaler
}

// MarshalGQL implements graphql.Marshaler.
func (o object) MarshalGQL(w io.Writer) {
	_, _ = io.WriteString(w, "{")
	first := true
	for i := range o.fields {
		alias := o.fields[i].Alias
		if aliasBefore(o.fields[:i], alias) {
			continue
		}
		if !first {
			_, _ = io.WriteString(w, ",")
		}
		first = false
		// An alias is a GraphQL name ([_A-Za-z][_0-9A-Za-z]*): nothing to escape.
		_, _ = io.WriteString(w, `"`)
		_, _ = io.WriteString(w, alias)
		_, _ = io.WriteString(w, `":`)
		o.values[i].MarshalGQL(w)
	}
	_, _ = io.WriteString(w, "}")
}

// aliasBefore tells whether one of fields has alias. An object has a few
// fields, so a scan costs less than the map gqlgen kept.
func aliasBefore(fields []graphql.CollectedField, alias string) bool {
	for i := range fields {
		if fields[i].Alias == alias {
			return true
		}
	}
	return false
}
