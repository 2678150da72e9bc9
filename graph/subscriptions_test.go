package graph_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
	"fleetgraph/realtime"
)

// The semantics of each subscription, driven over graphql-transport-ws as
// clients drive them. Helpers shared by subscriptions_*_test.go start with lv
// (live).
//
// A subscription to one entity is live once its CURRENT message arrives. A
// subscription to many has no first message, so a test makes it live with
// lvConn.sync: it changes a probe entity the subscription must see until
// that change arrives, and from then on ignores the probe's messages. Waits
// are for messages, bounded by deadlines; "nothing arrives" is asserted with
// a barrier: a later change whose message must be the next one.

const lvWait = apitest.Patience

const (
	lvMachineSub  = `subscription($id: ID) { machineUpdated(id: $id) { op id version machine { id name status version } } }`
	lvEventSub    = `subscription($m: ID!) { machineEventAdded(machineId: $m) { id machineId eventType details actor } }`
	lvRobotSub    = `subscription($id: ID) { robotUpdated(id: $id) { op id revision robot { id name hostname status revision } } }`
	lvPresenceSub = `subscription { fleetPresence { robotId status hostname at } }`
	lvJobSub      = `subscription($id: ID, $f: JobUpdateFilter) { jobUpdated(id: $id, filter: $f) {
		op id revision job { id status workflowId robotId progress currentNode revision input } } }`
)

type lvMachineChange struct {
	Op      string
	ID      string
	Version int
	Machine *struct {
		ID, Name, Status string
		Version          int
	}
}

type lvEvent struct {
	ID, MachineID, EventType, Actor string
	Details                         map[string]any
}

type lvRobotChange struct {
	Op       string
	ID       string
	Revision int
	Robot    *struct {
		ID, Name, Hostname, Status string
		Revision                   int
	}
}

type lvPresence struct {
	RobotID, Status, Hostname string
	At                        time.Time
}

type lvJob struct {
	ID, Status, WorkflowID string
	RobotID                *string
	Progress               int
	CurrentNode            *string
	Revision               int
	Input                  map[string]any
}

type lvJobChange struct {
	Op       string
	ID       string
	Revision int
	Job      *lvJob
}

