package live_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph"
	"fleetgraph/graph/live"
)

// allMachinesSub has no first message: it runs, holding its place, until stopped.
const allMachinesSub = `subscription { machineUpdated { op id } }`

// requireRateLimited requires that m is the refusal of operation id for
// the named limit: an error message, RATE_LIMITED, naming the setting.
func requireRateLimited(t *testing.T, m msg, id, limit string) {
	t.Helper()
	require.Equal(t, id, m.ID, "%+v %s", m, m.Payload)
	errs := m.errors(t)
	require.Equal(t, "RATE_LIMITED", errs[0].code(), "%s", m.Payload)
	require.Equal(t, limit, errs[0].Extensions["limit"], "%s", m.Payload)
	require.Contains(t, errs[0].Message, limit)
}

// sync waits until the server has handled every message sent on c so far:
// it answers a ping only after them.
func (c *conn) sync() {
	c.t.Helper()
	c.send(map[string]any{"type": "ping"})
	deadline := time.Now().Add(wait)
	for {
		m := c.readUntil(deadline)
		if m.Type == "pong" {
			return
		}
		require.Equal(c.t, "ping", m.Type, "unexpected %+v %s", m, m.Payload)
	}
}

// TestLiveWSSubscriptionsPerConnection: with the default limits, one
// websocket holds at most live.DefaultLimits.PerConnection subscriptions;
// the next is refused with an error for its id, the socket stays open (its
// queries run), and a place freed by a complete can be taken again.
func TestLiveWSSubscriptionsPerConnection(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	f := newFixture(t, s)
	c := connect(t, s, f.user.Token)
	max := live.DefaultLimits.PerConnection
	for i := range max {
		c.subscribe(fmt.Sprint(i), machineSub, map[string]any{"id": f.machine})
	}
	for range max {
		require.Equal(t, "CURRENT", machineChange(t, c.read()).Op)
	}
	c.subscribe("over", machineSub, map[string]any{"id": f.machine})
	requireRateLimited(t, c.read(), "over", "MAX_SUBSCRIPTIONS_PER_CONNECTION")
	// Queries and mutations are not subscriptions: they still run.
	r := c.query("query", `{ me { id } }`)
	require.Empty(t, r.Errors)

	// The socket is open and its subscriptions live; one stopped frees its place.
	c.send(map[string]any{"id": "0", "type": "complete"})
	c.subscribe("over", machineSub, map[string]any{"id": f.machine})
	require.Equal(t, "CURRENT", machineChange(t, c.readFor("over")).Op)
	c.subscribe("again", machineSub, map[string]any{"id": f.machine})
	requireRateLimited(t, c.read(), "again", "MAX_SUBSCRIPTIONS_PER_CONNECTION")
	v := f.set(t, "startMachine")
	seen := map[string]bool{}
	for len(seen) < max {
		m := c.read()
		got := machineChange(t, m)
		require.Equal(t, v, got.Version)
		require.False(t, seen[m.ID], "one update per subscription")
		seen[m.ID] = true
	}
	require.NotContains(t, seen, "0", "the stopped subscription")
	require.NotContains(t, seen, "again")
}

