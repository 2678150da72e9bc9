package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// api posts GraphQL to the server as one credential.
type api struct {
	base   string
	token  string
	client *http.Client
}

func (a api) do(ctx context.Context, query string, vars map[string]any, out any) error {
	body, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"/graphql", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+a.token)
	res, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	var r struct {
		Data   json.RawMessage `json:"data"`
		Errors []struct {
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("decoding %d %.200q: %w", res.StatusCode, raw, err)
	}
	if len(r.Errors) > 0 {
		return fmt.Errorf("graphql: %s", r.Errors[0].Message)
	}
	if out != nil {
		return json.Unmarshal(r.Data, out)
	}
	return nil
}

// stamp is when the driver sent a mutation and when its response returned:
// the commit happened in between.
type stamp struct{ sent, returned time.Time }

type jobRow struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Revision int    `json:"revision"`
}

const jobFields = `id status revision`

// subscriber is one websocket with one jobUpdated subscription.
type subscriber struct {
	index int // which subscriber: the server it dials
	group int
	conn  *websocket.Conn
	raw   *rawConn // instead of conn: not sampled, in -lean mode

	messages atomic.Int64
	warm     atomic.Bool // received a warm-up job
	ended    atomic.Pointer[string]

	// Read by the collector only after the reader stopped.
	lower, upper []int32 // microseconds
	pending      []received
	// latest is the last revision received of each job, kept by the
	// subscribers sampled for the final-state check (nil for the others).
	latest map[string]int
}

type received struct {
	key string
	at  time.Time
}

// load is one run's shared state.
type load struct {
	o       options
	user    api
	stamps  sync.Map // "job:revision" -> stamp
	total   atomic.Int64
	last    atomic.Int64 // unix nanos of the latest delivery
	driving atomic.Bool  // messages before the drive are the warm-up's
	warmup  sync.Map     // ids of the warm-up jobs
	subs    []*subscriber

	mu       sync.Mutex
	rtts     []int32 // mutation round trips, microseconds
	expected int64   // deliveries the mutations call for: one per matching subscriber
	errs     []string
	groups   []int // subscribers per group
}

func key(id string, rev int) string { return id + ":" + strconv.Itoa(rev) }

