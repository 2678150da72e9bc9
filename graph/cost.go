package graph

import (
	"encoding/json"
	"strings"

	"github.com/vektah/gqlparser/v2/ast"

	"fleetgraph/db"
)

// listSize says how many items a list field, or the edges of a connection
// field, return at most: the count the cost estimate multiplies the
// selection below it by.
type listSize struct {
	// arg names the argument that sets the count: a page size ("first") or,
	// with lengthOf, an input list whose length it is.
	arg      string
	lengthOf bool
	// def is the count when arg is absent or null; for a list without
	// arguments it is the most the list is expected to hold.
	def int
	// max caps the count: the resolver never returns more.
	max int
	// statement is what the field costs on top of its items each time it
	// is resolved: statementWeight for a field that runs a statement of
	// its own for each parent instead of one batched by a loader.
	statement int
}

// statementWeight is the cost of one database round trip made for one
// parent: under a page of 500 robots, `heartbeats` is 500 statements.
const statementWeight = 100

// page is a connection or list paged by `first`.
func page(def int) listSize { return listSize{arg: "first", def: def, max: db.MaxPageSize} }

// listSizes is the one table of list costs: every field of the schema whose
// type is a list of objects or a connection, or a list of scalars that
// takes arguments (its length may be one), has an entry, and a test fails
// when a new one has none (an unknown list costs db.MaxPageSize, failing
// closed). Lists without a page argument are bounded by a rule the store
// enforces: a domain rule (Robot.currentJobs by the robot's at most 100
// slots, a workflow's at most 50 assignments) or a cap on what the list
// returns (the statistics' first 500).
var listSizes = map[string]listSize{
	"Query.machines":                page(db.DefaultPageSize),
	"Query.machineEvents":           page(db.DefaultPageSize),
	"Query.robots":                  page(db.DefaultPageSize),
	"Query.workflows":               page(db.DefaultPageSize),
	"Query.jobs":                    page(db.DefaultPageSize),
	"Query.apiKeyAudit":             page(db.DefaultPageSize),
	"Query.apiKeys":                 {def: db.MaxPageSize, max: db.MaxPageSize},
	"Query.workflowAssignmentStats": {def: db.MaxStatsRows, max: db.MaxStatsRows},
	"Mutation.enqueueJobs":          {arg: "input", lengthOf: true, def: db.MaxEnqueueBatch, max: db.MaxEnqueueBatch},
	"Mutation.claimJobs":            {arg: "limit", def: db.MaxClaimBatch, max: db.MaxClaimBatch},
	"JobCompletions.jobs":           {def: db.MaxClaimBatch, max: db.MaxClaimBatch},
	"JobCompletions.nextLeases":     {def: db.MaxClaimBatch, max: db.MaxClaimBatch},
	"Machine.events":                page(db.DefaultPageSize),
	"Machine.deployments":           page(20),
	"Robot.currentJobs":             {def: 100, max: 100},
	"Workflow.versions":             page(20),
	"Workflow.assignments":          {def: db.MaxWorkflowAssignments, max: db.MaxWorkflowAssignments},
	"Workflow.nodeOverrides":        {def: db.MaxNodeOverrides, max: db.MaxNodeOverrides},
	"Job.logs":                      page(50),
	"RobotStats.robots":             {def: db.MaxStatsRows, max: db.MaxStatsRows},
	"MachineConnection.edges":       {}, // the connection field's entry counts these
	"MachineEventConnection.edges":  {},
	"RobotConnection.edges":         {},
	"WorkflowConnection.edges":      {},
	"JobConnection.edges":           {},
	"Query.robotLogs":               page(db.DefaultPageSize),
	"Query.logSummary":              {def: db.MaxSummaryRows, max: db.MaxSummaryRows},
	"Query.logCleanupHistory":       page(db.DefaultPageSize),
	"Robot.heartbeats":              {arg: "first", def: 100, max: db.MaxPageSize, statement: statementWeight},
	"RobotLogBatch.lines":           {def: db.MaxShipBatch, max: db.MaxShipBatch},
	"RobotLogConnection.edges":      {},
	"LogCleanupConnection.edges":    {},
	// Schedules.
	"Query.schedules":          page(db.DefaultPageSize),
	"Schedule.recentJobs":      {arg: "first", def: 10, max: db.MaxRecentJobs, statement: statementWeight},
	"Schedule.nextRuns":        {arg: "count", def: 5, max: db.MaxNextRuns}, // each a cron step
	"ScheduleConnection.edges": {},
	// Webhooks.
	"Query.webhookEndpoints":          {def: db.MaxWebhookEndpoints, max: db.MaxWebhookEndpoints},
	"Query.webhookDeliveries":         page(db.DefaultPageSize),
	"WebhookDelivery.attempts":        {def: 8, max: 8}, // the retry schedule's length + 1
	"WebhookDeliveryConnection.edges": {},
}

// scanWeight is what a field costs on top of its selection when its
// statement reads rows in proportion to the tenant's data rather than to
// what it returns: an aggregate over its jobs, a count of a whole list, a
// text search no index serves. Each such statement may take a second on a
// large tenant; at 5,000 the complexity limit (50,000 by default) lets
// fewer than ten into one operation, where 50 aliases of `robotStats`
// held every connection of the pool for 25 s.
const scanWeight = 5000