// lvMsg is one graphql-transport-ws message.
type lvMsg struct {
	ID      string          `json:"id,omitempty"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// lvReadRaw reads the next message that is not a keep-alive from a socket
// the test reads itself (rather than through lvConn), within lvWait of the
// call: each message has its own deadline, so the writes a test makes
// between reads take as long as a busy machine makes them.
func lvReadRaw(t *testing.T, conn *websocket.Conn, msgAndArgs ...any) lvMsg {
	t.Helper()
	for {
		var m lvMsg
		ctx, cancel := context.WithTimeout(t.Context(), lvWait)
		err := wsjson.Read(ctx, conn, &m)
		cancel()
		require.NoError(t, err, msgAndArgs...)
		if m.Type != "ping" && m.Type != "pong" {
			return m
		}
	}
}

// value decodes a `next` message's one root field into out; the message must
// have no errors.
func (m lvMsg) value(t *testing.T, out any) {
	t.Helper()
	require.Equal(t, "next", m.Type, "expected next, got %+v %s", m, m.Payload)
	var p struct {
		Data   map[string]json.RawMessage
		Errors []apitest.Error
	}
	require.NoError(t, json.Unmarshal(m.Payload, &p))
	require.Empty(t, p.Errors, "%s", m.Payload)
	require.Len(t, p.Data, 1, "%s", m.Payload)
	for _, v := range p.Data {
		require.NoError(t, json.Unmarshal(v, out), "%s", v)
	}
}

// field returns a string field of a `next` message's root value (e.g. its
// "id" or "robotId"), or "" when there is none.
func (m lvMsg) field(name string) string {
	var p struct{ Data map[string]map[string]any }
	if m.Type != "next" || json.Unmarshal(m.Payload, &p) != nil {
		return ""
	}
	for _, v := range p.Data {
		s, _ := v[name].(string)
		return s
	}
	return ""
}

// lvConn is a graphql-transport-ws connection whose messages a goroutine
// reads as they come, so tests wait for them with deadlines without breaking
// the socket (an expiring read context closes a coder/websocket connection).
type lvConn struct {
	t      *testing.T
	ws     *websocket.Conn
	msgs   chan lvMsg
	closed chan struct{}
	err    error                       // why reading stopped; set before closed is closed
	skip   map[string]func(lvMsg) bool // per operation: probe messages to ignore
}

// lvConnect opens an acknowledged connection for a user's token or a robot's key.
func lvConnect(t *testing.T, s *apitest.Server, credential string) *lvConn {
	t.Helper()
	return lvConnectWith(t, s, credential, nil)
}

// lvConnectWith is lvConnect with the upgrade request's header.
func lvConnectWith(t *testing.T, s *apitest.Server, credential string, header http.Header) *lvConn {
	t.Helper()
	payload := map[string]any{}
	if credential != "" {
		payload["Authorization"] = "Bearer " + credential
	}
	ws := wsDial(t, s, payload, header)
	c := &lvConn{t: t, ws: ws, msgs: make(chan lvMsg, 4096), closed: make(chan struct{}), skip: map[string]func(lvMsg) bool{}}
	go func() {
		defer close(c.closed)
		for {
			var m lvMsg
			if err := wsjson.Read(context.Background(), ws, &m); err != nil {
				c.err = err
				return
			}
			c.msgs <- m
		}
	}()
	return c
}

func (c *lvConn) subscribe(id, query string, vars map[string]any) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), lvWait)
	defer cancel()
	require.NoError(c.t, wsjson.Write(ctx, c.ws, map[string]any{"id": id, "type": "subscribe",
		"payload": map[string]any{"query": query, "variables": vars}}))
}

// recv waits up to d for the next message that is not a keep-alive; ok is
// false when none came.
func (c *lvConn) recv(d time.Duration) (m lvMsg, ok bool) {
	c.t.Helper()
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		select {
		case m = <-c.msgs:
		case <-c.closed:
			select {
			case m = <-c.msgs:
			default:
				require.FailNow(c.t, "the server closed the socket", "%v", c.err)
			}
		case <-timeout.C:
			return lvMsg{}, false
		}
		if m.Type != "ping" && m.Type != "pong" {
			return m, true
		}
	}
}

// next returns the next message, which must be about operation id, passing
// over the probe messages of id's subscription.
func (c *lvConn) next(id string) lvMsg {
	c.t.Helper()
	for {
		m, ok := c.recv(lvWait)
		require.True(c.t, ok, "no message for %q within %v", id, lvWait)
		if skip := c.skip[m.ID]; skip != nil && m.Type == "next" && skip(m) {
			continue
		}
		require.Equal(c.t, id, m.ID, "expected a message for %q, got %+v %s", id, m, m.Payload)
		return m
	}
}

// value decodes the next message of id (a `next`) into out.
func (c *lvConn) value(id string, out any) {
	c.t.Helper()
	c.next(id).value(c.t, out)
}

// refused requires that subscribing to query fails at once with an `error`
// message, and returns its first error code.
func (c *lvConn) refused(id, query string, vars map[string]any) string {
	c.t.Helper()
	return c.refusal(id, query, vars).Code()
}

// refusal subscribes and returns the error that refuses the subscription.
func (c *lvConn) refusal(id, query string, vars map[string]any) apitest.Error {
	c.t.Helper()
	c.subscribe(id, query, vars)
	m := c.next(id)
	require.Equal(c.t, "error", m.Type, "expected the subscription to be refused, got %+v %s", m, m.Payload)
	var errs []apitest.Error
	require.NoError(c.t, json.Unmarshal(m.Payload, &errs))
	require.NotEmpty(c.t, errs)
	return errs[0]
}

// sync makes subscription id live: it pokes until a probe message arrives,
// and from then on next passes over id's probe messages. Each poke must make
// a fresh probe (a new entity, or a new event), so that a probe message
// comes from a notification committed after the subscribe: the hub takes
// notifications in order, so every earlier change of the topic has then been
// sent or dropped, and nothing from before the subscription can follow.
// Messages before the probe's (earlier changes that the hub took after the
// subscription began) are returned.
func (c *lvConn) sync(id string, poke func(), isProbe func(lvMsg) bool) (earlier []lvMsg) {
	c.t.Helper()
	deadline := time.Now().Add(lvWait)
	for time.Now().Before(deadline) {
		poke()
		// The first poke is normally seen; one made before the hub
		// registered the subscription is not, and is made again.
		for {
			m, ok := c.recv(250 * time.Millisecond)
			if !ok {
				break
			}
			require.Equal(c.t, id, m.ID, "unexpected %+v %s", m, m.Payload)
			require.Equal(c.t, "next", m.Type, "unexpected %+v %s", m, m.Payload)
			if isProbe(m) {
				c.skip[id] = isProbe
				return earlier
			}
			earlier = append(earlier, m)
		}
	}
	require.FailNow(c.t, "the subscription never saw its probe", "%s", id)
	return nil
}

// lvRequireNoLeak fails t if any message names one of ids.
func lvRequireNoLeak(t *testing.T, msgs []lvMsg, ids ...string) {
	t.Helper()
	for _, m := range msgs {
		for _, id := range ids {
			require.NotContains(t, string(m.Payload), id, "a message leaks another caller's data: %s", m.Payload)
		}
	}
}

// lvProbeMachines pokes by creating a machine named probe-<n> as the caller
// with token; lvIsProbeMachine tells their messages.
func lvProbeMachines(t *testing.T, s *apitest.Server, token string) func() {
	n := 0
	return func() {
		n++
		lvDo(t, s, token, `mutation($n: String!) { createMachine(input: {name: $n}) { id } }`,
			map[string]any{"n": fmt.Sprintf("probe-%d", n)}, nil)
	}
}

func lvIsProbeMachine(t *testing.T) func(lvMsg) bool {
	return func(m lvMsg) bool {
		var c lvMachineChange
		m.value(t, &c)
		return c.Machine != nil && strings.HasPrefix(c.Machine.Name, "probe-")
	}
}

// lvIsProbeRobot tells the messages about robots whose hostname starts with
// "probe" (robotUpdated and fleetPresence messages both carry it).
func lvIsProbeRobot(t *testing.T) func(lvMsg) bool {
	return func(m lvMsg) bool {
		if h := m.field("hostname"); h != "" {
			return strings.HasPrefix(h, "probe")
		}
		var c lvRobotChange
		m.value(t, &c)
		return c.Robot != nil && strings.HasPrefix(c.Robot.Hostname, "probe")
	}
}

// lvProbeRobots pokes by creating a robot named (and hosted) probe-<n>.
func (tn *lvTenant) lvProbeRobots() func() {
	n := 0
	return func() {
		n++
		tn.do(`mutation($n: String!) { createRobot(input: {name: $n, hostname: $n}) { id } }`,
			map[string]any{"n": fmt.Sprintf("probe-%d", n)}, nil)
	}
}

// lvProbePresence pokes by bringing a new robot, hosted probe-online-<n>, online.
func (tn *lvTenant) lvProbePresence() func() {
	n := 0
	return func() {
		n++
		tn.robot(fmt.Sprintf("probe-online-%d", n), 1).heartbeat("ONLINE")
	}
}

// lvDo runs a request that must succeed as the caller with credential.
func lvDo(t *testing.T, s *apitest.Server, credential, query string, vars map[string]any, out any) {
	t.Helper()
	s.Do(t, credential, query, vars).OK(t, out)
}

// lvTenant is a fresh tenant on a shared server: a user and a workflow.
type lvTenant struct {
	t    *testing.T
	s    *apitest.Server
	user apitest.User
	wf   string
}

func lvNewTenant(t *testing.T, s *apitest.Server) *lvTenant {
	t.Helper()
	tn := &lvTenant{t: t, s: s, user: s.NewUser(t, uuid.New())}
	tn.wf = tn.workflow("main")
	return tn
}

func (tn *lvTenant) do(query string, vars map[string]any, out any) {
	tn.t.Helper()
	lvDo(tn.t, tn.s, tn.user.Token, query, vars, out)
}

func (tn *lvTenant) workflow(name string) string {
	tn.t.Helper()
	var out struct{ CreateWorkflow struct{ ID string } }
	tn.do(`mutation($n: String!) { createWorkflow(input: {name: $n, definition: {nodes: []}}) { id } }`, map[string]any{"n": name}, &out)
	return out.CreateWorkflow.ID
}

// lvRobot is a robot with the API key it calls with.
type lvRobot struct {
	ID, Key string
	tn      *lvTenant
}

func (tn *lvTenant) robot(name string, slots int) *lvRobot {
	tn.t.Helper()
	var robot struct{ CreateRobot struct{ ID string } }
	tn.do(`mutation($n: String!, $s: Int) { createRobot(input: {name: $n, hostname: $n, maxConcurrentJobs: $s}) { id } }`,
		map[string]any{"n": name, "s": slots}, &robot)
	var key struct{ CreateApiKey struct{ Key string } }
	tn.do(`mutation($r: ID!) { createApiKey(robotId: $r, name: "agent") { key } }`, map[string]any{"r": robot.CreateRobot.ID}, &key)
	return &lvRobot{ID: robot.CreateRobot.ID, Key: key.CreateApiKey.Key, tn: tn}
}

// updateRobot changes a robot as the user and returns its new revision.
func (tn *lvTenant) updateRobot(id string, in map[string]any) int {
	tn.t.Helper()
	var out struct{ UpdateRobot struct{ Revision int } }
	tn.do(`mutation($id: ID!, $in: UpdateRobotInput!) { updateRobot(id: $id, input: $in) { revision } }`,
		map[string]any{"id": id, "in": in}, &out)
	return out.UpdateRobot.Revision
}

// enqueue queues a job of workflow wf with the other EnqueueJobInput fields of extra.
func (tn *lvTenant) enqueue(wf string, extra map[string]any) lvJob {
	tn.t.Helper()
	in := map[string]any{"workflowId": wf}
	for k, v := range extra {
		in[k] = v
	}
	var out struct{ EnqueueJob lvJob }
	tn.do(`mutation($in: EnqueueJobInput!) { enqueueJob(input: $in) { id status workflowId robotId progress revision input } }`,
		map[string]any{"in": in}, &out)
	return out.EnqueueJob
}

func (tn *lvTenant) cancel(id string) lvJob {
	tn.t.Helper()
	var out struct{ CancelJob lvJob }
	tn.do(`mutation($id: ID!) { cancelJob(id: $id) { id status workflowId robotId progress revision } }`, map[string]any{"id": id}, &out)
	require.Equal(tn.t, "CANCELLED", out.CancelJob.Status)
	return out.CancelJob
}

func (tn *lvTenant) job(id string) lvJob {
	tn.t.Helper()
	var out struct{ Job lvJob }
	tn.do(`query($id: ID!) { job(id: $id) { id status workflowId robotId progress currentNode revision input } }`, map[string]any{"id": id}, &out)
	return out.Job
}

func (r *lvRobot) do(query string, vars map[string]any, out any) {
	r.tn.t.Helper()
	lvDo(r.tn.t, r.tn.s, r.Key, query, vars, out)
}

// heartbeat reports status and returns the robot's revision after it.
func (r *lvRobot) heartbeat(status string) int {
	r.tn.t.Helper()
	var out struct {
		Heartbeat struct {
			Status   string
			Revision int
		}
	}
	r.do(`mutation($s: RobotStatus!) { heartbeat(input: {status: $s}) { status revision } }`, map[string]any{"s": status}, &out)
	require.Equal(r.tn.t, status, out.Heartbeat.Status)
	return out.Heartbeat.Revision
}

// lvLease is a claimed job and its fencing token.
type lvLease struct {
	Job        lvJob
	LeaseToken string
}

// claim claims the job want.
func (r *lvRobot) claim(want string) lvLease {
	r.tn.t.Helper()
	var out struct{ ClaimJob *lvLease }
	r.do(`mutation { claimJob { leaseToken job { id status workflowId robotId progress revision } } }`, nil, &out)
	require.NotNil(r.tn.t, out.ClaimJob, "the robot found no job to claim")
	require.Equal(r.tn.t, want, out.ClaimJob.Job.ID)
	return *out.ClaimJob
}

const lvJobOut = `{ id status workflowId robotId progress currentNode revision }`

func (l lvLease) vars(extra map[string]any) map[string]any {
	v := map[string]any{"j": l.Job.ID, "l": l.LeaseToken}
	for k, x := range extra {
		v[k] = x
	}
	return v
}

func (r *lvRobot) start(l lvLease) lvJob {
	r.tn.t.Helper()
	var out struct{ StartJob lvJob }
	r.do(`mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) `+lvJobOut+` }`, l.vars(nil), &out)
	require.Equal(r.tn.t, "RUNNING", out.StartJob.Status)
	return out.StartJob
}

// progress reports progress p at node "node-<p>".
func (r *lvRobot) progress(l lvLease, p int) lvJob {
	r.tn.t.Helper()
	var out struct{ ReportJobProgress lvJob }
	r.do(`mutation($j: ID!, $l: ID!, $p: Int!, $n: String) { reportJobProgress(jobId: $j, leaseToken: $l, progress: $p, currentNode: $n) `+lvJobOut+` }`,
		l.vars(map[string]any{"p": p, "n": fmt.Sprintf("node-%d", p)}), &out)
	require.Equal(r.tn.t, p, out.ReportJobProgress.Progress)
	return out.ReportJobProgress
}

func (r *lvRobot) complete(l lvLease) lvJob {
	r.tn.t.Helper()
	var out struct{ CompleteJob lvJob }
	r.do(`mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}) `+lvJobOut+` }`, l.vars(nil), &out)
	require.Equal(r.tn.t, "COMPLETED", out.CompleteJob.Status)
	return out.CompleteJob
}

// lvHasInput reports whether a job change's job carries input key (probes carry "probe").
func lvHasInput(t *testing.T, key string) func(lvMsg) bool {
	return func(m lvMsg) bool {
		var c lvJobChange
		m.value(t, &c)
		return c.Job != nil && c.Job.Input[key] != nil
	}
}

func TestSubscriptionMachineUpdated(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("OneMachine", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, s)
		m := c.create("one")
		ws := lvConnect(t, s, c.token)
		ws.subscribe("m", lvMachineSub, map[string]any{"id": m.ID})
		var got lvMachineChange
		ws.value("m", &got)
		require.Equal(t, "CURRENT", got.Op)
		require.Equal(t, m.ID, got.ID)
		require.Equal(t, m.Version, got.Version)
		require.Equal(t, "STOPPED", got.Machine.Status)
		require.Equal(t, "one", got.Machine.Name)

		// expect requires the next message to be an update to the state after a change.
		expect := func(after machine) {
			t.Helper()
			var got lvMachineChange
			ws.value("m", &got)
			require.Equal(t, "UPDATED", got.Op)
			require.Equal(t, m.ID, got.ID)
			require.Equal(t, after.Version, got.Version)
			require.Equal(t, after.Version, got.Machine.Version)
			require.Equal(t, after.Status, got.Machine.Status)
			require.Equal(t, after.Name, got.Machine.Name)
		}
		expect(c.mutate("startMachine", m.ID))
		expect(c.mutate("stopMachine", m.ID))
		var renamed struct{ UpdateMachine machine }
		c.do(`mutation($id: ID!) { updateMachine(id: $id, input: {name: "renamed"}) { `+machineFields+` } }`,
			map[string]any{"id": m.ID}, &renamed)
		expect(renamed.UpdateMachine)
		c.deploy(m.ID, "1.0.0")
		after := c.mutate("stopMachine", m.ID) // a no-op: reads the state the deployment left
		expect(after)
		c.logEvent(m.ID, "error")
		var failed struct{ Machine machine }
		c.do(`query($id: ID!) { machine(id: $id) { `+machineFields+` } }`, map[string]any{"id": m.ID}, &failed)
		require.Equal(t, "ERROR", failed.Machine.Status)
		expect(failed.Machine)

		// Changes that leave the machine as it is send nothing: the next
		// message is the start's.
		c.logEvent(m.ID, "telemetry")
		c.logEvent(m.ID, "error") // already ERROR
		started := c.mutate("startMachine", m.ID)
		expect(started)
		c.mutate("startMachine", m.ID) // already RUNNING
		expect(c.mutate("stopMachine", m.ID))

		c.do(`mutation($id: ID!) { deleteMachine(id: $id) }`, map[string]any{"id": m.ID}, nil)
		ws.value("m", &got)
		require.Equal(t, "DELETED", got.Op)
		require.Equal(t, m.ID, got.ID)
		require.Nil(t, got.Machine)
		// Nothing more can come: the subscription completes.
		require.Equal(t, "complete", ws.next("m").Type)
	})

	t.Run("AllMachines", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, s)
		existing := c.create("existing")
		ws := lvConnect(t, s, c.token)
		ws.subscribe("all", lvMachineSub, nil)
		ws.sync("all", lvProbeMachines(t, s, c.token), lvIsProbeMachine(t))

		created := c.create("new")
		var got lvMachineChange
		ws.value("all", &got)
		require.Equal(t, "CREATED", got.Op)
		require.Equal(t, created.ID, got.ID)
		require.Equal(t, created.Version, got.Version)
		require.Equal(t, "new", got.Machine.Name)

		for _, id := range []string{existing.ID, created.ID} {
			after := c.mutate("startMachine", id)
			ws.value("all", &got)
			require.Equal(t, "UPDATED", got.Op)
			require.Equal(t, id, got.ID)
			require.Equal(t, after.Version, got.Version)
			require.Equal(t, "RUNNING", got.Machine.Status)
		}

		c.do(`mutation($id: ID!) { deleteMachine(id: $id) }`, map[string]any{"id": existing.ID}, nil)
		ws.value("all", &got)
		require.Equal(t, "DELETED", got.Op)
		require.Equal(t, existing.ID, got.ID)
		require.Nil(t, got.Machine)
	})

	t.Run("ServiceRoleSeesTheTenantsMachines", func(t *testing.T) {
		t.Parallel()
		tenant := uuid.New()
		owner := s.NewUser(t, tenant)
		service := s.NewService(t, tenant)
		create := func(token, name string) string {
			var out struct{ CreateMachine struct{ ID string } }
			lvDo(t, s, token, `mutation($n: String!) { createMachine(input: {name: $n}) { id } }`, map[string]any{"n": name}, &out)
			return out.CreateMachine.ID
		}
		ws := lvConnect(t, s, service.Token)
		ws.subscribe("all", lvMachineSub, nil)
		ws.sync("all", lvProbeMachines(t, s, service.Token), lvIsProbeMachine(t))
		id := create(owner.Token, "owned")
		var got lvMachineChange
		ws.value("all", &got)
		require.Equal(t, "CREATED", got.Op)
		require.Equal(t, id, got.ID)
	})
}

func TestSubscriptionMachineEventAdded(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	c := newClient(t, s)
	m := c.create("events")
	other := c.create("other")
	ws := lvConnect(t, s, c.token)
	ws.subscribe("e", lvEventSub, map[string]any{"m": m.ID})
	ws.sync("e", func() { c.logEvent(m.ID, "probe") }, func(msg lvMsg) bool { return msg.field("eventType") == "probe" })

	// Events logged by the client, and those the lifecycle writes.
	logged := c.logEvent(m.ID, "telemetry")
	c.logEvent(other.ID, "telemetry") // another machine's: not this subscription's
	c.mutate("startMachine", m.ID)
	c.deploy(m.ID, "2.0.0")
	c.logEvent(m.ID, "alarm.high")
	c.mutate("stopMachine", m.ID)
	c.mutate("stopMachine", m.ID) // a no-op writes no event

	// The database's events from the first logged one on, oldest first,
	// are what must arrive, in order.
	var want []event
	evs := c.events(m.ID)
	for i := len(evs) - 1; i >= 0; i-- {
		if (evs[i].ID == logged.ID || len(want) > 0) && evs[i].EventType != "probe" {
			want = append(want, evs[i])
		}
	}
	require.Equal(t, []string{"telemetry", "started", "deployed", "alarm.high", "stopped"}, eventTypes(want))
	for _, w := range want {
		var got lvEvent
		ws.value("e", &got)
		require.Equal(t, lvEvent{ID: w.ID, MachineID: m.ID, EventType: w.EventType, Actor: w.Actor, Details: w.Details}, got)
	}
	require.Equal(t, map[string]any{"message": "x"}, want[0].Details)
	require.Equal(t, "user:"+c.user.ID.String(), want[0].Actor)
	// Barrier: nothing else came before the next event.
	last := c.logEvent(m.ID, "last")
	var got lvEvent
	ws.value("e", &got)
	require.Equal(t, last.ID, got.ID)

	// A deleted machine has no more events: the subscription completes.
	c.do(`mutation($id: ID!) { deleteMachine(id: $id) }`, map[string]any{"id": m.ID}, nil)
	require.Equal(t, "complete", ws.next("e").Type)
}

func TestSubscriptionRobotUpdated(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("OneRobot", func(t *testing.T) {
		t.Parallel()
		tn := lvNewTenant(t, s)
		r := tn.robot("r1", 1)
		ws := lvConnect(t, s, tn.user.Token)
		ws.subscribe("r", lvRobotSub, map[string]any{"id": r.ID})
		var got lvRobotChange
		ws.value("r", &got)
		require.Equal(t, "CURRENT", got.Op)
		require.Equal(t, r.ID, got.ID)
		require.Equal(t, "OFFLINE", got.Robot.Status)

		expect := func(revision int, status, hostname string) {
			t.Helper()
			var got lvRobotChange
			ws.value("r", &got)
			require.Equal(t, "UPDATED", got.Op)
			require.Equal(t, r.ID, got.ID)
			require.Equal(t, revision, got.Revision)
			require.Equal(t, revision, got.Robot.Revision)
			require.Equal(t, status, got.Robot.Status)
			require.Equal(t, hostname, got.Robot.Hostname)
		}
		expect(r.heartbeat("ONLINE"), "ONLINE", "r1")
		// A heartbeat with the same status changes no revision and sends
		// nothing: the next message is the status change after it.
		r.heartbeat("ONLINE")
		expect(r.heartbeat("BUSY"), "BUSY", "r1")
		expect(tn.updateRobot(r.ID, map[string]any{"hostname": "host-2"}), "BUSY", "host-2")
		expect(tn.updateRobot(r.ID, map[string]any{"status": "MAINTENANCE"}), "MAINTENANCE", "host-2")
		r.heartbeat("MAINTENANCE")
		expect(r.heartbeat("OFFLINE"), "OFFLINE", "host-2")

		tn.do(`mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": r.ID}, nil)
		ws.value("r", &got)
		require.Equal(t, "DELETED", got.Op)
		require.Equal(t, r.ID, got.ID)
		require.Nil(t, got.Robot)
		require.Equal(t, "complete", ws.next("r").Type, "nothing more can come")
	})

	t.Run("Fleet", func(t *testing.T) {
		t.Parallel()
		tn := lvNewTenant(t, s)
		r := tn.robot("r1", 1)
		ws := lvConnect(t, s, tn.user.Token)
		ws.subscribe("fleet", lvRobotSub, nil)
		ws.sync("fleet", tn.lvProbeRobots(), lvIsProbeRobot(t))

		revision := r.heartbeat("ONLINE")
		var got lvRobotChange
		ws.value("fleet", &got)
		require.Equal(t, "UPDATED", got.Op)
		require.Equal(t, r.ID, got.ID)
		require.Equal(t, revision, got.Revision)
		require.Equal(t, "ONLINE", got.Robot.Status)

		var created struct{ CreateRobot struct{ ID string } }
		tn.do(`mutation { createRobot(input: {name: "r2"}) { id } }`, nil, &created)
		ws.value("fleet", &got)
		require.Equal(t, "CREATED", got.Op)
		require.Equal(t, created.CreateRobot.ID, got.ID)
		require.Equal(t, "OFFLINE", got.Robot.Status)
	})
}

