package graph

import (
	"context"
	"errors"

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
