// Package e2e drives real third-party GraphQL clients against Fleetgraph:
// graphql-ws (graphql-transport-ws), subscriptions-transport-ws (the legacy
// graphql-ws protocol) and graphql-sse, each run by Node.js from the scripts
// in this folder at the versions package-lock.json pins. Each test starts the
// real server over its own database, runs one script, performs mutations
// from Go while the script listens, and asserts on what the library reported
// and on the frames that crossed the wire.
package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// testTimeout bounds each test's client work: starting node and a handful
// of operations take well under a second on a warm machine, and 25 s were
// seen on a busy one (node's start, with other suites running): it only
// bounds a wait for something that went wrong.
const testTimeout = 2 * time.Minute

type testBundle struct {
	ctx    context.Context
	server *apitest.Server
	user   apitest.User
}

func setup(t *testing.T, opts ...apitest.Options) *testBundle {
	t.Helper()
	requireClients(t) // skip before paying for a database
	s := apitest.New(t, opts...)
	// The deadline starts once the server runs: the first test of the
	// binary also waits for PostgreSQL to start.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", s.Log.String())
		}
	})
	return &testBundle{ctx: ctx, server: s, user: s.NewUser(t, uuid.Nil)}
}

// createMachine creates a STOPPED machine owned by the bundle's user.
func (b *testBundle) createMachine(t *testing.T, name string) string {
	t.Helper()
	var res struct{ CreateMachine struct{ ID string } }
	b.server.Do(t, b.user.Token, `mutation($n: String!) { createMachine(input: {name: $n}) { id } }`,
		map[string]any{"n": name}).OK(t, &res)
	return res.CreateMachine.ID
}

// machine runs startMachine or stopMachine and checks the status it returns.
func (b *testBundle) machine(t *testing.T, mutation, id, wantStatus string) {
	t.Helper()
	var res map[string]struct{ Status string }
	b.server.Do(t, b.user.Token, `mutation($id: ID!) { `+mutation+`(id: $id) { status } }`,
		map[string]any{"id": id}).OK(t, &res)
	require.Equal(t, wantStatus, res[mutation].Status)
}

