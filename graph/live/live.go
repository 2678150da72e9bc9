// Package live holds Fleetgraph's streaming transports for GraphQL:
// graphql-transport-ws exactly as the graphql-ws project's PROTOCOL.md says,
// the legacy graphql-ws protocol of subscriptions-transport-ws, and
// server-sent events. They replace gqlgen's, whose close codes and
// error/complete sequences differ from the protocol, and they end a
// subscription with an error (not a completion) when a resolver says so,
// for example when the credential behind it expires. Subscribers of the
// same operation, variables and visibility class share one execution of it
// (Fanout), and every error they send leaves through the handler's
// presenter (WithPresenter).
package live

import (
	"context"
	"errors"
	"sync"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/fault"
	"fleetgraph/metrics"
)

type endKey struct{}

// streamKey marks the context of an operation that a streaming transport runs.
type streamKey struct{}

// Streaming reports whether the operation of ctx runs on a transport that
// can deliver more than one result (websocket, SSE, multipart). A
// subscription anywhere else is refused at once rather than answered with
// its first event, whenever that comes.
func Streaming(ctx context.Context) bool { v, _ := ctx.Value(streamKey{}).(bool); return v }

// Transports names the transports that stream, for errors that send a
// client to one of them.
const Transports = "a websocket (graphql-transport-ws), server-sent events (Accept: text/event-stream) or multipart HTTP (Accept: multipart/mixed;subscriptionSpec=\"1.0\")"

// ender records the error an operation's stream ends with.
type ender struct {
	mu  sync.Mutex
	err *gqlerror.Error
}

// End makes the operation running in ctx end with err instead of
// completing: transports send it as the operation's error. Subscription
// resolvers call it before closing their channel.
func End(ctx context.Context, err error) {
	e, ok := ctx.Value(endKey{}).(*ender)
	if !ok || err == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err == nil {
		e.err = present(ctx, err)
		metrics.SentError(ctx, string(fault.CodeOf(err)))
	}
}

type presenterKey struct{}

// WithPresenter makes every error the streaming transports send for
// requests under ctx leave through fn: the handler's one error presenter,
// so that a live error carries what the same error over HTTP carries (its
// code and extensions; for INTERNAL, the request id, with the real error
// logged under it), on every transport.
func WithPresenter(ctx context.Context, fn graphql.ErrorPresenterFunc) context.Context {
	return context.WithValue(ctx, presenterKey{}, fn)
}

// present turns an error into a GraphQL error through the presenter of
// ctx (WithPresenter), or, without one, with our extensions alone.
func present(ctx context.Context, err error) *gqlerror.Error {
	if fn, ok := ctx.Value(presenterKey{}).(graphql.ErrorPresenterFunc); ok && fn != nil {
		return fn(ctx, err)
	}
	var fe *fault.Error
	if !errors.As(err, &fe) {
		fe = &fault.Error{Code: fault.Internal, Message: "the operation failed"}
	}
	ext := map[string]any{"code": fe.Code}
	for k, v := range fe.Extra {
		ext[k] = v
	}
	return &gqlerror.Error{Message: fe.Message, Extensions: ext}
}

func (e *ender) get() *gqlerror.Error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// outcome is how an operation ended.
type outcome struct {
	// errs, when set, end the operation as an error: request errors found
	// before execution, a subscription refused at subscribe time, or an
	// error a resolver ended the stream with. No completion follows them.
	errs gqlerror.List
	// stopped means the client went away or cancelled; nothing more is sent.
	stopped bool
}

// prepare parses and validates an operation: the request errors, or the
// operation's context (which says what kind of operation it is) for
// dispatch. A subscription keeps that context while it runs, so it keeps
// no extensions: they were read (a persisted query's hash) as it was
// created, nothing reads them after, and a client's megabyte of them
// decodes to tens of megabytes of maps.
func prepare(ctx context.Context, exec graphql.GraphExecutor, params *graphql.RawParams) (context.Context, *graphql.OperationContext, gqlerror.List) {
	start := graphql.Now()
	ctx = context.WithValue(graphql.StartOperationTrace(ctx), streamKey{}, true)
	params.ReadTime = graphql.TraceTiming{Start: start, End: graphql.Now()}
	rc, errs := exec.CreateOperationContext(ctx, params)
	if errs != nil {
		if resp := exec.DispatchError(graphql.WithOperationContext(ctx, rc), errs); len(resp.Errors) > 0 {
			errs = resp.Errors
		}
		return ctx, nil, errs
	}
	if isSubscription(rc) {
		rc.Extensions = nil
	}
	return graphql.WithOperationContext(ctx, rc), rc, nil
}

