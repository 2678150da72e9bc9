package jobtests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
	"fleetgraph/dispatch"
)

// Batching for robots, through the API: claimJobs leases several jobs in
// one call within the robot's free slots, completeJob and failJob with
// claimNext lease the next job in the same call, and startIfClaimed lets a
// robot skip startJob. Each job of a batch keeps its own lease and fencing.

const jbLeaseFields = `leaseToken leaseExpiresAt job { ` + apitest.JobFields + ` }`

const jbClaimJobsQuery = `mutation($n: Int!, $w: Int) { claimJobs(limit: $n, waitSeconds: $w) { ` + jbLeaseFields + ` } }`

// jbFinished is a job as completeJob or failJob return it, with the next lease.
type jbFinished struct {
	apitest.Job
	NextLease *apitest.Lease
}

const jbCompleteQuery = `mutation($j: ID!, $l: ID!, $r: JSON, $s: Boolean, $c: Boolean) {
	completeJob(jobId: $j, leaseToken: $l, result: $r, startIfClaimed: $s, claimNext: $c) { ` + apitest.JobFields + ` nextLease { ` + jbLeaseFields + ` } } }`

const jbFailQuery = `mutation($j: ID!, $l: ID!, $e: String!, $r: Boolean, $c: Boolean) {
	failJob(jobId: $j, leaseToken: $l, error: $e, retryable: $r, claimNext: $c) { ` + apitest.JobFields + ` nextLease { ` + jbLeaseFields + ` } } }`

const jbProgressQuery = `mutation($j: ID!, $l: ID!, $p: Int!, $s: Boolean) {
	reportJobProgress(jobId: $j, leaseToken: $l, progress: $p, startIfClaimed: $s) { ` + apitest.JobFields + ` } }`

// jbClaimJobs asks, as r, for up to limit jobs, waiting up to wait seconds.
func jbClaimJobs(t testing.TB, r *apitest.Robot, limit, wait int) []apitest.Lease {
	t.Helper()
	var out struct{ ClaimJobs []apitest.Lease }
	r.Tenant.Server.Do(t, r.Key, jbClaimJobsQuery, map[string]any{"n": limit, "w": wait}).OK(t, &out)
	require.NotNil(t, out.ClaimJobs, "claimJobs answers a list, never null")
	return out.ClaimJobs
}

// jbCompleteWith completes l as r, with the options startIfClaimed and claimNext.
func jbCompleteWith(t testing.TB, r *apitest.Robot, l apitest.Lease, startIfClaimed, claimNext bool) *apitest.Response {
	t.Helper()
	return r.Tenant.Server.Do(t, r.Key, jbCompleteQuery, map[string]any{"j": l.Job.ID, "l": l.LeaseToken, "r": map[string]any{"n": l.Job.Input["n"]}, "s": startIfClaimed, "c": claimNext})
}

func jbDecode(t testing.TB, resp *apitest.Response, field string) jbFinished {
	t.Helper()
	var out map[string]jbFinished
	resp.OK(t, &out)
	return out[field]
}

