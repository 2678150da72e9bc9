package faulttest_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/app"
	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/localpg"
	"fleetgraph/migrations"
	"fleetgraph/realtime/faulttest"
)

// syncLog is a log sink the test reads while the app writes.
type syncLog struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestSubscribersSurvivePostgresRestart stops the whole PostgreSQL cluster
// under a running server and starts it again on the same data: the
// listener and the pool lose every connection. Writes before and after
// (and attempts during, which fail) must all reach every subscriber, and
// subscribers must keep receiving. The cluster is this test's own, so the
// restart disturbs no other test.
func TestSubscribersSurvivePostgresRestart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// As root, PostgreSQL runs as the postgres user, which must reach the
	// data folder inside this one; MkdirTemp makes it 0700.
	dir, err := os.MkdirTemp("", "fgflt")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	pgOpts := localpg.Options{
		Dir:      filepath.Join(dir, "pg"),
		Settings: map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
	}
	cluster, err := localpg.Start(ctx, pgOpts)
	require.NoError(t, err)
	stopCluster := func(c *localpg.Cluster) {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, c.Stop(sctx))
	}
	clusterNow := cluster
	t.Cleanup(func() { stopCluster(clusterNow) })

	admin, err := db.Open(ctx, cluster.DSN("postgres"))
	require.NoError(t, err)
	_, err = admin.ExecContext(ctx, "CREATE DATABASE fleet")
	require.NoError(t, err)
	require.NoError(t, admin.Close())
	dsn := cluster.DSN("fleet") // the socket stays where it is across the restart
	bdb, err := db.Open(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bdb.Close() })
	_, err = migrations.Up(ctx, bdb)
	require.NoError(t, err)
	// The listener logs in as a role of its own, so the test can keep it
	// out after the restart while the pool (as postgres) writes: those
	// writes' notifications are then lost for certain, and only the hub's
	// resync can deliver them.
	_, err = bdb.ExecContext(ctx, "CREATE ROLE fleet_listener LOGIN")
	require.NoError(t, err)
	listenerDSN := dsn + " user=fleet_listener" // a later key wins in a key=value DSN
	listenerLogin := func(ok bool) {
		t.Helper()
		q := "ALTER ROLE fleet_listener NOLOGIN"
		if ok {
			q = "ALTER ROLE fleet_listener LOGIN"
		}
		faulttest.Retry(t, q, func(ctx context.Context) error { _, err := bdb.ExecContext(ctx, q); return err })
	}
	listenerSessions := func() int {
		t.Helper()
		var n int
		require.NoError(t, bdb.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'fleet_listener'").Scan(&n))
		return n
	}

	jwt, err := auth.NewJWT(auth.JWTConfig{Secret: []byte("restart-test-secret-restart-test-secret-0123"), Audience: "authenticated"})
	require.NoError(t, err)
	logs := &syncLog{}
	a, err := app.New(app.Config{
		DB: bdb, DSN: listenerDSN, JWT: jwt,
		Logger:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		ClaimPoll: time.Hour,
		// Leases that outlast a slow restart on a busy machine: the job
		// claimed before it is started after it.
		Queue: apitest.LongLeaseQueue(),
	})
	require.NoError(t, err)
	runCtx, stopApp := context.WithCancel(context.Background())
	appDone := make(chan struct{})
	go func() {
		a.Run(runCtx)
		close(appDone)
	}()
	mux := http.NewServeMux()
	mux.Handle("/graphql", a.Handler)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Handler.CloseWebsockets(cctx)
		srv.Close()
		stopApp()
		<-appDone
	}) // registered last, so it runs first: the app stops before the cluster

	userID := uuid.New()
	token, err := jwt.Mint(auth.MintOptions{UserID: userID, TenantID: auth.DefaultTenant, Role: auth.RoleUser, TTL: time.Hour})
	require.NoError(t, err)
	f := faulttest.NewFleet(t, srv.URL, token, 3)
	m0 := f.Machines[0]
	var subs []*faulttest.Subscriber
	for i := range 2 {
		subs = append(subs, faulttest.Subscribe(t, fmt.Sprintf("ws%d", i), faulttest.WSURL(srv.URL), token,
			faulttest.AllMachines("machines"), faulttest.OneMachine("machine0", m0), faulttest.AllJobs("jobs")))
	}
	converged := func() {
		t.Helper()
		machines, jobs := f.MachineSnapshot(t), f.JobSnapshot(t)
		for _, sub := range subs {
			sub.WaitConverged(t, "machines", machines, false)
			sub.WaitConverged(t, "machine0", machines.Only(m0), true)
			sub.WaitConverged(t, "jobs", jobs, false)
		}
	}
	for _, sub := range subs {
		sub.WaitReceived(t, "machine0", m0, 1)
	}
	f.WaitLive(t, subs, "machines", "jobs") // no first state: wait until they see a change
	must := func(_ int, err error) { t.Helper(); require.NoError(t, err) }
	for _, id := range f.Machines {
		must(f.ToggleMachine(ctx, id))
	}
	f.MustAdvanceJob(t) // queued
	f.MustAdvanceJob(t) // claimed
	converged()
	require.Equal(t, 1, listenerSessions(), "the listener is connected as its own role")

	listenerLogin(false) // its session goes on until the restart ends it
	stopCluster(cluster)
	// Writes while the database is down fail; the API says so.
	wctx, wcancel := context.WithTimeout(ctx, faulttest.Deadline)
	_, err = f.TouchMachine(wctx, m0)
	require.Error(t, err, "a write with the database down")
	_, _, err = f.AdvanceJob(wctx)
	require.Error(t, err, "a job step with the database down")
	wcancel()

	cluster, err = localpg.Start(ctx, pgOpts)
	require.NoError(t, err)
	clusterNow = cluster
	// Retry the failed writes, then more, while the listener cannot log in.
	for _, id := range f.Machines {
		faulttest.Retry(t, "touching a machine", func(ctx context.Context) error { _, err := f.TouchMachine(ctx, id); return err })
	}
	faulttest.Retry(t, "toggling a machine", func(ctx context.Context) error { _, err := f.ToggleMachine(ctx, m0); return err })
	for range 3 {
		faulttest.Retry(t, "a job step", func(ctx context.Context) error { _, _, err := f.AdvanceJob(ctx); return err })
	}
	created := f.CreateMachine(t)
	require.Zero(t, listenerSessions(), "the writes happened while the listener was away")
	listenerLogin(true)
	converged()
	require.Equal(t, 1, listenerSessions(), "the listener reconnected")
	require.Contains(t, logs.String(), "notification listener reconnected")
	require.Contains(t, logs.String(), "resynchronising subscriptions after lost notifications")
	for _, sub := range subs {
		require.Contains(t, sub.Stream("machines").Latest, created, "subscriber %s", sub.Name)
	}

	// Subscribers keep receiving after the restart.
	last, err := f.TouchMachine(ctx, m0)
	require.NoError(t, err)
	job, rev := f.MustAdvanceJob(t)
	for _, sub := range subs {
		sub.WaitReceived(t, "machines", m0, last)
		sub.WaitReceived(t, "machine0", m0, last)
		sub.WaitReceived(t, "jobs", job, rev)
	}
	converged()
}
