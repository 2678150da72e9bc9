package graph

import (
	"context"

	"github.com/99designs/gqlgen/graphql"
)

// marshalList marshals a list's n elements one after another, in the
// caller's goroutine; go generate puts it where gqlgen generates
// graphql.MarshalSliceConcurrently (graph/internal/sequential), which
// starts a goroutine per element. Those goroutines overlapped nothing worth
// overlapping: every relation of a listed row loads with its whole page
// (package dataloaders), so the first element fetches what its siblings
// need and the rest read it from the loaders' cache. What they cost was a
// goroutine and a grown stack per element: a 50-robot list with their
// current jobs ran 30% faster without them (BenchmarkRequestPath).
//
// Like gqlgen's, a panic in an element is the element's error and nulls the
// list.
func marshalList(ctx context.Context, n int, element func(ctx context.Context, i int) graphql.Marshaler) graphql.Array {
	ret := make(graphql.Array, n)
	for i := range n {
		fc := &graphql.FieldContext{Index: &i}
		childCtx := graphql.WithFieldContext(ctx, fc)
		panicked := func() (panicked bool) {
			defer func() {
				if r := recover(); r != nil {
					graphql.AddError(childCtx, graphql.Recover(childCtx, r))
					panicked = true
				}
			}()
			ret[i] = element(childCtx, i)
			return false
		}()
		if panicked {
			return nil
		}
	}
	return ret
}
