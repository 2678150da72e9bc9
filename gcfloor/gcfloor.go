// Package gcfloor gives the garbage collector a floor under its heap goal:
// after every collection it sets GOGC so that the next one starts when the
// heap reaches a minimum size, or twice what is live (Go's default,
// GOGC=100) when that is more.
//
// A GraphQL server's live heap is small next to what it allocates per
// second: a point read allocates some 40 KB that die with the request, so
// at a few thousand requests a second a heap of a few megabytes is
// collected dozens of times a second. Go's own floor is 4 MB. A higher one
// costs at most its size in memory while the live heap is small, and
// nothing once the live heap is half of it or more (a replica holding
// 10,000 idle subscriptions keeps Go's default), which a fixed GOGC could
// not promise. It is kept small (serve's default is 32 MB): the first
// window of a small heap is also where a burst of long-lived objects
// (10,000 subscriptions opening at once) lands, and a larger floor spreads
// them over more memory (BENCHMARKS.md, "The floor's size"). This is the
// effect of the "heap ballast" of old and of the GOGC tuners (Uber's;
// gctuner in bytedance/gopkg), reduced to a floor.
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// maxPercent bounds the GOGC the floor sets: with a live heap of a few
// hundred kilobytes the floor's percentage would be absurd.
const maxPercent = 100_000

// Floor keeps the heap goal at least its minimum while it runs.
type Floor struct {
	min     uint64
	stopped atomic.Bool
	sample  []metrics.Sample
	last    int // the percentage last set
}

// Start tunes GOGC after every collection until Stop, for a heap goal of
// at least min bytes. The caller should not start it when the operator
// set GOGC (the runtime's rules are then the operator's).
func Start(min uint64) *Floor {
	f := &Floor{min: min, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}, last: 100}
	f.tune()
	f.arm()
	return f
}

// Stop ends the tuning and restores GOGC=100.
func (f *Floor) Stop() {
	if f.stopped.CompareAndSwap(false, true) {
		debug.SetGCPercent(100)
	}
}

// sentinel is an object no one keeps, whose cleanup runs once the next
// collection has found it unreachable: a callback per GC cycle.
type sentinel struct{ _ *byte }

// arm asks for tune after the next collection.
func (f *Floor) arm() {
	runtime.AddCleanup(&sentinel{}, func(f *Floor) {
		if f.stopped.Load() {
			return
		}
		f.tune()
		f.arm()
	}, f)
}

// tune sets GOGC for the live heap the last collection left.
func (f *Floor) tune() {
	metrics.Read(f.sample)
	live := uint64(0)
	if f.sample[0].Value.Kind() == metrics.KindUint64 {
		live = f.sample[0].Value.Uint64()
	}
	p := Percent(live, f.min)
	if p != f.last && !f.stopped.Load() {
		debug.SetGCPercent(p)
		f.last = p
	}
}

// Percent is the GOGC whose heap goal, live×(1+GOGC/100), is min, or
// Go's default (100, twice live) when that is more. Before the first
// collection nothing is known to be live (0): Go's default until one has
// run.
func Percent(live, min uint64) int {
	if live == 0 || 2*live >= min {
		return 100
	}
	if min/live >= maxPercent/100 {
		return maxPercent
	}
	// Round down to whole tens, so that a heap that moves a little does
	// not reset GOGC after every collection.
	p := int((min-live)*100/live) / 10 * 10
	return max(p, 100)
}
