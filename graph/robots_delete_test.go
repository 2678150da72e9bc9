package graph_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// Deleting a robot cancels the jobs aimed at it that are still live, as
// they are when it gets to them: a job that finishes while the deletion
// waits for its row is left finished, not cancelled over its result.
func TestDeletingARobotLeavesAJobFinishedMeanwhile(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.New())
	wf := s.CreateWorkflow(t, u.Token, "main")
	robot, key := s.RobotWithKey(t, u.Token, "doomed")
	var job struct{ EnqueueJob struct{ ID string } }
	s.Do(t, u.Token, `mutation($w: ID!, $r: ID!) { enqueueJob(input: {workflowId: $w, robotId: $r}) { id } }`,
		map[string]any{"w": wf, "r": robot}).OK(t, &job)
	var claim struct{ ClaimJob struct{ LeaseToken string } }
	s.Do(t, key, `mutation { claimJob { leaseToken } }`, nil).OK(t, &claim)
	s.Do(t, key, `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { id } }`,
		map[string]any{"j": job.EnqueueJob.ID, "l": claim.ClaimJob.LeaseToken}).OK(t, nil)

	// The job finishes in a transaction that has not committed yet.
	tx, err := s.DB.BeginTx(t.Context(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback() })
	_, err = tx.ExecContext(t.Context(), `UPDATE jobs SET status = 'COMPLETED', finished_at = now(), lease_expires_at = NULL WHERE id = ?`, job.EnqueueJob.ID)
	require.NoError(t, err)

	deleted := make(chan *apitest.Response, 1)
	go func() {
		deleted <- s.Do(t, u.Token, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": robot})
	}()
	require.Eventually(t, func() bool {
		var n int
		err := s.DB.QueryRowContext(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return err == nil && n > 0
	}, 30*time.Second, 5*time.Millisecond, "the deletion never waited for the job's row")
	require.NoError(t, tx.Commit())
	select {
	case res := <-deleted:
		res.OK(t, nil)
	case <-time.After(30 * time.Second):
		require.FailNow(t, "the deletion did not finish")
	}

	var status string
	require.NoError(t, s.DB.QueryRowContext(t.Context(), `SELECT status FROM jobs WHERE id = ?`, job.EnqueueJob.ID).Scan(&status))
	require.Equal(t, "COMPLETED", status, "the deletion cancelled a job that had finished")
}
