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

	require.True(t, s.due("used:k"))
	require.False(t, s.due("used:k"), "a second write within the minute")
	now = now.Add(59 * time.Second)
	require.False(t, s.due("used:k"))
	now = now.Add(time.Second)
	require.True(t, s.due("used:k"), "a minute after the last write")

	// A flood of distinct addresses within one window: past the cap,
	// nothing more is written until the window turns.
	for i := range maxDueEntries - 1 {
		require.True(t, s.due("unknown:"+strconv.Itoa(i)))
	}
	require.False(t, s.due("unknown:one-too-many"))
	require.LessOrEqual(t, len(s.written), maxDueEntries)
	now = now.Add(30 * time.Second)
	require.False(t, s.due("unknown:still-full"))
	require.False(t, s.due("unknown:7"), "written 30 s ago")

	// The next window starts empty.
	now = now.Add(40 * time.Second)
	require.True(t, s.due("unknown:one-too-many"))

	// A write late in one window still counts in the next until it is a
	// minute old.
	now = now.Add(59 * time.Second)
	require.True(t, s.due("unknown:late"))
	now = now.Add(2 * time.Second) // the window turns
	require.False(t, s.due("unknown:late"))
	require.True(t, s.due("unknown:one-too-many"), "written 61 s ago")
}
