package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"fleetgraph/apitest"
	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// TestMain stops the private PostgreSQL after the benchmarks; it starts only
// when a benchmark first asks for a database.
func TestMain(m *testing.M) { dbtest.Main(m) }

// client speaks GraphQL over HTTP and keeps its connections alive, as a
// robot agent would; it is safe for concurrent use.
type client struct {
	url string
	hc  *http.Client
	// requests counts the requests sent.
	requests atomic.Int64
}

func newClient(b *testing.B, s *apitest.Server) *client {
	tr := &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512}
	b.Cleanup(tr.CloseIdleConnections)
	return &client{url: s.URL + "/graphql", hc: &http.Client{Transport: tr, Timeout: time.Minute}}
}

// do posts query as token and decodes the data into out.
func (c *client) do(ctx context.Context, token, query string, vars map[string]any, out any) error {
	body, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	c.requests.Add(1)
	res, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	var r struct {
		Data   json.RawMessage
		Errors []apitest.Error
	}
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
		return fmt.Errorf("decoding a %d response: %w", res.StatusCode, err)
	}
	if len(r.Errors) > 0 {
		return fmt.Errorf("%s: %s", r.Errors[0].Code(), r.Errors[0].Message)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(r.Data, out)
}

// fleet is a fresh tenant with a workflow and robots.
type fleet struct {
	c        *client
	user     string
	tenant   uuid.UUID
	wf       string
	robots   []string // API keys
	robotIDs map[string]uuid.UUID
}

func newFleet(b *testing.B, s *apitest.Server, c *client, robots int) *fleet {
	b.Helper()
	return newFleetOfSlots(b, s, c, robots, 1)
}

// newFleetOfSlots is newFleet with robots that may each hold slots jobs.
func newFleetOfSlots(b *testing.B, s *apitest.Server, c *client, robots, slots int) *fleet {
	b.Helper()
	ctx := b.Context()
	tenant := uuid.New()
	f := &fleet{c: c, user: s.NewUser(b, tenant).Token, tenant: tenant, robotIDs: map[string]uuid.UUID{}}
	var wf struct{ CreateWorkflow struct{ ID string } }
	must(b, c.do(ctx, f.user, `mutation { createWorkflow(input: {name: "bench", definition: {nodes: []}}) { id } }`, nil, &wf))
	f.wf = wf.CreateWorkflow.ID
	for i := range robots {
		var r struct{ CreateRobot struct{ ID string } }
		must(b, c.do(ctx, f.user, `mutation($n: String!, $s: Int) { createRobot(input: {name: $n, maxConcurrentJobs: $s}) { id } }`,
			map[string]any{"n": fmt.Sprintf("robot-%d", i), "s": slots}, &r))
		var k struct{ CreateApiKey struct{ Key string } }
		must(b, c.do(ctx, f.user, `mutation($r: ID!) { createApiKey(robotId: $r, name: "bench") { key } }`, map[string]any{"r": r.CreateRobot.ID}, &k))
		f.robots = append(f.robots, k.CreateApiKey.Key)
		f.robotIDs[k.CreateApiKey.Key] = uuid.MustParse(r.CreateRobot.ID)
	}
	return f
}

// enqueue queues n jobs in batches of at most size.
func (f *fleet) enqueue(ctx context.Context, n, size int) error {
	for done := 0; done < n; {
		in := make([]map[string]any, min(size, n-done))
		for i := range in {
			in[i] = map[string]any{"workflowId": f.wf, "input": map[string]any{"n": done + i}}
		}
		if err := f.c.do(ctx, f.user, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": in}, nil); err != nil {
			return err
		}
		done += len(in)
	}
	return nil
}

type lease struct {
	LeaseToken string
	Job        struct{ ID string }
}

const claimQuery = `mutation($w: Int) { claimJob(waitSeconds: $w) { leaseToken job { id } } }`

// finish starts and completes a claimed job.
func (f *fleet) finish(ctx context.Context, key string, l *lease) error {
	vars := map[string]any{"j": l.Job.ID, "l": l.LeaseToken}
	if err := f.c.do(ctx, key, `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { id } }`, vars, nil); err != nil {
		return fmt.Errorf("starting: %w", err)
	}
	if err := f.c.do(ctx, key, `mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}) { id } }`, vars, nil); err != nil {
		return fmt.Errorf("completing: %w", err)
	}
	return nil
}

