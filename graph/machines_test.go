package graph_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

const machineFields = `id name status configuration version lastStartedAt lastStoppedAt createdAt updatedAt`

type machine struct {
	ID            string         `json:"id"`
	Name          string         `json:"name"`
	Status        string         `json:"status"`
	Configuration map[string]any `json:"configuration"`
	Version       int            `json:"version"`
	LastStartedAt *string        `json:"lastStartedAt"`
	LastStoppedAt *string        `json:"lastStoppedAt"`
}

type deployment struct {
	ID         string         `json:"id"`
	Name       string         `json:"name"`
	Version    string         `json:"version"`
	Status     string         `json:"status"`
	Settings   map[string]any `json:"settings"`
	DeployedBy string         `json:"deployedBy"`
}

type event struct {
	ID        string         `json:"id"`
	EventType string         `json:"eventType"`
	Details   map[string]any `json:"details"`
	Actor     string         `json:"actor"`
}

// client is one user talking to a test server.
type client struct {
	t     *testing.T
	s     *apitest.Server
	user  apitest.User
	token string
}

func newClient(t *testing.T, s *apitest.Server) *client {
	u := s.NewUser(t, uuid.Nil)
	return &client{t: t, s: s, user: u, token: u.Token}
}

func (c *client) do(query string, vars map[string]any, out any) {
	c.t.Helper()
	c.s.Do(c.t, c.token, query, vars).OK(c.t, out)
}

func (c *client) create(name string) machine {
	c.t.Helper()
	var out struct{ CreateMachine machine }
	c.do(`mutation($n: String!) { createMachine(input: {name: $n, configuration: {cpu: 2}}) { `+machineFields+` } }`,
		map[string]any{"n": name}, &out)
	return out.CreateMachine
}

func (c *client) mutate(op, id string) machine {
	c.t.Helper()
	var out map[string]machine
	c.do(fmt.Sprintf(`mutation($id: ID!) { %s(id: $id) { %s } }`, op, machineFields), map[string]any{"id": id}, &out)
	return out[op]
}

func (c *client) deploy(id, version string) deployment {
	c.t.Helper()
	var out struct{ DeployProtocol deployment }
	c.do(`mutation($id: ID!, $v: String!) { deployProtocol(machineId: $id, protocol: {name: "stamping", version: $v, settings: {force: 1}}) { id name version status settings deployedBy } }`,
		map[string]any{"id": id, "v": version}, &out)
	return out.DeployProtocol
}

func (c *client) logEvent(id, eventType string) event {
	c.t.Helper()
	var out struct{ LogMachineEvent event }
	c.do(`mutation($id: ID!, $t: String!) { logMachineEvent(machineId: $id, eventType: $t, details: {message: "x"}) { id eventType details actor } }`,
		map[string]any{"id": id, "t": eventType}, &out)
	return out.LogMachineEvent
}

func (c *client) events(id string) []event {
	c.t.Helper()
	var out struct {
		MachineEvents struct {
			Edges []struct{ Node event }
		}
	}
	c.do(`query($id: ID!) { machineEvents(machineId: $id, first: 500) { edges { node { id eventType details actor } } } }`,
		map[string]any{"id": id}, &out)
	evs := make([]event, len(out.MachineEvents.Edges))
	for i, e := range out.MachineEvents.Edges {
		evs[i] = e.Node
	}
	return evs
}

func eventTypes(evs []event) []string {
	types := make([]string, len(evs))
	for i, e := range evs {
		types[i] = e.EventType
	}
	return types
}

func (c *client) deployments(id string) (all []deployment, current *deployment) {
	c.t.Helper()
	var out struct {
		Machine struct {
			Deployments       []deployment
			CurrentDeployment *deployment
		}
	}
	c.do(`query($id: ID!) { machine(id: $id) { deployments { id name version status } currentDeployment { id version status } } }`,
		map[string]any{"id": id}, &out)
	return out.Machine.Deployments, out.Machine.CurrentDeployment
}

