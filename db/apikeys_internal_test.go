package db

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// due allows one write per name a minute, and remembers a bounded number
// of names: a flood of refusals from distinct addresses neither grows its
// memory nor makes every call sweep it.
func TestDueWritesAreBounded(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	s := NewAPIKeysAt(func() time.Time { return now })

	require.True(t, s.due("used:k", false))
	require.False(t, s.due("used:k", false), "a second write within the minute")
	now = now.Add(59 * time.Second)
	require.False(t, s.due("used:k", false))
	now = now.Add(time.Second)
	require.True(t, s.due("used:k", false), "a minute after the last write")

	// A flood of distinct names within one window: past the cap,
	// nothing more is written until the window turns.
	for i := range maxDueEntries - 1 {
		require.True(t, s.due("unknown:"+strconv.Itoa(i), false))
	}
	require.False(t, s.due("unknown:one-too-many", false))
	require.LessOrEqual(t, len(s.written), maxDueEntries)
	now = now.Add(30 * time.Second)
	require.False(t, s.due("unknown:still-full", false))
	require.False(t, s.due("unknown:7", false), "written 30 s ago")

	// The next window starts empty.
	now = now.Add(40 * time.Second)
	require.True(t, s.due("unknown:one-too-many", false))

	// A write late in one window still counts in the next until it is a
	// minute old.
	now = now.Add(59 * time.Second)
	require.True(t, s.due("unknown:late", false))
	now = now.Add(2 * time.Second) // the window turns
	require.False(t, s.due("unknown:late", false))
	require.True(t, s.due("unknown:one-too-many", false), "written 61 s ago")
}

// Refusals of unknown keys, which anyone can send from as many addresses as
// they hold, write at most maxAnonymousAudits rows a window; the keys a
// tenant made still get theirs.
func TestAnonymousAuditsAreCapped(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	s := NewAPIKeysAt(func() time.Time { return now })
	for i := range maxAnonymousAudits {
		require.True(t, s.due("UNKNOWN_KEY:10.0.0."+strconv.Itoa(i), true))
	}
	require.False(t, s.due("UNKNOWN_KEY:10.1.0.0", true), "past the cap")
	require.True(t, s.due("EXPIRED:some-key", false), "a tenant's key is not capped with them")
	now = now.Add(time.Minute)
	require.True(t, s.due("UNKNOWN_KEY:10.1.0.0", true), "the next window counts afresh")
}