// jbEnqueue queues n jobs of the tenant's workflow in one transaction,
// with input {n: i} and the priority prio(i); it returns their ids in order.
func jbEnqueue(t testing.TB, tn *apitest.Tenant, n int, prio func(i int) int) []string {
	t.Helper()
	in := make([]map[string]any, n)
	for i := range in {
		in[i] = map[string]any{"workflowId": tn.Workflow, "input": map[string]any{"n": i}, "priority": prio(i)}
	}
	var out struct{ EnqueueJobs []struct{ ID string } }
	tn.Do(t, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": in}, &out)
	ids := make([]string, n)
	for i, j := range out.EnqueueJobs {
		ids[i] = j.ID
	}
	return ids
}

// jbHeld counts the jobs the robot holds, as stored.
func jbHeld(t testing.TB, s *apitest.Server, robot string) int {
	t.Helper()
	var n int
	require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM jobs WHERE robot_id = ? AND status IN ('CLAIMED', 'RUNNING')", robot).Scan(t.Context(), &n))
	return n
}

// jbQueued counts the tenant's QUEUED jobs.
func jbQueued(t testing.TB, tn *apitest.Tenant) int {
	t.Helper()
	var n int
	require.NoError(t, tn.Server.DB.NewRaw("SELECT count(*) FROM jobs WHERE tenant_id = ? AND status = 'QUEUED'", tn.User.Tenant).Scan(t.Context(), &n))
	return n
}

// jbLeaseRow is what a rescue of another job must leave alone.
type jbLeaseRow struct {
	Status         string     `bun:"status"`
	LeaseToken     *string    `bun:"lease_token"`
	LeaseExpiresAt *time.Time `bun:"lease_expires_at"`
	Revision       int        `bun:"revision"`
	Attempt        int        `bun:"attempt"`
}

func jbRow(t testing.TB, s *apitest.Server, id string) jbLeaseRow {
	t.Helper()
	var row jbLeaseRow
	require.NoError(t, s.DB.NewRaw("SELECT status, lease_token, lease_expires_at, revision, attempt FROM jobs WHERE id = ?", id).Scan(t.Context(), &row))
	return row
}

func TestJobBatchClaims(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})

	t.Run("claimJobs leases the best jobs within the free slots, each under its own lease", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "three-slots", apitest.RobotOpts{Slots: 3})
		prios := []int{0, 5, 1, 5, 2}
		ids := jbEnqueue(t, tn, len(prios), func(i int) int { return prios[i] })
		first := r.Claim(t, 0)
		require.NotNil(t, first)
		require.Equal(t, ids[1], first.Job.ID, "the oldest of the highest priority goes first")

		leases := jbClaimJobs(t, r, 10, 0)
		require.Len(t, leases, 2, "a limit above the free slots gets the free slots")
		require.Equal(t, []string{ids[3], ids[4]}, []string{leases[0].Job.ID, leases[1].Job.ID}, "best first: priority, then age")
		tokens := map[string]bool{first.LeaseToken: true}
		for _, l := range leases {
			require.False(t, tokens[l.LeaseToken], "two jobs of a batch share a lease token")
			tokens[l.LeaseToken] = true
			require.Equal(t, "CLAIMED", l.Job.Status)
			require.Equal(t, 1, l.Job.Attempt)
			require.Equal(t, r.ID, *l.Job.RobotID)
			jqSameTime(t, l.Job.ClaimedAt.Add(time.Hour), l.LeaseExpiresAt, "each job is leased for Lease")
			jqSameTime(t, l.LeaseExpiresAt, *l.Job.LeaseExpiresAt, "the lease is the job's")
		}
		require.Empty(t, jbClaimJobs(t, r, 3, 0), "no free slot, no job")
		require.Equal(t, 3, jbHeld(t, s, r.ID))
		require.Equal(t, 2, jbQueued(t, tn))

		// Each job of the batch is fenced on its own token.
		jqRequireRefused(t, r.Call(t, "startJob", leases[0].Job.ID, leases[1].LeaseToken), db.ReasonLeaseLost, "CLAIMED")
		r.Start(t, &leases[0])
		r.Start(t, &leases[1])
	})

	t.Run("a limit of one is claimJob", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "five-slots", apitest.RobotOpts{Slots: 5})
		ids := jbEnqueue(t, tn, 3, func(int) int { return 0 })
		got := jbClaimJobs(t, r, 1, 0)
		require.Len(t, got, 1)
		require.Equal(t, ids[0], got[0].Job.ID)
	})

	t.Run("a waiting claimJobs returns once jobs come, with what it leased", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "waiter", apitest.RobotOpts{Slots: 3})
		got := make(chan []apitest.Lease, 1)
		errs := make(chan error, 1)
		go func() {
			res, err := tn.Client.Do(t.Context(), r.Key, jbClaimJobsQuery, map[string]any{"n": 3, "w": jqWakeWait})
			if err == nil {
				var out struct{ ClaimJobs []apitest.Lease }
				if err = res.Decode(&out); err == nil {
					got <- out.ClaimJobs
					return
				}
			}
			errs <- err
		}()
		// Both jobs commit together, so whichever attempt sees one sees both
		// (claims poll hourly: the enqueue's NOTIFY wakes a waiting one).
		ids := jbEnqueue(t, tn, 2, func(int) int { return 0 })
		select {
		case leases := <-got:
			require.Len(t, leases, 2)
			require.ElementsMatch(t, ids, []string{leases[0].Job.ID, leases[1].Job.ID})
		case err := <-errs:
			require.NoError(t, err)
		case <-time.After(jqWakeWithin):
			require.FailNow(t, "the waiting claimJobs did not return")
		}
		require.Empty(t, jbClaimJobs(t, tn.CreateRobot(t, "idle", apitest.RobotOpts{Slots: 2}), 2, 1), "a wait with nothing queued returns an empty list")
	})

	t.Run("a waiting claimJobs counts as one waiting claim against the free slots", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "one-slot", apitest.RobotOpts{})
		type result struct {
			leases []apitest.Lease
			err    error
		}
		const claims = 3
		results := make(chan result, claims)
		for range claims {
			go func() {
				res, err := tn.Client.Do(t.Context(), r.Key, jbClaimJobsQuery, map[string]any{"n": 5, "w": jqWakeWait})
				var out struct{ ClaimJobs []apitest.Lease }
				if err == nil {
					err = res.Decode(&out)
				}
				results <- result{out.ClaimJobs, err}
			}()
		}
		receive := func() result {
			select {
			case res := <-results:
				return res
			case <-time.After(jqWakeWithin):
				require.FailNow(t, "a claim did not return")
				return result{}
			}
		}
		// One batch waits in the robot's one free slot; the others are
		// refused at once.
		for range claims - 1 {
			res := receive()
			require.Error(t, res.err, "a claim returned before any job was queued: %+v", res.leases)
			jqRequireWaitLimit(t, apitest.Claimed{Err: res.err}, 1)
		}
		jbEnqueue(t, tn, 2, func(int) int { return 0 })
		res := receive()
		require.NoError(t, res.err)
		require.Len(t, res.leases, 1, "the waiting batch gets what its one slot allows")
	})

	t.Run("completeJob and failJob with claimNext lease the next job in the same call", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "one-slot", apitest.RobotOpts{})
		ids := jbEnqueue(t, tn, 4, func(int) int { return 0 })
		l1 := r.Claim(t, 0)
		require.NotNil(t, l1)
		require.Equal(t, ids[0], l1.Job.ID)

		// With its only slot taken, the robot gets its next job as it
		// finishes the first: the slot frees and is taken in one transaction.
		done := jbDecode(t, jbCompleteWith(t, r, *l1, true, true), "completeJob")
		require.Equal(t, "COMPLETED", done.Status)
		require.NotNil(t, done.StartedAt, "a completed job was started, if only by its completion")
		require.NotNil(t, done.NextLease)
		l2 := *done.NextLease
		require.Equal(t, ids[1], l2.Job.ID)
		require.Equal(t, "CLAIMED", l2.Job.Status)
		require.Equal(t, r.ID, *l2.Job.RobotID)
		require.Nil(t, l2.Job.StartedAt)
		require.Equal(t, 1, jbHeld(t, s, r.ID))

		failed := jbDecode(t, s.Do(t, r.Key, jbFailQuery, map[string]any{"j": l2.Job.ID, "l": l2.LeaseToken, "e": "broke", "r": false, "c": true}), "failJob")
		require.Equal(t, "FAILED", failed.Status)
		require.NotNil(t, failed.NextLease)
		l3 := *failed.NextLease
		require.Equal(t, ids[2], l3.Job.ID)

		// A refused completion claims nothing.
		resp := jbCompleteWith(t, r, l3, false, true)
		jqRequireRefused(t, resp, db.ReasonIllegalTransition, "CLAIMED")
		resp = s.Do(t, r.Key, jbCompleteQuery, map[string]any{"j": l3.Job.ID, "l": uuid.NewString(), "s": true, "c": true})
		jqRequireRefused(t, resp, db.ReasonLeaseLost, "CLAIMED")
		require.Equal(t, 1, jbQueued(t, tn), "a refused completion leased a job")
		require.Equal(t, "CLAIMED", tn.Job(t, l3.Job.ID).Status)

		done = jbDecode(t, jbCompleteWith(t, r, l3, true, true), "completeJob")
		require.NotNil(t, done.NextLease)
		l4 := *done.NextLease
		require.Equal(t, ids[3], l4.Job.ID)

		// No job left: the completion stands, with no next lease.
		done = jbDecode(t, jbCompleteWith(t, r, l4, true, true), "completeJob")
		require.Equal(t, "COMPLETED", done.Status)
		require.Nil(t, done.NextLease)
		require.Equal(t, "COMPLETED", tn.Job(t, l4.Job.ID).Status)
		require.Zero(t, jbHeld(t, s, r.ID))

		// Not asked, not leased; and nextLease is null everywhere else.
		more := jbEnqueue(t, tn, 2, func(int) int { return 0 })
		l5 := r.Claim(t, 0)
		require.NotNil(t, l5)
		done = jbDecode(t, jbCompleteWith(t, r, *l5, true, false), "completeJob")
		require.Nil(t, done.NextLease)
		require.Equal(t, 1, jbQueued(t, tn))
		var read struct {
			Job struct{ NextLease *apitest.Lease }
		}
		tn.Do(t, `query($id: ID!) { job(id: $id) { nextLease { leaseToken } } }`, map[string]any{"id": more[0]}, &read)
		require.Nil(t, read.Job.NextLease)
	})

	t.Run("a failed job requeued without backoff may come straight back", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "one-slot", apitest.RobotOpts{})
		id := tn.Enqueue(t, nil).ID
		l := r.Claim(t, 0)
		require.NotNil(t, l)
		failed := jbDecode(t, s.Do(t, r.Key, jbFailQuery, map[string]any{"j": id, "l": l.LeaseToken, "e": "flaky", "r": true, "c": true}), "failJob")
		require.Equal(t, "QUEUED", failed.Status)
		require.Equal(t, 1, failed.Attempt)
		require.NotNil(t, failed.NextLease)
		require.Equal(t, id, failed.NextLease.Job.ID)
		require.Equal(t, 2, failed.NextLease.Job.Attempt)
		require.NotEqual(t, l.LeaseToken, failed.NextLease.LeaseToken)
		jqRequireRefused(t, r.Call(t, "startJob", id, l.LeaseToken), db.ReasonLeaseLost, "CLAIMED")
	})

	t.Run("startIfClaimed: progress or completion starts a CLAIMED job in the same call", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "two-slots", apitest.RobotOpts{Slots: 2})
		jbEnqueue(t, tn, 2, func(int) int { return 0 })
		leases := jbClaimJobs(t, r, 2, 0)
		require.Len(t, leases, 2)

		var out struct{ ReportJobProgress apitest.Job }
		s.Do(t, r.Key, jbProgressQuery, map[string]any{"j": leases[0].Job.ID, "l": leases[0].LeaseToken, "p": 30, "s": true}).OK(t, &out)
		p := out.ReportJobProgress
		require.Equal(t, "RUNNING", p.Status)
		require.Equal(t, 30, p.Progress)
		require.NotNil(t, p.StartedAt)
		jqSameTime(t, p.UpdatedAt, *p.StartedAt, "the report started the job")
		jqSameTime(t, p.UpdatedAt.Add(time.Hour), *p.LeaseExpiresAt, "the report renewed the lease")
		require.Equal(t, leases[0].Job.Revision+1, p.Revision, "one statement, one revision")
		// Once RUNNING, the option changes nothing: the start stays.
		s.Do(t, r.Key, jbProgressQuery, map[string]any{"j": leases[0].Job.ID, "l": leases[0].LeaseToken, "p": 60, "s": true}).OK(t, &out)
		jqSameTime(t, *p.StartedAt, *out.ReportJobProgress.StartedAt, "a later report keeps the start")

		done := jbDecode(t, jbCompleteWith(t, r, leases[1], true, false), "completeJob")
		require.Equal(t, "COMPLETED", done.Status)
		require.NotNil(t, done.StartedAt)
		jqSameTime(t, *done.FinishedAt, *done.StartedAt, "the completion started the job")
		require.Equal(t, 100, done.Progress)
		require.Equal(t, leases[1].Job.Revision+1, done.Revision)

		// The job's completion went to the webhook outbox path as any other:
		// a COMPLETED job is never live again.
		jqRequireRefused(t, jbCompleteWith(t, r, leases[1], true, false), db.ReasonIllegalTransition, "COMPLETED")
		done = jbDecode(t, jbCompleteWith(t, r, leases[0], true, false), "completeJob")
		require.Equal(t, "COMPLETED", done.Status)
		jqSameTime(t, *p.StartedAt, *done.StartedAt, "completing a RUNNING job keeps its start")
	})

	t.Run("rescuing one job of a batch leaves the others alone", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "batcher", apitest.RobotOpts{Slots: 3})
		jbEnqueue(t, tn, 3, func(int) int { return 0 })
		leases := jbClaimJobs(t, r, 3, 0)
		require.Len(t, leases, 3)
		r.Start(t, &leases[1]) // one RUNNING, two CLAIMED
		lost, kept := leases[0], leases[1:]
		before := map[string]jbLeaseRow{}
		for _, l := range kept {
			before[l.Job.ID] = jbRow(t, s, l.Job.ID)
		}

		jqExpire(t, s, lost.Job.ID)
		apitest.Eventually(t, apitest.Patience, "the expired lease is rescued", func() bool { return jbRow(t, s, lost.Job.ID).Status == "QUEUED" })
		for _, l := range kept {
			require.Equal(t, before[l.Job.ID], jbRow(t, s, l.Job.ID), "the rescue of another job of the batch changed job %s", l.Job.ID)
		}
		jqRequireRefused(t, r.Call(t, "startJob", lost.Job.ID, lost.LeaseToken), db.ReasonLeaseLost, "QUEUED")

		// The others finish under their own leases, and the rescued job
		// comes back as a claim-next, under a new one.
		done := jbDecode(t, jbCompleteWith(t, r, kept[0], true, true), "completeJob")
		require.Equal(t, "COMPLETED", done.Status)
		require.NotNil(t, done.NextLease)
		again := *done.NextLease
		require.Equal(t, lost.Job.ID, again.Job.ID)
		require.Equal(t, 2, again.Job.Attempt)
		require.NotEqual(t, lost.LeaseToken, again.LeaseToken)
		require.Equal(t, "COMPLETED", jbDecode(t, jbCompleteWith(t, r, kept[1], true, false), "completeJob").Status)
		require.Equal(t, "COMPLETED", jbDecode(t, jbCompleteWith(t, r, again, true, false), "completeJob").Status)
		jqRequireRefused(t, jbCompleteWith(t, r, lost, true, false), db.ReasonLeaseLost, "COMPLETED")
	})
}