func measure(ctx context.Context, o options, pids []int, stderr io.Writer) (*results, error) {
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: o.jobs*2 + 16}}
	l := &load{o: o, user: api{base: httpBase(o.url), token: o.token, client: client}, groups: make([]int, o.spread)}
	res := &results{Subscribers: o.subscribers, Jobs: o.jobs, Rate: o.rate, Spread: o.spread, Duration: o.duration.String()}
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "loadsubs: "+format+"\n", args...) }

	// Workflows (one per group) and one robot per job slot.
	workflows := make([]string, o.spread)
	for i := range workflows {
		var out struct{ CreateWorkflow struct{ ID string } }
		if err := l.user.do(ctx, `mutation($n: String!, $d: JSON!) { createWorkflow(input: {name: $n, definition: $d}) { id } }`,
			map[string]any{"n": fmt.Sprintf("load-%d-%d", i, time.Now().UnixNano()), "d": map[string]any{"nodes": []any{"a"}}}, &out); err != nil {
			return nil, fmt.Errorf("creating a workflow: %w", err)
		}
		workflows[i] = out.CreateWorkflow.ID
	}
	robots := make([]struct{ id, key string }, o.jobs)
	for i := range robots {
		var r struct{ CreateRobot struct{ ID string } }
		if err := l.user.do(ctx, `mutation($n: String!) { createRobot(input: {name: $n, maxConcurrentJobs: 100}) { id } }`,
			map[string]any{"n": fmt.Sprintf("load-bot-%d", i)}, &r); err != nil {
			return nil, fmt.Errorf("creating a robot: %w", err)
		}
		var k struct{ CreateApiKey struct{ Key string } }
		if err := l.user.do(ctx, `mutation($r: ID!) { createApiKey(robotId: $r, name: "load") { key } }`,
			map[string]any{"r": r.CreateRobot.ID}, &k); err != nil {
			return nil, fmt.Errorf("creating an API key: %w", err)
		}
		robots[i].id, robots[i].key = r.CreateRobot.ID, k.CreateApiKey.Key
	}

	base, err := readMemory(pids...)
	if err != nil {
		logf("no server memory figures: %v", err)
	}
	res.ServerBefore = base

	// Open the subscribers, a few at a time.
	logf("opening %d subscribers", o.subscribers)
	opened := time.Now()
	l.subs = make([]*subscriber, o.subscribers)
	var readers sync.WaitGroup
	readCtx, stopReading := context.WithCancel(context.Background())
	defer stopReading()
	sem := make(chan struct{}, o.dialers)
	var dialErr atomic.Pointer[error]
	var dialing sync.WaitGroup
	for i := range l.subs {
		s := &subscriber{index: i, group: i % o.spread}
		if i%max(1, o.subscribers/checked) == 0 {
			s.latest = map[string]int{}
		}
		l.subs[i] = s
		l.groups[s.group]++
		sem <- struct{}{}
		dialing.Go(func() {
			defer func() { <-sem }()
			if err := l.dial(ctx, s, workflows[s.group]); err != nil {
				dialErr.CompareAndSwap(nil, &err)
				return
			}
			readers.Go(func() { l.read(readCtx, s) })
		})
		if dialErr.Load() != nil {
			break
		}
	}
	dialing.Wait()
	if p := dialErr.Load(); p != nil {
		return nil, fmt.Errorf("opening subscriber: %w", *p)
	}
	res.OpenSeconds = time.Since(opened).Seconds()

	// A warm-up job per group, queued and cancelled at once (so no robot
	// claims it): once every subscriber has it, every subscription is live.
	for _, wf := range workflows {
		var out struct{ EnqueueJob jobRow }
		if err := l.user.do(ctx, `mutation($w: ID!) { enqueueJob(input: {workflowId: $w}) { `+jobFields+` } }`, map[string]any{"w": wf}, &out); err != nil {
			return nil, fmt.Errorf("queueing the warm-up job: %w", err)
		}
		l.warmup.Store(out.EnqueueJob.ID, true)
		if err := l.user.do(ctx, `mutation($j: ID!) { cancelJob(id: $j) { id } }`, map[string]any{"j": out.EnqueueJob.ID}, nil); err != nil {
			return nil, fmt.Errorf("cancelling the warm-up job: %w", err)
		}
	}
	if err := waitUntil(ctx, time.Minute, func() bool {
		for _, s := range l.subs {
			if !s.warm.Load() {
				return false
			}
		}
		return true
	}); err != nil {
		warm := 0
		for _, s := range l.subs {
			if s.warm.Load() {
				warm++
			}
		}
		return nil, fmt.Errorf("only %d of %d subscribers received the warm-up job: %w", warm, len(l.subs), err)
	}
	idle, _ := readMemory(pids...)
	res.ServerIdle = idle
	if base.RSS > 0 && idle.RSS > 0 {
		res.ServerBytesPerSubscriber = float64(idle.RSS-base.RSS) / float64(o.subscribers)
	}
	logf("%d subscribers live after %.1fs; server RSS %d MiB -> %d MiB", o.subscribers, res.OpenSeconds, base.RSS>>20, idle.RSS>>20)

	// Drive the jobs.
	l.driving.Store(true)
	startTotal := l.total.Load()
	driveCtx, stopDriving := context.WithTimeout(ctx, o.duration)
	defer stopDriving()
	tokens := pace(driveCtx, o.rate)
	var timesBefore map[string]int64
	if o.metricsURL != "" {
		timesBefore, _ = postBuckets(ctx, o.metricsURL)
	}
	cpuStart := sampleCPU(pids...)
	started := time.Now()
	var workers sync.WaitGroup
	for i, r := range robots {
		robot := api{base: l.user.base, token: r.key, client: client}
		workers.Go(func() { l.work(driveCtx, tokens, workflows[i%o.spread], i%o.spread, r.id, robot) })
	}
	workers.Wait()
	driven := time.Since(started)
	if timesBefore != nil {
		if after, err := postBuckets(ctx, o.metricsURL); err == nil {
			res.MutationServer = timesBetween(timesBefore, after)
		}
	}
	logf("drove %s; waiting for deliveries to drain", driven.Round(time.Millisecond))

	// Drain: until every expected delivery arrived, or nothing arrived for 3 s.
	_ = waitUntil(ctx, 60*time.Second, func() bool {
		l.mu.Lock()
		expected := l.expected
		l.mu.Unlock()
		quiet := time.Since(time.Unix(0, l.last.Load())) > 3*time.Second
		return l.total.Load()-startTotal >= expected || quiet
	})
	end, _ := readMemory(pids...)
	res.ServerEnd = end
	res.CPU = sampleCPU(pids...).minus(cpuStart)
	res.CPUSeconds = time.Since(started).Seconds()
	res.Cores = runtime.NumCPU()
	stopReading()
	for _, s := range l.subs {
		if s.raw != nil {
			_ = s.raw.nc.Close()
		} else {
			_ = s.conn.CloseNow()
		}
	}
	readers.Wait()

	// Every sampled subscriber must end with each job's final revision:
	// coalescing may skip revisions, never the last one.
	finals, err := l.finalRevisions(ctx, workflows)
	if err != nil {
		return nil, err
	}
	for _, s := range l.subs {
		if s.latest == nil {
			continue
		}
		res.Checked++
		for id, rev := range finals {
			if rev.group == s.group && s.latest[id] != rev.revision {
				res.Stale++
				if res.StaleExample == "" {
					res.StaleExample = fmt.Sprintf("job %s: subscriber has revision %d, database %d", id, s.latest[id], rev.revision)
				}
				break
			}
		}
	}

	// Collect.
	var lower, upper []int32
	for _, s := range l.subs {
		for _, p := range s.pending {
			if st, ok := l.stamps.Load(p.key); ok {
				s.lower = append(s.lower, micros(p.at.Sub(st.(stamp).returned)))
				s.upper = append(s.upper, micros(p.at.Sub(st.(stamp).sent)))
			}
		}
		lower, upper = append(lower, s.lower...), append(upper, s.upper...)
		if e := s.ended.Load(); e != nil {
			res.SubscribersEnded++
			if res.EndedExample == "" {
				res.EndedExample = *e
			}
		}
	}
	res.Deliveries = l.total.Load() - startTotal
	res.Expected = l.expected
	res.Mutations = len(l.rtts)
	res.DriveSeconds = driven.Seconds()
	if last := time.Unix(0, l.last.Load()); last.After(started) {
		res.DeliverySeconds = last.Sub(started).Seconds()
		res.DeliveriesPerSecond = float64(res.Deliveries) / res.DeliverySeconds
	}
	res.MutationsPerSecond = float64(res.Mutations) / driven.Seconds()
	res.LatencyLower = summarize(lower)
	res.LatencyUpper = summarize(upper)
	res.MutationRTT = summarize(l.rtts)
	res.Errors = len(l.errs)
	if len(l.errs) > 0 {
		res.ErrorExample = l.errs[0]
	}
	if self, err := readMemory(selfPID()); err == nil {
		res.ClientPeak = self.Peak
	}
	return res, nil
}

