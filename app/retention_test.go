package app_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lib/pq"
	"github.com/stretchr/testify/require"

	"fleetgraph/app"
	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/maintenance"
)

// The leader's hourly history-retention task deletes the API key audit and
// the log cleanup history past AUDIT_RETENTION_DAYS, in batches and a
// bounded number of them a run, and the finished webhook
// deliveries past WEBHOOK_RETENTION_DAYS with the events they leave
// without deliveries; it keeps what is younger, and pending deliveries
// (with their events) whatever their age.
func TestHistoryRetention(t *testing.T) {
	f := newRetentionFixture(t, db.RetentionConfig{AuditDays: 90, WebhookDays: 30, BatchesPerRun: 2})
	d, ctx, clock, exec, count, days, step := f.d, t.Context(), f.clock, f.exec, f.count, f.days, f.step

	// More old audit entries than one batch deletes, and two young ones.
	exec(`INSERT INTO api_key_audit (event, ip, at) SELECT 'UNKNOWN_KEY', '10.0.0.1', ? FROM generate_series(1, 12000)`, days(91))
	exec(`INSERT INTO api_key_audit (event, ip, at) VALUES ('UNKNOWN_KEY', '10.0.0.2', ?), ('UNKNOWN_KEY', '10.0.0.3', ?)`, days(89), days(1))

	tenant := uuid.New()
	var oldCleanup int64
	require.NoError(t, d.DB.NewRaw(`INSERT INTO robot_log_cleanups (actor, actor_tenant, dry_run, retention_days, cutoff, partitions, rows, bytes, heartbeats, at)
		VALUES ('user:x', ?, true, 30, ?, '{}', 0, 0, 0, ?) RETURNING id`, tenant, days(121), days(91)).Scan(ctx, &oldCleanup))
	exec(`INSERT INTO robot_log_cleanup_tenants (cleanup_id, tenant_id, rows, bytes, heartbeats) VALUES (?, ?, 0, 0, 0)`, oldCleanup, tenant)
	var endpoint uuid.UUID
	require.NoError(t, d.DB.NewRaw(`INSERT INTO webhook_endpoints (tenant_id, url, events, secret, created_by)
		VALUES (?, 'https://example.com/hook', '{job.completed}', 'whsec_x', 'test') RETURNING id`, tenant).Scan(ctx, &endpoint))
	event := func(created time.Time, statuses ...string) uuid.UUID {
		t.Helper()
		var id uuid.UUID
		require.NoError(t, d.DB.NewRaw(`INSERT INTO webhook_events (tenant_id, type, subject_id, data, created_at)
			VALUES (?, 'job.completed', gen_random_uuid(), '{}', ?) RETURNING id`, tenant, created).Scan(ctx, &id))
		for _, st := range statuses {
			var finished *time.Time
			if st != "PENDING" {
				finished = &created
			}
			exec(`INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id, subject_id, event_type, status, created_at, finished_at)
				VALUES (?, ?, ?, gen_random_uuid(), 'job.completed', ?, ?, ?)`, tenant, endpoint, id, st, created, finished)
		}
		return id
	}
	oldDone := event(days(40), "SUCCEEDED", "FAILED")
	oldPending := event(days(40), "SUCCEEDED", "PENDING")
	young := event(days(29), "SUCCEEDED")

	step()
	// A run deletes at most BatchesPerRun batches a table (2 × 5,000):
	// the next run, an hour later, the rest.
	require.Equal(t, 12000-10000+2, count(`SELECT count(*) FROM api_key_audit`), "a run is bounded")
	clock.Advance(time.Hour + time.Second)
	step()
	require.Equal(t, 2, count(`SELECT count(*) FROM api_key_audit`), "the entries of the last 90 days")
	require.Zero(t, count(`SELECT count(*) FROM api_key_audit WHERE at < ?`, days(90)))
	require.Zero(t, count(`SELECT count(*) FROM robot_log_cleanups WHERE id = ?`, oldCleanup), "a dry run's record past the retention")
	require.Zero(t, count(`SELECT count(*) FROM robot_log_cleanup_tenants WHERE cleanup_id = ?`, oldCleanup))
	require.Positive(t, count(`SELECT count(*) FROM robot_log_cleanups`), "the leader's run of today")
	require.Zero(t, count(`SELECT count(*) FROM webhook_events WHERE id = ?`, oldDone), "an old event whose deliveries are all finished")
	require.Zero(t, count(`SELECT count(*) FROM webhook_deliveries WHERE event_id = ?`, oldDone))
	require.Equal(t, 1, count(`SELECT count(*) FROM webhook_events WHERE id = ?`, oldPending), "an event with a pending delivery")
	require.Equal(t, []string{"PENDING"}, statuses(t, d, oldPending), "its finished delivery goes, its pending one stays")
	require.Equal(t, []string{"SUCCEEDED"}, statuses(t, d, young), "younger than the retention")

	// A day later the young audit entry of 89 days ages out too.
	clock.Advance(25 * time.Hour)
	step()
	require.Equal(t, 1, count(`SELECT count(*) FROM api_key_audit`))
}

