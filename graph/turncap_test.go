package graph_test

import (
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
)

// One caller's slow queries hold at most three quarters of the turns
// (with them, their root fields' connections), even while turns are free,
// and credential checks have connections of their own: another tenant's
// robot is answered while one user's eight queries of three root fields
// wait on a locked table. Before, the user held all eight turns and 24 of
// the pool's 25 connections, and the robot's key check ran out of time
// (INTERNAL). The table lock stands in for slow statements, so the test
// does not depend on the machine's speed.
func TestOneCallerLeavesTurnsAndConnections(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Running: 8})
	heavy := s.NewUser(t, uuid.New())
	other := s.NewUser(t, uuid.New())
	_, key := s.RobotWithKey(t, other.Token, "victim")
	s.Do(t, key, `{ currentRobot { id } }`, nil).OK(t, nil)

	// The test's own view of the database, outside the server's pools.
	monitor, err := db.OpenPool(t.Context(), s.DB.DSN, 2)
	require.NoError(t, err)
	defer monitor.Close()
	waiting := func() int {
		var n int
		require.NoError(t, monitor.NewRaw(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE 'SELECT %FROM "jobs"%'`).Scan(t.Context(), &n)) // not the rescue's UPDATE

		return n
	}
	release := s.LockTable(t, "jobs")
	const q = `{ a: jobs(first: 1) { totalCount } b: jobs(first: 1) { totalCount } c: jobs(first: 1) { totalCount } }`
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if resp := s.Do(t, heavy.Token, q, nil); len(resp.Errors) > 0 {
				t.Errorf("a heavy query: %s", resp.Raw)
			}
		})
	}
	// Six operations of three fields each: the cap, not all eight.
	require.Eventually(t, func() bool { return waiting() >= 18 }, time.Minute, 20*time.Millisecond)

	var out struct{ CurrentRobot struct{ ID string } }
	s.Do(t, key, `{ currentRobot { id } robots(first: 5) { totalCount } }`, nil).OK(t, &out)
	require.NotEmpty(t, out.CurrentRobot.ID)
	require.Equal(t, 18, waiting(), "the heavy caller's seventh and eighth operations wait for a turn")
	release()
	wg.Wait()
}