// checked is how many subscribers (at most) keep every job's last revision
// for the final-state check.
const checked = 1000

type final struct {
	revision int
	group    int
}

// finalRevisions reads the revision of every job the drive touched (the
// tenant's jobs but the warm-up's), by workflow group.
func (l *load) finalRevisions(ctx context.Context, workflows []string) (map[string]final, error) {
	out := map[string]final{}
	for g, wf := range workflows {
		after := ""
		for {
			var page struct {
				Jobs struct {
					Edges []struct {
						Node jobRow
					}
					PageInfo struct {
						HasNextPage bool
						EndCursor   string
					}
				}
			}
			vars := map[string]any{"w": wf}
			if after != "" {
				vars["a"] = after
			}
			if err := l.user.do(ctx, `query($w: ID, $a: String) { jobs(first: 500, after: $a, filter: {workflowId: $w}) { edges { node { `+jobFields+` } } pageInfo { hasNextPage endCursor } } }`,
				vars, &page); err != nil {
				return nil, fmt.Errorf("reading the jobs' final revisions: %w", err)
			}
			for _, e := range page.Jobs.Edges {
				if _, warm := l.warmup.Load(e.Node.ID); !warm {
					out[e.Node.ID] = final{e.Node.Revision, g}
				}
			}
			if !page.Jobs.PageInfo.HasNextPage {
				break
			}
			after = page.Jobs.PageInfo.EndCursor
		}
	}
	return out, nil
}

