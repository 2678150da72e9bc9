package db

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
)

// RobotStats summarises a tenant's fleet.
type RobotStats struct {
	Total, Online, Busy, Maintenance, Offline int
	Robots                                    []*RobotStat
}

// RobotStat is one robot's job outcomes.
type RobotStat struct {
	Robot                  *Robot
	JobsCompleted          int
	JobsFailed             int
	SuccessRate            *float64
	AverageDurationSeconds *float64
	LastHeartbeatAt        *time.Time
}

// WorkflowAssignmentStats summarises who may run a workflow and its backlog.
type WorkflowAssignmentStats struct {
	Workflow        *Workflow
	AssignedRobots  int
	AvailableRobots int
	DefaultRobotID  *uuid.UUID
	QueuedJobs      int
	RunningJobs     int
}

// MaxStatsRows caps the lists of the statistics (RobotStats.robots,
// workflowAssignmentStats): the first by name. RobotStats' counts cover
// every robot.
const MaxStatsRows = 500

// RobotStats returns the caller's tenant's fleet statistics in one statement.
func (s *Robots) Stats(ctx context.Context, idb bun.IDB) (*RobotStats, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var rows []struct {
		Robot
		Completed int      `bun:"completed"`
		Failed    int      `bun:"failed"`
		AvgSecs   *float64 `bun:"avg_secs"`
		// The tenant's counts, over every robot (window functions: the
		// list itself stops at MaxStatsRows).
		Total       int `bun:"total"`
		Online      int `bun:"online"`
		Busy        int `bun:"busy"`
		Maintenance int `bun:"maintenance"`
	}
	err = inTenant(sc, idb.NewSelect().
		TableExpr("robots AS r").
		ColumnExpr("r.*").
		ColumnExpr("count(j.id) FILTER (WHERE j.status = 'COMPLETED') AS completed").
		ColumnExpr("count(j.id) FILTER (WHERE j.status = 'FAILED') AS failed").
		ColumnExpr("avg(extract(epoch FROM j.finished_at - j.started_at)) FILTER (WHERE j.status = 'COMPLETED' AND j.started_at IS NOT NULL) AS avg_secs").
		ColumnExpr("count(*) OVER () AS total").
		ColumnExpr("count(*) FILTER (WHERE r.status = 'ONLINE') OVER () AS online").
		ColumnExpr("count(*) FILTER (WHERE r.status = 'BUSY') OVER () AS busy").
		ColumnExpr("count(*) FILTER (WHERE r.status = 'MAINTENANCE') OVER () AS maintenance").
		Join("LEFT JOIN jobs AS j ON j.robot_id = r.id AND j.status IN ('COMPLETED', 'FAILED')").
		GroupExpr("r.id").
		OrderExpr("r.name, r.id").Apply(limitRows(MaxStatsRows)), "r").Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("computing robot statistics: %w", err)
	}
	st := &RobotStats{Robots: make([]*RobotStat, len(rows))}
	if len(rows) > 0 {
		r := rows[0]
		st.Total, st.Online, st.Busy, st.Maintenance = r.Total, r.Online, r.Busy, r.Maintenance
		st.Offline = r.Total - r.Online - r.Busy - r.Maintenance
	}
	for i := range rows {
		row := &rows[i]
		rs := &RobotStat{Robot: &row.Robot, JobsCompleted: row.Completed, JobsFailed: row.Failed,
			AverageDurationSeconds: row.AvgSecs, LastHeartbeatAt: row.LastHeartbeatAt}
		if done := row.Completed + row.Failed; done > 0 {
			rate := float64(row.Completed) / float64(done)
			rs.SuccessRate = &rate
		}
		st.Robots[i] = rs
	}
	return st, nil
}

