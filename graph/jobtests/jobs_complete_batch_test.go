package jobtests

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/apitest"
	"fleetgraph/db"
)

// completeJobs: a robot completes a batch of the jobs it holds in one
// call and one transaction, all or nothing, and may lease its next batch
// in the same transaction.

const jbCompleteJobsQuery = `mutation($c: [JobCompletionInput!]!, $s: Boolean, $n: Int) {
	completeJobs(completions: $c, startIfClaimed: $s, claimNext: $n) { jobs { ` + apitest.JobFields + ` } nextLeases { ` + jbLeaseFields + ` } } }`

// jcbDone is completeJobs' answer.
type jcbDone struct {
	Jobs       []apitest.Job
	NextLeases []apitest.Lease
}

// jcbCompleteJobs completes leases as r (each with result {n: its input's
// n}) in one call, with startIfClaimed and claimNext.
func jcbCompleteJobs(t testing.TB, r *apitest.Robot, leases []apitest.Lease, startIfClaimed bool, claimNext int) *apitest.Response {
	t.Helper()
	c := make([]any, len(leases))
	for i, l := range leases {
		c[i] = map[string]any{"jobId": l.Job.ID, "leaseToken": l.LeaseToken, "result": map[string]any{"n": l.Job.Input["n"]}}
	}
	return r.Tenant.Server.Do(t, r.Key, jbCompleteJobsQuery, map[string]any{"c": c, "s": startIfClaimed, "n": claimNext})
}

func jcbDecode(t testing.TB, resp *apitest.Response) jcbDone {
	t.Helper()
	var out struct{ CompleteJobs jcbDone }
	resp.OK(t, &out)
	return out.CompleteJobs
}

