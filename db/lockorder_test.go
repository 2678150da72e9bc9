package db_test

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/db"
	"fleetgraph/fault"
)

// Deleting a schedule locks its jobs in one id order, finished and live
// alike, as a batch completion locks the robot's (whatever their status:
// a job cancelled meanwhile is in the batch too). Detaching the finished
// ones first, then the live ones, deadlocked with such a batch.
func TestDeletingAScheduleWhileABatchCompletes(t *testing.T) {
	t.Parallel()
	fx := newStoreFixture(t, time.Now)
	d, ctx, svc := fx.d, fx.ctx, fx.svc
	jobs, schedules := fx.jobs, fx.schedules
	_, robot := fx.robot(t, 4)
	wf := fx.workflow(t)
	sch, err := schedules.Create(svc, d.DB, db.CreateScheduleInput{Name: "s", WorkflowID: wf.ID, CronExpression: "@yearly"})
	require.NoError(t, err)
	tick := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i := range 4 {
		_, err := jobs.Enqueue(svc, d.DB, db.EnqueueJobInput{WorkflowID: wf.ID, ScheduleID: &sch.ID, ScheduledFor: new(tick.Add(time.Duration(i) * time.Second))})
		require.NoError(t, err)
	}
	held, err := jobs.ClaimMany(robot, d.DB, 4)
	require.NoError(t, err)
	require.Len(t, held, 4)
	slices.SortFunc(held, func(a, b *db.JobLease) int { return slices.Compare(a.Job.ID[:], b.Job.ID[:]) })
	l0, l, f, l2 := held[0], held[1], held[2], held[3]
	for _, h := range []*db.JobLease{l0, l, l2} {
		_, err = jobs.Start(robot, d.DB, h.Job.ID, h.LeaseToken)
		require.NoError(t, err)
	}
	// F is finished: a user cancelled it while the robot ran it.
	_, err = jobs.Cancel(svc, d.DB, f.Job.ID)
	require.NoError(t, err)

	hold, err := d.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = hold.Rollback() }()
	_, err = hold.ExecContext(ctx, "SELECT 1 FROM jobs WHERE id = ? FOR UPDATE", l0.Job.ID)
	require.NoError(t, err)

	deleted, completed := make(chan error, 1), make(chan error, 1)
	go func() { _, err := schedules.Delete(svc, d.DB, sch.ID); deleted <- err }()
	waitForLockWaiters(t, d, 1, "deleteSchedule locked F (quietly) and waits for L0")
	go func() {
		_, err := jobs.CompleteMany(robot, d.DB, []db.JobCompletionInput{{JobID: l.Job.ID, LeaseToken: l.LeaseToken}, {JobID: f.Job.ID, LeaseToken: f.LeaseToken}, {JobID: l2.Job.ID, LeaseToken: l2.LeaseToken}}, 0)
		completed <- err
	}()
	var early error
	ended := false
	require.Eventually(t, func() bool {
		select {
		case early = <-completed:
			ended = true
			return true
		default:
		}
		var n int
		err := d.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return err == nil && n == 2
	}, 2*time.Minute, 10*time.Millisecond, "CompleteMany ends or locks L and waits for F")
	if ended {
		completed <- early
	}
	require.NoError(t, hold.Commit())
	for name, ch := range map[string]chan error{"deleteSchedule": deleted, "CompleteMany": completed} {
		select {
		case err := <-ch:
			if err != nil {
				require.NotContains(t, err.Error(), "40P01", name)
			}
		case <-time.After(time.Minute):
			require.FailNow(t, name+" did not end")
		}
	}
}

// A heartbeat extends a running job's lease up to its progress timeout,
// though the cap moves the lease by less than a quarter of a lease: the
// lease is written when it moves that much, or to the cap, else a job
// heartbeated every 10 s lost its lease 20 s before its progress timeout,
// as if its robot had stopped reporting.
func TestHeartbeatsReachTheProgressCap(t *testing.T) {
	t.Parallel()
	fx := newStoreFixture(t, time.Now)
	d, ctx, svc := fx.d, fx.ctx, fx.svc
	jobs, robots := fx.jobs, fx.robots
	_, robot := fx.robot(t, 0)
	wf := fx.workflow(t)
	_, err := jobs.Enqueue(svc, d.DB, db.EnqueueJobInput{WorkflowID: wf.ID})
	require.NoError(t, err)
	held, err := jobs.ClaimMany(robot, d.DB, 1)
	require.NoError(t, err)
	require.Len(t, held, 1)
	_, err = jobs.Start(robot, d.DB, held[0].Job.ID, held[0].LeaseToken)
	require.NoError(t, err)
	// The state at 570 s: started (last progress) 570 s ago, the lease
	// written by the heartbeat at 520 s (until 580 s).
	_, err = d.ExecContext(ctx, "UPDATE jobs SET progress_at = now() - interval '570 s', lease_expires_at = now() + interval '10 s' WHERE id = ?", held[0].Job.ID)
	require.NoError(t, err)
	_, err = robots.Heartbeat(robot, d.DB, db.HeartbeatInput{Status: db.RobotBusy})
	require.NoError(t, err)
	var left float64
	require.NoError(t, d.NewRaw("SELECT extract(epoch FROM (progress_at + interval '600 s') - lease_expires_at) FROM jobs WHERE id = ?", held[0].Job.ID).Scan(ctx, &left))
	require.Zero(t, left, "a heartbeat extends a running job's lease up to its progress timeout")
}

// A robot's status change is charged to its limit once written: an
// updateRobot refused for a client's mistake (a name taken) costs none,
// else five such mistakes refused the next, valid change.
func TestAFailedUpdateSpendsNoStatusChange(t *testing.T) {
	t.Parallel()
	fx := newStoreFixture(t, time.Now)
	d, svc := fx.d, fx.svc
	robots := fx.robots
	a, err := robots.Create(svc, d.DB, db.CreateRobotInput{Name: "a"})
	require.NoError(t, err)
	_, err = robots.Create(svc, d.DB, db.CreateRobotInput{Name: "b"})
	require.NoError(t, err)
	online := db.RobotOnline
	for range 5 {
		_, err := robots.Update(svc, d.DB, a.ID, db.UpdateRobotInput{Name: new("b"), Status: &online})
		require.Equal(t, fault.Conflict, fault.CodeOf(err), "%v", err)
	}
	_, err = robots.Update(svc, d.DB, a.ID, db.UpdateRobotInput{Status: &online})
	require.NoError(t, err, "nothing changed status yet")
}