func TestMachineLifecycle(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("CreateStartStopAreLoggedAndVersioned", func(t *testing.T) {
		c := newClient(t, s)
		m := c.create("press-01")
		require.Equal(t, "STOPPED", m.Status)
		require.Equal(t, map[string]any{"cpu": float64(2)}, m.Configuration)
		require.Equal(t, 1, m.Version)

		started := c.mutate("startMachine", m.ID)
		require.Equal(t, "RUNNING", started.Status)
		require.NotNil(t, started.LastStartedAt)
		require.Equal(t, 2, started.Version)

		stopped := c.mutate("stopMachine", m.ID)
		require.Equal(t, "STOPPED", stopped.Status)
		require.NotNil(t, stopped.LastStoppedAt)
		require.Equal(t, 3, stopped.Version)

		require.Equal(t, []string{"stopped", "started", "created"}, eventTypes(c.events(m.ID)))
		for _, e := range c.events(m.ID) {
			require.Equal(t, "user:"+c.user.ID.String(), e.Actor)
		}
	})

	t.Run("RepeatedStartAndStopChangeNothing", func(t *testing.T) {
		c := newClient(t, s)
		m := c.create("press-01")
		c.mutate("stopMachine", m.ID) // already stopped
		first := c.mutate("startMachine", m.ID)
		again := c.mutate("startMachine", m.ID)
		require.Equal(t, first, again, "a second start must return the machine unchanged")
		c.mutate("stopMachine", m.ID)
		c.mutate("stopMachine", m.ID)
		require.Equal(t, []string{"stopped", "started", "created"}, eventTypes(c.events(m.ID)))
	})

	t.Run("ErrorEventSetsErrorAndStartClearsIt", func(t *testing.T) {
		c := newClient(t, s)
		m := c.create("sorter")
		c.mutate("startMachine", m.ID)
		ev := c.logEvent(m.ID, "error")
		require.Equal(t, "error", ev.EventType)
		require.Equal(t, map[string]any{"message": "x"}, ev.Details)

		var got struct{ Machine machine }
		c.do(`query($id: ID!) { machine(id: $id) { `+machineFields+` } }`, map[string]any{"id": m.ID}, &got)
		require.Equal(t, "ERROR", got.Machine.Status)

		require.Equal(t, "RUNNING", c.mutate("startMachine", m.ID).Status, "start clears ERROR")
		c.logEvent(m.ID, "error")
		require.Equal(t, "STOPPED", c.mutate("stopMachine", m.ID).Status, "stop clears ERROR too")
		c.logEvent(m.ID, "telemetry.temp")
		c.do(`query($id: ID!) { machine(id: $id) { `+machineFields+` } }`, map[string]any{"id": m.ID}, &got)
		require.Equal(t, "STOPPED", got.Machine.Status, "other event types leave the status alone")
	})

	t.Run("UpdateRenamesAndReplacesConfiguration", func(t *testing.T) {
		c := newClient(t, s)
		m := c.create("old")
		var out struct{ UpdateMachine machine }
		c.do(`mutation($id: ID!) { updateMachine(id: $id, input: {name: "  new  ", configuration: {mode: "fast"}}) { `+machineFields+` } }`,
			map[string]any{"id": m.ID}, &out)
		require.Equal(t, "new", out.UpdateMachine.Name, "names are trimmed")
		require.Equal(t, map[string]any{"mode": "fast"}, out.UpdateMachine.Configuration)
		require.Equal(t, m.Version+1, out.UpdateMachine.Version)
		evs := c.events(m.ID)
		require.Equal(t, "updated", evs[0].EventType)
		require.Equal(t, []any{"name", "configuration"}, evs[0].Details["fields"])

		c.do(`mutation($id: ID!) { updateMachine(id: $id, input: {}) { `+machineFields+` } }`, map[string]any{"id": m.ID}, &out)
		require.Equal(t, m.Version+1, out.UpdateMachine.Version, "an empty update changes nothing")
		require.Len(t, c.events(m.ID), 2)
	})

	t.Run("DeleteRemovesMachineAndEvents", func(t *testing.T) {
		c := newClient(t, s)
		m := c.create("doomed")
		c.deploy(m.ID, "1.0.0")
		var out struct{ DeleteMachine string }
		c.do(`mutation($id: ID!) { deleteMachine(id: $id) }`, map[string]any{"id": m.ID}, &out)
		require.Equal(t, m.ID, out.DeleteMachine)
		var got struct{ Machine *machine }
		c.do(`query($id: ID!) { machine(id: $id) { id } }`, map[string]any{"id": m.ID}, &got)
		require.Nil(t, got.Machine)
		n, err := s.DB.NewSelect().Table("machine_events").Where("machine_id = ?", m.ID).Count(t.Context())
		require.NoError(t, err)
		require.Zero(t, n)
		s.Do(t, c.token, `mutation($id: ID!) { deleteMachine(id: $id) }`, map[string]any{"id": m.ID}).Code(t, "NOT_FOUND")
	})

	t.Run("NamesAreUniqueIgnoringCaseBeyondASCII", func(t *testing.T) {
		c := newClient(t, s)
		c.create("École-1")
		e := s.Do(t, c.token, `mutation { createMachine(input: {name: "école-1"}) { id } }`, nil).Code(t, "CONFLICT")
		require.Equal(t, "name", e.Extensions["field"])
	})

	t.Run("SystemEventTypesAreReserved", func(t *testing.T) {
		c := newClient(t, s)
		m := c.create("honest")
		for _, typ := range []string{"created", "started", "stopped", "deployed", "deployment_activated", "updated"} {
			e := s.Do(t, c.token, `mutation($id: ID!, $t: String!) { logMachineEvent(machineId: $id, eventType: $t) { id } }`,
				map[string]any{"id": m.ID, "t": typ}).Code(t, "BAD_USER_INPUT")
			require.Equal(t, "eventType", e.Extensions["field"])
		}
		require.Len(t, c.events(m.ID), 1)
	})

	t.Run("ConcurrentStartsStartOnce", func(t *testing.T) {
		c := newClient(t, s)
		m := c.create("racer")
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() { c.mutate("startMachine", m.ID) })
		}
		wg.Wait()
		require.Equal(t, []string{"started", "created"}, eventTypes(c.events(m.ID)))
	})
}

