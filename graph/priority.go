package graph

import (
	"context"
	"maps"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/dispatch"
	"fleetgraph/graph/live"
	"fleetgraph/metrics"
)

// DefaultRunningPerCPU is how many queries and mutations execute at once
// per CPU (GOMAXPROCS) when HandlerConfig.Running is 0.
const DefaultRunningPerCPU = 4

// requestsFirst is the gqlgen extension that gives queries and mutations
// their turns and counts them.
//
// Turns: at most a fixed number of operations execute at once (turns);
// the rest wait (fairTurns: callers in rotation, each caller's in arrival
// order) before their loaders and results are
// allocated. Past that number more operations in flight buy no
// throughput on the process's CPUs, only a larger live heap, which the
// garbage collector scans on every cycle (BENCHMARKS.md, "Turns"). A
// claim gives its turn back while it is parked waiting for a job
// (dispatch.WithParking) and takes one again when it wakes, unless its
// wait ends first, so robots' long polls never hold turns.
//
// A subscription takes a turn while its resolver subscribes and reads
// (InterceptOperation), and for each result it renders (renderTurn), never
// while it waits for a change or while its result is written.
//
// Counting: while any query or mutation waits or runs, a single writer
// sends subscription results (live.Fanout.Yield), so a process that fans
// out at full speed keeps a CPU for its requests. Subscription events are
// not counted, nor is a parked claim: robots' long polls would otherwise
// hold the fan-out to one writer all the time.
//
// Deadline: an operation is stopped after timeout of work, counted from
// when it starts waiting for its turn, less the time a claim spends parked
// (operationDeadline).
type requestsFirst struct {
	timeout time.Duration
	running *atomic.Int64
	turns   *fairTurns
}

var (
	_ graphql.HandlerExtension     = requestsFirst{}
	_ graphql.OperationInterceptor = requestsFirst{}
	_ graphql.ResponseInterceptor  = requestsFirst{}
	_ graphql.RootFieldInterceptor = requestsFirst{}
)

// newRequestsFirst gives n operations turns at once (0: DefaultRunningPerCPU
// per CPU), and each timeout of work (0: DefaultOperationTimeout).
func newRequestsFirst(n int, timeout time.Duration, running *atomic.Int64, m *metrics.Metrics) requestsFirst {
	if n <= 0 {
		n = DefaultRunningPerCPU * runtime.GOMAXPROCS(0)
	}
	if timeout <= 0 {
		timeout = DefaultOperationTimeout
	}
	return requestsFirst{timeout: timeout, running: running, turns: newFairTurns(n, m.OperationWaiting)}
}

// ExtensionName implements graphql.HandlerExtension.
func (requestsFirst) ExtensionName() string { return "RequestsFirst" }

// Validate implements graphql.HandlerExtension.
func (requestsFirst) Validate(graphql.ExecutableSchema) error { return nil }

// InterceptOperation implements graphql.OperationInterceptor: a
// subscription's resolver, which subscribes and reads its entity's first
// state or checks its arguments (gqlgen calls it as the operation is
// dispatched), runs in a turn as a query does. Without one, a caller's 48
// sockets subscribing and completing in a loop held all of the pool's
// connections and everyone else's queries waited seconds for one. Each
// result of the stream that follows is rendered in a turn of its own
// (renderTurn).
func (r requestsFirst) InterceptOperation(ctx context.Context, next graphql.OperationHandler) graphql.ResponseHandler {
	if rc := graphql.GetOperationContext(ctx); rc.Operation == nil || rc.Operation.Operation != ast.Subscription {
		return next(ctx)
	}
	rt := &renderTurn{r: r, reading: make(chan struct{}, 1)}
	ctx = context.WithValue(ctx, renderTurnKey{}, rt)
	results := r.subscribe(ctx, next)
	return func(ctx context.Context) *graphql.Response {
		render, stop := context.WithCancelCause(ctx)
		defer stop(context.Canceled)
		rt.read(stop)
		defer rt.rendered()
		resp := results(render)
		if timedOut(render) {
			// Stopped at its deadline: the subscription ends so, as an
			// operation stopped at its deadline does; what it rendered
			// meanwhile is dropped.
			live.End(ctx, operationTimeout(r.timeout))
			return nil
		}
		return resp
	}
}

// subscribe calls a subscription's resolver in a turn.
func (r requestsFirst) subscribe(ctx context.Context, next graphql.OperationHandler) graphql.ResponseHandler {
	// The wait is bounded as an operation's is: a shared group's start
	// waits on a context nothing cancels, while its socket's reader waits.
	wait, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	t := turn{r: r}
	if !t.takeWhateverRoom(wait) {
		if ctx.Err() != nil {
			return graphql.OneShot(&graphql.Response{Errors: gqlerror.List{clientGone()}})
		}
		fe := operationTimeout(r.timeout)
		ext := map[string]any{"code": fe.Code}
		maps.Copy(ext, fe.Extra)
		return graphql.OneShot(&graphql.Response{Errors: gqlerror.List{{Message: fe.Message, Extensions: ext}}})
	}
	defer t.give()
	return next(ctx)
}

