package live

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/fault"
)

// TestMemberQueueCoalesces checks a member's queue while no writer takes
// it: a newer result of an entity replaces the one waiting, in its place;
// untagged results are all kept; the limit counts what waits, and past it
// the member ends as a slow consumer with its queue dropped.
func TestMemberQueueCoalesces(t *testing.T) {
	t.Parallel()
	f := NewFanout(nil)
	g := &group{members: map[*member]struct{}{}, done: make(chan struct{}), cancel: func() {}}
	var finished []outcome
	m := &member{f: f, g: g, ctx: context.Background(), limit: 3, listed: true, // a writer is "busy": nothing drains
		write: func([][]byte, func()) error { return nil }, finish: func(o outcome) { finished = append(finished, o) }}
	g.members[m] = struct{}{}
	payloads := func() []string {
		var out []string
		for _, q := range m.queue {
			out = append(out, q.key+"="+string(q.payload))
		}
		return out
	}

	m.push([]byte("a1"), "a")
	m.push([]byte("b1"), "b")
	m.push([]byte("a2"), "a")
	require.Equal(t, []string{"a=a2", "b=b1"}, payloads(), "a's newer result replaced its older one, in its place")
	m.push([]byte("x"), "")
	require.Equal(t, []string{"a=a2", "b=b1", "=x"}, payloads())
	m.push([]byte("b2"), "b")
	require.Equal(t, []string{"a=a2", "b=b2", "=x"}, payloads(), "at the limit, an entity already waiting is still replaced")
	require.Nil(t, m.ending)

	m.push([]byte("c1"), "c")
	require.NotNil(t, m.ending, "a fourth entity passes the limit of 3")
	require.NotNil(t, m.ending.errs)
	require.Equal(t, fault.RateLimited, m.ending.errs[0].Extensions["code"])
	require.Equal(t, "SLOW_CONSUMER", m.ending.errs[0].Extensions["reason"])
	require.Empty(t, m.queue, "the queue of a member ended as slow is dropped")
	_, still := g.members[m]
	require.False(t, still, "it left its group")
}

// TestDrainWritesWhatWaitsAtOnce checks that a writer hands a member's
// whole queue to one write, oldest first, and finishes the member once its
// queue is empty and its end decided.
func TestDrainWritesWhatWaitsAtOnce(t *testing.T) {
	t.Parallel()
	f := NewFanout(nil)
	g := &group{members: map[*member]struct{}{}, done: make(chan struct{}), cancel: func() {}}
	var writes [][]string
	var finished []outcome
	m := &member{f: f, g: g, ctx: context.Background(), limit: 10, listed: true,
		write: recordWrites(&writes), finish: func(o outcome) { finished = append(finished, o) }}
	g.members[m] = struct{}{}
	g.members[&member{}] = struct{}{} // another member: m's end does not wait for the group's
	m.push([]byte("a1"), "a")
	m.push([]byte("b1"), "b")
	m.push([]byte("a2"), "a")
	m.push([]byte("x"), "")
	scratch := m.drain(nil)
	require.Equal(t, [][]string{{"a2", "b1", "x"}}, writes, "one write of the queue, oldest first")
	require.Empty(t, finished, "the member has not ended")
	require.False(t, m.listed, "an empty member leaves the ready list")
	for _, p := range scratch[:cap(scratch)] {
		require.Nil(t, p, "the writer's scratch keeps no payload")
	}

	m.mu.Lock()
	m.listed = true // as list would mark it
	m.mu.Unlock()
	m.push([]byte("c1"), "c")
	m.end(outcome{}, true)
	m.drain(scratch)
	require.Equal(t, [][]string{{"a2", "b1", "x"}, {"c1"}}, writes, "what was rendered before the end still goes out")
	require.Equal(t, []outcome{{}}, finished, "then the member finishes, once")
}

// recordWrites is a member's write that appends each write's payloads, as
// strings, to writes.
func recordWrites(writes *[][]string) func([][]byte, func()) error {
	return func(payloads [][]byte, _ func()) error {
		var w []string
		for _, p := range payloads {
			w = append(w, string(p))
		}
		*writes = append(*writes, w)
		return nil
	}
}

