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
	// The lines span the last 2,007 seconds: yesterday's too, just after
	// midnight (UTC), whose partition a template migrated today lacks.
	_, err := d.ExecContext(ctx, "SELECT fleetgraph_ensure_log_partition(((now() - make_interval(secs => ?)) AT TIME ZONE 'UTC')::date)", lines)
	require.NoError(t, err)
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

// TestBatchesReadsAtMostMaxTailLines: the keys of a hub batch are read in
// one statement, each with its own robot's lines in its range (the range
// also holds another robot's), a line shared by overlapping keys going to
// both; past MaxTailLines lines, the keys whose range goes beyond the last
// line read are unread, not read in part.
func TestBatchesReadsAtMostMaxTailLines(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant, a, b := uuid.New(), uuid.New(), uuid.New()
	const total, chunk = db.MaxTailLines + 2_000, 1_000
	_, err := d.ExecContext(ctx, `INSERT INTO robot_logs (tenant_id, robot_id, level, message, at)
		SELECT ?, CASE WHEN g % 2 = 0 THEN ?::uuid ELSE ?::uuid END, 20, 'line ' || g, now() FROM generate_series(1, ?) g`, tenant, a, b, total)
	require.NoError(t, err)
	var ids []int64
	require.NoError(t, d.NewSelect().Table("robot_logs").Column("id").Order("id").Scan(ctx, &ids))
	require.Len(t, ids, total)
	now := time.Now()
	key := func(robot uuid.UUID, from, to int) db.LogBatchKey {
		return db.LogBatchKey{Robot: robot, Lo: ids[from], Hi: ids[to-1], From: now.Add(-time.Minute), To: now.Add(time.Minute)} // within MaxTailSpan
	}
	var keys []db.LogBatchKey
	for i := 0; i < total; i += chunk {
		keys = append(keys, key(a, i, i+chunk), key(b, i, i+chunk))
	}
	overlap := key(a, 0, 2*chunk)
	keys = append(keys, overlap)

	statements := &stmtLog{}
	d.AddQueryHook(statements)
	svc := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	read, unread, err := db.NewLogs(db.DefaultLogConfig, nil).Batches(svc, d.DB, keys)
	require.NoError(t, err)
	require.Len(t, statements.texts, 1, "one statement")
	require.ElementsMatch(t, keys[2*db.MaxTailLines/chunk:len(keys)-1], unread, "the keys past the cap are unread")
	require.Len(t, read, 2*db.MaxTailLines/chunk+1)
	for k, batch := range read {
		want := chunk / 2
		if k == overlap {
			want = chunk
		}
		require.Len(t, batch.Lines, want)
		for i, l := range batch.Lines {
			require.Equal(t, k.Robot, l.RobotID, "only the key's robot's lines")
			require.True(t, l.ID >= k.Lo && l.ID <= k.Hi)
			if i > 0 {
				require.Greater(t, l.ID, batch.Lines[i-1].ID, "in order")
			}
		}
	}
}
