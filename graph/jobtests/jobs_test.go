package jobtests

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
	"fleetgraph/dispatch"
	"fleetgraph/maintenance"
)

// The job queue's rules, through the API: who may claim what and in which
// order, the state machine and its fenced transitions, lease rescue,
// heartbeats, waiting claims woken by NOTIFY, and the statement cost of the
// job list. Most tests share one server per top-level test and give each
// subtest a tenant of its own, so their queues never meet.

// jqRequireRefused asserts a CONFLICT with reason and currentStatus.
func jqRequireRefused(t testing.TB, resp *apitest.Response, reason, current string) {
	t.Helper()
	e := resp.Code(t, "CONFLICT")
	require.Equal(t, reason, e.Extensions["reason"], "response: %s", resp.Raw)
	require.Equal(t, current, e.Extensions["currentStatus"], "response: %s", resp.Raw)
}

// jqSameTime asserts two instants are equal, whatever their locations.
func jqSameTime(t testing.TB, want, got time.Time, what string) {
	t.Helper()
	require.True(t, want.Equal(got), "%s: want %s, got %s", what, want, got)
}

func jqTime(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339Nano) }

func TestJobEligibility(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("only robots of the job's tenant claim it", func(t *testing.T) {
		t.Parallel()
		a, b := apitest.NewTenant(t, s), apitest.NewTenant(t, s)
		job := a.Enqueue(t, nil)
		stranger := b.CreateRobot(t, "stranger", apitest.RobotOpts{})
		require.Nil(t, stranger.Claim(t, 0))
		own := a.CreateRobot(t, "own", apitest.RobotOpts{})
		l := own.Claim(t, 0)
		require.NotNil(t, l)
		require.Equal(t, job.ID, l.Job.ID)
	})

	t.Run("an assigned workflow's jobs go only to its assigned robots", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		assigned, other := tn.CreateRobot(t, "assigned", apitest.RobotOpts{}), tn.CreateRobot(t, "other", apitest.RobotOpts{})
		tn.Do(t, `mutation($w: ID!, $r: ID!) { assignWorkflow(workflowId: $w, robotId: $r) { robotId } }`, map[string]any{"w": tn.Workflow, "r": assigned.ID}, nil)
		job := tn.Enqueue(t, nil)
		require.Nil(t, other.Claim(t, 0), "an unassigned robot took an assigned workflow's job")
		l := assigned.Claim(t, 0)
		require.NotNil(t, l)
		require.Equal(t, job.ID, l.Job.ID)
	})

	t.Run("a job aimed at a robot goes only to that robot, assigned or not", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		assigned, target, other := tn.CreateRobot(t, "assigned", apitest.RobotOpts{}), tn.CreateRobot(t, "target", apitest.RobotOpts{}), tn.CreateRobot(t, "other", apitest.RobotOpts{})
		tn.Do(t, `mutation($w: ID!, $r: ID!) { assignWorkflow(workflowId: $w, robotId: $r) { robotId } }`, map[string]any{"w": tn.Workflow, "r": assigned.ID}, nil)
		open := tn.CreateWorkflow(t, "open") // no assignments
		onAssigned := tn.Enqueue(t, map[string]any{"robotId": target.ID})
		onOpen := tn.Enqueue(t, map[string]any{"workflowId": open, "robotId": target.ID})
		require.Equal(t, target.ID, *onAssigned.TargetRobotID)
		require.Nil(t, assigned.Claim(t, 0), "an assigned robot took a job aimed at another robot")
		require.Nil(t, other.Claim(t, 0), "a robot took a job aimed at another robot")
		got := map[string]bool{}
		for range 2 {
			l := target.Claim(t, 0)
			require.NotNil(t, l, "the target robot must claim its jobs, though it is not assigned")
			got[l.Job.ID] = true
			target.Complete(t, jqStarted(t, target, l), nil)
		}
		require.Equal(t, map[string]bool{onAssigned.ID: true, onOpen.ID: true}, got)
	})

	t.Run("every required capability must be held", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		job := tn.Enqueue(t, map[string]any{"requiredCapabilities": []string{"excel", "sap"}})
		require.Equal(t, []string{"excel", "sap"}, job.RequiredCapabilities)
		require.Nil(t, tn.CreateRobot(t, "none", apitest.RobotOpts{}).Claim(t, 0))
		require.Nil(t, tn.CreateRobot(t, "excel-only", apitest.RobotOpts{Capabilities: []string{"excel"}}).Claim(t, 0))
		l := tn.CreateRobot(t, "all", apitest.RobotOpts{Capabilities: []string{"sap", "excel", "ocr"}}).Claim(t, 0)
		require.NotNil(t, l)
		require.Equal(t, job.ID, l.Job.ID)
	})

	t.Run("a robot at its maxConcurrentJobs gets nothing until it finishes one", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "two-slots", apitest.RobotOpts{Slots: 2})
		for range 3 {
			tn.Enqueue(t, nil)
		}
		first, second := r.Claim(t, 0), r.Claim(t, 0)
		require.NotNil(t, first)
		require.NotNil(t, second)
		require.Nil(t, r.Claim(t, 0), "a robot with 2 slots claimed a third job")
		r.Complete(t, jqStarted(t, r, first), nil)
		third := r.Claim(t, 0)
		require.NotNil(t, third, "finishing a job frees its slot")
		require.Nil(t, r.Claim(t, 0))
		r.Fail(t, second, "gave up", false)
		require.Nil(t, r.Claim(t, 0), "the queue is empty")
	})

	t.Run("a MAINTENANCE robot gets nothing", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "serviced", apitest.RobotOpts{})
		// Heartbeat first: a robot that never did is marked OFFLINE by the
		// sweeper, which would overwrite MAINTENANCE.
		r.Heartbeat(t, "ONLINE")
		job := tn.Enqueue(t, nil)
		setStatus := func(status string) {
			var out struct{ UpdateRobot struct{ Status string } }
			tn.Do(t, `mutation($r: ID!, $s: RobotStatus) { updateRobot(id: $r, input: {status: $s}) { status } }`, map[string]any{"r": r.ID, "s": status}, &out)
			require.Equal(t, status, out.UpdateRobot.Status)
		}
		setStatus("MAINTENANCE")
		require.Nil(t, r.Claim(t, 0))
		require.Nil(t, r.Claim(t, 1), "a waiting claim of a MAINTENANCE robot must not take the queued job")
		require.Equal(t, "QUEUED", tn.Job(t, job.ID).Status)
		setStatus("ONLINE")
		l := r.Claim(t, 0)
		require.NotNil(t, l)
		require.Equal(t, job.ID, l.Job.ID)
	})

	t.Run("higher priority first, then older first", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		priorities := []int{0, 5, 0, 10, 5, -3, 10}
		ids := make([]string, len(priorities))
		for i, p := range priorities {
			ids[i] = tn.Enqueue(t, map[string]any{"priority": p}).ID
		}
		r := tn.CreateRobot(t, "worker", apitest.RobotOpts{Slots: 10})
		var got []string
		for range priorities {
			l := r.Claim(t, 0)
			require.NotNil(t, l)
			got = append(got, l.Job.ID)
		}
		require.Nil(t, r.Claim(t, 0))
		want := []string{ids[3], ids[6], ids[1], ids[4], ids[0], ids[2], ids[5]}
		require.Equal(t, want, got)
	})
}

// jqWakeWait is the wait of a claim the test wakes (with a job, a retry, a
// rescue...): the longest allowed, so that nothing the test must do first
// (requests, locks, notifications, on a busy machine) can outlast it. The
// claim returns as soon as it gets its job, so a passing test waits no
// longer for it.
const jqWakeWait = dispatch.MaxWaitSeconds

// jqWakeWithin is how long a test waits for such a claim's answer: past the
// end of its wait, so that a lost wake-up shows as the null the claim
// answers, under the test's own message.
const jqWakeWithin = (dispatch.MaxWaitSeconds + 30) * time.Second

// jqStarted starts a claimed job and returns its lease, for chaining.
func jqStarted(t testing.TB, r *apitest.Robot, l *apitest.Lease) *apitest.Lease {
	t.Helper()
	require.NotNil(t, l)
	r.Start(t, l)
	return l
}