// waitFor polls cond until it holds, for at most ten seconds.
func waitFor(b *testing.B, cond func() bool) {
	b.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Microsecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			b.Fatal("timed out: the claim did not start waiting")
		case <-tick.C:
		}
	}
}

func must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkClaimComplete measures how many jobs robots working in parallel
// take through claimJob, startJob and completeJob (three requests a job).
// The queue holds b.N jobs when the timer starts; ns/op is per job.
func BenchmarkClaimComplete(b *testing.B) {
	s := apitest.New(b, apitest.Options{SweepEvery: time.Hour})
	c := newClient(b, s)
	for _, robots := range []int{1, 4, 16, 32} {
		b.Run(fmt.Sprintf("robots=%d", robots), func(b *testing.B) {
			drainQueue(b, s, c, robots, 1, workOneAtATime)
		})
	}
}

// BenchmarkClaimCompleteVsStore measures, side by side in one run, 16
// robots taking jobs one at a time (claim, start, complete) through the API
// (three HTTP requests a job, as BenchmarkClaimComplete) and through the
// job store directly, in-process: the very statements the API runs, with
// no HTTP, GraphQL or API key in between. The ratio is what the API keeps
// of the SQL's own rate. ns/op is per job.
//
// The second pair takes a job per call: a robot claims once, then each
// completeJob(startIfClaimed, claimNext) completes its job and leases the
// next (one request and one transaction a job), against the store's
// Complete with the same options.
func BenchmarkClaimCompleteVsStore(b *testing.B) {
	compareModes(b, 1, func(s *apitest.Server) []queueMode {
		return []queueMode{
			{"api", workOneAtATime}, {"store", workThroughTheStore(s)},
			{"api-claimNext", batchedWork(true)}, {"store-claimNext", workThroughTheStoreClaimingNext(s)},
		}
	})
}

// queueMode is one way of working the queue, named for b.Run.
type queueMode struct {
	name string
	work queueWork
}

// compareModes runs drainQueue with 16 robots, each of which may hold
// slots jobs, in each of the modes in turn (one sub-benchmark each, so they
// see the same load), on one server that caches API keys for 5 s, the
// production default, so that a key costs no statement per request.
func compareModes(b *testing.B, slots int, modes func(s *apitest.Server) []queueMode) {
	s := apitest.New(b, apitest.Options{SweepEvery: time.Hour, KeyCacheTTL: 5 * time.Second})
	c := newClient(b, s)
	const robots = 16
	for _, mode := range modes(s) {
		b.Run(fmt.Sprintf("robots=%d/%s", robots, mode.name), func(b *testing.B) {
			drainQueue(b, s, c, robots, slots, mode.work)
		})
	}
}

// workThroughTheStore is workOneAtATime calling the job store as the robot
// (its principal in the context) instead of the API.
func workThroughTheStore(s *apitest.Server) queueWork {
	jobs, idb := s.App.Resolver.JobStore, s.App.Resolver.DB
	return func(ctx context.Context, f *fleet, key string, left *atomic.Int64) error {
		ctx = auth.WithPrincipal(ctx, &auth.Principal{TenantID: f.tenant, RobotID: f.robotIDs[key], Role: auth.RoleRobot})
		for left.Add(-1) >= 0 {
			l, err := jobs.Claim(ctx, idb)
			if err != nil {
				return err
			}
			if l == nil {
				return errors.New("the queue ran dry early")
			}
			if _, err := jobs.Start(ctx, idb, l.Job.ID, l.LeaseToken); err != nil {
				return fmt.Errorf("starting: %w", err)
			}
			if _, err := jobs.Complete(ctx, idb, l.Job.ID, l.LeaseToken, map[string]any{"ok": true}); err != nil {
				return fmt.Errorf("completing: %w", err)
			}
		}
		left.Add(1) // the failed decrement
		return nil
	}
}

// workThroughTheStoreClaimingNext is workBatched with claimNext (for a
// robot of one slot) calling the job store as the robot: one claim, then
// Complete(StartIfClaimed, ClaimNext) of each job, until none comes back.
func workThroughTheStoreClaimingNext(s *apitest.Server) queueWork {
	jobs, idb := s.App.Resolver.JobStore, s.App.Resolver.DB
	return func(ctx context.Context, f *fleet, key string, left *atomic.Int64) error {
		ctx = auth.WithPrincipal(ctx, &auth.Principal{TenantID: f.tenant, RobotID: f.robotIDs[key], Role: auth.RoleRobot})
		l, err := jobs.Claim(ctx, idb)
		if err != nil {
			return err
		}
		for l != nil {
			j, err := jobs.Complete(ctx, idb, l.Job.ID, l.LeaseToken, map[string]any{"ok": true}, db.JobCallOptions{StartIfClaimed: true, ClaimNext: true})
			if err != nil {
				return fmt.Errorf("completing: %w", err)
			}
			left.Add(-1)
			l = j.NextLease
		}
		return nil
	}
}

