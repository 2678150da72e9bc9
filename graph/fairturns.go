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
type fairTurns struct {
	mu      sync.Mutex
	free    int
	callers *list.List               // of *callerQueue with waiters, in round-robin order
	byKey   map[string]*list.Element // into callers
	next    *list.Element            // the caller served next; nil: the first
	waiting func() (done func())     // counts an operation as waiting (metrics)
}

// callerQueue is one caller's waiting operations, oldest first.
type callerQueue struct {
	key     string
	waiters []*turnWaiter
}

// turnWaiter is one operation waiting for a turn; ready is closed when it
// is given one.
type turnWaiter struct {
	ready   chan struct{}
	granted bool
}

// newFairTurns hands out n turns; waiting counts each operation that
// waits, from when it is queued to when its wait ends.
func newFairTurns(n int, waiting func() (done func())) *fairTurns {
	return &fairTurns{free: n, callers: list.New(), byKey: map[string]*list.Element{}, waiting: waiting}
}

// turnCaller names the caller of ctx for fairTurns: its principal, else
// its address (by auth.AddressKey: an IPv6 client's /64).
func turnCaller(ctx context.Context) string {
	if p := auth.FromContext(ctx); p != nil {
		return p.TenantID.String() + "/" + p.Actor()
	}
	return "anonymous@" + auth.AddressKey(auth.ClientIPFrom(ctx))
}

// take waits for a turn for caller, and reports false if ctx ended first.
func (f *fairTurns) take(ctx context.Context, caller string) bool {
	f.mu.Lock()
	if f.free > 0 && f.callers.Len() == 0 {
		f.free--
		f.mu.Unlock()
		return true
	}
	w := &turnWaiter{ready: make(chan struct{})}
	e, ok := f.byKey[caller]
	if !ok {
		e = f.callers.PushBack(&callerQueue{key: caller})
		f.byKey[caller] = e
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
		f.give()
		return false
	}
	if e, ok := f.byKey[caller]; ok {
		q := e.Value.(*callerQueue)
		q.waiters = slices.DeleteFunc(q.waiters, func(x *turnWaiter) bool { return x == w })
		if len(q.waiters) == 0 {
			f.remove(e)
		}
	}
	f.mu.Unlock()
	return false
}

// give returns a turn: to the next caller waiting, else to the free ones.
func (f *fairTurns) give() {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.next
	if e == nil {
		e = f.callers.Front()
	}
	if e == nil {
		f.free++
		return
	}
	q := e.Value.(*callerQueue)
	w := q.waiters[0]
	q.waiters = q.waiters[1:]
	w.granted = true
	close(w.ready)
	f.next = e.Next()
	if len(q.waiters) == 0 {
		f.remove(e)
	}
}

// remove takes a caller without waiters out of the rotation.
func (f *fairTurns) remove(e *list.Element) {
	if f.next == e {
		f.next = e.Next()
	}
	delete(f.byKey, e.Value.(*callerQueue).key)
	f.callers.Remove(e)
}
