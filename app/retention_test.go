package app_test

import (
	"log/slog"
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

// The leader's hourly history-retention task deletes the API key audit and
// the log cleanup history past AUDIT_RETENTION_DAYS, in batches and a
// bounded number of them a run, and the finished webhook
// deliveries past WEBHOOK_RETENTION_DAYS with the events they leave
// without deliveries; it keeps what is younger, and pending deliveries
// (with their events) whatever their age.
func TestHistoryRetention(t *testing.T) {
	d := dbtest.New(t)
	jwt, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(strings.Repeat("s", 40)), Audience: "authenticated"})
	require.NoError(t, err)
	now := time.Now().UTC().Truncate(time.Second)
	clock := maintenance.NewManualClock(now)
	a, err := app.New(app.Config{DB: d.DB, DSN: d.DSN, JWT: jwt, Logger: slog.New(slog.DiscardHandler), Clock: clock,
		Retention: db.RetentionConfig{AuditDays: 90, WebhookDays: 30, BatchesPerRun: 2}})
	require.NoError(t, err)
	ctx := t.Context()
	exec := func(q string, args ...any) {
		t.Helper()
		_, err := d.DB.ExecContext(ctx, q, args...)
		require.NoError(t, err)
	}
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		require.NoError(t, d.DB.NewRaw(q, args...).Scan(ctx, &n))
		return n
	}
	days := func(n int) time.Time { return now.AddDate(0, 0, -n) }

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

	step := func() {
		t.Helper()
		leading, err := a.Maintenance.Step(ctx)
		require.NoError(t, err)
		require.True(t, leading)
	}
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

// statuses lists the statuses of event's deliveries.
func statuses(t *testing.T, d *dbtest.Database, event uuid.UUID) []string {
	t.Helper()
	var out []string
	require.NoError(t, d.DB.NewRaw(`SELECT status FROM webhook_deliveries WHERE event_id = ? ORDER BY status`, event).Scan(t.Context(), &out))
	return out
}
