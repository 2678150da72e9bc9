package db_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// statsFixture is a tenant with two workflows, an empty tenant, and an
// other tenant with live jobs of its own.
type statsFixture struct {
	d                   *dbtest.Database
	tenant, other, idle uuid.UUID
	busy, quiet         uuid.UUID // the tenant's workflows
	online, offline     uuid.UUID // the tenant's robots
	liveJobs            int       // the tenant's QUEUED, CLAIMED and RUNNING jobs
}

func newStatsFixture(t *testing.T) *statsFixture {
	t.Helper()
	f := &statsFixture{d: dbtest.New(t), tenant: uuid.New(), other: uuid.New(), idle: uuid.New()}
	ctx := t.Context()
	exec := func(q string, args ...any) {
		t.Helper()
		_, err := f.d.ExecContext(ctx, q, args...)
		require.NoError(t, err)
	}
	robot := func(tenant uuid.UUID, name, status string) uuid.UUID {
		t.Helper()
		var id uuid.UUID
		require.NoError(t, f.d.NewRaw(`INSERT INTO robots (tenant_id, name, status) VALUES (?, ?, ?) RETURNING id`,
			tenant, name, status).Scan(ctx, &id))
		return id
	}
	workflow := func(tenant uuid.UUID, name string) uuid.UUID {
		t.Helper()
		var id uuid.UUID
		require.NoError(t, f.d.NewRaw(`INSERT INTO workflows (tenant_id, name) VALUES (?, ?) RETURNING id`, tenant, name).Scan(ctx, &id))
		exec(`INSERT INTO workflow_versions (workflow_id, version, tenant_id, definition, created_by) VALUES (?, 1, ?, '{}', 'test')`, id, tenant)
		return id
	}
	jobs := func(tenant, workflow uuid.UUID, status string, n int) {
		t.Helper()
		exec(`INSERT INTO jobs (tenant_id, workflow_id, workflow_version, status, created_by, finished_at)
			SELECT ?, ?, 1, ?, 'test', CASE WHEN ? IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN now() END
			FROM generate_series(1, ?)`, tenant, workflow, status, status, n)
	}
	f.online, f.offline = robot(f.tenant, "online", "ONLINE"), robot(f.tenant, "offline", "OFFLINE")
	busy := robot(f.tenant, "busy", "BUSY")
	f.busy, f.quiet = workflow(f.tenant, "a-busy"), workflow(f.tenant, "b-quiet")
	exec(`INSERT INTO workflow_assignments (workflow_id, robot_id, tenant_id, is_default) VALUES (?, ?, ?, false), (?, ?, ?, true), (?, ?, ?, false)`,
		f.busy, f.online, f.tenant, f.busy, f.offline, f.tenant, f.busy, busy, f.tenant)
	jobs(f.tenant, f.busy, "QUEUED", 7)
	jobs(f.tenant, f.busy, "CLAIMED", 2)
	jobs(f.tenant, f.busy, "RUNNING", 3)
	// Finished jobs outnumber live ones, as they do in a real queue: the
	// planner then reads the live ones by (tenant, status).
	jobs(f.tenant, f.busy, "COMPLETED", 2000)
	jobs(f.tenant, f.quiet, "FAILED", 1000)
	jobs(f.tenant, f.quiet, "CANCELLED", 500)
	f.liveJobs = 12
	for i := range 3 {
		wf := workflow(f.other, "other-"+string(rune('a'+i)))
		jobs(f.other, wf, "QUEUED", 30)
		jobs(f.other, wf, "RUNNING", 30)
		for j := range 20 {
			exec(`INSERT INTO workflow_assignments (workflow_id, robot_id, tenant_id) VALUES (?, ?, ?)`,
				wf, robot(f.other, fmt.Sprintf("other-%d-%d", i, j), "ONLINE"), f.other)
		}
	}
	for i := range 5 {
		workflow(f.idle, "idle-"+string(rune('a'+i)))
	}
	exec(`ANALYZE`)
	return f
}

func (f *statsFixture) as(ctx context.Context, tenant uuid.UUID) context.Context {
	return auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser})
}

