package graph_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph"
)

// Cheap requests stay cheap: each attack below is a small document that
// once cost the server seconds of CPU or gigabytes of memory. Each must now
// be answered, refused or cut short while the server spends bounded CPU and
// allocations. The bounds are generous (a refusal costs milliseconds; the
// attacks cost seconds and gigabytes) and are measured on the process, not
// the clock: these tests do not run in parallel, so the process's counters
// see the request and little else.

// spent is what one request cost the process.
type spent struct {
	cpu   time.Duration
	alloc uint64
}

func (s spent) String() string {
	return fmt.Sprintf("%v of CPU, %d MiB allocated", s.cpu.Round(time.Millisecond), s.alloc>>20)
}

func processCPU(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure runs fn and returns what it cost the process.
func measure(t *testing.T, fn func()) spent {
	t.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	cpu := processCPU(t)
	fn()
	cpu = processCPU(t) - cpu
	runtime.ReadMemStats(&after)
	return spent{cpu: cpu, alloc: after.TotalAlloc - before.TotalAlloc}
}

// cheapBound is what a refused or cut-short request may cost at most.
var cheapBound = spent{cpu: 500 * time.Millisecond, alloc: 64 << 20}

func requireCheap(t *testing.T, s spent, bound spent) {
	t.Helper()
	t.Logf("cost: %s", s)
	require.LessOrEqual(t, s.cpu, bound.cpu, "the request cost %s", s)
	require.LessOrEqual(t, s.alloc, bound.alloc, "the request cost %s", s)
}

// doublingFragments is a document whose fragments each spread the next one
// twice: levels of them select 2^levels fields.
func doublingFragments(levels int) string {
	var b strings.Builder
	b.WriteString("query { ...F0 }\n")
	for i := range levels {
		fmt.Fprintf(&b, "fragment F%d on Query { ...F%d ...F%d }\n", i, i+1, i+1)
	}
	fmt.Fprintf(&b, "fragment F%d on Query { me { id } }\n", levels)
	return b.String()
}

func TestCheapRequestsStayCheap(t *testing.T) {
	s := apitest.New(t)
	owner := s.NewUser(t, uuid.Nil)

	refused := func(t *testing.T, token, query, reason string) {
		t.Helper()
		var resp *apitest.Response
		cost := measure(t, func() { resp = s.Do(t, token, query, nil) })
		e := resp.Code(t, "BAD_USER_INPUT")
		require.Equal(t, reason, e.Extensions["reason"], "%s", resp.Raw)
		require.Less(t, len(resp.Raw), 4<<10, "the refusal is short")
		requireCheap(t, cost, cheapBound)
	}

	t.Run("DoublingFragments", func(t *testing.T) {
		q := doublingFragments(24)
		require.Less(t, len(q), 1500)
		refused(t, "", q, "FIELD_LIMIT_EXCEEDED")
	})
	t.Run("DoublingFragmentsUnused", func(t *testing.T) {
		// Validation walks fragments nobody spreads too.
		q := strings.Replace(doublingFragments(24), "query { ...F0 }", "query { me { id } }", 1)
		refused(t, "", q, "FIELD_LIMIT_EXCEEDED")
	})
	// Chains of fragments that select no field pass the field count; the
	// overlap count once walked each of their 2^levels spreads (a 1.1 KB
	// document cost minutes of CPU), and one spreading itself through a
	// field recursed until the stack overflowed, ending the process.
	t.Run("DoublingFragmentsEndingUndefined", func(t *testing.T) {
		q := strings.Replace(doublingFragments(40), "{ me { id } }", "{ ...Nope }", 1)
		require.Less(t, len(q), 2000)
		refused(t, "", q, "OVERLAP_LIMIT_EXCEEDED")
	})
	invalid := func(t *testing.T, query, message string) {
		t.Helper()
		var resp *apitest.Response
		cost := measure(t, func() { resp = s.Do(t, "", query, nil) })
		require.NotEmpty(t, resp.Errors, "%s", resp.Raw)
		require.Contains(t, string(resp.Raw), message)
		requireCheap(t, cost, cheapBound)
		s.Do(t, "", "{ __typename }", nil).OK(t, nil) // the server is still up
	}
	t.Run("DoublingFragmentsEndingInACycle", func(t *testing.T) {
		q := strings.Replace(doublingFragments(40), "{ me { id } }", "{ ...F0 }", 1)
		invalid(t, q, "Cannot spread fragment")
	})
	t.Run("AFragmentSpreadingItselfThroughAField", func(t *testing.T) {
		invalid(t, "query { ...F0 } fragment F0 on Query { me { ...F0 } }", "Cannot spread fragment")
	})
	t.Run("ALongCycleOfDoublingFragments", func(t *testing.T) {
		// Validation walks the cycle from every fragment: seconds, were
		// it not refused first.
		q := strings.Replace(doublingFragments(900), "{ me { id } }", "{ ...F0 }", 1)
		invalid(t, q, `Cannot spread fragment \"F0\" within itself`)
	})
	t.Run("NestedInlineFragmentsSpreadEverywhere", func(t *testing.T) {
		// Few fields, but each of the 100 places G is spread costs its
		// 1,500 inline fragments, in validation too.
		var b strings.Builder
		b.WriteString("query { ")
		for i := range 100 {
			fmt.Fprintf(&b, "a%d: me { ...G } ", i)
		}
		b.WriteString("}\nfragment G on Viewer { " + strings.Repeat("... { ", 1500) + "id" + strings.Repeat(" }", 1500) + " }\n")
		require.Less(t, b.Len(), 16_000)
		refused(t, "", b.String(), "FIELD_LIMIT_EXCEEDED")
	})
	t.Run("RepeatedFields", func(t *testing.T) {
		q := "{ me { " + strings.Repeat("id ", 9_000) + "} }"
		require.Greater(t, len(q), 25_000)
		refused(t, "", q, "FIELD_LIMIT_EXCEEDED")
	})
	t.Run("RepeatedFieldsUnderTheFieldLimit", func(t *testing.T) {
		refused(t, "", "{ me { "+strings.Repeat("id ", 1_500)+"} }", "OVERLAP_LIMIT_EXCEEDED")
	})
	t.Run("RepeatedObjectFields", func(t *testing.T) {
		// Same-named fields merge their sub-selections: the comparisons
		// repeat one level down.
		refused(t, "", "{ "+strings.Repeat("me { id } ", 600)+"}", "OVERLAP_LIMIT_EXCEEDED")
	})
	t.Run("ConflictingAliases", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("{ ")
		for range 450 {
			b.WriteString("x: me { id } x: robots { totalCount } ")
		}
		b.WriteString("}")
		refused(t, "", b.String(), "OVERLAP_LIMIT_EXCEEDED")
	})
	t.Run("ManySpreadsOfUndefinedFragments", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("{ ")
		for i := range 1_500 {
			fmt.Fprintf(&b, "...F%d ", i)
		}
		b.WriteString("}")
		refused(t, "", b.String(), "OVERLAP_LIMIT_EXCEEDED")
	})
	t.Run("ManyErrorsAreCapped", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("{ me { ")
		for i := range 300 {
			fmt.Fprintf(&b, "f%d ", i)
		}
		b.WriteString("} }")
		var resp *apitest.Response
		cost := measure(t, func() { resp = s.Do(t, "", b.String(), nil) })
		requireCheap(t, cost, cheapBound)
		require.Len(t, resp.Errors, graph.DefaultLimits.Errors)
		last := resp.Errors[len(resp.Errors)-1]
		require.Equal(t, "TOO_MANY_ERRORS", last.Extensions["reason"])
		require.Contains(t, last.Message, fmt.Sprintf("%d more errors", 300-graph.DefaultLimits.Errors+1))
	})

	t.Run("ManyErrorsInALargeDocument", func(t *testing.T) {
		// Thousands of unknown arguments, after a comment of nearly 1 MB
		// that repeats a schema name: each error used to be presented (its
		// schema names looked for in the whole document) before all but
		// 20 were dropped.
		var b strings.Builder
		b.WriteString("#" + strings.Repeat("Query", 190_000) + "x\n{ me(")
		for i := range 3_200 {
			fmt.Fprintf(&b, "a%d: 0 ", i)
		}
		b.WriteString(") { id } }")
		require.Less(t, b.Len(), 1<<20-100)
		var resp *apitest.Response
		cost := measure(t, func() { resp = s.Do(t, "", b.String(), nil) })
		requireCheap(t, cost, cheapBound)
		require.Len(t, resp.Errors, graph.DefaultLimits.Errors)
		last := resp.Errors[len(resp.Errors)-1]
		require.Equal(t, "TOO_MANY_ERRORS", last.Extensions["reason"], "%s", resp.Raw)
	})

	t.Run("EveryListCarriesItsCost", func(t *testing.T) {
		// 142 bytes that once answered 150 MB: each job's workflow's
		// versions with their definitions.
		q := `{jobs(first:500){edges{node{workflow{versions{definition}}}}}}`
		refused(t, owner.Token, q, "COMPLEXITY_LIMIT_EXCEEDED")
		refused(t, owner.Token, `{a:`+q[1:len(q)-1]+` b:`+q[1:len(q)-1]+` c:`+q[1:len(q)-1]+`}`, "COMPLEXITY_LIMIT_EXCEEDED")
		// Unpaged lists count too: every robot's current jobs' logs.
		refused(t, owner.Token, `{robots(first:500){edges{node{currentJobs{logs(first:500){message}}}}}}`, "COMPLEXITY_LIMIT_EXCEEDED")
		refused(t, owner.Token, `{robotStats{robots{robot{currentJobs{workflow{versions(first:100){definition}}}}}}}`, "COMPLEXITY_LIMIT_EXCEEDED")
		// A list of scalars that an argument sizes: each of a schedule's
		// next runs is a step of its cron expression.
		var runs strings.Builder
		runs.WriteString(`{schedules(first:500){edges{node{`)
		for i := range 49 {
			fmt.Fprintf(&runs, "n%d: nextRuns(count:100) ", i)
		}
		runs.WriteString(`}}}}`)
		refused(t, owner.Token, runs.String(), "COMPLEXITY_LIMIT_EXCEEDED")
		// A field that runs a statement of its own for each parent costs
		// that statement: one heartbeat of each of 500 robots is 500
		// round trips, not 500 rows.
		refused(t, owner.Token, `{robots(first:500){edges{node{heartbeats(first:1){at}}}}}`, "COMPLEXITY_LIMIT_EXCEEDED")
		refused(t, owner.Token, `{schedules(first:500){edges{node{recentJobs(first:1){id}}}}}`, "COMPLEXITY_LIMIT_EXCEEDED")
		s.Do(t, owner.Token, `{robots(first:50){edges{node{heartbeats(first:10){at}}}}}`, nil).OK(t, nil)
	})

	// A field whose statement scans the tenant's data (an aggregate, a
	// count of a whole list, a text search no index serves) costs the
	// scan: 50 aliases of robotStats in a kilobyte held every connection
	// of the pool for 25 s. A few in one operation, as a dashboard asks,
	// still pass.
	t.Run("ScansCarryTheirCost", func(t *testing.T) {
		many := func(field string, n int) string {
			var b strings.Builder
			b.WriteString("{")
			for i := range n {
				fmt.Fprintf(&b, "a%d: %s ", i, field)
			}
			return b.String() + "}"
		}
		for _, field := range []string{
			`robotStats{total}`,
			`workflowAssignmentStats{queuedJobs}`,
			`logSummary{count}`,
			`robotLogs(first:1, contains:"zq"){edges{cursor}}`,
			`robotLogs(first:1, minLevel:CRITICAL){edges{cursor}}`,
			// One index serves the robot or the job: the other's lines
			// are read to find the page (a job's 200,000 lines of
			// another robot, read for none).
			`robotLogs(first:1, robotId:"` + uuid.NewString() + `", jobId:"` + uuid.NewString() + `"){edges{cursor}}`,
			`jobs(first:1){totalCount}`,
			// Two filters no one index serves together: a page of a
			// workflow's CANCELLED jobs read all its COMPLETED ones.
			`jobs(first:1, filter:{status:CANCELLED, workflowId:"` + uuid.NewString() + `"}){edges{cursor}}`,
			`jobs(first:1, filter:{robotId:"` + uuid.NewString() + `", workflowId:"` + uuid.NewString() + `"}){edges{cursor}}`,
			`webhookDeliveries(endpointId:"` + uuid.NewString() + `", status:FAILED, first:1){edges{cursor}}`,
		} {
			refused(t, owner.Token, many(field, 11), "COMPLEXITY_LIMIT_EXCEEDED")
			resp := s.Do(t, owner.Token, many(field, 2), nil)
			for _, e := range resp.Errors {
				require.Equal(t, "NOT_FOUND", e.Code(), "%s: %s", field, resp.Raw) // the endpoint
			}
		}
		// The same filters given as a variable are priced alike.
		resp := s.Do(t, owner.Token, strings.Replace(many(`jobs(first:1, filter:$f){edges{cursor}}`, 11), "{", "query($f: JobFilter) {", 1),
			map[string]any{"f": map[string]any{"status": "QUEUED", "robotId": uuid.NewString()}})
		require.Equal(t, "COMPLEXITY_LIMIT_EXCEEDED", resp.Code(t, "BAD_USER_INPUT").Extensions["reason"], "%s", resp.Raw)
		// A robot's jobs are its own (robot_id): one filter more is two.
		robot := apitest.NewTenant(t, s).CreateRobot(t, "reader", apitest.RobotOpts{})
		resp = s.Do(t, robot.Key, many(`jobs(first:1, filter:{status:CANCELLED}){edges{cursor}}`, 11), nil)
		require.Equal(t, "COMPLEXITY_LIMIT_EXCEEDED", resp.Code(t, "BAD_USER_INPUT").Extensions["reason"], "%s", resp.Raw)
		s.Do(t, robot.Key, many(`jobs(first:1){edges{cursor}}`, 40), nil).OK(t, nil)
		resp = s.Do(t, robot.Key, many(`robotLogs(first:1, jobId:"`+uuid.NewString()+`"){edges{cursor}}`, 11), nil)
		require.Equal(t, "COMPLEXITY_LIMIT_EXCEEDED", resp.Code(t, "BAD_USER_INPUT").Extensions["reason"], "%s", resp.Raw)
		s.Do(t, robot.Key, many(`robotLogs(first:1){edges{cursor}}`, 40), nil).OK(t, nil)
		for _, e := range s.Do(t, owner.Token, many(`robotLogs(first:1, jobId:"`+uuid.NewString()+`"){edges{cursor}}`, 15), nil).Errors {
			require.Equal(t, "NOT_FOUND", e.Code(), "a job's lines alone are a page: %v", e) // the job
		}
		// One filter is served by its index: a page is a page.
		s.Do(t, owner.Token, many(`jobs(first:1, filter:{status:CANCELLED}){edges{cursor}}`, 40), nil).OK(t, nil)
		s.Do(t, owner.Token, many(`jobs(first:1, filter:{workflowId:"`+uuid.NewString()+`", createdAfter:"2026-01-01T00:00:00Z"}){edges{cursor}}`, 40), nil).OK(t, nil)
		// A machine's events, counted: one count of a million events took
		// 0.84 s, and 50 aliases, each with another filter, 24.5 s at a
		// complexity of about 150.
		var m struct{ CreateMachine struct{ ID string } }
		s.Do(t, owner.Token, `mutation { createMachine(input: {name: "counted"}) { id } }`, nil).OK(t, &m)
		var aliases strings.Builder
		aliases.WriteString("{")
		for i := range 11 {
			fmt.Fprintf(&aliases, `a%d: machineEvents(machineId: "%s", first: 1, eventTypes: ["t%d"]) { totalCount } `, i, m.CreateMachine.ID, i)
		}
		refused(t, owner.Token, aliases.String()+"}", "COMPLEXITY_LIMIT_EXCEEDED")
		s.Do(t, owner.Token, fmt.Sprintf(`{a: machineEvents(machineId: "%[1]s", eventTypes: ["telemetry"]) { totalCount } b: machine(id: "%[1]s") { events { totalCount } }}`, m.CreateMachine.ID), nil).OK(t, nil)
		// Under a page of machines it is one statement for the page (its
		// loader reads the page's machines together), so it costs its scan
		// once where it stands, not once per machine: a page of counts
		// passes, eleven such places do not.
		refused(t, owner.Token, many(`machines(first: 1) { edges { node { events { totalCount } } } }`, 11), "COMPLEXITY_LIMIT_EXCEEDED")
		s.Do(t, owner.Token, many(`machines(first: 500) { edges { node { events { totalCount } } } }`, 2), nil).OK(t, nil)
		// Without a filter that scans, a page of lines is a page.
		s.Do(t, owner.Token, many(`robotLogs(first:1){edges{cursor}}`, 40), nil).OK(t, nil)
		s.Do(t, owner.Token, `{robotStats{total} workflowAssignmentStats{queuedJobs} jobs(first:20){totalCount edges{node{id}}}}`, nil).OK(t, nil)
	})

	t.Run("ResponseBudget", func(t *testing.T) {
		// Within the cost limit, but every job repeats its workflow's 20
		// versions of 60 KB each: 100 jobs would answer 120 MB.
		blob := strings.Repeat("x", 60_000)
		var wf struct{ CreateWorkflow struct{ ID string } }
		s.Do(t, owner.Token, `mutation($d: JSON!) { createWorkflow(input: {name: "big", definition: $d}) { id } }`,
			map[string]any{"d": map[string]any{"blob": blob}}).OK(t, &wf)
		for range 19 {
			s.Do(t, owner.Token, `mutation($w: ID!, $d: JSON!) { publishWorkflowVersion(workflowId: $w, definition: $d) { version } }`,
				map[string]any{"w": wf.CreateWorkflow.ID, "d": map[string]any{"blob": blob}}).OK(t, nil)
		}
		inputs := make([]map[string]any, 100)
		for i := range inputs {
			inputs[i] = map[string]any{"workflowId": wf.CreateWorkflow.ID}
		}
		s.Do(t, owner.Token, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": inputs}).OK(t, nil)

		var resp *apitest.Response
		cost := measure(t, func() {
			resp = s.Do(t, owner.Token, `{jobs(first:100){edges{node{id workflow{versions{definition}}}}}}`, nil)
		})
		e := resp.Code(t, "BAD_USER_INPUT")
		require.Equal(t, "RESPONSE_TOO_LARGE", e.Extensions["reason"])
		require.JSONEq(t, "null", string(resp.Data))
		require.Less(t, len(resp.Raw), 4<<10)
		requireCheap(t, cost, spent{cpu: 5 * time.Second, alloc: 160 << 20})

		// A page that fits is answered whole.
		var out struct {
			Jobs struct {
				Edges []struct {
					Node struct {
						Workflow struct {
							Versions []struct{ Definition map[string]any }
						}
					}
				}
			}
		}
		s.Do(t, owner.Token, `{jobs(first:5){edges{node{workflow{versions(first:2){definition}}}}}}`, nil).OK(t, &out)
		require.Len(t, out.Jobs.Edges, 5)
		require.Len(t, out.Jobs.Edges[0].Node.Workflow.Versions, 2)
		require.Equal(t, blob, out.Jobs.Edges[0].Node.Workflow.Versions[0].Definition["blob"])
	})
}