// jbWorker works as one robot with batches: it claims up to a few jobs at
// once, then completes or fails each (starting it first, or not) with
// claimNext, working on what comes back, until a claim brings nothing and
// no job is left queued. held counts the robot's jobs as its workers see
// them (from a lease's arrival to its release's sending, a time within
// which the server held the lease): it must never exceed slots.
//
// A robot's two workers share its slots, so a worker's waiting claim may be
// refused (WAIT_LIMIT) while the other holds them or waits itself; the
// refused worker then waits until the other has had an answer (it tells on
// tell and listens on woken), and claims again.
func jbWorker(ctx context.Context, tn *apitest.Tenant, r *apitest.Robot, worker int, held *atomic.Int32, plan jcPlan, tell chan<- struct{}, woken <-chan struct{}) ([]jcHold, error) {
	answered := func() {
		select {
		case tell <- struct{}{}:
		default:
		}
	}
	defer answered()
	var holds []jcHold
	var mine []apitest.Lease
	call := func(query string, vars map[string]any, out any) error {
		res, err := tn.Client.Do(ctx, r.Key, query, vars)
		if err != nil {
			return err
		}
		return res.Decode(out)
	}
	got := func(leases ...apitest.Lease) error {
		if n := held.Add(int32(len(leases))); int(n) > r.Slots {
			return fmt.Errorf("the robot holds %d jobs with %d slots", n, r.Slots)
		}
		mine = append(mine, leases...)
		return nil
	}
	for round := 0; ; round++ {
		if len(mine) == 0 {
			var out struct{ ClaimJobs []apitest.Lease }
			limit := 1 + (round+worker)%(r.Slots+2) // sometimes more than the slots
			err := call(jbClaimJobsQuery, map[string]any{"n": limit, "w": 1}, &out)
			answered()
			if err != nil && strings.Contains(err.Error(), dispatch.ReasonWaitLimit) {
				select {
				case <-woken:
					continue
				case <-ctx.Done():
					return holds, ctx.Err()
				case <-time.After(time.Minute):
					return holds, errors.New("the robot's other worker did not answer for a minute")
				}
			}
			if err != nil {
				return holds, fmt.Errorf("claiming: %w", err)
			}
			if len(out.ClaimJobs) == 0 {
				var queued int
				if err := tn.Server.DB.NewRaw("SELECT count(*) FROM jobs WHERE tenant_id = ? AND status = 'QUEUED'", tn.User.Tenant).Scan(ctx, &queued); err != nil {
					return holds, err
				}
				if queued == 0 {
					return holds, nil
				}
				continue
			}
			if err := got(out.ClaimJobs...); err != nil {
				return holds, err
			}
		}
		l := mine[0]
		mine = mine[1:]
		h := jcHold{job: l.Job.ID, token: l.LeaseToken, robot: r.ID, n: int(l.Job.Input["n"].(float64)), attempt: l.Job.Attempt, claimed: time.Now()}
		vars := map[string]any{"j": h.job, "l": h.token, "c": true}
		startFirst := (h.n+round)%3 == 0
		if startFirst {
			var started struct{ StartJob struct{ Status string } }
			if err := call(apitest.FencedOpNamed("startJob").Query, vars, &started); err != nil {
				return holds, fmt.Errorf("starting %s: %w", h.job, err)
			}
		}
		h.failed = h.attempt <= plan(h.n)
		var out map[string]jbFinished
		query, field := jbCompleteQuery, "completeJob"
		if h.failed {
			query, field = jbFailQuery, "failJob"
			vars["e"], vars["r"] = fmt.Sprintf("attempt %d failed", h.attempt), true
		} else {
			vars["r"], vars["s"] = map[string]any{"robot": r.ID, "n": h.n}, !startFirst
		}
		held.Add(-1)
		h.released = time.Now()
		err := call(query, vars, &out)
		answered()
		if err != nil {
			return holds, fmt.Errorf("%s %s: %w", field, h.job, err)
		}
		if want := jcExpectedStatus(h); out[field].Status != want {
			return holds, fmt.Errorf("job %s (n %d) attempt %d: got %s, want %s", h.job, h.n, h.attempt, out[field].Status, want)
		}
		holds = append(holds, h)
		if next := out[field].NextLease; next != nil {
			if err := got(*next); err != nil {
				return holds, err
			}
		}
	}
}

