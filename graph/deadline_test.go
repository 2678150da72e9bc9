package graph_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// An operation's work is bounded in time (OPERATION_TIMEOUT_SECONDS): a
// request whose statements PostgreSQL cannot finish is stopped, its
// statements cancelled and its transaction rolled back, and the client is
// told why. Statements are held here by a lock the test takes, so they
// block until the deadline cancels them, however busy the machine is.

// requireTimedOut asserts the refusal of an operation stopped at its deadline.
func requireTimedOut(t *testing.T, res *apitest.Response) {
	t.Helper()
	e := res.Code(t, "RATE_LIMITED")
	require.Equal(t, "OPERATION_TIMEOUT", e.Extensions["reason"], "%s", res.Raw)
	require.Equal(t, "OPERATION_TIMEOUT_SECONDS", e.Extensions["limit"], "%s", res.Raw)
	require.Contains(t, e.Message, "ask for less")
	require.NotContains(t, string(res.Raw), "pq:")
	require.NotContains(t, string(res.Raw), "canceling statement")
}

// requireNoWaiters waits until no backend but the test's waits for a lock:
// the server's cancelled statements have ended in PostgreSQL too.
func requireNoWaiters(t *testing.T, s *apitest.Server) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int
		err := s.DB.QueryRowContext(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return err == nil && n == 0
	}, 30*time.Second, 20*time.Millisecond, "a statement of the stopped operation still waits in PostgreSQL")
}

// untilUnstopped sends a request that must succeed (do) to a server whose
// deadline is a second, again while a busy machine stops it at that
// deadline, and returns its first other answer. A server the stopped
// operations harmed (a turn never given back, say) stops every attempt, so
// after 30 s the last refusal is returned, for the caller to fail on.
func untilUnstopped(t *testing.T, do func() *apitest.Response) *apitest.Response {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		res := do()
		if len(res.Errors) == 0 || res.Errors[0].Extensions["reason"] != "OPERATION_TIMEOUT" || time.Now().After(deadline) {
			return res
		}
		t.Logf("sent again, stopped at its deadline: %s", res.Raw)
	}
}

func TestOperationDeadline(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{OperationTimeout: time.Second})
	// Setup that the test does not examine goes through a replica of s (the
	// same database, the default deadline).
	setup := apitest.New(t, apitest.Options{ReplicaOf: s})
	u := s.NewUser(t, uuid.New())

	t.Run("a query is stopped and told why, and its statements end", func(t *testing.T) {
		release := s.LockTable(t, "machines")
		res := s.Do(t, u.Token, `{ a: machines { totalCount } b: machines { edges { node { id } } } }`, nil)
		requireTimedOut(t, res)
		require.Len(t, res.Errors, 2, "each stopped field says so: %s", res.Raw)
		requireNoWaiters(t, s)
		release()
		// The server is unharmed: the same query answers once the lock is gone.
		untilUnstopped(t, func() *apitest.Response { return s.Do(t, u.Token, `{ machines { totalCount } }`, nil) }).OK(t, nil)
	})

	t.Run("a mutation stopped halfway writes nothing", func(t *testing.T) {
		// createMachine inserts the machine, then its created event, which waits.
		release := s.LockTable(t, "machine_events")
		res := s.Do(t, u.Token, `mutation { createMachine(input: {name: "halfway"}) { id } }`, nil)
		requireTimedOut(t, res)
		requireNoWaiters(t, s)
		release()
		var out struct{ Machines struct{ TotalCount int } }
		untilUnstopped(t, func() *apitest.Response {
			return s.Do(t, u.Token, `{ machines(filter: {nameContains: "halfway"}) { totalCount } }`, nil)
		}).OK(t, &out)
		require.Zero(t, out.Machines.TotalCount, "the stopped mutation's machine was kept")
		var n int
		require.NoError(t, s.DB.QueryRowContext(t.Context(), `SELECT count(*) FROM machines WHERE name = 'halfway'`).Scan(&n))
		require.Zero(t, n)
	})

	t.Run("a claim waiting for a job does not count its wait", func(t *testing.T) {
		// The claim waits three times the deadline, parked, then answers
		// null; only its attempts count. (Were its wait counted, every
		// attempt would be stopped.)
		_, key := setup.RobotWithKey(t, u.Token, "patient")
		var start time.Time
		var out struct{ ClaimJob *struct{ LeaseToken string } }
		untilUnstopped(t, func() *apitest.Response {
			start = time.Now()
			return s.Do(t, key, `mutation { claimJob(waitSeconds: 3) { leaseToken } }`, nil)
		}).OK(t, &out)
		require.Nil(t, out.ClaimJob)
		require.GreaterOrEqual(t, time.Since(start), 3*time.Second, "the claim did not wait")
	})
}

// The deadline's refusal is not only for statements: an operation that
// waits for its turn past its deadline is refused the same way.
func TestOperationDeadlineWhileWaitingForATurn(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{OperationTimeout: time.Second, Running: 1})
	u := s.NewUser(t, uuid.New())
	release := s.LockTable(t, "machines")
	// The first query takes the only turn and waits on the lock; the
	// second waits for the turn. Both are stopped.
	results := make(chan *apitest.Response, 2)
	for range 2 {
		go func() { results <- s.Do(t, u.Token, `{ machines { totalCount } }`, nil) }()
	}
	for range 2 {
		select {
		case res := <-results:
			requireTimedOut(t, res)
		case <-time.After(30 * time.Second):
			require.FailNow(t, "an operation outlived its deadline")
		}
	}
	requireNoWaiters(t, s)
	release()
	// Both gave their turn back: a query answers.
	untilUnstopped(t, func() *apitest.Response { return s.Do(t, u.Token, `{ machines { totalCount } }`, nil) }).OK(t, nil)
}

// A query runs a few of its root fields at once (parallelRootFields), not
// all: 50 aliases of one aggregate used to take every connection of the
// pool. Each alias's statement waits here on a locked table, so the
// waiting statements are the fields running at once.
func TestAQueryRunsAFewRootFieldsAtOnce(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.New())
	// Only the fields' statements: "%" would count any session waiting on
	// any lock, and the exact count below must be the query's alone.
	waiting := func() int { return s.LockWaiters(t, `SELECT%FROM "machines"%`) }
	release := s.LockTable(t, "machines")
	var q strings.Builder
	q.WriteString("{")
	for i := range 10 {
		fmt.Fprintf(&q, "a%d: machines(first: 1) { edges { cursor } } ", i)
	}
	q.WriteString("}")
	done := make(chan *apitest.Response, 1)
	go func() { done <- s.Do(t, u.Token, q.String(), nil) }()
	apitest.Eventually(t, 30*time.Second, "three fields run", func() bool { return waiting() >= 3 })
	// A barrier above, and a short look for a fourth below (the old code
	// ran all ten at once).
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for range 30 {
		<-tick.C
		require.Equal(t, 3, waiting(), "fields of one query running at once")
	}
	release()
	var out map[string]any
	(<-done).OK(t, &out)
	require.Len(t, out, 10)
}
