package db_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lib/pq"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/fault"
)

// Deleting a schedule detaches its jobs while its robot heartbeats and
// completes a batch of them, without a deadlock: every path that locks
// several jobs locks them in id order. (The foreign key's ON DELETE SET
// NULL locked them in the tick index's order, and deleteSchedule and a
// heartbeat deadlocked on the first try.)
func TestDeletingAScheduleWhileItsRobotWorks(t *testing.T) {
	t.Parallel()
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	fx := newStoreFixture(t, func() time.Time { return base })
	d, ctx, svc := fx.d, fx.ctx, fx.svc
	jobs, robots, schedules := fx.jobs, fx.robots, fx.schedules
	slots, half := 100, min(50, db.MaxClaimBatch)
	r, robot := fx.robot(t, slots)
	wf := fx.workflow(t)

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

// Deleting a robot and a schedule that share jobs, at once, without a
// deadlock, whichever comes first. The robot's live job L (held, or aimed
// at it) has the larger id, its finished job F the smaller; a transaction
// holds the job the first deletion would lock first (L for deleteRobot, F
// for deleteSchedule) while the first, then the second deletion come to
// wait; then it lets go. deleteRobot used to lock L (its release) before
// F (the robot's deletion), where deleteSchedule locks F, then L; and
// after its second change of a job aimed at the robot it took the
// schedule's KEY SHARE, which deleteSchedule holds from its start. Every
// one of the four cases deadlocked.
func TestDeletingARobotAndAScheduleOfItsJobsTogether(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ aimed, robotFirst bool }{{false, true}, {true, true}, {false, false}, {true, false}} {
		aimed := tc.aimed
		t.Run(fmt.Sprintf("aimed=%v,robotFirst=%v", tc.aimed, tc.robotFirst), func(t *testing.T) {
			t.Parallel()
			fx := newStoreFixture(t, time.Now)
			d, ctx, svc := fx.d, fx.ctx, fx.svc
			jobs, robots, schedules := fx.jobs, fx.robots, fx.schedules
			slots := 2
			r, robot := fx.robot(t, slots)
			wf := fx.workflow(t)
			sch, err := schedules.Create(svc, d.DB, db.CreateScheduleInput{Name: "s", WorkflowID: wf.ID, CronExpression: "@yearly"})
			require.NoError(t, err)
			tick := time.Now().Add(-time.Hour).Truncate(time.Second)
			for i := range 2 {
				in := db.EnqueueJobInput{WorkflowID: wf.ID, ScheduleID: &sch.ID, ScheduledFor: new(tick.Add(time.Duration(i) * time.Second))}
				if aimed {
					in.RobotID = &r.ID
				}
				_, err := jobs.Enqueue(svc, d.DB, in)
				require.NoError(t, err)
			}
			held, err := jobs.ClaimMany(robot, d.DB, 2)
			require.NoError(t, err)
			require.Len(t, held, 2)
			slices.SortFunc(held, func(a, b *db.JobLease) int { return slices.Compare(a.Job.ID[:], b.Job.ID[:]) })
			f, l := held[0], held[1]
			_, err = jobs.Complete(robot, d.DB, f.Job.ID, f.LeaseToken, nil, db.JobCallOptions{StartIfClaimed: true})
			require.NoError(t, err)
			_, err = jobs.Start(robot, d.DB, l.Job.ID, l.LeaseToken)
			require.NoError(t, err)

			waiting := func(n int, msg string) { t.Helper(); waitForLockWaiters(t, d, n, msg) }
			hold, err := d.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer func() { _ = hold.Rollback() }()
			robotDeleted, scheduleDeleted := make(chan error, 1), make(chan error, 1)
			deleteRobot := func() { _, err := robots.Delete(svc, d.DB, r.ID); robotDeleted <- err }
			deleteSchedule := func() { _, err := schedules.Delete(svc, d.DB, sch.ID); scheduleDeleted <- err }
			locked, first, second := l.Job.ID, deleteRobot, deleteSchedule
			if !tc.robotFirst {
				locked, first, second = f.Job.ID, deleteSchedule, deleteRobot
			}
			_, err = hold.ExecContext(ctx, "SELECT 1 FROM jobs WHERE id = ? FOR UPDATE", locked)
			require.NoError(t, err)
			go first()
			waiting(1, "the first deletion waits for the held job")
			go second()
			waiting(2, "the second deletion waits too")
			require.NoError(t, hold.Commit())
			for name, done := range map[string]chan error{"deleteRobot": robotDeleted, "deleteSchedule": scheduleDeleted} {
				select {
				case err := <-done:
					require.NoError(t, err, name)
				case <-time.After(30 * time.Second):
					require.FailNow(t, name+" did not end")
				}
			}

			var rows []struct {
				ID         uuid.UUID
				Status     string
				RobotID    *uuid.UUID
				ScheduleID *uuid.UUID
				TargetLost bool
			}
			require.NoError(t, d.NewRaw("SELECT id, status, robot_id, schedule_id, target_lost FROM jobs ORDER BY id").Scan(ctx, &rows))
			require.Len(t, rows, 2)
			want := map[uuid.UUID]string{f.Job.ID: "COMPLETED", l.Job.ID: "QUEUED"}
			if aimed {
				want[l.Job.ID] = "CANCELLED"
			}
			for _, j := range rows {
				require.Equal(t, want[j.ID], j.Status)
				require.Nil(t, j.RobotID)
				require.Nil(t, j.ScheduleID)
				require.Equal(t, aimed, j.TargetLost)
			}
		})
	}
}