func TestCompleteJobs(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})

	t.Run("a batch completes in the order given and leases the next within the freed slots", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "four-slots", apitest.RobotOpts{Slots: 4})
		ids := jbEnqueue(t, tn, 6, func(int) int { return 0 })
		leases := jbClaimJobs(t, r, 4, 0)
		require.Len(t, leases, 4)
		r.Start(t, &leases[2]) // one RUNNING, three CLAIMED
		batch := slices.Clone(leases)
		slices.Reverse(batch)

		done := jcbDecode(t, jcbCompleteJobs(t, r, batch, true, 3))
		require.Len(t, done.Jobs, 4)
		for i, j := range done.Jobs {
			require.Equal(t, batch[i].Job.ID, j.ID, "the jobs come back in the order given")
			require.Equal(t, "COMPLETED", j.Status)
			require.Equal(t, 100, j.Progress)
			require.Equal(t, map[string]any{"n": batch[i].Job.Input["n"]}, j.Result, "each job keeps its own result")
			require.NotNil(t, j.StartedAt)
			require.NotNil(t, j.FinishedAt)
			require.Nil(t, j.LeaseExpiresAt)
			require.Equal(t, batch[i].Job.Revision+1+boolInt(batch[i].Job.ID == leases[2].Job.ID), j.Revision, "one statement, one revision")
			require.Equal(t, tn.Job(t, j.ID).Status, "COMPLETED")
		}
		jqSameTime(t, *done.Jobs[0].FinishedAt, *done.Jobs[0].StartedAt, "the completion started a CLAIMED job")
		require.True(t, done.Jobs[1].StartedAt.Before(*done.Jobs[1].FinishedAt), "a RUNNING job keeps its start")

		require.Len(t, done.NextLeases, 2, "claimNext takes what is queued, up to n")
		require.Equal(t, []string{ids[4], ids[5]}, []string{done.NextLeases[0].Job.ID, done.NextLeases[1].Job.ID}, "best first")
		for _, l := range done.NextLeases {
			require.Equal(t, "CLAIMED", l.Job.Status)
			require.Equal(t, r.ID, *l.Job.RobotID)
		}
		require.Equal(t, 2, jbHeld(t, s, r.ID))

		// No claimNext, no lease; nextLeases is an empty list.
		done = jcbDecode(t, jcbCompleteJobs(t, r, done.NextLeases, true, 0))
		require.Len(t, done.Jobs, 2)
		require.NotNil(t, done.NextLeases)
		require.Empty(t, done.NextLeases)
		require.Zero(t, jbHeld(t, s, r.ID))
		// A completed batch cannot be completed again.
		jqRequireRefused(t, jcbCompleteJobs(t, r, leases[:1], true, 0), db.ReasonIllegalTransition, "COMPLETED")
	})

	t.Run("claimNext never leases beyond the slots the batch freed", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "three-slots", apitest.RobotOpts{Slots: 3})
		jbEnqueue(t, tn, 10, func(int) int { return 0 })
		leases := jbClaimJobs(t, r, 3, 0)
		done := jcbDecode(t, jcbCompleteJobs(t, r, leases[:2], true, 100))
		require.Len(t, done.NextLeases, 2, "two slots freed, two leased")
		require.Equal(t, 3, jbHeld(t, s, r.ID))
	})

	t.Run("one refusal refuses the whole batch and changes nothing", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "three-slots", apitest.RobotOpts{Slots: 3})
		jbEnqueue(t, tn, 4, func(int) int { return 0 })
		leases := jbClaimJobs(t, r, 3, 0)
		tn.Do(t, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": leases[1].Job.ID}, nil)
		before := jcbSnapshot(t, s, tn.User.Tenant.String())
		resp := jcbCompleteJobs(t, r, leases, true, 1)
		jqRequireRefused(t, resp, db.ReasonJobCancelled, "CANCELLED")
		e := resp.Code(t, "CONFLICT")
		require.Equal(t, "completions[1]", e.Extensions["field"])
		require.Equal(t, float64(1), e.Extensions["index"])
		require.Contains(t, e.Message, "completions[1]")
		require.Equal(t, before, jcbSnapshot(t, s, tn.User.Tenant.String()), "a refused batch changed data")
		// Without the cancelled job the batch goes through.
		done := jcbDecode(t, jcbCompleteJobs(t, r, []apitest.Lease{leases[0], leases[2]}, true, 1))
		require.Len(t, done.Jobs, 2)
		require.Len(t, done.NextLeases, 1)
	})

	t.Run("a robot cannot complete another robot's or another tenant's job", func(t *testing.T) {
		t.Parallel()
		tn, other := apitest.NewTenant(t, s), apitest.NewTenant(t, s)
		r, peer := tn.CreateRobot(t, "mine", apitest.RobotOpts{Slots: 2}), tn.CreateRobot(t, "peer", apitest.RobotOpts{Slots: 2})
		stranger := other.CreateRobot(t, "stranger", apitest.RobotOpts{Slots: 2})
		jbEnqueue(t, tn, 3, func(int) int { return 0 })
		jbEnqueue(t, other, 1, func(int) int { return 0 })
		mine, peers, theirs := jbClaimJobs(t, r, 1, 0), jbClaimJobs(t, peer, 2, 0), jbClaimJobs(t, stranger, 1, 0)
		require.Len(t, peers, 2)
		tenants := []string{tn.User.Tenant.String(), other.User.Tenant.String()}
		before := jcbSnapshot(t, s, tenants...)
		for name, foreign := range map[string]apitest.Lease{"another robot's": peers[0], "another tenant's": theirs[0]} {
			// The right lease token of a job the robot does not hold: as
			// if the job did not exist.
			resp := jcbCompleteJobs(t, r, []apitest.Lease{mine[0], foreign}, true, 2)
			e := resp.Code(t, "NOT_FOUND")
			require.Equal(t, "completions[1]", e.Extensions["field"], "%s job", name)
			require.NotContains(t, string(resp.Raw), foreign.Job.Status, "%s job's state leaked", name)
			require.Equal(t, before, jcbSnapshot(t, s, tenants...), "completing %s job changed data", name)
		}
		require.Equal(t, "CLAIMED", other.Job(t, theirs[0].Job.ID).Status)
	})

	t.Run("each completed job goes to the webhook outbox, once per endpoint that wants it", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
		recv := whNewReceiver(t)
		completed, _ := whEndpoint(t, b.tn, recv.srv.URL+"/completed", db.EventJobCompleted)
		both, _ := whEndpoint(t, b.tn, recv.srv.URL+"/both", db.EventJobCompleted, db.EventJobFailed)
		failed, _ := whEndpoint(t, b.tn, recv.srv.URL+"/failed", db.EventJobFailed)
		r := b.tn.CreateRobot(t, "batcher", apitest.RobotOpts{Slots: 3})
		jbEnqueue(t, b.tn, 3, func(int) int { return 0 })
		leases := jbClaimJobs(t, r, 3, 0)
		done := jcbDecode(t, jcbCompleteJobs(t, r, leases, true, 0))
		for _, endpoint := range []string{completed, both} {
			ds := whDeliveries(t, b.tn, endpoint)
			require.Len(t, ds, 3, "endpoint %s", endpoint)
			events := map[string]bool{}
			for _, d := range ds {
				require.Equal(t, db.EventJobCompleted, d.EventType)
				events[d.EventID] = true
			}
			require.Len(t, events, 3, "one event per job")
		}
		require.Empty(t, whDeliveries(t, b.tn, failed))
		b.round(t)
		got := map[string]map[string]any{}
		for _, q := range recv.wait(t, 6) {
			body := q.body(t)
			require.Equal(t, db.EventJobCompleted, body.Type)
			got[body.Data["id"].(string)] = body.Data
		}
		require.Len(t, got, 3)
		for _, j := range done.Jobs {
			require.Equal(t, whJobJSON(t, b.tn, j.ID), got[j.ID], "the event carries the job as the API shows it")
		}
	})
}

