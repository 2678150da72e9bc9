package jobtests

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
)

// Many robots drain a big queue at once through the real HTTP API. Every
// job must end exactly as planned, and no job may ever be held by two
// robots: each claim's lease ends before the next claim of the same job.

// 1,000 jobs give each of the 50 workers about 20 claims, racing the
// others on every one: enough for the races, and half the work of the
// 2,000 these tests once drained, which kept the graph package near go
// test's ten-minute limit when two suites ran at once on two cores.
const (
	jcRobots    = 20
	jcJobs      = 1000
	jcBatchSize = 500
)

// jcHold is one claim of a job as a robot saw it. Its interval, from the
// claim's response to the request that gave the job up, lies inside the
// time the server had the job leased to the robot, so two holds of a job
// that overlap prove two live leases.
type jcHold struct {
	job, token, robot string
	n, attempt        int       // the job's input n, and the claim's attempt
	claimed           time.Time // the claim's response arrived
	released          time.Time // the complete/fail request was sent
	failed            bool      // released with failJob
}

// jcPlan says how often each job (by its input n) fails before it
// completes; 3 or more means every attempt fails.
type jcPlan func(n int) int

// jcWorker claims, starts and finishes jobs as one robot until a claim
// returns nothing and no job is left queued.
func jcWorker(ctx context.Context, tn *apitest.Tenant, r *apitest.Robot, plan jcPlan) ([]jcHold, error) {
	var holds []jcHold
	call := func(query string, vars map[string]any, out any) error {
		res, err := tn.Client.Do(ctx, r.Key, query, vars)
		if err != nil {
			return err
		}
		return res.Decode(out)
	}
	for {
		var claim struct {
			ClaimJob *struct {
				LeaseToken string
				Job        struct {
					ID      string
					Attempt int
					Input   struct{ N int }
				}
			}
		}
		if err := call(`mutation { claimJob(waitSeconds: 1) { leaseToken job { id attempt input } } }`, nil, &claim); err != nil {
			return holds, fmt.Errorf("claiming: %w", err)
		}
		if claim.ClaimJob == nil {
			var queued int
			if err := tn.Server.DB.NewRaw("SELECT count(*) FROM jobs WHERE tenant_id = ? AND status = 'QUEUED'", tn.User.Tenant).Scan(ctx, &queued); err != nil {
				return holds, err
			}
			if queued == 0 {
				return holds, nil
			}
			continue
		}
		c := claim.ClaimJob
		h := jcHold{job: c.Job.ID, token: c.LeaseToken, robot: r.ID, n: c.Job.Input.N, attempt: c.Job.Attempt, claimed: time.Now()}
		vars := map[string]any{"j": h.job, "l": h.token}
		var started struct{ StartJob struct{ Status string } }
		if err := call(apitest.FencedOpNamed("startJob").Query, vars, &started); err != nil {
			return holds, fmt.Errorf("starting %s: %w", h.job, err)
		}
		var status string
		h.failed = h.attempt <= plan(h.n)
		h.released = time.Now()
		if h.failed {
			var out struct{ FailJob struct{ Status string } }
			vars["e"] = fmt.Sprintf("attempt %d failed", h.attempt)
			err := call(`mutation($j: ID!, $l: ID!, $e: String!) { failJob(jobId: $j, leaseToken: $l, error: $e, retryable: true) { status } }`, vars, &out)
			if err != nil {
				return holds, fmt.Errorf("failing %s: %w", h.job, err)
			}
			status = out.FailJob.Status
		} else {
			var out struct{ CompleteJob struct{ Status string } }
			vars["r"] = map[string]any{"robot": r.ID, "n": h.n}
			err := call(`mutation($j: ID!, $l: ID!, $r: JSON) { completeJob(jobId: $j, leaseToken: $l, result: $r) { status } }`, vars, &out)
			if err != nil {
				return holds, fmt.Errorf("completing %s: %w", h.job, err)
			}
			status = out.CompleteJob.Status
		}
		if want := jcExpectedStatus(h); status != want {
			return holds, fmt.Errorf("job %s (n %d) attempt %d: got %s, want %s", h.job, h.n, h.attempt, status, want)
		}
		holds = append(holds, h)
	}
}

// jcExpectedStatus is the status a job must have after hold.
func jcExpectedStatus(h jcHold) string {
	switch {
	case !h.failed:
		return "COMPLETED"
	case h.attempt < 3: // maxAttempts is 3
		return "QUEUED"
	default:
		return "FAILED"
	}
}

