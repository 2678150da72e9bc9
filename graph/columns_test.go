package graph_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/apitest"
)

// colRecorder records the statements that match and returns the last one
// (forgetting them) on demand.
func colRecorder(t *testing.T, s *apitest.Server, match func(query string) bool) (last func() string) {
	var mu sync.Mutex
	var seen []string
	s.DB.AddQueryHook(queryHook(func(q string) {
		if match(q) {
			mu.Lock()
			seen = append(seen, q)
			mu.Unlock()
		}
	}))
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		require.NotEmpty(t, seen, "no statement matched")
		q := seen[len(seen)-1]
		seen = nil
		return q
	}
}

// TestCurrentJobsReadTheColumnsTheOperationSelects checks that a robot's
// current jobs are read with the columns the operation selects on Job and
// no others (a list does not fetch and decode every job's input), and that
// every Job the operation shows still gets every field it selects, however
// the selections are spread: another field asking for more, through a
// named fragment, in any order.
func TestCurrentJobsReadTheColumnsTheOperationSelects(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{SweepEvery: time.Hour})
	last := colRecorder(t, s, func(q string) bool { return strings.Contains(q, `FROM "jobs" AS "j" WHERE (j.robot_id = ANY(`) })
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "r", apitest.RobotOpts{Slots: 2})
	for range 2 {
		tn.Enqueue(t, map[string]any{"input": map[string]any{"k": 1}, "priority": 7})
	}
	require.NotNil(t, r.Claim(t, 0))
	require.NotNil(t, r.Claim(t, 0))

	type job struct {
		ID       string
		Status   string
		Input    map[string]any
		Priority *int
	}
	type robot struct{ CurrentJobs []job }
	var narrow struct {
		Robots struct{ Edges []struct{ Node robot } }
	}
	tn.Do(t, `{ robots(first: 5) { edges { node { currentJobs { id status } } } } }`, nil, &narrow)
	q := last()
	require.NotContains(t, q, `"input"`, "a selection without input does not read it: %s", q)
	require.NotContains(t, q, `"result"`)
	require.Len(t, narrow.Robots.Edges, 1)
	require.Len(t, narrow.Robots.Edges[0].Node.CurrentJobs, 2)
	for _, j := range narrow.Robots.Edges[0].Node.CurrentJobs {
		require.Equal(t, "CLAIMED", j.Status)
	}

	for _, query := range []string{
		// Two fields, one asking for more: both get it, whichever loads first.
		`query($id: ID!) { robots(first: 5) { edges { node { currentJobs { id } } } } one: robot(id: $id) { currentJobs { id status input priority } } }`,
		`query($id: ID!) { one: robot(id: $id) { currentJobs { id status input priority } } robots(first: 5) { edges { node { currentJobs { id } } } } }`,
		// Through a named fragment.
		`query($id: ID!) { robots(first: 5) { edges { node { currentJobs { ...J } } } } one: robot(id: $id) { currentJobs { ...J } } } fragment J on Job { id status input priority }`,
	} {
		var wide struct {
			Robots struct{ Edges []struct{ Node robot } }
			One    robot
		}
		tn.Do(t, query, map[string]any{"id": r.ID}, &wide)
		require.Contains(t, last(), `"input"`, query)
		jobs := append(wide.One.CurrentJobs, wide.Robots.Edges[0].Node.CurrentJobs...)
		require.Len(t, jobs, 4)
		for _, j := range wide.One.CurrentJobs {
			require.Equal(t, map[string]any{"k": float64(1)}, j.Input, query)
			require.NotNil(t, j.Priority)
			require.Equal(t, 7, *j.Priority)
			require.Equal(t, "CLAIMED", j.Status)
		}
	}
}

