package graph_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// A subscription's results are rendered in turns, as queries run: with
// the only turn held by another tenant's query, a change of the machine
// waits for a turn before its result is rendered, and arrives once the
// turn is free. Renders without turns had no bound: twenty 122-byte
// subscriptions each selecting 240 events' details rendered at once and
// held 1.4 GB of heap, again on every change.
func TestSubscriptionResultsAreRenderedInTurns(t *testing.T) {
	t.Parallel()
	t.Run("one machine", func(t *testing.T) { t.Parallel(); renderedInTurns(t, true) })
	t.Run("shared", func(t *testing.T) { t.Parallel(); renderedInTurns(t, false) })
}

// renderedInTurns subscribes to one machine (its current state first), or
// to all of the user's machines (a shared group's render).
func renderedInTurns(t *testing.T, one bool) {
	s := apitest.New(t, apitest.Options{Running: 1, Metrics: true})
	c := newClient(t, s)
	ws := lvConnect(t, s, c.token)
	var m machine
	var first struct{ Op string }
	if one {
		m = c.create("rendered-in-turns")
		ws.subscribe("m", streamSub, map[string]any{"id": m.ID})
		ws.value("m", &first) // its current state, rendered in a free turn
		require.Equal(t, "CURRENT", first.Op)
	} else {
		ws.subscribe("m", streamSub, nil)
		fanStats(t, s, 1, 1)
		m = c.create("rendered-in-turns")
		ws.value("m", &first)
		require.Equal(t, "CREATED", first.Op)
	}

	// Another tenant's query takes the only turn and waits on a lock.
	other := s.NewUser(t, uuid.New())
	release := s.LockTable(t, "workflows")
	held := make(chan *apitest.Response, 1)
	go func() { held <- s.Do(t, other.Token, `{ workflows { totalCount } }`, nil) }()
	apitest.Eventually(t, lvWait, "the query holds the turn", func() bool { return s.LockWaiters(t, `%FROM "workflows"%`) == 1 })

	_, err := s.DB.ExecContext(t.Context(), "UPDATE machines SET name = 'renamed', version = version + 1 WHERE id = ?", m.ID)
	require.NoError(t, err)
	// Until the render waits for a turn, or (before) its result came.
	apitest.Eventually(t, lvWait, "the change's render waits for a turn", func() bool {
		return operationsWaiting(t, s) == 1 || len(ws.msgs) > 0
	})
	select {
	case msg := <-ws.msgs:
		require.Failf(t, "a result was rendered without a turn", "%+v %s", msg, msg.Payload)
	default:
	}
	release()
	var change struct{ Op string }
	ws.value("m", &change)
	require.Equal(t, "UPDATED", change.Op)
	select {
	case res := <-held:
		res.OK(t, nil)
	case <-time.After(lvWait):
		require.FailNow(t, "the query did not end")
	}
}

// operationsWaiting reads fleetgraph_graphql_operations_waiting.
func operationsWaiting(t *testing.T, s *apitest.Server) float64 {
	t.Helper()
	families, err := s.Metrics.Registry().Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == "fleetgraph_graphql_operations_waiting" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	require.FailNow(t, "no fleetgraph_graphql_operations_waiting")
	return 0
}

// A render has an operation's time from when it takes its turn: one
// blocked on a lock is stopped at the deadline, its subscription ends with
// OPERATION_TIMEOUT and its turn goes back, so another tenant's query,
// which reads nothing locked, runs. (It held the only turn until the lock
// went, and every other query timed out waiting.)
func TestARenderStopsAtItsDeadline(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Running: 1, OperationTimeout: 2 * time.Second})
	c := newClient(t, s)
	ws := lvConnect(t, s, c.token)
	m := c.create("render-deadline")
	ws.subscribe("m", `subscription($id: ID) { machineUpdated(id: $id) { op machine { events(first: 1) { edges { cursor } } } } }`, map[string]any{"id": m.ID})
	var first struct{ Op string }
	ws.value("m", &first)
	require.Equal(t, "CURRENT", first.Op)

	release := s.LockTable(t, "machine_events")
	defer release()
	_, err := s.DB.ExecContext(t.Context(), "UPDATE machines SET name = 'renamed', version = version + 1 WHERE id = ?", m.ID)
	require.NoError(t, err)
	end := ws.next("m")
	require.Equal(t, "error", end.Type, "%s", end.Payload)
	require.Contains(t, string(end.Payload), "OPERATION_TIMEOUT")

	// The lock is still held; the turn is free.
	other := s.NewUser(t, uuid.New())
	s.Do(t, other.Token, `{ robots(first: 1) { edges { cursor } } }`, nil).OK(t, nil)
}
