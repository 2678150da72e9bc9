// Package faulttest drives Fleetgraph's live updates through faults, as
// clients see them: websocket subscribers (graphql-transport-ws) that record
// the last state they received of every machine and job, a fleet that makes
// changes through the GraphQL API, and the check that every subscriber ends
// with what the database holds. Its own tests restart PostgreSQL, so they run
// on a private cluster of their own; other packages' fault tests use the
// helpers over their test databases. Only tests import it.
package faulttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/stretchr/testify/require"
)

// Deadline bounds every wait for a delivery. A dead listener is noticed by
// its ping within 5 s and pq retries with a backoff of up to 5 s, so 30 s is
// generous; the tests wait on events, never for a fixed time.
const Deadline = 30 * time.Second

// API speaks GraphQL over HTTP to one server as one credential.
type API struct {
	// URL is the server's base URL; the endpoint is URL + "/graphql".
	URL string
	// Token is sent as the bearer credential: a user's JWT or a robot's API key.
	Token string
}

// GraphQLError is a response's errors.
type GraphQLError struct {
	Messages []string
	Codes    []string
}

func (e *GraphQLError) Error() string {
	return fmt.Sprintf("graphql errors %v: %s", e.Codes, strings.Join(e.Messages, "; "))
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

// Do runs one query or mutation and decodes its data into out (when non-nil).
// Transport failures and GraphQL errors are both returned, so callers that
// write while the database is down can retry.
func (a API) Do(ctx context.Context, query string, vars map[string]any, out any) error {
	body, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.URL+"/graphql", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+a.Token)
	res, err := httpClient.Do(req)
	if err != nil {
		return fmt.Errorf("posting to %s: %w", a.URL, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return fmt.Errorf("reading the response: %w", err)
	}
	var r struct {
		Data   json.RawMessage `json:"data"`
		Errors []struct {
			Message    string         `json:"message"`
			Extensions map[string]any `json:"extensions"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("decoding %d %q: %w", res.StatusCode, raw, err)
	}
	if len(r.Errors) > 0 {
		ge := &GraphQLError{}
		for _, e := range r.Errors {
			code, _ := e.Extensions["code"].(string)
			ge.Messages, ge.Codes = append(ge.Messages, e.Message), append(ge.Codes, code)
		}
		return ge
	}
	if out != nil {
		if err := json.Unmarshal(r.Data, out); err != nil {
			return fmt.Errorf("decoding data %s: %w", r.Data, err)
		}
	}
	return nil
}

// Must is Do failing t on any error.
func (a API) Must(t testing.TB, query string, vars map[string]any, out any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Deadline)
	defer cancel()
	require.NoError(t, a.Do(ctx, query, vars, out), "running %s", query)
}

// Retry calls op until it succeeds, failing t with op's last error when
// Deadline passes: for writes while the database restarts. Retries follow the
// failures (each attempt is a request that itself waits for the server),
// paced only so a refused connection does not spin.
func Retry(t testing.TB, what string, op func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(Deadline)
	pace := time.NewTicker(50 * time.Millisecond)
	defer pace.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), Deadline)
		err := op(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not succeed within %s: %v", what, Deadline, err)
		}
		<-pace.C
	}
}

// Entity is an entity's state as a subscriber last received it, or as the
// database holds it.
type Entity struct {
	Op      string // CURRENT, CREATED, UPDATED or DELETED (empty in snapshots)
	Version int    // a machine's version, a job's revision
	Status  string
}

func (e Entity) String() string {
	if e.Op == "DELETED" {
		return "deleted"
	}
	return fmt.Sprintf("v%d %s", e.Version, e.Status)
}

// Snapshot is what the database holds, as a query returns it: entity id -> state.
type Snapshot map[string]Entity

// Subscription is one operation a Subscriber starts.
type Subscription struct {
	ID        string
	Query     string
	Variables map[string]any
}

const (
	machineFields = `op id version machine { status version }`
	jobFields     = `op id revision job { status revision }`
)

// AllMachines subscribes to every machine of the caller.
func AllMachines(id string) Subscription {
	return Subscription{ID: id, Query: `subscription { machineUpdated { ` + machineFields + ` } }`}
}

// OneMachine subscribes to one machine; its first message is the machine's state.
func OneMachine(id, machine string) Subscription {
	return Subscription{ID: id, Query: `subscription($id: ID) { machineUpdated(id: $id) { ` + machineFields + ` } }`,
		Variables: map[string]any{"id": machine}}
}

// AllJobs subscribes to every job of the caller's tenant.
func AllJobs(id string) Subscription {
	return Subscription{ID: id, Query: `subscription { jobUpdated { ` + jobFields + ` } }`}
}

// Stream is what one subscription received.
type Stream struct {
	// Latest is each entity's last received state.
	Latest map[string]Entity
	// Messages counts next messages.
	Messages int
	// Ended is the error or complete message that ended the stream, if any.
	Ended string
	// Backwards lists entities whose version went down between two messages.
	Backwards []string
}

// Subscriber is one graphql-transport-ws connection and its subscriptions.
type Subscriber struct {
	Name string
	conn *websocket.Conn

	mu      sync.Mutex
	streams map[string]*Stream
	closed  error         // why the connection ended, once it has
	changed chan struct{} // closed, and replaced, on every message
}

// Subscribe dials wsURL (ws://.../graphql) with token, starts subs, and reads
// until t ends.
func Subscribe(t testing.TB, name, wsURL, token string, subs ...Subscription) *Subscriber {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Deadline)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
	require.NoError(t, err, "dialling %s", wsURL)
	conn.SetReadLimit(1 << 20)
	require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + token}}))
	for {
		var ack map[string]any
		require.NoError(t, wsjson.Read(ctx, conn, &ack))
		if ack["type"] == "ping" {
			continue
		}
		require.Equal(t, "connection_ack", ack["type"], "got %v", ack)
		break
	}
	s := &Subscriber{Name: name, conn: conn, streams: map[string]*Stream{}, changed: make(chan struct{})}
	for _, sub := range subs {
		s.streams[sub.ID] = &Stream{Latest: map[string]Entity{}}
		require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"id": sub.ID, "type": "subscribe",
			"payload": map[string]any{"query": sub.Query, "variables": sub.Variables}}))
	}
	readCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.read(readCtx)
	}()
	t.Cleanup(func() {
		stop()
		_ = conn.CloseNow()
		<-done
	})
	return s
}

type wsMessage struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

func (s *Subscriber) read(ctx context.Context) {
	for {
		var m wsMessage
		if err := wsjson.Read(ctx, s.conn, &m); err != nil {
			s.mu.Lock()
			s.closed = err
			s.signalLocked()
			s.mu.Unlock()
			return
		}
		switch m.Type {
		case "ping":
			_ = wsjson.Write(ctx, s.conn, map[string]any{"type": "pong"})
			continue
		case "pong":
			continue
		}
		s.mu.Lock()
		s.record(m)
		s.signalLocked()
		s.mu.Unlock()
	}
}

// change is the part of machineUpdated and jobUpdated the streams record.
type change struct {
	Op       string `json:"op"`
	ID       string `json:"id"`
	Version  *int   `json:"version"`
	Revision *int   `json:"revision"`
	Machine  *struct {
		Status string `json:"status"`
	} `json:"machine"`
	Job *struct {
		Status string `json:"status"`
	} `json:"job"`
}

func (s *Subscriber) record(m wsMessage) {
	st := s.streams[m.ID]
	if st == nil {
		st = &Stream{Latest: map[string]Entity{}}
		s.streams[m.ID] = st
	}
	switch m.Type {
	case "next":
		var p struct {
			Data   map[string]change `json:"data"`
			Errors json.RawMessage   `json:"errors"`
		}
		if err := json.Unmarshal(m.Payload, &p); err != nil || len(p.Data) != 1 {
			st.Ended = fmt.Sprintf("undecodable next message %s", m.Payload)
			return
		}
		st.Messages++
		for _, c := range p.Data {
			e := Entity{Op: c.Op}
			switch {
			case c.Version != nil:
				e.Version = *c.Version
			case c.Revision != nil:
				e.Version = *c.Revision
			}
			switch {
			case c.Machine != nil:
				e.Status = c.Machine.Status
			case c.Job != nil:
				e.Status = c.Job.Status
			}
			if prev, ok := st.Latest[c.ID]; ok && prev.Op != "DELETED" && e.Op != "DELETED" && e.Version < prev.Version {
				st.Backwards = append(st.Backwards, fmt.Sprintf("%s: v%d after v%d", c.ID, e.Version, prev.Version))
			}
			st.Latest[c.ID] = e
		}
	default: // error or complete: the server ended the subscription
		st.Ended = m.Type + " " + string(m.Payload)
	}
}

func (s *Subscriber) signalLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// View is a subscriber's state, read under its lock.
type View struct {
	Streams map[string]*Stream
	// Closed is why the connection ended, if it has.
	Closed error
}

// WaitFor waits until cond holds for the subscriber's state; when Deadline
// passes first it fails t with what and the text explain returns (called
// with the last state, to say what is missing).
func (s *Subscriber) WaitFor(t testing.TB, what string, cond func(View) bool, explain func(View) string) {
	t.Helper()
	timer := time.NewTimer(Deadline)
	defer timer.Stop()
	for {
		s.mu.Lock()
		v := View{Streams: s.streams, Closed: s.closed}
		ok := cond(v)
		changed := s.changed
		var why string
		if !ok {
			why = explain(v)
		}
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("subscriber %s: %s did not happen within %s: %s", s.Name, what, Deadline, why)
		}
	}
}

// Received waits up to within for the stream to hold entity at version or
// later, and reports whether it does; unlike WaitReceived it does not fail
// the test, for callers that poke again when a change was not seen (a
// subscription without a first state cannot say when the hub registered it).
func (s *Subscriber) Received(stream, entity string, version int, within time.Duration) bool {
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		s.mu.Lock()
		st := s.streams[stream]
		ok := st != nil && st.Latest[entity].Version >= version
		changed := s.changed
		s.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return false
		}
	}
}

// Stream returns a copy of one stream's state.
func (s *Subscriber) Stream(id string) Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[id]
	if st == nil {
		return Stream{}
	}
	c := *st
	c.Latest = make(map[string]Entity, len(st.Latest))
	for k, v := range st.Latest {
		c.Latest[k] = v
	}
	c.Backwards = slices.Clone(st.Backwards)
	return c
}

// Mismatch describes how a stream's latest states differ from want, or
// returns "" when they agree. Entities the stream has that want lacks must
// be DELETED in it; with exact, the stream may hold nothing but want's ids.
func Mismatch(st *Stream, want Snapshot, exact bool) string {
	if st == nil {
		return "no messages at all"
	}
	var diffs []string
	if st.Ended != "" {
		diffs = append(diffs, "stream ended: "+st.Ended)
	}
	for id, w := range want {
		got, ok := st.Latest[id]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: never received, database has %s", id, w))
		case got.Op == "DELETED" || got.Version != w.Version || got.Status != w.Status:
			diffs = append(diffs, fmt.Sprintf("%s: received %s, database has %s", id, got, w))
		}
	}
	for id, got := range st.Latest {
		if _, ok := want[id]; ok {
			continue
		}
		if exact {
			diffs = append(diffs, fmt.Sprintf("%s: received %s, but the subscription is not about it", id, got))
		} else if got.Op != "DELETED" {
			diffs = append(diffs, fmt.Sprintf("%s: received %s, but the database no longer has it", id, got))
		}
	}
	slices.Sort(diffs)
	if len(diffs) > 12 {
		diffs = append(diffs[:12], fmt.Sprintf("and %d more", len(diffs)-12))
	}
	return strings.Join(diffs, "; ")
}

// WaitConverged waits until stream id of s agrees with want (see Mismatch).
func (s *Subscriber) WaitConverged(t testing.TB, id string, want Snapshot, exact bool) {
	t.Helper()
	s.WaitFor(t, "stream "+id+" reaching the database's state",
		func(v View) bool { return Mismatch(v.Streams[id], want, exact) == "" },
		func(v View) string { return Mismatch(v.Streams[id], want, exact) + closedNote(v) })
	st := s.Stream(id)
	require.Empty(t, st.Backwards, "subscriber %s stream %s: versions went backwards", s.Name, id)
}

// WaitReceived waits until stream id of s has entity at version or later.
func (s *Subscriber) WaitReceived(t testing.TB, stream, entity string, version int) {
	t.Helper()
	s.WaitFor(t, fmt.Sprintf("stream %s receiving %s v%d", stream, entity, version),
		func(v View) bool {
			st := v.Streams[stream]
			return st != nil && st.Latest[entity].Version >= version
		},
		func(v View) string {
			st := v.Streams[stream]
			if st == nil {
				return "no messages" + closedNote(v)
			}
			return fmt.Sprintf("latest %s, ended %q%s", st.Latest[entity], st.Ended, closedNote(v))
		})
}

func closedNote(v View) string {
	if v.Closed != nil {
		return fmt.Sprintf(" (connection closed: %v)", v.Closed)
	}
	return ""
}

// Fleet is one user's machines and one robot working through jobs, changed
// through the API.
type Fleet struct {
	User     API
	Robot    API
	RobotID  string
	Workflow string
	// Machines are the live machines' ids, in creation order.
	Machines []string
	status   map[string]string // last known status of each machine
	step     int               // makes each TouchMachine write a new configuration

	job *fleetJob // the job the robot is working through, if any
}

type fleetJob struct {
	id, lease string
	status    string
	progress  int
}

// NewFleet creates n machines, a workflow and a robot with an API key for the
// user whose JWT is userToken, on the server at url.
func NewFleet(t testing.TB, url, userToken string, machines int) *Fleet {
	t.Helper()
	f := &Fleet{User: API{URL: url, Token: userToken}, status: map[string]string{}}
	for range machines {
		f.CreateMachine(t)
	}
	var wf struct{ CreateWorkflow struct{ ID string } }
	f.User.Must(t, `mutation($d: JSON!) { createWorkflow(input: {name: "fault-flow", definition: $d}) { id } }`,
		map[string]any{"d": map[string]any{"nodes": []any{"a"}}}, &wf)
	f.Workflow = wf.CreateWorkflow.ID
	var robot struct{ CreateRobot struct{ ID string } }
	f.User.Must(t, `mutation { createRobot(input: {name: "fault-bot", maxConcurrentJobs: 1}) { id } }`, nil, &robot)
	f.RobotID = robot.CreateRobot.ID
	var key struct{ CreateApiKey struct{ Key string } }
	f.User.Must(t, `mutation($r: ID!) { createApiKey(robotId: $r, name: "agent") { key } }`, map[string]any{"r": f.RobotID}, &key)
	f.Robot = API{URL: url, Token: key.CreateApiKey.Key}
	return f
}

type machineRow struct {
	ID      string
	Status  string
	Version int
}

// CreateMachine creates one more machine and returns its id.
func (f *Fleet) CreateMachine(t testing.TB) string {
	t.Helper()
	var out struct{ CreateMachine machineRow }
	f.User.Must(t, `mutation($n: String!) { createMachine(input: {name: $n}) { id status version } }`,
		map[string]any{"n": fmt.Sprintf("fault-%d-%d", len(f.Machines), time.Now().UnixNano())}, &out)
	f.Machines = append(f.Machines, out.CreateMachine.ID)
	f.status[out.CreateMachine.ID] = out.CreateMachine.Status
	return out.CreateMachine.ID
}

// TouchMachine changes machine id's configuration, bumping its version, and
// returns the new version. Repeating it after a failure is harmless.
func (f *Fleet) TouchMachine(ctx context.Context, id string) (int, error) {
	f.step++
	var out struct{ UpdateMachine machineRow }
	err := f.User.Do(ctx, `mutation($id: ID!, $c: JSON!) { updateMachine(id: $id, input: {configuration: $c}) { id status version } }`,
		map[string]any{"id": id, "c": map[string]any{"step": f.step}}, &out)
	return out.UpdateMachine.Version, err
}

// ToggleMachine starts a stopped machine or stops a running one, and returns
// its new version.
func (f *Fleet) ToggleMachine(ctx context.Context, id string) (int, error) {
	op := "startMachine"
	if f.status[id] == "RUNNING" {
		op = "stopMachine"
	}
	var out map[string]machineRow
	if err := f.User.Do(ctx, `mutation($id: ID!) { `+op+`(id: $id) { id status version } }`, map[string]any{"id": id}, &out); err != nil {
		return 0, err
	}
	f.status[id] = out[op].Status
	return out[op].Version, nil
}

// DeleteMachine deletes machine id.
func (f *Fleet) DeleteMachine(t testing.TB, id string) {
	t.Helper()
	f.User.Must(t, `mutation($id: ID!) { deleteMachine(id: $id) }`, map[string]any{"id": id}, nil)
	f.Machines = slices.DeleteFunc(f.Machines, func(m string) bool { return m == id })
	delete(f.status, id)
}

// AdvanceJob moves the robot's work on by one step: queue a job, claim it,
// start it, report progress in quarters, complete it. It returns the job's
// id and revision after the step. A failed step is tried again by the next call.
func (f *Fleet) AdvanceJob(ctx context.Context) (string, int, error) {
	type jobRow struct {
		ID       string
		Status   string
		Progress int
		Revision int
	}
	const fields = `id status progress revision`
	var got jobRow
	switch j := f.job; {
	case j == nil || j.status == "COMPLETED":
		var out struct{ EnqueueJob jobRow }
		if err := f.User.Do(ctx, `mutation($w: ID!) { enqueueJob(input: {workflowId: $w}) { `+fields+` } }`,
			map[string]any{"w": f.Workflow}, &out); err != nil {
			return "", 0, err
		}
		got = out.EnqueueJob
		f.job = &fleetJob{id: got.ID}
	case j.status == "QUEUED":
		var out struct {
			ClaimJob *struct {
				LeaseToken string
				Job        jobRow
			}
		}
		if err := f.Robot.Do(ctx, `mutation { claimJob { leaseToken job { `+fields+` } } }`, nil, &out); err != nil {
			return "", 0, err
		}
		if out.ClaimJob == nil || out.ClaimJob.Job.ID != j.id {
			return "", 0, fmt.Errorf("claiming job %s: got %+v", j.id, out.ClaimJob)
		}
		got, j.lease = out.ClaimJob.Job, out.ClaimJob.LeaseToken
	case j.status == "CLAIMED":
		var out struct{ StartJob jobRow }
		if err := f.Robot.Do(ctx, `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { `+fields+` } }`,
			map[string]any{"j": j.id, "l": j.lease}, &out); err != nil {
			return "", 0, err
		}
		got = out.StartJob
	case j.progress < 100:
		var out struct{ ReportJobProgress jobRow }
		if err := f.Robot.Do(ctx, `mutation($j: ID!, $l: ID!, $p: Int!) { reportJobProgress(jobId: $j, leaseToken: $l, progress: $p) { `+fields+` } }`,
			map[string]any{"j": j.id, "l": j.lease, "p": j.progress + 25}, &out); err != nil {
			return "", 0, err
		}
		got = out.ReportJobProgress
	default:
		var out struct{ CompleteJob jobRow }
		if err := f.Robot.Do(ctx, `mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}) { `+fields+` } }`,
			map[string]any{"j": j.id, "l": j.lease}, &out); err != nil {
			return "", 0, err
		}
		got = out.CompleteJob
	}
	f.job.status, f.job.progress = got.Status, got.Progress
	return got.ID, got.Revision, nil
}

// MustAdvanceJob is AdvanceJob failing t on error.
func (f *Fleet) MustAdvanceJob(t testing.TB) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Deadline)
	defer cancel()
	id, rev, err := f.AdvanceJob(ctx)
	require.NoError(t, err)
	return id, rev
}

// WaitLive returns once every subscriber's machineStream (a subscription to
// every machine, which has no first state) has received a change, and, if
// jobStream is not "", its jobStream (every job) too. Nothing says when the
// server has registered such a subscription, and a change before that is
// not sent, so a test that counts on its streams seeing every write waits
// here first: it touches the first machine (and enqueues a job) and gives
// each stream two seconds to see them, again until all have, within
// Deadline. The probe jobs wait a day to run, so the fleet's robot does
// not claim them.
func (f *Fleet) WaitLive(t testing.TB, subs []*Subscriber, machineStream, jobStream string) {
	t.Helper()
	deadline := time.Now().Add(Deadline)
	for {
		require.True(t, time.Now().Before(deadline), "the subscriptions received no change within %s", Deadline)
		ctx, cancel := context.WithTimeout(context.Background(), Deadline)
		version, err := f.TouchMachine(ctx, f.Machines[0])
		require.NoError(t, err, "touching a machine")
		var job struct {
			EnqueueJob struct {
				ID       string
				Revision int
			}
		}
		if jobStream != "" {
			err = f.User.Do(ctx, `mutation($w: ID!, $at: Time) { enqueueJob(input: {workflowId: $w, runAt: $at}) { id revision } }`,
				map[string]any{"w": f.Workflow, "at": time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)}, &job)
			require.NoError(t, err, "enqueueing a job")
		}
		cancel()
		live := true
		for _, s := range subs {
			live = live && s.Received(machineStream, f.Machines[0], version, 2*time.Second) &&
				(jobStream == "" || s.Received(jobStream, job.EnqueueJob.ID, job.EnqueueJob.Revision, 2*time.Second))
		}
		if live {
			return
		}
	}
}

// MachineSnapshot returns the user's machines as a query returns them.
func (f *Fleet) MachineSnapshot(t testing.TB) Snapshot {
	t.Helper()
	var out struct {
		Machines struct {
			Edges []struct{ Node machineRow }
		}
	}
	f.User.Must(t, `{ machines(first: 500) { edges { node { id status version } } } }`, nil, &out)
	snap := Snapshot{}
	for _, e := range out.Machines.Edges {
		snap[e.Node.ID] = Entity{Version: e.Node.Version, Status: e.Node.Status}
	}
	return snap
}

// JobSnapshot returns the tenant's jobs as a query returns them.
func (f *Fleet) JobSnapshot(t testing.TB) Snapshot {
	t.Helper()
	var out struct {
		Jobs struct {
			Edges []struct {
				Node struct {
					ID       string
					Status   string
					Revision int
				}
			}
		}
	}
	f.User.Must(t, `{ jobs(first: 500) { edges { node { id status revision } } } }`, nil, &out)
	snap := Snapshot{}
	for _, e := range out.Jobs.Edges {
		snap[e.Node.ID] = Entity{Version: e.Node.Revision, Status: e.Node.Status}
	}
	return snap
}

// Only returns the part of snap about ids.
func (snap Snapshot) Only(ids ...string) Snapshot {
	out := Snapshot{}
	for _, id := range ids {
		if e, ok := snap[id]; ok {
			out[id] = e
		}
	}
	return out
}

// WSURL turns a server's base http:// URL into its websocket endpoint.
func WSURL(base string) string { return "ws" + strings.TrimPrefix(base, "http") + "/graphql" }
