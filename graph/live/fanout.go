package live

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/auth"
	"fleetgraph/fault"
	"fleetgraph/metrics"
)

// This file renders a subscription's results once for every subscriber
// that would get the same bytes: subscribers whose operation (document and
// operation name), variables and visibility class are equal form a group.
// The group runs the operation once (one resolver, one hub subscription,
// one execution and one JSON encoding per change) and hands the encoded
// payload to each member, which frames it in its own envelope (its id, its
// transport). Anything the Fanout's Share function does not vouch for runs
// on its own, as before.
//
// A member holds no goroutine while it waits: a rendered result is queued
// on it, and the member is put on the Fanout's ready list, from which a
// few writers (Writers) send each ready member's queue in turn. A render
// for thousands of members therefore wakes a handful of goroutines, not
// thousands, and requests served by the same process keep their turn.

// ShareFunc decides whether a prepared subscription may share its results,
// and with whom: it returns the caller's visibility class for what the
// operation streams (principals of one class see and resolve exactly the
// same rows) and true, or false for an operation that must run on its own
// (one with a first state of its own, a per-subscriber check, an unknown
// field or caller). Unknown cases must answer false.
type ShareFunc func(ctx context.Context, rc *graphql.OperationContext) (class string, ok bool)

// Fanout groups subscribers that share rendered results. A nil *Fanout
// shares nothing.
type Fanout struct {
	// Share decides which operations are shared (nil: none).
	Share ShareFunc
	// Limit bounds the results (one per entity: a newer one replaces the
	// one waiting) a member may leave unsent before it is ended as a slow
	// consumer (0: DefaultMemberQueue).
	Limit int
	// Bytes bounds the payload bytes those results hold, past which the
	// member is ended as a slow consumer too (0: DefaultMemberBytes).
	Bytes int
	// Writers bounds the members written to at once (0: one per CPU).
	Writers int
	// Yield reports whether requests (queries, mutations) are running:
	// while they are, one writer runs, so that a process saturated by
	// delivery keeps CPU for its requests (nil: never).
	Yield func() bool
	// Detach, when set, gives a group's execution context what is its own
	// rather than the starting member's (a request id of its own: every
	// member gets the group's errors, and one member's request id, which
	// its client may choose, reached the others).
	Detach func(context.Context) context.Context
	// Metrics counts shared renders (nil: off).
	Metrics *metrics.Metrics

	mu      sync.Mutex
	groups  map[groupKey]*group
	renders atomic.Int64

	// The ready list: members with results to send (or an end to
	// deliver), and how many writers run.
	readyMu sync.Mutex
	ready   []*member
	writing int
}

// DefaultMemberQueue is how many rendered results a member of a group may
// have waiting, as the hub's queue bounds a subscriber's updates.
const DefaultMemberQueue = 1000

// DefaultMemberBytes is how many bytes of rendered results a member may
// have waiting. The count alone did not bound memory: a result may be up
// to scalar.MaxResponseBytes (16 MiB), and a client that stopped reading
// a subscription whose results were 2.4 MB each made the server hold
// 700 MB for one socket before its write timed out. What waits is what
// arrived while the member's previous batch was being written: a client
// that reads takes 8 MiB in well under the write timeout, and one result
// larger than the bound still goes out on its own (a member with nothing
// waiting always takes the next result), so this ends only members that
// fall behind by more than a few large results. A member thus holds at
// most 8 MiB, or one result, waiting, besides the batch being written.
// The payloads are shared by a group's members: each member counts all
// the bytes it keeps alive.
const DefaultMemberBytes = 8 << 20

// indexFrom is the queue length from which a member indexes its queue by
// entity (member.pending) rather than scanning it.
const indexFrom = 16

// keepQueue is the largest queue whose storage a member keeps for its next
// results once written: an idle member holds at most this many empty
// entries, and the one-result-at-a-time case allocates nothing per
// delivery.
const keepQueue = 4

// slowWrite is how long a writer may stay on one member: past it the
// member's client is not reading (its socket buffer is full), so another
// writer takes over the ready list and this one leaves when its write
// ends (at the transport's write timeout at worst). A client that does not
// read delays no one.
const slowWrite = 50 * time.Millisecond

// NewFanout returns a Fanout that shares what share vouches for.
func NewFanout(share ShareFunc) *Fanout {
	return &Fanout{Share: share, groups: map[groupKey]*group{}}
}

// FanoutStats is what a Fanout holds and has done.
type FanoutStats struct {
	// Groups and Members are the groups running now and their members.
	Groups, Members int
	// Renders counts the results groups executed and encoded, each once
	// for all of its members.
	Renders int64
}

