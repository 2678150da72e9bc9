package jobtests

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// A robot's deletion races the calls that name it. Each test holds a row
// with a transaction of its own, so that the calls queue in a known order
// behind it, however busy the machine is.

// rdWaiting waits until at least n statements of the test's database wait
// for a lock. Any statement counts ("%"): in these tests the server's
// background work cannot wait on the rows they hold (the offline sweep
// and the lease rescue take their rows FOR UPDATE SKIP LOCKED, and no
// table is locked). A test that locks a table a background task reads
// (TestSendingATestWebhookWhileTheEndpointIsDeleted) counts its own
// statements instead.
func rdWaiting(t *testing.T, s *apitest.Server, n int) {
	t.Helper()
	apitest.Eventually(t, 30*time.Second, "statements wait for locks", func() bool {
		return s.LockWaiters(t, "%") >= n
	})
}

// rdAsync sends a request on a goroutine of its own.
func rdAsync(tn *apitest.Tenant, q string, vars map[string]any) <-chan *apitest.Result {
	ch := make(chan *apitest.Result, 1)
	go func() {
		out, err := tn.Client.Do(context.Background(), tn.User.Token, q, vars)
		if err != nil {
			out = &apitest.Result{Errors: []apitest.Error{{Message: err.Error()}}}
		}
		ch <- out
	}()
	return ch
}

// A job aimed at a robot and retried while the robot is deleted is
// cancelled with it, never left QUEUED without a target: the retry
// committed between the deletion's cancelling of the live jobs aimed at
// the robot and its marking of the finished ones, and any robot could
// then lease the job.
func TestRetryRacingARobotsDeletion(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	tn := apitest.NewTenant(t, s)
	target := tn.CreateRobot(t, "target", apitest.RobotOpts{})
	other := tn.CreateRobot(t, "other", apitest.RobotOpts{})
	job := tn.Enqueue(t, map[string]any{"robotId": target.ID})
	tn.Do(t, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": job.ID}, nil)

	// The job's row held, the retry queues on it, and the deletion behind.
	tx, err := s.DB.BeginTx(t.Context(), nil)
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = tx.ExecContext(t.Context(), "SELECT 1 FROM jobs WHERE id = ? FOR SHARE", job.ID)
	require.NoError(t, err)
	retry := rdAsync(tn, `mutation($id: ID!) { retryJob(id: $id) { status } }`, map[string]any{"id": job.ID})
	rdWaiting(t, s, 1)
	del := rdAsync(tn, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": target.ID})
	rdWaiting(t, s, 2)
	require.NoError(t, tx.Commit())
	r, d := <-retry, <-del
	require.Empty(t, r.Errors, "%+v", r.Errors)
	require.Empty(t, d.Errors, "%+v", d.Errors)

	require.Equal(t, "CANCELLED", tn.Job(t, job.ID).Status, "retried, then cancelled with its target")
	require.Nil(t, other.Claim(t, 0), "another robot leased the job aimed at the deleted robot")
}

// A job enqueued for a robot being deleted is NOT_FOUND on robotId once the
// deletion commits: the check of the robot passed while the deletion was
// under way, and the insert's foreign key then failed as INTERNAL.
func TestEnqueueRacingARobotsDeletion(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "doomed", apitest.RobotOpts{})

	// A deletion of the robot, held open after its DELETE.
	tx, err := s.DB.BeginTx(t.Context(), nil)
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = tx.ExecContext(t.Context(), "DELETE FROM robots WHERE id = ?", r.ID)
	require.NoError(t, err)
	enq := rdAsync(tn, `mutation($in: EnqueueJobInput!) { enqueueJob(input: $in) { id } }`,
		map[string]any{"in": map[string]any{"workflowId": tn.Workflow, "robotId": r.ID}})
	rdWaiting(t, s, 1)
	require.NoError(t, tx.Commit())
	out := <-enq
	require.Len(t, out.Errors, 1, "%+v", out.Errors)
	require.Equal(t, "NOT_FOUND", out.Errors[0].Code(), "%+v", out.Errors)
	require.Equal(t, "input.robotId", out.Errors[0].Extensions["field"], "%+v", out.Errors)
}

// A key created for a robot whose deletion is in flight is refused as the
// robot not found (it once failed the insert on its foreign key: INTERNAL),
// and nothing of it is written.
func TestCreatingAKeyWhileTheRobotIsDeleted(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "doomed", apitest.RobotOpts{})
	tx, err := s.DB.BeginTx(t.Context(), nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	_, err = tx.ExecContext(t.Context(), "DELETE FROM robots WHERE id = ?", r.ID)
	require.NoError(t, err)
	created := rdAsync(tn, `mutation($r: ID!) { createApiKey(robotId: $r, name: "late") { key } }`, map[string]any{"r": r.ID})
	rdWaiting(t, s, 1)
	require.NoError(t, tx.Commit())
	out := <-created
	require.NotEmpty(t, out.Errors)
	require.Equal(t, "NOT_FOUND", out.Errors[0].Code(), "%+v", out.Errors)
	require.Equal(t, "robotId", out.Errors[0].Extensions["field"])
	var keys int
	require.NoError(t, s.DB.NewRaw(`SELECT count(*) FROM api_keys WHERE name = 'late'`).Scan(t.Context(), &keys))
	require.Zero(t, keys)
}
