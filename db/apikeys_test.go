package db_test

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/fault"
)

// TestAuditOfARobot checks that apiKeyAudit(robotId:) returns the robot's
// newest entries reading the robot's entries only
// (api_key_audit_robot_idx), however many newer entries of other robots
// its tenant has.
func TestAuditOfARobot(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant, robot, chatty := uuid.New(), uuid.New(), uuid.New()
	exec := func(q string, args ...any) {
		t.Helper()
		_, err := d.ExecContext(ctx, q, args...)
		require.NoError(t, err)
	}
	// The robot's entries are the tenant's oldest; thousands of another
	// robot's (and another tenant's) follow.
	exec(`INSERT INTO api_key_audit (tenant_id, robot_id, event, actor, detail) SELECT ?, ?, 'CREATED', 'test', 'entry ' || g FROM generate_series(1, 3) g`,
		tenant, robot)
	exec(`INSERT INTO api_key_audit (tenant_id, robot_id, event, actor) SELECT ?, ?, 'USED_AFTER_REVOKE', 'test' FROM generate_series(1, 3000)`,
		tenant, chatty)
	exec(`INSERT INTO api_key_audit (tenant_id, robot_id, event, actor) SELECT gen_random_uuid(), gen_random_uuid(), 'USED_AFTER_REVOKE', 'test' FROM generate_series(1, 3000)`)
	exec(`ANALYZE api_key_audit`)
	svc := func(ctx context.Context) context.Context {
		return auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	}
	first := 2
	keys := db.NewAPIKeys()

	entries, err := keys.Audit(svc(ctx), d.DB, &robot, &first)
	require.NoError(t, err)
	require.Len(t, entries, 2)
	for i, want := range []string{"entry 3", "entry 2"} {
		require.Equal(t, robot, *entries[i].RobotID)
		require.Equal(t, want, *entries[i].Detail, "newest first")
	}

	plan := explainStatement(t, d, func(ctx context.Context, idb bun.IDB) error {
		_, err := keys.Audit(svc(ctx), idb, &robot, &first)
		return err
	})
	scans := scansOf(plan, "api_key_audit")
	require.Len(t, scans, 1, "%s", plan)
	require.LessOrEqual(t, scans[0].ActualRows+scans[0].RemovedByFilter+scans[0].RemovedByRecheck, 3.0,
		"only the robot's entries are read: %s", plan)
}

// TestARefusalStandsWhenItsAuditFails checks that a refused key is refused
// UNAUTHENTICATED even when its audit entry cannot be written (here: its
// statement cancelled while it waits for the audit table), and that the
// failure is logged: it once replaced the refusal, and the client got an
// internal error instead.
func TestARefusalStandsWhenItsAuditFails(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	keys := db.NewAPIKeys()
	var logged bytes.Buffer
	keys.Log = slog.New(slog.NewTextHandler(&logged, nil))
	tenant, robot := uuid.New(), uuid.New()
	_, err := d.ExecContext(ctx, `INSERT INTO robots (id, tenant_id, name) VALUES (?, ?, 'r')`, robot, tenant)
	require.NoError(t, err)
	created, err := keys.Create(auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService}), d.DB, robot, "k", nil)
	require.NoError(t, err)
	_, err = d.ExecContext(ctx, `UPDATE api_keys SET revoked_at = now() WHERE id = ?`, created.APIKey.ID)
	require.NoError(t, err)

	holder, err := d.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer holder.Rollback()
	_, err = holder.ExecContext(ctx, `LOCK TABLE api_key_audit IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)
	verifyCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	refused := make(chan error, 1)
	go func() {
		_, err := keys.Verify(verifyCtx, d.DB, created.Key, "192.0.2.1")
		refused <- err
	}()
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, d.NewRaw(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO%api_key_audit%'`).Scan(ctx, &n))
		return n == 1
	}, 30*time.Second, 10*time.Millisecond, "the refusal's audit waits for the table")
	cancel()
	err = <-refused
	require.Equal(t, fault.Unauthenticated, fault.CodeOf(err), "%v", err)
	require.ErrorContains(t, err, "revoked")
	require.Contains(t, logged.String(), "auditing a refused API key failed")
}