func TestWorkflowAssignmentStats(t *testing.T) {
	t.Parallel()

	t.Run("CountsPerWorkflow", func(t *testing.T) {
		t.Parallel()
		f := newStatsFixture(t)
		stats, err := db.NewWorkflows().AssignmentStats(f.as(t.Context(), f.tenant), f.d.DB)
		require.NoError(t, err)
		require.Len(t, stats, 2)
		busy, quiet := stats[0], stats[1]
		require.Equal(t, f.busy, busy.Workflow.ID)
		require.Equal(t, []int{3, 2, 7, 5}, []int{busy.AssignedRobots, busy.AvailableRobots, busy.QueuedJobs, busy.RunningJobs})
		require.Equal(t, &f.offline, busy.DefaultRobotID)
		require.Equal(t, f.quiet, quiet.Workflow.ID)
		require.Equal(t, []int{0, 0, 0, 0}, []int{quiet.AssignedRobots, quiet.AvailableRobots, quiet.QueuedJobs, quiet.RunningJobs})
		require.Nil(t, quiet.DefaultRobotID)
	})

	// The statement reads the tenant's live jobs once, through an index
	// of its tenant, whichever page of workflows it covers: neither its
	// finished jobs nor other tenants' live ones (jobs_lease_idx has no
	// tenant), nor anything once per workflow. Sequential scans are off
	// so that the tiny tables' plan is the one a large table gets.
	t.Run("ReadsOnlyTheTenantsLiveJobsOnce", func(t *testing.T) {
		t.Parallel()
		f := newStatsFixture(t)
		for _, tc := range []struct {
			tenant uuid.UUID
			live   int
		}{{f.tenant, f.liveJobs}, {f.idle, 0}} {
			plan := explainStatement(t, f.d, func(ctx context.Context, idb bun.IDB) error {
				_, err := db.NewWorkflows().AssignmentStats(f.as(ctx, tc.tenant), idb)
				return err
			})
			scans := scansOf(plan, "jobs")
			require.Len(t, scans, 1, "one scan of jobs: %s", plan)
			read := scans[0].ActualRows + scans[0].RemovedByFilter + scans[0].RemovedByRecheck
			require.Equal(t, 1.0, scans[0].ActualLoops, "%s", plan)
			require.LessOrEqual(t, read, float64(tc.live), "only the tenant's live jobs: %s", plan)
			// Assignments: the page's (3), on the primary key, not the
			// other tenant's 60 too (no index starts with the tenant).
			// EXPLAIN rounds a loop's rows up, hence the slack.
			for _, a := range scansOf(plan, "workflow_assignments") {
				require.LessOrEqual(t, a.ActualLoops*(a.ActualRows+a.RemovedByFilter+a.RemovedByRecheck), 10.0, "only the page's assignments: %s", plan)
			}
		}
	})
}

// planNode is the part of an EXPLAIN (FORMAT JSON) node the tests read.
type planNode struct {
	NodeType         string     `json:"Node Type"`
	Relation         string     `json:"Relation Name"`
	Index            string     `json:"Index Name"`
	ActualRows       float64    `json:"Actual Rows"`
	ActualLoops      float64    `json:"Actual Loops"`
	RemovedByFilter  float64    `json:"Rows Removed by Filter"`
	RemovedByRecheck float64    `json:"Rows Removed by Index Recheck"`
	Plans            []planNode `json:"Plans"`
}

// explainStatement runs call, which must run exactly one statement, and
// returns the plan EXPLAIN ANALYZE gives that statement with sequential
// scans off, and any other planner settings given ("enable_sort = off"),
// in a transaction rolled back.
func explainStatement(t *testing.T, d *dbtest.Database, call func(context.Context, bun.IDB) error, settings ...string) string {
	t.Helper()
	ctx := t.Context()
	rec := &stmtLog{}
	tx, err := d.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	for _, set := range append([]string{"enable_seqscan = off"}, settings...) {
		_, err = tx.ExecContext(ctx, "SET LOCAL "+set)
		require.NoError(t, err)
	}
	d.DB.AddQueryHook(rec)
	err = call(ctx, tx)
	require.NoError(t, err)
	rec.mu.Lock()
	texts := rec.texts
	rec.mu.Unlock()
	require.Len(t, texts, 1, "%q", texts)
	var plan string
	require.NoError(t, tx.NewRaw("EXPLAIN (ANALYZE, FORMAT JSON) "+texts[0]).Scan(ctx, &plan))
	return plan
}

// scansOf lists the plan's scans of relation's rows (a bitmap heap scan
// counts for its bitmap index scans).
func scansOf(plan, relation string) []planNode {
	var top []struct{ Plan planNode }
	if err := json.Unmarshal([]byte(plan), &top); err != nil || len(top) == 0 {
		return nil
	}
	var out []planNode
	var walk func(n planNode)
	walk = func(n planNode) {
		if n.Relation == relation {
			out = append(out, n)
		}
		for _, c := range n.Plans {
			walk(c)
		}
	}
	walk(top[0].Plan)
	return out
}