// env is a script's environment for a scenario as the bundle's user.
func (b *testBundle) env(scenario string, extra map[string]string) map[string]string {
	env := map[string]string{"URL": b.server.URL, "TOKEN": b.user.Token, "SCENARIO": scenario}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// machineChange is a machineUpdated result.
type machineChange struct {
	Op      string
	ID      string
	Version int
	Machine *struct{ ID, Name, Status string }
}

// change matches a machineUpdated result of operation op with the given
// change op and machine status, and decodes it into into.
func change(op, changeOp, status string, into *machineChange) func(line) bool {
	return func(l line) bool {
		var c machineChange
		if l.Op != op || !l.data("machineUpdated", &c) || c.Op != changeOp || c.Machine == nil || c.Machine.Status != status {
			return false
		}
		*into = c
		return true
	}
}

// completed matches the completion of operation op.
func completed(op string) func(line) bool {
	return func(l line) bool { return l.Op == op && l.Complete }
}

// failed matches an error reported for operation op.
func failed(op string) func(line) bool {
	return func(l line) bool { return l.Op == op && l.Error != nil }
}

// subscribeID returns the id of the first outgoing frame of type typ (a
// subscribe or start) whose payload mentions text.
func subscribeID(t *testing.T, lines []line, typ, text string) string {
	t.Helper()
	for _, f := range frames(lines, "out") {
		if f.Type == typ && strings.Contains(string(f.Payload), text) {
			return f.ID
		}
	}
	t.Fatalf("the client sent no %s frame for %s", typ, text)
	return ""
}

func TestGraphQLWS(t *testing.T) {
	t.Parallel()

	t.Run("MachineSubscriptionThenQueryOnOneSocket", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.createMachine(t, "ws-machine")
		sc := runScript(b.ctx, t, "graphql_ws.mjs", b.env("machine", map[string]string{"MACHINE_ID": id}))

		// CURRENT comes after the server has joined the feed, so the
		// start below cannot slip between the read and the feed.
		var current, updated machineChange
		sc.wait(b.ctx, t, "CURRENT, STOPPED", change("watch", "CURRENT", "STOPPED", &current))
		require.Equal(t, id, current.ID)
		// The script queries once it has CURRENT, while the subscription runs.
		var m struct{ ID, Status string }
		sc.wait(b.ctx, t, "the query's result", func(l line) bool { return l.Op == "query" && l.data("machine", &m) })
		require.Equal(t, "STOPPED", m.Status)
		sc.wait(b.ctx, t, "the query's completion", completed("query"))
		b.machine(t, "startMachine", id, "RUNNING")
		sc.wait(b.ctx, t, "UPDATED, RUNNING", change("watch", "UPDATED", "RUNNING", &updated))
		require.Equal(t, id, updated.ID)
		require.Greater(t, updated.Version, current.Version)
		sc.finish(b.ctx, t)

		lines := sc.all()
		var opened []string
		for _, l := range lines {
			if l.Socket == "open" {
				opened = append(opened, l.Protocol)
			}
		}
		require.Equal(t, []string{"graphql-transport-ws"}, opened, "one socket serves both operations")
		out := frames(lines, "out")
		require.Equal(t, "connection_init", out[0].Type)
		require.JSONEq(t, `{"Authorization":"Bearer `+b.user.Token+`"}`, string(out[0].Payload))
		in := frames(lines, "in")
		require.Equal(t, "connection_ack", in[0].Type)
		queryID := subscribeID(t, lines, "subscribe", "query Machine")
		var queryFrames []string
		for _, f := range in {
			if f.ID == queryID {
				queryFrames = append(queryFrames, f.Type)
			}
		}
		require.Equal(t, []string{"next", "complete"}, queryFrames)
		for _, l := range lines {
			require.Empty(t, l.Error, "no operation failed: %s", l.Raw)
		}
	})

	t.Run("UnknownMachineIsAnErrorWithoutCompletion", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		sc := runScript(b.ctx, t, "graphql_ws.mjs", b.env("notfound", map[string]string{"MACHINE_ID": uuid.NewString()}))

		l := sc.wait(b.ctx, t, "the subscription's error", failed("watch"))
		var errs []gqlError
		require.NoError(t, json.Unmarshal(l.Error, &errs), "graphql-ws hands error() the error list: %s", l.Error)
		require.Len(t, errs, 1)
		require.Equal(t, "NOT_FOUND", errs[0].Extensions["code"], "%s", l.Error)
		// The socket still serves operations, and anything more the server
		// sent about the refused one would have arrived before this answer.
		sc.wait(b.ctx, t, "the query's completion", completed("query"))
		sc.finish(b.ctx, t)

		lines := sc.all()
		watchID := subscribeID(t, lines, "subscribe", "subscription Watch")
		var watchFrames []string
		for _, f := range frames(lines, "in") {
			if f.ID == watchID {
				watchFrames = append(watchFrames, f.Type)
			}
		}
		require.Equal(t, []string{"error"}, watchFrames, "graphql-transport-ws: error ends an operation, no complete follows")
		for _, l := range lines {
			require.False(t, l.Op == "watch" && (l.Complete || l.Next != nil), "the refused subscription got %s", l.Raw)
			require.Nil(t, l.Closed, "the socket stays open: %s", l.Raw)
		}
	})

	t.Run("BadTokenClosesWith4403", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		env := b.env("badtoken", nil)
		env["TOKEN"] = "not-a-valid-jwt"
		sc := runScript(b.ctx, t, "graphql_ws.mjs", env)

		l := sc.wait(b.ctx, t, "the close", func(l line) bool { return l.Closed != nil })
		require.Equal(t, 4403, l.Closed.Code, "close: %+v", l.Closed)
		require.Contains(t, l.Closed.Reason, "Forbidden")
		sc.finish(b.ctx, t)
		for _, l := range sc.all() {
			require.False(t, l.Connected, "the client must not count as connected: %s", l.Raw)
			require.False(t, l.Frame != nil && l.Dir == "in", "the server sends nothing before closing: %s", l.Raw)
		}
	})

	t.Run("JobUpdatesFollowTheRobot", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		s, token := b.server, b.user.Token
		var robot struct{ CreateRobot struct{ ID string } }
		s.Do(t, token, `mutation { createRobot(input: {name: "e2e-robot"}) { id } }`, nil).OK(t, &robot)
		var key struct{ CreateApiKey struct{ Key string } }
		s.Do(t, token, `mutation($r: ID!) { createApiKey(robotId: $r, name: "e2e") { key } }`,
			map[string]any{"r": robot.CreateRobot.ID}).OK(t, &key)
		var wf struct{ CreateWorkflow struct{ ID string } }
		s.Do(t, token, `mutation { createWorkflow(input: {name: "e2e-flow", definition: {nodes: []}}) { id } }`, nil).OK(t, &wf)
		var job struct{ EnqueueJob struct{ ID string } }
		s.Do(t, token, `mutation($w: ID!) { enqueueJob(input: {workflowId: $w}) { id } }`,
			map[string]any{"w": wf.CreateWorkflow.ID}).OK(t, &job)
		jobID := job.EnqueueJob.ID

		sc := runScript(b.ctx, t, "graphql_ws.mjs", b.env("job", map[string]string{"JOB_ID": jobID}))
		type jobChange struct {
			Op       string
			ID       string
			Revision int
			Job      *struct{ ID, Status, RobotID string }
		}
		revision := 0
		status := func(op, want string) jobChange {
			t.Helper()
			var got jobChange
			sc.wait(b.ctx, t, op+" "+want, func(l line) bool {
				var c jobChange
				if l.Op != "watch" || !l.data("jobUpdated", &c) || c.Op != op || c.Job == nil || c.Job.Status != want {
					return false
				}
				got = c
				return true
			})
			require.Equal(t, jobID, got.ID)
			require.Greater(t, got.Revision, revision, "revisions increase")
			revision = got.Revision
			return got
		}

		status("CURRENT", "QUEUED")
		rk := key.CreateApiKey.Key
		s.Do(t, rk, `mutation { heartbeat(input: {status: ONLINE}) { status } }`, nil).OK(t, nil)
		var claim struct{ ClaimJob struct{ LeaseToken string } }
		s.Do(t, rk, `mutation { claimJob { leaseToken job { id } } }`, nil).OK(t, &claim)
		claimed := status("UPDATED", "CLAIMED")
		require.Equal(t, robot.CreateRobot.ID, claimed.Job.RobotID)
		vars := map[string]any{"j": jobID, "l": claim.ClaimJob.LeaseToken}
		s.Do(t, rk, `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { status } }`, vars).OK(t, nil)
		status("UPDATED", "RUNNING")
		s.Do(t, rk, `mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}) { status } }`, vars).OK(t, nil)
		status("UPDATED", "COMPLETED")
		sc.finish(b.ctx, t)
	})
}

