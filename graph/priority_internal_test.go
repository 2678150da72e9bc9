package graph

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2/ast"

	"fleetgraph/auth"
	"fleetgraph/dispatch"
	"fleetgraph/metrics"
)

// opContext is a context carrying an operation of the given kind, in a
// response as the executor gives one (with gqlgen's default presenter).
func opContext(ctx context.Context, kind ast.Operation) context.Context {
	ctx = graphql.WithResponseContext(ctx, graphql.DefaultErrorPresenter, nil)
	return graphql.WithOperationContext(ctx, &graphql.OperationContext{Operation: &ast.OperationDefinition{Operation: kind}})
}

// TestRequestsFirstCountsRunningRequests checks what the fan-out yields to:
// a query or mutation counts while it runs, except while a claim is parked
// waiting for a job; a subscription's events never count.
func TestRequestsFirstCountsRunningRequests(t *testing.T) {
	t.Parallel()
	var running atomic.Int64
	ext := newRequestsFirst(0, 0, &running, nil)
	op := func(kind ast.Operation) context.Context { return opContext(context.Background(), kind) }

	ext.InterceptResponse(op(ast.Mutation), func(ctx context.Context) *graphql.Response {
		require.EqualValues(t, 1, running.Load(), "a running mutation counts")
		park := dispatch.ParkingOf(ctx)
		park.Park()
		require.EqualValues(t, 0, running.Load(), "a parked claim does not")
		require.True(t, park.Wake(ctx))
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
	dispatch.ParkingOf(context.Background()).Park() // outside an operation: nothing happens
	require.EqualValues(t, 0, running.Load())
}

// turnsTest runs operations through one requestsFirst with a few turns and
// watches the operations waiting for one.
type turnsTest struct {
	t       *testing.T
	ext     requestsFirst
	running atomic.Int64
	m       *metrics.Metrics
}

func newTurnsTest(t *testing.T, turns int) *turnsTest {
	tt := &turnsTest{t: t, m: metrics.New(nil)}
	tt.ext = newRequestsFirst(turns, 0, &tt.running, tt.m)
	return tt
}

// started is an operation in flight: its body runs until release is closed.
type started struct {
	running, release, done chan struct{}
	resp                   *graphql.Response
}

// start sends an operation of kind whose body signals running, runs
// during (if set), and then waits for release.
func (tt *turnsTest) start(ctx context.Context, kind ast.Operation, during func(ctx context.Context)) *started {
	s := &started{running: make(chan struct{}), release: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.resp = tt.ext.InterceptResponse(opContext(ctx, kind), func(ctx context.Context) *graphql.Response {
			close(s.running)
			if during != nil {
				during(ctx)
			}
			<-s.release
			return &graphql.Response{}
		})
	}()
	return s
}

// waiting reads fleetgraph_graphql_operations_waiting.
func (tt *turnsTest) waiting() float64 {
	families, err := tt.m.Registry().Gather()
	require.NoError(tt.t, err)
	for _, f := range families {
		if f.GetName() == "fleetgraph_graphql_operations_waiting" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	tt.t.Fatal("no fleetgraph_graphql_operations_waiting")
	return 0
}

// patience bounds the waits for what the test expects to happen, as
// apitest.Patience (which this package's internal tests cannot import):
// reached only when it never happens, so generous for a busy machine.
const patience = 2 * time.Minute

// waitFor waits until n operations wait for a turn.
func (tt *turnsTest) waitFor(n float64) {
	tt.t.Helper()
	require.Eventually(tt.t, func() bool { return tt.waiting() == n }, patience, time.Millisecond, "operations waiting: want %v", n)
}

func recv(t *testing.T, c chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(patience):
		t.Fatal(what)
	}
}

func ran(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestTurnsBoundRunningOperations: with two turns, a third and a fourth
// operation wait, and run in the order they came as turns are given back.
// Each comes from a caller of its own tenant (one tenant holds at most one
// of two turns: see TestFairTurnsCapACallerAndATenant).
func TestTurnsBoundRunningOperations(t *testing.T) {
	t.Parallel()
	tt := newTurnsTest(t, 2)
	caller := func() context.Context {
		return auth.WithPrincipal(t.Context(), &auth.Principal{TenantID: uuid.New(), UserID: uuid.New(), Role: auth.RoleUser})
	}
	a, b := tt.start(caller(), ast.Query, nil), tt.start(caller(), ast.Mutation, nil)
	recv(t, a.running, "first operation never ran")
	recv(t, b.running, "second operation never ran")
	c := tt.start(caller(), ast.Query, nil)
	tt.waitFor(1)
	d := tt.start(caller(), ast.Query, nil)
	tt.waitFor(2)
	require.EqualValues(t, 4, tt.running.Load(), "waiting operations count for the fan-out's yield")

	close(a.release)
	recv(t, c.running, "the first to wait did not run when a turn came back")
	tt.waitFor(1)
	require.False(t, ran(d.running), "the second to wait ran before its turn")
	close(b.release)
	recv(t, d.running, "the second to wait never ran")
	tt.waitFor(0)
	close(c.release)
	close(d.release)
	for _, s := range []*started{a, b, c, d} {
		recv(t, s.done, "an operation never ended")
		require.Empty(t, s.resp.Errors)
	}
	require.EqualValues(t, 0, tt.running.Load())

	// Every turn is back: two run at once again.
	e, f := tt.start(caller(), ast.Query, nil), tt.start(caller(), ast.Query, nil)
	recv(t, e.running, "a turn was lost")
	recv(t, f.running, "a turn was lost")
	close(e.release)
	close(f.release)
}

// TestTurnsAreSharedBetweenCallers: a caller with many operations waiting
// delays another's by one turn, not by all of them; each caller's run in
// the order they came, and a caller that leaves passes its turn on.
func TestTurnsAreSharedBetweenCallers(t *testing.T) {
	t.Parallel()
	tt := newTurnsTest(t, 1)
	as := func(tenant uuid.UUID) context.Context {
		return auth.WithPrincipal(t.Context(), &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser})
	}
	greedy, other := as(uuid.New()), as(uuid.New())
	first := tt.start(greedy, ast.Query, nil)
	recv(t, first.running, "the first operation never ran")
	var queued []*started
	for i := range 4 {
		queued = append(queued, tt.start(greedy, ast.Query, nil))
		tt.waitFor(float64(i + 1))
	}
	gone, cancel := context.WithCancel(other)
	leaving := tt.start(gone, ast.Query, nil)
	tt.waitFor(5)
	polite := tt.start(other, ast.Query, nil)
	tt.waitFor(6)
	cancel() // the other caller's first leaves: its place goes with it
	recv(t, leaving.done, "an operation whose client left still waits")
	tt.waitFor(5)

	close(first.release)
	recv(t, queued[0].running, "the greedy caller's next did not run")
	require.False(t, ran(polite.running))
	close(queued[0].release)
	recv(t, polite.running, "the other caller waited behind every operation of the greedy one")
	require.False(t, ran(queued[1].running), "the greedy caller took the other's turn")
	close(polite.release)
	for _, q := range queued[1:] {
		recv(t, q.running, "the greedy caller's operations ran out of order")
		close(q.release)
	}
	for _, s := range append(queued, first, polite, leaving) {
		recv(t, s.done, "an operation never ended")
	}
	tt.waitFor(0)
	// Every turn is back.
	again := tt.start(other, ast.Query, nil)
	recv(t, again.running, "a turn was lost")
	close(again.release)
}

// TestFieldsAfterALeavingClaimTakeATurn: a claim whose wait ended leaves
// without a turn to answer null, but a mutation's next field takes one
// before it runs.
func TestFieldsAfterALeavingClaimTakeATurn(t *testing.T) {
	t.Parallel()
	tt := newTurnsTest(t, 1)
	ctx := t.Context()
	parked, left, fieldRan := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var other *started
	claim := tt.start(ctx, ast.Mutation, func(ctx context.Context) {
		p := dispatch.ParkingOf(ctx)
		p.Park()
		close(parked)
		<-left
		p.Leave()
		tt.ext.InterceptRootField(ctx, func(context.Context) graphql.Marshaler {
			close(fieldRan)
			return graphql.Null
		})
	})
	recv(t, claim.running, "the mutation never ran")
	recv(t, parked, "the claim never parked")
	other = tt.start(ctx, ast.Query, nil) // takes the turn the claim gave back
	recv(t, other.running, "the other operation never ran")
	close(left)
	tt.waitFor(1)
	require.False(t, ran(fieldRan), "a field after the claim ran without a turn")
	close(other.release)
	recv(t, fieldRan, "the field never got a turn")
	close(claim.release)
	recv(t, claim.done, "the mutation never ended")
	recv(t, other.done, "the query never ended")
	tt.waitFor(0)
	require.EqualValues(t, 0, tt.running.Load())
	again := tt.start(ctx, ast.Query, nil)
	recv(t, again.running, "a turn was lost")
	close(again.release)
}

// TestTurnsLeaveWhenTheClientDoes: an operation whose client leaves while
// it waits ends without running, and holds no turn.
func TestTurnsLeaveWhenTheClientDoes(t *testing.T) {
	t.Parallel()
	tt := newTurnsTest(t, 1)
	a := tt.start(t.Context(), ast.Query, nil)
	recv(t, a.running, "operation never ran")
	ctx, cancel := context.WithCancel(t.Context())
	b := tt.start(ctx, ast.Query, nil)
	tt.waitFor(1)
	cancel()
	recv(t, b.done, "a waiting operation whose client left did not end")
	require.False(t, ran(b.running), "it ran")
	require.Len(t, b.resp.Errors, 1)
	require.Equal(t, "the request was cancelled", b.resp.Errors[0].Message)
	tt.waitFor(0)

	close(a.release)
	c := tt.start(t.Context(), ast.Query, nil)
	recv(t, c.running, "the turn was not given back")
	close(c.release)
	require.EqualValues(t, 0, waitRunning(t, &tt.running))
}

// waitRunning waits until nothing is counted as running and returns the count.
func waitRunning(t *testing.T, running *atomic.Int64) int64 {
	require.Eventually(t, func() bool { return running.Load() == 0 }, patience, time.Millisecond)
	return running.Load()
}

// TestParkedClaimsGiveTheirTurn: a claim parked waiting for a job lets
// another operation run on its turn, and when it wakes it waits for a turn
// again, but not when it leaves; a subscription's events take no turn.
func TestParkedClaimsGiveTheirTurn(t *testing.T) {
	t.Parallel()
	tt := newTurnsTest(t, 1)
	ctx := t.Context()
	parked, wake, woken := make(chan struct{}), make(chan struct{}), make(chan struct{})
	claim := tt.start(ctx, ast.Mutation, func(ctx context.Context) {
		park := dispatch.ParkingOf(ctx)
		park.Park()
		close(parked)
		<-wake
		park.Wake(ctx)
		close(woken)
	})
	recv(t, parked, "the claim never parked")
	q := tt.start(ctx, ast.Query, nil)
	recv(t, q.running, "a query did not run while the only turn's holder was parked")

	close(wake)
	tt.waitFor(1)
	require.False(t, ran(woken), "the woken claim went on without a turn")
	sub := tt.start(ctx, ast.Subscription, nil)
	recv(t, sub.running, "a subscription's event waited for a turn")
	close(sub.release)
	close(q.release)
	recv(t, woken, "the woken claim never got its turn back")
	close(claim.release)
	recv(t, claim.done, "the claim never ended")

	// A parked claim that leaves (its wait ended, its server drains, its
	// client left) answers without waiting for a turn, and gives back none
	// it does not hold.
	parked2, left := make(chan struct{}), make(chan struct{})
	leaver := tt.start(ctx, ast.Mutation, func(ctx context.Context) {
		park := dispatch.ParkingOf(ctx)
		park.Park()
		close(parked2)
		<-left
		park.Leave()
	})
	recv(t, parked2, "the second claim never parked")
	holder := tt.start(ctx, ast.Query, nil)
	recv(t, holder.running, "no turn while the second claim was parked")
	close(left)
	close(leaver.release)
	recv(t, leaver.done, "a leaving claim waited for a turn")
	tt.waitFor(0)
	require.EqualValues(t, 1, tt.running.Load(), "the leaving claim is counted out, the holder counts")
	close(holder.release)
	recv(t, holder.done, "the holder never ended")
	last := tt.start(ctx, ast.Query, nil)
	recv(t, last.running, "a turn was lost")
	close(last.release)
	recv(t, last.done, "the last operation never ended")
	require.EqualValues(t, 0, tt.running.Load())
}

// TestWokenClaimsWaitForATurnWithinTheirWait: a woken claim waits for a
// turn only as long as its wait lasts (Wake's ctx); one whose wait ends
// first goes on without a turn, and the operation's end gives back none
// and counts it out.
func TestWokenClaimsWaitForATurnWithinTheirWait(t *testing.T) {
	t.Parallel()
	tt := newTurnsTest(t, 1)
	ctx := t.Context()
	wait, endWait := context.WithCancel(ctx)
	parked, wake, woke := make(chan struct{}), make(chan struct{}), make(chan bool, 1)
	claim := tt.start(ctx, ast.Mutation, func(ctx context.Context) {
		park := dispatch.ParkingOf(ctx)
		park.Park()
		close(parked)
		<-wake
		woke <- park.Wake(wait)
	})
	recv(t, parked, "the claim never parked")
	holder := tt.start(ctx, ast.Query, nil)
	recv(t, holder.running, "no turn while the claim was parked")
	close(wake)
	tt.waitFor(1)
	endWait()
	select {
	case ok := <-woke:
		require.False(t, ok, "the claim got a turn that was held")
	case <-time.After(patience):
		t.Fatal("the claim kept waiting for a turn after its wait ended")
	}
	tt.waitFor(0)
	close(claim.release)
	recv(t, claim.done, "the claim never ended")
	close(holder.release)
	recv(t, holder.done, "the holder never ended")
	require.EqualValues(t, 0, tt.running.Load())
	last := tt.start(ctx, ast.Query, nil)
	recv(t, last.running, "a turn was lost")
	close(last.release)
	recv(t, last.done, "the last operation never ended")
}
