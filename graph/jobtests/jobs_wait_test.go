package jobtests

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/dispatch"
)

// What waiting claims may cost: no pooled connection while they wait, at
// most one at a time for all the claims of one robot, at most one wait per
// free slot, and an answer within the server's write timeout.

// jqRequireWaitLimit asserts a claim refused for the robot's wait limit.
func jqRequireWaitLimit(t testing.TB, c apitest.Claimed, free int) {
	t.Helper()
	require.Error(t, c.Err, "the claim was not refused")
	require.Contains(t, c.Err.Error(), "RATE_LIMITED")
	require.Contains(t, c.Err.Error(), "reason:"+dispatch.ReasonWaitLimit)
	require.Contains(t, c.Err.Error(), fmt.Sprintf("freeSlots:%d", free))
}

func TestWaitingClaimsAreBounded(t *testing.T) {
	t.Parallel()

	t.Run("one robot's waits take one connection at a time and one free slot each", func(t *testing.T) {
		t.Parallel()
		// Polling as in production, so waits poll while the test runs.
		s := apitest.New(t, apitest.Options{ClaimPoll: time.Second})
		tn := apitest.NewTenant(t, s)
		const slots, claims = 20, 60
		r := tn.CreateRobot(t, "greedy", apitest.RobotOpts{Slots: slots})
		other := apitest.NewTenant(t, s)
		s.Transactions.ResetPeak()

		results := make(chan apitest.Claimed, claims)
		for range claims {
			go func() { results <- <-r.ClaimAsync(t, jqWakeWait) }()
		}
		// The claims beyond the robot's free slots are refused at once.
		for range claims - slots {
			var c apitest.Claimed
			select {
			case c = <-results:
			case <-time.After(apitest.Patience):
				require.FailNow(t, "the claims beyond the robot's free slots were not refused")
			}
			if c.Err == nil {
				require.FailNow(t, "a claim returned before any job was queued", "%+v", c.Lease)
			}
			jqRequireWaitLimit(t, c, slots)
		}
		// Every request has been authenticated by now (a burst of
		// authentications may queue for the pool; waits must not).
		pool := s.DB.Stats()
		// The others wait. Notifications of the tenant that bring no job
		// the robot may take wake them all, again and again.
		for range 10 {
			tn.Enqueue(t, map[string]any{"requiredCapabilities": []string{"nobody-has-this"}})
		}
		// Another tenant's query still answers, from a pool that never ran dry.
		var out struct{ Jobs struct{ TotalCount int } }
		other.Do(t, `{ jobs { totalCount } }`, nil, &out)
		require.Zero(t, out.Jobs.TotalCount)

		// Jobs for every waiting claim: each gets one.
		var in []map[string]any
		for range slots {
			in = append(in, map[string]any{"workflowId": tn.Workflow})
		}
		tn.Do(t, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": in}, nil)
		got := map[string]bool{}
		for range slots {
			l := apitest.ReceiveClaim(t, results, jqWakeWithin)
			require.NotNil(t, l, "a waiting claim returned null though a job was queued for it")
			require.False(t, got[l.Job.ID], "job %s was claimed twice", l.Job.ID)
			got[l.Job.ID] = true
		}
		// One transaction for the robot's claims, one for the test's own
		// request that may overlap it (an enqueue while a wait polls).
		require.LessOrEqual(t, s.Transactions.Peak(), int64(2),
			"the robot's %d claims held more than one pooled connection at once", claims)
		require.Equal(t, pool.WaitCount, s.DB.Stats().WaitCount, "a request waited for a pooled connection while the claims waited")
	})

	t.Run("a robot waits in one claim per free slot, its other claims are refused", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t)
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "two-slots", apitest.RobotOpts{Slots: 2})
		peer := tn.CreateRobot(t, "peer", apitest.RobotOpts{})
		tn.Enqueue(t, nil)
		require.NotNil(t, r.Claim(t, 0))
		// Holding one job of two, the robot may wait in one claim: of two,
		// whichever asks second is refused, and the other waits.
		a, b := r.ClaimAsync(t, jqWakeWait), r.ClaimAsync(t, jqWakeWait)
		var waiting <-chan apitest.Claimed
		select {
		case c := <-a:
			jqRequireWaitLimit(t, c, 1)
			waiting = b
		case c := <-b:
			jqRequireWaitLimit(t, c, 1)
			waiting = a
		case <-time.After(apitest.Patience):
			require.FailNow(t, "neither claim was refused")
		}
		// A claim that does not wait is never refused so, and another
		// robot's waits are its own.
		require.Nil(t, r.Claim(t, 0))
		peerClaim := peer.ClaimAsync(t, jqWakeWait)
		j1, j2 := tn.Enqueue(t, nil), tn.Enqueue(t, nil)
		l1, l2 := apitest.ReceiveClaim(t, waiting, jqWakeWithin), apitest.ReceiveClaim(t, peerClaim, jqWakeWithin)
		require.NotNil(t, l1, "the robot's waiting claim got no job")
		require.NotNil(t, l2, "the peer's waiting claim got no job")
		require.ElementsMatch(t, []string{j1.ID, j2.ID}, []string{l1.Job.ID, l2.Job.ID})
	})

	t.Run("a robot with no free slot cannot wait", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t)
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "full", apitest.RobotOpts{})
		tn.Enqueue(t, nil)
		require.NotNil(t, r.Claim(t, 0))
		var c apitest.Claimed
		select {
		case c = <-r.ClaimAsync(t, 10):
		case <-time.After(apitest.Patience):
			require.FailNow(t, "the claim of a full robot waited")
		}
		jqRequireWaitLimit(t, c, 0)
		require.Nil(t, r.Claim(t, 0), "a claim that does not wait answers null")
	})
}