func TestSubscriptionFleetPresence(t *testing.T) {
	t.Parallel()

	// presence subscribes to fleetPresence as tn's user and makes it live
	// with a probe robot going online and offline.
	presence := func(t *testing.T, s *apitest.Server, tn *lvTenant) *lvConn {
		t.Helper()
		ws := lvConnect(t, s, tn.user.Token)
		ws.subscribe("p", lvPresenceSub, nil)
		ws.sync("p", tn.lvProbePresence(), lvIsProbeRobot(t))
		return ws
	}
	expect := func(t *testing.T, ws *lvConn, r *lvRobot, status string) {
		t.Helper()
		var got lvPresence
		ws.value("p", &got)
		require.Equal(t, r.ID, got.RobotID)
		require.Equal(t, status, got.Status)
		require.Equal(t, "r1", got.Hostname)
		require.False(t, got.At.IsZero())
	}

	t.Run("Heartbeats", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t)
		tn := lvNewTenant(t, s)
		r := tn.robot("r1", 1)
		ws := presence(t, s, tn)

		r.heartbeat("ONLINE")
		expect(t, ws, r, "ONLINE")
		// Changes between online statuses are not presence: the next event
		// is the robot going offline.
		r.heartbeat("BUSY")
		r.heartbeat("ONLINE")
		r.heartbeat("MAINTENANCE")
		tn.updateRobot(r.ID, map[string]any{"status": "ONLINE", "capabilities": []string{"x"}})
		r.heartbeat("OFFLINE")
		expect(t, ws, r, "OFFLINE")
		r.heartbeat("BUSY") // from OFFLINE straight to BUSY is online too
		expect(t, ws, r, "BUSY")
	})

	t.Run("SilentRobotGoesOffline", func(t *testing.T) {
		t.Parallel()
		q := db.DefaultQueueConfig
		q.OfflineAfter, q.TakeoverGrace = time.Second, 0
		s := apitest.New(t, apitest.Options{Queue: q})
		tn := lvNewTenant(t, s)
		r := tn.robot("r1", 1)
		ws := presence(t, s, tn)
		r.heartbeat("BUSY")
		expect(t, ws, r, "BUSY")
		// The maintenance runner marks the silent robot OFFLINE after a second.
		expect(t, ws, r, "OFFLINE")
	})
}