// dial opens one subscriber and starts its subscription.
func (l *load) dial(ctx context.Context, s *subscriber, workflow string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := l.o.url
	if len(l.o.urls) > 0 {
		url = l.o.urls[s.index%len(l.o.urls)]
	}
	query := `subscription { jobUpdated { op id revision job { status progress } } }`
	vars := map[string]any{}
	if l.o.spread > 1 {
		query = `subscription($w: ID) { jobUpdated(filter: {workflowId: $w}) { op id revision job { status progress } } }`
		vars["w"] = workflow
	}
	if l.o.distinct {
		// A selection of its own: the server cannot share this subscriber's results.
		query = strings.Replace(query, "op id", fmt.Sprintf("op id s%d: __typename", s.index), 1)
	}
	if l.o.lean && s.latest == nil {
		raw, err := dialRaw(ctx, url, l.o.token, query, vars)
		if err != nil {
			return err
		}
		s.raw = raw
		return nil
	}
	conn, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
	if err != nil {
		return err
	}
	conn.SetReadLimit(1 << 20)
	if err := wsjson.Write(ctx, conn, map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + l.o.token}}); err != nil {
		_ = conn.CloseNow()
		return err
	}
	var ack struct{ Type string }
	if err := wsjson.Read(ctx, conn, &ack); err != nil || ack.Type != "connection_ack" {
		_ = conn.CloseNow()
		return fmt.Errorf("connection_init answered %q: %v", ack.Type, err)
	}
	if err := wsjson.Write(ctx, conn, map[string]any{"id": "1", "type": "subscribe", "payload": map[string]any{"query": query, "variables": vars}}); err != nil {
		_ = conn.CloseNow()
		return err
	}
	s.conn = conn
	return nil
}