// TestLongestWaitAnswersBeforeTheWriteTimeout asks for the longest wait the
// API allows from a server whose write timeout is shorter: the claim must
// answer null, not lose its connection to the timeout.
func TestLongestWaitAnswersBeforeTheWriteTimeout(t *testing.T) {
	t.Parallel()
	const writeTimeout = 30 * time.Second
	require.Less(t, dispatch.WaitWithin(writeTimeout), writeTimeout)
	require.Less(t, dispatch.WaitWithin(60*time.Second), 60*time.Second, "the production server's longest wait outlasts its write timeout")
	s := apitest.New(t, apitest.Options{WriteTimeout: writeTimeout})
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "patient", apitest.RobotOpts{})
	var c apitest.Claimed
	select {
	case c = <-r.ClaimAsync(t, dispatch.MaxWaitSeconds):
	case <-time.After(2 * time.Minute):
		require.FailNow(t, "the longest wait did not end")
	}
	require.NoError(t, c.Err, "the longest wait did not answer")
	require.Nil(t, c.Lease)
}

// TestParkedClaimsHoldNoTurn: with one operation running at a time
// (MAX_RUNNING_OPERATIONS=1), a claim waiting for a job leaves the turn to
// other requests, and takes it back to return the job it was woken for.
func TestParkedClaimsHoldNoTurn(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Running: 1})
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "patient", apitest.RobotOpts{Slots: 1})
	waiting := jqParkedClaim(t, r, jqWakeWait)
	// A user's query runs while it waits.
	var out struct{ Jobs struct{ TotalCount int } }
	tn.Do(t, `{ jobs { totalCount } }`, nil, &out)
	require.Zero(t, out.Jobs.TotalCount)
	select {
	case c := <-waiting:
		require.FailNow(t, "the waiting claim returned before any job was queued", "%+v", c)
	default:
	}
	job := tn.Enqueue(t, nil)
	l := apitest.ReceiveClaim(t, waiting, jqWakeWithin)
	require.NotNil(t, l, "the woken claim returned no job")
	require.Equal(t, job.ID, l.Job.ID)
}

