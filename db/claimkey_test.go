package db_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/fault"
)

// A robot's call made with an API key revoked since the request was
// checked (it waited, or passed on the key cache) leases nothing: a claim
// is refused, and a completion that asks for the next job completes its
// job (the work is not lost) and leases none.
func TestADeadKeyLeasesNothing(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant := uuid.New()
	svc := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	workflows := db.NewWorkflows()
	jobs := db.NewJobs(db.DefaultQueueConfig, workflows)
	keys := db.NewAPIKeys()
	two := 2
	r, err := db.NewRobots(db.DefaultQueueConfig).Create(svc, d.DB, db.CreateRobotInput{Name: "r", MaxConcurrentJobs: &two})
	require.NoError(t, err)
	k, err := keys.Create(svc, d.DB, r.ID, "k", nil)
	require.NoError(t, err)
	wf, err := workflows.Create(svc, d.DB, db.CreateWorkflowInput{Name: "w", Definition: map[string]any{"nodes": []any{}}})
	require.NoError(t, err)
	for range 4 {
		_, err := jobs.Enqueue(svc, d.DB, db.EnqueueJobInput{WorkflowID: wf.ID})
		require.NoError(t, err)
	}
	robot := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, RobotID: r.ID, APIKeyID: k.APIKey.ID, Role: auth.RoleRobot})
	held, err := jobs.ClaimMany(robot, d.DB, 2)
	require.NoError(t, err)
	require.Len(t, held, 2)
	first, second := held[0], held[1]
	_, err = keys.Revoke(svc, d.DB, k.APIKey.ID)
	require.NoError(t, err)

	_, err = jobs.ClaimMany(robot, d.DB, 1)
	require.Equal(t, fault.Unauthenticated, fault.CodeOf(err), "%v", err)

	done, err := jobs.Complete(robot, d.DB, first.Job.ID, first.LeaseToken, map[string]any{"ok": true},
		db.JobCallOptions{StartIfClaimed: true, ClaimNext: true})
	require.NoError(t, err)
	require.Equal(t, db.JobCompleted, done.Status)
	require.Nil(t, done.NextLease)

	batch, err := jobs.CompleteMany(robot, d.DB, []db.JobCompletionInput{{JobID: second.Job.ID, LeaseToken: second.LeaseToken}}, 2,
		db.JobCallOptions{StartIfClaimed: true})
	require.NoError(t, err)
	require.Len(t, batch.Jobs, 1)
	require.Empty(t, batch.NextLeases)

	var queued int
	require.NoError(t, d.NewRaw(`SELECT count(*) FROM jobs WHERE status = 'QUEUED'`).Scan(ctx, &queued))
	require.Equal(t, 2, queued, "nothing more was leased")
}