// TestRobotsPageReadsTheColumnsTheOperationSelects checks the same for a
// page of robots: metadata (JSON) is read only when some field asks.
func TestRobotsPageReadsTheColumnsTheOperationSelects(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{SweepEvery: time.Hour})
	lastPage := colRecorder(t, s, func(q string) bool {
		return strings.Contains(q, `FROM "robots" AS "r"`) && strings.Contains(q, `ORDER BY "r".created_at DESC`)
	})
	tn := apitest.NewTenant(t, s)
	tn.Do(t, `mutation { createRobot(input: {name: "r", hostname: "h", metadata: {rack: 7}}) { id } }`, nil, nil)

	var narrow struct {
		Robots struct {
			Edges []struct{ Node struct{ Name string } }
		}
	}
	tn.Do(t, `{ robots(first: 5) { edges { cursor node { name } } } }`, nil, &narrow)
	require.NotContains(t, lastPage(), `"metadata"`)
	require.Equal(t, "r", narrow.Robots.Edges[0].Node.Name)

	var wide struct {
		Robots struct {
			Edges []struct {
				Node struct {
					Name     string
					Metadata map[string]any
				}
			}
		}
	}
	tn.Do(t, `{ robots(first: 5) { edges { node { ...R } } } } fragment R on Robot { name metadata }`, nil, &wide)
	require.Contains(t, lastPage(), `"metadata"`)
	require.Equal(t, map[string]any{"rack": float64(7)}, wide.Robots.Edges[0].Node.Metadata)
}

// queryHook calls f with each statement's text.
type queryHook func(query string)

func (h queryHook) BeforeQuery(ctx context.Context, _ *bun.QueryEvent) context.Context { return ctx }

func (h queryHook) AfterQuery(_ context.Context, e *bun.QueryEvent) { h(e.Query) }

// TestJobsPageReadsTheColumnsTheOperationSelects checks the same for a
// page of jobs: input and result (JSON) are read only when some field asks,
// the relations still resolve from the keys, and the loaders' reads of the
// jobs' robots and workflows are narrowed too.
func TestJobsPageReadsTheColumnsTheOperationSelects(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{SweepEvery: time.Hour})
	lastPage := colRecorder(t, s, func(q string) bool {
		return strings.Contains(q, `FROM "jobs" AS "j"`) && strings.Contains(q, `ORDER BY "j".created_at DESC`)
	})
	lastRobots := colRecorder(t, s, func(q string) bool { return strings.Contains(q, `FROM "robots" AS "r" WHERE (r.id = ANY(`) })
	lastWorkflows := colRecorder(t, s, func(q string) bool { return strings.Contains(q, `FROM "workflows" AS "w" WHERE (w.id = ANY(`) })
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "r", apitest.RobotOpts{})
	tn.Enqueue(t, map[string]any{"input": map[string]any{"k": 1}})
	require.NotNil(t, r.Claim(t, 0))

	type page struct {
		Jobs struct {
			Edges []struct {
				Node struct {
					Status   string
					Input    map[string]any
					Robot    *struct{ Name string }
					Workflow *struct{ Name string }
				}
			}
		}
	}
	var narrow page
	tn.Do(t, `{ jobs(first: 5) { edges { cursor node { status robot { name } workflow { name } } } } }`, nil, &narrow)
	q := lastPage()
	require.NotContains(t, q, `"input"`, q)
	require.NotContains(t, q, `"result"`, q)
	q = lastRobots()
	require.NotContains(t, q, `"metadata"`, "the jobs' robots are read narrowed too: %s", q)
	require.NotContains(t, lastWorkflows(), `"description"`, "and their workflows")
	n := narrow.Jobs.Edges[0].Node
	require.Equal(t, "CLAIMED", n.Status)
	require.Equal(t, "r", n.Robot.Name)
	require.Equal(t, "main", n.Workflow.Name)

	var wide page
	tn.Do(t, `{ jobs(first: 5) { edges { node { ... on Job { status input } } } } }`, nil, &wide)
	require.Contains(t, lastPage(), `"input"`)
	require.Equal(t, map[string]any{"k": float64(1)}, wide.Jobs.Edges[0].Node.Input)
}