func TestDeployments(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("StoppedMachineGetsPendingUntilStart", func(t *testing.T) {
		c := newClient(t, s)
		m := c.create("press")
		d1 := c.deploy(m.ID, "1.0.0")
		require.Equal(t, "PENDING", d1.Status)
		require.Equal(t, "user:"+c.user.ID.String(), d1.DeployedBy)
		require.Equal(t, map[string]any{"force": float64(1)}, d1.Settings)
		d2 := c.deploy(m.ID, "1.1.0")
		require.Equal(t, "PENDING", d2.Status)

		all, current := c.deployments(m.ID)
		require.Nil(t, current)
		require.Equal(t, []string{"1.1.0", "1.0.0"}, versions(all))
		require.Equal(t, []string{"PENDING", "SUPERSEDED"}, statuses(all), "a newer pending deployment supersedes the older")

		c.mutate("startMachine", m.ID)
		all, current = c.deployments(m.ID)
		require.NotNil(t, current)
		require.Equal(t, d2.ID, current.ID)
		require.Equal(t, []string{"ACTIVE", "SUPERSEDED"}, statuses(all))
		evs := c.events(m.ID)
		require.Equal(t, []string{"deployment_activated", "started", "deployed", "deployed", "created"}, eventTypes(evs))
		require.Equal(t, d2.ID, evs[0].Details["deploymentId"])
	})

	t.Run("RunningMachineActivatesAtOnce", func(t *testing.T) {
		c := newClient(t, s)
		m := c.create("press")
		c.mutate("startMachine", m.ID)
		d1 := c.deploy(m.ID, "1.0.0")
		require.Equal(t, "ACTIVE", d1.Status)
		d2 := c.deploy(m.ID, "2.0.0-rc.1+build.7")
		require.Equal(t, "ACTIVE", d2.Status)
		all, current := c.deployments(m.ID)
		require.Equal(t, d2.ID, current.ID)
		require.Equal(t, []string{"ACTIVE", "SUPERSEDED"}, statuses(all))

		// Stopping keeps the active deployment; restarting with nothing pending changes nothing.
		c.mutate("stopMachine", m.ID)
		c.mutate("startMachine", m.ID)
		_, current = c.deployments(m.ID)
		require.Equal(t, d2.ID, current.ID)
	})

	t.Run("ConcurrentDeploysLeaveOneActive", func(t *testing.T) {
		c := newClient(t, s)
		m := c.create("press")
		c.mutate("startMachine", m.ID)
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() { c.deploy(m.ID, fmt.Sprintf("1.0.%d", i)) })
		}
		wg.Wait()
		all, current := c.deployments(m.ID)
		require.NotNil(t, current)
		require.Len(t, all, 8)
		active := 0
		for _, d := range all {
			if d.Status == "ACTIVE" {
				active++
				require.Equal(t, current.ID, d.ID)
			}
		}
		require.Equal(t, 1, active)
		require.Equal(t, current.ID, all[0].ID, "the newest deployment is the active one")
	})
}

func versions(ds []deployment) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Version
	}
	return out
}

func statuses(ds []deployment) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Status
	}
	return out
}

type machinePage struct {
	Machines struct {
		TotalCount int
		PageInfo   struct {
			HasNextPage bool
			EndCursor   *string
		}
		Edges []struct {
			Cursor string
			Node   machine
		}
	}
}