// Stats reports the groups and members now, and the renders so far.
func (f *Fanout) Stats() FanoutStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := FanoutStats{Groups: len(f.groups), Renders: f.renders.Load()}
	for _, g := range f.groups {
		st.Members += len(g.members)
	}
	return st
}

// groupKey identifies a group: a hash of the document, operation name and
// variables, and the visibility class.
type groupKey struct {
	operation [sha256.Size]byte
	class     string
}

// group is one shared execution and its members.
type group struct {
	key     groupKey
	cancel  context.CancelFunc
	members map[*member]struct{}
	ended   bool
	// live is closed once the operation is dispatched: its resolver has
	// subscribed to the hub.
	live chan struct{}
	// done is closed when the execution has returned (its resolver let go).
	done chan struct{}
}

// member is one subscriber of a group: what it has not sent yet, and how
// it ends. It is driven by the group (push, groupEnded), by the writers
// (drain) and by its own end conditions (its context, its credential's
// expiry); finish is called exactly once, after the last write.
type member struct {
	f     *Fanout
	g     *group
	ctx   context.Context
	limit int
	// maxBytes bounds the payload bytes of queue (0 or less:
	// DefaultMemberBytes).
	maxBytes int
	// place is the member's socket's (nil: none), which counts the bytes
	// of its queue with the socket's other results (SocketResultBytes).
	place *SocketPlace
	// write sends payloads to the member's client, calling writing once
	// the client's socket is the member's to write to.
	write  func(payloads [][]byte, writing func()) error
	finish func(outcome)

	// written gives back to place the bytes a writer took (releaseTaken,
	// made at the first drain: a method value per write allocates).
	written func()

	mu    sync.Mutex
	queue []queued
	bytes int // the payload bytes of queue
	taken int // the payload bytes a writer took and has not written
	// pending indexes queue by entity, for coalescing, once the queue is
	// long enough (indexFrom) that a scan would cost more than the map;
	// nil before. Every result of the common case, one waiting at a time,
	// is then found by a scan of one, with no map to allocate.
	pending map[string]int
	listed  bool     // on the ready list, or being written
	ending  *outcome // how it ends, once decided
	stopped bool     // finish has been called (or is about to be)
	// after, when set, is waited for before finish: the group's execution,
	// which this member, its last, stopped.
	after   <-chan struct{}
	cleanup []func() bool
}

// queued is a rendered result waiting for a member, and the entity it is
// about ("" for none).
type queued struct {
	key     string
	payload []byte
}

// resultTags carries, from a shared subscription's resolver to its group's
// execution, the entity each value the resolver sends is about, in order:
// the executor turns each value into exactly one result, so the first tag
// names the next result. A member that falls behind then keeps only the
// newest result of each entity, as the hub's queue keeps only its newest
// update.
type resultTags struct {
	mu   sync.Mutex
	keys []string
}

type tagsKey struct{}

// Tag records that the next value a subscription resolver sends on its
// channel is about entity key ("" for none). Resolvers whose results a
// group may share call it before every send; anywhere else it does nothing.
func Tag(ctx context.Context, key string) {
	if t, ok := ctx.Value(tagsKey{}).(*resultTags); ok {
		t.mu.Lock()
		t.keys = append(t.keys, key)
		t.mu.Unlock()
	}
}

// next returns the entity of the next result ("" when untagged).
func (t *resultTags) next() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.keys) == 0 {
		return ""
	}
	key := t.keys[0]
	t.keys = t.keys[1:]
	return key
}

// errSlowMember ends a member that lets too many rendered results pile up.
var errSlowMember = &fault.Error{Code: fault.RateLimited, Extra: map[string]any{"reason": "SLOW_CONSUMER"},
	Message: "the subscriber is not reading fast enough; updates were piling up, so the subscription was closed: resubscribe and re-query"}

// errExpiredMember ends a member whose credential expired.
var errExpiredMember = fault.New(fault.Unauthenticated, "your credential has expired; reconnect with a fresh one")

// shareable returns the group key of a prepared operation, or false when
// it runs on its own.
func (f *Fanout) shareable(ctx context.Context, rc *graphql.OperationContext) (groupKey, bool) {
	if f == nil || f.Share == nil || !isSubscription(rc) {
		return groupKey{}, false
	}
	class, ok := f.Share(ctx, rc)
	if !ok || class == "" {
		return groupKey{}, false
	}
	vars, err := json.Marshal(rc.Variables) // map keys sorted: equal variables, equal bytes
	if err != nil {
		return groupKey{}, false
	}
	h := sha256.New()
	for _, part := range [][]byte{[]byte(rc.RawQuery), []byte(rc.OperationName), vars} {
		_, _ = h.Write(part)
		_, _ = h.Write([]byte{0})
	}
	k := groupKey{class: class}
	h.Sum(k.operation[:0])
	return k, true
}