// InterceptResponse implements graphql.ResponseInterceptor.
func (r requestsFirst) InterceptResponse(ctx context.Context, next graphql.ResponseHandler) *graphql.Response {
	if rc := graphql.GetOperationContext(ctx); rc.Operation == nil || rc.Operation.Operation == ast.Subscription {
		return next(ctx)
	}
	ctx, deadline := newOperationDeadline(ctx, r.timeout)
	defer deadline.stop()
	r.running.Add(1)
	defer r.running.Add(-1)
	t := turn{r: r, counted: true}
	if !t.take(ctx) {
		graphql.AddError(ctx, r.stopped(ctx))
		return &graphql.Response{Errors: graphql.GetErrors(ctx)}
	}
	defer t.give()
	if rc := graphql.GetOperationContext(ctx); rc.Operation.Operation == ast.Query {
		ctx = context.WithValue(ctx, rootFieldSlotsKey{}, make(chan struct{}, parallelRootFields))
	}
	return next(dispatch.WithParking(ctx, parking{r: r, turn: &t, deadline: deadline}))
}

// parallelRootFields is how many root fields of one query run at once
// (with everything below them). gqlgen runs them all concurrently, each
// with its own statements: 50 aliases of an aggregate held all 25 of the
// pool's connections, and every other caller's statements waited for one.
// Three keeps an operation's share near the pool's size over the turns
// (25 over 8 on two CPUs). Mutations' fields run one at a time anyway.
const parallelRootFields = 3

// rootFieldSlotsKey holds a query's root field slots: a channel of
// parallelRootFields places.
type rootFieldSlotsKey struct{}

// parking is an operation's dispatch.Parking. A parked claim gives its
// turn back, stops counting as running and stops its deadline's clock; a
// woken one undoes all three; a leaving one, which only answers null,
// counts as running again and restarts the clock, and a field after it
// takes a turn first (InterceptRootField). The operation's end counts it
// out and gives back its turn if it holds one. An operation's parking
// calls never overlap: claims are mutation fields, which run one at a time.
type parking struct {
	r        requestsFirst
	turn     *turn
	deadline *operationDeadline
}

// Park implements dispatch.Parking.
func (p parking) Park() {
	p.deadline.pause()
	p.r.running.Add(-1)
	p.turn.give()
}

// Wake implements dispatch.Parking. The wait for a turn counts as work, as
// an operation's first wait does.
func (p parking) Wake(ctx context.Context) bool {
	p.deadline.resume()
	p.r.running.Add(1)
	return p.turn.take(ctx)
}

// Leave implements dispatch.Parking.
func (p parking) Leave() {
	p.deadline.resume()
	p.r.running.Add(1)
}

// InterceptRootField implements graphql.RootFieldInterceptor: a query's
// field waits for one of its operation's parallelRootFields slots; a
// mutation's field that follows a claim which ended its wait without a
// turn (Leave, or a Wake that gave up) takes a turn before it runs, so
// every field of an operation runs within the turns and its deadline.
func (r requestsFirst) InterceptRootField(ctx context.Context, next graphql.RootResolver) graphql.Marshaler {
	if slots, ok := ctx.Value(rootFieldSlotsKey{}).(chan struct{}); ok {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			graphql.AddError(ctx, r.stopped(ctx))
			return graphql.Null
		}
		defer func() { <-slots }()
		return next(ctx)
	}
	p, ok := dispatch.ParkingOf(ctx).(parking)
	if !ok || p.turn.held {
		return next(ctx)
	}
	if !p.turn.take(ctx) {
		graphql.AddError(ctx, r.stopped(ctx))
		return graphql.Null
	}
	return next(ctx)
}

// stopped is why an operation in ctx got no turn: its deadline passed, or
// its client left.
func (r requestsFirst) stopped(ctx context.Context) error {
	if timedOut(ctx) {
		return operationTimeout(r.timeout)
	}
	return clientGone()
}

// turn is one operation's hold on a turn.
type turn struct {
	r     requestsFirst
	held  bool
	owner turnOwner // who holds it, while held
	// counted: its operation counts as running (requestsFirst.running),
	// which it does not while it waits for room.
	counted bool
}

