package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/db"
)

// The job queue as its callers see it: a tenant with a workflow, robots with
// API keys, and the calls that enqueue, claim and finish jobs. Each Tenant
// is fresh, so tests sharing a server keep their queues apart by giving each
// subtest a Tenant of its own.

// Client speaks GraphQL over HTTP without a testing.T, so goroutines can use
// it; Server.Do fails the test, which only the test's goroutine may.
type Client struct {
	url string
	hc  *http.Client
}

// NewClient is a Client of s whose idle connections close when t ends.
func NewClient(t testing.TB, s *Server) *Client {
	tr := &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512}
	t.Cleanup(tr.CloseIdleConnections)
	return &Client{url: s.URL + "/graphql", hc: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
}

// Result is a decoded GraphQL response.
type Result struct {
	Data   json.RawMessage `json:"data"`
	Errors []Error         `json:"errors"`
}

// Do posts query as token (a JWT or a raw robot API key).
func (c *Client) Do(ctx context.Context, token, query string, vars map[string]any) (*Result, error) {
	body, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var out Result
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("decoding a %d response: %w", res.StatusCode, err)
	}
	return &out, nil
}

// Decode decodes the data into v, or returns the first GraphQL error.
func (r *Result) Decode(v any) error {
	if len(r.Errors) > 0 {
		return fmt.Errorf("%s: %s (%v)", r.Errors[0].Code(), r.Errors[0].Message, r.Errors[0].Extensions)
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(r.Data, v)
}

// Tenant is a fresh tenant on a shared server: a user and a workflow
// without assignments.
type Tenant struct {
	Server   *Server
	Client   *Client
	User     User
	Workflow string // the id of the workflow its jobs are of
}

// NewTenant creates a tenant on s, with a user and a workflow named "main".
func NewTenant(t testing.TB, s *Server) *Tenant {
	t.Helper()
	tn := &Tenant{Server: s, Client: NewClient(t, s), User: s.NewUser(t, uuid.New())}
	tn.Workflow = tn.CreateWorkflow(t, "main")
	return tn
}

// Do runs a query as the tenant's user that must succeed.
func (tn *Tenant) Do(t testing.TB, query string, vars map[string]any, out any) {
	t.Helper()
	tn.Server.Do(t, tn.User.Token, query, vars).OK(t, out)
}

// CreateWorkflow creates a workflow named name with no nodes, and returns its id.
func (tn *Tenant) CreateWorkflow(t testing.TB, name string) string {
	t.Helper()
	var out struct{ CreateWorkflow struct{ ID string } }
	tn.Do(t, `mutation($n: String!) { createWorkflow(input: {name: $n, definition: {nodes: []}}) { id } }`, map[string]any{"n": name}, &out)
	return out.CreateWorkflow.ID
}

// RobotOpts are a new robot's optional settings.
type RobotOpts struct {
	Capabilities []string
	Slots        int // maxConcurrentJobs; 0 means the default (1)
}

// Robot is a robot and the API key it calls with.
type Robot struct {
	ID, Key, Name string
	Slots         int
	Tenant        *Tenant
}

// CreateRobot creates a robot named name, with an API key to call as.
func (tn *Tenant) CreateRobot(t testing.TB, name string, o RobotOpts) *Robot {
	t.Helper()
	in := map[string]any{"name": name, "capabilities": o.Capabilities}
	if o.Capabilities == nil {
		in["capabilities"] = []string{}
	}
	if o.Slots > 0 {
		in["maxConcurrentJobs"] = o.Slots
	}
	var robot struct{ CreateRobot struct{ ID string } }
	tn.Do(t, `mutation($in: CreateRobotInput!) { createRobot(input: $in) { id } }`, map[string]any{"in": in}, &robot)
	var key struct{ CreateApiKey struct{ Key string } }
	tn.Do(t, `mutation($r: ID!) { createApiKey(robotId: $r, name: "agent") { key } }`, map[string]any{"r": robot.CreateRobot.ID}, &key)
	return &Robot{ID: robot.CreateRobot.ID, Key: key.CreateApiKey.Key, Name: name, Slots: max(o.Slots, 1), Tenant: tn}
}

// JobFields is everything about a job a robot or user can read, but logs.
const JobFields = `id workflowId workflowVersion status priority input result error progress currentNode
	robotId targetRobotId attempt maxAttempts leaseExpiresAt runAfter requiredCapabilities
	createdAt claimedAt startedAt finishedAt updatedAt revision`

// Job is a job as JobFields (and logs, when asked for) read it.
type Job struct {
	ID                   string
	WorkflowID           string
	WorkflowVersion      int
	Status               string
	Priority             int
	Input                map[string]any
	Result               map[string]any
	Error                *string
	Progress             int
	CurrentNode          *string
	RobotID              *string
	TargetRobotID        *string
	Attempt              int
	MaxAttempts          int
	LeaseExpiresAt       *time.Time
	RunAfter             time.Time
	RequiredCapabilities []string
	CreatedAt            time.Time
	ClaimedAt            *time.Time
	StartedAt            *time.Time
	FinishedAt           *time.Time
	UpdatedAt            time.Time
	Revision             int
	Logs                 []JobLog
}

// JobLog is one of a job's log lines.
type JobLog struct {
	Level   string
	Message string
	Fields  map[string]any
	At      time.Time
}

// Enqueue queues a job of the tenant's workflow, with in's fields on top.
func (tn *Tenant) Enqueue(t testing.TB, in map[string]any) Job {
	t.Helper()
	full := map[string]any{"workflowId": tn.Workflow}
	for k, v := range in {
		full[k] = v
	}
	var out struct{ EnqueueJob Job }
	tn.Do(t, `mutation($in: EnqueueJobInput!) { enqueueJob(input: $in) { `+JobFields+` } }`, map[string]any{"in": full}, &out)
	return out.EnqueueJob
}

// Job reads a job as the tenant's user, with its newest logs.
func (tn *Tenant) Job(t testing.TB, id string) Job {
	t.Helper()
	var out struct{ Job *Job }
	tn.Do(t, `query($id: ID!) { job(id: $id) { `+JobFields+` logs { level message fields at } } }`, map[string]any{"id": id}, &out)
	require.NotNil(t, out.Job, "job %s is not visible to its tenant's user", id)
	return *out.Job
}

// Snapshot is everything about a job as raw JSON, to prove a refused call
// changed nothing (revision and updatedAt included).
func (tn *Tenant) Snapshot(t testing.TB, id string) string {
	t.Helper()
	resp := tn.Server.Do(t, tn.User.Token, `query($id: ID!) { job(id: $id) { `+JobFields+` logs { level message fields at } } }`, map[string]any{"id": id})
	resp.OK(t, nil)
	return string(resp.Data)
}

// Lease is what claimJob returns.
type Lease struct {
	LeaseToken     string
	LeaseExpiresAt time.Time
	Job            Job
}

// ClaimQuery claims a job, waiting up to $w seconds.
const ClaimQuery = `mutation($w: Int) { claimJob(waitSeconds: $w) { leaseToken leaseExpiresAt job { ` + JobFields + ` } } }`

// Claim asks for a job, waiting up to wait seconds; nil when none came.
func (r *Robot) Claim(t testing.TB, wait int) *Lease {
	t.Helper()
	var out struct{ ClaimJob *Lease }
	r.Tenant.Server.Do(t, r.Key, ClaimQuery, map[string]any{"w": wait}).OK(t, &out)
	return out.ClaimJob
}

// Claimed is the outcome of a claim made in a goroutine.
type Claimed struct {
	Lease *Lease
	Err   error
}

// ClaimAsync claims in a goroutine; the request ends with the test.
func (r *Robot) ClaimAsync(t testing.TB, wait int) <-chan Claimed {
	ch := make(chan Claimed, 1)
	ctx := t.Context()
	go func() {
		res, err := r.Tenant.Client.Do(ctx, r.Key, ClaimQuery, map[string]any{"w": wait})
		if err != nil {
			ch <- Claimed{Err: err}
			return
		}
		var out struct{ ClaimJob *Lease }
		ch <- Claimed{Lease: out.ClaimJob, Err: res.Decode(&out)}
	}()
	return ch
}

// ReceiveClaim waits for a goroutine's claim, failing t after within.
func ReceiveClaim(t testing.TB, ch <-chan Claimed, within time.Duration) *Lease {
	t.Helper()
	select {
	case c := <-ch:
		require.NoError(t, c.Err)
		return c.Lease
	case <-time.After(within):
		require.FailNow(t, "the claim did not return", "waited %s", within)
		return nil
	}
}

// FencedOp is a fenced robot call about one job.
type FencedOp struct {
	Name, Query string
}

// FencedOps are the robot's calls about a job it holds, with valid arguments.
func FencedOps() []FencedOp {
	return []FencedOp{
		{"startJob", `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { id status } }`},
		{"reportJobProgress", `mutation($j: ID!, $l: ID!) { reportJobProgress(jobId: $j, leaseToken: $l, progress: 10, currentNode: "n", message: "m") { id status } }`},
		{"completeJob", `mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}) { id status } }`},
		{"failJob", `mutation($j: ID!, $l: ID!) { failJob(jobId: $j, leaseToken: $l, error: "broke", retryable: true) { id status } }`},
		{"appendJobLogs", `mutation($j: ID!, $l: ID!) { appendJobLogs(jobId: $j, leaseToken: $l, entries: [{level: INFO, message: "x"}]) }`},
	}
}

// FencedOpNamed is the fenced call of FencedOps named name.
func FencedOpNamed(name string) FencedOp {
	for _, op := range FencedOps() {
		if op.Name == name {
			return op
		}
	}
	panic("no fenced op " + name)
}

// Call makes a fenced call about jobID under token.
func (r *Robot) Call(t testing.TB, op string, jobID, token string) *Response {
	t.Helper()
	return r.Tenant.Server.Do(t, r.Key, FencedOpNamed(op).Query, map[string]any{"j": jobID, "l": token})
}

// Start starts the job of l, which must then be RUNNING.
func (r *Robot) Start(t testing.TB, l *Lease) {
	t.Helper()
	var out struct{ StartJob struct{ Status string } }
	r.Call(t, "startJob", l.Job.ID, l.LeaseToken).OK(t, &out)
	require.Equal(t, "RUNNING", out.StartJob.Status)
}

// Complete completes the job of l with result, and returns the job.
func (r *Robot) Complete(t testing.TB, l *Lease, result map[string]any) Job {
	t.Helper()
	var out struct{ CompleteJob Job }
	r.Tenant.Server.Do(t, r.Key, `mutation($j: ID!, $l: ID!, $r: JSON) { completeJob(jobId: $j, leaseToken: $l, result: $r) { `+JobFields+` } }`,
		map[string]any{"j": l.Job.ID, "l": l.LeaseToken, "r": result}).OK(t, &out)
	return out.CompleteJob
}

// Fail fails the job of l for reason, and returns the job.
func (r *Robot) Fail(t testing.TB, l *Lease, reason string, retryable bool) Job {
	t.Helper()
	var out struct{ FailJob Job }
	r.Tenant.Server.Do(t, r.Key, `mutation($j: ID!, $l: ID!, $e: String!, $r: Boolean) { failJob(jobId: $j, leaseToken: $l, error: $e, retryable: $r) { `+JobFields+` } }`,
		map[string]any{"j": l.Job.ID, "l": l.LeaseToken, "e": reason, "r": retryable}).OK(t, &out)
	return out.FailJob
}

// Heartbeat reports the robot's status.
func (r *Robot) Heartbeat(t testing.TB, status string) {
	t.Helper()
	r.Tenant.Server.Do(t, r.Key, `mutation($s: RobotStatus!) { heartbeat(input: {status: $s}) { id } }`, map[string]any{"s": status}).OK(t, nil)
}

// Patience bounds a test's wait for something it expects to happen (a
// message, a state, a claim's return, a lock waiter). It is reached only
// when that never happens, so it is generous: a machine running two suites
// at once on 2 cores has stalled a test past 20 s. It is not for durations
// a test expects to run out, nor for "nothing happens for d" checks.
const Patience = 2 * time.Minute

// Eventually polls cond until it holds, failing t after within.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			require.FailNow(t, "timed out waiting until "+what, "waited %s", within)
		case <-tick.C:
		}
	}
}

// LongLeaseQueue is a queue whose leases never run out by themselves during
// a test (an hour, heartbeats extending them for a day), whose robots never
// go silent by the clock, and whose rescued jobs are claimable at once. Tests
// make time pass for a job in the database (graph/jobtests' jqAge and
// jqExpire), so a busy machine can neither expire a lease early nor keep one
// alive late.
func LongLeaseQueue() db.QueueConfig {
	return db.QueueConfig{Lease: time.Hour, ProgressTimeout: 24 * time.Hour, RetryBackoff: 0, MaxRetryBackoff: 0,
		OfflineAfter: 24 * time.Hour, HeartbeatSample: time.Minute}
}