// scan says when a field scans and how often its scan is paid for.
type scan struct {
	// args name the arguments that make the field scan when given (not
	// null); with none (and no when) it always does.
	args []string
	// when, if set, tells from the field's arguments whether it scans,
	// and from the caller: a robot's reads are narrowed to its own rows
	// (robot_id) before any filter it gives.
	when func(args map[string]any, robot bool) bool
	// batched marks a field whose loader reads the rows of every parent
	// in a page in one statement (see package dataloaders: a page's
	// relations are fetched once for the page, not by timing): its
	// statement reads at most the caller's rows however many parents ask,
	// so it costs scanWeight once where it stands in the document rather
	// than once per parent.
	batched bool
}

// scans names the fields that scan. Every count-like field of the schema is
// either here or, with why it is cheap, in cost_table_test.go's
// boundedCounts, so a new count cannot go unpriced.
var scans = map[string]scan{
	"Query.robotStats":              {},
	"Query.workflowAssignmentStats": {},
	"Query.logSummary":              {},
	// A text search or a level no index serves, or a job's lines of one
	// robot (a robot's reads are its own: robot_id): one index serves the
	// job or the robot, and the rows of the one are read to find the
	// other's (a job's 200,000 lines of another robot, read for none).
	"Query.robotLogs": {when: func(args map[string]any, robot bool) bool {
		return args["contains"] != nil || args["minLevel"] != nil || (args["jobId"] != nil && (robot || args["robotId"] != nil))
	}},
	// The tenant's jobs, counted.
	"JobConnection.totalCount": {},
	// A page of jobs filtered on two of status, robot and workflow (a
	// robot's jobs are its own: one more): each index serves one of them,
	// so the page's rows are found by reading the jobs of the one and
	// skipping those not of the other (a page of a workflow's CANCELLED
	// jobs read its 400,000 COMPLETED ones, 0.2 s; a robot's page of one
	// status, all 20,000 of its jobs).
	"Query.jobs": {when: func(args map[string]any, robot bool) bool {
		f, _ := args["filter"].(map[string]any)
		n := 0
		if robot {
			n++
		}
		for _, name := range []string{"status", "robotId", "workflowId"} {
			if f[name] != nil {
				n++
			}
		}
		return n > 1
	}},
	// An endpoint's deliveries of one status: read from all of the
	// endpoint's (kept 30 days, one per event it subscribes to), skipping
	// the others.
	"Query.webhookDeliveries": {args: []string{"status"}},
	// A machine's events, counted: machine_events is a log with no
	// retention and no cap per machine, and one count of a million
	// events took 0.84 s. Counted per page of machines in one statement.
	"MachineEventConnection.totalCount": {batched: true},
}

// scanCost is what f, the field key names (Type.field), costs for the rows
// its statement scans, given the operation's variables and whether a robot
// asks, and whether that
// cost is paid once for the field's place in the document (batched) rather
// than once per parent.
func scanCost(key string, f *ast.Field, vars map[string]any, robot bool) (cost int, batched bool) {
	sc, ok := scans[key]
	if !ok {
		return 0, false
	}
	if sc.when != nil {
		if sc.when(f.ArgumentMap(vars), robot) {
			return scanWeight, sc.batched
		}
		return 0, false
	}
	if len(sc.args) == 0 {
		return scanWeight, sc.batched
	}
	for _, name := range sc.args {
		if a := f.Arguments.ForName(name); a != nil {
			if v, err := a.Value.Value(vars); err == nil && v != nil {
				return scanWeight, sc.batched
			}
		}
	}
	return 0, false
}

// jsonWeight is what one JSON value costs: it may hold up to db.MaxJSONBytes.
const jsonWeight = 10

// isConnection tells a Relay connection type by its name.
func isConnection(t *ast.Type) bool { return strings.HasSuffix(t.Name(), "Connection") }

// count returns how many items field f returns at most, given the
// operation's variables.
func (s listSize) count(f *ast.Field, vars map[string]any) int {
	n := s.def
	if s.arg != "" {
		if a := f.Arguments.ForName(s.arg); a != nil {
			if v, err := a.Value.Value(vars); err == nil && v != nil {
				if s.lengthOf {
					if l, ok := v.([]any); ok {
						n = len(l)
					} else {
						n = 1 // a single value coerces to a list of one
					}
				} else if i, ok := asInt(v); ok {
					n = i
				}
			}
		}
	}
	return min(max(n, 1), s.max)
}

// asInt reads an Int argument as parsed from a literal or a variable.
func asInt(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case int64:
		return int(n), true
	case float64:
		return int(n), true
	case json.Number:
		i, err := n.Int64()
		return int(i), err == nil
	}
	return 0, false
}

// sizeOf looks up the list size of the field key names (Type.field),
// failing closed for a list the table does not know.
func sizeOf(key string) listSize {
	if s, ok := listSizes[key]; ok {
		return s
	}
	return listSize{def: db.MaxPageSize, max: db.MaxPageSize}
}

// saturatingAdd adds without overflowing: costs only compare against limits.
func saturatingAdd(a, b int) int {
	const ceiling = 1 << 40
	return min(a+b, ceiling)
}

// saturatingMul multiplies without overflowing.
func saturatingMul(a, n int) int {
	const ceiling = 1 << 40
	if a != 0 && n > ceiling/a {
		return ceiling
	}
	return min(a*n, ceiling)
}