// jcRun creates the robots (1-4 slots each, as many workers as slots), queues
// the jobs and drains them; it returns every hold, and the robots by id.
func jcRun(t *testing.T, s *apitest.Server, plan jcPlan) (*apitest.Tenant, []jcHold, map[string]*apitest.Robot) {
	tn := apitest.NewTenant(t, s)
	var robots []*apitest.Robot
	for i := range jcRobots {
		robots = append(robots, tn.CreateRobot(t, fmt.Sprintf("robot-%02d", i), apitest.RobotOpts{Slots: i%4 + 1}))
	}
	for b := 0; b < jcJobs; b += jcBatchSize {
		in := make([]map[string]any, jcBatchSize)
		for i := range in {
			in[i] = map[string]any{"workflowId": tn.Workflow, "input": map[string]any{"n": b + i}, "priority": (b + i) % 7, "maxAttempts": 3}
		}
		var out struct{ EnqueueJobs []struct{ ID string } }
		tn.Do(t, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": in}, &out)
		require.Len(t, out.EnqueueJobs, jcBatchSize)
	}

	began := time.Now()
	var (
		mu    sync.Mutex
		holds []jcHold
		errs  []error
		wg    sync.WaitGroup
	)
	workers := 0
	for i, r := range robots {
		for range i%4 + 1 {
			workers++
			wg.Go(func() {
				h, err := jcWorker(t.Context(), tn, r, plan)
				mu.Lock()
				defer mu.Unlock()
				holds = append(holds, h...)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", r.Name, err))
				}
			})
		}
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	t.Logf("%d robots with %d workers drained %d jobs in %d claims in %s", len(robots), workers, jcJobs, len(holds), time.Since(began).Round(time.Millisecond))
	byID := map[string]*apitest.Robot{}
	for _, r := range robots {
		byID[r.ID] = r
	}
	return tn, holds, byID
}

// jcRow is a job as stored.
type jcRow struct {
	ID       string         `bun:"id"`
	Status   string         `bun:"status"`
	Attempt  int            `bun:"attempt"`
	RobotID  *string        `bun:"robot_id"`
	Result   map[string]any `bun:"result,type:jsonb"`
	Error    *string        `bun:"error"`
	N        int            `bun:"n"`
	Finished bool           `bun:"finished"`
}

func jcRows(t *testing.T, s *apitest.Server, tn *apitest.Tenant) map[string]jcRow {
	var rows []jcRow
	require.NoError(t, s.DB.NewRaw(`SELECT id, status, attempt, robot_id, result, error, (input->>'n')::int AS n, finished_at IS NOT NULL AS finished
		FROM jobs WHERE tenant_id = ?`, tn.User.Tenant).Scan(t.Context(), &rows))
	out := make(map[string]jcRow, len(rows))
	for _, r := range rows {
		out[r.ID] = r
	}
	require.Len(t, out, jcJobs, "jobs were lost or made up")
	return out
}

// jcRequireSequential asserts that no two holds of a job overlap and that
// their attempts count up from 1, and returns the holds by job.
func jcRequireSequential(t *testing.T, holds []jcHold) map[string][]jcHold {
	byJob := map[string][]jcHold{}
	tokens := map[string]bool{}
	for _, h := range holds {
		require.False(t, tokens[h.token], "lease token %s was handed out twice", h.token)
		tokens[h.token] = true
		byJob[h.job] = append(byJob[h.job], h)
	}
	for job, hs := range byJob {
		slices.SortFunc(hs, func(a, b jcHold) int { return a.claimed.Compare(b.claimed) })
		for i, h := range hs {
			require.Equal(t, i+1, h.attempt, "job %s: claims out of order: %+v", job, hs)
			if i > 0 {
				prev := hs[i-1]
				require.True(t, prev.released.Before(h.claimed),
					"job %s was held by two live leases: %s (claimed %s, released %s) and %s (claimed %s)",
					job, prev.robot, prev.claimed.Format(time.StampMicro), prev.released.Format(time.StampMicro), h.robot, h.claimed.Format(time.StampMicro))
				require.True(t, prev.failed, "job %s was claimed again after it completed", job)
			}
		}
	}
	return byJob
}

func TestJobQueueConcurrency(t *testing.T) {
	t.Parallel()

	t.Run("every job completes exactly once", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t)
		tn, holds, robots := jcRun(t, s, func(int) int { return 0 })
		require.Len(t, holds, jcJobs, "every job is claimed exactly once")
		byJob := jcRequireSequential(t, holds)
		require.Len(t, byJob, jcJobs, "no job completed twice, none was left out")
		perRobot := map[string]int{}
		for id, row := range jcRows(t, s, tn) {
			hs := byJob[id]
			require.Len(t, hs, 1, "job %s", id)
			h := hs[0]
			require.Equal(t, "COMPLETED", row.Status, "job %s", id)
			require.Equal(t, 1, row.Attempt, "job %s", id)
			require.True(t, row.Finished, "job %s", id)
			require.Equal(t, h.robot, *row.RobotID, "job %s is stored as another robot's than the one that claimed it", id)
			require.Equal(t, map[string]any{"robot": h.robot, "n": float64(row.N)}, row.Result, "job %s", id)
			perRobot[fmt.Sprintf("%s(%d slots)", robots[h.robot].Name, robots[h.robot].Slots)]++
		}
		t.Logf("jobs per robot: %v", perRobot)
		var live int
		require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM jobs WHERE status IN ('QUEUED', 'CLAIMED', 'RUNNING')").Scan(t.Context(), &live))
		require.Zero(t, live)
	})

	t.Run("retryable failures are retried on other claims, never overlapping", func(t *testing.T) {
		t.Parallel()
		// Failed jobs are claimable again at once; the fail's NOTIFY wakes
		// waiting claims.
		s := apitest.New(t, apitest.Options{Queue: db.QueueConfig{
			Lease: time.Hour, RetryBackoff: 0, MaxRetryBackoff: 0, OfflineAfter: time.Hour, HeartbeatSample: time.Minute,
		}})
		// About one job in eight fails at least once; one in a hundred
		// always does.
		plan := func(n int) int {
			switch {
			case n%100 == 0:
				return 3
			case n%50 == 7:
				return 2
			case n%10 == 3:
				return 1
			}
			return 0
		}
		tn, holds, _ := jcRun(t, s, plan)
		byJob := jcRequireSequential(t, holds)
		require.Len(t, byJob, jcJobs)
		statuses := map[string]int{}
		for id, row := range jcRows(t, s, tn) {
			hs := byJob[id]
			fails := plan(row.N)
			last := hs[len(hs)-1]
			require.Equal(t, min(fails+1, 3), len(hs), "job %s (n %d): claims", id, row.N)
			require.Equal(t, len(hs), row.Attempt, "job %s (n %d): the attempt counts the claims", id, row.N)
			require.Equal(t, last.robot, *row.RobotID, "job %s: stored as another robot's than its last claimer's", id)
			require.True(t, row.Finished, "job %s", id)
			statuses[row.Status]++
			if fails >= 3 {
				require.Equal(t, "FAILED", row.Status, "job %s (n %d)", id, row.N)
				require.Equal(t, "attempt 3 failed", *row.Error)
				require.Nil(t, row.Result)
				continue
			}
			require.Equal(t, "COMPLETED", row.Status, "job %s (n %d)", id, row.N)
			require.Nil(t, row.Error, "job %s: a completed job keeps no earlier attempt's error", id)
			require.Equal(t, map[string]any{"robot": last.robot, "n": float64(row.N)}, row.Result)
		}
		require.Equal(t, map[string]int{"COMPLETED": jcJobs - jcJobs/100, "FAILED": jcJobs / 100}, statuses)
	})

	t.Run("racing claims of one robot never exceed its slots", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t)
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "three-slots", apitest.RobotOpts{Slots: 3})
		var in []map[string]any
		for range 20 {
			in = append(in, map[string]any{"workflowId": tn.Workflow})
		}
		tn.Do(t, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": in}, nil)
		const claimers = 12
		results := make(chan apitest.Claimed, claimers)
		for range claimers {
			go func() { results <- <-r.ClaimAsync(t, 0) }()
		}
		leases := map[string]bool{}
		for range claimers {
			l := apitest.ReceiveClaim(t, results, 30*time.Second)
			if l != nil {
				require.False(t, leases[l.Job.ID], "job %s was claimed twice", l.Job.ID)
				leases[l.Job.ID] = true
			}
		}
		require.Len(t, leases, 3, "a robot with 3 slots holds exactly 3 jobs after 12 racing claims")
		var out struct{ Jobs struct{ TotalCount int } }
		tn.Do(t, `{ jobs(filter: {status: CLAIMED}) { totalCount } }`, nil, &out)
		require.Equal(t, 3, out.Jobs.TotalCount)
	})
}
