package graph

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2/ast"

	"fleetgraph/graph/live"
)

// An operation waiting for its socket's client does not count as running,
// however it came to wait: here its socket had room when it queued for the
// one turn, and filled meanwhile, so take gives the turn back and waits
// for room. Counted, it held the fan-out to one writer (Yield) for as long
// as its client did not read.
func TestAnOperationWaitingForItsClientDoesNotCountAsRunning(t *testing.T) {
	t.Parallel()
	tt := newTurnsTest(t, 1)
	q := live.NewQuota(live.Limits{Sockets: 10})
	p, _, err := q.OpenSocket("tenant/x")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	a := tt.start(ctx, ast.Query, nil) // holds the one turn
	recv(t, a.running, "a runs")
	b := tt.start(live.WithPlace(ctx, p), ast.Query, nil) // the socket has room: b queues for the turn
	tt.waitFor(1)
	p.Hold(live.SocketResultBytes) // the socket's client stops reading
	close(a.release)
	recv(t, a.done, "a ends")
	// b takes the turn, finds no room, gives it back and waits for its
	// client: c gets the turn.
	var counted int64
	c := tt.start(ctx, ast.Query, func(context.Context) { counted = tt.running.Load() })
	recv(t, c.running, "c runs while b waits for its client")
	close(c.release)
	recv(t, c.done, "c ends")
	require.False(t, ran(b.running), "b waits for its client")
	require.EqualValues(t, 1, counted, "only c runs; b waits for its client")

	p.Release(live.SocketResultBytes)
	close(b.release)
	recv(t, b.done, "b ends once its client reads")
}
