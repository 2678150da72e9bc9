package graph

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/99designs/gqlgen/graphql"
	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2/ast"

	"fleetgraph/dispatch"
)

// TestRequestsFirstCountsRunningRequests checks what the fan-out yields to:
// a query or mutation counts while it runs, except while a claim is parked
// waiting for a job; a subscription's events never count.
func TestRequestsFirstCountsRunningRequests(t *testing.T) {
	t.Parallel()
	var running atomic.Int64
	ext := requestsFirst{&running}
	op := func(kind ast.Operation) context.Context {
		return graphql.WithOperationContext(context.Background(), &graphql.OperationContext{Operation: &ast.OperationDefinition{Operation: kind}})
	}

	ext.InterceptResponse(op(ast.Mutation), func(ctx context.Context) *graphql.Response {
		require.EqualValues(t, 1, running.Load(), "a running mutation counts")
		park := dispatch.Parking(ctx)
		park(true)
		require.EqualValues(t, 0, running.Load(), "a parked claim does not")
		park(false)
		require.EqualValues(t, 1, running.Load(), "a woken one does again")
		return &graphql.Response{}
	})
	require.EqualValues(t, 0, running.Load(), "a finished one no longer counts")

	ext.InterceptResponse(op(ast.Query), func(context.Context) *graphql.Response {
		require.EqualValues(t, 1, running.Load())
		return &graphql.Response{}
	})
	ext.InterceptResponse(op(ast.Subscription), func(context.Context) *graphql.Response {
		require.EqualValues(t, 0, running.Load(), "a subscription's event does not count")
		return &graphql.Response{}
	})
	dispatch.Parking(context.Background())(true) // without a hook: nothing happens
	require.EqualValues(t, 0, running.Load())
}