// TestLiveSubscriptionsPerPrincipal: one caller's subscriptions across its
// websockets (both protocols) and its SSE streams are capped together;
// other callers are not affected, and a freed place can be taken again.
func TestLiveSubscriptionsPerPrincipal(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{LiveLimits: live.Limits{PerConnection: 3, PerPrincipal: 7}})
	f := newFixture(t, s)
	other := newFixture(t, s)

	t.Run("PerConnectionAlsoOnTheLegacyProtocol", func(t *testing.T) {
		u := s.NewUser(t, uuid.Nil)
		c := dial(t, s, "graphql-ws")
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + u.Token}})
		require.Equal(t, "connection_ack", c.read().Type)
		for i := range 3 {
			c.send(map[string]any{"id": fmt.Sprint(i), "type": "start", "payload": map[string]any{"query": allMachinesSub}})
		}
		c.send(map[string]any{"id": "over", "type": "start", "payload": map[string]any{"query": allMachinesSub}})
		m := c.read()
		require.Equal(t, msg{ID: "over", Type: "error"}, msg{ID: m.ID, Type: m.Type}, "%s", m.Payload)
		var e gqlError // the legacy protocol sends one error object
		require.NoError(t, json.Unmarshal(m.Payload, &e), "%s", m.Payload)
		require.Equal(t, "RATE_LIMITED", e.code())
		require.Contains(t, e.Message, "MAX_SUBSCRIPTIONS_PER_CONNECTION")
	})

	// Seven places: three and three on two sockets, one SSE stream.
	a, b := connect(t, s, f.user.Token), connect(t, s, f.user.Token)
	for _, ws := range []*conn{a, b} {
		for i := range 3 {
			ws.subscribe(fmt.Sprint(i), machineSub, map[string]any{"id": f.machine})
		}
		for range 3 {
			require.Equal(t, "CURRENT", machineChange(t, ws.read()).Op)
		}
	}
	require.Empty(t, openSSE(t, s, f.user.Token, machineSub, map[string]any{"id": f.machine}).result().Errors)

	// An eighth, on a third socket or as a stream, is refused.
	c := connect(t, s, f.user.Token)
	c.subscribe("over", machineSub, map[string]any{"id": f.machine})
	requireRateLimited(t, c.read(), "over", "MAX_SUBSCRIPTIONS_PER_PRINCIPAL")
	res := postSSE(t, s, f.user.Token, machineSub, map[string]any{"id": f.machine})
	require.Equal(t, http.StatusTooManyRequests, res.StatusCode)
	var body result
	require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
	require.Len(t, body.Errors, 1)
	require.Equal(t, "RATE_LIMITED", body.Errors[0].code())
	require.Contains(t, body.Errors[0].Message, "MAX_SUBSCRIPTIONS_PER_PRINCIPAL")

	// Another caller is not affected.
	o := connect(t, s, other.user.Token)
	o.subscribe("mine", machineSub, map[string]any{"id": other.machine})
	require.Equal(t, "CURRENT", machineChange(t, o.readFor("mine")).Op)

	// A place freed on one socket is taken on another; the refused socket stayed open.
	a.send(map[string]any{"id": "0", "type": "complete"})
	a.sync()
	c.subscribe("over", machineSub, map[string]any{"id": f.machine})
	require.Equal(t, "CURRENT", machineChange(t, c.readFor("over")).Op)
	c.subscribe("again", machineSub, map[string]any{"id": f.machine})
	requireRateLimited(t, c.read(), "again", "MAX_SUBSCRIPTIONS_PER_PRINCIPAL")
}

// TestLiveWSOperationIDLength: an operation id is kept and echoed for the
// operation's life, so its length is capped; a longer one is a malformed
// message (4400).
func TestLiveWSOperationIDLength(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	f := newFixture(t, s)
	c := connect(t, s, f.user.Token)
	longest := strings.Repeat("x", live.MaxOperationID)
	c.subscribe(longest, machineSub, map[string]any{"id": f.machine})
	require.Equal(t, "CURRENT", machineChange(t, c.readFor(longest)).Op)
	c.subscribe(longest+"x", machineSub, map[string]any{"id": f.machine})
	reason := c.requireClosed(4400)
	require.Contains(t, reason, fmt.Sprint(live.MaxOperationID))
}

// TestLiveSubscriptionDocumentSize: a subscription keeps its document while
// it runs, so one longer than graph.DefaultLimits.SubscriptionBytes (here
// padded with a comment) is refused with BAD_USER_INPUT and reason
// SUBSCRIPTION_TOO_LARGE, on a websocket and as an SSE stream, before it
// takes a place in its caller's quota: after more refusals than the quota
// has places, the caller still has them all, and with the quota full the
// refusal is still this one. One of exactly the limit runs.
func TestLiveSubscriptionDocumentSize(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{LiveLimits: live.Limits{PerConnection: 2, PerPrincipal: 2}})
	f := newFixture(t, s)
	vars := map[string]any{"id": f.machine}
	limit := graph.DefaultLimits.SubscriptionBytes
	tooLarge := machineSub + "\n#" + strings.Repeat("x", limit-len(machineSub)-1)
	atLimit := tooLarge[:limit]
	c := connect(t, s, f.user.Token)
	refused := func(t *testing.T) {
		t.Helper()
		for i := range 3 {
			id := fmt.Sprint("big", i)
			c.subscribe(id, tooLarge, vars)
			requireTooLarge(t, c.readFor(id).errors(t), limit)
			st := openSSE(t, s, f.user.Token, tooLarge, vars)
			requireTooLarge(t, st.result().Errors, limit)
			st.requireEnd()
		}
	}

	refused(t)
	// Both places are free: one taken on the socket (at the limit), one by
	// a stream.
	c.subscribe("at-limit", atLimit, vars)
	require.Equal(t, "CURRENT", machineChange(t, c.readFor("at-limit")).Op)
	require.Empty(t, openSSE(t, s, f.user.Token, machineSub, vars).result().Errors)
	// The quota is full: a third subscription is over it, a document too
	// large is still refused as such.
	c.subscribe("over", machineSub, vars)
	requireRateLimited(t, c.readFor("over"), "over", "MAX_SUBSCRIPTIONS_PER_PRINCIPAL")
	refused(t)
}

