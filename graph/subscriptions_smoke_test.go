package graph_test

import (
	"fleetgraph/apitest"
	"testing"

	"github.com/coder/websocket/wsjson"
	"github.com/stretchr/testify/require"
)

func TestSubscriptionSmoke(t *testing.T) {
	t.Parallel()
	s := newSubsServer(t)
	c := newClient(t, s)
	m := c.create("live-1")
	conn := wsDial(t, s, map[string]any{"Authorization": "Bearer " + c.token}, nil)
	require.NoError(t, wsjson.Write(t.Context(), conn, map[string]any{"id": "s1", "type": "subscribe",
		"payload": map[string]any{"query": `subscription($id: ID) { machineUpdated(id: $id) { op id version machine { status } } }`, "variables": map[string]any{"id": m.ID}}}))
	first := wsRead(t, conn)
	require.Equal(t, "next", first["type"], "%v", first)
	require.Equal(t, "CURRENT", first["payload"].(map[string]any)["data"].(map[string]any)["machineUpdated"].(map[string]any)["op"])
	c.mutate("startMachine", m.ID)
	next := wsRead(t, conn)
	require.Equal(t, "next", next["type"], "%v", next)
	got := next["payload"].(map[string]any)["data"].(map[string]any)["machineUpdated"].(map[string]any)
	require.Equal(t, "UPDATED", got["op"])
	require.Equal(t, "RUNNING", got["machine"].(map[string]any)["status"])
}

func newSubsServer(t *testing.T) *apitest.Server { return apitest.New(t) }

// Each event of a subscription reads its relations afresh: loaders are per
// response, not per (long-lived) operation.
func TestSubscriptionRelationsAreFreshPerEvent(t *testing.T) {
	t.Parallel()
	s := newSubsServer(t)
	c := newClient(t, s)
	m := c.create("fresh-1")
	c.mutate("startMachine", m.ID)
	conn := wsDial(t, s, map[string]any{"Authorization": "Bearer " + c.token}, nil)
	require.NoError(t, wsjson.Write(t.Context(), conn, map[string]any{"id": "s1", "type": "subscribe",
		"payload": map[string]any{"query": `subscription($id: ID) { machineUpdated(id: $id) { op machine { currentDeployment { version } } } }`, "variables": map[string]any{"id": m.ID}}}))
	current := func() any {
		msg := wsRead(t, conn)
		require.Equal(t, "next", msg["type"], "%v", msg)
		return msg["payload"].(map[string]any)["data"].(map[string]any)["machineUpdated"].(map[string]any)["machine"].(map[string]any)["currentDeployment"]
	}
	require.Nil(t, current())
	c.deploy(m.ID, "1.0.0")
	require.Equal(t, map[string]any{"version": "1.0.0"}, current())
	c.deploy(m.ID, "2.0.0")
	require.Equal(t, map[string]any{"version": "2.0.0"}, current())
}
