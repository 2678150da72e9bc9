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
	// Limit bounds the rendered results a member may leave unsent before
	// it is ended as a slow consumer (0: DefaultMemberQueue).
	Limit int
	// Metrics counts shared renders (nil: off).
	Metrics *metrics.Metrics

	// Writers bounds the members writing at once (0: two per CPU).
	Writers int

	mu      sync.Mutex
	groups  map[groupKey]*group
	renders atomic.Int64

	slotsOnce sync.Once
	slots     chan struct{}
}

// slowWrite is how long a member may hold a writing slot: a write that
// takes longer is parked on a client that does not read, and gives its
// slot back so that it delays no one (it still ends at the transport's
// write timeout).
const slowWrite = 50 * time.Millisecond

// writeSlot waits for one of the Writers slots and returns its release.
// Bounding the members that write at once keeps a render for thousands of
// members from making thousands of goroutines runnable together, ahead of
// the requests the same process serves: delivery takes its turn, the API
// keeps its latency. A slot held past slowWrite is released early.
func (f *Fanout) writeSlot(ctx context.Context) (release func()) {
	f.slotsOnce.Do(func() {
		n := f.Writers
		if n <= 0 {
			n = 2 * runtime.GOMAXPROCS(0)
		}
		f.slots = make(chan struct{}, n)
	})
	select {
	case f.slots <- struct{}{}:
	case <-ctx.Done():
		return func() {}
	}
	var once sync.Once
	free := func() { once.Do(func() { <-f.slots }) }
	t := time.AfterFunc(slowWrite, free)
	return func() {
		t.Stop()
		free()
	}
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

// DefaultMemberQueue is how many rendered results a member of a group may
// have waiting, as the hub's queue bounds a subscriber's updates.
const DefaultMemberQueue = 1000

// NewFanout returns a Fanout that shares what share vouches for.
func NewFanout(share ShareFunc) *Fanout {
	return &Fanout{Share: share, groups: map[groupKey]*group{}}
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
	// done is closed when the execution has returned (its resolver let go).
	done chan struct{}
	// out is how the execution ended, for members still there (under Fanout.mu).
	out outcome
}

// member is one subscriber of a group: what it has not sent yet, and why
// it ends.
type member struct {
	limit int

	mu      sync.Mutex
	queue   [][]byte
	slow    bool // ended: its queue passed the limit
	done    bool // the group's execution ended
	ready   chan struct{}
	stopped chan struct{} // closed when slow or done
}

func (m *member) push(payload []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.slow || m.done {
		return
	}
	if len(m.queue) >= m.limit {
		m.slow = true
		m.queue = nil
		close(m.stopped)
		return
	}
	m.queue = append(m.queue, payload)
	select {
	case m.ready <- struct{}{}:
	default:
	}
}

func (m *member) finish() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.slow && !m.done {
		m.done = true
		close(m.stopped)
	}
}

func (m *member) take() [][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	q := m.queue
	m.queue = nil
	return q
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

// run joins (or starts) the group of key and passes each rendered result
// to next until the group's execution ends, the member falls behind, its
// credential expires, or ctx ends.
func (f *Fanout) run(ctx context.Context, exec graphql.GraphExecutor, rc *graphql.OperationContext, key groupKey, next func([]byte) error) outcome {
	m := &member{limit: f.Limit, ready: make(chan struct{}, 1), stopped: make(chan struct{})}
	if m.limit <= 0 {
		m.limit = DefaultMemberQueue
	}
	g := f.join(ctx, exec, rc, key, m)
	defer func() {
		if f.leave(g, m) {
			// The last member waits for the execution it stopped, as a
			// subscriber waits for its own resolver: shutdown closes the
			// database only after every stream has let go.
			<-g.done
		}
	}()

	var expired <-chan time.Time
	if p := auth.FromContext(ctx); p != nil && !p.ExpiresAt.IsZero() {
		t := time.NewTimer(time.Until(p.ExpiresAt))
		defer t.Stop()
		expired = t.C
	}
	send := func() bool {
		payloads := m.take()
		if len(payloads) == 0 {
			return true
		}
		release := f.writeSlot(ctx)
		defer release()
		for _, payload := range payloads {
			if next(payload) != nil {
				return false
			}
		}
		return true
	}
	for {
		select {
		case <-ctx.Done():
			return outcome{stopped: true}
		case <-expired:
			metrics.SentError(ctx, string(fault.Unauthenticated))
			return outcome{errs: gqlerror.List{present(ctx, errExpiredMember)}}
		case <-m.ready:
			if !send() {
				return outcome{stopped: true}
			}
		case <-m.stopped:
			m.mu.Lock()
			slow := m.slow
			m.mu.Unlock()
			if slow {
				metrics.SentError(ctx, string(fault.RateLimited))
				return outcome{errs: gqlerror.List{present(ctx, errSlowMember)}}
			}
			// The execution ended: what it rendered before goes out first.
			if !send() {
				return outcome{stopped: true}
			}
			f.mu.Lock()
			out := g.out
			f.mu.Unlock()
			return out
		}
	}
}

// join adds m to the group of key, starting the group's execution when
// there is none.
func (f *Fanout) join(ctx context.Context, exec graphql.GraphExecutor, rc *graphql.OperationContext, key groupKey, m *member) *group {
	f.mu.Lock()
	defer f.mu.Unlock()
	if g := f.groups[key]; g != nil {
		g.members[m] = struct{}{}
		f.Metrics.SharedSubscribers(1)
		return g
	}
	// The execution outlives the member that started it: it keeps the
	// member's request values (principal, loaders' stores, logger) but
	// not its cancellation, and its principal does not expire (each member
	// ends at its own credential's expiry, above).
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if p := auth.FromContext(ctx); p != nil {
		shared := *p
		shared.ExpiresAt = time.Time{}
		gctx = auth.WithPrincipal(gctx, &shared)
	}
	g := &group{key: key, cancel: cancel, members: map[*member]struct{}{m: {}}, done: make(chan struct{})}
	if f.groups == nil {
		f.groups = map[groupKey]*group{}
	}
	f.groups[key] = g
	f.Metrics.SharedSubscribers(1)
	f.Metrics.SharedGroups(1)
	go f.execute(gctx, exec, rc, g)
	return g
}

// execute runs the group's operation, encoding each result once for all
// members, until it ends or its last member leaves.
func (f *Fanout) execute(ctx context.Context, exec graphql.GraphExecutor, rc *graphql.OperationContext, g *group) {
	defer close(g.done)
	var members []*member
	out := runPrepared(ctx, exec, rc, func(payload []byte) error {
		f.mu.Lock()
		members = members[:0]
		for m := range g.members {
			members = append(members, m)
		}
		f.mu.Unlock()
		for _, m := range members {
			m.push(payload)
		}
		f.renders.Add(1)
		f.Metrics.SharedRender(len(members))
		return nil
	})
	f.mu.Lock()
	g.ended, g.out = true, out
	if f.groups[g.key] == g {
		delete(f.groups, g.key)
		f.Metrics.SharedGroups(-1)
	}
	members = members[:0]
	for m := range g.members {
		members = append(members, m)
	}
	f.mu.Unlock()
	g.cancel()
	for _, m := range members {
		m.finish()
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
		return g.ended && len(g.members) == 0
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