// TestPointReadsReadTheColumnsTheOperationSelects checks the same for the
// point reads: job(id), with its robot joined in the same statement or
// without it, and robot(id). Each reads only what the operation shows, and
// a wider selection (here through a fragment) still gets every field.
func TestPointReadsReadTheColumnsTheOperationSelects(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{SweepEvery: time.Hour})
	lastJob := colRecorder(t, s, func(q string) bool {
		return strings.Contains(q, `FROM "jobs" AS "j"`) && strings.Contains(q, `j.id = $`)
	})
	lastRobot := colRecorder(t, s, func(q string) bool {
		return strings.Contains(q, `FROM "robots" AS "r"`) && strings.Contains(q, `r.id = $`)
	})
	tn := apitest.NewTenant(t, s)
	tn.Do(t, `mutation { createRobot(input: {name: "r", hostname: "h", capabilities: [], metadata: {rack: 7}}) { id } }`, nil, nil)
	var robots struct {
		Robots struct {
			Edges []struct{ Node struct{ ID string } }
		}
	}
	tn.Do(t, `{ robots(first: 1) { edges { node { id } } } }`, nil, &robots)
	robotID := robots.Robots.Edges[0].Node.ID
	r := tn.CreateRobot(t, "claimer", apitest.RobotOpts{})
	job := tn.Enqueue(t, map[string]any{"input": map[string]any{"k": 1}, "priority": 3})
	require.NotNil(t, r.Claim(t, 0))

	type robot struct {
		Name     string
		Hostname *string
		Metadata map[string]any
	}
	type point struct {
		Job struct {
			Status   string
			Priority int
			Input    map[string]any
			Robot    *robot
		}
	}
	var narrow point
	tn.Do(t, `query($id: ID!) { job(id: $id) { status robot { name } } }`, map[string]any{"id": job.ID}, &narrow)
	q := lastJob()
	require.NotContains(t, q, `"input"`, q)
	require.NotContains(t, q, `"metadata"`, "the joined robot is read narrowed too: %s", q)
	require.Contains(t, q, `"robot"."name"`, q)
	require.Equal(t, "CLAIMED", narrow.Job.Status)
	require.Equal(t, "claimer", narrow.Job.Robot.Name)

	var wide point
	tn.Do(t, `query($id: ID!) { job(id: $id) { ...J robot { ...R } } } fragment J on Job { status priority input } fragment R on Robot { name hostname metadata }`, map[string]any{"id": job.ID}, &wide)
	q = lastJob()
	require.Contains(t, q, `"input"`, q)
	require.Contains(t, q, `"robot"."metadata"`, q)
	require.Equal(t, 3, wide.Job.Priority)
	require.Equal(t, map[string]any{"k": float64(1)}, wide.Job.Input)
	require.Equal(t, "claimer", wide.Job.Robot.Name)
	require.NotNil(t, wide.Job.Robot.Metadata, "the claimer registered with metadata {}")

	var alone point
	tn.Do(t, `query($id: ID!) { job(id: $id) { status } }`, map[string]any{"id": job.ID}, &alone)
	q = lastJob()
	require.NotContains(t, q, `"input"`, q)
	require.NotContains(t, q, `"robot"`, "no robot asked, none joined: %s", q)
	require.Equal(t, "CLAIMED", alone.Job.Status)

	var one struct{ Robot robot }
	tn.Do(t, `query($id: ID!) { robot(id: $id) { name } }`, map[string]any{"id": robotID}, &one)
	require.NotContains(t, lastRobot(), `"metadata"`)
	require.Equal(t, "r", one.Robot.Name)
	tn.Do(t, `query($id: ID!) { robot(id: $id) { ... on Robot { name metadata } } }`, map[string]any{"id": robotID}, &one)
	require.Contains(t, lastRobot(), `"metadata"`)
	require.Equal(t, map[string]any{"rack": float64(7)}, one.Robot.Metadata)
}