func TestSubscriptionsTransportWS(t *testing.T) {
	t.Parallel()

	t.Run("MachineSubscriptionAndStop", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		first := b.createMachine(t, "legacy-first")
		second := b.createMachine(t, "legacy-second")
		sc := runScript(b.ctx, t, "legacy_ws.mjs", b.env("machine", map[string]string{"MACHINE_ID": first, "SECOND_MACHINE_ID": second}))

		var c machineChange
		sc.wait(b.ctx, t, "CURRENT of the first machine", change("first", "CURRENT", "STOPPED", &c))
		require.Equal(t, first, c.ID)
		b.machine(t, "startMachine", first, "RUNNING")
		sc.wait(b.ctx, t, "UPDATED of the first machine", change("first", "UPDATED", "RUNNING", &c))
		require.Equal(t, first, c.ID)
		sc.wait(b.ctx, t, "the unsubscription", func(l line) bool { return l.Op == "first" && l.Unsubscribed })

		// The second subscription, on the same socket, watches another
		// machine. Changing the first machine, then the second, shows that
		// the stopped operation gets nothing: its update would be on the
		// wire well before the second one's.
		sc.wait(b.ctx, t, "CURRENT of the second machine", change("second", "CURRENT", "STOPPED", &c))
		require.Equal(t, second, c.ID)
		b.machine(t, "stopMachine", first, "STOPPED")
		b.machine(t, "startMachine", second, "RUNNING")
		sc.wait(b.ctx, t, "UPDATED of the second machine", change("second", "UPDATED", "RUNNING", &c))
		require.Equal(t, second, c.ID)
		sc.finish(b.ctx, t)

		lines := sc.all()
		var opened []string
		for _, l := range lines {
			if l.Socket == "open" {
				opened = append(opened, l.Protocol)
			}
		}
		require.Equal(t, []string{"graphql-ws"}, opened)
		out := frames(lines, "out")
		require.Equal(t, "connection_init", out[0].Type)
		require.JSONEq(t, `{"Authorization":"Bearer `+b.user.Token+`"}`, string(out[0].Payload))
		firstID := subscribeID(t, lines, "start", first)
		stopped := false
		var afterStop []string
		for _, l := range lines {
			if l.Frame == nil {
				continue
			}
			if l.Dir == "out" && l.Frame.Type == "stop" && l.Frame.ID == firstID {
				stopped = true
				continue
			}
			if stopped && l.Dir == "in" && l.Frame.ID == firstID {
				afterStop = append(afterStop, l.Raw)
			}
		}
		require.True(t, stopped, "the client sent stop for %s", firstID)
		require.Empty(t, afterStop, "the server sent frames for a stopped operation")
		for _, l := range lines {
			require.Empty(t, l.Error, "no operation failed: %s", l.Raw)
		}
	})

	t.Run("UnknownMachineIsAnError", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		sc := runScript(b.ctx, t, "legacy_ws.mjs", b.env("notfound", map[string]string{"MACHINE_ID": uuid.NewString()}))

		l := sc.wait(b.ctx, t, "the subscription's error", failed("watch"))
		var e gqlError
		require.NoError(t, json.Unmarshal(l.Error, &e))
		require.Equal(t, "NOT_FOUND", e.Extensions["code"], "%s", l.Error)
		sc.finish(b.ctx, t)

		lines := sc.all()
		watchID := subscribeID(t, lines, "start", "subscription Watch")
		var watchFrames []string
		var payload json.RawMessage
		for _, f := range frames(lines, "in") {
			if f.ID == watchID {
				watchFrames = append(watchFrames, f.Type)
				payload = f.Payload
			}
		}
		require.Equal(t, []string{"error"}, watchFrames, "one error ends the operation")
		require.True(t, strings.HasPrefix(string(payload), "{"),
			"the legacy protocol's error payload is one error object: %s", payload)
	})

	t.Run("BadTokenIsAConnectionError", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		env := b.env("badtoken", nil)
		env["TOKEN"] = "not-a-valid-jwt"
		sc := runScript(b.ctx, t, "legacy_ws.mjs", env)

		l := sc.wait(b.ctx, t, "the connection callback", func(l line) bool { return l.ConnectionCallback != nil })
		var e gqlError
		require.NoError(t, json.Unmarshal(l.ConnectionCallback, &e), "connection_error's payload: %s", l.ConnectionCallback)
		require.Equal(t, "UNAUTHENTICATED", e.Extensions["code"], "%s", l.ConnectionCallback)
		closed := sc.wait(b.ctx, t, "the close", func(l line) bool { return l.Socket == "close" })
		require.Equal(t, 4403, closed.Code)
		sc.finish(b.ctx, t)
		for _, l := range sc.all() {
			require.False(t, l.Connected, "the client must not count as connected: %s", l.Raw)
		}
	})
}

