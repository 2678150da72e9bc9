package realtime_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/apitest"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/realtime"
	"fleetgraph/realtime/faulttest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// adminDatabase connects to the maintenance database of the cluster behind
// dsn: a database cannot stop connections to itself.
func adminDatabase(t *testing.T, dsn string) *bun.DB {
	t.Helper()
	if strings.Contains(dsn, "://") {
		base, query, _ := strings.Cut(dsn, "?")
		dsn = base[:strings.LastIndex(base, "/")] + "/postgres"
		if query != "" {
			dsn += "?" + query
		}
	} else {
		dsn += " dbname=postgres" // a later dbname= wins in a key=value DSN
	}
	admin, err := db.Open(t.Context(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close() })
	return admin
}

// listenerBackends returns the pids of the test database's LISTEN
// connections, which the listener names by their application_name (their
// last query tells nothing sure: pq pings with an empty query, as other
// connections may).
func listenerBackends(t *testing.T, admin *bun.DB, database string) []int {
	t.Helper()
	rows, err := admin.QueryContext(t.Context(), `SELECT pid FROM pg_stat_activity
		WHERE datname = ? AND backend_type = 'client backend' AND application_name = ?`, database, realtime.ListenerApplicationName)
	require.NoError(t, err)
	defer rows.Close()
	var pids []int
	for rows.Next() {
		var pid int
		require.NoError(t, rows.Scan(&pid))
		pids = append(pids, pid)
	}
	require.NoError(t, rows.Err())
	return pids
}

// TestSubscribersSurviveListenerTermination kills the listener's backend
// and keeps it from reconnecting while machines and jobs change, so the
// change feed loses those notifications for certain. Once it reconnects,
// every subscriber must end with the database's state (the hub's resync),
// receive nothing outside its subscription, and keep receiving.
func TestSubscribersSurviveListenerTermination(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	user := s.NewUser(t, uuid.Nil)
	f := faulttest.NewFleet(t, s.URL, user.Token, 4)
	m0, doomed := f.Machines[0], f.Machines[3]

	var subs []*faulttest.Subscriber
	for i := range 2 {
		subs = append(subs, faulttest.Subscribe(t, fmt.Sprintf("ws%d", i), faulttest.WSURL(s.URL), user.Token,
			faulttest.AllMachines("machines"), faulttest.OneMachine("machine0", m0), faulttest.AllJobs("jobs")))
	}
	ctx := t.Context()
	mustToggle := func(id string) {
		t.Helper()
		_, err := f.ToggleMachine(ctx, id)
		require.NoError(t, err)
	}
	mustTouch := func(id string) int {
		t.Helper()
		v, err := f.TouchMachine(ctx, id)
		require.NoError(t, err)
		return v
	}
	converged := func(what string) {
		t.Helper()
		machines, jobs := f.MachineSnapshot(t), f.JobSnapshot(t)
		require.NotEmpty(t, jobs, what)
		for _, sub := range subs {
			sub.WaitConverged(t, "machines", machines, false)
			sub.WaitConverged(t, "machine0", machines.Only(m0), true)
			sub.WaitConverged(t, "jobs", jobs, false)
		}
	}

	// The one-machine streams start with the machine's state; the others
	// have no first message, so WaitLive writes until they show a change.
	for _, sub := range subs {
		sub.WaitReceived(t, "machine0", m0, 1)
	}
	f.WaitLive(t, subs, "machines", "jobs")
	for _, id := range f.Machines {
		mustToggle(id)
	}
	f.MustAdvanceJob(t) // queued
	converged("before the outage")
	doomedVersion := f.MachineSnapshot(t)[doomed].Version

	// Warm the pool so that nothing below needs a new connection while
	// the database refuses them: the writes, the resync, and the
	// maintenance tasks that run meanwhile (their failure would be logged
	// as an error). 20 of its 25: the maintenance leader holds one.
	var held []bun.Conn
	for range 20 {
		c, err := s.DB.Conn(ctx)
		require.NoError(t, err)
		// A connection that never ran a statement shows an empty query,
		// like the listener after its ping: run one.
		_, err = c.ExecContext(ctx, "SELECT 1")
		require.NoError(t, err)
		held = append(held, c)
	}
	for _, c := range held {
		require.NoError(t, c.Close())
	}
	admin := adminDatabase(t, s.DB.DSN)
	allow := func(ok bool) error {
		_, err := admin.ExecContext(context.Background(), fmt.Sprintf("ALTER DATABASE %s ALLOW_CONNECTIONS %t", s.DB.Name, ok))
		return err
	}
	t.Cleanup(func() { _ = allow(true) })

	pids := listenerBackends(t, admin, s.DB.Name)
	require.Len(t, pids, 1, "exactly one listener connection per process")
	require.NoError(t, allow(false))
	var terminated bool
	// With a timeout, pg_terminate_backend waits until the backend has exited.
	require.NoError(t, admin.QueryRowContext(ctx, "SELECT pg_terminate_backend(?, 10000)", pids[0]).Scan(&terminated))
	require.True(t, terminated, "the listener's backend exited")

	// Writes the feed cannot carry: updates, a status change, a new machine,
	// a deletion, and the job moving through claim, start and progress.
	for _, id := range f.Machines {
		mustTouch(id)
	}
	mustToggle(m0)
	created := f.CreateMachine(t)
	f.DeleteMachine(t, doomed)
	for range 3 {
		f.MustAdvanceJob(t)
	}
	require.Empty(t, listenerBackends(t, admin, s.DB.Name), "the listener stayed away during the writes, so their notifications are lost")

	require.NoError(t, allow(true))
	converged("after the listener reconnected")
	require.Len(t, listenerBackends(t, admin, s.DB.Name), 1, "the listener reconnected")
	logs := s.Log.String()
	require.Contains(t, logs, "notification listener reconnected")
	require.Contains(t, logs, "resynchronising subscriptions after lost notifications")
	for _, sub := range subs {
		gone := sub.Stream("machines").Latest[doomed]
		require.Equal(t, "DELETED", gone.Op, "subscriber %s", sub.Name)
		// The row is gone, so the deletion carries the last version the
		// subscriber had: a valid GraphQL Int, not a sentinel.
		require.Equal(t, doomedVersion, gone.Version, "subscriber %s: version of the deletion", sub.Name)
		require.Contains(t, sub.Stream("machines").Latest, created, "subscriber %s", sub.Name)
	}

	// The feed works again: changes after the outage arrive as notifications.
	mustToggle(created)
	mustTouch(m0)
	f.MustAdvanceJob(t)
	converged("after more writes")

	// None is left silently dead: one last change reaches every stream.
	last := mustTouch(m0)
	job, rev := f.MustAdvanceJob(t)
	for _, sub := range subs {
		sub.WaitReceived(t, "machines", m0, last)
		sub.WaitReceived(t, "machine0", m0, last)
		sub.WaitReceived(t, "jobs", job, rev)
	}
	converged("at the end")
	require.NotContains(t, strings.ToLower(s.Log.String()), "level=error", "the server logged no errors")
}
