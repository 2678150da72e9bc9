package db_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// TestClaimSkipsABlockedBacklog checks that a claim's cost does not grow
// with one endpoint's blocked backlog: 50,000 pending deliveries of one
// subject wait behind its first, which is waiting for a retry; a claim
// reads a handful of rows and returns another tenant's due delivery, queued
// after the backlog. When the first finishes, the next of its subject goes.
func TestClaimSkipsABlockedBacklog(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	const backlog = 50_000
	now := time.Now().UTC().Truncate(time.Microsecond)

	endpoint := func(tenant uuid.UUID) (ep, ev uuid.UUID) {
		require.NoError(t, d.NewRaw(`INSERT INTO webhook_endpoints (tenant_id, url, events, secret, created_by)
			VALUES (?, 'https://example.com/hook', '{robot.online}', 'whsec_x', 'test') RETURNING id`, tenant).Scan(ctx, &ep))
		require.NoError(t, d.NewRaw(`INSERT INTO webhook_events (tenant_id, type, subject_id, data)
			VALUES (?, 'robot.online', ?, '{}') RETURNING id`, tenant, uuid.New()).Scan(ctx, &ev))
		return ep, ev
	}
	flapping, other := uuid.New(), uuid.New()
	slowEP, slowEV := endpoint(flapping)
	okEP, okEV := endpoint(other)
	subject := uuid.New()

	// The subject's first delivery failed and retries in an hour; the
	// backlog queues behind it; then the other tenant's delivery.
	_, err := d.ExecContext(ctx, `INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id, subject_id, event_type, attempt_count, next_attempt_at)
		VALUES (?, ?, ?, ?, 'robot.online', 1, ?)`, flapping, slowEP, slowEV, subject, now.Add(time.Hour))
	require.NoError(t, err)
	_, err = d.ExecContext(ctx, `INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id, subject_id, event_type)
		SELECT ?, ?, ?, ?, 'robot.online' FROM generate_series(1, ?)`, flapping, slowEP, slowEV, subject, backlog)
	require.NoError(t, err)
	var okID uuid.UUID
	require.NoError(t, d.NewRaw(`INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id, subject_id, event_type)
		VALUES (?, ?, ?, ?, 'robot.online') RETURNING id`, other, okEP, okEV, uuid.New()).Scan(ctx, &okID))
	_, err = d.ExecContext(ctx, "ANALYZE webhook_deliveries")
	require.NoError(t, err)

	s := db.NewWebhooks(db.WebhookConfig{})
	var claimed []*db.DueDelivery
	plan := explainStatement(t, d, func(ctx context.Context, idb bun.IDB) (err error) {
		claimed, err = s.ClaimDue(ctx, idb, now, 1, time.Minute)
		return err
	})
	require.Len(t, claimed, 1)
	require.Equal(t, okID, claimed[0].ID)
	read := 0.0
	for _, n := range scansOf(plan, "webhook_deliveries") {
		read += (n.ActualRows + n.RemovedByFilter + n.RemovedByRecheck) * n.ActualLoops
	}
	t.Logf("a claim behind a backlog of %d read %v rows of webhook_deliveries", backlog, read)
	require.Less(t, read, 20.0, "rows of webhook_deliveries read by a claim behind a backlog of %d: %s", backlog, plan)

	// The first of the subject succeeds: the next one is due at once.
	later := now.Add(2 * time.Hour)
	first, err := s.ClaimDue(ctx, d.DB, later, 1, time.Minute)
	require.NoError(t, err)
	require.Len(t, first, 1)
	require.Equal(t, slowEP, first[0].EndpointID)
	code := 200
	require.NoError(t, s.RecordAttempt(ctx, d.DB, first[0], later, db.AttemptResult{Attempt: db.WebhookAttempt{StatusCode: &code}}))
	var nextID uuid.UUID
	require.NoError(t, d.NewRaw(`SELECT id FROM webhook_deliveries WHERE endpoint_id = ? AND status = 'PENDING' ORDER BY seq LIMIT 1`,
		slowEP).Scan(ctx, &nextID))
	due, err := s.ClaimDue(ctx, d.DB, later, 2, time.Minute)
	require.NoError(t, err)
	var ids []uuid.UUID
	for _, dd := range due {
		ids = append(ids, dd.ID)
	}
	require.ElementsMatch(t, []uuid.UUID{nextID, okID}, ids)
}

