package graph

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// One caller, or one tenant, holds at most all turns but a quarter, even
// while turns are free; the turns it gives back go to whoever may hold
// them, itself included once under its cap.
func TestFairTurnsCapACallerAndATenant(t *testing.T) {
	t.Parallel()
	f := newFairTurns(8, func() func() { return func() {} })
	require.Equal(t, 6, f.max)
	a1 := turnOwner{caller: "t1/a", tenant: "t1"}
	a2 := turnOwner{caller: "t1/b", tenant: "t1"}
	b := turnOwner{caller: "t2/c", tenant: "t2"}
	for range 4 {
		require.True(t, f.take(t.Context(), a1))
	}
	require.True(t, f.take(t.Context(), a2))
	require.True(t, f.take(t.Context(), a2))
	// Tenant t1 holds 6 of 8: its next waits while two turns are free.
	waited := make(chan bool, 1)
	go func() { waited <- f.take(context.Background(), a2) }()
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.callers.Len() == 1
	}, time.Minute, time.Millisecond)
	require.True(t, f.take(t.Context(), b), "another tenant takes a free turn at once")
	require.True(t, f.take(t.Context(), b))
	select {
	case <-waited:
		t.Fatal("the capped tenant got a turn")
	default:
	}
	// A turn of t1 given back goes to t1's waiter.
	f.give(a1)
	require.True(t, <-waited)
	f.mu.Lock()
	require.Equal(t, 0, f.free)
	require.Equal(t, 6, f.held["t1"])
	f.mu.Unlock()

	// A cancelled wait leaves nothing behind.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.False(t, f.take(ctx, b))
	for range 3 {
		f.give(a1)
	}
	for range 3 {
		f.give(a2)
	}
	f.give(b)
	f.give(b)
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Equal(t, 8, f.free)
	require.Empty(t, f.held)
	require.Zero(t, f.callers.Len())
}