// A schedule that fires, is triggered or is changed while its target robot
// is deleted ends without a deadlock: the schedule's row is locked, then
// the robot's (KEY SHARE, to check and enqueue for it), while the deletion
// locks the robot's row and then the schedules of its jobs (KEY SHARE).
// Under FOR UPDATE on the schedule the two waited for each other.
func TestASchedulesRobotDeletedWhileItFires(t *testing.T) {
	t.Parallel()
	fx := newStoreFixture(t, time.Now)
	d, ctx, svc := fx.d, fx.ctx, fx.svc
	robots, schedules := fx.robots, fx.schedules
	wf := fx.workflow(t)
	// A client's mistake or a lost race, never a deadlock or another error.
	lost := func(err error) bool {
		var fe *fault.Error
		return err == nil || errors.As(err, &fe) && fe.Code == fault.Conflict && fe.Extra["reason"] == db.ReasonTargetRobotDeleted
	}
	for i := range 40 {
		r, err := robots.Create(svc, d.DB, db.CreateRobotInput{Name: fmt.Sprintf("r%d", i)})
		require.NoError(t, err)
		sch, err := schedules.Create(svc, d.DB, db.CreateScheduleInput{Name: fmt.Sprintf("s%d", i), WorkflowID: wf.ID, CronExpression: "* * * * *", RobotID: &r.ID})
		require.NoError(t, err)
		_, err = schedules.Trigger(svc, d.DB, sch.ID) // a job of the schedule aimed at the robot
		require.NoError(t, err)
		_, err = d.ExecContext(ctx, "UPDATE schedules SET next_tick_at = now() - interval '1 second' WHERE id = ?", sch.ID)
		require.NoError(t, err)

		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for k, call := range []func() error{
			func() error { _, err := robots.Delete(svc, d.DB, r.ID); return err },
			func() error { _, err := schedules.Trigger(svc, d.DB, sch.ID); return err },
			func() error { _, err := schedules.Fire(ctx, d.DB, time.Now()); return err },
			func() error {
				_, err := schedules.Update(svc, d.DB, sch.ID, db.UpdateScheduleInput{Priority: new(i)})
				return err
			},
		} {
			wg.Go(func() { <-start; errs[k] = call() })
		}
		close(start)
		wg.Wait()
		require.NoError(t, errs[0], "deleteRobot, round %d", i)
		for k, name := range []string{"", "trigger", "fire", "update"} {
			if k > 0 {
				require.True(t, lost(errs[k]), "%s, round %d: %v", name, i, errs[k])
			}
		}
	}
}

