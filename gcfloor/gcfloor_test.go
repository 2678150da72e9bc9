package gcfloor

import (
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, min uint64
		want      int
	}{
		{4 * mib, 64 * mib, 1500},     // a small heap may reach the minimum
		{3 * mib, 64 * mib, 2030},     // rounded down to tens
		{30 * mib, 64 * mib, 110},     // just above the default
		{32 * mib, 64 * mib, 100},     // half the minimum: the default reaches it
		{500 * mib, 64 * mib, 100},    // a large heap keeps the default
		{10 * 1024, 64 * mib, 100000}, // bounded
		{0, 64 * mib, 100},            // no collection yet: nothing known
	} {
		if got := Percent(c.live, c.min); got != c.want {
			t.Errorf("Percent(%d, %d) = %d, want %d", c.live, c.min, got, c.want)
		}
	}
}

// gogc reads the runtime's current GOGC.
func gogc() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestFloorFollowsCollections checks that a started floor raises GOGC for
// this test's small heap, lowers it after the collections that find a
// larger live heap, raises it again once that heap is garbage, and that
// Stop restores the default for good.
func TestFloorFollowsCollections(t *testing.T) {
	f := Start(64 << 20)
	defer f.Stop()
	await := func(what string, ok func(uint64) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok(gogc()) {
			if time.Now().After(deadline) {
				t.Fatalf("GOGC is %d; want it %s", gogc(), what)
			}
			runtime.GC()
		}
	}
	await("above 1000 over a small heap", func(p uint64) bool { return p > 1000 })
	live := make([]*[1 << 20]byte, 32) // 32 MiB, live until the KeepAlive
	for i := range live {
		live[i] = new([1 << 20]byte)
	}
	await("at most 110 over a 32 MiB heap", func(p uint64) bool { return p <= 110 })
	runtime.KeepAlive(live)
	await("above 1000 once the 32 MiB are garbage", func(p uint64) bool { return p > 1000 })

	f.Stop()
	if got := gogc(); got != 100 {
		t.Fatalf("GOGC is %d after Stop, want 100", got)
	}
	for range 3 {
		runtime.GC() // the stopped floor's cleanup must not set it again
	}
	if got := gogc(); got != 100 {
		t.Fatalf("GOGC is %d after collections past Stop, want 100", got)
	}
}