// jcbSnapshot is what a refused batch must leave as it was, for the
// tenants given: their jobs, robots and outbox rows.
func jcbSnapshot(t testing.TB, s *apitest.Server, tenants ...string) string {
	t.Helper()
	var snap string
	require.NoError(t, s.DB.NewRaw(`SELECT concat_ws(E'\n',
		(SELECT string_agg(row_to_json(j)::text, E'\n' ORDER BY j.id) FROM jobs j WHERE tenant_id::text IN (?)),
		(SELECT string_agg(concat_ws(' | ', id, status, updated_at, revision), E'\n' ORDER BY id) FROM robots WHERE tenant_id::text IN (?)),
		(SELECT 'webhook_events ' || count(*) FROM webhook_events WHERE tenant_id::text IN (?)))`,
		bun.List(tenants), bun.List(tenants), bun.List(tenants)).Scan(t.Context(), &snap))
	return snap
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Racing batches of one robot, overlapping, with claimNext: each job is
// completed once, no call deadlocks, and the robot's slots stay exact.
// Several robots then drain a queue with nothing but completeJobs.
func TestCompleteJobsConcurrency(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})

	t.Run("overlapping batches of one robot take turns", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "six-slots", apitest.RobotOpts{Slots: 6})
		jbEnqueue(t, tn, 30, func(int) int { return 0 })
		leases := jbClaimJobs(t, r, 6, 0)
		require.Len(t, leases, 6)
		// Eight calls over the same six jobs, in different orders, half
		// with claimNext: the first to commit completes its jobs; any
		// overlapping call after it is refused whole.
		type result struct {
			done jcbDone
			err  error
		}
		results := make(chan result, 8)
		for i := range 8 {
			batch := []apitest.Lease{leases[i%6], leases[(i+3)%6], leases[(i+1)%6]}
			if i%2 == 1 {
				slices.Reverse(batch)
			}
			go func() {
				c := make([]any, len(batch))
				for k, l := range batch {
					c[k] = map[string]any{"jobId": l.Job.ID, "leaseToken": l.LeaseToken}
				}
				res, err := tn.Client.Do(t.Context(), r.Key, jbCompleteJobsQuery, map[string]any{"c": c, "s": true, "n": 3 * (i % 2)})
				var out struct{ CompleteJobs jcbDone }
				if err == nil {
					err = res.Decode(&out)
				}
				results <- result{out.CompleteJobs, err}
			}()
		}
		completed, leased := map[string]bool{}, map[string]bool{}
		for range 8 {
			select {
			case res := <-results:
				if res.err != nil {
					require.Contains(t, res.err.Error(), "CONFLICT", "a losing batch is refused as a conflict, not a deadlock")
					continue
				}
				for _, j := range res.done.Jobs {
					require.False(t, completed[j.ID], "job %s completed twice", j.ID)
					completed[j.ID] = true
				}
				for _, l := range res.done.NextLeases {
					require.False(t, leased[l.Job.ID], "job %s leased twice", l.Job.ID)
					leased[l.Job.ID] = true
				}
			case <-time.After(time.Minute):
				require.FailNow(t, "a batch did not return")
			}
		}
		require.NotEmpty(t, completed)
		var rows int
		require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM jobs WHERE robot_id = ? AND status = 'COMPLETED'", r.ID).Scan(t.Context(), &rows))
		require.Equal(t, len(completed), rows)
		require.Equal(t, 6-len(completed)+len(leased), jbHeld(t, s, r.ID))
		require.LessOrEqual(t, jbHeld(t, s, r.ID), 6)
	})

	t.Run("robots drain a queue with completeJobs alone", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		const robots, jobs = 6, 600
		for b := 0; b < jobs; b += 300 {
			jbEnqueue(t, tn, 300, func(int) int { return 0 })
		}
		var (
			mu   sync.Mutex
			seen = map[string]int{}
			errs []error
			wg   sync.WaitGroup
		)
		for i := range robots {
			r := tn.CreateRobot(t, fmt.Sprintf("robot-%d", i), apitest.RobotOpts{Slots: 1 + i%4})
			wg.Go(func() {
				err := func() error {
					res, err := tn.Client.Do(t.Context(), r.Key, jbClaimJobsQuery, map[string]any{"n": r.Slots})
					var claimed struct{ ClaimJobs []apitest.Lease }
					if err == nil {
						err = res.Decode(&claimed)
					}
					if err != nil {
						return err
					}
					mine := claimed.ClaimJobs
					for len(mine) > 0 {
						if len(mine) > r.Slots {
							return fmt.Errorf("%s holds %d jobs with %d slots", r.Name, len(mine), r.Slots)
						}
						c := make([]any, len(mine))
						for k, l := range mine {
							c[k] = map[string]any{"jobId": l.Job.ID, "leaseToken": l.LeaseToken, "result": map[string]any{"robot": r.ID}}
						}
						res, err := tn.Client.Do(t.Context(), r.Key, jbCompleteJobsQuery, map[string]any{"c": c, "s": true, "n": r.Slots})
						var out struct{ CompleteJobs jcbDone }
						if err == nil {
							err = res.Decode(&out)
						}
						if err != nil {
							return err
						}
						mu.Lock()
						for _, j := range out.CompleteJobs.Jobs {
							seen[j.ID]++
						}
						mu.Unlock()
						mine = out.CompleteJobs.NextLeases
					}
					return nil
				}()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", r.Name, err))
				}
			})
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		// A robot stops when its batch comes back empty; whatever another
		// robot's claim skipped at that moment is finished by that robot.
		require.Len(t, seen, jobs)
		for id, n := range seen {
			require.Equal(t, 1, n, "job %s completed %d times", id, n)
		}
		var live int
		require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM jobs WHERE tenant_id = ? AND status <> 'COMPLETED'", tn.User.Tenant).Scan(t.Context(), &live))
		require.Zero(t, live)
		var wrong int
		require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM jobs WHERE tenant_id = ? AND result->>'robot' <> robot_id::text", tn.User.Tenant).Scan(t.Context(), &wrong))
		require.Zero(t, wrong, "each job's result is the one its robot sent")
	})
}