// TestLongQueueCoalesces checks coalescing past the length from which a
// member indexes its queue by entity: entities queued before and after the
// index was built are replaced in place, untagged results are all kept,
// and once written the member scans again.
func TestLongQueueCoalesces(t *testing.T) {
	t.Parallel()
	f := NewFanout(nil)
	g := &group{members: map[*member]struct{}{}, done: make(chan struct{}), cancel: func() {}}
	var writes [][]string
	m := &member{f: f, g: g, ctx: context.Background(), limit: 100, listed: true,
		write: recordWrites(&writes), finish: func(outcome) {}}
	g.members[m] = struct{}{}
	var want []string
	for i := range 2 * indexFrom {
		key := fmt.Sprint("e", i)
		m.push([]byte(key+"=1"), key)
		m.push([]byte("u"), "") // untagged: never replaced, never indexed
		want = append(want, key+"=1", "u")
	}
	require.NotNil(t, m.pending, "a long queue is indexed")
	for _, i := range []int{0, 3, indexFrom - 1, indexFrom, 2*indexFrom - 1} {
		key := fmt.Sprint("e", i)
		m.push([]byte(key+"=2"), key)
		want[2*i] = key + "=2"
	}
	require.Len(t, m.queue, 4*indexFrom, "replacements took their entity's place")
	m.drain(nil)
	require.Equal(t, [][]string{want}, writes)
	require.Nil(t, m.pending, "an empty queue has no index")

	m.mu.Lock()
	m.listed = true
	m.mu.Unlock()
	m.push([]byte("e0=3"), "e0")
	m.push([]byte("e0=4"), "e0")
	require.Equal(t, []queued{{"e0", []byte("e0=4")}}, m.queue, "a short queue coalesces by scanning")
}

// TestOneResultAtATimeAllocatesNothing checks the common case of a shared
// subscription's member, one result waiting at a time: queueing it and
// writing it allocates nothing once the member has had one (no index, the
// queue's storage kept).
func TestOneResultAtATimeAllocatesNothing(t *testing.T) {
	f := NewFanout(nil)
	g := &group{members: map[*member]struct{}{}, done: make(chan struct{}), cancel: func() {}}
	m := &member{f: f, g: g, ctx: context.Background(), limit: 10, listed: true,
		write: func([][]byte, func()) error { return nil }, finish: func(outcome) {}}
	g.members[m] = struct{}{}
	payload := []byte("p")
	scratch := make([][]byte, 0, 4)
	deliver := func() {
		m.push(payload, "job-1")
		scratch = m.drain(scratch)
		m.listed = true // as list would mark it; no writer is involved here
	}
	deliver()
	require.Zero(t, testing.AllocsPerRun(100, deliver))
	for _, q := range m.queue[:cap(m.queue)] {
		require.Nil(t, q.payload, "the kept queue holds no payload")
	}
}

// TestResultTagsInOrder checks that tags come back in the order the
// resolver set them, and empty once used up.
func TestResultTagsInOrder(t *testing.T) {
	t.Parallel()
	tags := &resultTags{}
	ctx := context.WithValue(context.Background(), tagsKey{}, tags)
	Tag(ctx, "a")
	Tag(ctx, "")
	Tag(ctx, "b")
	Tag(context.Background(), "ignored") // no group: nothing recorded
	require.Equal(t, "a", tags.next())
	require.Equal(t, "", tags.next())
	require.Equal(t, "b", tags.next())
	require.Equal(t, "", tags.next())
}

// TestWritersYieldToRequests checks the fan-out's priority for requests:
// while Yield reports requests running, a member waiting does not get a
// second writer; once they are done, the next member listed starts one.
func TestWritersYieldToRequests(t *testing.T) {
	t.Parallel()
	var busy atomic.Bool
	busy.Store(true)
	f := NewFanout(nil)
	f.Writers = 2
	f.Yield = busy.Load
	g := &group{members: map[*member]struct{}{}, done: make(chan struct{}), cancel: func() {}}
	written := make(chan string, 10)
	release := make(chan struct{})
	newMember := func(name string, block bool) *member {
		m := &member{f: f, g: g, ctx: context.Background(), limit: 10,
			write: func(p [][]byte, _ func()) error {
				written <- name
				if block {
					<-release
				}
				return nil
			},
			finish: func(outcome) {}}
		g.members[m] = struct{}{}
		return m
	}
	a, b, c := newMember("a", true), newMember("b", false), newMember("c", false)
	a.push([]byte("1"), "")
	require.Equal(t, "a", <-written, "the first writer holds a")
	b.push([]byte("1"), "")
	f.readyMu.Lock()
	writing, waiting := f.writing, len(f.ready)
	f.readyMu.Unlock()
	require.Equal(t, 1, writing, "requests are running: no second writer")
	require.Equal(t, 1, waiting, "b waits on the ready list")

	busy.Store(false)
	c.push([]byte("1"), "")
	require.Equal(t, "b", <-written, "a second writer took b")
	require.Equal(t, "c", <-written)
	close(release)
}

