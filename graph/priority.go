package graph

import (
	"context"
	"sync/atomic"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"

	"fleetgraph/dispatch"
)

// requestsFirst is the gqlgen extension that counts the queries and
// mutations running, for the fan-out (live.Fanout.Yield): while any runs,
// a single writer sends subscription results, so a process that fans out
// at full speed keeps a CPU for its requests. Subscription events are not
// counted, nor is a claim while it is parked waiting for a job
// (dispatch.WithParking): robots' long polls would otherwise hold the
// fan-out to one writer all the time.
type requestsFirst struct{ running *atomic.Int64 }

var (
	_ graphql.HandlerExtension    = requestsFirst{}
	_ graphql.ResponseInterceptor = requestsFirst{}
)

// ExtensionName implements graphql.HandlerExtension.
func (requestsFirst) ExtensionName() string { return "RequestsFirst" }

// Validate implements graphql.HandlerExtension.
func (requestsFirst) Validate(graphql.ExecutableSchema) error { return nil }

// InterceptResponse implements graphql.ResponseInterceptor.
func (r requestsFirst) InterceptResponse(ctx context.Context, next graphql.ResponseHandler) *graphql.Response {
	if rc := graphql.GetOperationContext(ctx); rc.Operation == nil || rc.Operation.Operation == ast.Subscription {
		return next(ctx)
	}
	r.running.Add(1)
	defer r.running.Add(-1)
	return next(dispatch.WithParking(ctx, func(parked bool) {
		if parked {
			r.running.Add(-1)
		} else {
			r.running.Add(1)
		}
	}))
}