func TestJobRunAtIsHonoured(t *testing.T) {
	t.Parallel()
	// Poll fallback on: nothing announces a run-after passing.
	s := apitest.New(t, apitest.Options{ClaimPoll: 200 * time.Millisecond})
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "patient", apitest.RobotOpts{})
	job := tn.Enqueue(t, map[string]any{"runAt": jqTime(time.Hour)})

	// What one request's authentication costs, and one claim attempt.
	before := s.Statements.Load()
	s.Do(t, r.Key, `{ me { role } }`, nil).OK(t, nil)
	auth := s.Statements.Load() - before
	before = s.Statements.Load()
	require.Nil(t, r.Claim(t, 0), "a job must not be claimable before its runAt")
	attempt := s.Statements.Load() - before - auth

	// Once the claim waits (it tried, counted its free slots, subscribed
	// and tried again), the run-after passes, announced by nobody.
	before = s.Statements.Load()
	claim := r.ClaimAsync(t, jqWakeWait)
	apitest.Eventually(t, apitest.Patience, "the claim to wait", func() bool { return s.Statements.Load()-before >= auth+2*attempt+1 })
	require.NoError(t, jqRunAfterNow(t, tn, job.ID))
	l := apitest.ReceiveClaim(t, claim, jqWakeWithin)
	require.NotNil(t, l, "the polling fallback must hand over the job once its runAt passed")
	require.Equal(t, job.ID, l.Job.ID)
	runAfter := tn.Job(t, job.ID).RunAfter
	require.False(t, l.Job.ClaimedAt.Before(runAfter), "claimed at %s, before its runAt %s", l.Job.ClaimedAt, runAfter)
}