// TestWaitingSurvivesAConcurrentFinish checks the waiting mark when a
// delivery is queued behind a pending one that finishes at the same time,
// in either order: the new delivery never waits behind nothing, and the
// next claim returns it.
func TestWaitingSurvivesAConcurrentFinish(t *testing.T) {
	t.Parallel()
	for _, insertFirst := range []bool{false, true} {
		d := dbtest.New(t)
		ctx := t.Context()
		tenant, subject := uuid.New(), uuid.New()
		var ep, ev, head uuid.UUID
		require.NoError(t, d.NewRaw(`INSERT INTO webhook_endpoints (tenant_id, url, events, secret, created_by)
			VALUES (?, 'https://example.com/hook', '{robot.online}', 'whsec_x', 'test') RETURNING id`, tenant).Scan(ctx, &ep))
		require.NoError(t, d.NewRaw(`INSERT INTO webhook_events (tenant_id, type, subject_id, data)
			VALUES (?, 'robot.online', ?, '{}') RETURNING id`, tenant, subject).Scan(ctx, &ev))
		const insert = `INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id, subject_id, event_type)
			VALUES (?, ?, ?, ?, 'robot.online') RETURNING id`
		require.NoError(t, d.NewRaw(insert, tenant, ep, ev, subject).Scan(ctx, &head))
		finish := func(ctx context.Context, idb bun.IDB) error {
			_, err := idb.ExecContext(ctx, `UPDATE webhook_deliveries SET status = 'SUCCEEDED' WHERE id = ?`, head)
			return err
		}
		var next uuid.UUID
		queue := func(ctx context.Context, idb bun.IDB) error {
			return idb.NewRaw(insert, tenant, ep, ev, subject).Scan(ctx, &next)
		}
		// first runs in a transaction left open while second, which must
		// wait for it, starts; then first commits.
		first, second := finish, queue
		if insertFirst {
			first, second = queue, finish
		}
		tx, err := d.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.NoError(t, first(ctx, tx))
		done := make(chan error, 1)
		go func() { done <- second(ctx, d.DB) }()
		require.Eventually(t, func() bool {
			var n int
			err := d.QueryRowContext(ctx,
				`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
			return err == nil && n == 1
		}, 30*time.Second, 10*time.Millisecond, "the second statement (insert first: %v) does not wait for the first", insertFirst)
		require.NoError(t, tx.Commit())
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Fatal("the second statement never ended")
		}
		var waiting bool
		require.NoError(t, d.NewRaw(`SELECT waiting FROM webhook_deliveries WHERE id = ?`, next).Scan(ctx, &waiting))
		require.False(t, waiting, "insert first: %v", insertFirst)
		due, err := db.NewWebhooks(db.WebhookConfig{}).ClaimDue(ctx, d.DB, time.Now(), 1, time.Minute)
		require.NoError(t, err)
		require.Len(t, due, 1)
		require.Equal(t, next, due[0].ID)
	}
}

// TestQueueingDoesNotDeadlockWithAnEndpointsDeletion: a transaction queues
// deliveries of two subjects of one endpoint (as recordEvents does for a
// sweep or a batch of jobs) while deleteWebhookEndpoint, which locks the
// endpoint's deliveries in seq order, runs. Queueing once locked each
// subject's oldest pending delivery in its own order, and the two
// deadlocked; both now succeed.
func TestQueueingDoesNotDeadlockWithAnEndpointsDeletion(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant, s1, s2 := uuid.New(), uuid.New(), uuid.New()
	var ep, ev uuid.UUID
	require.NoError(t, d.NewRaw(`INSERT INTO webhook_endpoints (tenant_id, url, events, secret, created_by)
		VALUES (?, 'https://example.com/hook', '{robot.online}', 'whsec_x', 'test') RETURNING id`, tenant).Scan(ctx, &ep))
	require.NoError(t, d.NewRaw(`INSERT INTO webhook_events (tenant_id, type, subject_id, data)
		VALUES (?, 'robot.online', ?, '{}') RETURNING id`, tenant, s1).Scan(ctx, &ev))
	const insert = `INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id, subject_id, event_type) VALUES (?, ?, ?, ?, 'robot.online')`
	for _, s := range []uuid.UUID{s2, s1} { // pending heads: s2 first, then s1
		_, err := d.ExecContext(ctx, insert, tenant, ep, ev, s)
		require.NoError(t, err)
	}
	tx, err := d.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	_, err = tx.ExecContext(ctx, insert, tenant, ep, ev, s1)
	require.NoError(t, err)
	deleted := make(chan error, 1)
	user := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser})
	go func() {
		_, err := db.NewWebhooks(db.WebhookConfig{}).DeleteEndpoint(user, d.DB, ep)
		deleted <- err
	}()
	require.Eventually(t, func() bool {
		var n int
		err := d.QueryRowContext(ctx,
			`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return err == nil && n == 1
	}, 30*time.Second, 10*time.Millisecond, "the deletion waits for the queueing transaction")
	_, err = tx.ExecContext(ctx, insert, tenant, ep, ev, s2)
	require.NoError(t, err, "queueing the second subject")
	require.NoError(t, tx.Commit())
	select {
	case err := <-deleted:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		require.FailNow(t, "the deletion did not end")
	}
}