// Deleting a robot reads only its own jobs and the jobs aimed at it, by
// index: every statement it sends, and the foreign key's ON DELETE SET
// NULL on jobs.target_robot_id, which PostgreSQL runs for it. Without an
// index on target_robot_id, each read the whole jobs table while the
// robot's row was locked.
func TestDeletingARobotReadsOnlyItsJobs(t *testing.T) {
	t.Parallel()
	fx := newStoreFixture(t, time.Now)
	d, ctx, svc := fx.d, fx.ctx, fx.svc
	jobs, robots := fx.jobs, fx.robots
	wf := fx.workflow(t)
	r, err := robots.Create(svc, d.DB, db.CreateRobotInput{Name: "r"})
	require.NoError(t, err)
	for range 2 {
		_, err := jobs.Enqueue(svc, d.DB, db.EnqueueJobInput{WorkflowID: wf.ID, RobotID: &r.ID})
		require.NoError(t, err)
	}
	// Everyone else's jobs, finished, as most of a jobs table is.
	_, err = d.ExecContext(ctx, `INSERT INTO jobs (tenant_id, workflow_id, workflow_version, status, finished_at, created_by)
		SELECT tenant_id, id, 1, 'COMPLETED', now(), 'test' FROM workflows, generate_series(1, 5000)`)
	require.NoError(t, err)
	_, err = d.ExecContext(ctx, "ANALYZE jobs")
	require.NoError(t, err)

	rec := &stmtLog{}
	d.DB.AddQueryHook(rec)
	tx, err := d.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	_, err = robots.Delete(svc, tx, r.ID)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback())
	rec.mu.Lock()
	texts := append(slices.Clone(rec.texts),
		fmt.Sprintf(`UPDATE ONLY jobs SET target_robot_id = NULL WHERE '%s' = target_robot_id`, r.ID))
	rec.mu.Unlock()

	plans, err := d.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = plans.Rollback() }()
	_, err = plans.ExecContext(ctx, "SET LOCAL enable_seqscan = off")
	require.NoError(t, err)
	read := 0
	for _, text := range texts {
		if !strings.Contains(text, "jobs") || strings.HasPrefix(text, "INSERT") {
			continue
		}
		var plan string
		require.NoError(t, plans.NewRaw("EXPLAIN (FORMAT JSON) "+text).Scan(ctx, &plan))
		for _, s := range scansOf(plan, "jobs") {
			require.NotEqual(t, "Seq Scan", s.NodeType, "%s\n%s", text, plan)
			read++
		}
	}
	require.NotZero(t, read, "the deletion's statements read jobs: %q", texts)
}