func TestJobStateMachine(t *testing.T) {
	t.Parallel()
	const lease = time.Hour
	// Backoffs no busy machine outlasts: tests make them pass (jqRunAfterNow).
	const backoff, maxBackoff = time.Hour, 90 * time.Minute
	s := apitest.New(t, apitest.Options{Queue: db.QueueConfig{
		Lease: lease, RetryBackoff: backoff, MaxRetryBackoff: maxBackoff,
		OfflineAfter: time.Hour, HeartbeatSample: time.Minute,
	}})
	// claimed enqueues a job in a fresh tenant and claims it with a fresh robot.
	claimed := func(t *testing.T, in map[string]any) (*apitest.Tenant, *apitest.Robot, *apitest.Lease) {
		tn := apitest.NewTenant(t, s)
		tn.Enqueue(t, in)
		r := tn.CreateRobot(t, "worker", apitest.RobotOpts{Slots: 5})
		l := r.Claim(t, 0)
		require.NotNil(t, l)
		return tn, r, l
	}

	t.Run("QUEUED, CLAIMED, RUNNING, COMPLETED", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "worker", apitest.RobotOpts{})
		queued := tn.Enqueue(t, map[string]any{"input": map[string]any{"invoice": 7}})
		require.Equal(t, "QUEUED", queued.Status)
		require.Zero(t, queued.Attempt)
		require.Equal(t, 3, queued.MaxAttempts)
		require.Nil(t, queued.RobotID)
		require.Nil(t, queued.LeaseExpiresAt)
		require.Nil(t, queued.ClaimedAt)

		l := r.Claim(t, 0)
		require.NotNil(t, l)
		require.Equal(t, queued.ID, l.Job.ID)
		require.Equal(t, "CLAIMED", l.Job.Status)
		require.Equal(t, 1, l.Job.Attempt)
		require.Equal(t, r.ID, *l.Job.RobotID)
		require.NotEmpty(t, l.LeaseToken)
		require.Equal(t, map[string]any{"invoice": float64(7)}, l.Job.Input)
		jqSameTime(t, l.Job.ClaimedAt.Add(lease), l.LeaseExpiresAt, "a claim leases the job for Lease")
		jqSameTime(t, l.LeaseExpiresAt, *l.Job.LeaseExpiresAt, "the lease is the job's")

		r.Start(t, l)
		running := tn.Job(t, l.Job.ID)
		require.Equal(t, "RUNNING", running.Status)
		require.NotNil(t, running.StartedAt)
		require.Nil(t, running.FinishedAt)

		done := r.Complete(t, l, map[string]any{"pages": 3})
		require.Equal(t, "COMPLETED", done.Status)
		require.Equal(t, map[string]any{"pages": float64(3)}, done.Result)
		require.Equal(t, 100, done.Progress)
		require.NotNil(t, done.FinishedAt)
		require.Nil(t, done.LeaseExpiresAt)
		require.Equal(t, r.ID, *done.RobotID, "a finished job keeps the robot that ran it")
		require.Nil(t, r.Claim(t, 0))
	})

	t.Run("illegal transitions are refused and change nothing", func(t *testing.T) {
		t.Parallel()
		tn, r, l := claimed(t, nil)
		refused := func(op, current string) {
			t.Helper()
			before := tn.Snapshot(t, l.Job.ID)
			resp := r.Call(t, op, l.Job.ID, l.LeaseToken)
			jqRequireRefused(t, resp, db.ReasonIllegalTransition, current)
			require.Contains(t, resp.Errors[0].Message, current)
			require.Equal(t, before, tn.Snapshot(t, l.Job.ID), "a refused %s changed the job", op)
		}
		refused("completeJob", "CLAIMED")
		refused("reportJobProgress", "CLAIMED")
		r.Start(t, l)
		refused("startJob", "RUNNING")
		r.Complete(t, l, nil)
		refused("completeJob", "COMPLETED")
		refused("startJob", "COMPLETED")
		refused("reportJobProgress", "COMPLETED")
		refused("failJob", "COMPLETED")
		refused("appendJobLogs", "COMPLETED")
	})

	t.Run("a wrong or stale lease token is LEASE_LOST and changes nothing", func(t *testing.T) {
		t.Parallel()
		tn, r, l := claimed(t, nil)
		other := tn.CreateRobot(t, "other", apitest.RobotOpts{})
		for _, op := range apitest.FencedOps() {
			before := tn.Snapshot(t, l.Job.ID)
			jqRequireRefused(t, r.Call(t, op.Name, l.Job.ID, uuid.NewString()), db.ReasonLeaseLost, "CLAIMED")
			// Another robot learns nothing of the job, even with its token.
			other.Call(t, op.Name, l.Job.ID, l.LeaseToken).Code(t, "NOT_FOUND")
			require.Equal(t, before, tn.Snapshot(t, l.Job.ID), "a refused %s changed the job", op.Name)
		}
		// A token from an earlier claim of the same job is stale.
		r.Fail(t, l, "flaky", true)
		require.NoError(t, jqRunAfterNow(t, tn, l.Job.ID))
		again := r.Claim(t, 0)
		require.NotNil(t, again)
		require.Equal(t, l.Job.ID, again.Job.ID)
		before := tn.Snapshot(t, l.Job.ID)
		jqRequireRefused(t, r.Call(t, "startJob", l.Job.ID, l.LeaseToken), db.ReasonLeaseLost, "CLAIMED")
		require.Equal(t, before, tn.Snapshot(t, l.Job.ID))
		r.Start(t, again)
	})

	t.Run("an unknown job is NOT_FOUND", func(t *testing.T) {
		t.Parallel()
		_, r, l := claimed(t, nil)
		r.Call(t, "startJob", uuid.NewString(), l.LeaseToken).Code(t, "NOT_FOUND")
	})

	t.Run("a retryable failure requeues after a doubling backoff until attempts run out", func(t *testing.T) {
		t.Parallel()
		tn, r, l := claimed(t, nil)
		r.Start(t, l)
		queued := r.Fail(t, l, "portal down", true)
		require.Equal(t, "QUEUED", queued.Status)
		require.Nil(t, queued.RobotID, "a requeued job belongs to no robot")
		require.Nil(t, queued.LeaseExpiresAt)
		require.Nil(t, queued.FinishedAt)
		require.Equal(t, "portal down", *queued.Error)
		require.Equal(t, 1, queued.Attempt)
		require.Equal(t, backoff, queued.RunAfter.Sub(queued.UpdatedAt), "first retry waits RetryBackoff")
		require.Nil(t, r.Claim(t, 0), "a job in its backoff must not be claimable")

		require.NoError(t, jqRunAfterNow(t, tn, l.Job.ID)) // the backoff passes
		l2 := r.Claim(t, 0)
		require.NotNil(t, l2)
		require.Equal(t, 2, l2.Job.Attempt)
		require.Nil(t, l2.Job.Error, "a claim clears the previous attempt's error")
		queued = r.Fail(t, l2, "portal down again", true) // from CLAIMED, too
		require.Equal(t, "QUEUED", queued.Status)
		require.Equal(t, maxBackoff, queued.RunAfter.Sub(queued.UpdatedAt), "the doubled backoff is capped at MaxRetryBackoff")

		require.NoError(t, jqRunAfterNow(t, tn, l.Job.ID))
		l3 := r.Claim(t, 0)
		require.NotNil(t, l3)
		require.Equal(t, 3, l3.Job.Attempt)
		r.Start(t, l3)
		failed := r.Fail(t, l3, "still down", true)
		require.Equal(t, "FAILED", failed.Status, "no attempts left")
		require.Equal(t, "still down", *failed.Error)
		require.NotNil(t, failed.FinishedAt)
		require.Nil(t, failed.LeaseExpiresAt)
		require.Equal(t, r.ID, *failed.RobotID)
		require.Nil(t, r.Claim(t, 0))
	})

	t.Run("a non-retryable failure is final", func(t *testing.T) {
		t.Parallel()
		tn, r, l := claimed(t, map[string]any{"maxAttempts": 5})
		r.Start(t, l)
		failed := r.Fail(t, l, "invalid invoice", false)
		require.Equal(t, "FAILED", failed.Status)
		require.Equal(t, 1, failed.Attempt)
		require.NotNil(t, failed.FinishedAt)
		require.Equal(t, "invalid invoice", *tn.Job(t, l.Job.ID).Error)
		require.Nil(t, r.Claim(t, 0))
	})

	t.Run("cancelling a held job refuses the holder's next call with JOB_CANCELLED", func(t *testing.T) {
		t.Parallel()
		for _, running := range []bool{false, true} {
			tn, r, l := claimed(t, nil)
			if running {
				r.Start(t, l)
			}
			var out struct{ CancelJob apitest.Job }
			tn.Do(t, `mutation($id: ID!) { cancelJob(id: $id) { `+apitest.JobFields+` } }`, map[string]any{"id": l.Job.ID}, &out)
			require.Equal(t, "CANCELLED", out.CancelJob.Status)
			require.NotNil(t, out.CancelJob.FinishedAt)
			for _, op := range apitest.FencedOps() {
				before := tn.Snapshot(t, l.Job.ID)
				jqRequireRefused(t, r.Call(t, op.Name, l.Job.ID, l.LeaseToken), db.ReasonJobCancelled, "CANCELLED")
				require.Equal(t, before, tn.Snapshot(t, l.Job.ID), "a refused %s changed the job", op.Name)
			}
			require.Nil(t, r.Claim(t, 0), "a cancelled job is not queued")
		}
	})

	t.Run("cancelling a queued job; a finished job cannot be cancelled", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		job := tn.Enqueue(t, nil)
		cancel := func(id string) *apitest.Response {
			return s.Do(t, tn.User.Token, `mutation($id: ID!) { cancelJob(id: $id) { status } }`, map[string]any{"id": id})
		}
		var out struct{ CancelJob struct{ Status string } }
		cancel(job.ID).OK(t, &out)
		require.Equal(t, "CANCELLED", out.CancelJob.Status)
		require.Nil(t, tn.CreateRobot(t, "idle", apitest.RobotOpts{}).Claim(t, 0))
		jqRequireRefused(t, cancel(job.ID), db.ReasonIllegalTransition, "CANCELLED")

		_, r, l := claimed(t, nil)
		r.Start(t, l)
		r.Complete(t, l, nil)
		before := r.Tenant.Snapshot(t, l.Job.ID)
		resp := s.Do(t, r.Tenant.User.Token, `mutation($id: ID!) { cancelJob(id: $id) { status } }`, map[string]any{"id": l.Job.ID})
		jqRequireRefused(t, resp, db.ReasonIllegalTransition, "COMPLETED")
		require.Equal(t, before, r.Tenant.Snapshot(t, l.Job.ID))
	})

	t.Run("retry queues a FAILED or CANCELLED job afresh; a QUEUED one cannot be retried", func(t *testing.T) {
		t.Parallel()
		retry := func(tn *apitest.Tenant, id string) *apitest.Response {
			return s.Do(t, tn.User.Token, `mutation($id: ID!) { retryJob(id: $id) { `+apitest.JobFields+` } }`, map[string]any{"id": id})
		}
		for _, end := range []string{"FAILED", "CANCELLED"} {
			tn, r, l := claimed(t, nil)
			r.Start(t, l)
			if end == "FAILED" {
				r.Fail(t, l, "broken", false)
			} else {
				tn.Do(t, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": l.Job.ID}, nil)
			}
			var out struct{ RetryJob apitest.Job }
			retry(tn, l.Job.ID).OK(t, &out)
			j := out.RetryJob
			require.Equal(t, "QUEUED", j.Status)
			require.Zero(t, j.Attempt)
			require.Nil(t, j.Error)
			require.Nil(t, j.RobotID)
			require.Nil(t, j.FinishedAt)
			require.Zero(t, j.Progress)
			jqRequireRefused(t, r.Call(t, "completeJob", l.Job.ID, l.LeaseToken), db.ReasonLeaseLost, "QUEUED")
			again := r.Claim(t, 0)
			require.NotNil(t, again, "a retried %s job is claimable", end)
			require.Equal(t, 1, again.Job.Attempt)
		}
		tn := apitest.NewTenant(t, s)
		job := tn.Enqueue(t, nil)
		jqRequireRefused(t, retry(tn, job.ID), db.ReasonIllegalTransition, "QUEUED")
	})

	t.Run("progress is recorded, logged and extends the lease", func(t *testing.T) {
		t.Parallel()
		tn, r, l := claimed(t, nil)
		r.Start(t, l)
		var out struct{ ReportJobProgress apitest.Job }
		s.Do(t, r.Key, `mutation($j: ID!, $l: ID!) { reportJobProgress(jobId: $j, leaseToken: $l, progress: 40, currentNode: "extract", message: "page 2 of 5") { `+apitest.JobFields+` } }`,
			map[string]any{"j": l.Job.ID, "l": l.LeaseToken}).OK(t, &out)
		p := out.ReportJobProgress
		require.Equal(t, 40, p.Progress)
		require.Equal(t, "extract", *p.CurrentNode)
		jqSameTime(t, p.UpdatedAt.Add(lease), *p.LeaseExpiresAt, "progress leases the job for Lease from now")
		require.True(t, p.LeaseExpiresAt.After(l.LeaseExpiresAt), "progress must extend the lease")
		j := tn.Job(t, l.Job.ID)
		require.Len(t, j.Logs, 1)
		require.Equal(t, "INFO", j.Logs[0].Level)
		require.Equal(t, "page 2 of 5", j.Logs[0].Message)
		require.Equal(t, map[string]any{"progress": float64(40)}, j.Logs[0].Fields)
		for _, bad := range []int{-1, 101} {
			before := tn.Snapshot(t, l.Job.ID)
			s.Do(t, r.Key, `mutation($j: ID!, $l: ID!, $p: Int!) { reportJobProgress(jobId: $j, leaseToken: $l, progress: $p) { id } }`,
				map[string]any{"j": l.Job.ID, "l": l.LeaseToken, "p": bad}).Code(t, "BAD_USER_INPUT")
			require.Equal(t, before, tn.Snapshot(t, l.Job.ID))
		}
	})

	t.Run("appended log lines are kept, newest first", func(t *testing.T) {
		t.Parallel()
		tn, r, l := claimed(t, nil)
		// Within the accepted window (LOG_RETENTION_DAYS back): kept as logged.
		at := time.Now().Add(-time.Hour).Truncate(time.Millisecond).UTC()
		var out struct{ AppendJobLogs int }
		s.Do(t, r.Key, `mutation($j: ID!, $l: ID!, $e: [JobLogInput!]!) { appendJobLogs(jobId: $j, leaseToken: $l, entries: $e) }`, map[string]any{
			"j": l.Job.ID, "l": l.LeaseToken, "e": []map[string]any{
				{"level": "DEBUG", "message": "opening portal", "fields": map[string]any{"url": "https://portal"}, "at": at.Format(time.RFC3339Nano)},
				{"level": "WARN", "message": "slow page"},
				{"level": "ERROR", "message": "captcha"},
			},
		}).OK(t, &out)
		require.Equal(t, 3, out.AppendJobLogs)
		r.Start(t, l) // RUNNING jobs take logs too
		s.Do(t, r.Key, apitest.FencedOpNamed("appendJobLogs").Query, map[string]any{"j": l.Job.ID, "l": l.LeaseToken}).OK(t, nil)

		logs := tn.Job(t, l.Job.ID).Logs
		var got []string
		for _, lg := range logs {
			got = append(got, lg.Level+" "+lg.Message)
		}
		require.Equal(t, []string{"INFO x", "ERROR captcha", "WARNING slow page", "DEBUG opening portal"}, got, "WARN is read as WARNING")
		require.Equal(t, map[string]any{"url": "https://portal"}, logs[3].Fields)
		require.True(t, at.Equal(logs[3].At), "a line keeps the time the robot logged it: %s", logs[3].At)
		require.Equal(t, map[string]any{}, logs[2].Fields)

		var first struct {
			Job struct{ Logs []apitest.JobLog }
		}
		tn.Do(t, `query($id: ID!) { job(id: $id) { logs(first: 2) { level message } } }`, map[string]any{"id": l.Job.ID}, &first)
		require.Len(t, first.Job.Logs, 2)
		require.Equal(t, "x", first.Job.Logs[0].Message)
	})

	t.Run("enqueueJobs queues a batch", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		var out struct{ EnqueueJobs []apitest.Job }
		tn.Do(t, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { `+apitest.JobFields+` } }`, map[string]any{"in": []map[string]any{
			{"workflowId": tn.Workflow, "input": map[string]any{"n": 1}},
			{"workflowId": tn.Workflow, "input": map[string]any{"n": 2}, "priority": 7},
			{"workflowId": tn.Workflow, "input": map[string]any{"n": 3}, "maxAttempts": 1},
		}}, &out)
		require.Len(t, out.EnqueueJobs, 3)
		ids := map[string]bool{}
		for i, j := range out.EnqueueJobs {
			require.Equal(t, "QUEUED", j.Status)
			require.Equal(t, float64(i+1), j.Input["n"], "results come in input order")
			ids[j.ID] = true
		}
		require.Len(t, ids, 3)
		require.Equal(t, 7, out.EnqueueJobs[1].Priority)
		require.Equal(t, 1, out.EnqueueJobs[2].MaxAttempts)
		var list struct{ Jobs struct{ TotalCount int } }
		tn.Do(t, `{ jobs(filter: {status: QUEUED}) { totalCount } }`, nil, &list)
		require.Equal(t, 3, list.Jobs.TotalCount)
	})

	t.Run("a job pinned to an older version keeps it", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		var v struct{ PublishWorkflowVersion struct{ Version int } }
		tn.Do(t, `mutation($w: ID!) { publishWorkflowVersion(workflowId: $w, definition: {nodes: [{id: "a"}]}) { version } }`, map[string]any{"w": tn.Workflow}, &v)
		require.Equal(t, 2, v.PublishWorkflowVersion.Version)
		pinned := tn.Enqueue(t, map[string]any{"version": 1})
		current := tn.Enqueue(t, nil)
		require.Equal(t, 1, pinned.WorkflowVersion)
		require.Equal(t, 2, current.WorkflowVersion)
		s.Do(t, tn.User.Token, `mutation($w: ID!) { enqueueJob(input: {workflowId: $w, version: 3}) { id } }`, map[string]any{"w": tn.Workflow}).Code(t, "BAD_USER_INPUT")
		r := tn.CreateRobot(t, "worker", apitest.RobotOpts{Slots: 2})
		got := map[string]int{}
		for range 2 {
			l := r.Claim(t, 0)
			require.NotNil(t, l)
			got[l.Job.ID] = l.Job.WorkflowVersion
		}
		require.Equal(t, map[string]int{pinned.ID: 1, current.ID: 2}, got)
	})
}

// jqRunAfterNow makes a job's backoff pass at once, as if time went by.
func jqRunAfterNow(t testing.TB, tn *apitest.Tenant, id string) error {
	_, err := tn.Server.DB.NewRaw("UPDATE jobs SET run_after = now() WHERE id = ?", id).Exec(t.Context())
	return err
}

// jqAge makes d pass for a job, as far as the queue can tell: every instant
// that decides when its lease runs out moves d into the past.
func jqAge(t testing.TB, s *apitest.Server, id string, d time.Duration) {
	t.Helper()
	_, err := s.DB.NewRaw(`UPDATE jobs SET lease_expires_at = lease_expires_at - make_interval(secs => ?0),
		claimed_at = claimed_at - make_interval(secs => ?0), started_at = started_at - make_interval(secs => ?0),
		progress_at = progress_at - make_interval(secs => ?0)
		WHERE id = ?1`, d.Seconds(), id).Exec(t.Context())
	require.NoError(t, err)
}

// jqExpire ends a job's lease now, as if its robot had stopped reporting
// a lease period ago; the maintenance runner rescues it on its next round.
func jqExpire(t testing.TB, s *apitest.Server, id string) {
	t.Helper()
	res, err := s.DB.NewRaw(`UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = ? AND lease_expires_at IS NOT NULL`, id).Exec(t.Context())
	require.NoError(t, err)
	n, err := res.RowsAffected()
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "job %s holds no lease to expire", id)
}

func TestJobRescue(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})

	t.Run("a silent robot's job goes to a waiting robot and its late calls are refused", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		silent, waiting := tn.CreateRobot(t, "silent", apitest.RobotOpts{}), tn.CreateRobot(t, "waiting", apitest.RobotOpts{})
		job := tn.Enqueue(t, nil)
		held := silent.Claim(t, 0)
		require.NotNil(t, held)
		silent.Start(t, held)

		// The claim polls only hourly: the rescue's NOTIFY must wake it (or
		// the rescue comes first and the claim's first attempt finds the job).
		claim := waiting.ClaimAsync(t, jqWakeWait)
		jqExpire(t, s, job.ID)
		l := apitest.ReceiveClaim(t, claim, jqWakeWithin)
		require.NotNil(t, l, "the waiting robot must get the rescued job")
		require.Equal(t, job.ID, l.Job.ID)
		require.Equal(t, 2, l.Job.Attempt)
		require.Equal(t, waiting.ID, *l.Job.RobotID)
		require.NotEqual(t, held.LeaseToken, l.LeaseToken)

		// The job is the waiting robot's now: its old holder cannot read it,
		// so its late calls find nothing.
		for _, op := range apitest.FencedOps() {
			before := tn.Snapshot(t, job.ID)
			silent.Call(t, op.Name, job.ID, held.LeaseToken).Code(t, "NOT_FOUND")
			require.Equal(t, before, tn.Snapshot(t, job.ID), "the old holder's %s changed the job", op.Name)
		}
		waiting.Start(t, l)
		done := waiting.Complete(t, l, map[string]any{"by": "waiting"})
		require.Equal(t, "COMPLETED", done.Status)
		require.Equal(t, waiting.ID, *done.RobotID)
		require.Equal(t, 2, done.Attempt)
	})

	t.Run("rescues that use up the attempts fail the job with the reason", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "flaky", apitest.RobotOpts{})
		job := tn.Enqueue(t, map[string]any{"maxAttempts": 2})
		first := r.Claim(t, 0)
		require.NotNil(t, first)
		// The robot goes silent; once its job is rescued it asks again and
		// gets the job back.
		jqExpire(t, s, job.ID)
		apitest.Eventually(t, apitest.Patience, "the first lease is rescued", func() bool { return tn.Job(t, job.ID).Status == "QUEUED" })
		second := r.Claim(t, 0)
		require.NotNil(t, second)
		require.Equal(t, job.ID, second.Job.ID)
		require.Equal(t, 2, second.Job.Attempt)
		r.Start(t, second)

		jqExpire(t, s, job.ID)
		var failed apitest.Job
		apitest.Eventually(t, apitest.Patience, "the second lease is rescued and the job fails", func() bool {
			failed = tn.Job(t, job.ID)
			return failed.Status != "RUNNING"
		})
		require.Equal(t, "FAILED", failed.Status)
		require.Contains(t, *failed.Error, "lease expired")
		require.Contains(t, *failed.Error, "attempt 2 of 2")
		require.NotNil(t, failed.FinishedAt)
		require.Nil(t, failed.LeaseExpiresAt)
		require.Equal(t, 2, failed.Attempt)
		jqRequireRefused(t, r.Call(t, "completeJob", job.ID, second.LeaseToken), db.ReasonLeaseLost, "FAILED")
		require.Nil(t, r.Claim(t, 0))
	})
}

// TestJobFencedCallsAnswerAsJobDoes: a robot's fenced call about a job it
// cannot read is NOT_FOUND, exactly as job(id) answers it (null), whatever
// the job's state and whichever token it sends; its own job (held, or
// taken back from its lease) is explained with currentStatus.
func TestJobFencedCallsAnswerAsJobDoes(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	tn := apitest.NewTenant(t, s)
	a, b := tn.CreateRobot(t, "a", apitest.RobotOpts{}), tn.CreateRobot(t, "b", apitest.RobotOpts{Slots: 10})
	// readable reports whether robot r can read the job through job(id).
	readable := func(r *apitest.Robot, id string) bool {
		var out struct{ Job *struct{ ID string } }
		r.Tenant.Server.Do(t, r.Key, `query($id: ID!) { job(id: $id) { id } }`, map[string]any{"id": id}).OK(t, &out)
		return out.Job != nil
	}
	// notFound asserts that every fenced call of a about id is NOT_FOUND,
	// changes nothing, and agrees with job(id).
	notFound := func(t *testing.T, id, token, state string) {
		t.Helper()
		require.False(t, readable(a, id), "robot a reads a %s job it never held", state)
		for _, op := range apitest.FencedOps() {
			before := tn.Snapshot(t, id)
			resp := a.Call(t, op.Name, id, token)
			e := resp.Code(t, "NOT_FOUND")
			require.NotContains(t, e.Extensions, "currentStatus", "%s of a %s job: %s", op.Name, state, resp.Raw)
			require.NotContains(t, string(resp.Raw), state, "%s of a %s job names its state", op.Name, state)
			require.Equal(t, before, tn.Snapshot(t, id), "robot a's %s changed a %s job", op.Name, state)
		}
	}
	bClaims := func(want string) *apitest.Lease {
		t.Helper()
		l := b.Claim(t, 0)
		require.NotNil(t, l)
		require.Equal(t, want, l.Job.ID)
		return l
	}

	queued := tn.Enqueue(t, nil)
	notFound(t, queued.ID, uuid.NewString(), "QUEUED")

	claimed := bClaims(queued.ID)
	running := jqStarted(t, b, bClaims(tn.Enqueue(t, nil).ID))
	done := jqStarted(t, b, bClaims(tn.Enqueue(t, nil).ID))
	b.Complete(t, done, map[string]any{"secret": true})
	failed := jqStarted(t, b, bClaims(tn.Enqueue(t, map[string]any{"maxAttempts": 1}).ID))
	b.Fail(t, failed, "broke", false)
	cancelled := bClaims(tn.Enqueue(t, nil).ID)
	tn.Do(t, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": cancelled.Job.ID}, nil)
	for _, c := range []struct {
		l     *apitest.Lease
		state string
	}{{claimed, "CLAIMED"}, {running, "RUNNING"}, {done, "COMPLETED"}, {failed, "FAILED"}, {cancelled, "CANCELLED"}} {
		// With a made-up token, and with the holder's own.
		notFound(t, c.l.Job.ID, uuid.NewString(), c.state)
		notFound(t, c.l.Job.ID, c.l.LeaseToken, c.state)
	}

	// A's own job, taken back from its lease, is explained to a...
	mine := tn.Enqueue(t, map[string]any{"priority": 5})
	lost := a.Claim(t, 0)
	require.NotNil(t, lost)
	require.Equal(t, mine.ID, lost.Job.ID)
	jqRequireRefused(t, a.Call(t, "completeJob", mine.ID, uuid.NewString()), db.ReasonLeaseLost, "CLAIMED")
	jqExpire(t, s, mine.ID)
	apitest.Eventually(t, apitest.Patience, "a's lease is rescued", func() bool { return tn.Job(t, mine.ID).Status == "QUEUED" })
	jqRequireRefused(t, a.Call(t, "startJob", mine.ID, lost.LeaseToken), db.ReasonLeaseLost, "QUEUED")
	// ...until another robot takes it: then it is that robot's business.
	bClaims(mine.ID)
	notFound(t, mine.ID, lost.LeaseToken, "CLAIMED")
}

// TestDeletingARobotLetsGoOfItsJobs: jobs aimed at a deleted robot can run
// nowhere else and are cancelled, whether queued or live and whatever their
// attempts; its other live jobs go back to the queue (or fail, on their last
// attempt); and the schema says so.
func TestDeletingARobotLetsGoOfItsJobs(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue(), Introspection: true})
	tn := apitest.NewTenant(t, s)
	doomed, peer := tn.CreateRobot(t, "doomed", apitest.RobotOpts{Slots: 4}), tn.CreateRobot(t, "peer", apitest.RobotOpts{})
	// A finished job aimed at the doomed robot, which no retry may give
	// to another robot once it is gone.
	aimedFailed := tn.Enqueue(t, map[string]any{"robotId": doomed.ID, "maxAttempts": 1})
	l := doomed.Claim(t, 0)
	require.Equal(t, aimedFailed.ID, l.Job.ID)
	doomed.Start(t, l)
	require.Equal(t, "FAILED", doomed.Fail(t, l, "broke", false).Status)
	// Claimed in priority order by the doomed robot.
	aimed := tn.Enqueue(t, map[string]any{"robotId": doomed.ID, "priority": 4})
	aimedLast := tn.Enqueue(t, map[string]any{"robotId": doomed.ID, "priority": 3, "maxAttempts": 1})
	free := tn.Enqueue(t, map[string]any{"priority": 2})
	freeLast := tn.Enqueue(t, map[string]any{"priority": 1, "maxAttempts": 1})
	for _, want := range []string{aimed.ID, aimedLast.ID, free.ID, freeLast.ID} {
		l := doomed.Claim(t, 0)
		require.NotNil(t, l)
		require.Equal(t, want, l.Job.ID)
		if want == aimed.ID || want == free.ID {
			doomed.Start(t, l)
		}
	}
	aimedQueued := tn.Enqueue(t, map[string]any{"robotId": doomed.ID})
	// More jobs queued for it than one batch of cancellations takes.
	for range 2 {
		var in []map[string]any
		for range 600 {
			in = append(in, map[string]any{"workflowId": tn.Workflow, "robotId": doomed.ID})
		}
		tn.Do(t, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": in}, nil)
	}

	tn.Do(t, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": doomed.ID}, nil)
	var live int
	require.NoError(t, s.DB.QueryRowContext(t.Context(), `SELECT count(*) FROM jobs WHERE target_robot_id = ? AND status <> 'CANCELLED' AND status <> 'FAILED'`, doomed.ID).Scan(&live))
	require.Zero(t, live, "jobs aimed at the deleted robot are left")

	for _, id := range []string{aimed.ID, aimedLast.ID, aimedQueued.ID} {
		j := tn.Job(t, id)
		require.Equal(t, "CANCELLED", j.Status, "a job aimed at the deleted robot")
		require.Equal(t, "its target robot was deleted: no other robot may run it", *j.Error)
		require.NotNil(t, j.FinishedAt)
		require.Nil(t, j.LeaseExpiresAt)
	}
	j := tn.Job(t, free.ID)
	require.Equal(t, "QUEUED", j.Status, "a job any robot may run goes back to the queue")
	require.Nil(t, j.RobotID)
	require.Nil(t, j.LeaseExpiresAt)
	require.Nil(t, j.FinishedAt)
	j = tn.Job(t, freeLast.ID)
	require.Equal(t, "FAILED", j.Status, "a job on its last attempt fails")
	require.Equal(t, "its robot was deleted (attempt 1 of 1)", *j.Error)

	l = peer.Claim(t, 0)
	require.NotNil(t, l)
	require.Equal(t, free.ID, l.Job.ID)
	require.Equal(t, 2, l.Job.Attempt)
	require.Nil(t, peer.Claim(t, 0), "only the requeued job is left to claim")

	// A job aimed at the deleted robot, cancelled by the deletion or
	// finished before it, cannot be retried: no other robot may run it.
	const retry = `mutation($id: ID!) { retryJob(id: $id) { id status } }`
	for _, id := range []string{aimed.ID, aimedFailed.ID} {
		before := tn.Snapshot(t, id)
		e := s.Do(t, tn.User.Token, retry, map[string]any{"id": id}).Code(t, "CONFLICT")
		require.Contains(t, e.Message, "aimed at a robot that has been deleted")
		require.Equal(t, before, tn.Snapshot(t, id), "a refused retry writes nothing")
	}
	require.Nil(t, peer.Claim(t, 0), "nothing of the deleted robot's reached another robot")
	var retried struct{ RetryJob struct{ Status string } }
	tn.Do(t, retry, map[string]any{"id": freeLast.ID}, &retried)
	require.Equal(t, "QUEUED", retried.RetryJob.Status, "a job any robot may run is retried")

	var schema struct {
		Type struct {
			Fields []struct{ Name, Description string }
		} `json:"__type"`
	}
	tn.Do(t, `{ __type(name: "Mutation") { fields { name description } } }`, nil, &schema)
	for _, f := range schema.Type.Fields {
		if f.Name == "deleteRobot" {
			doc := strings.Join(strings.Fields(f.Description), " ")
			require.Contains(t, doc, `aimed at it (enqueued with its robotId), queued or live, can run on no other robot: they are CANCELLED with the error "its target robot was deleted: no other robot may run it"`)
			require.Contains(t, doc, "Its other live jobs go back to the queue for other robots (or fail, on their last attempt)")
			return
		}
	}
	require.Fail(t, "no deleteRobot mutation")
}

// TestJobLeaseKeptByHeartbeats makes time pass for two running jobs in
// steps shorter than the lease: the robot that heartbeats between the steps
// keeps its job, the silent one loses its own.
func TestJobLeaseKeptByHeartbeats(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	tn := apitest.NewTenant(t, s)
	alive, silent := tn.CreateRobot(t, "alive", apitest.RobotOpts{}), tn.CreateRobot(t, "silent", apitest.RobotOpts{})
	kept, lost := tn.Enqueue(t, nil), tn.Enqueue(t, nil)
	lk := jqStarted(t, alive, alive.Claim(t, 0))
	ll := jqStarted(t, silent, silent.Claim(t, 0))
	require.Equal(t, kept.ID, lk.Job.ID)
	require.Equal(t, lost.ID, ll.Job.ID)

	// Two steps of 40 minutes: the silent robot's hour-long lease runs out
	// in the second, the alive robot's heartbeat renews its own in between.
	// Each step leaves 20 minutes of slack, which no machine is slow enough
	// to use up.
	step := 40 * time.Minute
	for i := range 2 {
		jqAge(t, s, kept.ID, step)
		jqAge(t, s, lost.ID, step)
		if i == 0 {
			alive.Heartbeat(t, "BUSY")
		}
	}
	apitest.Eventually(t, apitest.Patience, "the silent robot's job is rescued", func() bool { return tn.Job(t, lost.ID).Status == "QUEUED" })

	// The rescue that took the silent robot's job saw the other one too.
	j := tn.Job(t, kept.ID)
	require.Equal(t, "RUNNING", j.Status)
	require.Equal(t, alive.ID, *j.RobotID)
	require.Equal(t, 1, j.Attempt)
	done := alive.Complete(t, lk, nil)
	require.Equal(t, "COMPLETED", done.Status, "the heartbeating robot kept its lease throughout")
}

// TestJobLeaseNeedsProgress: heartbeats keep a robot's jobs only while
// they make progress. Time passes in steps of 40 minutes against an hour's
// lease and two hours' progress timeout, the robot heartbeating between
// steps.
func TestJobLeaseNeedsProgress(t *testing.T) {
	t.Parallel()
	q := apitest.LongLeaseQueue()
	q.ProgressTimeout = 2 * time.Hour
	s := apitest.New(t, apitest.Options{Queue: q})
	const step = 40 * time.Minute
	progress := func(t *testing.T, r *apitest.Robot, l *apitest.Lease, p int) {
		t.Helper()
		r.Tenant.Server.Do(t, r.Key, `mutation($j: ID!, $l: ID!, $p: Int!) { reportJobProgress(jobId: $j, leaseToken: $l, progress: $p) { id } }`,
			map[string]any{"j": l.Job.ID, "l": l.LeaseToken, "p": p}).OK(t, nil)
	}
	rescued := func(t *testing.T, tn *apitest.Tenant, id string) apitest.Job {
		t.Helper()
		var j apitest.Job
		apitest.Eventually(t, apitest.Patience, "the job is rescued", func() bool {
			j = tn.Job(t, id)
			return j.Status == "QUEUED"
		})
		require.Nil(t, j.RobotID)
		require.Equal(t, 1, j.Attempt)
		return j
	}

	t.Run("a claim not started within its lease is taken back though its robot heartbeats", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "hoarder", apitest.RobotOpts{})
		job := tn.Enqueue(t, nil)
		l := r.Claim(t, 0)
		require.NotNil(t, l)
		for range 2 {
			r.Heartbeat(t, "BUSY")
			jqAge(t, s, job.ID, step)
		}
		j := rescued(t, tn, job.ID)
		require.Contains(t, *j.Error, "did not start the job within its lease")
		jqRequireRefused(t, r.Call(t, "startJob", job.ID, l.LeaseToken), db.ReasonLeaseLost, "QUEUED")
	})

	t.Run("a running job without progress is taken back though its robot heartbeats", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "stuck", apitest.RobotOpts{})
		job := tn.Enqueue(t, nil)
		l := jqStarted(t, r, r.Claim(t, 0))
		// Four steps pass 2 h 40 min after the start: past the progress
		// timeout, though each step is shorter than the lease.
		for range 4 {
			r.Heartbeat(t, "BUSY")
			jqAge(t, s, job.ID, step)
		}
		j := rescued(t, tn, job.ID)
		require.Contains(t, *j.Error, "no progress reported for 7200 seconds")
		jqRequireRefused(t, r.Call(t, "completeJob", job.ID, l.LeaseToken), db.ReasonLeaseLost, "QUEUED")
	})

	t.Run("a job making progress keeps its lease through heartbeats", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r, silent := tn.CreateRobot(t, "worker", apitest.RobotOpts{}), tn.CreateRobot(t, "witness", apitest.RobotOpts{})
		job := tn.Enqueue(t, map[string]any{"priority": 1})
		witness := tn.Enqueue(t, nil)
		l := jqStarted(t, r, r.Claim(t, 0))
		require.Equal(t, job.ID, l.Job.ID)
		require.NotNil(t, silent.Claim(t, 0))
		// Progress every other step, heartbeats in between: 2 h 40 min in
		// all, never two hours without a report nor an hour without either.
		for i := range 4 {
			if i%2 == 0 {
				progress(t, r, l, 10*(i+1))
			} else {
				r.Heartbeat(t, "BUSY")
			}
			jqAge(t, s, job.ID, step)
		}
		// Once the witness's lease has run out and the maintenance runner took it, the
		// same sweep saw the worker's job too and left it alone.
		jqExpire(t, s, witness.ID)
		rescued(t, tn, witness.ID)
		j := tn.Job(t, job.ID)
		require.Equal(t, "RUNNING", j.Status)
		require.Equal(t, "COMPLETED", r.Complete(t, l, nil).Status)
	})
}

func TestJobDispatch(t *testing.T) {
	t.Parallel()
	s := apitest.New(t) // ClaimPoll is an hour: only NOTIFY wakes a waiting claim

	for i := range 4 {
		t.Run(fmt.Sprintf("a waiting claim gets a job enqueued meanwhile #%d", i), func(t *testing.T) {
			t.Parallel()
			tn := apitest.NewTenant(t, s)
			r := tn.CreateRobot(t, "waiter", apitest.RobotOpts{})
			// Whether the claim is already waiting when the job is queued or
			// not, it must get the job: the test holds for every interleaving.
			claim := r.ClaimAsync(t, jqWakeWait)
			job := tn.Enqueue(t, nil)
			l := apitest.ReceiveClaim(t, claim, jqWakeWithin)
			require.NotNil(t, l, "the waiting claim returned null")
			require.Equal(t, job.ID, l.Job.ID)
		})
	}

	t.Run("a waiting claim is woken by a retry", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "waiter", apitest.RobotOpts{})
		job := tn.Enqueue(t, nil)
		tn.Do(t, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": job.ID}, nil)
		claim := r.ClaimAsync(t, jqWakeWait)
		tn.Do(t, `mutation($id: ID!) { retryJob(id: $id) { id } }`, map[string]any{"id": job.ID}, nil)
		l := apitest.ReceiveClaim(t, claim, jqWakeWithin)
		require.NotNil(t, l)
		require.Equal(t, job.ID, l.Job.ID)
	})

	t.Run("a waiting claim gets the jobs of a deleted robot", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		doomed, waiter := tn.CreateRobot(t, "doomed", apitest.RobotOpts{}), tn.CreateRobot(t, "waiter", apitest.RobotOpts{})
		job := tn.Enqueue(t, nil)
		jqStarted(t, doomed, doomed.Claim(t, 0))
		claim := waiter.ClaimAsync(t, jqWakeWait)
		tn.Do(t, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": doomed.ID}, nil)
		l := apitest.ReceiveClaim(t, claim, jqWakeWithin)
		require.NotNil(t, l, "the deleted robot's job went back to the queue but the waiting claim was not woken")
		require.Equal(t, job.ID, l.Job.ID)
	})

	t.Run("a waiting claim is not given another tenant's job", func(t *testing.T) {
		t.Parallel()
		a, b := apitest.NewTenant(t, s), apitest.NewTenant(t, s)
		r := a.CreateRobot(t, "waiter", apitest.RobotOpts{})
		claim := r.ClaimAsync(t, 2)
		job := b.Enqueue(t, nil)
		require.Nil(t, apitest.ReceiveClaim(t, claim, apitest.Patience), "a robot got another tenant's job")
		require.Equal(t, "QUEUED", b.Job(t, job.ID).Status)
	})

	t.Run("a wait with nothing queued returns null", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		require.Nil(t, tn.CreateRobot(t, "idle", apitest.RobotOpts{}).Claim(t, 1))
	})

	t.Run("waitSeconds must be 0-60", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "eager", apitest.RobotOpts{})
		for _, w := range []int{-1, 61} {
			s.Do(t, r.Key, apitest.ClaimQuery, map[string]any{"w": w}).Code(t, "BAD_USER_INPUT")
		}
	})
}

// TestJobDispatchOtherTenantsCannotCrowdOut holds a waiting claim inside one
// of its claim transactions while other tenants' notifications and then its
// own arrive, so its own finds the subscription's buffer full of other
// tenants'. The claim must still wake for its job; polling is hourly, so
// only a notification can wake it.
//
// The claim is held by a table lock on robots, which its robot-row lock must
// wait for. Table locks queue fairly (row locks do not: a newcomer may take a
// row just released ahead of an older waiter), so a second lock requested
// while the claim's first attempt waits is granted before the second attempt
// asks, and that attempt, made after the claim subscribed, waits in turn.
func TestJobDispatchOtherTenantsCannotCrowdOut(t *testing.T) {
	t.Parallel()
	for _, others := range []int{1, 50} {
		t.Run(fmt.Sprintf("%d other tenants", others), func(t *testing.T) {
			t.Parallel()
			// No maintenance: a sweep's statement (the offline sweep's robot
			// locks) would wait on the robots table too and count as a waiter
			// below. SweepEvery only spaces the sweeps after the first, which
			// on a busy machine came after the table lock.
			s := apitest.New(t, apitest.Options{Clock: maintenance.NewManualClock(time.Now())})
			ctx := t.Context()
			tn := apitest.NewTenant(t, s)
			r := tn.CreateRobot(t, "waiter", apitest.RobotOpts{})
			// Not claimable yet: the burst below makes it claimable.
			job := tn.Enqueue(t, map[string]any{"runAt": jqTime(time.Hour)})

			lockWaiters := func(n int) {
				t.Helper()
				var activity []map[string]any
				apitest.Eventually(t, time.Minute, fmt.Sprintf("%d transactions wait for a lock (seen: %v)", n, &activity), func() bool {
					activity = activity[:0]
					// Only the claim's robot-row locks and our table locks
					// count.
					require.NoError(t, s.DB.NewRaw(`SELECT state, wait_event_type, wait_event, left(query, 60) AS query FROM pg_stat_activity
						WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'
						AND (query LIKE '%FROM "robots"%FOR NO KEY UPDATE%' OR query LIKE 'LOCK TABLE robots%')`).Scan(ctx, &activity))
					got := 0
					for _, a := range activity {
						if a["wait_event_type"] == "Lock" {
							got++
						}
					}
					return got == n
				})
			}
			// lockRobots holds robots against row locks (plain reads pass).
			lockRobots := func() (commit func(), err error) {
				tx, err := s.DB.BeginTx(ctx, nil)
				if err != nil {
					return nil, err
				}
				if _, err := tx.ExecContext(ctx, "LOCK TABLE robots IN EXCLUSIVE MODE"); err != nil {
					_ = tx.Rollback()
					return nil, err
				}
				return func() { require.NoError(t, tx.Commit()) }, nil
			}

			release, err := lockRobots()
			require.NoError(t, err)
			claim := r.ClaimAsync(t, jqWakeWait)
			lockWaiters(1) // the claim's first attempt, before it subscribes
			type locked struct {
				commit func()
				err    error
			}
			second := make(chan locked, 1)
			go func() {
				commit, err := lockRobots()
				second <- locked{commit, err}
			}()
			lockWaiters(2) // our second lock, queued behind the first attempt
			release()
			var hold locked
			select {
			case hold = <-second:
				require.NoError(t, hold.err)
			case <-time.After(apitest.Patience):
				require.FailNow(t, "the second lock was not granted")
			}
			// The first attempt found nothing; the claim subscribed and its
			// second attempt began (fixing its now()) and waits for us.
			lockWaiters(1)

			sub := s.App.Listener.Subscribe(db.JobQueuedChannel, others+8)
			defer sub.Close()
			tx, err := s.DB.BeginTx(ctx, nil)
			require.NoError(t, err)
			// Claimable from a moment after the waiting attempt's transaction
			// began, so that attempt cannot take it; the next one can.
			_, err = tx.ExecContext(ctx, "UPDATE jobs SET run_after = clock_timestamp() WHERE id = ?", job.ID)
			require.NoError(t, err)
			for range others {
				_, err = tx.ExecContext(ctx, "SELECT pg_notify(?, ?)", db.JobQueuedChannel, uuid.NewString())
				require.NoError(t, err)
			}
			_, err = tx.ExecContext(ctx, "SELECT pg_notify(?, ?)", db.JobQueuedChannel, tn.User.Tenant.String())
			require.NoError(t, err)
			require.NoError(t, tx.Commit())
			// Wait until the listener has delivered the robot's tenant's
			// notification; subscribing takes the lock delivery holds, so
			// once it returns every subscription has been offered it.
			for own := false; !own; {
				select {
				case n := <-sub.C:
					own = n.Payload == tn.User.Tenant.String()
				case <-time.After(apitest.Patience):
					require.FailNow(t, "the listener did not deliver the notifications")
				}
			}
			s.App.Listener.Subscribe(db.JobQueuedChannel, 1).Close()
			hold.commit()

			l := apitest.ReceiveClaim(t, claim, jqWakeWithin)
			require.NotNil(t, l, "the waiting claim missed its tenant's job: its wake-up was lost behind %d other tenants' notifications", others)
			require.Equal(t, job.ID, l.Job.ID)
		})
	}
}

func TestJobListStatementCount(t *testing.T) {
	t.Parallel()
	// No sweeps while counting: the counter sees every statement of the app.
	s := apitest.New(t, apitest.Options{SweepEvery: time.Hour})
	const q = `query($n: Int) { jobs(first: $n) { edges { node { id robot { name } workflow { name } logs { message } } } } }`
	statements := func(n int) int64 {
		tn := apitest.NewTenant(t, s)
		other := tn.CreateWorkflow(t, "other")
		robots := []*apitest.Robot{tn.CreateRobot(t, "r1", apitest.RobotOpts{}), tn.CreateRobot(t, "r2", apitest.RobotOpts{})}
		for done := 0; done < n; {
			batch := make([]map[string]any, 0, min(n-done, db.MaxEnqueueBatch))
			for i := range cap(batch) {
				wf := tn.Workflow
				if (done+i)%2 == 1 {
					wf = other
				}
				batch = append(batch, map[string]any{"workflowId": wf})
			}
			tn.Do(t, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": batch}, nil)
			done += len(batch)
		}
		// Two of every three jobs get a robot, and each a log line.
		_, err := s.DB.NewRaw(`UPDATE jobs SET status = 'RUNNING', robot_id = CASE WHEN random() < 0.5 THEN ?::uuid ELSE ?::uuid END
			WHERE tenant_id = ? AND id IN (SELECT id FROM jobs WHERE tenant_id = ? ORDER BY id LIMIT ?)`,
			robots[0].ID, robots[1].ID, tn.User.Tenant, tn.User.Tenant, max(1, 2*n/3)).Exec(t.Context())
		require.NoError(t, err)
		_, err = s.DB.NewRaw(`INSERT INTO robot_logs (job_id, tenant_id, robot_id, level, message, at) SELECT id, tenant_id, coalesce(robot_id, ?), 20, 'hello', now() FROM jobs WHERE tenant_id = ?`,
			robots[0].ID, tn.User.Tenant).Exec(t.Context())
		require.NoError(t, err)

		best := int64(math.MaxInt64)
		for range 3 { // the least of three: anything else running only adds
			var out struct {
				Jobs struct {
					Edges []struct {
						Node struct {
							ID       string
							Robot    *struct{ Name string }
							Workflow *struct{ Name string }
							Logs     []struct{ Message string }
						}
					}
				}
			}
			before := s.Statements.Load()
			tn.Do(t, q, map[string]any{"n": n}, &out)
			best = min(best, s.Statements.Load()-before)
			require.Len(t, out.Jobs.Edges, n)
			withRobot := 0
			for _, e := range out.Jobs.Edges {
				require.NotNil(t, e.Node.Workflow)
				require.Equal(t, []struct{ Message string }{{"hello"}}, e.Node.Logs)
				if e.Node.Robot != nil {
					withRobot++
				}
			}
			require.Equal(t, max(1, 2*n/3), withRobot)
		}
		return best
	}
	five, many := statements(5), statements(db.MaxPageSize)
	t.Logf("jobs(first: N) with robot, workflow and logs: %d statements for 5 jobs, %d for %d", five, many, db.MaxPageSize)
	require.Equal(t, five, many, "a page of %d jobs must cost the same statements as a page of 5", db.MaxPageSize)
	// The page, its robots, its workflows, its logs.
	require.LessOrEqual(t, five, int64(4))
}

// TestJobPointReadJoinsItsRobot checks that job(id) asking for its robot
// reads both in one statement (a join under the robots' scope rule), through
// a fragment too, with the same answers as before: the robot, or null for a
// job no robot holds; another tenant's job stays null; the robot holding the
// job sees itself; another robot of the tenant sees nothing.
func TestJobPointReadJoinsItsRobot(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{SweepEvery: time.Hour})
	tn := apitest.NewTenant(t, s)
	holder := tn.CreateRobot(t, "holder", apitest.RobotOpts{})
	other := tn.CreateRobot(t, "other", apitest.RobotOpts{})
	a, b := tn.Enqueue(t, nil), tn.Enqueue(t, nil)
	l := holder.Claim(t, 0)
	require.NotNil(t, l)
	held, queued := a, b
	if l.Job.ID == b.ID {
		held, queued = b, a
	}

	type answer struct {
		Job *struct {
			ID    string
			Robot *struct{ Name string }
		}
	}
	read := func(token, query, id string) (answer, int64) {
		var out answer
		before := s.Statements.Load()
		s.Do(t, token, query, map[string]any{"id": id}).OK(t, &out)
		return out, s.Statements.Load() - before
	}
	for _, query := range []string{
		`query($id: ID!) { job(id: $id) { id robot { name } } }`,
		`query($id: ID!) { job(id: $id) { id ... on Job { robot { name } } } }`,
		`query($id: ID!) { job(id: $id) { id ...R } } fragment R on Job { robot { name } }`,
	} {
		out, n := read(tn.User.Token, query, held.ID)
		require.NotNil(t, out.Job)
		require.NotNil(t, out.Job.Robot, query)
		require.Equal(t, "holder", out.Job.Robot.Name)
		require.EqualValues(t, 1, n, "the job and its robot in one statement: %s", query)

		out, n = read(tn.User.Token, query, queued.ID)
		require.NotNil(t, out.Job)
		require.Nil(t, out.Job.Robot, "a queued job has no robot")
		require.EqualValues(t, 1, n)
	}
	q := `query($id: ID!) { job(id: $id) { id robot { name } } }`
	out, _ := read(holder.Key, q, held.ID)
	require.NotNil(t, out.Job, "the holder sees its job")
	require.Equal(t, "holder", out.Job.Robot.Name)
	out, _ = read(other.Key, q, held.ID)
	require.Nil(t, out.Job, "another robot does not see the job")
	out, _ = read(apitest.NewTenant(t, s).User.Token, q, held.ID)
	require.Nil(t, out.Job, "another tenant does not see the job")
}

// A job's input and result leave as PostgreSQL stores them (db.RawJSON),
// not decoded into Go maps and encoded again: a number beyond float64's
// precision comes back digit for digit, through a read, a mutation's
// answer and the job's webhook event alike.
func TestJobJSONPassesThroughAsStored(t *testing.T) {
	t.Parallel()
	b := whManual(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	recv := whNewReceiver(t)
	whEndpoint(t, b.tn, recv.srv.URL, db.EventJobCompleted)
	const big, precise = "12345678901234567890123", "3.14159265358979323846264338327950288"
	input := map[string]any{"big": json.Number(big), "nested": map[string]any{"pi": json.Number(precise)}, "text": "<&>"}
	job := b.tn.Enqueue(t, map[string]any{"input": input})
	read := b.s.Do(t, b.tn.User.Token, `query($id: ID!) { job(id: $id) { input } }`, map[string]any{"id": job.ID})
	read.OK(t, nil)
	require.Contains(t, string(read.Raw), big)
	require.Contains(t, string(read.Raw), precise)
	require.Contains(t, string(read.Raw), `"<&>"`, "JSON as stored, not HTML-escaped again")

	r := b.tn.CreateRobot(t, "r", apitest.RobotOpts{})
	l := r.Claim(t, 0)
	require.NotNil(t, l)
	done := b.s.Do(t, r.Key, `mutation($j: ID!, $l: ID!, $r: JSON) { completeJob(jobId: $j, leaseToken: $l, result: $r, startIfClaimed: true) { input result } }`,
		map[string]any{"j": l.Job.ID, "l": l.LeaseToken, "r": map[string]any{"count": json.Number(big)}})
	done.OK(t, nil)
	require.Contains(t, string(done.Raw), `"count": `+big)
	require.Contains(t, string(done.Raw), precise)

	b.round(t)
	event := recv.wait(t, 1)[0]
	require.Contains(t, string(event.Body), big)
	require.Contains(t, string(event.Body), precise)
}

// TestANewAttemptStartsClean checks that a job claimed again, after a
// retryable failure, carries none of the last attempt's state: its
// progress, current node and start were the other robot's.
func TestANewAttemptStartsClean(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	tn := apitest.NewTenant(t, s)
	first, second := tn.CreateRobot(t, "first", apitest.RobotOpts{}), tn.CreateRobot(t, "second", apitest.RobotOpts{})
	job := tn.Enqueue(t, nil)
	l := first.Claim(t, 0)
	require.Equal(t, job.ID, l.Job.ID)
	first.Start(t, l)
	first.Call(t, "reportJobProgress", l.Job.ID, l.LeaseToken).OK(t, nil) // progress 10 at node "n"
	require.Equal(t, "QUEUED", first.Fail(t, l, "flaky", true).Status)

	again := second.Claim(t, 0)
	require.NotNil(t, again)
	require.Equal(t, job.ID, again.Job.ID)
	require.Equal(t, 2, again.Job.Attempt)
	require.Zero(t, again.Job.Progress, "the last attempt's progress")
	require.Nil(t, again.Job.CurrentNode, "the last attempt's node")
	require.Nil(t, again.Job.StartedAt, "the last attempt's start")
	second.Start(t, again)
	require.NotNil(t, tn.Job(t, job.ID).StartedAt, "this attempt's own start")
}
