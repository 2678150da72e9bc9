package db_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// The outbox statement (every job finish, every robot going OFFLINE or
// back) reads only the endpoints of the tenants whose events it records:
// it read every tenant's, so its cost grew with the installation, not the
// tenant (a seq scan of 100,000 endpoints, 60 ms, for each event). And it
// holds a bounded number of advisory locks of delivery queues, however
// many deliveries it queues: it held one per delivery, to its commit, and
// a transaction of a few hundred robots' events with 50 endpoints each ran
// PostgreSQL out of shared lock memory, failing the offline sweep of
// every tenant.
func TestTheOutboxReadsItsTenantsEndpointsAndHoldsFewLocks(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	// 400 other tenants with 50 endpoints each.
	_, err := d.ExecContext(ctx, `INSERT INTO webhook_endpoints (tenant_id, url, events, secret, created_by)
		SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(g / 50), 12, '0'))::uuid,
			'https://example.com/hook', '{robot.offline}', 'whsec_x', 'test'
		FROM generate_series(0, 19999) g`)
	require.NoError(t, err)
	// The tenant: 50 endpoints, and 20 silent robots (1,000 deliveries).
	tenant := uuid.New()
	_, err = d.ExecContext(ctx, `INSERT INTO webhook_endpoints (tenant_id, url, events, secret, created_by)
		SELECT ?, 'https://hooks.example/' || g, '{robot.offline}', 'whsec_x', 'test' FROM generate_series(1, ?) g`,
		tenant, db.MaxWebhookEndpoints)
	require.NoError(t, err)
	_, err = d.ExecContext(ctx, `INSERT INTO robots (tenant_id, name, status, last_heartbeat_at)
		SELECT ?, 'r' || g, 'ONLINE', now() - interval '1 day' FROM generate_series(1, 20) g`, tenant)
	require.NoError(t, err)
	_, err = d.ExecContext(ctx, "ANALYZE webhook_endpoints")
	require.NoError(t, err)

	tx, err := d.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	marked, err := db.NewRobots(db.DefaultQueueConfig).MarkSilentOffline(ctx, tx)
	require.NoError(t, err)
	require.Len(t, marked, 20)
	var deliveries, locks int
	var read int64
	require.NoError(t, tx.NewRaw(`SELECT count(*) FROM webhook_deliveries WHERE tenant_id = ?`, tenant).Scan(ctx, &deliveries))
	require.Equal(t, 20*db.MaxWebhookEndpoints, deliveries)
	require.NoError(t, tx.NewRaw(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`).Scan(ctx, &locks))
	require.LessOrEqual(t, locks, 256, "advisory locks held for %d deliveries", deliveries)
	require.NoError(t, tx.NewRaw(`SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
		FROM pg_stat_xact_user_tables WHERE relname = 'webhook_endpoints'`).Scan(ctx, &read))
	// Its own endpoints, and one foreign-key check of each delivery; not
	// the other tenants' 20,000.
	require.LessOrEqual(t, read, int64(deliveries+2*db.MaxWebhookEndpoints), "endpoint rows read")
}
