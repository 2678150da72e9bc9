package db_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// TestResyncBatchesHoldWhatAShipHolds checks that the lines a live tail
// re-reads after lost notifications come in batches of at most
// MaxShipBatch lines (RobotLogBatch.lines is counted at that), in order,
// each robot's apart.
func TestResyncBatchesHoldWhatAShipHolds(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant, a, b := uuid.New(), uuid.New(), uuid.New()
	const lines = 2*db.MaxShipBatch + 7
	for _, robot := range []uuid.UUID{a, b} {
		_, err := d.ExecContext(ctx, `INSERT INTO robot_logs (tenant_id, robot_id, level, message, at)
			SELECT ?, ?, 20, 'line ' || g, now() - make_interval(secs => ? - g) FROM generate_series(1, ?) g`, tenant, robot, lines, lines)
		require.NoError(t, err)
	}
	svc := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	batches, err := db.NewLogs(db.DefaultLogConfig, nil).ChangedSince(svc, d.DB, time.Now().Add(-time.Hour))
	require.NoError(t, err)
	seen := map[uuid.UUID]int{}
	for _, batch := range batches {
		require.NotEmpty(t, batch.Lines)
		require.LessOrEqual(t, len(batch.Lines), db.MaxShipBatch)
		for _, l := range batch.Lines {
			require.Equal(t, batch.RobotID, l.RobotID)
			seen[l.RobotID]++
			require.Equal(t, fmt.Sprint("line ", seen[l.RobotID]), l.Message, "in order")
		}
	}
	require.Equal(t, map[uuid.UUID]int{a: lines, b: lines}, seen)
}

// stmtLog records the text of every statement run through a bun.DB.
type stmtLog struct {
	mu    sync.Mutex
	texts []string
}

func (l *stmtLog) BeforeQuery(ctx context.Context, _ *bun.QueryEvent) context.Context { return ctx }

func (l *stmtLog) AfterQuery(_ context.Context, e *bun.QueryEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.texts = append(l.texts, e.Query)
}

// TestCleanupDropsPartitionsLast checks the order of a log cleanup's
// statements: a partition's DROP locks robot_logs itself until the commit,
// so every count, the heartbeats' pruning and the record come before the
// first DROP, and nothing follows the DROPs.
func TestCleanupDropsPartitionsLast(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	for _, age := range []int{40, 41} {
		day := time.Now().UTC().AddDate(0, 0, -age)
		_, err := d.ExecContext(ctx, "SELECT fleetgraph_ensure_log_partition(?::date)", day.Format(time.DateOnly))
		require.NoError(t, err)
		_, err = d.ExecContext(ctx, "INSERT INTO robot_logs (tenant_id, robot_id, level, message, at) VALUES (gen_random_uuid(), gen_random_uuid(), 20, 'old', ?)", day)
		require.NoError(t, err)
	}
	rec := &stmtLog{}
	d.DB.AddQueryHook(rec)
	run, err := db.NewLogs(db.DefaultLogConfig, nil).Cleanup(auth.WithPrincipal(ctx, auth.SystemPrincipal("cli")), d.DB, nil, false)
	require.NoError(t, err)
	require.Len(t, run.Partitions, 2)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	first := slices.IndexFunc(rec.texts, func(q string) bool { return strings.HasPrefix(q, "DROP TABLE") })
	require.Positive(t, first, "%q", rec.texts)
	for _, q := range rec.texts[:first] {
		require.NotContains(t, q, "DROP")
	}
	for _, q := range rec.texts[first:] {
		require.True(t, strings.HasPrefix(q, "DROP TABLE") || q == "COMMIT", "after the first DROP: %q", q)
	}
	require.True(t, slices.ContainsFunc(rec.texts[:first], func(q string) bool { return strings.Contains(q, "robot_heartbeats") }))
	require.True(t, slices.ContainsFunc(rec.texts[:first], func(q string) bool { return strings.Contains(q, "robot_log_cleanup_tenants") }))
}

// TestSummaryKeepsToTheRetention checks that logSummary's window starts no
// earlier than what LOG_RETENTION_DAYS keeps: lines of older days still
// waiting for the daily cleanup are not counted, and their partitions are
// not read, however early since is.
func TestSummaryKeepsToTheRetention(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant, robot := uuid.New(), uuid.New()
	now := time.Now().UTC()
	kept := now.Truncate(24*time.Hour).AddDate(0, 0, -30)
	for _, at := range []time.Time{now.AddDate(0, 0, -45), kept.Add(-time.Minute), kept, now.AddDate(0, 0, -1)} {
		_, err := d.ExecContext(ctx, "SELECT fleetgraph_ensure_log_partition(?::date)", at.Format(time.DateOnly))
		require.NoError(t, err)
		_, err = d.ExecContext(ctx, "INSERT INTO robot_logs (tenant_id, robot_id, level, message, at) VALUES (?, ?, 20, 'line', ?)", tenant, robot, at)
		require.NoError(t, err)
	}
	logs := db.NewLogs(db.LogConfig{RetentionDays: 30, Now: func() time.Time { return now }}, nil)
	svc := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	since := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	rows, err := logs.Summary(svc, d.DB, &since, nil, nil)
	require.NoError(t, err)
	var days []string
	for _, r := range rows {
		days = append(days, r.Day)
	}
	require.Equal(t, []string{now.AddDate(0, 0, -1).Format(time.DateOnly), kept.Format(time.DateOnly)}, days,
		"the days the retention keeps, newest first")

	plan := explainStatement(t, d, func(ctx context.Context, idb bun.IDB) error {
		_, err := logs.Summary(auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService}), idb, &since, nil, nil)
		return err
	})
	for _, old := range []time.Time{now.AddDate(0, 0, -45), kept.Add(-time.Minute)} {
		require.NotContains(t, plan, "robot_logs_p"+old.Format("20060102"), "a partition past the retention is not read")
	}

	// The list too: a search that finds less than a page reads no
	// partition past the retention, and lists no line of one.
	page, err := logs.List(svc, d.DB, db.LogFilter{Since: &since}, db.PageArgs{})
	require.NoError(t, err)
	require.Len(t, page.Items, 2, "the lines the retention keeps")
	contains := "nothing like it"
	plan = explainStatement(t, d, func(ctx context.Context, idb bun.IDB) error {
		_, err := logs.List(auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService}), idb, db.LogFilter{Contains: &contains}, db.PageArgs{})
		return err
	})
	for _, old := range []time.Time{now.AddDate(0, 0, -45), kept.Add(-time.Minute)} {
		require.NotContains(t, plan, "robot_logs_p"+old.Format("20060102"), "a partition past the retention is not searched")
	}
}