func TestGraphQLSSE(t *testing.T) {
	t.Parallel()

	t.Run("MachineSubscriptionThenQuery", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.createMachine(t, "sse-machine")
		sc := runScript(b.ctx, t, "sse.mjs", b.env("machine", map[string]string{"MACHINE_ID": id}))

		var current, updated machineChange
		sc.wait(b.ctx, t, "CURRENT, STOPPED", change("watch", "CURRENT", "STOPPED", &current))
		require.Equal(t, id, current.ID)
		b.machine(t, "startMachine", id, "RUNNING")
		sc.wait(b.ctx, t, "UPDATED, RUNNING", change("watch", "UPDATED", "RUNNING", &updated))
		require.Greater(t, updated.Version, current.Version)
		var m struct{ ID, Status string }
		sc.wait(b.ctx, t, "the query's result", func(l line) bool { return l.Op == "query" && l.data("machine", &m) })
		require.Equal(t, "RUNNING", m.Status)
		sc.wait(b.ctx, t, "the query's completion", completed("query"))
		sc.finish(b.ctx, t)

		var answers []httpAnswer
		for _, l := range sc.all() {
			if l.HTTP != nil {
				answers = append(answers, *l.HTTP)
			}
			require.Empty(t, l.Error, "no operation failed: %s", l.Raw)
		}
		require.Len(t, answers, 2, "one stream per operation (distinct connections mode)")
		for _, a := range answers {
			require.Equal(t, "POST", a.Method)
			require.Equal(t, 200, a.Status)
			require.Equal(t, "text/event-stream", a.ContentType)
		}
	})

	t.Run("UnknownMachineIsAnErrorResultThenComplete", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		sc := runScript(b.ctx, t, "sse.mjs", b.env("notfound", map[string]string{"MACHINE_ID": uuid.NewString()}))

		// Server-sent events have no error event: the error travels as the
		// last result, and the stream completes.
		l := sc.wait(b.ctx, t, "the error result", func(l line) bool { return l.Op == "watch" && l.Next != nil })
		errs := l.resultErrors()
		require.Len(t, errs, 1, "%s", l.Next)
		require.Equal(t, "NOT_FOUND", errs[0].Extensions["code"], "%s", l.Next)
		sc.wait(b.ctx, t, "the completion", completed("watch"))
		sc.finish(b.ctx, t)
		for _, l := range sc.all() {
			require.Empty(t, l.Error, "graphql-sse reports no transport error: %s", l.Raw)
		}
	})
}