// retentionFixture is a database, a leader with a manual clock whose
// retention is cfg, and helpers to write rows and count them.
type retentionFixture struct {
	t     *testing.T
	d     *dbtest.Database
	a     *app.App
	now   time.Time
	clock *maintenance.ManualClock
}

func newRetentionFixture(t *testing.T, cfg db.RetentionConfig) *retentionFixture {
	t.Helper()
	d := dbtest.New(t)
	jwt, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(strings.Repeat("s", 40)), Audience: "authenticated"})
	require.NoError(t, err)
	now := time.Now().UTC().Truncate(time.Second)
	clock := maintenance.NewManualClock(now)
	a, err := app.New(app.Config{DB: d.DB, DSN: d.DSN, JWT: jwt, Logger: slog.New(slog.DiscardHandler), Clock: clock, Retention: cfg})
	require.NoError(t, err)
	return &retentionFixture{t: t, d: d, a: a, now: now, clock: clock}
}

func (f *retentionFixture) exec(q string, args ...any) {
	f.t.Helper()
	_, err := f.d.DB.ExecContext(f.t.Context(), q, args...)
	require.NoError(f.t, err)
}

func (f *retentionFixture) count(q string, args ...any) int {
	f.t.Helper()
	var n int
	require.NoError(f.t, f.d.DB.NewRaw(q, args...).Scan(f.t.Context(), &n))
	return n
}

// days is n days before the fixture's start.
func (f *retentionFixture) days(n int) time.Time { return f.now.AddDate(0, 0, -n) }

// step runs one maintenance step, as the leader.
func (f *retentionFixture) step() {
	f.t.Helper()
	leading, err := f.a.Maintenance.Step(f.t.Context())
	require.NoError(f.t, err)
	require.True(f.t, leading)
}

// statuses lists the statuses of event's deliveries.
func statuses(t *testing.T, d *dbtest.Database, event uuid.UUID) []string {
	t.Helper()
	var out []string
	require.NoError(t, d.DB.NewRaw(`SELECT status FROM webhook_deliveries WHERE event_id = ? ORDER BY status`, event).Scan(t.Context(), &out))
	return out
}