// streamExec is a GraphExecutor whose one operation is a stream the test
// feeds: dispatching it counts a subscription (as a resolver registering
// with the hub does) and waits for release, when set.
type streamExec struct {
	dispatched atomic.Int32
	entered    chan struct{} // receives once per dispatch, when set
	release    chan struct{} // dispatch waits for it, when set
	results    chan *graphql.Response
}

func (e *streamExec) CreateOperationContext(context.Context, *graphql.RawParams) (*graphql.OperationContext, gqlerror.List) {
	panic("unused: the test prepares its operation")
}

func (e *streamExec) DispatchOperation(ctx context.Context, _ *graphql.OperationContext) (graphql.ResponseHandler, context.Context) {
	if e.entered != nil {
		e.entered <- struct{}{}
	}
	if e.release != nil {
		<-e.release
	}
	e.dispatched.Add(1)
	return func(ctx context.Context) *graphql.Response {
		select {
		case r := <-e.results:
			return r
		case <-ctx.Done():
			return nil
		}
	}, ctx
}

func (e *streamExec) DispatchError(_ context.Context, errs gqlerror.List) *graphql.Response {
	return &graphql.Response{Errors: errs}
}

// TestJoinReturnsWithTheGroupSubscribed checks that a shared subscription
// is registered when attach returns, for the member that starts its group
// and for one that joins it while it is being started: a transport attaches
// before it reads the client's next message or sends its headers, so a
// client can order its own changes after its subscription.
func TestJoinReturnsWithTheGroupSubscribed(t *testing.T) {
	t.Parallel()
	const wait = 2 * time.Minute // a bound only: as apitest.Patience, which this package cannot import
	f := NewFanout(nil)
	exec := &streamExec{entered: make(chan struct{}, 1), release: make(chan struct{}), results: make(chan *graphql.Response)}
	rc := &graphql.OperationContext{Operation: &ast.OperationDefinition{Operation: ast.Subscription}}
	key := groupKey{class: "test"}
	type delivery struct {
		member  int
		payload string
	}
	delivered := make(chan delivery, 4)
	finished := make(chan outcome, 2)
	ctxs := make([]context.CancelFunc, 2)
	attached := make(chan int32, 2)
	attach := func(i int) {
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[i] = cancel
		write := func(payloads [][]byte, _ func()) error {
			for _, p := range payloads {
				delivered <- delivery{i, string(p)}
			}
			return nil
		}
		f.attach(ctx, ctx, exec, rc, key, nil, write, func(o outcome) { finished <- o })
		attached <- exec.dispatched.Load() // what attach had done when it returned
	}

	go attach(0)
	select {
	case <-exec.entered: // the first member dispatches the group's operation
	case <-time.After(wait):
		t.Fatal("the first member never dispatched its group's operation")
	}
	go attach(1) // joins the group while it is being started
	close(exec.release)
	for range 2 {
		select {
		case n := <-attached:
			require.EqualValues(t, 1, n, "attach returned before the group's operation was dispatched")
		case <-time.After(wait):
			t.Fatal("attach never returned")
		}
	}
	require.EqualValues(t, 1, exec.dispatched.Load(), "the second member joined the first's group")

	exec.results <- &graphql.Response{Data: []byte(`{"n":1}`)}
	got := map[int]string{}
	for range 2 {
		select {
		case d := <-delivered:
			got[d.member] = d.payload
		case <-time.After(wait):
			t.Fatalf("the result reached only %v", got)
		}
	}
	require.Equal(t, map[int]string{0: `{"data":{"n":1}}`, 1: `{"data":{"n":1}}`}, got)

	for _, cancel := range ctxs {
		cancel()
	}
	for range 2 {
		select {
		case o := <-finished:
			require.True(t, o.stopped, "a member that left ends stopped: %+v", o)
		case <-time.After(wait):
			t.Fatal("a member that left never finished")
		}
	}
}