type inMessage struct {
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

type nextPayload struct {
	Data struct {
		JobUpdated struct {
			ID       string `json:"id"`
			Revision int    `json:"revision"`
		} `json:"jobUpdated"`
	} `json:"data"`
}

// read records every message of s until ctx ends or the socket closes.
func (l *load) read(ctx context.Context, s *subscriber) {
	if s.raw != nil {
		l.countRaw(ctx, s)
		return
	}
	for {
		var m inMessage
		if err := wsjson.Read(ctx, s.conn, &m); err != nil {
			if ctx.Err() == nil {
				msg := "connection closed: " + err.Error()
				s.ended.CompareAndSwap(nil, &msg)
			}
			return
		}
		at := time.Now()
		switch m.Type {
		case "ping":
			_ = wsjson.Write(ctx, s.conn, map[string]any{"type": "pong"})
			continue
		case "pong":
			continue
		case "next":
		default:
			msg := m.Type + " " + string(m.Payload)
			s.ended.CompareAndSwap(nil, &msg)
			continue
		}
		var p nextPayload
		if err := json.Unmarshal(m.Payload, &p); err != nil {
			continue
		}
		job := p.Data.JobUpdated
		if !l.driving.Load() {
			s.warm.Store(true) // the warm-up job: the subscription is live
			continue
		}
		if _, ok := l.warmup.Load(job.ID); ok {
			continue // its cancellation, late
		}
		s.messages.Add(1)
		if s.latest != nil {
			s.latest[job.ID] = job.Revision
		}
		l.total.Add(1)
		l.last.Store(at.UnixNano())
		k := key(job.ID, job.Revision)
		if st, ok := l.stamps.Load(k); ok {
			s.lower = append(s.lower, micros(at.Sub(st.(stamp).returned)))
			s.upper = append(s.upper, micros(at.Sub(st.(stamp).sent)))
		} else {
			// The notification beat the mutation's response back: match it at the end.
			s.pending = append(s.pending, received{k, at})
		}
	}
}

// counted records a `next` frame of a subscriber that is not sampled
// (-lean), finding the job's id without decoding the frame.
func (l *load) counted(s *subscriber, data []byte) {
	if !l.driving.Load() {
		s.warm.Store(true)
		return
	}
	if _, ok := l.warmup.Load(jobIDOf(data)); ok {
		return
	}
	s.messages.Add(1)
	l.total.Add(1)
	l.last.Store(time.Now().UnixNano())
}

// jobIDOf finds the job's id in a jobUpdated frame without decoding it:
// the first "id" after "jobUpdated" (the change's id, which is the job's).
func jobIDOf(frame []byte) string {
	i := bytes.Index(frame, []byte(`"jobUpdated":`))
	if i < 0 {
		return ""
	}
	rest := frame[i:]
	j := bytes.Index(rest, []byte(`"id":"`))
	if j < 0 || len(rest) < j+6+36 {
		return ""
	}
	return string(rest[j+6 : j+6+36])
}

// work drives jobs of one robot through their lifecycle until ctx ends:
// queue (as the user, targeted at the robot), claim, start, progress, complete.
func (l *load) work(ctx context.Context, tokens <-chan struct{}, workflow string, group int, robotID string, robot api) {
	for ctx.Err() == nil {
		j, _, ok := l.mutate(ctx, tokens, group, l.user, "enqueueJob",
			`mutation($w: ID!, $r: ID) { enqueueJob(input: {workflowId: $w, robotId: $r}) { `+jobFields+` } }`,
			map[string]any{"w": workflow, "r": robotID})
		if !ok {
			continue
		}
		// The robot claims its oldest job: this one, or one an error left behind.
		j, token, ok := l.mutate(ctx, tokens, group, robot, "claimJob", `mutation { claimJob { leaseToken job { `+jobFields+` } } }`, nil)
		if !ok {
			continue
		}
		lease := func(extra map[string]any) map[string]any {
			v := map[string]any{"j": j.ID, "l": token}
			for k, x := range extra {
				v[k] = x
			}
			return v
		}
		if _, _, ok = l.mutate(ctx, tokens, group, robot, "startJob",
			`mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { `+jobFields+` } }`, lease(nil)); !ok {
			continue
		}
		for step := 1; step <= l.o.steps && ok; step++ {
			_, _, ok = l.mutate(ctx, tokens, group, robot, "reportJobProgress",
				`mutation($j: ID!, $l: ID!, $p: Int!) { reportJobProgress(jobId: $j, leaseToken: $l, progress: $p) { `+jobFields+` } }`,
				lease(map[string]any{"p": step * 100 / (l.o.steps + 1)}))
		}
		if ok {
			l.mutate(ctx, tokens, group, robot, "completeJob",
				`mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}) { `+jobFields+` } }`, lease(nil))
		}
	}
}

// mutate runs one job mutation when the pacer allows, stamps it, and
// counts the deliveries it calls for. It returns the job after it (and the
// lease token of a claim).
func (l *load) mutate(ctx context.Context, tokens <-chan struct{}, group int, a api, field, query string, vars map[string]any) (jobRow, string, bool) {
	if tokens != nil {
		select {
		case <-ctx.Done():
			return jobRow{}, "", false
		case <-tokens:
		}
	}
	var data map[string]*struct {
		jobRow
		LeaseToken string  `json:"leaseToken"`
		Job        *jobRow `json:"job"`
	}
	// A mutation once sent runs to its end, so that its deliveries are
	// matched to it even when the drive ends meanwhile.
	sent := time.Now()
	err := a.do(context.WithoutCancel(ctx), query, vars, &data)
	returned := time.Now()
	v := data[field]
	if err == nil && v == nil {
		err = errors.New("no result (no job to claim)")
	}
	if err != nil {
		if ctx.Err() == nil {
			l.mu.Lock()
			l.errs = append(l.errs, fmt.Sprintf("%s: %v", field, err))
			l.mu.Unlock()
		}
		return jobRow{}, "", false
	}
	row := v.jobRow
	if v.Job != nil {
		row = *v.Job
	}
	l.stamps.Store(key(row.ID, row.Revision), stamp{sent, returned})
	l.mu.Lock()
	l.rtts = append(l.rtts, micros(returned.Sub(sent)))
	l.expected += int64(l.groups[group])
	l.mu.Unlock()
	return row, v.LeaseToken, true
}

// pace returns a channel yielding rate tokens per second until ctx ends,
// or nil for no limit. Unused tokens do not pile up into bursts.
func pace(ctx context.Context, rate float64) <-chan struct{} {
	if rate == 0 {
		return nil
	}
	tokens := make(chan struct{}, max(1, int(rate/100)))
	go func() {
		start := time.Now()
		var given int64
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				due := int64(rate * now.Sub(start).Seconds())
				for ; given < due; given++ {
					select {
					case tokens <- struct{}{}:
					default: // nobody is waiting: drop rather than burst later
					}
				}
			}
		}
	}()
	return tokens
}

// waitUntil polls cond until it holds, ctx ends or d passes.
func waitUntil(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("not within %s", d)
		case <-tick.C:
		}
	}
	return nil
}

func micros(d time.Duration) int32 {
	us := d.Microseconds()
	if us > 1<<31-1 {
		return 1<<31 - 1
	}
	return int32(us)
}

// summary is a latency distribution in milliseconds.
type summary struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50Ms"`
	P90 float64 `json:"p90Ms"`
	P99 float64 `json:"p99Ms"`
	Max float64 `json:"maxMs"`
}

func summarize(us []int32) summary {
	if len(us) == 0 {
		return summary{}
	}
	s := slices.Clone(us)
	slices.Sort(s)
	at := func(q float64) float64 { return float64(s[int(q*float64(len(s)-1))]) / 1000 }
	return summary{N: len(s), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: float64(s[len(s)-1]) / 1000}
}