// batchSlots is how many jobs each robot of BenchmarkClaimCompleteBatching
// may hold, and so how many one claimJobs leases at most.
const batchSlots = 8

// BenchmarkClaimCompleteBatching measures, side by side in one run, how
// many jobs 16 robots working in parallel take one at a time (claimJob,
// startJob, completeJob: three requests a job, as BenchmarkClaimComplete)
// and with batching: claimJobs(limit: 8) when a robot holds nothing, then
// completeJob(startIfClaimed: true, claimNext: true) for each job, which
// leases the next one in the same request (about one request a job); and,
// for comparison, the same batches without claimNext (a new claimJobs once
// a batch is done: 1 + 1/8 requests a job, but one claim statement per
// batch instead of one per job). The robots may hold 8 jobs in all three. The queue holds b.N jobs when the timer
// starts; ns/op is per job. The server caches API keys for 5 s, the
// production default, so that a key costs no statement per request.
func BenchmarkClaimCompleteBatching(b *testing.B) {
	compareModes(b, batchSlots, func(*apitest.Server) []queueMode {
		return []queueMode{
			{"one-at-a-time", workOneAtATime},
			{"batched", batchedWork(true)},
			{"batched-without-claimNext", batchedWork(false)},
			{"completing-batches", workCompletingBatches},
		}
	})
}

// queueWork works jobs as one robot (its key) until left runs out.
type queueWork func(ctx context.Context, f *fleet, key string, left *atomic.Int64) error

