package db_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
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