// requireTooLarge requires that errs are the refusal of a subscription
// whose document is one byte over limit.
func requireTooLarge(t *testing.T, errs []gqlError, limit int) {
	t.Helper()
	require.Len(t, errs, 1)
	require.Equal(t, "BAD_USER_INPUT", errs[0].code())
	require.Equal(t, "SUBSCRIPTION_TOO_LARGE", errs[0].Extensions["reason"])
	require.Contains(t, errs[0].Message, fmt.Sprintf("is %d bytes; the limit is %d", limit+1, limit))
}

// TestLiveSubscriptionRefusesScans: a field priced as a scan (a count of a
// machine's events here) is priced once when a subscription starts but
// resolved again for every event, so a subscription selecting it is
// refused before it starts, on a websocket and as an SSE stream, with
// BAD_USER_INPUT, reason SCAN_IN_SUBSCRIPTION and the field named,
// however it is selected (directly, in a named or an inline fragment).
// The same subscription without the count runs and sees a change, and a
// query may still count.
func TestLiveSubscriptionRefusesScans(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	f := newFixture(t, s)
	vars := map[string]any{"id": f.machine}
	scanning := []string{
		`subscription($id: ID) { machineUpdated(id: $id) { op machine { id events(first: 1) { totalCount } } } }`,
		`subscription($id: ID) { machineUpdated(id: $id) { op ...M } } fragment M on MachineChange { machine { events { totalCount } } }`,
		`subscription($id: ID) { machineUpdated(id: $id) { op machine { ... on Machine { events { n: totalCount } } } } }`,
	}
	requireRefused := func(t *testing.T, errs []gqlError) {
		t.Helper()
		require.Len(t, errs, 1)
		require.Equal(t, "BAD_USER_INPUT", errs[0].code())
		require.Equal(t, "SCAN_IN_SUBSCRIPTION", errs[0].Extensions["reason"])
		require.Contains(t, errs[0].Message, "MachineEventConnection.totalCount")
		require.Contains(t, errs[0].Message, "in a query instead")
	}
	c := connect(t, s, f.user.Token)
	for i, q := range scanning {
		id := fmt.Sprint("scan", i)
		c.subscribe(id, q, vars)
		requireRefused(t, c.readFor(id).errors(t))
		st := openSSE(t, s, f.user.Token, q, vars)
		requireRefused(t, st.result().Errors)
		st.requireEnd()
	}

	const listing = `subscription($id: ID) { machineUpdated(id: $id) { op machine { id status events(first: 1) { edges { node { eventType } } } } } }`
	c.subscribe("list", listing, vars)
	require.Equal(t, "CURRENT", machineChange(t, c.readFor("list")).Op)
	st := openSSE(t, s, f.user.Token, listing, vars)
	first := st.result()
	require.Empty(t, first.Errors)
	require.Contains(t, string(first.Data), `"op":"CURRENT"`)
	f.set(t, "startMachine")
	got := machineChange(t, c.readFor("list"))
	require.Equal(t, "UPDATED", got.Op)
	require.Equal(t, "RUNNING", got.Machine.Status)
	next := st.result()
	require.Empty(t, next.Errors)
	require.Contains(t, string(next.Data), `"status":"RUNNING"`)

	var counted struct {
		Machine struct{ Events struct{ TotalCount int } }
	}
	s.Do(t, f.user.Token, `query($id: ID!) { machine(id: $id) { events { totalCount } } }`, vars).OK(t, &counted)
	require.Positive(t, counted.Machine.Events.TotalCount)
}
