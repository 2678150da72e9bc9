package live

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestStreamBacklogBoundsItsBytes checks what an SSE or multipart stream
// lets wait for a client that does not read: results up to backlogBytes,
// then none until one is taken, far under backlogResults; a result larger
// than the bound waits alone.
func TestStreamBacklogBoundsItsBytes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const size = 100 << 10
	b := newBacklog()
	for range backlogBytes / size {
		require.NoError(t, b.put(ctx, make([]byte, size)))
	}
	require.Less(t, len(b.c), backlogResults)
	require.False(t, b.room.TryAcquire(size), "another result would wait for room")

	// Once the client takes one, the next result has room.
	put := make(chan error, 1)
	go func() { put <- b.put(ctx, make([]byte, size)) }()
	b.took(<-b.c)
	select {
	case err := <-put:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("a result never got the room of the one taken")
	}

	for len(b.c) > 0 {
		b.took(<-b.c)
	}
	require.NoError(t, b.put(ctx, make([]byte, 16<<20)), "a large result waits when nothing else does")
	require.False(t, b.room.TryAcquire(1), "and waits alone")
	b.took(<-b.c)
	require.True(t, b.room.TryAcquire(backlogBytes), "all its room is given back")
}
