package app_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/app"
	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/maintenance"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// logBundle is an application over its own database whose maintenance
// runner the test steps by hand, on a manual clock.
type logBundle struct {
	db    *dbtest.Database
	app   *app.App
	clock *maintenance.ManualClock
}

func setupLogs(t *testing.T, start time.Time, cfg db.LogConfig) *logBundle {
	t.Helper()
	d := dbtest.New(t)
	jwt, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(strings.Repeat("s", 40)), Audience: "authenticated"})
	require.NoError(t, err)
	clock := maintenance.NewManualClock(start)
	a, err := app.New(app.Config{DB: d.DB, DSN: d.DSN, JWT: jwt, Logger: slog.New(slog.DiscardHandler), Clock: clock, Logs: cfg})
	require.NoError(t, err)
	return &logBundle{db: d, app: a, clock: clock}
}

// step runs the maintenance tasks due at the clock's time.
func (b *logBundle) step(t *testing.T) {
	t.Helper()
	leading, err := b.app.Maintenance.Step(t.Context())
	require.NoError(t, err)
	require.True(t, leading)
}

// days lists the days robot_logs has partitions for.
func (b *logBundle) days(t *testing.T) []string {
	t.Helper()
	parts, err := b.app.Resolver.LogStore.Partitions(t.Context(), b.db.DB)
	require.NoError(t, err)
	var out []string
	for _, p := range parts {
		require.False(t, p.Day.IsZero(), "unexpected partition %s", p.Name)
		out = append(out, p.Day.Format(time.DateOnly))
	}
	return out
}

// ship stores lines at the clock's time as robot of tenant.
func (b *logBundle) ship(t *testing.T, tenant, robot uuid.UUID, messages ...string) {
	t.Helper()
	ctx := auth.WithPrincipal(t.Context(), &auth.Principal{TenantID: tenant, RobotID: robot, Role: auth.RoleRobot})
	var in []db.RobotLogInput
	for _, m := range messages {
		in = append(in, db.RobotLogInput{Level: db.LogInfo, Message: m})
	}
	n, err := b.app.Resolver.LogStore.Ship(ctx, b.db.DB, in)
	require.NoError(t, err)
	require.Equal(t, len(messages), n)
}

type cleanupRow struct {
	Actor      string   `bun:"actor"`
	DryRun     bool     `bun:"dry_run"`
	Partitions []string `bun:"partitions,array"`
	Rows       int64    `bun:"rows"`
	Heartbeats int64    `bun:"heartbeats"`
}

func (b *logBundle) history(t *testing.T) []cleanupRow {
	t.Helper()
	var rows []cleanupRow
	require.NoError(t, b.db.NewRaw("SELECT actor, dry_run, partitions, rows, heartbeats FROM robot_log_cleanups ORDER BY id").Scan(t.Context(), &rows))
	return rows
}