func TestSubscriptionJobUpdated(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	expect := func(t *testing.T, ws *lvConn, id string, op string, want lvJob) lvJobChange {
		t.Helper()
		var got lvJobChange
		ws.value(id, &got)
		require.Equal(t, op, got.Op)
		require.Equal(t, want.ID, got.ID)
		require.Equal(t, want.Revision, got.Revision)
		require.NotNil(t, got.Job)
		require.Equal(t, want.Status, got.Job.Status)
		require.Equal(t, want.Revision, got.Job.Revision)
		require.Equal(t, want.Progress, got.Job.Progress)
		require.Equal(t, want.RobotID, got.Job.RobotID)
		return got
	}

	t.Run("OneJobThroughItsLife", func(t *testing.T) {
		t.Parallel()
		tn := lvNewTenant(t, s)
		r := tn.robot("r1", 1)
		j := tn.enqueue(tn.wf, map[string]any{"input": map[string]any{"n": 1}})
		ws := lvConnect(t, s, tn.user.Token)
		ws.subscribe("j", lvJobSub, map[string]any{"id": j.ID})
		expect(t, ws, "j", "CURRENT", j)

		l := r.claim(j.ID)
		require.Equal(t, "CLAIMED", l.Job.Status)
		got := expect(t, ws, "j", "UPDATED", l.Job)
		require.Equal(t, r.ID, *got.Job.RobotID)
		expect(t, ws, "j", "UPDATED", r.start(l))
		for _, p := range []int{10, 60} {
			got := expect(t, ws, "j", "UPDATED", r.progress(l, p))
			require.Equal(t, p, got.Job.Progress)
			require.Equal(t, fmt.Sprintf("node-%d", p), *got.Job.CurrentNode)
		}
		done := r.complete(l)
		require.Equal(t, "COMPLETED", done.Status)
		expect(t, ws, "j", "UPDATED", done)
		require.Equal(t, tn.job(j.ID).Revision, done.Revision)
	})

	t.Run("CancelledJobs", func(t *testing.T) {
		t.Parallel()
		tn := lvNewTenant(t, s)
		r := tn.robot("r1", 1)
		queued := tn.enqueue(tn.wf, nil)
		running := tn.enqueue(tn.wf, map[string]any{"priority": 5})
		ws := lvConnect(t, s, tn.user.Token)
		ws.subscribe("q", lvJobSub, map[string]any{"id": queued.ID})
		expect(t, ws, "q", "CURRENT", queued)
		ws.subscribe("r", lvJobSub, map[string]any{"id": running.ID})
		expect(t, ws, "r", "CURRENT", running)
		l := r.claim(running.ID)
		expect(t, ws, "r", "UPDATED", l.Job)
		expect(t, ws, "r", "UPDATED", r.start(l))

		expect(t, ws, "q", "UPDATED", tn.cancel(queued.ID))
		expect(t, ws, "r", "UPDATED", tn.cancel(running.ID))
	})

	t.Run("FilterByStatus", func(t *testing.T) {
		t.Parallel()
		tn := lvNewTenant(t, s)
		ws := lvConnect(t, s, tn.user.Token)
		ws.subscribe("c", lvJobSub, map[string]any{"f": map[string]any{"status": "CANCELLED"}})
		ws.sync("c", func() {
			tn.cancel(tn.enqueue(tn.wf, map[string]any{"input": map[string]any{"probe": true}}).ID)
		}, lvHasInput(t, "probe"))

		j := tn.enqueue(tn.wf, nil) // QUEUED: not sent
		expect(t, ws, "c", "UPDATED", tn.cancel(j.ID))
		var retried struct{ RetryJob lvJob }
		tn.do(`mutation($id: ID!) { retryJob(id: $id) { id status } }`, map[string]any{"id": j.ID}, &retried)
		require.Equal(t, "QUEUED", retried.RetryJob.Status) // not sent
		expect(t, ws, "c", "UPDATED", tn.cancel(j.ID))
	})

	t.Run("FilterByWorkflow", func(t *testing.T) {
		t.Parallel()
		tn := lvNewTenant(t, s)
		other := tn.workflow("other")
		ws := lvConnect(t, s, tn.user.Token)
		ws.subscribe("w", lvJobSub, map[string]any{"f": map[string]any{"workflowId": tn.wf}})
		ws.sync("w", func() { tn.enqueue(tn.wf, map[string]any{"input": map[string]any{"probe": true}}) }, lvHasInput(t, "probe"))

		tn.cancel(tn.enqueue(other, nil).ID) // another workflow's: not sent
		j := tn.enqueue(tn.wf, nil)
		got := expect(t, ws, "w", "CREATED", j)
		require.Equal(t, tn.wf, got.Job.WorkflowID)
		expect(t, ws, "w", "UPDATED", tn.cancel(j.ID))
	})

	t.Run("FilterByRobot", func(t *testing.T) {
		t.Parallel()
		tn := lvNewTenant(t, s)
		r1 := tn.robot("r1", 20)
		r2 := tn.robot("r2", 20)
		ws := lvConnect(t, s, tn.user.Token)
		ws.subscribe("r", lvJobSub, map[string]any{"f": map[string]any{"robotId": r1.ID}})
		ws.sync("r", func() {
			p := tn.enqueue(tn.wf, map[string]any{"robotId": r1.ID, "priority": 1000, "input": map[string]any{"probe": true}})
			r1.claim(p.ID)
		}, lvHasInput(t, "probe"))

		// r2's job, and a queued job nobody holds yet: not sent.
		other := tn.enqueue(tn.wf, map[string]any{"robotId": r2.ID})
		r2.start(r2.claim(other.ID))
		j := tn.enqueue(tn.wf, map[string]any{"robotId": r1.ID})
		l := r1.claim(j.ID)
		expect(t, ws, "r", "UPDATED", l.Job)
		expect(t, ws, "r", "UPDATED", r1.start(l))
	})

	t.Run("CoalescedUpdatesEndInTheDatabaseState", func(t *testing.T) {
		t.Parallel()
		tn := lvNewTenant(t, s)
		r := tn.robot("r1", 1)
		j := tn.enqueue(tn.wf, nil)
		l := r.claim(j.ID)
		r.start(l)
		// A client that reads nothing while 50 updates are made.
		raw := wsDial(t, s, map[string]any{"Authorization": "Bearer " + tn.user.Token}, nil)
		ctx, cancel := context.WithTimeout(t.Context(), lvWait)
		defer cancel()
		require.NoError(t, wsjson.Write(ctx, raw, map[string]any{"id": "j", "type": "subscribe",
			"payload": map[string]any{"query": lvJobSub, "variables": map[string]any{"id": j.ID}}}))
		read := func() lvJobChange {
			t.Helper()
			m := lvReadRaw(t, raw)
			require.Equal(t, "j", m.ID, "%+v %s", m, m.Payload)
			var c lvJobChange
			m.value(t, &c)
			return c
		}
		first := read()
		require.Equal(t, "CURRENT", first.Op)
		require.Equal(t, "RUNNING", first.Job.Status)

		var last lvJob
		for p := 1; p <= 50; p++ {
			last = r.progress(l, p*2)
		}
		require.Equal(t, 100, last.Progress)
		// Read until the final state: updates may have been coalesced, but
		// they never go backwards and the last one is the database's.
		messages := 0
		previous := first
		for {
			got := read()
			messages++
			require.Equal(t, "UPDATED", got.Op)
			require.Greater(t, got.Revision, previous.Revision, "an older state after a newer one")
			require.Greater(t, got.Job.Progress, previous.Job.Progress)
			previous = got
			if got.Revision == last.Revision {
				break
			}
		}
		require.LessOrEqual(t, messages, 50)
		stored := tn.job(j.ID)
		require.Equal(t, stored.Revision, previous.Revision)
		require.Equal(t, stored.Progress, previous.Job.Progress)
		require.Equal(t, stored.CurrentNode, previous.Job.CurrentNode)
		t.Logf("50 progress updates arrived as %d messages", messages)
		// Barrier: nothing stale follows the final state.
		done := r.complete(l)
		got := read()
		require.Equal(t, done.Revision, got.Revision)
		require.Equal(t, "COMPLETED", got.Job.Status)
	})

	t.Run("SlowConsumerIsEnded", func(t *testing.T) {
		t.Parallel()
		tn := lvNewTenant(t, s)
		// Large messages fill the socket's buffers quickly, so the server's
		// writes block and updates pile up in the hub, as they do for a
		// client that stops reading on a slow link.
		big := strings.Repeat("x", 60_000)
		for v := range 3 {
			tn.do(`mutation($w: ID!, $d: JSON!) { publishWorkflowVersion(workflowId: $w, definition: $d) { version } }`,
				map[string]any{"w": tn.wf, "d": map[string]any{"v": v, "blob": big}}, nil)
		}
		const slowSub = `subscription($f: JobUpdateFilter) { jobUpdated(filter: $f) { op id job { id workflow { versions { definition } } } } }`
		raw := wsDial(t, s, map[string]any{"Authorization": "Bearer " + tn.user.Token}, nil)
		raw.SetReadLimit(1 << 24)
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		require.NoError(t, wsjson.Write(ctx, raw, map[string]any{"id": "slow", "type": "subscribe",
			"payload": map[string]any{"query": slowSub, "variables": map[string]any{"f": map[string]any{"workflowId": tn.wf}}}}))
		// Make it live: read its first message, a probe's, then read nothing.
		first := make(chan error, 1)
		go func() {
			for {
				var m lvMsg
				err := wsjson.Read(ctx, raw, &m)
				if err == nil && (m.Type == "ping" || m.Type == "pong") {
					continue
				}
				if err == nil && m.Type != "next" {
					err = fmt.Errorf("expected a probe's next, got %+v %s", m, m.Payload)
				}
				first <- err
				return
			}
		}()
		live := false
		for !live {
			tn.enqueue(tn.wf, map[string]any{"input": map[string]any{"probe": true}})
			select {
			case err := <-first:
				require.NoError(t, err)
				live = true
			case <-time.After(250 * time.Millisecond):
			case <-ctx.Done():
				require.FailNow(t, "the slow subscription never saw its probe")
			}
		}

		// A second client, reading, watches another workflow: when its
		// job arrives, the hub has offered the flood before it.
		marker := tn.workflow("marker")
		watcher := lvConnect(t, s, tn.user.Token)
		watcher.subscribe("w", lvJobSub, map[string]any{"f": map[string]any{"workflowId": marker}})
		watcher.sync("w", func() { tn.enqueue(marker, map[string]any{"input": map[string]any{"probe": true}}) }, lvHasInput(t, "probe"))

		batch := make([]map[string]any, 1000)
		for i := range batch {
			batch[i] = map[string]any{"workflowId": tn.wf}
		}
		for range 3 {
			tn.do(`mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": batch}, nil)
		}
		end := tn.enqueue(marker, nil)
		var got lvJobChange
		watcher.value("w", &got)
		require.Equal(t, end.ID, got.ID)

		// Now read: the subscription must have been ended, not left silent.
		nexts := 0
		for {
			var m lvMsg
			err := wsjson.Read(ctx, raw, &m)
			if err != nil {
				require.Equal(t, websocket.StatusPolicyViolation, websocket.CloseStatus(err),
					"after %d messages the socket ended without an error message or a 1008 close: %v", nexts, err)
				t.Logf("closed with 1008 after %d messages", nexts)
				return
			}
			if m.Type == "ping" || m.Type == "pong" {
				continue
			}
			require.Equal(t, "slow", m.ID, "%+v", m)
			if m.Type == "next" {
				nexts++
				continue
			}
			require.Equal(t, "error", m.Type, "%+v %s", m, m.Payload)
			var errs []apitest.Error
			require.NoError(t, json.Unmarshal(m.Payload, &errs))
			require.Len(t, errs, 1)
			require.Equal(t, "RATE_LIMITED", errs[0].Code(), "%s", m.Payload)
			require.Equal(t, "SLOW_CONSUMER", errs[0].Extensions["reason"], "%s", m.Payload)
			require.Less(t, nexts, 3000, "every update was delivered: the subscriber was not slow after all")
			t.Logf("ended with RATE_LIMITED after %d messages", nexts)
			break
		}
		// The socket itself goes on: only the subscription ended.
		require.NoError(t, wsjson.Write(ctx, raw, map[string]any{"id": "q", "type": "subscribe",
			"payload": map[string]any{"query": `{ me { id } }`}}))
		for {
			var m lvMsg
			require.NoError(t, wsjson.Read(ctx, raw, &m))
			if m.Type == "ping" || m.Type == "pong" {
				continue
			}
			require.Equal(t, "q", m.ID, "a message after the error: %+v", m)
			require.Equal(t, "next", m.Type)
			break
		}
	})
}

// A burst of notifications while the listener pings its connection must not
// stall the feed: pq answers the ping on the connection that delivers the
// notifications, so a listener that waits for the ping without draining them
// never gets its answer. The flood lasts longer than the ping interval, so a
// ping falls inside it; afterwards live updates must still arrive.
func TestSubscriptionSurvivesANotificationFlood(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	c := newClient(t, s)
	m := c.create("flooded")
	ws := lvConnect(t, s, c.token)
	ws.subscribe("m", lvMachineSub, map[string]any{"id": m.ID})
	var got lvMachineChange
	ws.value("m", &got)
	require.Equal(t, "CURRENT", got.Op)

	// Notifications of a tenant nobody watches: the hub decodes and drops
	// them. Payloads differ, or PostgreSQL folds them into one.
	noise := uuid.NewString()
	until := time.Now().Add(realtime.PingInterval + time.Second)
	for batch := 0; time.Now().Before(until); batch++ {
		_, err := s.DB.ExecContext(t.Context(), `SELECT pg_notify(?, json_build_object('k', 'robot', 'op', 'UPDATE',
			't', ?::uuid, 'id', gen_random_uuid(), 'v', ? * 1000 + i)::text) FROM generate_series(1, 1000) AS i`,
			realtime.ChangeChannel, noise, batch)
		require.NoError(t, err)
	}

	// The flood may overflow the hub's buffer: then it re-reads what
	// changed and sends it as CURRENT. Either way the final state arrives.
	after := c.mutate("startMachine", m.ID)
	for got.Version < after.Version {
		ws.value("m", &got)
		require.Contains(t, []string{"UPDATED", "CURRENT"}, got.Op)
	}
	require.Equal(t, after.Version, got.Version)
	require.Equal(t, "RUNNING", got.Machine.Status)
}