// jqParkedClaim sends a claim of r (a robot with one slot, free) that waits
// up to wait seconds, on a server with one turn (apitest.Options.Running),
// and returns once it is parked. The robot's second claim is refused once
// the first waits: it had to be given the turn the waiting claim gave
// back. (If the second comes first, the first is the one refused: it is
// sent again.)
func jqParkedClaim(t *testing.T, r *apitest.Robot, wait int) <-chan apitest.Claimed {
	t.Helper()
	var waiting <-chan apitest.Claimed
	for deadline := time.Now().Add(apitest.Patience); ; {
		require.True(t, time.Now().Before(deadline), "the second claim was never refused for the first one's wait")
		if waiting == nil {
			waiting = r.ClaimAsync(t, wait)
		}
		if c := <-r.ClaimAsync(t, 1); c.Err != nil {
			jqRequireWaitLimit(t, c, 1)
			return waiting
		}
		select {
		case first := <-waiting:
			jqRequireWaitLimit(t, first, 1)
			waiting = nil
		default:
		}
	}
}

// TestClaimsAnswerWithinTheirWait: a waiting claim's answer must be written
// by the end of its wait (dispatch.WaitWithin keeps it within the write
// timeout), and a shutdown waits for it. So a claim woken for a job while
// every turn is busy gives up at its wait's end or at a drain: it answers
// null without waiting for a turn any longer, and leaves the job queued
// rather than leasing it to a robot that would never hear of it. And a
// parked claim whose wait ends, or whose server drains, answers null
// without queueing for a turn at all.
func TestClaimsAnswerWithinTheirWait(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		s       *apitest.Server
		replica *apitest.Server // shares the database, not the turns
		tn      *apitest.Tenant
		r       *apitest.Robot
	}
	setup := func(t *testing.T) *testBundle {
		// One turn, held by a query as long as the test wants.
		s := apitest.New(t, apitest.Options{Running: 1, OperationTimeout: 10 * time.Minute, Metrics: true})
		tn := apitest.NewTenant(t, s)
		return &testBundle{s: s, replica: apitest.New(t, apitest.Options{ReplicaOf: s}), tn: tn,
			r: tn.CreateRobot(t, "patient", apitest.RobotOpts{Slots: 1})}
	}
	// holdTurn makes a query take the server's only turn and keep it until
	// release (idempotent): it waits on a lock the test holds.
	holdTurn := func(t *testing.T, b *testBundle) (release func()) {
		t.Helper()
		unlock := b.s.LockTable(t, "machines")
		held := make(chan error, 1)
		go func() {
			res, err := b.tn.Client.Do(t.Context(), b.tn.User.Token, `{ machines { totalCount } }`, nil)
			if err == nil {
				err = res.Decode(nil)
			}
			held <- err
		}()
		require.Eventually(t, func() bool {
			var n int
			err := b.s.DB.QueryRowContext(t.Context(),
				`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
			return err == nil && n == 1
		}, apitest.Patience, 10*time.Millisecond, "the query never took the turn")
		return sync.OnceFunc(func() {
			unlock()
			require.NoError(t, <-held, "the query that held the turn failed")
		})
	}
	// enqueue queues a job through the replica, whose turns are free.
	enqueue := func(t *testing.T, b *testBundle) string {
		t.Helper()
		var out struct{ EnqueueJob struct{ ID string } }
		b.replica.Do(t, b.tn.User.Token, `mutation($w: ID!) { enqueueJob(input: {workflowId: $w}) { id } }`,
			map[string]any{"w": b.tn.Workflow}).OK(t, &out)
		return out.EnqueueJob.ID
	}
	// queuedForTurn waits until the woken claim queues for a turn.
	queuedForTurn := func(t *testing.T, b *testBundle, claimed <-chan apitest.Claimed) {
		t.Helper()
		for deadline := time.Now().Add(apitest.Patience); time.Now().Before(deadline); {
			select {
			case c := <-claimed:
				require.FailNow(t, "the claim returned before it queued for a turn (its wait ended before the job came?)", "%+v", c)
			case <-time.After(10 * time.Millisecond):
			}
			if jqOperationsWaiting(t, b.s) == 1 {
				return
			}
		}
		require.FailNow(t, "the woken claim never queued for a turn")
	}
	// endingWait is the wait of the claims whose end the test awaits: long
	// enough for everything before it (parking, holding the turn, the
	// replica's enqueue and the wake) on a busy machine.
	const endingWait = 20
	// A claim queued for the held turn never answers, so these only bound
	// the wait for its null: endWithin outlasts an endingWait with room to
	// spare; drainWithin is for a drain, which answers at once (it stays
	// short of the drained claims' wait, MaxWaitSeconds).
	const endWithin, drainWithin = endingWait*time.Second + 30*time.Second, 30 * time.Second
	// requireNullWithoutTheTurn waits up to within for the claim's answer,
	// null, while the turn is still held. Otherwise it releases the turn and
	// says what the claim did with it (the old code leased the job no one
	// received).
	requireNullWithoutTheTurn := func(t *testing.T, claimed <-chan apitest.Claimed, release func(), within time.Duration) {
		t.Helper()
		select {
		case c := <-claimed:
			require.NoError(t, c.Err)
			require.Nil(t, c.Lease, "the claim got a job without a turn")
		case <-time.After(within):
			release()
			c := <-claimed
			require.FailNow(t, "the claim waited for the held turn past its wait",
				"given the turn, it answered %+v (error: %v)", c.Lease, c.Err)
		}
	}
	// requireStillQueued releases the turn, then checks that the job was
	// leased to no one: it is queued, and the robot's next claim gets it.
	requireStillQueued := func(t *testing.T, b *testBundle, release func(), job string) {
		t.Helper()
		release()
		require.Equal(t, "QUEUED", b.tn.Job(t, job).Status, "the job was leased after its claim answered")
		l := b.r.Claim(t, 0)
		require.NotNil(t, l, "the job was not handed out")
		require.Equal(t, job, l.Job.ID)
	}

	t.Run("a claim woken while the turns are busy answers null at its wait's end", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		claimed := jqParkedClaim(t, b.r, endingWait)
		release := holdTurn(t, b)
		job := enqueue(t, b)
		queuedForTurn(t, b, claimed)
		requireNullWithoutTheTurn(t, claimed, release, endWithin)
		requireStillQueued(t, b, release, job)
	})

	t.Run("a parked claim answers null at its wait's end without a turn", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		claimed := jqParkedClaim(t, b.r, endingWait)
		release := holdTurn(t, b)
		select {
		case c := <-claimed:
			require.FailNow(t, "the claim's wait ended before the turn was held", "%+v", c)
		default:
		}
		requireNullWithoutTheTurn(t, claimed, release, endWithin)
		release()
	})

	t.Run("a parked claim answers null at a drain without a turn", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		claimed := jqParkedClaim(t, b.r, dispatch.MaxWaitSeconds)
		release := holdTurn(t, b)
		closed := make(chan error, 1)
		go func() { closed <- b.s.Handler.CloseStreams(t.Context()) }()
		requireNullWithoutTheTurn(t, claimed, release, drainWithin)
		require.NoError(t, <-closed)
		release()
	})

	t.Run("a claim woken while the turns are busy answers null at a drain", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		claimed := jqParkedClaim(t, b.r, dispatch.MaxWaitSeconds)
		release := holdTurn(t, b)
		job := enqueue(t, b)
		queuedForTurn(t, b, claimed)
		closed := make(chan error, 1)
		go func() { closed <- b.s.Handler.CloseStreams(t.Context()) }()
		requireNullWithoutTheTurn(t, claimed, release, drainWithin)
		require.NoError(t, <-closed)
		requireStillQueued(t, b, release, job)
	})
}

// jqOperationsWaiting reads fleetgraph_graphql_operations_waiting of s
// (apitest.Options.Metrics).
func jqOperationsWaiting(t *testing.T, s *apitest.Server) float64 {
	t.Helper()
	families, err := s.Metrics.Registry().Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == "fleetgraph_graphql_operations_waiting" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	require.FailNow(t, "no fleetgraph_graphql_operations_waiting")
	return 0
}
