package graph

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The document caches are bounded by the text they hold, not only by
// entries: 1,000 parsed 1 MiB documents would pin gigabytes.
func TestDocumentCacheIsBoundedByBytes(t *testing.T) {
	ctx := context.Background()
	c := newDocumentCache(1000, 10<<10, 4<<10, func(_, q string) int { return len(q) })
	kib := strings.Repeat("x", 1<<10)
	for i := range 30 {
		c.Add(ctx, strconv.Itoa(i), kib)
		require.LessOrEqual(t, c.bytes, 10<<10)
	}
	require.Equal(t, 10, c.lru.Len(), "ten 1 KiB documents fill 10 KiB")
	_, ok := c.Get(ctx, "29")
	require.True(t, ok, "the newest is kept")
	_, ok = c.Get(ctx, "19")
	require.False(t, ok, "the oldest went first")

	// A document over the per-entry bound is not kept, nor does it evict.
	c.Add(ctx, "big", strings.Repeat("x", 5<<10))
	_, ok = c.Get(ctx, "big")
	require.False(t, ok)
	require.Equal(t, 10, c.lru.Len())

	// Replacing an entry counts its bytes once.
	for range 5 {
		c.Add(ctx, "29", kib)
	}
	require.Equal(t, 10<<10, c.bytes)
}