// attach joins (or starts) the group of key. write is called with the
// rendered results waiting, oldest first, from a writer goroutine, one
// call at a time (a transport sends them together); finish is
// called once when the member ends: when the group's execution ended (its
// outcome, after every result rendered before it was written), when ctx
// ends (stopped), when a write fails (stopped), when the member falls
// behind by Limit results or by Bytes of them (RATE_LIMITED) or when its
// credential expires (UNAUTHENTICATED). No goroutine waits for the member
// in between.
//
// ctx is the member's own context (its cancellation, its caller); a group
// it starts runs in prepared, the operation's context, derived from ctx.
func (f *Fanout) attach(ctx, prepared context.Context, exec graphql.GraphExecutor, rc *graphql.OperationContext, key groupKey, place *SocketPlace, write func(payloads [][]byte, writing func()) error, finish func(outcome)) {
	m := &member{f: f, ctx: ctx, limit: f.Limit, maxBytes: f.Bytes, place: place, write: write, finish: finish}
	if m.limit <= 0 {
		m.limit = DefaultMemberQueue
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.g = f.join(prepared, exec, rc, key, m)
	stopCtx := context.AfterFunc(ctx, func() { m.end(outcome{stopped: true}, false) })
	m.cleanup = append(m.cleanup, stopCtx)
	if p := auth.FromContext(ctx); p != nil && !p.ExpiresAt.IsZero() {
		t := time.AfterFunc(time.Until(p.ExpiresAt), func() {
			metrics.SentError(ctx, string(fault.Unauthenticated))
			m.end(outcome{errs: gqlerror.List{present(ctx, errExpiredMember)}}, false)
		})
		m.cleanup = append(m.cleanup, t.Stop)
	}
}

// push queues a rendered result about entity key (from the group's
// execution). A newer result of an entity replaces one still waiting, in
// its place; the limits count what waits: its results and their bytes (a
// replaced result's bytes no longer count). A result alone in the queue
// is always kept, however large.
func (m *member) push(payload []byte, key string) {
	m.mu.Lock()
	if m.ending != nil {
		m.mu.Unlock()
		return
	}
	if i := m.waiting(key); i >= 0 {
		bytes := m.bytes - len(m.queue[i].payload) + len(payload)
		if bytes > m.byteLimit() && len(m.queue) > 1 || !m.place.holdShared(bytes-m.bytes) {
			m.slow()
			return
		}
		m.queue[i].payload = payload
		m.bytes = bytes
		m.mu.Unlock()
		return
	}
	if len(m.queue) >= m.limit || (len(m.queue) > 0 && m.bytes+len(payload) > m.byteLimit()) || !m.place.holdShared(len(payload)) {
		m.slow()
		return
	}
	m.bytes += len(payload)
	if key != "" && m.pending != nil {
		m.pending[key] = len(m.queue)
	}
	m.queue = append(m.queue, queued{key, payload})
	if len(m.queue) == indexFrom && m.pending == nil {
		m.pending = make(map[string]int, 2*indexFrom)
		for i, q := range m.queue {
			if q.key != "" {
				m.pending[q.key] = i
			}
		}
	}
	list := !m.listed
	m.listed = true
	m.mu.Unlock()
	if list {
		m.f.list(m)
	}
}

// byteLimit is how many payload bytes may wait.
func (m *member) byteLimit() int {
	if m.maxBytes > 0 {
		return m.maxBytes
	}
	return DefaultMemberBytes
}

// slow ends the member as a slow consumer, its queue dropped. m.mu must be
// held; slow releases it.
func (m *member) slow() {
	m.mu.Unlock()
	metrics.SentError(m.ctx, string(fault.RateLimited))
	m.end(outcome{errs: gqlerror.List{present(m.ctx, errSlowMember)}}, false)
}

// waiting returns where the result about entity key waits in the queue,
// or -1 if none does (always for key ""). Entities are unique in the queue:
// a newer result replaces the one waiting. m.mu must be held.
func (m *member) waiting(key string) int {
	if key == "" {
		return -1
	}
	if m.pending != nil {
		if i, ok := m.pending[key]; ok {
			return i
		}
		return -1
	}
	for i := range m.queue {
		if m.queue[i].key == key {
			return i
		}
	}
	return -1
}

// releaseTaken gives back to the socket's place the bytes the writer took
// from the queue, once they are written or given up.
func (m *member) releaseTaken() {
	m.mu.Lock()
	n := m.taken
	m.taken = 0
	m.mu.Unlock()
	m.place.Release(n)
}

// end decides how the member ends. With keep (the group's execution
// ended), what was rendered before still goes out first; otherwise the
// queue is dropped. The member leaves its group at once; finish runs as
// soon as no writer is on the member.
func (m *member) end(out outcome, keep bool) {
	m.mu.Lock()
	if m.ending != nil {
		m.mu.Unlock()
		return
	}
	m.ending = &out
	if !keep {
		m.place.Release(m.bytes)
		m.queue, m.pending, m.bytes = nil, nil, 0
	}
	if m.f.leave(m.g, m) {
		// The last member stops the execution, and its end is told once
		// that has let go, as a subscriber's own resolver has: shutdown
		// closes the database only after every stream let go.
		m.after = m.g.done
	}
	list := !m.listed
	m.listed = true
	m.mu.Unlock()
	if list {
		m.f.list(m)
	}
}

// drain writes the member's queue, all of what waits in one write; once it
// is empty and the member's end is decided, it finishes the member. It runs
// on a writer, which it holds until the queue is empty, and returns
// scratch, the writer's slice for a batch's payloads, for the next member.
func (m *member) drain(scratch [][]byte) [][]byte {
	for {
		m.mu.Lock()
		q := m.queue
		if len(q) == 0 {
			m.listed = false
			var out *outcome
			if m.ending != nil && !m.stopped {
				m.stopped = true
				out = m.ending
			}
			after := m.after
			m.mu.Unlock()
			if out != nil {
				for _, stop := range m.cleanup {
					stop()
				}
				if after != nil {
					go func() {
						<-after
						m.finish(*out)
					}()
				} else {
					m.finish(*out)
				}
			}
			return scratch[:0]
		}
		// The bytes count until the socket's writer takes them (written):
		// a writer handed over past slowWrite waits for that socket, as
		// the next may, each with its member's queue.
		m.taken = m.bytes
		if m.written == nil {
			m.written = m.releaseTaken
		}
		m.queue, m.pending, m.bytes = nil, nil, 0
		m.mu.Unlock()
		scratch = scratch[:0]
		for _, r := range q {
			scratch = append(scratch, r.payload)
		}
		err := m.write(scratch, m.written)
		m.written()
		clear(scratch)
		if err != nil {
			m.end(outcome{stopped: true}, false)
			continue
		}
		// The written queue's storage serves the next results, unless
		// some arrived meanwhile (they have a queue of their own) or it
		// is large (a burst does not stay pinned to an idle member).
		if cap(q) <= keepQueue {
			clear(q)
			m.mu.Lock()
			if m.queue == nil && m.ending == nil {
				m.queue = q[:0]
			}
			m.mu.Unlock()
		}
	}
}

// list puts m on the ready list and makes sure a writer will take it.
func (f *Fanout) list(m *member) {
	f.readyMu.Lock()
	f.ready = append(f.ready, m)
	start := f.writing < f.writers() && (f.writing == 0 || !f.yielding())
	if start {
		f.writing++
	}
	f.readyMu.Unlock()
	if start {
		go f.writer()
	}
}

// writers is how many members may be written to at once: one per CPU by
// default, and one while requests run (Yield). Two per CPU delivered no
// more and took the CPU from the API. With one per CPU and the yield, a
// 10,000-subscriber tenant at 10 changes/s (cmd/loadsubs) is delivered in
// full while a mutation's round trip stays near its idle time (see
// BENCHMARKS.md, "One write per batch").
func (f *Fanout) writers() int {
	if f.Writers > 0 {
		return f.Writers
	}
	return runtime.GOMAXPROCS(0)
}

// writer drains ready members until none is left. A writer held by one
// member past slowWrite stops counting, and another starts if members are
// waiting; it leaves when that member is done.
func (f *Fanout) writer() {
	// One timer for the writer's whole run, re-armed per member: the
	// hand-over fires only for a member that holds the writer too long.
	slow := time.AfterFunc(time.Hour, func() {
		f.readyMu.Lock()
		start := len(f.ready) > 0
		if !start {
			f.writing-- // this writer no longer counts; none is needed yet
		}
		f.readyMu.Unlock()
		if start {
			go f.writer() // takes this writer's place
		}
	})
	slow.Stop()
	var scratch [][]byte
	for {
		f.readyMu.Lock()
		if len(f.ready) == 0 {
			f.writing--
			f.readyMu.Unlock()
			return
		}
		m := f.ready[0]
		f.ready[0] = nil
		f.ready = f.ready[1:]
		f.readyMu.Unlock()

		slow.Reset(slowWrite)
		scratch = m.drain(scratch)
		if !slow.Stop() {
			// The hand-over ran (or is running): this writer was
			// replaced or no longer counts, so it leaves.
			return
		}
		// Requests go first: while any runs, writers but one leave (list
		// starts them again), and the one left lets waiting goroutines
		// run between members, as back-to-back writers would not.
		// (Yielding every eight members instead, while no request runs,
		// saved about 1% of the server's CPU in a profile of E and
		// let a mutation wait 100–250 ms behind one in 60 with 10,000
		// different documents: BENCHMARKS.md, "A member's queue without
		// allocations".)
		f.readyMu.Lock()
		leave := f.writing > 1 && f.yielding()
		if leave {
			f.writing--
		}
		f.readyMu.Unlock()
		if leave {
			return
		}
		runtime.Gosched()
	}
}

// yielding reports whether requests are running (Yield).
func (f *Fanout) yielding() bool { return f.Yield != nil && f.Yield() }

// join adds m to the group of key, starting the group's execution when
// there is none. Either way the group's subscription is registered with
// the hub when join returns: the member that starts a group dispatches
// its operation (its resolver subscribes; a shared subscription reads
// nothing, so this is quick), and one joining a group still being started
// waits for that.
func (f *Fanout) join(ctx context.Context, exec graphql.GraphExecutor, rc *graphql.OperationContext, key groupKey, m *member) *group {
	f.mu.Lock()
	if g := f.groups[key]; g != nil {
		g.members[m] = struct{}{}
		f.Metrics.SharedSubscribers(1)
		f.mu.Unlock()
		<-g.live
		return g
	}
	// The execution outlives the member that started it: it keeps the
	// member's request values (principal, loaders' stores, logger) but
	// not its cancellation, and its principal does not expire (each member
	// ends at its own credential's expiry, in attach).
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if f.Detach != nil {
		gctx = f.Detach(gctx)
	}
	if p := auth.FromContext(ctx); p != nil {
		shared := *p
		shared.ExpiresAt = time.Time{}
		gctx = auth.WithPrincipal(gctx, &shared)
	}
	g := &group{key: key, cancel: cancel, members: map[*member]struct{}{m: {}}, live: make(chan struct{}), done: make(chan struct{})}
	if f.groups == nil {
		f.groups = map[groupKey]*group{}
	}
	f.groups[key] = g
	f.Metrics.SharedSubscribers(1)
	f.Metrics.SharedGroups(1)
	f.mu.Unlock()
	tags := &resultTags{}
	d := dispatch(context.WithValue(gctx, tagsKey{}, tags), exec, rc)
	close(g.live)
	go f.execute(d, tags, g)
	return g
}

// execute reads the group's dispatched operation, encoding each result
// once for all members, until it ends or its last member leaves.
func (f *Fanout) execute(d dispatched, tags *resultTags, g *group) {
	defer close(g.done)
	var members []*member
	snapshot := func() []*member {
		f.mu.Lock()
		defer f.mu.Unlock()
		members = members[:0]
		for m := range g.members {
			members = append(members, m)
		}
		return members
	}
	out := d.run(func(payload []byte) error {
		key := tags.next()
		ms := snapshot()
		// Counted before any member can see the result, so that whoever
		// reads Stats after a delivery sees its render.
		f.renders.Add(1)
		f.Metrics.SharedRender(len(ms))
		for _, m := range ms {
			m.push(payload, key)
		}
		return nil
	})
	f.mu.Lock()
	g.ended = true
	if f.groups[g.key] == g {
		delete(f.groups, g.key)
		f.Metrics.SharedGroups(-1)
	}
	f.mu.Unlock()
	g.cancel()
	// Each member still here ends with the execution's outcome, after
	// what was rendered for it.
	for _, m := range snapshot() {
		m.end(out, true)
	}
}

// leave removes m from g; the last member to leave stops the execution
// and says so.
func (f *Fanout) leave(g *group, m *member) (last bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := g.members[m]; !ok {
		return false
	}
	delete(g.members, m)
	f.Metrics.SharedSubscribers(-1)
	if len(g.members) > 0 || g.ended {
		return false
	}
	// No one is left: the group stops, and a later subscriber starts anew.
	if f.groups[g.key] == g {
		delete(f.groups, g.key)
		f.Metrics.SharedGroups(-1)
	}
	g.ended = true
	g.cancel()
	return true
}