func TestLogPartitionsAndRetention(t *testing.T) {
	t.Parallel()
	tenant, robot := uuid.New(), uuid.New()

	t.Run("partitions are kept ahead across midnight and retention drops exactly the days past it", func(t *testing.T) {
		t.Parallel()
		b := setupLogs(t, time.Date(2031, 3, 10, 23, 59, 59, 0, time.UTC), db.LogConfig{RetentionDays: 2, PartitionsAhead: 3})
		b.step(t)
		days := b.days(t)
		require.Equal(t, []string{"2031-03-10", "2031-03-11", "2031-03-12", "2031-03-13"}, days,
			"today and three days ahead; the days migration 0007 made (before the cutoff) were dropped by the first retention run")
		b.ship(t, tenant, robot, "just before midnight")

		b.clock.Advance(time.Second) // midnight: today's partition is there already
		b.step(t)
		b.ship(t, tenant, robot, "at midnight")
		require.Equal(t, days, b.days(t), "the partition task is hourly: nothing new yet")

		b.clock.Set(time.Date(2031, 3, 11, 1, 0, 0, 0, time.UTC))
		b.step(t)
		require.Equal(t, []string{"2031-03-10", "2031-03-11", "2031-03-12", "2031-03-13", "2031-03-14"}, b.days(t))

		var n int
		require.NoError(t, b.db.NewRaw("SELECT count(*) FROM robot_logs_p20310310").Scan(t.Context(), &n))
		require.Equal(t, 1, n)
		require.NoError(t, b.db.NewRaw("SELECT count(*) FROM robot_logs_p20310311").Scan(t.Context(), &n))
		require.Equal(t, 1, n)

		// A heartbeat sample from before the cutoff and one after.
		_, err := b.db.ExecContext(t.Context(), `INSERT INTO robot_heartbeats (robot_id, tenant_id, status, at) VALUES
			(gen_random_uuid(), ?, 'ONLINE', '2031-03-10T12:00:00Z'), (gen_random_uuid(), ?, 'ONLINE', '2031-03-11T00:30:00Z')`, tenant, tenant)
		require.Error(t, err, "robot_heartbeats references robots")
		_, err = b.db.ExecContext(t.Context(), `INSERT INTO robots (id, tenant_id, name) VALUES (?, ?, 'r')`, robot, tenant)
		require.NoError(t, err)
		_, err = b.db.ExecContext(t.Context(), `INSERT INTO robot_heartbeats (robot_id, tenant_id, status, at) VALUES
			(?, ?, 'ONLINE', '2031-03-10T12:00:00Z'), (?, ?, 'ONLINE', '2031-03-11T00:30:00Z')`, robot, tenant, robot, tenant)
		require.NoError(t, err)

		// 2031-03-13 02:00 with 2 days of retention: the cutoff is
		// 2031-03-11 00:00, so the 10th goes and the 11th stays.
		b.clock.Set(time.Date(2031, 3, 13, 2, 0, 0, 0, time.UTC))
		b.step(t)
		require.Equal(t, []string{"2031-03-11", "2031-03-12", "2031-03-13", "2031-03-14", "2031-03-15", "2031-03-16"}, b.days(t))
		h := b.history(t)
		require.Len(t, h, 2, "one run at the first step, one a day later")
		last := h[1]
		require.Equal(t, cleanupRow{Actor: "system:log-retention", Partitions: []string{"2031-03-10"}, Rows: 1, Heartbeats: 1}, last)
		var left int
		require.NoError(t, b.db.NewRaw("SELECT count(*) FROM robot_heartbeats").Scan(t.Context(), &left))
		require.Equal(t, 1, left)
		require.NoError(t, b.db.NewRaw("SELECT count(*) FROM robot_logs").Scan(t.Context(), &left))
		require.Equal(t, 1, left, "the line at midnight is kept")

		b.clock.Advance(time.Hour) // not a day since the last run
		b.step(t)
		require.Len(t, b.history(t), 2)
	})

	t.Run("a dry run drops nothing and records what it would drop", func(t *testing.T) {
		t.Parallel()
		b := setupLogs(t, time.Now(), db.LogConfig{})
		b.step(t)
		logs := b.app.Resolver.LogStore
		old := time.Now().UTC().AddDate(0, 0, -40)
		_, err := b.db.ExecContext(t.Context(), "SELECT fleetgraph_ensure_log_partition(?::date)", old.Format(time.DateOnly))
		require.NoError(t, err)
		_, err = b.db.ExecContext(t.Context(), `INSERT INTO robot_logs (tenant_id, robot_id, level, message, at) VALUES (?, ?, 20, 'old', ?), (?, ?, 40, 'old', ?)`,
			tenant, robot, old, uuid.New(), robot, old)
		require.NoError(t, err)
		before := b.days(t)

		system := auth.WithPrincipal(t.Context(), auth.SystemPrincipal("cli"))
		run, err := logs.Cleanup(system, b.db.DB, nil, true)
		require.NoError(t, err)
		require.True(t, run.DryRun)
		require.Equal(t, []string{old.Format(time.DateOnly)}, run.Partitions)
		require.EqualValues(t, 2, run.Rows, "the system sees the whole installation's lines")
		require.Positive(t, run.Bytes)
		require.Equal(t, before, b.days(t), "a dry run drops nothing")

		// A shorter retention is the operator's (the system's) to choose.
		days := 1
		run, err = logs.Cleanup(system, b.db.DB, &days, true)
		require.NoError(t, err)
		require.Equal(t, []string{old.Format(time.DateOnly)}, run.Partitions, "only days wholly before yesterday")
		require.Equal(t, before, b.days(t))

		run, err = logs.Cleanup(system, b.db.DB, nil, false)
		require.NoError(t, err)
		require.False(t, run.DryRun)
		require.EqualValues(t, 2, run.Rows)
		require.False(t, slices.Contains(b.days(t), old.Format(time.DateOnly)))
		h := b.history(t)
		require.Len(t, h, 4)
		require.Equal(t, []bool{false, true, true, false}, []bool{h[0].DryRun, h[1].DryRun, h[2].DryRun, h[3].DryRun})
		require.Equal(t, "system:cli", h[3].Actor)
	})

	// A reader of robot_logs (pg_dump, a slow robotLogs, an operator's open
	// transaction) holds its lock for as long as it likes: making a day's
	// partition, by the leader or on demand by shipLogs, does not wait for
	// it, and no log read or write queues behind the partition's creation.
	t.Run("making a partition waits for no reader of robot_logs", func(t *testing.T) {
		t.Parallel()
		b := setupLogs(t, time.Date(2031, 5, 1, 12, 0, 0, 0, time.UTC), db.LogConfig{PartitionsAhead: 3})
		b.step(t)
		b.ship(t, tenant, robot, "before the reader")
		reader, err := b.db.DB.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		release := func() { _ = reader.Rollback() }
		t.Cleanup(release)
		var n int
		require.NoError(t, reader.NewRaw("SELECT count(*) FROM robot_logs").Scan(t.Context(), &n))
		require.Equal(t, 1, n)

		// within runs f, and fails the test when it has not returned within
		// 30 s while the reader holds its lock (then releases the reader, so
		// that f can end). What this catches is a wait that would never end,
		// so the limit is generous: a whole maintenance step must fit on a
		// busy machine.
		within := func(what string, f func()) {
			t.Helper()
			done := make(chan struct{})
			go func() { defer close(done); f() }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				release()
				<-done
				require.FailNow(t, what+" waited for a reader of robot_logs")
			}
		}
		b.clock.Advance(24 * time.Hour) // the leader makes 2031-05-05
		var stepErr error
		within("the maintenance step", func() { _, stepErr = b.app.Maintenance.Step(context.Background()) })
		require.NoError(t, stepErr)
		require.Contains(t, b.days(t), "2031-05-05")

		// Ten days on, before the leader's next run: shipLogs makes today's.
		b.clock.Set(time.Date(2031, 5, 12, 12, 0, 0, 0, time.UTC))
		other := uuid.New()
		within("shipLogs", func() { b.ship(t, tenant, other, "on a day without a partition") })
		require.Contains(t, b.days(t), "2031-05-12")

		// The partitions made so are those PARTITION OF made: same indexes,
		// no leftover range constraint.
		var indexes, checks int
		require.NoError(t, b.db.NewRaw(`SELECT count(*) FROM pg_index WHERE indrelid = 'robot_logs_p20310512'::regclass`).Scan(t.Context(), &indexes))
		require.Equal(t, 4, indexes)
		require.NoError(t, b.db.NewRaw(`SELECT count(*) FROM pg_constraint WHERE conrelid = 'robot_logs_p20310512'::regclass AND conname LIKE '%\_range'`).Scan(t.Context(), &checks))
		require.Zero(t, checks)
		require.NoError(t, reader.Commit())
	})

	t.Run("a line's day gets its partition on demand", func(t *testing.T) {
		t.Parallel()
		// A fresh server whose leader has not run yet: yesterday has no
		// partition, and a robot's line of yesterday is still stored.
		// Yesterday is the day before now, taken before the database is
		// made: its partitions are of the day it was migrated (that day or
		// later, should midnight pass) and after.
		now := time.Now()
		yesterday := now.UTC().AddDate(0, 0, -1)
		b := setupLogs(t, now, db.LogConfig{})
		require.NotContains(t, b.days(t), yesterday.Format(time.DateOnly))
		ctx := auth.WithPrincipal(context.Background(), &auth.Principal{TenantID: tenant, RobotID: robot, Role: auth.RoleRobot})
		_, err := b.app.Resolver.LogStore.Ship(ctx, b.db.DB, []db.RobotLogInput{{Level: db.LogInfo, Message: "late", At: &yesterday}})
		require.NoError(t, err)
		require.Contains(t, b.days(t), yesterday.Format(time.DateOnly))
	})
}