func TestJobBatchConcurrency(t *testing.T) {
	t.Parallel()

	t.Run("batched claims and claim-next drain the queue: no job held twice, slots never exceeded", func(t *testing.T) {
		t.Parallel()
		// Failed jobs are claimable again at once; leases never run out.
		s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
		const robots, jobs = 12, 800 // batches of 400; 1,200 once, cut for the suite's time
		plan := func(n int) int {
			switch {
			case n%100 == 0:
				return 3
			case n%10 == 3:
				return 1
			}
			return 0
		}
		tn := apitest.NewTenant(t, s)
		var rs []*apitest.Robot
		for i := range robots {
			rs = append(rs, tn.CreateRobot(t, fmt.Sprintf("robot-%02d", i), apitest.RobotOpts{Slots: i%4 + 1}))
		}
		for b := 0; b < jobs; b += 400 {
			in := make([]map[string]any, 400)
			for i := range in {
				in[i] = map[string]any{"workflowId": tn.Workflow, "input": map[string]any{"n": b + i}, "priority": (b + i) % 7, "maxAttempts": 3}
			}
			tn.Do(t, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": in}, nil)
		}
		var (
			mu    sync.Mutex
			holds []jcHold
			errs  []error
			wg    sync.WaitGroup
		)
		began := time.Now()
		for _, r := range rs {
			held := new(atomic.Int32)
			wake := [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}
			for w := range 2 { // two workers race for each robot's slots
				wg.Go(func() {
					h, err := jbWorker(t.Context(), tn, r, w, held, plan, wake[1-w], wake[w])
					mu.Lock()
					defer mu.Unlock()
					holds = append(holds, h...)
					if err != nil {
						errs = append(errs, fmt.Errorf("%s/%d: %w", r.Name, w, err))
					}
				})
			}
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		t.Logf("%d robots (2 workers each) drained %d jobs in %d leases in %s", robots, jobs, len(holds), time.Since(began).Round(time.Millisecond))

		byJob := jcRequireSequential(t, holds)
		require.Len(t, byJob, jobs)
		var rows []jcRow
		require.NoError(t, s.DB.NewRaw(`SELECT id, status, attempt, robot_id, result, error, (input->>'n')::int AS n, finished_at IS NOT NULL AS finished
			FROM jobs WHERE tenant_id = ?`, tn.User.Tenant).Scan(t.Context(), &rows))
		require.Len(t, rows, jobs)
		for _, row := range rows {
			hs := byJob[row.ID]
			last := hs[len(hs)-1]
			require.Equal(t, min(plan(row.N)+1, 3), len(hs), "job %s (n %d): leases", row.ID, row.N)
			require.Equal(t, len(hs), row.Attempt, "job %s: the attempt counts the leases", row.ID)
			require.Equal(t, last.robot, *row.RobotID, "job %s: stored as another robot's than its last holder's", row.ID)
			require.True(t, row.Finished, "job %s", row.ID)
			if plan(row.N) >= 3 {
				require.Equal(t, "FAILED", row.Status, "job %s (n %d)", row.ID, row.N)
				continue
			}
			require.Equal(t, "COMPLETED", row.Status, "job %s (n %d)", row.ID, row.N)
			require.Equal(t, map[string]any{"robot": last.robot, "n": float64(row.N)}, row.Result)
		}
		var live int
		require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM jobs WHERE tenant_id = ? AND status IN ('QUEUED', 'CLAIMED', 'RUNNING')", tn.User.Tenant).Scan(t.Context(), &live))
		require.Zero(t, live)
	})

	t.Run("racing batched claims of one robot never exceed its slots", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "seven-slots", apitest.RobotOpts{Slots: 7})
		jbEnqueue(t, tn, 40, func(int) int { return 0 })
		const claimers = 10
		type result struct {
			leases []apitest.Lease
			err    error
		}
		results := make(chan result, claimers)
		for i := range claimers {
			go func() {
				res, err := tn.Client.Do(t.Context(), r.Key, jbClaimJobsQuery, map[string]any{"n": 1 + i%5, "w": 0})
				var out struct{ ClaimJobs []apitest.Lease }
				if err == nil {
					err = res.Decode(&out)
				}
				results <- result{out.ClaimJobs, err}
			}()
		}
		seen := map[string]bool{}
		for range claimers {
			select {
			case res := <-results:
				require.NoError(t, res.err)
				for _, l := range res.leases {
					require.False(t, seen[l.Job.ID], "job %s was leased twice", l.Job.ID)
					seen[l.Job.ID] = true
				}
			case <-time.After(60 * time.Second):
				require.FailNow(t, "a claim did not return")
			}
		}
		require.Len(t, seen, 7, "a robot with 7 slots holds exactly 7 jobs after 10 racing batches")
		require.Equal(t, 7, jbHeld(t, s, r.ID))
	})

	t.Run("racing claim-next, batches and single claims of one robot keep its slots exact", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "three-slots", apitest.RobotOpts{Slots: 3})
		jbEnqueue(t, tn, 30, func(int) int { return 0 })
		first := jbClaimJobs(t, r, 3, 0)
		require.Len(t, first, 3)
		type result struct {
			leases []apitest.Lease
			err    error
		}
		results := make(chan result, 16)
		run := func(query string, vars map[string]any, pick func(map[string]jbFinished, []apitest.Lease, *apitest.Lease) []apitest.Lease) {
			go func() {
				res, err := tn.Client.Do(t.Context(), r.Key, query, vars)
				if err != nil {
					results <- result{err: err}
					return
				}
				var out map[string]jbFinished
				var batch struct{ ClaimJobs []apitest.Lease }
				var single struct{ ClaimJob *apitest.Lease }
				switch {
				case query == jbClaimJobsQuery:
					err = res.Decode(&batch)
				case query == apitest.ClaimQuery:
					err = res.Decode(&single)
				default:
					err = res.Decode(&out)
				}
				results <- result{pick(out, batch.ClaimJobs, single.ClaimJob), err}
			}()
		}
		calls := 0
		for _, l := range first {
			calls++
			run(jbCompleteQuery, map[string]any{"j": l.Job.ID, "l": l.LeaseToken, "s": true, "c": true}, func(out map[string]jbFinished, _ []apitest.Lease, _ *apitest.Lease) []apitest.Lease {
				if out["completeJob"].Status != "COMPLETED" {
					return nil
				}
				if n := out["completeJob"].NextLease; n != nil {
					return []apitest.Lease{*n}
				}
				return []apitest.Lease{}
			})
		}
		for i := range 6 {
			calls++
			run(jbClaimJobsQuery, map[string]any{"n": 1 + i%3, "w": 0}, func(_ map[string]jbFinished, b []apitest.Lease, _ *apitest.Lease) []apitest.Lease { return b })
		}
		for range 4 {
			calls++
			run(apitest.ClaimQuery, map[string]any{"w": 0}, func(_ map[string]jbFinished, _ []apitest.Lease, one *apitest.Lease) []apitest.Lease {
				if one == nil {
					return []apitest.Lease{}
				}
				return []apitest.Lease{*one}
			})
		}
		seen := map[string]bool{}
		for range calls {
			select {
			case res := <-results:
				require.NoError(t, res.err)
				require.NotNil(t, res.leases, "a completion did not complete")
				for _, l := range res.leases {
					require.False(t, seen[l.Job.ID], "job %s was leased twice", l.Job.ID)
					seen[l.Job.ID] = true
				}
			case <-time.After(60 * time.Second):
				require.FailNow(t, "a call did not return")
			}
		}
		require.Len(t, seen, 3, "the three freed slots were taken exactly once")
		require.Equal(t, 3, jbHeld(t, s, r.ID))
		var completed int
		require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM jobs WHERE robot_id = ? AND status = 'COMPLETED'", r.ID).Scan(t.Context(), &completed))
		require.Equal(t, 3, completed)
	})
}