// take waits for a turn, and reports false if ctx ended first. An
// operation of a websocket takes one only while its socket has room for
// another result (live.AwaitRoom): a client that reads slowly, or not at
// all, has nothing more run or rendered for it, whatever it sends, until
// its results are written. Room is looked at again once the turn is
// taken, so that the operations waiting together for a turn do not all
// render into the room one of them had.
func (t *turn) take(ctx context.Context) bool {
	o := turnCaller(ctx)
	for {
		if !t.awaitRoom(ctx) || !t.r.turns.take(ctx, o) {
			return false
		}
		if live.HasRoom(ctx) {
			t.held, t.owner = true, o
			return true
		}
		t.r.turns.give(o)
	}
}

// awaitRoom is live.AwaitRoom, not counted as running while it waits.
func (t *turn) awaitRoom(ctx context.Context) bool {
	if t.counted && !live.HasRoom(ctx) {
		t.r.running.Add(-1)
		defer t.r.running.Add(1)
	}
	return live.AwaitRoom(ctx)
}

// takeWhateverRoom is take without waiting for room, for a subscription's
// resolver: it runs on the socket's reader (so that the subscription is
// live before the next message is read) and renders nothing; its results
// wait for room as they render (awaitRender). Waiting there, it stopped
// the socket's reader, and with it the client's complete messages.
func (t *turn) takeWhateverRoom(ctx context.Context) bool {
	o := turnCaller(ctx)
	if !t.r.turns.take(ctx, o) {
		return false
	}
	t.held, t.owner = true, o
	return true
}

// give returns the turn, if held.
func (t *turn) give() {
	if t.held {
		t.held = false
		t.r.turns.give(t.owner)
	}
}

// renderTurn gives each result of one subscription a turn while it is
// rendered: its selection resolved (loaders, statements) and marshalled.
// Rendering is the work a subscription costs, and without a turn it had
// no bound: a user's twenty 122-byte subscriptions, each selecting 240
// events' details, rendered at once on their own goroutines, allocated
// 2.6 GB and held 1.4 GB of heap, again on every change of the machine.
// In turns, renders run a few at a time, in rotation with every caller's
// queries, and one caller's at most as many as its queries may.
//
// gqlgen's result handler waits for the resolver's next value and then
// renders it, in one call, so the resolver's goroutine takes the turn
// (awaitRender, in stream) once the reader waits for a value and before
// it sends one, and the reader gives it back once the result is rendered,
// before it is written: a turn is never held waiting for a change or for
// a slow client.
//
// A render has an operation's time (OPERATION_TIMEOUT_SECONDS) from when
// its turn is taken: past it, its statements are cancelled, its turn goes
// back and the subscription ends with OPERATION_TIMEOUT. A render blocked
// on a lock held every turn it had, and other callers' queries, which
// touched nothing locked, timed out waiting for one.
type renderTurn struct {
	r    requestsFirst
	mu   sync.Mutex
	turn turn // the turn taken, until given back
	// stop ends the render the reader waits to run; deadline, armed when
	// its turn is taken, calls it with errOperationTimeout.
	stop     context.CancelCauseFunc
	deadline *time.Timer
	// reading holds a token while the subscription's reader waits for a
	// value to render.
	reading chan struct{}
}

type renderTurnKey struct{}

// read says the reader is about to wait for the next value, whose render
// stop ends.
func (rt *renderTurn) read(stop context.CancelCauseFunc) {
	rt.mu.Lock()
	rt.stop = stop
	rt.mu.Unlock()
	select {
	case rt.reading <- struct{}{}:
	default:
	}
}

// rendered gives back the turn the last value was rendered in.
func (rt *renderTurn) rendered() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.deadline != nil {
		rt.deadline.Stop()
		rt.deadline = nil
	}
	rt.turn.give()
}

// awaitRender waits, in the resolver's goroutine of the subscription in
// ctx, until its reader waits for a value and a turn is taken for
// rendering it; false if ctx or done ended first. After true the caller
// sends its value, or calls rendered if it cannot. A subscription that
// is not run by the handler (no renderTurn) renders without one.
func awaitRender(ctx context.Context, done <-chan struct{}) bool {
	rt, ok := ctx.Value(renderTurnKey{}).(*renderTurn)
	if !ok {
		return true
	}
	select {
	case <-rt.reading:
	case <-ctx.Done():
		return false
	case <-done:
		return false
	}
	t := turn{r: rt.r}
	if !t.take(ctx) {
		return false
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.turn = t
	stop := rt.stop
	rt.deadline = time.AfterFunc(rt.r.timeout, func() { stop(errOperationTimeout) })
	return true
}

// renderedWithout gives back the turn awaitRender took for a value that
// was not sent after all.
func renderedWithout(ctx context.Context) {
	if rt, ok := ctx.Value(renderTurnKey{}).(*renderTurn); ok {
		rt.rendered()
	}
}
