package db_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
)

// TestLiveVisibilityFailsClosed checks the live path's rules on the kinds
// and row types they do not know, and on the rows whose owner or holder is
// someone else: nothing is visible by default.
func TestLiveVisibilityFailsClosed(t *testing.T) {
	t.Parallel()
	tenant, other := uuid.New(), uuid.New()
	user := &auth.Principal{UserID: uuid.New(), TenantID: tenant, Role: auth.RoleUser}
	service := &auth.Principal{TenantID: tenant, Role: auth.RoleService}
	robotID := uuid.New()
	robot := &auth.Principal{RobotID: robotID, TenantID: tenant, Role: auth.RoleRobot}
	anotherRobot := uuid.New()

	for _, p := range []*auth.Principal{user, service, robot} {
		for _, kind := range []string{"", "logs", "Log", "workflow", "Job", "machines"} {
			require.False(t, db.CanSee(p, kind, tenant, &user.UserID, &robotID), "routing fields of kind %q", kind)
			require.False(t, db.CanSeeRow(p, kind, &db.Job{TenantID: tenant, RobotID: &robotID}), "row of kind %q", kind)
		}
		// A row of another type than its kind's, or none.
		require.False(t, db.CanSeeRow(p, "job", &db.Robot{ID: robotID, TenantID: tenant}))
		require.False(t, db.CanSeeRow(p, "machine", &db.Job{TenantID: tenant}))
		require.False(t, db.CanSeeRow(p, "job", (*db.Job)(nil)))
		require.False(t, db.CanSeeRow(p, "robot", nil))
		// Another tenant's rows.
		require.False(t, db.CanSeeRow(p, "job", &db.Job{TenantID: other, RobotID: &robotID}))
		require.False(t, db.CanSeeRow(p, "robot", &db.Robot{ID: robotID, TenantID: other}))
		require.False(t, db.CanSeeRow(p, "machine", &db.Machine{TenantID: other, OwnerID: user.UserID}))
	}
	require.False(t, db.CanSeeRow(nil, "job", &db.Job{TenantID: tenant}), "nobody")

	// A robot: its own jobs only, never a released or another robot's one.
	require.True(t, db.CanSeeRow(robot, "job", &db.Job{TenantID: tenant, RobotID: &robotID}))
	require.False(t, db.CanSeeRow(robot, "job", &db.Job{TenantID: tenant}))
	require.False(t, db.CanSeeRow(robot, "job", &db.Job{TenantID: tenant, RobotID: &anotherRobot}))
	require.False(t, db.CanSeeRow(robot, "robot", &db.Robot{ID: anotherRobot, TenantID: tenant}))
	require.False(t, db.CanSeeRow(robot, "presence", &db.Robot{ID: robotID, TenantID: tenant}))
	require.False(t, db.CanSeeRow(robot, "machine", &db.Machine{TenantID: tenant}))
	require.False(t, db.CanSeeRow(robot, "machine_event", &db.MachineEvent{TenantID: tenant}))

	// A user: its own machines and their events; an event whose owner was
	// not loaded is nobody's.
	require.True(t, db.CanSeeRow(user, "machine", &db.Machine{TenantID: tenant, OwnerID: user.UserID}))
	require.False(t, db.CanSeeRow(user, "machine", &db.Machine{TenantID: tenant, OwnerID: uuid.New()}))
	require.True(t, db.CanSeeRow(user, "machine_event", &db.MachineEvent{TenantID: tenant, OwnerID: user.UserID}))
	require.False(t, db.CanSeeRow(user, "machine_event", &db.MachineEvent{TenantID: tenant}))
	require.False(t, db.CanSee(user, "machine_event", tenant, nil, nil))
	require.True(t, db.CanSeeRow(user, "job", &db.Job{TenantID: tenant, RobotID: &anotherRobot}))
	require.True(t, db.CanSeeRow(user, "presence", &db.Robot{ID: anotherRobot, TenantID: tenant}))
	require.True(t, db.CanSeeRow(service, "machine", &db.Machine{TenantID: tenant, OwnerID: uuid.New()}))

	// Log batches: the tenant's people see every robot's, a robot its own;
	// a batch holding a line of another robot or tenant is nobody's.
	own := &db.LogBatch{TenantID: tenant, RobotID: robotID, Lines: []*db.RobotLog{{TenantID: tenant, RobotID: robotID}}}
	for _, p := range []*auth.Principal{user, service, robot} {
		require.True(t, db.CanSee(p, "log", tenant, nil, &robotID))
		require.True(t, db.CanSeeRow(p, "log", own))
		require.False(t, db.CanSee(p, "log", other, nil, &robotID))
		require.False(t, db.CanSee(p, "log", tenant, nil, nil))
		require.False(t, db.CanSeeRow(p, "log", &db.LogBatch{TenantID: other, RobotID: robotID}))
		require.False(t, db.CanSeeRow(p, "log", &db.LogBatch{TenantID: tenant, RobotID: robotID,
			Lines: []*db.RobotLog{{TenantID: tenant, RobotID: robotID}, {TenantID: other, RobotID: robotID}}}))
		require.False(t, db.CanSeeRow(p, "log", (*db.LogBatch)(nil)))
		require.False(t, db.CanSeeRow(p, "log", &db.Job{TenantID: tenant, RobotID: &robotID}))
	}
	require.False(t, db.CanSee(robot, "log", tenant, nil, &anotherRobot))
	require.False(t, db.CanSeeRow(robot, "log", &db.LogBatch{TenantID: tenant, RobotID: anotherRobot}))
	require.True(t, db.CanSeeRow(user, "log", &db.LogBatch{TenantID: tenant, RobotID: anotherRobot}))
	require.False(t, db.CanSeeRow(nil, "log", own))
}
