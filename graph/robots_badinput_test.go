package graph_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
)

// Bad input to the robot side of the API: every new mutation (and the new
// lists' arguments) refuses it with a clear code, names the field where
// there is one, leaks no SQL, logs no internal error and writes nothing.

// rbbFixture is a user's tenant with a robot working a RUNNING job, a second
// robot and a workflow whose names are taken.
type rbbFixture struct {
	s        *apitest.Server
	user     apitest.User
	robot    rbRobot
	key      string
	keyID    string
	taken    rbRobot
	workflow string
	lease    rbLease
	robotCur string // a cursor of `robots`, wrong for the other lists
	slot     int
}

func rbbNewFixture(t *testing.T) rbbFixture {
	t.Helper()
	s := apitest.New(t, apitest.Options{Queue: rbiQueue})
	f := rbbFixture{s: s, user: s.NewUser(t, uuid.Nil)}
	f.taken = rbCreateRobot(t, s, f.user.Token, map[string]any{"name": "taken-bot"})
	f.robot = rbCreateRobot(t, s, f.user.Token, map[string]any{"name": "bot", "capabilities": []any{"excel"}})
	k := rbCreateKey(t, s, f.user.Token, f.robot.ID, nil)
	f.key, f.keyID = k.Key, k.APIKey.ID
	rbHeartbeat(t, s, f.key, "ONLINE")
	f.workflow = s.CreateWorkflow(t, f.user.Token, "taken-wf")
	job := rbEnqueue(t, s, f.user.Token, f.workflow, nil)
	f.lease = rbMustClaim(t, s, f.key, job.ID)
	rbStart(t, s, f.key, f.lease)
	f.robotCur = rbListRobots(t, s, f.user.Token, map[string]any{"first": 1}).Robots.PageInfo.EndCursor
	require.NotEmpty(t, f.robotCur)
	return f
}

// rbbSnapshot describes, in one statement, everything a refused request
// must leave as it was: the row count of every table, and the fixture's
// robot, keys, workflows and job. Columns only maintenance or a key's
// (rate-limited) last use would write are left out.
func rbbSnapshot(t *testing.T, f rbbFixture) string {
	t.Helper()
	var counts []string
	for _, table := range append([]string{"machines"}, rbTables...) {
		counts = append(counts, fmt.Sprintf("(SELECT '%s ' || count(*) FROM %s)", table, table))
	}
	var snap string
	err := f.s.DB.NewRaw(`SELECT concat_ws(E'\n', `+strings.Join(counts, ", ")+`,
			(SELECT row_to_json(j)::text FROM jobs j WHERE j.id = ?0),
			(SELECT string_agg(concat_ws(' | ', id, name, hostname, status, capabilities::text, max_concurrent_jobs, environment,
				agent_version, metadata::text, last_heartbeat_at, updated_at, revision), E'\n' ORDER BY id) FROM robots),
			(SELECT string_agg(concat_ws(' | ', id, robot_id, name, expires_at, revoked_at), E'\n' ORDER BY id) FROM api_keys),
			(SELECT string_agg(concat_ws(' | ', id, name, description, current_version, updated_at), E'\n' ORDER BY id) FROM workflows),
			(SELECT string_agg(concat_ws(' | ', workflow_id, version, definition::text), E'\n' ORDER BY workflow_id, version) FROM workflow_versions),
			(SELECT string_agg(concat_ws(' | ', workflow_id, robot_id, is_default, priority), E'\n' ORDER BY workflow_id, robot_id) FROM workflow_assignments),
			(SELECT string_agg(concat_ws(' | ', workflow_id, node_id, robot_id, capability), E'\n' ORDER BY workflow_id, node_id) FROM node_robot_overrides))`,
		f.lease.Job.ID).Scan(t.Context(), &snap)
	require.NoError(t, err)
	return snap
}

// rbbCase is one request the API must refuse.
type rbbCase struct {
	name  string
	query string
	vars  map[string]any
	code  string
	field string
	// reason is the expected extensions.reason, when there is one.
	reason string
	// message, when set, is a part the error message must contain.
	message string
	// robot sends the request with the fixture robot's key instead of the user's token.
	robot bool
	// bug, when set, describes a known server bug this case still shows (see badKnownBug).
	bug string
}

func rbbList(n int, item func(i int) any) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = item(i)
	}
	return out
}

