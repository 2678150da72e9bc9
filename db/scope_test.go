package db_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/fault"
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

// TestVisibilityClass checks who may share rendered live updates: people
// of a tenant for its robots, presence, jobs and logs; one owner for
// machines; each service role tenant and each robot alone; and nobody for
// an unknown kind, a system task, an anonymous caller or an unknown role.
func TestVisibilityClass(t *testing.T) {
	t.Parallel()
	tenant, other := uuid.New(), uuid.New()
	u1 := &auth.Principal{UserID: uuid.New(), TenantID: tenant, Role: auth.RoleUser}
	u2 := &auth.Principal{UserID: uuid.New(), TenantID: tenant, Role: auth.RoleUser}
	foreign := &auth.Principal{UserID: uuid.New(), TenantID: other, Role: auth.RoleUser}
	service := &auth.Principal{TenantID: tenant, Role: auth.RoleService}
	r1 := &auth.Principal{RobotID: uuid.New(), TenantID: tenant, Role: auth.RoleRobot}
	r2 := &auth.Principal{RobotID: uuid.New(), TenantID: tenant, Role: auth.RoleRobot}

	class := func(p *auth.Principal, kind string) string {
		c, ok := db.VisibilityClass(p, kind)
		require.Equal(t, ok, c != "", "a class is given exactly when sharing is allowed")
		return c
	}
	for _, kind := range []string{"robot", "presence", "job", "log"} {
		require.NotEmpty(t, class(u1, kind))
		require.Equal(t, class(u1, kind), class(u2, kind), "people of a tenant share %s", kind)
		require.NotEqual(t, class(u1, kind), class(foreign, kind), "not across tenants (%s)", kind)
		require.NotEqual(t, class(u1, kind), class(service, kind), "nor with the service role (%s)", kind)
		require.NotEqual(t, class(r1, kind), class(r2, kind), "each robot alone (%s)", kind)
		require.NotEqual(t, class(r1, kind), class(u1, kind), "a robot never with people (%s)", kind)
	}
	for _, kind := range []string{"machine", "machine_event"} {
		require.NotEqual(t, class(u1, kind), class(u2, kind), "machines are per owner")
		require.Equal(t, class(u1, kind), class(&auth.Principal{UserID: u1.UserID, TenantID: tenant, Role: auth.RoleUser}, kind))
	}
	for _, p := range []*auth.Principal{nil, auth.SystemPrincipal("scheduler", tenant), {UserID: uuid.New(), TenantID: tenant, Role: "anon"},
		{TenantID: tenant, Role: auth.RoleUser}, {UserID: uuid.New(), Role: auth.RoleUser}, {RobotID: uuid.New(), TenantID: tenant, Role: auth.RoleUser}} {
		require.Empty(t, class(p, "job"), "%+v shares nothing", p)
	}
	for _, kind := range []string{"", "jobs", "workflow", "Job"} {
		require.Empty(t, class(u1, kind), "unknown kind %q", kind)
	}
}

// TestOnlyTheInstallationCleansBelowRetention checks who may drop logs
// younger than LOG_RETENTION_DAYS: a system task of no tenant (the operator
// CLI), never a tenant's service role, and not a service principal that
// lacks a tenant (tokens are refused one, and were it ever made, it is no
// system task). The check comes before any statement.
func TestOnlyTheInstallationCleansBelowRetention(t *testing.T) {
	t.Parallel()
	logs := db.NewLogs(db.LogConfig{RetentionDays: 30}, nil)
	one := 1
	for name, p := range map[string]*auth.Principal{
		"TenantService":    {TenantID: uuid.New(), Role: auth.RoleService, UserID: uuid.New()},
		"ServiceNoTenant":  {Role: auth.RoleService, UserID: uuid.New()},
		"TenantSystemTask": auth.SystemPrincipal("scheduler", uuid.New()),
	} {
		_, err := logs.Cleanup(auth.WithPrincipal(t.Context(), p), nil, &one, true)
		var fe *fault.Error
		require.ErrorAs(t, err, &fe, name)
		require.Equal(t, fault.BadUserInput, fe.Code, name)
		require.Equal(t, "retentionDays", fe.Field, name)
	}
}

// TestOpenNeverEchoesTheDSN checks that a DATABASE_URL the driver cannot
// parse is refused without being quoted: it holds the password, and the
// error goes to logs and terminals.
func TestOpenNeverEchoesTheDSN(t *testing.T) {
	t.Parallel()
	for _, dsn := range []string{
		"postgres://fleet:pa%ss-w0rd@db/fleet",
		"postgres://fleet:se#cret@db:99999999/fleet",
		"host=db password='unterminated-s3cret",
	} {
		_, err := db.Open(t.Context(), dsn)
		require.Error(t, err, dsn)
		require.Contains(t, err.Error(), "DATABASE_URL", dsn)
		for _, secret := range []string{"pa%ss", "se#cret", "s3cret"} {
			require.NotContains(t, err.Error(), secret, dsn)
		}
	}
}