// graphiqlIntrospection is the query GraphiQL (graphql-js's
// getIntrospectionQuery with every option on) sends to load a schema: it
// nests 15 levels through TypeRef.
const graphiqlIntrospection = `query IntrospectionQuery {
  __schema {
    description
    queryType { name kind }
    mutationType { name kind }
    subscriptionType { name kind }
    types { ...FullType }
    directives { name description isRepeatable locations args(includeDeprecated: true) { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description specifiedByURL isOneOf
  fields(includeDeprecated: true) { name description args(includeDeprecated: true) { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason }
  inputFields(includeDeprecated: true) { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue isDeprecated deprecationReason }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } } }
}`

// The data limits do not apply to a client loading the schema: GraphiQL's
// and codegen's introspection query passes wherever introspection is on.
func TestIntrospectionQueryPassesTheLimits(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Introspection: true})
	var out struct {
		Schema struct {
			QueryType struct{ Name string }
			Types     []struct{ Name string }
		} `json:"__schema"`
	}
	s.Do(t, "", graphiqlIntrospection, nil).OK(t, &out)
	require.Equal(t, "Query", out.Schema.QueryType.Name)
	raw, err := json.Marshal(out.Schema.Types)
	require.NoError(t, err)
	require.Contains(t, string(raw), `"Machine"`)

	// With introspection off it is refused as such, not by a data limit.
	off := apitest.New(t)
	off.Do(t, "", graphiqlIntrospection, nil).Code(t, "FORBIDDEN")

	// One __schema per operation, and a few __type: the field limit alone
	// let 30 copies of the whole schema (4 MB) into one anonymous KB.
	twice := `{a: __schema{types{name}} b: __schema{types{name}}}`
	require.Equal(t, "INTROSPECTION_LIMIT_EXCEEDED", s.Do(t, "", twice, nil).Code(t, "BAD_USER_INPUT").Extensions["reason"])
	var types strings.Builder
	types.WriteString("{")
	for i := range 11 {
		fmt.Fprintf(&types, `t%d: __type(name: "Machine"){name} `, i)
	}
	types.WriteString("}")
	require.Equal(t, "INTROSPECTION_LIMIT_EXCEEDED", s.Do(t, "", types.String(), nil).Code(t, "BAD_USER_INPUT").Extensions["reason"])
	s.Do(t, "", `{__schema{queryType{name}} a: __type(name: "Machine"){name} b: __type(name: "Robot"){name}}`, nil).OK(t, nil)
	// Fields of one response key are one answer, from however many
	// fragments.
	s.Do(t, "", `{ ...A ...B } fragment A on Query { __schema { queryType { name } } } fragment B on Query { __schema { types { name } } }`, nil).OK(t, nil)
}
