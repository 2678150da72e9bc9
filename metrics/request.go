package metrics

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/google/uuid"

	"fleetgraph/auth"
)

// Request is what the layers of one HTTP request learn about it for its
// access log line and its metrics: the operation it ran and who called.
// The HTTP middleware puts one in the context; the GraphQL extension and
// the streaming transports fill it in. A nil *Request ignores everything.
type Request struct {
	m *Metrics

	mu         sync.Mutex
	operation  string
	operations int
	caller     string
}

type requestKey struct{}

// WithRequest returns ctx carrying a fresh Request whose errors count in m
// (which may be nil).
func WithRequest(ctx context.Context, m *Metrics) (context.Context, *Request) {
	r := &Request{m: m}
	return context.WithValue(ctx, requestKey{}, r), r
}

// RequestOf returns the Request of ctx, or nil.
func RequestOf(ctx context.Context) *Request {
	r, _ := ctx.Value(requestKey{}).(*Request)
	return r
}

// Metrics returns the metrics the request counts in (nil when off).
func (r *Request) Metrics() *Metrics {
	if r == nil {
		return nil
	}
	return r.m
}

// AddOperation notes an operation the request ran: the first name is kept
// (a websocket runs many), and all are counted.
func (r *Request) AddOperation(name string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.operations == 0 {
		r.operation = name
	}
	r.operations++
}

// Operation returns the first operation's name and how many ran.
func (r *Request) Operation() (string, int) {
	if r == nil {
		return "", 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.operation, r.operations
}

// SetCaller notes who called (see CallerKind); a websocket learns it from
// its connection_init, after the request began.
func (r *Request) SetCaller(p *auth.Principal) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.caller = CallerKind(p)
}

// Caller returns the caller kind noted, or "unknown" for a request
// refused before its credential was read (a body over the limit, a
// mutation by GET).
func (r *Request) Caller() string {
	if r == nil {
		return "unknown"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.caller == "" {
		return "unknown"
	}
	return r.caller
}

// CallerKind is how logs name a kind of caller: anonymous, user, service
// or robot (never who it is).
func CallerKind(p *auth.Principal) string {
	switch {
	case p == nil:
		return "anonymous"
	case p.RobotID != uuid.Nil:
		return "robot"
	case p.Role == auth.RoleService:
		return "service"
	}
	return "user"
}

// Operation is the state of one running GraphQL operation that code below
// the GraphQL layer may change: whether it failed.
type Operation struct{ failed atomic.Bool }

type operationKey struct{}

// WithOperation returns ctx carrying a fresh Operation.
func WithOperation(ctx context.Context) (context.Context, *Operation) {
	op := &Operation{}
	return context.WithValue(ctx, operationKey{}, op), op
}

// OperationOf returns the Operation of ctx, or nil outside one.
func OperationOf(ctx context.Context) *Operation {
	op, _ := ctx.Value(operationKey{}).(*Operation)
	return op
}

// Failed reports whether the operation was marked as failed.
func (op *Operation) Failed() bool { return op.failed.Load() }

// MarkFailed marks the operation as failed.
func (op *Operation) MarkFailed() { op.failed.Store(true) }

// SentError records an error with code that the streaming transports send
// themselves, outside gqlgen's responses (an operation refused over a
// limit, or a stream ended with an error): it counts the code and marks
// the operation of ctx, if any, as failed.
func SentError(ctx context.Context, code string) {
	RequestOf(ctx).Metrics().Error(code)
	if op := OperationOf(ctx); op != nil {
		op.MarkFailed()
	}
}