// Assigning a robot to a workflow, or overriding a node with it, while the
// robot is deleted ends without a deadlock: the change locks the
// workflow's row and then the robot's (KEY SHARE), and the deletion,
// holding the robot's row, changes a job of the workflow twice (released,
// then the foreign key's SET NULL), so the job's workflow_id is checked
// again (KEY SHARE on the workflow). Under FOR UPDATE on the workflow
// they waited for each other.
func TestAssigningARobotWhileItIsDeleted(t *testing.T) {
	t.Parallel()
	for _, change := range []string{"assign", "override"} {
		t.Run(change, func(t *testing.T) {
			t.Parallel()
			fx := newStoreFixture(t, time.Now)
			d, ctx, svc := fx.d, fx.ctx, fx.svc
			workflows, jobs, robots := fx.workflows, fx.jobs, fx.robots
			wf, err := workflows.Create(svc, d.DB, db.CreateWorkflowInput{Name: "w", Definition: map[string]any{"nodes": []any{map[string]any{"id": "n1"}}}})
			require.NoError(t, err)
			r, err := robots.Create(svc, d.DB, db.CreateRobotInput{Name: "r"})
			require.NoError(t, err)
			_, err = jobs.Enqueue(svc, d.DB, db.EnqueueJobInput{WorkflowID: wf.ID, RobotID: &r.ID})
			require.NoError(t, err)

			waiting := func(n int, msg string) { t.Helper(); waitForLockWaiters(t, d, n, msg) }
			// The deletion locks the robot's row, then waits here.
			hold, err := d.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer func() { _ = hold.Rollback() }()
			_, err = hold.ExecContext(ctx, "LOCK TABLE schedules")
			require.NoError(t, err)
			deleted, changed := make(chan error, 1), make(chan error, 1)
			go func() { _, err := robots.Delete(svc, d.DB, r.ID); deleted <- err }()
			waiting(1, "the deletion holds the robot and waits")
			go func() {
				var err error
				if change == "assign" {
					_, err = workflows.Assign(svc, d.DB, wf.ID, r.ID, false, 0)
				} else {
					_, err = workflows.SetOverride(svc, d.DB, wf.ID, "n1", &r.ID, nil)
				}
				changed <- err
			}()
			waiting(2, "the change holds the workflow and waits for the robot")
			require.NoError(t, hold.Commit())

			for name, done := range map[string]chan error{"deleteRobot": deleted, change: changed} {
				select {
				case err := <-done:
					if name == change {
						require.Equal(t, fault.NotFound, fault.CodeOf(err), "%v", err)
						continue
					}
					require.NoError(t, err, name)
				case <-time.After(2 * time.Minute):
					require.FailNow(t, name+" did not end")
				}
			}
		})
	}
}

