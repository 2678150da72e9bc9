package graph_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// TestFirstZeroIsAnEmptyPage checks every list argument `first` of the
// schema that a nested or plain list (not a connection) takes: `first: 0`
// is an empty list, read with no row, while `first: 1` shows that there was
// a row to read. (bun writes no LIMIT for a limit of 0: a list that passed
// it on read every row of the entity, whatever its size.)
func TestFirstZeroIsAnEmptyPage(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	robot := tn.CreateRobot(t, "worker", apitest.RobotOpts{})

	// A row behind every list: a deployment, a heartbeat, a job with a log
	// line, a schedule's job, an audited key refusal, a workflow version.
	var machine struct{ CreateMachine struct{ ID string } }
	tn.Do(t, `mutation { createMachine(input: {name: "press"}) { id } }`, nil, &machine)
	tn.Do(t, `mutation($id: ID!) { deployProtocol(machineId: $id, protocol: {name: "p", version: "1.0.0"}) { id } }`,
		map[string]any{"id": machine.CreateMachine.ID}, nil)
	s.Do(t, robot.Key, `mutation { heartbeat(input: {status: ONLINE}) { id } }`, nil).OK(t, nil)
	job := tn.Enqueue(t, nil)
	lease := robot.Claim(t, 0)
	require.NotNil(t, lease)
	require.Equal(t, job.ID, lease.Job.ID)
	s.Do(t, robot.Key, `mutation($e: [RobotLogInput!]!) { shipLogs(entries: $e) }`, map[string]any{"e": []any{
		map[string]any{"level": "INFO", "message": "step", "jobId": job.ID, "leaseToken": lease.LeaseToken}}}).OK(t, nil)
	var sch struct{ CreateSchedule struct{ ID string } }
	tn.Do(t, `mutation($w: ID!) { createSchedule(input: {name: "nightly", workflowId: $w, cronExpression: "@daily"}) { id } }`,
		map[string]any{"w": tn.Workflow}, &sch)
	tn.Do(t, `mutation($id: ID!) { triggerSchedule(id: $id) { id } }`, map[string]any{"id": sch.CreateSchedule.ID}, nil)
	s.Do(t, "crpa_"+fmt.Sprintf("%043d", 0), `{ me { id } }`, nil).Code(t, "UNAUTHENTICATED")

	lists := []struct {
		name, query string
		vars        map[string]any
		path        []string // to the list in data
	}{
		{"Machine.deployments", `query($id: ID!, $n: Int) { machine(id: $id) { deployments(first: $n) { id } } }`,
			map[string]any{"id": machine.CreateMachine.ID}, []string{"machine", "deployments"}},
		{"Robot.heartbeats", `query($id: ID!, $n: Int) { robot(id: $id) { heartbeats(first: $n) { at } } }`,
			map[string]any{"id": robot.ID}, []string{"robot", "heartbeats"}},
		{"Job.logs", `query($id: ID!, $n: Int) { job(id: $id) { logs(first: $n) { message } } }`,
			map[string]any{"id": job.ID}, []string{"job", "logs"}},
		{"Workflow.versions", `query($id: ID!, $n: Int) { workflow(id: $id) { versions(first: $n) { version } } }`,
			map[string]any{"id": tn.Workflow}, []string{"workflow", "versions"}},
		{"Schedule.recentJobs", `query($id: ID!, $n: Int) { schedule(id: $id) { recentJobs(first: $n) { id } } }`,
			map[string]any{"id": sch.CreateSchedule.ID}, []string{"schedule", "recentJobs"}},
		{"apiKeyAudit", `query($n: Int) { apiKeyAudit(first: $n) { id } }`, map[string]any{}, []string{"apiKeyAudit"}},
	}
	for _, l := range lists {
		t.Run(l.name, func(t *testing.T) {
			length := func(n int) int {
				t.Helper()
				vars := map[string]any{"n": n}
				for k, v := range l.vars {
					vars[k] = v
				}
				var data map[string]any
				tn.Do(t, l.query, vars, &data)
				var at any = data
				for _, key := range l.path {
					obj, ok := at.(map[string]any)
					require.True(t, ok, "no %s in %v", key, data)
					at = obj[key]
				}
				list, ok := at.([]any)
				require.True(t, ok, "not a list at %v: %s", l.path, mustJSONText(t, data))
				return len(list)
			}
			require.Equal(t, 1, length(1), "there is a row to read")
			require.Equal(t, 0, length(0), "first: 0 is an empty list")
		})
	}
}

func mustJSONText(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}