func TestMachinePagination(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	c := newClient(t, s)
	var names []string
	for i := range 7 {
		names = append(names, c.create(fmt.Sprintf("m-%d", i)).Name)
	}
	const q = `query($first: Int, $after: String, $filter: MachineFilter) {
		machines(first: $first, after: $after, filter: $filter) {
			totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id name status } } } }`

	t.Run("PagesCoverEveryMachineOnceNewestFirst", func(t *testing.T) {
		var seen []string
		var after any
		for page := 0; ; page++ {
			var p machinePage
			c.do(q, map[string]any{"first": 3, "after": after}, &p)
			require.Equal(t, 7, p.Machines.TotalCount)
			for _, e := range p.Machines.Edges {
				seen = append(seen, e.Node.Name)
			}
			if !p.Machines.PageInfo.HasNextPage {
				require.Equal(t, 2, page)
				break
			}
			require.Equal(t, p.Machines.Edges[len(p.Machines.Edges)-1].Cursor, *p.Machines.PageInfo.EndCursor)
			after = *p.Machines.PageInfo.EndCursor
		}
		want := make([]string, len(names))
		for i, n := range names {
			want[len(names)-1-i] = n
		}
		require.Equal(t, want, seen)
	})

	t.Run("FiltersByStatusAndName", func(t *testing.T) {
		var p machinePage
		c.do(q, map[string]any{"filter": map[string]any{"status": "STOPPED", "nameContains": "M-1"}}, &p)
		require.Equal(t, 1, p.Machines.TotalCount)
		require.Equal(t, "m-1", p.Machines.Edges[0].Node.Name)

		c.mutate("startMachine", p.Machines.Edges[0].Node.ID)
		c.do(q, map[string]any{"filter": map[string]any{"status": "RUNNING"}}, &p)
		require.Equal(t, 1, p.Machines.TotalCount)
		c.do(q, map[string]any{"filter": map[string]any{"status": "STOPPED"}}, &p)
		require.Equal(t, 6, p.Machines.TotalCount)
	})

	t.Run("EmptyPage", func(t *testing.T) {
		var p machinePage
		c.do(q, map[string]any{"first": 0}, &p)
		require.Empty(t, p.Machines.Edges)
		require.True(t, p.Machines.PageInfo.HasNextPage)
		require.Nil(t, p.Machines.PageInfo.EndCursor)
	})
}

func TestMachineEvents(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	c := newClient(t, s)
	m := c.create("logger")
	for range 5 {
		c.logEvent(m.ID, "telemetry")
	}
	c.logEvent(m.ID, "warning")
	const q = `query($id: ID!, $first: Int, $after: String, $types: [String!]) {
		machineEvents(machineId: $id, first: $first, after: $after, eventTypes: $types) {
			totalCount pageInfo { hasNextPage endCursor } edges { node { id eventType } } } }`
	type page struct {
		MachineEvents struct {
			TotalCount int
			PageInfo   struct {
				HasNextPage bool
				EndCursor   string
			}
			Edges []struct{ Node event }
		}
	}

	t.Run("FilterByTypeWithPages", func(t *testing.T) {
		var p page
		c.do(q, map[string]any{"id": m.ID, "first": 3, "types": []string{"telemetry"}}, &p)
		require.Equal(t, 5, p.MachineEvents.TotalCount)
		require.Len(t, p.MachineEvents.Edges, 3)
		require.True(t, p.MachineEvents.PageInfo.HasNextPage)
		var next page
		c.do(q, map[string]any{"id": m.ID, "first": 3, "types": []string{"telemetry"}, "after": p.MachineEvents.PageInfo.EndCursor}, &next)
		require.Len(t, next.MachineEvents.Edges, 2)
		require.False(t, next.MachineEvents.PageInfo.HasNextPage)
		for _, e := range append(p.MachineEvents.Edges, next.MachineEvents.Edges...) {
			require.Equal(t, "telemetry", e.Node.EventType)
		}
	})

	t.Run("AllTypesNewestFirst", func(t *testing.T) {
		var p page
		c.do(q, map[string]any{"id": m.ID}, &p)
		require.Equal(t, 7, p.MachineEvents.TotalCount)
		require.Equal(t, "warning", p.MachineEvents.Edges[0].Node.EventType)
		require.Equal(t, "created", p.MachineEvents.Edges[6].Node.EventType)
	})

	t.Run("NestedEventsMatchTopLevel", func(t *testing.T) {
		var out struct {
			Machine struct {
				Events struct {
					TotalCount int
					Edges      []struct{ Node event }
				}
			}
		}
		c.do(`query($id: ID!) { machine(id: $id) { events(first: 2) { totalCount edges { node { id eventType } } } } }`, map[string]any{"id": m.ID}, &out)
		require.Equal(t, 7, out.Machine.Events.TotalCount)
		require.Equal(t, []string{"warning", "telemetry"}, []string{out.Machine.Events.Edges[0].Node.EventType, out.Machine.Events.Edges[1].Node.EventType})
	})
}

func TestMe(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewService(t, uuid.MustParse("11111111-2222-4333-8444-555555555555"))
	var out struct {
		Me struct{ ID, TenantID, Role string }
	}
	s.Do(t, u.Token, `{ me { id tenantId role } }`, nil).OK(t, &out)
	require.Equal(t, u.ID.String(), out.Me.ID)
	require.Equal(t, "11111111-2222-4333-8444-555555555555", out.Me.TenantID)
	require.Equal(t, "service_role", out.Me.Role)
}