// waitForLockWaiters waits until n sessions of d's database wait for a lock.
func waitForLockWaiters(t *testing.T, d *dbtest.Database, n int, msg string) {
	t.Helper()
	require.Eventually(t, func() bool {
		var got int
		err := d.QueryRowContext(t.Context(),
			`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&got)
		return err == nil && got == n
	}, 2*time.Minute, 10*time.Millisecond, msg)
}

// Deleting a schedule or a robot detaches its finished jobs without a
// notification each: a schedule with 20,000 jobs of history notified
// 20,000 times, and every dashboard of the tenant fell behind and was
// ended. Its live jobs are detached (or released) with their events.
func TestDeletingDetachesHistoryQuietly(t *testing.T) {
	t.Parallel()
	fx := newStoreFixture(t, time.Now)
	d, ctx, tenant, svc := fx.d, fx.ctx, fx.tenant, fx.svc
	jobs, robots, schedules := fx.jobs, fx.robots, fx.schedules
	wf := fx.workflow(t)
	r, err := robots.Create(svc, d.DB, db.CreateRobotInput{Name: "r"})
	require.NoError(t, err)
	sch, err := schedules.Create(svc, d.DB, db.CreateScheduleInput{Name: "s", WorkflowID: wf.ID, CronExpression: "@yearly"})
	require.NoError(t, err)
	// History: 300 finished jobs of the schedule, run by the robot, and
	// 100 more aimed at it.
	_, err = d.ExecContext(ctx, `INSERT INTO jobs (tenant_id, workflow_id, workflow_version, status, finished_at, created_by, schedule_id, scheduled_for, robot_id)
		SELECT ?, ?, 1, 'COMPLETED', now(), 'test', ?, now() - make_interval(mins => i), ? FROM generate_series(1, 300) i`, tenant, wf.ID, sch.ID, r.ID)
	require.NoError(t, err)
	_, err = d.ExecContext(ctx, `INSERT INTO jobs (tenant_id, workflow_id, workflow_version, status, finished_at, created_by, robot_id, target_robot_id)
		SELECT ?, ?, 1, 'FAILED', now(), 'test', ?, ? FROM generate_series(1, 100) i`, tenant, wf.ID, r.ID, r.ID)
	require.NoError(t, err)
	aimed, err := jobs.Enqueue(svc, d.DB, db.EnqueueJobInput{WorkflowID: wf.ID, RobotID: &r.ID}) // queued, aimed
	require.NoError(t, err)
	live, err := schedules.Trigger(svc, d.DB, sch.ID) // queued
	require.NoError(t, err)

	l := pq.NewListener(d.DSN, time.Second, time.Minute, nil)
	t.Cleanup(func() { _ = l.Close() })
	require.NoError(t, l.Listen("fleetgraph_change"))
	// heard returns the job notifications that come before the marker's.
	heard := func() (ids []string) {
		t.Helper()
		marker, err := jobs.Enqueue(svc, d.DB, db.EnqueueJobInput{WorkflowID: wf.ID})
		require.NoError(t, err)
		deadline := time.After(2 * time.Minute)
		for {
			select {
			case n := <-l.Notify:
				if n == nil || !strings.Contains(n.Extra, `"k" : "job"`) {
					continue
				}
				if strings.Contains(n.Extra, marker.ID.String()) {
					return ids
				}
				var c struct{ ID string }
				require.NoError(t, json.Unmarshal([]byte(n.Extra), &c))
				ids = append(ids, c.ID)
			case <-deadline:
				require.FailNow(t, "no notification of the marker")
			}
		}
	}
	heard() // the listener is listening

	_, err = schedules.Delete(svc, d.DB, sch.ID)
	require.NoError(t, err)
	require.Equal(t, []string{live.ID.String()}, heard(), "only the live job's detachment is heard")
	_, err = robots.Delete(svc, d.DB, r.ID)
	require.NoError(t, err)
	require.Equal(t, []string{aimed.ID.String()}, heard(), "only the live job aimed at it is heard (cancelled); its history quietly")
	var named, lost int
	require.NoError(t, d.NewRaw(`SELECT count(*) FROM jobs WHERE schedule_id IS NOT NULL OR robot_id IS NOT NULL OR target_robot_id IS NOT NULL`).Scan(ctx, &named))
	require.Zero(t, named, "detached all the same")
	require.NoError(t, d.NewRaw(`SELECT count(*) FROM jobs WHERE target_lost`).Scan(ctx, &lost))
	require.Equal(t, 101, lost)
}

// storeFixture is a test database and one tenant's stores, with the
// tenant's service role (svc) to call them as.
type storeFixture struct {
	d         *dbtest.Database
	ctx, svc  context.Context
	tenant    uuid.UUID
	workflows *db.Workflows
	jobs      *db.Jobs
	robots    *db.Robots
	schedules *db.Schedules
}

// newStoreFixture makes a database and the stores of a new tenant, with
// the default queue; the schedules' clock is now.
func newStoreFixture(t *testing.T, now func() time.Time) *storeFixture {
	t.Helper()
	f := &storeFixture{d: dbtest.New(t), ctx: t.Context(), tenant: uuid.New(), workflows: db.NewWorkflows(), robots: db.NewRobots(db.DefaultQueueConfig)}
	f.svc = auth.WithPrincipal(f.ctx, &auth.Principal{TenantID: f.tenant, Role: auth.RoleService})
	f.jobs = db.NewJobs(db.DefaultQueueConfig, f.workflows)
	f.schedules = db.NewSchedules(f.jobs, f.workflows, now)
	return f
}

// robot creates the tenant's robot "r" with slots (0: the default) and
// returns it with a context acting as it.
func (f *storeFixture) robot(t *testing.T, slots int) (*db.Robot, context.Context) {
	t.Helper()
	in := db.CreateRobotInput{Name: "r"}
	if slots > 0 {
		in.MaxConcurrentJobs = &slots
	}
	r, err := f.robots.Create(f.svc, f.d.DB, in)
	require.NoError(t, err)
	return r, auth.WithPrincipal(f.ctx, &auth.Principal{TenantID: f.tenant, RobotID: r.ID, Role: auth.RoleRobot})
}

// workflow creates the tenant's workflow "w", of no nodes.
func (f *storeFixture) workflow(t *testing.T) *db.Workflow {
	t.Helper()
	wf, err := f.workflows.Create(f.svc, f.d.DB, db.CreateWorkflowInput{Name: "w", Definition: map[string]any{"nodes": []any{}}})
	require.NoError(t, err)
	return wf
}
