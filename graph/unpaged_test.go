package graph_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
)

// TestUnpagedListsHoldTheirBound checks the lists without a page argument
// that the cost estimate counts at a fixed size: the store holds them to
// it. A workflow takes at most 50 assigned robots and 50 node overrides
// (the next is a CONFLICT that writes nothing; changing one that exists
// still works); the statistics list the first 500 robots and workflows by
// name, while robotStats' counts cover every robot; apiKeys lists the
// newest 500.
func TestUnpagedListsHoldTheirBound(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	wf := tn.Workflow

	// More robots than any bound, straight into the table.
	const robots = db.MaxStatsRows + 3
	_, err := s.DB.ExecContext(t.Context(), `INSERT INTO robots (tenant_id, name, status, last_heartbeat_at)
		SELECT ?, 'r' || lpad(g::text, 4, '0'), CASE WHEN g % 3 = 0 THEN 'ONLINE' ELSE 'OFFLINE' END, now() FROM generate_series(1, ?) g`,
		tn.User.Tenant, robots)
	require.NoError(t, err)
	var ids []string
	require.NoError(t, s.DB.NewRaw("SELECT id::text FROM robots WHERE tenant_id = ? ORDER BY name", tn.User.Tenant).Scan(t.Context(), &ids))
	require.Len(t, ids, robots)

	t.Run("Assignments", func(t *testing.T) {
		const assign = `mutation($w: ID!, $r: ID!, $p: Int) { assignWorkflow(workflowId: $w, robotId: $r, priority: $p) { robotId } }`
		for _, id := range ids[:db.MaxWorkflowAssignments] {
			tn.Do(t, assign, map[string]any{"w": wf, "r": id}, nil)
		}
		e := s.Do(t, tn.User.Token, assign, map[string]any{"w": wf, "r": ids[db.MaxWorkflowAssignments]}).Code(t, "CONFLICT")
		require.Contains(t, e.Message, fmt.Sprintf("at most %d", db.MaxWorkflowAssignments))
		tn.Do(t, assign, map[string]any{"w": wf, "r": ids[0], "p": 5}, nil) // an existing one changes
		var out struct {
			Workflow struct{ Assignments []struct{ RobotID string } }
		}
		tn.Do(t, `query($w: ID!) { workflow(id: $w) { assignments { robotId } } }`, map[string]any{"w": wf}, &out)
		require.Len(t, out.Workflow.Assignments, db.MaxWorkflowAssignments)
	})

	t.Run("NodeOverrides", func(t *testing.T) {
		const set = `mutation($w: ID!, $n: String!, $c: String) { setNodeRobotOverride(workflowId: $w, nodeId: $n, capability: $c) { nodeId } }`
		for i := range db.MaxNodeOverrides {
			tn.Do(t, set, map[string]any{"w": wf, "n": fmt.Sprint("node-", i), "c": "ocr"}, nil)
		}
		s.Do(t, tn.User.Token, set, map[string]any{"w": wf, "n": "one-more", "c": "ocr"}).Code(t, "CONFLICT")
		tn.Do(t, set, map[string]any{"w": wf, "n": "node-0", "c": "pdf"}, nil) // an existing one changes
		var out struct {
			Workflow struct{ NodeOverrides []struct{ NodeID string } }
		}
		tn.Do(t, `query($w: ID!) { workflow(id: $w) { nodeOverrides { nodeId } } }`, map[string]any{"w": wf}, &out)
		require.Len(t, out.Workflow.NodeOverrides, db.MaxNodeOverrides)
		// A node id is trimmed when set and when removed alike.
		var removed struct{ RemoveNodeRobotOverride bool }
		tn.Do(t, `mutation($w: ID!) { removeNodeRobotOverride(workflowId: $w, nodeId: "  node-1 ") }`, map[string]any{"w": wf}, &removed)
		require.True(t, removed.RemoveNodeRobotOverride)
	})

	t.Run("Statistics", func(t *testing.T) {
		var out struct {
			RobotStats struct {
				Total, Online, Busy, Maintenance, Offline int
				Robots                                    []struct{ Robot struct{ Name string } }
			}
		}
		tn.Do(t, `{ robotStats { total online busy maintenance offline robots { robot { name } } } }`, nil, &out)
		st := out.RobotStats
		require.Equal(t, robots, st.Total, "the counts cover every robot")
		require.Equal(t, robots/3, st.Online)
		require.Equal(t, robots-robots/3, st.Offline)
		require.Len(t, st.Robots, db.MaxStatsRows, "the list stops at its bound")
		require.Equal(t, "r0001", st.Robots[0].Robot.Name, "by name")

		_, err := s.DB.ExecContext(t.Context(), `INSERT INTO workflows (tenant_id, name)
			SELECT ?, 'w' || lpad(g::text, 4, '0') FROM generate_series(1, ?) g`, tn.User.Tenant, db.MaxStatsRows+1)
		require.NoError(t, err)
		var stats struct {
			WorkflowAssignmentStats []struct{ Workflow struct{ Name string } }
		}
		tn.Do(t, `{ workflowAssignmentStats { workflow { name } } }`, nil, &stats)
		require.Len(t, stats.WorkflowAssignmentStats, db.MaxStatsRows)
	})

	t.Run("APIKeys", func(t *testing.T) {
		_, err := s.DB.ExecContext(t.Context(), `INSERT INTO api_keys (tenant_id, robot_id, name, prefix, key_hash, created_by)
			SELECT ?, ?, 'k' || g, 'crpa_xxxx', sha256(g::text::bytea || ?::bytea), 'test' FROM generate_series(1, ?) g`,
			tn.User.Tenant, ids[0], ids[0], db.MaxPageSize+1)
		require.NoError(t, err)
		var out struct{ ApiKeys []struct{ ID string } }
		tn.Do(t, `query($r: ID!) { apiKeys(robotId: $r) { id } }`, map[string]any{"r": ids[0]}, &out)
		require.Len(t, out.ApiKeys, db.MaxPageSize)
	})
}