// ReasonNotAGraphQLRequest is extensions.reason of a request whose body
// or query string is not a GraphQL request's.
const ReasonNotAGraphQLRequest = "NOT_A_GRAPHQL_REQUEST"

// ReasonMutationOverGet is extensions.reason of a mutation refused because
// it came by GET, which only runs queries and subscriptions.
const ReasonMutationOverGet = "MUTATION_OVER_GET"

// hasReason reports whether a presented error of errs has reason.
func hasReason(errs gqlerror.List, reason string) bool {
	for _, e := range errs {
		if e.Extensions["reason"] == reason {
			return true
		}
	}
	return false
}

// isSubscription reports whether a prepared operation is a subscription.
func isSubscription(rc *graphql.OperationContext) bool {
	return rc.Operation != nil && rc.Operation.Operation == ast.Subscription
}

// dispatched is a prepared operation whose resolvers have been called:
// a subscription's resolver has registered with the hub (and, for one
// entity, read its first state), so every change from then on reaches it.
// Its results are still to be read (run).
type dispatched struct {
	ctx          context.Context
	rc           *graphql.OperationContext
	responses    graphql.ResponseHandler
	ender        *ender
	subscription bool
	failed       *outcome // dispatching panicked
}

// dispatch calls a prepared operation's resolvers, on the caller's
// goroutine, so that a subscription is live when dispatch returns: the
// transports dispatch before they read the client's next message (or,
// over HTTP, send the response's headers), and a client can order its
// own writes after the subscription. gqlgen calls a subscription's
// resolver in DispatchOperation; a query's or a mutation's run on the
// first read of their results, in run.
func dispatch(ctx context.Context, exec graphql.GraphExecutor, rc *graphql.OperationContext) (d dispatched) {
	d = dispatched{rc: rc, ender: &ender{}, subscription: isSubscription(rc)}
	ctx = context.WithValue(ctx, endKey{}, d.ender)
	d.ctx = ctx
	defer func() {
		if r := recover(); r != nil {
			out := recovered(ctx, rc, r)
			d.failed = &out
		}
	}()
	d.responses, d.ctx = exec.DispatchOperation(ctx, rc)
	return d
}

// recovered is the outcome of an operation that panicked: the panic is
// logged by the server's recover function, the client gets INTERNAL.
func recovered(ctx context.Context, rc *graphql.OperationContext, r any) outcome {
	err := rc.Recover(ctx, r)
	metrics.SentError(ctx, string(fault.Internal))
	var gqlErr *gqlerror.Error
	if !errors.As(err, &gqlErr) {
		gqlErr = present(ctx, err)
	}
	return outcome{errs: gqlerror.List{gqlErr}}
}

// run reads a dispatched operation's results and calls next with each,
// encoded once as JSON. A subscription whose first result is only errors
// (the resolver refused it: NOT_FOUND, FORBIDDEN, ...) ends as an error
// rather than a result.
func (d dispatched) run(next func(payload []byte) error) (out outcome) {
	if d.failed != nil {
		return *d.failed
	}
	ctx := d.ctx
	defer func() {
		if r := recover(); r != nil {
			out = recovered(ctx, d.rc, r)
		}
	}()
	for first := true; d.responses != nil; first = false {
		resp := d.responses(ctx)
		if resp == nil {
			break
		}
		if first && d.subscription && len(resp.Errors) > 0 && isNull(resp.Data) {
			return outcome{errs: resp.Errors}
		}
		if !d.subscription && (resp.HasNext == nil || !*resp.HasNext) {
			// A query's or mutation's last answer: its handler (gqlgen's
			// OneShot) would keep it, as large as its encoding, for as
			// long as the encoding waits for the socket's writer.
			d.responses = nil
		}
		if err := next(mustJSON(resp)); err != nil {
			var fe *fault.Error
			if errors.As(err, &fe) { // the transport ends it (errSlowMember)
				metrics.SentError(ctx, string(fe.Code))
				return outcome{errs: gqlerror.List{present(ctx, fe)}}
			}
			return outcome{stopped: true}
		}
	}
	if ctx.Err() != nil {
		return outcome{stopped: true}
	}
	if err := d.ender.get(); err != nil {
		return outcome{errs: gqlerror.List{err}}
	}
	return outcome{}
}

func isNull(data []byte) bool { return len(data) == 0 || string(data) == "null" }