// drainQueue enqueues b.N jobs for a fresh fleet of robots (each may hold
// slots jobs) and times their work, one goroutine per robot, until every
// job is done. It reports jobs/s, requests/job and statements/job.
func drainQueue(b *testing.B, s *apitest.Server, c *client, robots, slots int, work queueWork) {
	ctx := b.Context()
	f := newFleetOfSlots(b, s, c, robots, slots)
	must(b, f.enqueue(ctx, b.N, db.MaxEnqueueBatch))
	var left atomic.Int64
	left.Store(int64(b.N))
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	requests, statements := c.requests.Load(), s.Statements.Load()
	b.ResetTimer()
	for _, key := range f.robots {
		wg.Go(func() {
			if err := work(ctx, f, key, &left); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	must(b, errors.Join(errs...))
	if n := left.Load(); n != 0 {
		b.Fatalf("%d jobs were left undone", n)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "jobs/s")
	b.ReportMetric(float64(c.requests.Load()-requests)/float64(b.N), "requests/job")
	// The counter counts requests' statements: none for work that calls
	// the store directly.
	if n := s.Statements.Load() - statements; n > 0 {
		b.ReportMetric(float64(n)/float64(b.N), "statements/job")
	}
}

// BenchmarkClaimBatchOnALongQueue measures one claimJobs(limit: 50) of a
// robot with 100 slots while 100,000 jobs are queued (each batch is
// completed, untimed, before the next): the case where the planner costs a
// batch above jit_above_cost, so that compiling it would outweigh the
// claim (the claim's transaction now runs without JIT). ns/op is per batch.
func BenchmarkClaimBatchOnALongQueue(b *testing.B) {
	s := apitest.New(b, apitest.Options{SweepEvery: time.Hour, KeyCacheTTL: 5 * time.Second})
	c := newClient(b, s)
	f := newFleetOfSlots(b, s, c, 1, 100)
	must(b, f.enqueue(b.Context(), 100_000, db.MaxEnqueueBatch))
	_, err := s.DB.ExecContext(b.Context(), "ANALYZE jobs")
	must(b, err)
	const claim = `mutation { claimJobs(limit: 50) { leaseToken job { id } } }`
	for b.Loop() {
		var out struct{ ClaimJobs []*lease }
		must(b, c.do(b.Context(), f.robots[0], claim, nil, &out))
		if len(out.ClaimJobs) != 50 {
			b.Fatalf("claimed %d jobs, not 50", len(out.ClaimJobs))
		}
		b.StopTimer()
		for _, l := range out.ClaimJobs {
			must(b, f.finish(b.Context(), f.robots[0], l))
		}
		b.StartTimer()
	}
}

// BenchmarkChangeFeedCost measures what the change feed's NOTIFY costs the
// job queue: the same work (16 robots, one job at a time, batches without
// claimNext, and completeJobs batches) with the jobs table's change-feed triggers
// (jobs_notify, jobs_notify_update: one pg_notify per job change, queued
// at commit under PostgreSQL's global notification lock) enabled, then
// disabled. Nothing else changes: the revision trigger and the dispatch
// NOTIFY of enqueued jobs stay. It reports jobs/s.
func BenchmarkChangeFeedCost(b *testing.B) {
	s := apitest.New(b, apitest.Options{SweepEvery: time.Hour, KeyCacheTTL: 5 * time.Second})
	c := newClient(b, s)
	const robots = 16
	for _, feed := range []string{"on", "off"} {
		action := map[string]string{"on": "ENABLE", "off": "DISABLE"}[feed]
		for _, trigger := range []string{"jobs_notify", "jobs_notify_update"} {
			_, err := s.DB.ExecContext(b.Context(), "ALTER TABLE jobs "+action+" TRIGGER "+trigger)
			must(b, err)
		}
		for _, mode := range []struct {
			name string
			work queueWork
		}{
			{"one-at-a-time", workOneAtATime},
			{"batched-without-claimNext", batchedWork(false)},
			{"completing-batches", workCompletingBatches},
		} {
			b.Run(fmt.Sprintf("feed=%s/%s", feed, mode.name), func(b *testing.B) {
				drainQueue(b, s, c, robots, batchSlots, mode.work)
			})
		}
	}
}

// workOneAtATime takes jobs as one robot, three requests a job, until
// left runs out.
func workOneAtATime(ctx context.Context, f *fleet, key string, left *atomic.Int64) error {
	for left.Add(-1) >= 0 {
		var out struct{ ClaimJob *lease }
		if err := f.c.do(ctx, key, claimQuery, map[string]any{"w": 0}, &out); err != nil {
			return err
		}
		if out.ClaimJob == nil {
			return errors.New("the queue ran dry early")
		}
		if err := f.finish(ctx, key, out.ClaimJob); err != nil {
			return err
		}
	}
	left.Add(1) // the failed decrement
	return nil
}

// batchedWork is workBatched with or without claimNext, as a queueWork.
func batchedWork(claimNext bool) queueWork {
	return func(ctx context.Context, f *fleet, key string, left *atomic.Int64) error {
		return workBatched(ctx, f, key, left, claimNext)
	}
}

// workBatched takes jobs as one robot with batching until the queue is
// empty and the robot holds nothing: whatever is still queued then is
// being leased by another robot's claim (SKIP LOCKED passed it over).
// Without claimNext, the robot claims a new batch once it has completed
// the last.
func workBatched(ctx context.Context, f *fleet, key string, left *atomic.Int64, claimNext bool) error {
	const claimJobs = `mutation($n: Int!) { claimJobs(limit: $n) { leaseToken job { id } } }`
	const complete = `mutation($j: ID!, $l: ID!, $c: Boolean) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}, startIfClaimed: true, claimNext: $c) {
		id nextLease { leaseToken job { id } } } }`
	var mine []*lease
	for {
		if len(mine) == 0 {
			var out struct{ ClaimJobs []*lease }
			if err := f.c.do(ctx, key, claimJobs, map[string]any{"n": batchSlots}, &out); err != nil {
				return fmt.Errorf("claiming: %w", err)
			}
			if len(out.ClaimJobs) == 0 {
				return nil
			}
			mine = out.ClaimJobs
		}
		l := mine[0]
		mine = mine[1:]
		var out struct{ CompleteJob struct{ NextLease *lease } }
		if err := f.c.do(ctx, key, complete, map[string]any{"j": l.Job.ID, "l": l.LeaseToken, "c": claimNext}, &out); err != nil {
			return fmt.Errorf("completing: %w", err)
		}
		left.Add(-1)
		if next := out.CompleteJob.NextLease; next != nil {
			mine = append(mine, next)
		}
	}
}

// workCompletingBatches takes jobs as one robot a batch at a time:
// claimJobs(limit: 8) once, then completeJobs of the whole batch with
// claimNext: 8, which leases the next batch in the same transaction (one
// request and one transaction per batch), until a batch comes back empty.
func workCompletingBatches(ctx context.Context, f *fleet, key string, left *atomic.Int64) error {
	const claimJobs = `mutation($n: Int!) { claimJobs(limit: $n) { leaseToken job { id } } }`
	const complete = `mutation($c: [JobCompletionInput!]!, $n: Int) { completeJobs(completions: $c, startIfClaimed: true, claimNext: $n) {
		jobs { id } nextLeases { leaseToken job { id } } } }`
	var out struct{ ClaimJobs []*lease }
	if err := f.c.do(ctx, key, claimJobs, map[string]any{"n": batchSlots}, &out); err != nil {
		return fmt.Errorf("claiming: %w", err)
	}
	mine := out.ClaimJobs
	for len(mine) > 0 {
		batch := make([]map[string]any, len(mine))
		for i, l := range mine {
			batch[i] = map[string]any{"jobId": l.Job.ID, "leaseToken": l.LeaseToken, "result": map[string]any{"ok": true}}
		}
		var out struct {
			CompleteJobs struct {
				Jobs       []struct{ ID string }
				NextLeases []*lease
			}
		}
		if err := f.c.do(ctx, key, complete, map[string]any{"c": batch, "n": batchSlots}, &out); err != nil {
			return fmt.Errorf("completing: %w", err)
		}
		if len(out.CompleteJobs.Jobs) != len(mine) {
			return fmt.Errorf("completed %d jobs of %d", len(out.CompleteJobs.Jobs), len(mine))
		}
		left.Add(-int64(len(mine)))
		mine = out.CompleteJobs.NextLeases
	}
	return nil
}

// BenchmarkEnqueueToClaimLatency measures how long a robot already waiting
// in claimJob(waitSeconds: 10) takes to receive a job once enqueueJob has
// returned, and from just before enqueueJob was sent. Claims poll hourly,
// so only the NOTIFY of the enqueue wakes them. Each op is one job.
func BenchmarkEnqueueToClaimLatency(b *testing.B) {
	s := apitest.New(b, apitest.Options{SweepEvery: time.Hour})
	c := newClient(b, s)
	f := newFleet(b, s, c, 1)
	ctx := b.Context()
	key := f.robots[0]

	// A claim that finds nothing runs a fixed number of statements before
	// it waits; counting them tells when a claim is waiting.
	statements := func() int64 {
		before := s.Statements.Load()
		must(b, c.do(ctx, key, claimQuery, map[string]any{"w": 1}, nil))
		return s.Statements.Load() - before
	}
	statements() // the key's first use records it; the second is typical
	untilWaiting := statements()

	type arrival struct {
		l   *lease
		at  time.Time
		err error
	}
	afterReturn := make([]time.Duration, 0, b.N)
	afterSend := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		base := s.Statements.Load()
		got := make(chan arrival, 1)
		go func() {
			var out struct{ ClaimJob *lease }
			err := c.do(ctx, key, claimQuery, map[string]any{"w": 10}, &out)
			got <- arrival{out.ClaimJob, time.Now(), err}
		}()
		waitFor(b, func() bool { return s.Statements.Load()-base >= untilWaiting })
		sent := time.Now()
		must(b, c.do(ctx, f.user, `mutation($w: ID!) { enqueueJob(input: {workflowId: $w}) { id } }`, map[string]any{"w": f.wf}, nil))
		returned := time.Now()
		a := <-got
		must(b, a.err)
		if a.l == nil {
			b.Fatal("the waiting claim returned nothing")
		}
		afterReturn = append(afterReturn, a.at.Sub(returned))
		afterSend = append(afterSend, a.at.Sub(sent))
		must(b, f.finish(ctx, key, a.l)) // frees the robot's one slot
	}
	b.StopTimer()
	report := func(ds []time.Duration, name string) {
		slices.Sort(ds)
		ms := func(q float64) float64 {
			return float64(ds[min(len(ds)-1, int(q*float64(len(ds))))]) / float64(time.Millisecond)
		}
		b.ReportMetric(ms(0.50), name+"-p50-ms")
		b.ReportMetric(ms(0.99), name+"-p99-ms")
	}
	report(afterReturn, "after-return")
	report(afterSend, "after-send")
}

// BenchmarkEnqueueBatch measures enqueueJobs with 500 jobs a call.
func BenchmarkEnqueueBatch(b *testing.B) {
	const batch = 500
	s := apitest.New(b, apitest.Options{SweepEvery: time.Hour})
	c := newClient(b, s)
	f := newFleet(b, s, c, 0)
	ctx := b.Context()
	for b.Loop() {
		must(b, f.enqueue(ctx, batch, batch))
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "jobs/s")
}
