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
