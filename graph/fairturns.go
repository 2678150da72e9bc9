package graph

import (
	"container/list"
	"context"
	"slices"
	"sync"

	"fleetgraph/auth"
)

// fairTurns hands out a fixed number of turns. When one is given back
// while operations wait, it goes to the callers waiting in round-robin
// order, each caller's operations in the order they came: a caller with a
// thousand operations waiting delays another caller's next operation by
// one turn, not by a thousand. A caller is its principal (a user, a robot,
// a tenant's service role), or its address when anonymous.
//
// No caller, and no tenant (anonymous callers together count as one),
// holds more than three quarters of the turns at once, even while others
// are free: without the cap one user's eight slow queries held every turn
// and, three root fields each, every connection of the pool, so another
// tenant's requests waited for as long as those queries ran. A quarter
// (at least one turn) is always left to the others.
type fairTurns struct {
	mu      sync.Mutex
	free    int
	max     int                      // turns one caller, or one tenant, may hold
	held    map[string]int           // turns held, by caller key and by tenant key
	callers *list.List               // of *callerQueue with waiters, in round-robin order
	byKey   map[string]*list.Element // into callers
	next    *list.Element            // the caller served next; nil: the first
	waiting func() (done func())     // counts an operation as waiting (metrics)
}

// turnOwner is who holds a turn: a caller, and its tenant.
type turnOwner struct {
	caller, tenant string
}

// callerQueue is one caller's waiting operations, oldest first.
type callerQueue struct {
	owner   turnOwner
	waiters []*turnWaiter
}

// turnWaiter is one operation waiting for a turn; ready is closed when it
// is given one.
type turnWaiter struct {
	ready   chan struct{}
	granted bool
}

// newFairTurns hands out n turns, all but a quarter of them (at least one
// left, at least one given) to one caller or tenant at once; waiting
// counts each operation that waits, from when it is queued to when its
// wait ends.
func newFairTurns(n int, waiting func() (done func())) *fairTurns {
	return &fairTurns{free: n, max: max(1, n-max(1, n/4)), held: map[string]int{}, callers: list.New(), byKey: map[string]*list.Element{}, waiting: waiting}
}

// turnCaller names the caller of ctx for fairTurns: its principal, else
// its address (by auth.AddressKey: an IPv6 client's /64), and its tenant
// (anonymous callers share one).
func turnCaller(ctx context.Context) turnOwner {
	if p := auth.FromContext(ctx); p != nil {
		return turnOwner{caller: p.TenantID.String() + "/" + p.Actor(), tenant: "tenant/" + p.TenantID.String()}
	}
	return turnOwner{caller: "anonymous@" + auth.AddressKey(auth.ClientIPFrom(ctx)), tenant: "anonymous"}
}

// mayHold reports whether o may hold one more turn (under mu).
func (f *fairTurns) mayHold(o turnOwner) bool {
	return f.held[o.caller] < f.max && f.held[o.tenant] < f.max
}

// hold counts a turn given to o, or given back by it (under mu).
func (f *fairTurns) hold(o turnOwner, n int) {
	for _, k := range []string{o.caller, o.tenant} {
		if f.held[k] += n; f.held[k] <= 0 {
			delete(f.held, k)
		}
	}
}

// take waits for a turn for o, and reports false if ctx ended first.
// While turns are free no one who may hold one waits, so a free turn is
// taken at once when o may hold it.
func (f *fairTurns) take(ctx context.Context, o turnOwner) bool {
	f.mu.Lock()
	if f.free > 0 && f.mayHold(o) {
		f.free--
		f.hold(o, 1)
		f.mu.Unlock()
		return true
	}
	w := &turnWaiter{ready: make(chan struct{})}
	e, ok := f.byKey[o.caller]
	if !ok {
		e = f.callers.PushBack(&callerQueue{owner: o})
		f.byKey[o.caller] = e
	}
	q := e.Value.(*callerQueue)
	q.waiters = append(q.waiters, w)
	// Counted once queued, so whoever sees the count sees the queue.
	done := f.waiting()
	f.mu.Unlock()
	defer done()

	select {
	case <-w.ready:
		return true
	case <-ctx.Done():
	}
	f.mu.Lock()
	if w.granted {
		// Given a turn as ctx ended: pass it on.
		f.mu.Unlock()
		f.give(o)
		return false
	}
	if e, ok := f.byKey[o.caller]; ok {
		q := e.Value.(*callerQueue)
		q.waiters = slices.DeleteFunc(q.waiters, func(x *turnWaiter) bool { return x == w })
		if len(q.waiters) == 0 {
			f.remove(e)
		}
	}
	f.mu.Unlock()
	return false
}

// give returns o's turn: to the next caller waiting that may hold it,
// else to the free ones.
func (f *fairTurns) give(o turnOwner) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hold(o, -1)
	f.free++
	// o's turn may go to another caller, or let a capped one (o itself,
	// or another of its tenant) take one.
	for f.free > 0 {
		e := f.nextEligible()
		if e == nil {
			return
		}
		q := e.Value.(*callerQueue)
		w := q.waiters[0]
		q.waiters = q.waiters[1:]
		w.granted = true
		close(w.ready)
		f.free--
		f.hold(q.owner, 1)
		f.next = e.Next()
		if len(q.waiters) == 0 {
			f.remove(e)
		}
	}
}

// nextEligible is the first caller waiting, in round-robin order from
// next, that may hold one more turn (under mu).
func (f *fairTurns) nextEligible() *list.Element {
	start := f.next
	if start == nil {
		start = f.callers.Front()
	}
	for e, n := start, 0; e != nil && n < f.callers.Len(); n++ {
		if f.mayHold(e.Value.(*callerQueue).owner) {
			return e
		}
		if e = e.Next(); e == nil {
			e = f.callers.Front()
		}
	}
	return nil
}

// remove takes a caller without waiters out of the rotation.
func (f *fairTurns) remove(e *list.Element) {
	if f.next == e {
		f.next = e.Next()
	}
	delete(f.byKey, e.Value.(*callerQueue).owner.caller)
	f.callers.Remove(e)
}
