// Package gcfloor gives the garbage collector a floor of headroom: after
// every collection it sets GOGC so that the next one starts no sooner than
// headroom bytes of allocation later, and never sooner than Go's default
// (GOGC=100, the heap doubling) would.
//
// A GraphQL server's live heap is small next to what it allocates per
// second: a point read allocates some 40 KB that die with the request, so
// at a few thousand requests a second a heap of a few megabytes is
// collected dozens of times a second, and marking and sweeping took a
// fifth of the request path's CPU. A fixed floor bounds the extra memory
// (headroom bytes at most, and nothing once the live heap is larger than
// headroom, as with 10,000 idle subscribers) while collecting a small heap
// rarely. This is the technique of Uber's GOGC tuner and of gctuner in
// bytedance/gopkg, reduced to a floor.
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

// Floor keeps GOGC at headroom's percentage of the live heap while it runs.
type Floor struct {
	headroom uint64
	stopped  atomic.Bool
	sample   []metrics.Sample
	last     int // the percentage last set
}

// Start tunes GOGC after every collection until Stop. The caller should
// not start it when the operator set GOGC (the runtime's rules are then
// the operator's).
func Start(headroom uint64) *Floor {
	f := &Floor{headroom: headroom, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}, last: 100}
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
	p := Percent(live, f.headroom)
	if p != f.last && !f.stopped.Load() {
		debug.SetGCPercent(p)
		f.last = p
	}
}

// Percent is the GOGC that lets the heap grow by headroom bytes past live
// before the next collection, and by no less than live (GOGC=100).
func Percent(live, headroom uint64) int {
	if live == 0 || headroom/live >= maxPercent/100 {
		return maxPercent
	}
	// Round to whole tens, so that a heap that moves a little does not
	// reset GOGC after every collection.
	p := int(headroom*100/live) / 10 * 10
	return max(p, 100)
}