// TestMemberQueueBoundsItsBytes checks a member's queue against its byte
// bound while no writer takes it: large results end the member as a slow
// consumer once what waits passes DefaultMemberBytes, far under the count
// limit; a result that replaces its entity's counts only once; and one
// result larger than the bound is kept when nothing else waits.
func TestMemberQueueBoundsItsBytes(t *testing.T) {
	t.Parallel()
	const size = 1 << 20
	f := NewFanout(nil)
	g := &group{members: map[*member]struct{}{}, done: make(chan struct{}), cancel: func() {}}
	m := &member{f: f, g: g, ctx: context.Background(), limit: DefaultMemberQueue, listed: true, // nothing drains
		write: func([][]byte, func()) error { return nil }, finish: func(outcome) {}}
	g.members[m] = struct{}{}
	waiting := func() (n int) {
		for _, q := range m.queue {
			n += len(q.payload)
		}
		return n
	}

	huge := make([]byte, DefaultMemberBytes+1)
	m.push(huge, "big")
	require.Nil(t, m.ending, "one result over the bound is kept when nothing else waits")
	m.push(make([]byte, size), "big")
	require.Nil(t, m.ending, "and replaced by a newer one of its entity")
	require.Equal(t, size, waiting())

	for i := 1; i < DefaultMemberBytes/size; i++ {
		m.push(make([]byte, size), fmt.Sprint("e", i))
	}
	require.Nil(t, m.ending)
	require.Equal(t, DefaultMemberBytes, waiting(), "at the bound")
	for range 100 {
		m.push(make([]byte, size), "e1") // replaces e1's: the same bytes wait
	}
	require.Nil(t, m.ending, "a replaced result's bytes count once")
	require.Equal(t, DefaultMemberBytes, waiting())

	m.push(make([]byte, size+1), "e2") // replaces e2's with one a byte larger
	require.NotNil(t, m.ending, "a replacement that passes the bound ends the member")
	require.Equal(t, "SLOW_CONSUMER", m.ending.errs[0].Extensions["reason"])
	require.Less(t, len(m.queue)+DefaultMemberBytes/size, DefaultMemberQueue)
	require.Empty(t, m.queue, "its queue is dropped")
	require.Zero(t, m.bytes)

	// A new entity past the bound, the same way.
	m2 := &member{f: f, g: g, ctx: context.Background(), limit: DefaultMemberQueue, listed: true,
		write: func([][]byte, func()) error { return nil }, finish: func(outcome) {}}
	g.members[m2] = struct{}{}
	for i := 0; m2.ending == nil; i++ {
		require.LessOrEqual(t, m2.bytes, DefaultMemberBytes)
		require.Less(t, i, DefaultMemberQueue/10, "ended by its bytes, far under the count limit")
		m2.push(make([]byte, size), fmt.Sprint("e", i))
	}
	require.Equal(t, "SLOW_CONSUMER", m2.ending.errs[0].Extensions["reason"])
}

// TestAMemberThatDoesNotReadHoldsBoundedMemory is the reviewer's case
// through a group: one member reads, the other's write never returns (its
// client stopped reading), and the group renders 100 results of 1 MiB,
// 100 MiB in all, far under the count limit. The reader gets them all; the
// other member is ended as a slow consumer once its waiting results pass
// DefaultMemberBytes, and the heap holds at most that and the batch stuck
// in its write, not the 100 MiB rendered.
func TestAMemberThatDoesNotReadHoldsBoundedMemory(t *testing.T) {
	// Not parallel: the heap is measured.
	const (
		wait    = 2 * time.Minute // a bound only: as apitest.Patience
		results = 100
		size    = 1 << 20
	)
	f := NewFanout(nil)
	f.Writers = 2
	exec := &streamExec{results: make(chan *graphql.Response)}
	rc := &graphql.OperationContext{Operation: &ast.OperationDefinition{Operation: ast.Subscription}}
	key := groupKey{class: "test"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	read := make(chan int, results)
	f.attach(ctx, ctx, exec, rc, key, nil, func(p [][]byte, _ func()) error { read <- len(p); return nil }, func(outcome) {})
	stuck, release := make(chan struct{}, 1), make(chan struct{})
	ended := make(chan outcome, 1)
	f.attach(ctx, ctx, exec, rc, key, nil, func([][]byte, func()) error {
		stuck <- struct{}{}
		<-release
		return nil
	}, func(o outcome) { ended <- o })
	defer close(release)

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	data := []byte(`{"s":"` + strings.Repeat("x", size) + `"}`)
	for range results {
		exec.results <- &graphql.Response{Data: data}
	}
	for got := 0; got < results; {
		select {
		case n := <-read:
			got += n
		case <-time.After(wait):
			t.Fatalf("the reading member got %d results of %d", got, results)
		}
	}
	select {
	case <-stuck:
	case <-time.After(wait):
		t.Fatal("the other member's write never began")
	}
	grown := int64(heap()) - int64(before)
	t.Logf("heap grew by %.1f MiB for %d MiB rendered", float64(grown)/(1<<20), results*size>>20)
	require.Less(t, grown, int64(DefaultMemberBytes+8*size), "a member that does not read holds its bound and its stuck batch, not every result")

	release <- struct{}{}
	select {
	case o := <-ended:
		require.NotNil(t, o.errs, "%+v", o)
		require.Equal(t, "SLOW_CONSUMER", o.errs[0].Extensions["reason"])
	case <-time.After(wait):
		t.Fatal("the member that did not read was never ended")
	}
}
