package db_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// Deleting a schedule detaches its jobs while its robot heartbeats and
// completes a batch of them, without a deadlock: every path that locks
// several jobs locks them in id order. (The foreign key's ON DELETE SET
// NULL locked them in the tick index's order, and deleteSchedule and a
// heartbeat deadlocked on the first try.)
func TestDeletingAScheduleWhileItsRobotWorks(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant := uuid.New()
	svc := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	workflows := db.NewWorkflows()
	jobs := db.NewJobs(db.DefaultQueueConfig, workflows)
	robots := db.NewRobots(db.DefaultQueueConfig)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	schedules := db.NewSchedules(jobs, workflows, func() time.Time { return base })
	slots, half := 100, min(50, db.MaxClaimBatch)
	r, err := robots.Create(svc, d.DB, db.CreateRobotInput{Name: "r", MaxConcurrentJobs: &slots})
	require.NoError(t, err)
	wf, err := workflows.Create(svc, d.DB, db.CreateWorkflowInput{Name: "w", Definition: map[string]any{"nodes": []any{}}})
	require.NoError(t, err)
	robot := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, RobotID: r.ID, Role: auth.RoleRobot})

	for round := range 4 {
		sch, err := schedules.Create(svc, d.DB, db.CreateScheduleInput{Name: fmt.Sprint("s", round), WorkflowID: wf.ID, CronExpression: "@every 1s"})
		require.NoError(t, err)
		_, err = schedules.Fire(ctx, d.DB, base.Add(time.Duration(slots+20)*time.Second))
		require.NoError(t, err)
		var held []*db.JobLease
		for len(held) < slots {
			more, err := jobs.ClaimMany(robot, d.DB, db.MaxClaimBatch)
			require.NoError(t, err)
			require.NotEmpty(t, more)
			held = append(held, more...)
		}
		// Half run (a heartbeat extends their leases); the other half are
		// completed in one batch, in the reverse of id order.
		slices.SortFunc(held, func(a, b *db.JobLease) int { return -slices.Compare(a.Job.ID[:], b.Job.ID[:]) })
		for _, l := range held[half:] {
			_, err := jobs.Start(robot, d.DB, l.Job.ID, l.LeaseToken)
			require.NoError(t, err)
		}
		batch := make([]db.JobCompletionInput, 0, half)
		for _, l := range held[:half] {
			batch = append(batch, db.JobCompletionInput{JobID: l.Job.ID, LeaseToken: l.LeaseToken})
		}

		var wg sync.WaitGroup
		stop, beat := make(chan struct{}), make(chan struct{}, 2)
		errs := make(chan error, 3)
		for range 2 {
			wg.Go(func() {
				for {
					if _, err := robots.Heartbeat(robot, d.DB, db.HeartbeatInput{Status: db.RobotBusy}); err != nil {
						errs <- fmt.Errorf("heartbeat: %w", err)
						return
					}
					select {
					case beat <- struct{}{}:
					default:
					}
					select {
					case <-stop:
						return
					default:
					}
				}
			})
		}
		<-beat
		wg.Go(func() {
			if _, err := jobs.CompleteMany(robot, d.DB, batch, 0, db.JobCallOptions{StartIfClaimed: true}); err != nil {
				errs <- fmt.Errorf("completing a batch: %w", err)
			}
		})
		_, err = schedules.Delete(svc, d.DB, sch.ID)
		close(stop)
		wg.Wait()
		close(errs)
		require.NoError(t, err, "round %d: deleteSchedule", round)
		for err := range errs {
			require.NoError(t, err, "round %d", round)
		}
		var attached int
		require.NoError(t, d.NewRaw("SELECT count(*) FROM jobs WHERE schedule_id = ?", sch.ID).Scan(ctx, &attached))
		require.Zero(t, attached, "the schedule's jobs stay, without their schedule")
		_, err = d.NewRaw("UPDATE jobs SET status = 'COMPLETED', finished_at = now(), lease_expires_at = NULL WHERE robot_id = ? AND status IN ('CLAIMED', 'RUNNING')", r.ID).Exec(ctx)
		require.NoError(t, err)
	}
}