// rbbCases are the refusals, with the fixture's ids.
func rbbCases(f rbbFixture) []rbbCase {
	unknown := uuid.NewString()
	over := apitest.JSONOfSize(db.MaxJSONBytes + 1)
	long := func(n int) string { return strings.Repeat("a", n) }
	caps51 := rbbList(51, func(i int) any { return fmt.Sprintf("c%d", i) })
	with := func(base map[string]any, k string, v any) map[string]any {
		out := map[string]any{}
		for key, x := range base {
			out[key] = x
		}
		out[k] = v
		return out
	}
	var cases []rbbCase
	add := func(c ...rbbCase) { cases = append(cases, c...) }

	// Robots: the same checks on create and update.
	const create = `mutation($in: CreateRobotInput!) { createRobot(input: $in) { id } }`
	const update = `mutation($id: ID!, $in: UpdateRobotInput!) { updateRobot(id: $id, input: $in) { id } }`
	robotInputs := []struct {
		label, field string
		in           map[string]any
	}{
		{"NameEmpty", "name", map[string]any{"name": ""}},
		{"NameOnlySpaces", "name", map[string]any{"name": "   "}},
		{"Name101", "name", map[string]any{"name": long(101)}},
		{"Name101Runes", "name", map[string]any{"name": strings.Repeat("é", 101)}},
		{"NameControlChar", "name", map[string]any{"name": "bot\u0001"}},
		{"NameNewline", "name", map[string]any{"name": "bot\n2"}},
		{"NameNUL", "name", map[string]any{"name": "b\u0000ot"}},
		{"CapabilityWithSpace", "capabilities", map[string]any{"name": "x", "capabilities": []any{"excel", "has space"}}},
		{"CapabilityEmpty", "capabilities", map[string]any{"name": "x", "capabilities": []any{""}}},
		{"CapabilityNonASCII", "capabilities", map[string]any{"name": "x", "capabilities": []any{"excél"}}},
		{"CapabilitySlash", "capabilities", map[string]any{"name": "x", "capabilities": []any{"a/b"}}},
		{"Capability65", "capabilities", map[string]any{"name": "x", "capabilities": []any{long(65)}}},
		{"Capabilities51", "capabilities", map[string]any{"name": "x", "capabilities": caps51}},
		{"MaxConcurrentJobs0", "maxConcurrentJobs", map[string]any{"name": "x", "maxConcurrentJobs": 0}},
		{"MaxConcurrentJobs101", "maxConcurrentJobs", map[string]any{"name": "x", "maxConcurrentJobs": 101}},
		{"MaxConcurrentJobsNegative", "maxConcurrentJobs", map[string]any{"name": "x", "maxConcurrentJobs": -1}},
		{"Hostname256", "hostname", map[string]any{"name": "x", "hostname": long(256)}},
		{"Hostname256Bytes", "hostname", map[string]any{"name": "x", "hostname": strings.Repeat("é", 128)}},
		{"HostnameNUL", "hostname", map[string]any{"name": "x", "hostname": "h\u0000"}},
		{"Environment101", "environment", map[string]any{"name": "x", "environment": long(101)}},
		{"EnvironmentNUL", "environment", map[string]any{"name": "x", "environment": "prod\u0000"}},
		{"MetadataOversized", "metadata", map[string]any{"name": "x", "metadata": over}},
		{"MetadataNUL", "metadata", map[string]any{"name": "x", "metadata": map[string]any{"k": "\u0000"}}},
		{"MetadataArray", "", map[string]any{"name": "x", "metadata": []any{1}}},
		{"MetadataString", "", map[string]any{"name": "x", "metadata": "{}"}},
	}
	for _, ri := range robotInputs {
		add(rbbCase{name: "createRobot/" + ri.label, query: create, vars: map[string]any{"in": ri.in}, code: "BAD_USER_INPUT", field: ri.field})
		in := map[string]any{} // only the bad field
		for k, v := range ri.in {
			if k != "name" || ri.field == "name" {
				in[k] = v
			}
		}
		add(rbbCase{name: "updateRobot/" + ri.label, query: update, vars: map[string]any{"id": f.robot.ID, "in": in}, code: "BAD_USER_INPUT", field: ri.field})
	}
	for _, name := range []string{"taken-bot", "TAKEN-BOT", " Taken-Bot "} {
		add(rbbCase{name: fmt.Sprintf("createRobot/Duplicate%q", name), query: create, vars: map[string]any{"in": map[string]any{"name": name}}, code: "CONFLICT", field: "name"},
			rbbCase{name: fmt.Sprintf("updateRobot/RenameInto%q", name), query: update, vars: map[string]any{"id": f.robot.ID, "in": map[string]any{"name": name}}, code: "CONFLICT", field: "name"})
	}
	add(
		rbbCase{name: "createRobot/MissingName", query: `mutation { createRobot(input: {hostname: "h"}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		rbbCase{name: "createRobot/MaxConcurrentJobsNotInt", query: `mutation { createRobot(input: {name: "x", maxConcurrentJobs: 1.5}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		rbbCase{name: "updateRobot/StatusNotInEnum", query: update, vars: map[string]any{"id": f.robot.ID, "in": map[string]any{"status": "DEAD"}}, code: "BAD_USER_INPUT"},
		rbbCase{name: "updateRobot/UnknownID", query: update, vars: map[string]any{"id": unknown, "in": map[string]any{"name": "x"}}, code: "NOT_FOUND"},
		rbbCase{name: "updateRobot/MalformedID", query: update, vars: map[string]any{"id": "robot-1", "in": map[string]any{"name": "x"}}, code: "BAD_USER_INPUT"},
		rbbCase{name: "deleteRobot/UnknownID", query: `mutation($id: ID!) { deleteRobot(id: $id) }`, vars: map[string]any{"id": unknown}, code: "NOT_FOUND"},
		rbbCase{name: "deleteRobot/MalformedID", query: `mutation($id: ID!) { deleteRobot(id: $id) }`, vars: map[string]any{"id": "x"}, code: "BAD_USER_INPUT"},
	)

	// API keys.
	const createKey = `mutation($r: ID!, $n: String!, $e: Time) { createApiKey(robotId: $r, name: $n, expiresAt: $e) { key } }`
	add(
		rbbCase{name: "createApiKey/NameEmpty", query: createKey, vars: map[string]any{"r": f.robot.ID, "n": ""}, code: "BAD_USER_INPUT", field: "name"},
		rbbCase{name: "createApiKey/Name101", query: createKey, vars: map[string]any{"r": f.robot.ID, "n": long(101)}, code: "BAD_USER_INPUT", field: "name"},
		rbbCase{name: "createApiKey/NameControlChar", query: createKey, vars: map[string]any{"r": f.robot.ID, "n": "k\u0007"}, code: "BAD_USER_INPUT", field: "name"},
		rbbCase{name: "createApiKey/ExpiresInThePast", query: createKey, vars: map[string]any{"r": f.robot.ID, "n": "k", "e": time.Now().Add(-time.Minute).Format(time.RFC3339)}, code: "BAD_USER_INPUT", field: "expiresAt"},
		rbbCase{name: "createApiKey/ExpiresNotATime", query: createKey, vars: map[string]any{"r": f.robot.ID, "n": "k", "e": "tomorrow"}, code: "BAD_USER_INPUT"},
		rbbCase{name: "createApiKey/RobotIDMalformed", query: createKey, vars: map[string]any{"r": "robot-1", "n": "k"}, code: "BAD_USER_INPUT"},
		rbbCase{name: "createApiKey/RobotIDUnknown", query: createKey, vars: map[string]any{"r": unknown, "n": "k"}, code: "NOT_FOUND"},
		rbbCase{name: "revokeApiKey/Unknown", query: `mutation($id: ID!) { revokeApiKey(id: $id) { id } }`, vars: map[string]any{"id": unknown}, code: "NOT_FOUND"},
		rbbCase{name: "revokeApiKey/RobotIDInstead", query: `mutation($id: ID!) { revokeApiKey(id: $id) { id } }`, vars: map[string]any{"id": f.robot.ID}, code: "NOT_FOUND"},
		rbbCase{name: "revokeApiKey/Malformed", query: `mutation($id: ID!) { revokeApiKey(id: $id) { id } }`, vars: map[string]any{"id": "crpa_x"}, code: "BAD_USER_INPUT"},
	)

	// Workflows.
	const createWF = `mutation($in: CreateWorkflowInput!) { createWorkflow(input: $in) { id } }`
	const publish = `mutation($w: ID!, $d: JSON!) { publishWorkflowVersion(workflowId: $w, definition: $d) { version } }`
	add(
		rbbCase{name: "createWorkflow/DefinitionMissing", query: `mutation { createWorkflow(input: {name: "x"}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		rbbCase{name: "createWorkflow/DefinitionNullLiteral", query: `mutation { createWorkflow(input: {name: "x", definition: null}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		rbbCase{name: "createWorkflow/DefinitionNullVariable", query: createWF, vars: map[string]any{"in": map[string]any{"name": "x", "definition": nil}}, code: "BAD_USER_INPUT"},
		rbbCase{name: "createWorkflow/DefinitionMissingInVariable", query: createWF, vars: map[string]any{"in": map[string]any{"name": "x"}}, code: "BAD_USER_INPUT"},
		rbbCase{name: "createWorkflow/DefinitionArray", query: createWF, vars: map[string]any{"in": map[string]any{"name": "x", "definition": []any{}}}, code: "BAD_USER_INPUT"},
		rbbCase{name: "createWorkflow/DefinitionArrayLiteral", query: `mutation { createWorkflow(input: {name: "x", definition: [1]}) { id } }`, code: "BAD_USER_INPUT"},
		rbbCase{name: "createWorkflow/DefinitionString", query: createWF, vars: map[string]any{"in": map[string]any{"name": "x", "definition": "{}"}}, code: "BAD_USER_INPUT"},
		rbbCase{name: "createWorkflow/DefinitionOversized", query: createWF, vars: map[string]any{"in": map[string]any{"name": "x", "definition": over}}, code: "BAD_USER_INPUT", field: "definition"},
		rbbCase{name: "createWorkflow/DefinitionNUL", query: createWF, vars: map[string]any{"in": map[string]any{"name": "x", "definition": map[string]any{"a\u0000": 1}}}, code: "BAD_USER_INPUT", field: "definition"},
		rbbCase{name: "createWorkflow/NameEmpty", query: createWF, vars: map[string]any{"in": map[string]any{"name": " ", "definition": map[string]any{}}}, code: "BAD_USER_INPUT", field: "name"},
		rbbCase{name: "createWorkflow/Name101", query: createWF, vars: map[string]any{"in": map[string]any{"name": long(101), "definition": map[string]any{}}}, code: "BAD_USER_INPUT", field: "name"},
		rbbCase{name: "createWorkflow/Description2001", query: createWF, vars: map[string]any{"in": map[string]any{"name": "x", "description": long(2001), "definition": map[string]any{}}}, code: "BAD_USER_INPUT", field: "description"},
		rbbCase{name: "createWorkflow/DescriptionNUL", query: createWF, vars: map[string]any{"in": map[string]any{"name": "x", "description": "\u0000", "definition": map[string]any{}}}, code: "BAD_USER_INPUT", field: "description"},
		rbbCase{name: "createWorkflow/NameDuplicate", query: createWF, vars: map[string]any{"in": map[string]any{"name": "TAKEN-wf", "definition": map[string]any{}}}, code: "CONFLICT", field: "name"},
		rbbCase{name: "publishWorkflowVersion/DefinitionArray", query: publish, vars: map[string]any{"w": f.workflow, "d": []any{1}}, code: "BAD_USER_INPUT"},
		rbbCase{name: "publishWorkflowVersion/DefinitionNull", query: publish, vars: map[string]any{"w": f.workflow, "d": nil}, code: "BAD_USER_INPUT"},
		rbbCase{name: "publishWorkflowVersion/DefinitionOversized", query: publish, vars: map[string]any{"w": f.workflow, "d": over}, code: "BAD_USER_INPUT", field: "definition"},
		rbbCase{name: "publishWorkflowVersion/DefinitionNumberOutOfRange", query: publish, vars: map[string]any{"w": f.workflow, "d": map[string]any{"x": 1e308, "y": json.Number("1e1000000")}}, code: "BAD_USER_INPUT", field: "definition"},
		rbbCase{name: "publishWorkflowVersion/UnknownWorkflow", query: publish, vars: map[string]any{"w": unknown, "d": map[string]any{}}, code: "NOT_FOUND"},
		rbbCase{name: "publishWorkflowVersion/MalformedWorkflow", query: publish, vars: map[string]any{"w": "wf", "d": map[string]any{}}, code: "BAD_USER_INPUT"},
	)

	const assign = `mutation($w: ID!, $r: ID!, $p: Int) { assignWorkflow(workflowId: $w, robotId: $r, priority: $p) { robotId } }`
	const override = `mutation($w: ID!, $n: String!, $r: ID, $c: String) { setNodeRobotOverride(workflowId: $w, nodeId: $n, robotId: $r, capability: $c) { nodeId } }`
	add(
		rbbCase{name: "assignWorkflow/Priority1001", query: assign, vars: map[string]any{"w": f.workflow, "r": f.robot.ID, "p": 1001}, code: "BAD_USER_INPUT", field: "priority"},
		rbbCase{name: "assignWorkflow/PriorityMinus1001", query: assign, vars: map[string]any{"w": f.workflow, "r": f.robot.ID, "p": -1001}, code: "BAD_USER_INPUT", field: "priority"},
		rbbCase{name: "assignWorkflow/UnknownRobot", query: assign, vars: map[string]any{"w": f.workflow, "r": unknown}, code: "NOT_FOUND", field: "robotId"},
		rbbCase{name: "assignWorkflow/UnknownWorkflow", query: assign, vars: map[string]any{"w": unknown, "r": f.robot.ID}, code: "NOT_FOUND"},
		rbbCase{name: "assignWorkflow/MalformedRobot", query: assign, vars: map[string]any{"w": f.workflow, "r": "bot"}, code: "BAD_USER_INPUT"},
		rbbCase{name: "unassignWorkflow/UnknownWorkflow", query: `mutation($w: ID!, $r: ID!) { unassignWorkflow(workflowId: $w, robotId: $r) }`, vars: map[string]any{"w": unknown, "r": f.robot.ID}, code: "NOT_FOUND"},
		rbbCase{name: "setNodeRobotOverride/NodeIDEmpty", query: override, vars: map[string]any{"w": f.workflow, "n": "", "c": "ocr"}, code: "BAD_USER_INPUT", field: "nodeId"},
		rbbCase{name: "setNodeRobotOverride/NodeID101", query: override, vars: map[string]any{"w": f.workflow, "n": long(101), "c": "ocr"}, code: "BAD_USER_INPUT", field: "nodeId"},
		rbbCase{name: "setNodeRobotOverride/NodeIDControlChar", query: override, vars: map[string]any{"w": f.workflow, "n": "n\u0000", "c": "ocr"}, code: "BAD_USER_INPUT", field: "nodeId"},
		rbbCase{name: "setNodeRobotOverride/CapabilityInvalid", query: override, vars: map[string]any{"w": f.workflow, "n": "n", "c": "no spaces please"}, code: "BAD_USER_INPUT", field: "capability"},
		rbbCase{name: "setNodeRobotOverride/CapabilityEmpty", query: override, vars: map[string]any{"w": f.workflow, "n": "n", "c": ""}, code: "BAD_USER_INPUT", field: "capability"},
		rbbCase{name: "setNodeRobotOverride/Capability65", query: override, vars: map[string]any{"w": f.workflow, "n": "n", "c": long(65)}, code: "BAD_USER_INPUT", field: "capability"},
		rbbCase{name: "setNodeRobotOverride/Both", query: override, vars: map[string]any{"w": f.workflow, "n": "n", "r": f.robot.ID, "c": "ocr"}, code: "BAD_USER_INPUT", field: "robotId"},
		rbbCase{name: "setNodeRobotOverride/Neither", query: override, vars: map[string]any{"w": f.workflow, "n": "n"}, code: "BAD_USER_INPUT", field: "robotId"},
		rbbCase{name: "setNodeRobotOverride/UnknownRobot", query: override, vars: map[string]any{"w": f.workflow, "n": "n", "r": unknown}, code: "NOT_FOUND", field: "robotId"},
		rbbCase{name: "setNodeRobotOverride/UnknownWorkflow", query: override, vars: map[string]any{"w": unknown, "n": "n", "c": "ocr"}, code: "NOT_FOUND"},
		rbbCase{name: "removeNodeRobotOverride/UnknownWorkflow", query: `mutation($w: ID!) { removeNodeRobotOverride(workflowId: $w, nodeId: "n") }`, vars: map[string]any{"w": unknown}, code: "NOT_FOUND"},
	)

	// Jobs: each field of EnqueueJobInput, alone and as the third of a batch.
	const enqueue = `mutation($in: EnqueueJobInput!) { enqueueJob(input: $in) { id } }`
	const enqueueMany = `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`
	good := map[string]any{"workflowId": f.workflow}
	jobInputs := []struct {
		label, code, field string
		in                 map[string]any
	}{
		{"UnknownWorkflow", "NOT_FOUND", "workflowId", map[string]any{"workflowId": unknown}},
		{"RobotIDInsteadOfWorkflow", "NOT_FOUND", "workflowId", map[string]any{"workflowId": f.robot.ID}},
		{"Version99", "BAD_USER_INPUT", "version", with(good, "version", 99)},
		{"Version0", "BAD_USER_INPUT", "version", with(good, "version", 0)},
		{"VersionNegative", "BAD_USER_INPUT", "version", with(good, "version", -1)},
		{"Priority1001", "BAD_USER_INPUT", "priority", with(good, "priority", 1001)},
		{"PriorityMinus1001", "BAD_USER_INPUT", "priority", with(good, "priority", -1001)},
		{"MaxAttempts0", "BAD_USER_INPUT", "maxAttempts", with(good, "maxAttempts", 0)},
		{"MaxAttempts101", "BAD_USER_INPUT", "maxAttempts", with(good, "maxAttempts", 101)},
		{"RequiredCapabilityInvalid", "BAD_USER_INPUT", "requiredCapabilities", with(good, "requiredCapabilities", []any{"excel", "bad cap"})},
		{"RequiredCapabilities51", "BAD_USER_INPUT", "requiredCapabilities", with(good, "requiredCapabilities", caps51)},
		{"InputOversized", "BAD_USER_INPUT", "input", with(good, "input", over)},
		{"InputNUL", "BAD_USER_INPUT", "input", with(good, "input", map[string]any{"k": "\u0000"})},
		{"UnknownRobot", "NOT_FOUND", "robotId", with(good, "robotId", unknown)},
	}
	for _, ji := range jobInputs {
		add(
			rbbCase{name: "enqueueJob/" + ji.label, query: enqueue, vars: map[string]any{"in": ji.in}, code: ji.code, field: "input." + ji.field},
			rbbCase{name: "enqueueJobs/ThirdIs" + ji.label, query: enqueueMany, vars: map[string]any{"in": []any{good, good, ji.in}}, code: ji.code, field: "input[2]." + ji.field},
		)
	}
	add(
		rbbCase{name: "enqueueJob/InputArray", query: enqueue, vars: map[string]any{"in": with(good, "input", []any{1})}, code: "BAD_USER_INPUT"},
		rbbCase{name: "enqueueJob/InputString", query: enqueue, vars: map[string]any{"in": with(good, "input", "{}")}, code: "BAD_USER_INPUT"},
		rbbCase{name: "enqueueJob/MalformedRobotID", query: enqueue, vars: map[string]any{"in": with(good, "robotId", "bot")}, code: "BAD_USER_INPUT"},
		rbbCase{name: "enqueueJob/RunAtNotATime", query: enqueue, vars: map[string]any{"in": with(good, "runAt", "soon")}, code: "BAD_USER_INPUT"},
		rbbCase{name: "enqueueJob/MissingWorkflowID", query: `mutation { enqueueJob(input: {priority: 1}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		rbbCase{name: "enqueueJobs/Empty", query: enqueueMany, vars: map[string]any{"in": []any{}}, code: "BAD_USER_INPUT", field: "input"},
		rbbCase{name: "enqueueJobs/1001", query: enqueueMany, vars: map[string]any{"in": rbbList(1001, func(int) any { return good })}, code: "BAD_USER_INPUT", field: "input"},
		rbbCase{name: "enqueueJobs/ThirdInputArray", query: enqueueMany, vars: map[string]any{"in": []any{good, good, with(good, "input", []any{})}}, code: "BAD_USER_INPUT"},
		rbbCase{name: "cancelJob/Unknown", query: `mutation($id: ID!) { cancelJob(id: $id) { id } }`, vars: map[string]any{"id": unknown}, code: "NOT_FOUND"},
		rbbCase{name: "retryJob/Unknown", query: `mutation($id: ID!) { retryJob(id: $id) { id } }`, vars: map[string]any{"id": unknown}, code: "NOT_FOUND"},
		rbbCase{name: "retryJob/RunningJob", query: `mutation($id: ID!) { retryJob(id: $id) { id } }`, vars: map[string]any{"id": f.lease.Job.ID}, code: "CONFLICT", reason: db.ReasonIllegalTransition},
	)

	// The robot's own calls.
	const heartbeat = `mutation($in: HeartbeatInput!) { heartbeat(input: $in) { id } }`
	add(
		rbbCase{name: "heartbeat/MetricsArray", query: heartbeat, vars: map[string]any{"in": map[string]any{"status": "ONLINE", "metrics": []any{1}}}, code: "BAD_USER_INPUT", robot: true},
		rbbCase{name: "heartbeat/MetricsOversized", query: heartbeat, vars: map[string]any{"in": map[string]any{"status": "ONLINE", "metrics": over}}, code: "BAD_USER_INPUT", field: "metrics", robot: true},
		rbbCase{name: "heartbeat/MetricsNUL", query: heartbeat, vars: map[string]any{"in": map[string]any{"status": "ONLINE", "metrics": map[string]any{"\u0000": 1}}}, code: "BAD_USER_INPUT", field: "metrics", robot: true},
		rbbCase{name: "heartbeat/AgentVersion65", query: heartbeat, vars: map[string]any{"in": map[string]any{"status": "BUSY", "agentVersion": long(65)}}, code: "BAD_USER_INPUT", field: "agentVersion", robot: true},
		rbbCase{name: "heartbeat/AgentVersionNUL", query: heartbeat, vars: map[string]any{"in": map[string]any{"status": "BUSY", "agentVersion": "1\u0000"}}, code: "BAD_USER_INPUT", field: "agentVersion", robot: true},
		rbbCase{name: "heartbeat/StatusNotInEnum", query: heartbeat, vars: map[string]any{"in": map[string]any{"status": "ASLEEP"}}, code: "BAD_USER_INPUT", robot: true},
		rbbCase{name: "heartbeat/StatusMissing", query: `mutation { heartbeat(input: {}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation, robot: true},
		rbbCase{name: "claimJob/WaitNegative", query: `mutation { claimJob(waitSeconds: -1) { leaseToken } }`, code: "BAD_USER_INPUT", field: "waitSeconds", robot: true},
		rbbCase{name: "claimJob/Wait61", query: `mutation { claimJob(waitSeconds: 61) { leaseToken } }`, code: "BAD_USER_INPUT", field: "waitSeconds", robot: true},
	)
	const progress = `mutation($j: ID!, $l: ID!, $p: Int!, $n: String, $m: String) { reportJobProgress(jobId: $j, leaseToken: $l, progress: $p, currentNode: $n, message: $m) { id } }`
	const complete = `mutation($j: ID!, $l: ID!, $r: JSON) { completeJob(jobId: $j, leaseToken: $l, result: $r) { id } }`
	const fail = `mutation($j: ID!, $l: ID!, $e: String!) { failJob(jobId: $j, leaseToken: $l, error: $e) { id } }`
	const logs = `mutation($j: ID!, $l: ID!, $e: [JobLogInput!]!) { appendJobLogs(jobId: $j, leaseToken: $l, entries: $e) }`
	lv := f.lease.rbVars
	entry := func(extra map[string]any) map[string]any { return with(with(extra, "level", "INFO"), "message", "ok") }
	add(
		rbbCase{name: "reportJobProgress/ProgressNegative", query: progress, vars: lv(map[string]any{"p": -1}), code: "BAD_USER_INPUT", field: "progress", robot: true},
		rbbCase{name: "reportJobProgress/Progress101", query: progress, vars: lv(map[string]any{"p": 101}), code: "BAD_USER_INPUT", field: "progress", robot: true},
		rbbCase{name: "reportJobProgress/CurrentNode101", query: progress, vars: lv(map[string]any{"p": 5, "n": long(101)}), code: "BAD_USER_INPUT", field: "currentNode", robot: true},
		rbbCase{name: "reportJobProgress/Message8001", query: progress, vars: lv(map[string]any{"p": 5, "m": long(8001)}), code: "BAD_USER_INPUT", field: "message", robot: true},
		rbbCase{name: "reportJobProgress/MessageNUL", query: progress, vars: lv(map[string]any{"p": 5, "m": "a\u0000b"}), code: "BAD_USER_INPUT", field: "message", robot: true},
		rbbCase{name: "reportJobProgress/UnknownJob", query: progress, vars: map[string]any{"j": unknown, "l": f.lease.LeaseToken, "p": 5}, code: "NOT_FOUND", robot: true},
		rbbCase{name: "reportJobProgress/WrongLeaseToken", query: progress, vars: lv(map[string]any{"l": unknown, "p": 5}), code: "CONFLICT", reason: db.ReasonLeaseLost, robot: true},
		rbbCase{name: "reportJobProgress/MalformedLeaseToken", query: progress, vars: lv(map[string]any{"l": "token", "p": 5}), code: "BAD_USER_INPUT", robot: true},
		rbbCase{name: "startJob/AlreadyRunning", query: `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { id } }`, vars: lv(nil), code: "CONFLICT", reason: db.ReasonIllegalTransition, robot: true},
		rbbCase{name: "completeJob/ResultArray", query: complete, vars: lv(map[string]any{"r": []any{}}), code: "BAD_USER_INPUT", robot: true},
		rbbCase{name: "completeJob/ResultString", query: complete, vars: lv(map[string]any{"r": "done"}), code: "BAD_USER_INPUT", robot: true},
		rbbCase{name: "completeJob/ResultOversized", query: complete, vars: lv(map[string]any{"r": over}), code: "BAD_USER_INPUT", field: "result", robot: true},
		rbbCase{name: "completeJob/ResultNUL", query: complete, vars: lv(map[string]any{"r": map[string]any{"k": []any{"\u0000"}}}), code: "BAD_USER_INPUT", field: "result", robot: true},
		rbbCase{name: "completeJob/WrongLeaseToken", query: complete, vars: lv(map[string]any{"l": unknown}), code: "CONFLICT", reason: db.ReasonLeaseLost, robot: true},
		rbbCase{name: "failJob/ErrorEmpty", query: fail, vars: lv(map[string]any{"e": ""}), code: "BAD_USER_INPUT", field: "error", robot: true},
		rbbCase{name: "failJob/Error8001", query: fail, vars: lv(map[string]any{"e": long(8001)}), code: "BAD_USER_INPUT", field: "error", robot: true},
		rbbCase{name: "failJob/ErrorNUL", query: fail, vars: lv(map[string]any{"e": "\u0000"}), code: "BAD_USER_INPUT", field: "error", robot: true},
		rbbCase{name: "appendJobLogs/NoEntries", query: logs, vars: lv(map[string]any{"e": []any{}}), code: "BAD_USER_INPUT", field: "entries", robot: true},
		rbbCase{name: "appendJobLogs/501Entries", query: logs, vars: lv(map[string]any{"e": rbbList(501, func(int) any { return entry(nil) })}), code: "BAD_USER_INPUT", field: "entries", robot: true},
		rbbCase{name: "appendJobLogs/Message8001", query: logs, vars: lv(map[string]any{"e": []any{with(entry(nil), "message", long(8001))}}), code: "BAD_USER_INPUT", field: "entries[0].message", robot: true},
		rbbCase{name: "appendJobLogs/SecondMessage8001", query: logs, vars: lv(map[string]any{"e": []any{entry(nil), with(entry(nil), "message", long(8001))}}), code: "BAD_USER_INPUT", field: "entries[1].message", robot: true},
		rbbCase{name: "appendJobLogs/MessageNUL", query: logs, vars: lv(map[string]any{"e": []any{with(entry(nil), "message", "\u0000")}}), code: "BAD_USER_INPUT", field: "entries[0].message", robot: true},
		rbbCase{name: "appendJobLogs/FieldsArray", query: logs, vars: lv(map[string]any{"e": []any{entry(map[string]any{"fields": []any{1}})}}), code: "BAD_USER_INPUT", robot: true},
		rbbCase{name: "appendJobLogs/FieldsOversized", query: logs, vars: lv(map[string]any{"e": []any{entry(map[string]any{"fields": over})}}), code: "BAD_USER_INPUT", field: "entries[0].fields", robot: true},
		rbbCase{name: "appendJobLogs/LevelNotInEnum", query: logs, vars: lv(map[string]any{"e": []any{with(entry(nil), "level", "LOUD")}}), code: "BAD_USER_INPUT", robot: true},
		rbbCase{name: "appendJobLogs/LevelLowercase", query: logs, vars: lv(map[string]any{"e": []any{with(entry(nil), "level", "info")}}), code: "BAD_USER_INPUT", robot: true},
		rbbCase{name: "appendJobLogs/LevelMissing", query: logs, vars: lv(map[string]any{"e": []any{map[string]any{"message": "m"}}}), code: "BAD_USER_INPUT", robot: true},
		rbbCase{name: "appendJobLogs/AtNotATime", query: logs, vars: lv(map[string]any{"e": []any{entry(map[string]any{"at": "now"})}}), code: "BAD_USER_INPUT", robot: true},
		rbbCase{name: "appendJobLogs/UnknownJob", query: logs, vars: map[string]any{"j": unknown, "l": f.lease.LeaseToken, "e": []any{entry(nil)}}, code: "NOT_FOUND", robot: true},
		rbbCase{name: "appendJobLogs/WrongLeaseToken", query: logs, vars: lv(map[string]any{"l": unknown, "e": []any{entry(nil)}}), code: "CONFLICT", reason: db.ReasonLeaseLost, robot: true},
	)

	// The new lists' arguments.
	add(
		rbbCase{name: "robots/NegativeFirst", query: `{ robots(first: -1) { totalCount } }`, code: "BAD_USER_INPUT", field: "first"},
		rbbCase{name: "robots/GarbageCursor", query: `{ robots(after: "garbage!") { totalCount } }`, code: "BAD_USER_INPUT", field: "after"},
		rbbCase{name: "robots/CapabilityInvalid", query: `{ robots(filter: {capability: "a b"}) { totalCount } }`, code: "BAD_USER_INPUT", field: "filter.capability"},
		rbbCase{name: "robots/NameContains101", query: `query($q: String) { robots(filter: {nameContains: $q}) { totalCount } }`, vars: map[string]any{"q": long(101)}, code: "BAD_USER_INPUT", field: "filter.nameContains"},
		rbbCase{name: "workflows/RobotCursor", query: `query($a: String) { workflows(after: $a) { totalCount } }`, vars: map[string]any{"a": f.robotCur}, code: "BAD_USER_INPUT", field: "after"},
		rbbCase{name: "workflows/NegativeFirst", query: `{ workflows(first: -1) { totalCount } }`, code: "BAD_USER_INPUT", field: "first"},
		rbbCase{name: "workflows/NameContainsNUL", query: `query($q: String) { workflows(nameContains: $q) { totalCount } }`, vars: map[string]any{"q": "\u0000"}, code: "BAD_USER_INPUT", field: "nameContains"},
		rbbCase{name: "jobs/RobotCursor", query: `query($a: String) { jobs(after: $a) { totalCount } }`, vars: map[string]any{"a": f.robotCur}, code: "BAD_USER_INPUT", field: "after"},
		rbbCase{name: "jobs/NegativeFirst", query: `{ jobs(first: -1) { totalCount } }`, code: "BAD_USER_INPUT", field: "first"},
		rbbCase{name: "jobs/StatusNotInEnum", query: `{ jobs(filter: {status: LOST}) { totalCount } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		rbbCase{name: "apiKeys/MalformedRobotID", query: `{ apiKeys(robotId: "bot") { id } }`, code: "BAD_USER_INPUT"},
		rbbCase{name: "apiKeyAudit/NegativeFirst", query: `{ apiKeyAudit(first: -1) { id } }`, code: "BAD_USER_INPUT", field: "first"},
		rbbCase{name: "job/MalformedID", query: `{ job(id: "job-1") { id } }`, code: "BAD_USER_INPUT"},
		rbbCase{name: "Job.logs/NegativeFirst", query: `query($id: ID!) { job(id: $id) { logs(first: -1) { id } } }`, vars: map[string]any{"id": f.lease.Job.ID}, code: "BAD_USER_INPUT", field: "first"},
	)
	rbbTimeCases(f, add)
	rbbIntCases(f, add)
	return cases
}

// rbbOutOfRangeTimes are RFC 3339 times PostgreSQL cannot store or compare,
// or that RFC 3339 could not write back: year 0, reached directly or through
// an offset, year 10000 through an offset, and a time past the last
// microsecond of 9999.
var rbbOutOfRangeTimes = map[string]string{
	"Year0":                   "0000-01-01T00:00:00Z",
	"Year0Late":               "0000-12-31T23:59:59.999999Z",
	"Year1MinusOffset":        "0001-01-01T00:00:00+00:01",
	"Year9999PlusOffset":      "9999-12-31T23:59:59-00:01",
	"Year9999PastMicrosecond": "9999-12-31T23:59:59.9999991Z",
}

// rbbTimeCases refuse an out-of-range time in every Time input of the schema
// (createApiKey.expiresAt, EnqueueJobInput.runAt, JobFilter.createdAfter and
// createdBefore, JobLogInput.at), as a variable and as a literal, and in the
// cursor of every list ordered by time: BAD_USER_INPUT naming the field,
// never INTERNAL.
func rbbTimeCases(f rbbFixture, add func(...rbbCase)) {
	const (
		createKey   = `mutation($r: ID!, $e: Time) { createApiKey(robotId: $r, name: "k", expiresAt: $e) { key } }`
		enqueue     = `mutation($in: EnqueueJobInput!) { enqueueJob(input: $in) { id } }`
		enqueueMany = `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`
		jobs        = `query($f: JobFilter) { jobs(filter: $f) { totalCount } }`
		logs        = `mutation($j: ID!, $l: ID!, $e: [JobLogInput!]!) { appendJobLogs(jobId: $j, leaseToken: $l, entries: $e) }`
	)
	good := map[string]any{"workflowId": f.workflow}
	lv := f.lease.rbVars
	// An out-of-range time in a later mutation field stops the earlier ones too.
	add(
		rbbCase{name: "enqueueJob/SecondFieldLiteralYear0RunsNothing", query: `mutation($w: ID!) { a: createRobot(input: {name: "first"}) { id } b: enqueueJob(input: {workflowId: $w, runAt: "0000-06-01T00:00:00Z"}) { id } }`,
			vars: map[string]any{"w": f.workflow}, code: "BAD_USER_INPUT", reason: badGQLValidation, field: "input.runAt"},
		rbbCase{name: "enqueueJob/SecondFieldVariableYear0RunsNothing", query: `mutation($w: ID!, $at: Time) { a: createRobot(input: {name: "first"}) { id } b: enqueueJob(input: {workflowId: $w, runAt: $at}) { id } }`,
			vars: map[string]any{"w": f.workflow, "at": "0000-06-01T00:00:00Z"}, code: "BAD_USER_INPUT", reason: badGQLValidation, message: "variable $at:"},
	)
	for _, label := range slices.Sorted(maps.Keys(rbbOutOfRangeTimes)) {
		at := rbbOutOfRangeTimes[label]
		lit := strconv.Quote(at)
		add(
			rbbCase{name: "createApiKey/ExpiresAt" + label, query: createKey, vars: map[string]any{"r": f.robot.ID, "e": at}, code: "BAD_USER_INPUT", reason: badGQLValidation, message: "variable $e:"},
			rbbCase{name: "createApiKey/ExpiresAtLiteral" + label, query: `mutation($r: ID!) { createApiKey(robotId: $r, name: "k", expiresAt: ` + lit + `) { key } }`, vars: map[string]any{"r": f.robot.ID}, code: "BAD_USER_INPUT", reason: badGQLValidation, field: "expiresAt"},
			rbbCase{name: "enqueueJob/RunAt" + label, query: enqueue, vars: map[string]any{"in": map[string]any{"workflowId": f.workflow, "runAt": at}}, code: "BAD_USER_INPUT", reason: badGQLValidation, message: "variable $in.runAt:"},
			rbbCase{name: "enqueueJob/RunAtLiteral" + label, query: `mutation($w: ID!) { enqueueJob(input: {workflowId: $w, runAt: ` + lit + `}) { id } }`, vars: map[string]any{"w": f.workflow}, code: "BAD_USER_INPUT", reason: badGQLValidation, field: "input.runAt"},
			rbbCase{name: "enqueueJobs/ThirdRunAt" + label, query: enqueueMany, vars: map[string]any{"in": []any{good, good, map[string]any{"workflowId": f.workflow, "runAt": at}}}, code: "BAD_USER_INPUT", reason: badGQLValidation, message: "variable $in[2].runAt:"},
			rbbCase{name: "jobs/CreatedAfter" + label, query: jobs, vars: map[string]any{"f": map[string]any{"createdAfter": at}}, code: "BAD_USER_INPUT", reason: badGQLValidation, message: "variable $f.createdAfter:"},
			rbbCase{name: "jobs/CreatedBefore" + label, query: jobs, vars: map[string]any{"f": map[string]any{"createdBefore": at}}, code: "BAD_USER_INPUT", reason: badGQLValidation, message: "variable $f.createdBefore:"},
			rbbCase{name: "jobs/CreatedAfterLiteral" + label, query: `{ jobs(filter: {createdAfter: ` + lit + `}) { totalCount } }`, code: "BAD_USER_INPUT", reason: badGQLValidation, field: "filter.createdAfter"},
			rbbCase{name: "jobs/CreatedBeforeLiteral" + label, query: `{ jobs(filter: {status: QUEUED, createdBefore: ` + lit + `}) { totalCount } }`, code: "BAD_USER_INPUT", reason: badGQLValidation, field: "filter.createdBefore"},
			rbbCase{name: "appendJobLogs/At" + label, query: logs, vars: lv(map[string]any{"e": []any{map[string]any{"level": "INFO", "message": "ok", "at": at}}}), code: "BAD_USER_INPUT", reason: badGQLValidation, message: "variable $e[0].at:", robot: true},
			rbbCase{name: "appendJobLogs/SecondAt" + label, query: logs, vars: lv(map[string]any{"e": []any{map[string]any{"level": "INFO", "message": "ok"}, map[string]any{"level": "INFO", "message": "ok", "at": at}}}), code: "BAD_USER_INPUT", reason: badGQLValidation, message: "variable $e[1].at:", robot: true},
			rbbCase{name: "appendJobLogs/AtLiteral" + label, query: `mutation($j: ID!, $l: ID!) { appendJobLogs(jobId: $j, leaseToken: $l, entries: [{level: INFO, message: "ok", at: ` + lit + `}]) }`, vars: lv(nil), code: "BAD_USER_INPUT", reason: badGQLValidation, field: "entries[0].at", robot: true},
		)
		// A forged cursor carries its time to a keyset comparison in SQL.
		for _, list := range []struct{ field, kind string }{{"machines", "machine"}, {"robots", "robot"}, {"workflows", "workflow"}, {"jobs", "job"}} {
			cursor := base64.RawURLEncoding.EncodeToString([]byte(list.kind + ":" + at + "|" + uuid.NewString()))
			add(rbbCase{name: list.field + "/Cursor" + label, query: `query($a: String) { ` + list.field + `(after: $a) { totalCount } }`, vars: map[string]any{"a": cursor}, code: "BAD_USER_INPUT", field: "after"})
		}
	}
}

// rbbIntCases refuse Ints beyond 32 bits (GraphQL's Int is a signed 32-bit
// integer) in every Int argument and input field, as a literal, as a
// variable and inside an input object or list variable, and Ints sent as
// strings or fractions.
func rbbIntCases(f rbbFixture, add func(...rbbCase)) {
	over := map[string]json.Number{"2147483648": "2147483648", "Minus2147483649": "-2147483649", "1e10": "1e10"}
	// args are the Int arguments of the schema: a query with $v, and one
	// with the literal in place of LIT.
	lv := f.lease.rbVars
	type intArg struct {
		name, field string
		query, lit  string // a query with $v: Int, and one with LIT for a literal
		vars        func(v any) map[string]any
		robot       bool
	}
	plain := func(v any) map[string]any { return map[string]any{"v": v} }
	args := []intArg{
		{"machines/First", "first", `query($v: Int) { machines(first: $v) { totalCount } }`, `{ machines(first: LIT) { totalCount } }`, plain, false},
		{"robots/First", "first", `query($v: Int) { robots(first: $v) { totalCount } }`, `{ robots(first: LIT) { totalCount } }`, plain, false},
		{"workflows/First", "first", `query($v: Int) { workflows(first: $v) { totalCount } }`, `{ workflows(first: LIT) { totalCount } }`, plain, false},
		{"jobs/First", "first", `query($v: Int) { jobs(first: $v) { totalCount } }`, `{ jobs(first: LIT) { totalCount } }`, plain, false},
		{"apiKeyAudit/First", "first", `query($v: Int) { apiKeyAudit(first: $v) { id } }`, `{ apiKeyAudit(first: LIT) { id } }`, plain, false},
		{"Job.logs/First", "first", `query($id: ID!, $v: Int) { job(id: $id) { logs(first: $v) { id } } }`, `query($id: ID!) { job(id: $id) { logs(first: LIT) { id } } }`,
			func(v any) map[string]any { return map[string]any{"id": f.lease.Job.ID, "v": v} }, false},
		{"assignWorkflow/Priority", "priority", `mutation($w: ID!, $r: ID!, $v: Int) { assignWorkflow(workflowId: $w, robotId: $r, priority: $v) { robotId } }`,
			`mutation($w: ID!, $r: ID!) { assignWorkflow(workflowId: $w, robotId: $r, priority: LIT) { robotId } }`,
			func(v any) map[string]any { return map[string]any{"w": f.workflow, "r": f.robot.ID, "v": v} }, false},
		{"claimJob/WaitSeconds", "waitSeconds", `mutation($v: Int) { claimJob(waitSeconds: $v) { leaseToken } }`, `mutation { claimJob(waitSeconds: LIT) { leaseToken } }`, plain, true},
		{"reportJobProgress/Progress", "progress", `mutation($j: ID!, $l: ID!, $v: Int!) { reportJobProgress(jobId: $j, leaseToken: $l, progress: $v) { id } }`,
			`mutation($j: ID!, $l: ID!) { reportJobProgress(jobId: $j, leaseToken: $l, progress: LIT) { id } }`,
			func(v any) map[string]any { return lv(map[string]any{"v": v}) }, true},
		{"createRobot/MaxConcurrentJobs", "input.maxConcurrentJobs", `mutation($v: Int) { createRobot(input: {name: "x", maxConcurrentJobs: $v}) { id } }`,
			`mutation { createRobot(input: {name: "x", maxConcurrentJobs: LIT}) { id } }`, plain, false},
		{"updateRobot/MaxConcurrentJobs", "input.maxConcurrentJobs", `mutation($id: ID!, $v: Int) { updateRobot(id: $id, input: {maxConcurrentJobs: $v}) { id } }`,
			`mutation($id: ID!) { updateRobot(id: $id, input: {maxConcurrentJobs: LIT}) { id } }`,
			func(v any) map[string]any { return map[string]any{"id": f.robot.ID, "v": v} }, false},
	}
	for _, in := range []string{"version", "priority", "maxAttempts"} {
		args = append(args, intArg{"enqueueJob/" + in, "input." + in,
			`mutation($w: ID!, $v: Int) { enqueueJob(input: {workflowId: $w, ` + in + `: $v}) { id } }`,
			`mutation($w: ID!) { enqueueJob(input: {workflowId: $w, ` + in + `: LIT}) { id } }`,
			func(v any) map[string]any { return map[string]any{"w": f.workflow, "v": v} }, false})
	}
	// All are refused before anything runs, as validation: literals name the
	// argument in extensions.field, variables in the path.
	for _, a := range args {
		for _, label := range slices.Sorted(maps.Keys(over)) {
			v := over[label]
			literalField := a.field
			if label == "1e10" {
				literalField = "" // not an integer literal: gqlparser refuses it
			}
			add(
				rbbCase{name: a.name + "Variable" + label, query: a.query, vars: a.vars(v), code: "BAD_USER_INPUT", reason: badGQLValidation, robot: a.robot},
				rbbCase{name: a.name + "Literal" + label, query: strings.Replace(a.lit, "LIT", string(v), 1), vars: a.vars(nil), code: "BAD_USER_INPUT", field: literalField, reason: badGQLValidation, robot: a.robot},
			)
		}
		add(
			rbbCase{name: a.name + "VariableNumericString", query: a.query, vars: a.vars("5"), code: "BAD_USER_INPUT", reason: badGQLValidation, robot: a.robot},
			rbbCase{name: a.name + "VariableFraction", query: a.query, vars: a.vars(json.Number("5.5")), code: "BAD_USER_INPUT", reason: badGQLValidation, robot: a.robot},
		)
	}
	// An out-of-range Int in a later mutation field stops the earlier ones too.
	add(
		rbbCase{name: "createRobot/SecondFieldLiteralOverflowRunsNothing", query: `mutation { a: createRobot(input: {name: "first"}) { id } b: createRobot(input: {name: "second", maxConcurrentJobs: 2147483648}) { id } }`,
			code: "BAD_USER_INPUT", field: "input.maxConcurrentJobs", reason: badGQLValidation},
		rbbCase{name: "createRobot/SecondFieldVariableOverflowRunsNothing", query: `mutation($m: Int) { a: createRobot(input: {name: "first"}) { id } b: createRobot(input: {name: "second", maxConcurrentJobs: $m}) { id } }`,
			vars: map[string]any{"m": json.Number("2147483648")}, code: "BAD_USER_INPUT", reason: badGQLValidation},
	)
	// Inside input object and list variables the number reaches the scalar
	// as the client wrote it.
	enqueueMany := `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`
	good := map[string]any{"workflowId": f.workflow}
	for _, label := range slices.Sorted(maps.Keys(over)) {
		add(
			rbbCase{name: "enqueueJob/PriorityInObjectVariable" + label, query: `mutation($in: EnqueueJobInput!) { enqueueJob(input: $in) { id } }`,
				vars: map[string]any{"in": map[string]any{"workflowId": f.workflow, "priority": over[label]}}, code: "BAD_USER_INPUT", reason: badGQLValidation},
			rbbCase{name: "enqueueJobs/ThirdMaxAttempts" + label, query: enqueueMany,
				vars: map[string]any{"in": []any{good, good, map[string]any{"workflowId": f.workflow, "maxAttempts": over[label]}}}, code: "BAD_USER_INPUT", reason: badGQLValidation},
			rbbCase{name: "createRobot/MaxConcurrentJobsInObjectVariable" + label, query: `mutation($in: CreateRobotInput!) { createRobot(input: $in) { id } }`,
				vars: map[string]any{"in": map[string]any{"name": "x", "maxConcurrentJobs": over[label]}}, code: "BAD_USER_INPUT", reason: badGQLValidation},
		)
	}
}

func TestRobotBadInputIsRefusedAndWritesNothing(t *testing.T) {
	t.Parallel()
	// Each case compares a whole database before and after its request, so a
	// database serves one case at a time; a small pool of fixtures lets cases
	// run side by side.
	const servers = 3
	pool := make(chan rbbFixture, servers)
	var cases [servers][]rbbCase
	for i := range servers {
		f := rbbNewFixture(t)
		f.slot = i
		cases[i] = rbbCases(f)
		pool <- f
	}
	for i, c := range cases[0] {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := <-pool
			defer func() { pool <- f }()
			c := cases[f.slot][i] // the same case, with this fixture's ids
			require.Equal(t, c.name, cases[0][i].name)
			s := f.s
			token := f.user.Token
			if c.robot {
				token = f.key
			}

			before := rbbSnapshot(t, f)
			logged := len(s.Log.String())
			resp := s.Do(t, token, c.query, c.vars)

			require.Less(t, resp.Status, 500, "response: %s", resp.Raw)
			apitest.RequireNoLeak(t, resp.Raw)
			apitest.RequireNoData(t, resp)
			if c.bug != "" {
				badKnownBug(t, resp, c.bug)
			} else {
				e := resp.Code(t, c.code)
				require.NotEmpty(t, e.Message)
				if c.field != "" {
					require.Equal(t, c.field, e.Extensions["field"], "response: %s", resp.Raw)
				}
				if c.reason != "" {
					require.Equal(t, c.reason, e.Extensions["reason"], "response: %s", resp.Raw)
				}
				require.Contains(t, e.Message, c.message)
				require.NotContains(t, s.Log.String()[logged:], "internal error")
			}
			require.Equal(t, before, rbbSnapshot(t, f), "a refused request changed data")
		})
	}
}

func TestRobotBadInputBoundariesAreAccepted(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: rbiQueue})
	u := s.NewUser(t, uuid.Nil)
	long := func(n int) string { return strings.Repeat("a", n) }
	atLimit := apitest.JSONOfSize(db.MaxJSONBytes)
	caps50 := rbbList(50, func(i int) any { return fmt.Sprintf("c%02d-%s", i, long(60)) })

	r := rbCreateRobot(t, s, u.Token, map[string]any{
		"name": strings.Repeat("é", 100), "hostname": long(255), "environment": long(100), "capabilities": caps50,
		"maxConcurrentJobs": 100, "metadata": atLimit,
	})
	require.Equal(t, long(255), r.Hostname)
	require.Len(t, r.Capabilities, 50)
	require.Equal(t, 100, r.MaxConcurrentJobs)
	require.Equal(t, atLimit, r.Metadata)
	var upd struct{ UpdateRobot rbRobot }
	isoDo(t, s, u.Token, `mutation($id: ID!, $in: UpdateRobotInput!) { updateRobot(id: $id, input: $in) { `+rbRobotFields+` } }`,
		map[string]any{"id": r.ID, "in": map[string]any{"hostname": strings.Repeat("é", 127), "maxConcurrentJobs": 1, "capabilities": []any{long(64)}}}, &upd)
	require.Equal(t, strings.Repeat("é", 127), upd.UpdateRobot.Hostname)
	require.Equal(t, 1, upd.UpdateRobot.MaxConcurrentJobs)

	k := rbCreateKey(t, s, u.Token, r.ID, nil)
	var hb struct{ Heartbeat rbRobot }
	isoDo(t, s, k.Key, `mutation($in: HeartbeatInput!) { heartbeat(input: $in) { `+rbRobotFields+` } }`,
		map[string]any{"in": map[string]any{"status": "ONLINE", "agentVersion": long(64), "metrics": atLimit}}, &hb)
	require.Equal(t, long(64), hb.Heartbeat.AgentVersion)
	isoDo(t, s, k.Key, `mutation { claimJob(waitSeconds: 0) { leaseToken } }`, nil, nil)

	wf := s.CreateWorkflow(t, u.Token, long(100))
	isoDo(t, s, u.Token, `mutation($w: ID!, $d: JSON!) { publishWorkflowVersion(workflowId: $w, definition: $d) { version } }`,
		map[string]any{"w": wf, "d": atLimit}, nil)
	isoDo(t, s, u.Token, `mutation($w: ID!, $r: ID!) { a: assignWorkflow(workflowId: $w, robotId: $r, priority: 1000) { priority }
		b: assignWorkflow(workflowId: $w, robotId: $r, priority: -1000) { priority }
		c: setNodeRobotOverride(workflowId: $w, nodeId: "`+long(100)+`", capability: "`+long(64)+`") { nodeId } }`,
		map[string]any{"w": wf, "r": r.ID}, nil)

	batch := rbbList(1000, func(i int) any {
		return map[string]any{"workflowId": wf, "priority": []int{1000, -1000}[i%2], "maxAttempts": []int{1, 100}[i%2], "requiredCapabilities": []any{"never"}}
	})
	var many struct{ EnqueueJobs []struct{ ID string } }
	isoDo(t, s, u.Token, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": batch}, &many)
	require.Len(t, many.EnqueueJobs, 1000)
	job := rbEnqueue(t, s, u.Token, wf, map[string]any{"priority": 1000, "input": atLimit, "requiredCapabilities": []any{long(64)}, "robotId": r.ID})
	l := rbMustClaim(t, s, k.Key, job.ID)
	rbStart(t, s, k.Key, l)
	for _, p := range []int{0, 100} {
		isoDo(t, s, k.Key, `mutation($j: ID!, $l: ID!, $p: Int!, $n: String, $m: String) {
			reportJobProgress(jobId: $j, leaseToken: $l, progress: $p, currentNode: $n, message: $m) { progress } }`,
			l.rbVars(map[string]any{"p": p, "n": long(100), "m": strings.Repeat("é", 8000)}), nil)
	}
	entries := rbbList(500, func(i int) any {
		return map[string]any{"level": []string{"DEBUG", "INFO", "WARN", "ERROR"}[i%4], "message": fmt.Sprintf("line %d", i), "fields": map[string]any{"i": i}}
	})
	entries[0] = map[string]any{"level": "INFO", "message": strings.Repeat("ü", 8000), "fields": atLimit, "at": time.Now().Add(-time.Hour).Format(time.RFC3339Nano)}
	var appended struct{ AppendJobLogs int }
	isoDo(t, s, k.Key, `mutation($j: ID!, $l: ID!, $e: [JobLogInput!]!) { appendJobLogs(jobId: $j, leaseToken: $l, entries: $e) }`,
		l.rbVars(map[string]any{"e": entries}), &appended)
	require.Equal(t, 500, appended.AppendJobLogs)
	isoDo(t, s, k.Key, `mutation($j: ID!, $l: ID!, $r: JSON) { completeJob(jobId: $j, leaseToken: $l, result: $r) { id } }`,
		l.rbVars(map[string]any{"r": atLimit}), nil)
	require.Equal(t, 502, rbCount(t, s, "robot_logs", "job_id = ?", job.ID))
}

// The edges of the Time and Int ranges are accepted and one step past them
// is not; a time written with an offset is the same instant as in UTC.
func TestTimeAndIntRangeEdgesAreAccepted(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: rbiQueue})
	u := s.NewUser(t, uuid.Nil)
	wf := s.CreateWorkflow(t, u.Token, "edges")
	const first, last = "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"

	t.Run("Times", func(t *testing.T) {
		job := rbEnqueue(t, s, u.Token, wf, map[string]any{"runAt": last})
		var out struct {
			Job struct{ RunAfter time.Time }
		}
		isoDo(t, s, u.Token, `query($id: ID!) { job(id: $id) { runAfter } }`, map[string]any{"id": job.ID}, &out)
		require.Equal(t, last, out.Job.RunAfter.UTC().Format(time.RFC3339Nano))
		// The same instants through offsets: year 1 from the east, 9999 from the west.
		for _, f := range []map[string]any{
			{"createdAfter": first, "createdBefore": last},
			{"createdAfter": "0001-01-01T01:00:00+01:00", "createdBefore": "9999-12-31T22:59:59.999999-01:00"},
		} {
			var jobs struct{ Jobs struct{ TotalCount int } }
			isoDo(t, s, u.Token, `query($f: JobFilter) { jobs(filter: $f) { totalCount } }`, map[string]any{"f": f}, &jobs)
			require.Equal(t, 1, jobs.Jobs.TotalCount)
		}
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "edge-bot"})
		var key struct{ CreateApiKey struct{ Key string } }
		isoDo(t, s, u.Token, `mutation($r: ID!, $e: Time) { createApiKey(robotId: $r, name: "k", expiresAt: $e) { key } }`,
			map[string]any{"r": r.ID, "e": last}, &key)
		require.NotEmpty(t, key.CreateApiKey.Key)
		// A cursor at either edge is a position like any other.
		cursor := func(at string) string {
			return base64.RawURLEncoding.EncodeToString([]byte("job:" + at + "|" + uuid.NewString()))
		}
		for _, at := range []string{first, last} {
			isoDo(t, s, u.Token, `query($a: String) { jobs(after: $a) { totalCount } }`, map[string]any{"a": cursor(at)}, nil)
		}
		// One microsecond past either edge is refused.
		for _, at := range []string{"0000-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.9999991Z"} {
			resp := s.Do(t, u.Token, `query($f: JobFilter) { jobs(filter: $f) { totalCount } }`, map[string]any{"f": map[string]any{"createdAfter": at}})
			require.Equal(t, "GRAPHQL_VALIDATION_FAILED", resp.Code(t, "BAD_USER_INPUT").Extensions["reason"])
			require.Contains(t, resp.Errors[0].Message, "$f.createdAfter")
			resp = s.Do(t, u.Token, `{ jobs(filter: {createdAfter: "`+at+`"}) { totalCount } }`, nil)
			require.Equal(t, "filter.createdAfter", resp.Code(t, "BAD_USER_INPUT").Extensions["field"])
			require.Contains(t, resp.Errors[0].Message, "filter.createdAfter")
			resp = s.Do(t, u.Token, `query($a: String) { jobs(after: $a) { totalCount } }`, map[string]any{"a": cursor(at)})
			require.Equal(t, "after", resp.Code(t, "BAD_USER_INPUT").Extensions["field"])
		}
	})

	t.Run("Ints", func(t *testing.T) {
		for _, v := range []any{2147483647, json.Number("2147483647"), json.Number("-0")} {
			var out struct{ Robots struct{ TotalCount int } }
			isoDo(t, s, u.Token, `query($v: Int) { robots(first: $v) { totalCount } }`, map[string]any{"v": v}, &out)
		}
		isoDo(t, s, u.Token, `{ robots(first: 2147483647) { totalCount } }`, nil, nil)
		// Inside an input object the number reaches the scalar as written.
		var r struct {
			CreateRobot struct{ MaxConcurrentJobs int }
		}
		isoDo(t, s, u.Token, `mutation($in: CreateRobotInput!) { createRobot(input: $in) { maxConcurrentJobs } }`,
			map[string]any{"in": map[string]any{"name": "ints", "maxConcurrentJobs": json.Number("100")}}, &r)
		require.Equal(t, 100, r.CreateRobot.MaxConcurrentJobs)
		resp := s.Do(t, u.Token, `{ robots(first: -2147483648) { totalCount } }`, nil)
		require.Equal(t, "first", resp.Code(t, "BAD_USER_INPUT").Extensions["field"], "a negative page size is the store's refusal, not the scalar's")
		require.NotContains(t, resp.Errors[0].Message, "out of range")
		// One past either end of 32 bits is refused.
		for _, lit := range []string{"2147483648", "-2147483649"} {
			resp := s.Do(t, u.Token, `{ robots(first: `+lit+`) { totalCount } }`, nil)
			require.Equal(t, "first", resp.Code(t, "BAD_USER_INPUT").Extensions["field"])
			require.Contains(t, resp.Errors[0].Message, "out of range")
		}
	})
}
