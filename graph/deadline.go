package graph

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"fleetgraph/fault"
)

// DefaultOperationTimeout is how long a query or mutation may work when
// HandlerConfig.OperationTimeout is 0.
const DefaultOperationTimeout = 30 * time.Second

// errOperationTimeout is the cause of an operation's context ending at its
// deadline; the error presenter turns any error of a field whose operation
// ended so into operationTimeout's refusal.
var errOperationTimeout = errors.New("the operation ran past its deadline")

// operationDeadline ends an operation's context once it has worked for its
// allotted time. Time a claim spends parked, waiting for a job without a
// turn or a database connection, is not counted: the claim's wait has its
// own bound (dispatch.WaitWithin), and what the deadline bounds is the work
// an operation makes the server and PostgreSQL do. lib/pq cancels a
// running statement when its context ends, so a statement that scans far
// more than it returns stops there, and its transaction rolls back.
type operationDeadline struct {
	cancel context.CancelCauseFunc

	mu     sync.Mutex
	timer  *time.Timer
	left   time.Duration // what remains while paused
	since  time.Time     // when the timer last started
	paused bool
}

// newOperationDeadline returns ctx ending after d of work, with its deadline.
// Call stop when the operation is done.
func newOperationDeadline(ctx context.Context, d time.Duration) (context.Context, *operationDeadline) {
	ctx, cancel := context.WithCancelCause(ctx)
	od := &operationDeadline{cancel: cancel, left: d, since: time.Now()}
	od.timer = time.AfterFunc(d, func() { cancel(errOperationTimeout) })
	return ctx, od
}

// pause stops the clock (a claim parks).
func (od *operationDeadline) pause() {
	od.mu.Lock()
	defer od.mu.Unlock()
	if od.paused || !od.timer.Stop() {
		return // paused already, or the deadline has passed
	}
	od.paused = true
	od.left -= time.Since(od.since)
}

// resume starts the clock again with what was left (a claim wakes).
func (od *operationDeadline) resume() {
	od.mu.Lock()
	defer od.mu.Unlock()
	if !od.paused {
		return
	}
	od.paused = false
	od.since = time.Now()
	od.timer.Reset(max(od.left, 0))
}

// stop releases the deadline's timer and context.
func (od *operationDeadline) stop() {
	od.timer.Stop()
	od.cancel(context.Canceled)
}

// timedOut reports whether ctx belongs to an operation stopped at its deadline.
func timedOut(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), errOperationTimeout)
}

// operationTimeout is the refusal of an operation (or one of its fields)
// stopped at its deadline: RATE_LIMITED, as the other limits on what one
// request may take are, naming the setting and its value.
func operationTimeout(d time.Duration) *fault.Error {
	return &fault.Error{
		Code: fault.RateLimited,
		Message: fmt.Sprintf("the operation was stopped after %s of work (OPERATION_TIMEOUT_SECONDS); ask for less, "+
			"for example with narrower filters or smaller pages, or split it into several requests", d),
		Extra: map[string]any{"reason": "OPERATION_TIMEOUT", "limit": "OPERATION_TIMEOUT_SECONDS", "max": int(d / time.Second)},
	}
}