// AssignmentStats returns, per workflow of the caller's tenant, its assigned
// robots and its backlog, in one statement.
//
// The page of workflows is joined to each one's assignments (on the
// primary key) and to one grouped aggregate, read once, of the tenant's
// live jobs (QUEUED, CLAIMED, RUNNING), which jobs_tenant_status_idx
// finds without touching finished jobs or other tenants' jobs. Counting
// jobs per workflow in correlated subqueries instead read, for every
// workflow, every entry of the live-job indexes (jobs_lease_idx has no
// tenant), whatever the tenant's own backlog: seconds for a page of 500.
func (s *Workflows) AssignmentStats(ctx context.Context, idb bun.IDB) ([]*WorkflowAssignmentStats, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var rows []struct {
		Workflow
		Assigned  int        `bun:"assigned"`
		Available int        `bun:"available"`
		DefaultID *uuid.UUID `bun:"default_robot_id,type:uuid"`
		Queued    int        `bun:"queued"`
		Running   int        `bun:"running"`
	}
	page := inTenant(sc, idb.NewSelect().TableExpr("workflows AS w").ColumnExpr("w.*"), "w").
		OrderExpr("w.name, w.id").Apply(limitRows(MaxStatsRows))
	// Each workflow's assignments, on the primary key (workflow_id,
	// robot_id): at most 50 for each of the page's workflows. No index
	// starts with the tenant, so one grouped aggregate of the tenant's
	// assignments would walk every tenant's.
	assignments := inTenant(sc, idb.NewSelect().TableExpr("workflow_assignments AS a"), "a").
		ColumnExpr("count(*) AS assigned").
		ColumnExpr("count(*) FILTER (WHERE r.status IN ('ONLINE', 'BUSY')) AS available").
		// At most one assignment of a workflow is its default
		// (workflow_assignments_one_default_key).
		ColumnExpr("(array_agg(a.robot_id) FILTER (WHERE a.is_default))[1] AS default_robot_id").
		Join("LEFT JOIN robots AS r ON r.id = a.robot_id").
		Where("a.workflow_id = w.id")
	backlog := inTenant(sc, idb.NewSelect().TableExpr("jobs AS j"), "j").
		ColumnExpr("j.workflow_id").
		ColumnExpr("count(*) FILTER (WHERE j.status = 'QUEUED') AS queued").
		ColumnExpr("count(*) FILTER (WHERE j.status IN ('CLAIMED', 'RUNNING')) AS running").
		Where("j.status IN ('QUEUED', 'CLAIMED', 'RUNNING')").
		GroupExpr("j.workflow_id")
	err = idb.NewSelect().With("w", page).TableExpr("w").
		ColumnExpr("w.*").
		ColumnExpr("coalesce(a.assigned, 0) AS assigned").
		ColumnExpr("coalesce(a.available, 0) AS available").
		ColumnExpr("a.default_robot_id").
		ColumnExpr("coalesce(b.queued, 0) AS queued").
		ColumnExpr("coalesce(b.running, 0) AS running").
		Join("LEFT JOIN LATERAL (?) AS a ON true", assignments).
		Join("LEFT JOIN (?) AS b ON b.workflow_id = w.id", backlog).
		OrderExpr("w.name, w.id").Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("computing workflow assignment statistics: %w", err)
	}
	out := make([]*WorkflowAssignmentStats, len(rows))
	for i := range rows {
		r := &rows[i]
		out[i] = &WorkflowAssignmentStats{Workflow: &r.Workflow, AssignedRobots: r.Assigned, AvailableRobots: r.Available,
			DefaultRobotID: r.DefaultID, QueuedJobs: r.Queued, RunningJobs: r.Running}
	}
	return out, nil
}

// CountLiveJobs counts the jobs of all tenants that are QUEUED, CLAIMED or
// RUNNING, by status (each present, zero when none), for the operators'
// metrics: one grouped COUNT that the partial indexes of those states
// serve. It applies no scope, and what it returns names no tenant; it is
// not reachable through the API.
func CountLiveJobs(ctx context.Context, idb bun.IDB) (map[string]int, error) {
	var rows []struct {
		Status JobStatus `bun:"status"`
		N      int       `bun:"n"`
	}
	live := []JobStatus{JobQueued, JobClaimed, JobRunning}
	err := idb.NewSelect().TableExpr("jobs").ColumnExpr("status, count(*) AS n").
		Where("status IN (?)", bun.List(live)).GroupExpr("status").Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("counting live jobs: %w", err)
	}
	out := make(map[string]int, len(live))
	for _, s := range live {
		out[string(s)] = 0
	}
	for _, r := range rows {
		out[string(r.Status)] = r.N
	}
	return out, nil
}