// The history-retention task deletes the jobs that finished more than
// JOB_RETENTION_DAYS ago, in bounded runs, and nothing else: live jobs of
// any age, jobs finished since, and a finished job a retry holds (its row
// locked, then QUEUED again) stay. What keeps a deleted job's id (its log
// lines, its webhook events, its schedule) is untouched.
func TestJobRetention(t *testing.T) {
	f := newRetentionFixture(t, db.RetentionConfig{JobDays: 30, BatchesPerRun: 2})
	d, ctx, clock, exec, count, days, step, now := f.d, t.Context(), f.clock, f.exec, f.count, f.days, f.step, f.now

	tenant := uuid.New()
	var workflow, robot, schedule uuid.UUID
	require.NoError(t, d.DB.NewRaw(`INSERT INTO workflows (tenant_id, name) VALUES (?, 'wf') RETURNING id`, tenant).Scan(ctx, &workflow))
	exec(`INSERT INTO workflow_versions (workflow_id, version, tenant_id, definition, created_by) VALUES (?, 1, ?, '{}', 'test')`, workflow, tenant)
	require.NoError(t, d.DB.NewRaw(`INSERT INTO robots (tenant_id, name) VALUES (?, 'r') RETURNING id`, tenant).Scan(ctx, &robot))
	job := func(status string, created time.Time, finished *time.Time) uuid.UUID {
		t.Helper()
		var id uuid.UUID
		require.NoError(t, d.DB.NewRaw(`INSERT INTO jobs (tenant_id, workflow_id, workflow_version, status, robot_id, created_by, created_at, finished_at)
			VALUES (?, ?, 1, ?, ?, 'test', ?, ?) RETURNING id`, tenant, workflow, status, robot, created, finished).Scan(ctx, &id))
		return id
	}
	at := func(t time.Time) *time.Time { return &t }

	// More old finished jobs than one run deletes (2 batches of 5,000).
	exec(`INSERT INTO jobs (tenant_id, workflow_id, workflow_version, status, robot_id, created_by, created_at, finished_at)
		SELECT ?, ?, 1, (ARRAY['COMPLETED', 'FAILED', 'CANCELLED'])[1 + g % 3], ?, 'test', ?, ?
		FROM generate_series(1, 12000) g`, tenant, workflow, robot, days(40), days(31))
	oldCompleted := job("COMPLETED", days(90), at(days(60)))
	young := job("FAILED", days(40), at(days(29)))
	liveOld := []uuid.UUID{job("QUEUED", days(400), nil), job("CLAIMED", days(400), nil), job("RUNNING", days(400), nil)}
	retried := job("FAILED", days(50), at(days(45)))

	// What refers to the old job by its id, without a foreign key.
	require.NoError(t, d.DB.NewRaw(`INSERT INTO schedules (tenant_id, workflow_id, name, cron_expression, paused, created_by)
		VALUES (?, ?, 's', '0 * * * *', true, 'test') RETURNING id`, tenant, workflow).Scan(ctx, &schedule))
	exec(`UPDATE jobs SET schedule_id = ?, scheduled_for = ? WHERE id = ?`, schedule, days(90), oldCompleted)
	exec(`INSERT INTO robot_logs (tenant_id, robot_id, job_id, level, message, at) VALUES (?, ?, ?, 20, 'done', ?)`, tenant, robot, oldCompleted, now)
	exec(`INSERT INTO webhook_events (tenant_id, type, subject_id, data, created_at) VALUES (?, 'job.completed', ?, '{}', ?)`, tenant, oldCompleted, now)

	// The change feed hears of no job the prune deletes.
	l := pq.NewListener(d.DSN, time.Second, time.Minute, nil)
	t.Cleanup(func() { _ = l.Close() })
	require.NoError(t, l.Listen("fleetgraph_change"))

	// A retry holds the old failed job while the prune runs.
	tx, err := d.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	_, err = tx.ExecContext(ctx, "SELECT id FROM jobs WHERE id = ? FOR UPDATE", retried)
	require.NoError(t, err)

	step()
	require.Equal(t, 12000+2-10000, count(`SELECT count(*) FROM jobs WHERE finished_at < ?`, days(30)), "a run is bounded")
	require.Equal(t, 1, count(`SELECT count(*) FROM jobs WHERE id = ?`, retried), "the job a retry holds is skipped")
	_, err = tx.ExecContext(ctx, "UPDATE jobs SET status = 'QUEUED', finished_at = NULL WHERE id = ?", retried)
	require.NoError(t, err)
	require.NoError(t, tx.Commit())

	clock.Advance(time.Hour + time.Second)
	step()
	require.Zero(t, count(`SELECT count(*) FROM jobs WHERE finished_at < ?`, days(30)), "every job finished before the retention")
	require.Equal(t, 1, count(`SELECT count(*) FROM jobs WHERE id = ?`, young), "finished within the retention")
	for _, id := range append(liveOld, retried) {
		require.Equal(t, 1, count(`SELECT count(*) FROM jobs WHERE id = ?`, id), "a live job, whatever its age")
	}
	require.Equal(t, 5, count(`SELECT count(*) FROM jobs`))
	require.Equal(t, 1, count(`SELECT count(*) FROM schedules WHERE id = ?`, schedule))
	require.Equal(t, 1, count(`SELECT count(*) FROM robot_logs WHERE job_id = ?`, oldCompleted))
	require.Equal(t, 1, count(`SELECT count(*) FROM webhook_events WHERE subject_id = ?`, oldCompleted))

	// Notifications come in commit order: by the time a deletion by hand
	// notifies, the prune's would have come before it.
	exec(`DELETE FROM jobs WHERE id = ?`, young)
	deadline := time.After(30 * time.Second)
	for {
		select {
		case n := <-l.Notify:
			if n == nil || !strings.Contains(n.Extra, `"op" : "DELETE"`) {
				continue // the retry's update, or a reconnect
			}
			require.Contains(t, n.Extra, young.String(), "the prune's deletions are quiet: %s", n.Extra)
			return
		case <-deadline:
			require.FailNow(t, "no notification of the deletion by hand")
		}
	}
}