// Apollo Client's HTTP subscriptions: HttpLink alone sends a subscription
// as a multipart/mixed request, and the server streams it.
func TestApolloMultipartSubscriptions(t *testing.T) {
	t.Parallel()

	// multipartAnswer checks that the one request went as Apollo's
	// multipart subscription and was answered as one.
	multipartAnswer := func(t *testing.T, sc *script) {
		t.Helper()
		var answers []httpAnswer
		for _, l := range sc.all() {
			if l.HTTP != nil {
				answers = append(answers, *l.HTTP)
			}
		}
		require.Len(t, answers, 1, "one request per subscription")
		require.Equal(t, "POST", answers[0].Method)
		require.Equal(t, 200, answers[0].Status)
		require.Equal(t, `multipart/mixed; boundary="graphql"; subscriptionSpec="1.0"`, answers[0].ContentType)
	}

	t.Run("EventsAsTheMachineChanges", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.createMachine(t, "apollo-multipart")
		sc := runScript(b.ctx, t, "apollo_multipart.mjs", b.env("machine", map[string]string{"MACHINE_ID": id}))

		var current, updated machineChange
		sc.wait(b.ctx, t, "CURRENT, STOPPED", change("watch", "CURRENT", "STOPPED", &current))
		require.Equal(t, id, current.ID)
		b.machine(t, "startMachine", id, "RUNNING")
		sc.wait(b.ctx, t, "UPDATED, RUNNING", change("watch", "UPDATED", "RUNNING", &updated))
		require.Greater(t, updated.Version, current.Version)
		sc.finish(b.ctx, t)
		for _, l := range sc.all() {
			require.Empty(t, l.Error, "no operation failed: %s", l.Raw)
		}
		multipartAnswer(t, sc)
	})

	t.Run("ShutdownCompletesTheSubscription", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.createMachine(t, "apollo-multipart-shutdown")
		sc := runScript(b.ctx, t, "apollo_multipart.mjs", b.env("complete", map[string]string{"MACHINE_ID": id}))
		var current machineChange
		sc.wait(b.ctx, t, "CURRENT, STOPPED", change("watch", "CURRENT", "STOPPED", &current))
		closed := make(chan error, 1)
		go func() { closed <- b.server.Handler.CloseStreams(b.ctx) }()
		sc.wait(b.ctx, t, "the completion", completed("watch"))
		require.NoError(t, <-closed)
		sc.finish(b.ctx, t)
		for _, l := range sc.all() {
			require.Empty(t, l.Error, "the stream ended cleanly, not as a network error: %s", l.Raw)
		}
		multipartAnswer(t, sc)
	})

	t.Run("UnknownMachineIsAnErrorResult", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		sc := runScript(b.ctx, t, "apollo_multipart.mjs", b.env("notfound", map[string]string{"MACHINE_ID": uuid.NewString()}))
		l := sc.wait(b.ctx, t, "the error", func(l line) bool { return l.Op == "watch" && (l.Error != nil || l.Next != nil) })
		require.Contains(t, string(l.Raw), "NOT_FOUND")
		sc.finish(b.ctx, t)
	})
}
