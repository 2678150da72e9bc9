package realtime

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
)

// A kind the feed does not know is visible to no one, whatever the
// principal, and is a class of its own per principal; the known kinds
// place principals in the classes the issue names.
func TestKindsVisibilityAndClasses(t *testing.T) {
	t.Parallel()
	tenant, other := uuid.New(), uuid.New()
	alice := &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser}
	bob := &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser}
	stranger := &auth.Principal{TenantID: other, UserID: uuid.New(), Role: auth.RoleUser}
	service := &auth.Principal{TenantID: tenant, Role: auth.RoleService}
	robotID := uuid.New()
	robot := &auth.Principal{TenantID: tenant, RobotID: robotID, Role: auth.RoleRobot}

	t.Run("UnknownKindInvisible", func(t *testing.T) {
		t.Parallel()
		unknown := Kind("workflow")
		require.False(t, unknown.Known())
		c := Change{Kind: unknown, Tenant: tenant, ID: uuid.NewString(), Owner: &alice.UserID, Robot: &robotID}
		for _, p := range []*auth.Principal{alice, service, robot} {
			require.False(t, unknown.CanSee(p, c), "%s", p.Actor())
			require.False(t, visible(p, unknown, Update{Kind: unknown, Op: "CREATED", Value: &db.Machine{TenantID: tenant, OwnerID: alice.UserID}}))
			require.False(t, visible(p, unknown, Update{Kind: unknown, Op: "DELETED"}))
		}
		require.NotEqual(t, unknown.Class(alice), unknown.Class(bob), "unknown kinds share nothing")
	})

	t.Run("Classes", func(t *testing.T) {
		t.Parallel()
		for _, k := range []Kind{KindRobot, KindJob, KindPresence, KindLog} {
			require.Equal(t, k.Class(alice), k.Class(bob), "%s: people of a tenant share", k)
			require.NotEqual(t, k.Class(alice), k.Class(stranger), "%s: tenants never share", k)
			require.NotEqual(t, k.Class(alice), k.Class(robot), "%s: a robot is its own class", k)
			require.NotEqual(t, k.Class(alice), k.Class(service), "%s", k)
		}
		for _, k := range []Kind{KindMachine, KindMachineEvent} {
			require.NotEqual(t, k.Class(alice), k.Class(bob), "%s: per owner", k)
		}
		require.Empty(t, KindJob.Class(nil))
	})

	t.Run("RoutingRules", func(t *testing.T) {
		t.Parallel()
		mine := Change{Kind: KindMachine, Tenant: tenant, ID: uuid.NewString(), Owner: &alice.UserID}
		require.True(t, KindMachine.CanSee(alice, mine))
		require.False(t, KindMachine.CanSee(bob, mine))
		require.False(t, KindMachine.CanSee(robot, mine))
		require.True(t, KindMachine.CanSee(service, mine))
		job := Change{Kind: KindJob, Tenant: tenant, ID: uuid.NewString()}
		require.True(t, KindJob.CanSee(alice, job))
		require.False(t, KindJob.CanSee(robot, job), "a robot sees only the jobs it holds")
		require.False(t, KindJob.CanSee(stranger, job))
		self := Change{Kind: KindRobot, Tenant: tenant, ID: robotID.String()}
		require.True(t, KindRobot.CanSee(robot, self))
		require.False(t, KindRobot.CanSee(robot, Change{Kind: KindRobot, Tenant: tenant, ID: uuid.NewString()}))
	})
}
