package graph_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/auth"
)

// The attack suite: one caller never sees or changes another caller's
// machines, whatever query, mutation, credential or transport it uses. Every
// refused attack is followed by a check, through the API as the owner, that
// nothing about the victim's machines changed.

// isoFleet is Alice's machines: one RUNNING with an ACTIVE deployment (and a
// SUPERSEDED one), one STOPPED with a PENDING deployment, both with events.
type isoFleet struct {
	running, stopped string
}

func (f isoFleet) ids() []string { return []string{f.running, f.stopped} }

// isoStateQuery reads everything a caller could change about a machine.
const isoStateQuery = `query($id: ID!) { machine(id: $id) {
	id name status configuration version lastStartedAt lastStoppedAt createdAt updatedAt
	events(first: 500) { totalCount edges { cursor node { id machineId eventType details actor createdAt } } }
	deployments(first: 500) { id name version settings status deployedBy activatedAt supersededAt }
	currentDeployment { id version status } } }`

// isoDo runs a query that must succeed and decodes its data into out.
func isoDo(t *testing.T, s *apitest.Server, token, query string, vars map[string]any, out any) {
	t.Helper()
	s.Do(t, token, query, vars).OK(t, out)
}

func isoCreate(t *testing.T, s *apitest.Server, token, name string) string {
	t.Helper()
	var out struct{ CreateMachine struct{ ID string } }
	isoDo(t, s, token, `mutation($n: String!) { createMachine(input: {name: $n, configuration: {cpu: 4, owner: "secret"}}) { id } }`,
		map[string]any{"n": name}, &out)
	require.NotEmpty(t, out.CreateMachine.ID)
	return out.CreateMachine.ID
}

func isoNewFleet(t *testing.T, s *apitest.Server, token string) isoFleet {
	t.Helper()
	f := isoFleet{running: isoCreate(t, s, token, "alice-press"), stopped: isoCreate(t, s, token, "alice-lathe")}
	deploy := func(id, version, wantStatus string) {
		var out struct{ DeployProtocol struct{ Status string } }
		isoDo(t, s, token, `mutation($id: ID!, $v: String!) { deployProtocol(machineId: $id, protocol: {name: "stamping", version: $v, settings: {force: 3}}) { status } }`,
			map[string]any{"id": id, "v": version}, &out)
		require.Equal(t, wantStatus, out.DeployProtocol.Status)
	}
	logEvent := func(id, eventType string) {
		isoDo(t, s, token, `mutation($id: ID!, $t: String!) { logMachineEvent(machineId: $id, eventType: $t, details: {temp: 71}) { id } }`,
			map[string]any{"id": id, "t": eventType}, nil)
	}
	isoDo(t, s, token, `mutation($id: ID!) { startMachine(id: $id) { id } }`, map[string]any{"id": f.running}, nil)
	deploy(f.running, "1.0.0", "ACTIVE")
	deploy(f.running, "1.1.0", "ACTIVE") // supersedes 1.0.0
	logEvent(f.running, "telemetry")
	deploy(f.stopped, "2.0.0", "PENDING")
	logEvent(f.stopped, "maintenance")
	return f
}

// isoState is the owner's view of a machine, as JSON.
func isoState(t *testing.T, s *apitest.Server, token, id string) string {
	t.Helper()
	var out struct{ Machine json.RawMessage }
	isoDo(t, s, token, isoStateQuery, map[string]any{"id": id}, &out)
	require.NotEqual(t, "null", string(out.Machine), "the owner must see machine %s", id)
	return string(out.Machine)
}

func isoStates(t *testing.T, s *apitest.Server, token string, ids []string) map[string]string {
	t.Helper()
	states := map[string]string{}
	for _, id := range ids {
		states[id] = isoState(t, s, token, id)
	}
	return states
}

// isoRequireUnchanged fails t unless every machine still looks to its owner
// exactly as in before.
func isoRequireUnchanged(t *testing.T, s *apitest.Server, token string, before map[string]string) {
	t.Helper()
	for id, want := range before {
		require.JSONEq(t, want, isoState(t, s, token, id), "machine %s changed", id)
	}
}

// isoRowCounts counts every row of every table, straight from the database.
func isoRowCounts(t *testing.T, s *apitest.Server) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for _, table := range []string{"machines", "machine_events", "deployments"} {
		n, err := s.DB.NewSelect().Table(table).Count(t.Context())
		require.NoError(t, err)
		counts[table] = n
	}
	return counts
}

// isoOp is one operation on one machine id, passed as $id.
type isoOp struct {
	name, query string
}

// isoMutations are every mutation that names an existing machine. The event
// type `error` would set the machine to ERROR if it got through.
var isoMutations = []isoOp{
	{"updateMachine", `mutation($id: ID!) { updateMachine(id: $id, input: {name: "pwned", configuration: {owned: true}}) { id name } }`},
	{"deleteMachine", `mutation($id: ID!) { deleteMachine(id: $id) }`},
	{"startMachine", `mutation($id: ID!) { startMachine(id: $id) { id status } }`},
	{"stopMachine", `mutation($id: ID!) { stopMachine(id: $id) { id status } }`},
	{"deployProtocol", `mutation($id: ID!) { deployProtocol(machineId: $id, protocol: {name: "evil", version: "6.6.6"}) { id status } }`},
	{"logMachineEvent", `mutation($id: ID!) { logMachineEvent(machineId: $id, eventType: "error", details: {by: "mallory"}) { id } }`},
}

// isoRequireNotFoundLikeMissing fails t unless op on id is refused with
// NOT_FOUND exactly as the same op on an id that exists nowhere is: another
// caller's machine and no machine must be indistinguishable.
func isoRequireNotFoundLikeMissing(t *testing.T, s *apitest.Server, token string, op isoOp, id string) {
	t.Helper()
	resp := s.Do(t, token, op.query, map[string]any{"id": id})
	got := resp.Code(t, "NOT_FOUND")
	apitest.RequireNoData(t, resp)
	missing := s.Do(t, token, op.query, map[string]any{"id": uuid.NewString()}).Code(t, "NOT_FOUND")
	require.Equal(t, missing.Message, got.Message, "the error must not reveal that the machine exists")
	require.Equal(t, missing.Extensions, got.Extensions)
}

// isoVisibleIDs lists the ids of the machines a caller's `machines` returns,
// with its totalCount.
func isoVisibleIDs(t *testing.T, s *apitest.Server, token string, vars map[string]any) (ids []string, total int) {
	t.Helper()
	var out struct {
		Machines struct {
			TotalCount int
			Edges      []struct{ Node struct{ ID string } }
		}
	}
	isoDo(t, s, token, `query($first: Int, $after: String, $filter: MachineFilter) {
		machines(first: $first, after: $after, filter: $filter) { totalCount edges { node { id } } } }`, vars, &out)
	ids = []string{}
	for _, e := range out.Machines.Edges {
		ids = append(ids, e.Node.ID)
	}
	return ids, out.Machines.TotalCount
}

// isoRequireSeesNothing fails t unless the caller with token sees none of ids
// through any query, and every mutation on them is NOT_FOUND and changes
// nothing (checked through ownerToken).
func isoRequireSeesNothing(t *testing.T, s *apitest.Server, token, ownerToken string, ids []string) {
	t.Helper()
	before := isoStates(t, s, ownerToken, ids)
	rows := isoRowCounts(t, s)
	for _, id := range ids {
		var one struct{ Machine *struct{ ID string } }
		isoDo(t, s, token, `query($id: ID!) { machine(id: $id) { id } }`, map[string]any{"id": id}, &one)
		require.Nil(t, one.Machine)

		isoRequireNotFoundLikeMissing(t, s, token, isoOp{"machineEvents",
			`query($id: ID!) { machineEvents(machineId: $id) { totalCount edges { node { id } } } }`}, id)
		for _, op := range isoMutations {
			isoRequireNotFoundLikeMissing(t, s, token, op, id)
			isoRequireUnchanged(t, s, ownerToken, before)
		}
	}
	visible, _ := isoVisibleIDs(t, s, token, map[string]any{"first": 500})
	for _, id := range ids {
		require.NotContains(t, visible, id)
	}
	require.Equal(t, rows, isoRowCounts(t, s))
}

func TestUserIsolation(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	alice := s.NewUser(t, uuid.Nil)
	bob := s.NewUser(t, uuid.Nil)
	// Bob's machine is older than all of Alice's, so a cursor into Alice's
	// list points past it.
	bobMachine := isoCreate(t, s, bob.Token, "bob-press")
	fleet := isoNewFleet(t, s, alice.Token)
	before := isoStates(t, s, alice.Token, fleet.ids())

	t.Run("MachineIsNullForAnotherUsersMachine", func(t *testing.T) {
		for _, id := range fleet.ids() {
			resp := s.Do(t, bob.Token, `query($id: ID!) { machine(id: $id) { id name configuration } }`, map[string]any{"id": id})
			var out struct{ Machine *struct{ ID string } }
			resp.OK(t, &out)
			require.Nil(t, out.Machine)

			resp = s.Do(t, alice.Token, `query($id: ID!) { machine(id: $id) { id } }`, map[string]any{"id": id})
			resp.OK(t, &out)
			require.NotNil(t, out.Machine, "the owner sees it")
		}
	})

	t.Run("OneRequestMixingOwnAndForeignIDsSeesOnlyOwn", func(t *testing.T) {
		// Aliased fields batch their relations through the same loaders.
		var out struct {
			Mine, Theirs, Stopped *struct {
				ID     string
				Events struct{ TotalCount int }
			}
		}
		isoDo(t, s, bob.Token, `query($mine: ID!, $theirs: ID!, $stopped: ID!) {
			mine: machine(id: $mine) { id events { totalCount } deployments { id } currentDeployment { id } }
			theirs: machine(id: $theirs) { id events { totalCount } deployments { id } currentDeployment { id } }
			stopped: machine(id: $stopped) { id events { totalCount } deployments { id } currentDeployment { id } } }`,
			map[string]any{"mine": bobMachine, "theirs": fleet.running, "stopped": fleet.stopped}, &out)
		require.NotNil(t, out.Mine)
		require.Equal(t, 1, out.Mine.Events.TotalCount)
		require.Nil(t, out.Theirs)
		require.Nil(t, out.Stopped)
	})

	t.Run("MachinesListsAndCountsOnlyOwn", func(t *testing.T) {
		ids, total := isoVisibleIDs(t, s, bob.Token, map[string]any{"first": 500})
		require.Equal(t, []string{bobMachine}, ids)
		require.Equal(t, 1, total)

		for _, filter := range []map[string]any{
			{"nameContains": "alice"},
			{"nameContains": "PRESS", "status": "RUNNING"},
			{"status": "RUNNING"},
		} {
			ids, total := isoVisibleIDs(t, s, bob.Token, map[string]any{"filter": filter})
			require.Empty(t, ids, "filter %v", filter)
			require.Zero(t, total, "filter %v", filter)
		}
		// The same filters find Alice's machines for Alice.
		ids, total = isoVisibleIDs(t, s, alice.Token, map[string]any{"filter": map[string]any{"nameContains": "alice"}})
		require.ElementsMatch(t, fleet.ids(), ids)
		require.Equal(t, 2, total)
		ids, _ = isoVisibleIDs(t, s, alice.Token, map[string]any{"filter": map[string]any{"nameContains": "PRESS", "status": "RUNNING"}})
		require.Equal(t, []string{fleet.running}, ids)
	})

	t.Run("MachineEventsIsNotFoundForAnotherUsersMachine", func(t *testing.T) {
		ops := []isoOp{
			{"plain", `query($id: ID!) { machineEvents(machineId: $id) { totalCount edges { node { id eventType details } } } }`},
			{"filtered", `query($id: ID!) { machineEvents(machineId: $id, first: 1, eventTypes: ["telemetry", "created"]) { totalCount } }`},
		}
		for _, id := range fleet.ids() {
			for _, op := range ops {
				isoRequireNotFoundLikeMissing(t, s, bob.Token, op, id)
			}
		}
	})

	t.Run("EveryMutationIsNotFoundAndChangesNothing", func(t *testing.T) {
		rows := isoRowCounts(t, s)
		for _, id := range fleet.ids() {
			for _, op := range isoMutations {
				isoRequireNotFoundLikeMissing(t, s, bob.Token, op, id)
				isoRequireUnchanged(t, s, alice.Token, before)
				require.Equal(t, rows, isoRowCounts(t, s), "%s wrote rows", op.name)
			}
		}
	})

	t.Run("AnotherUsersCursorShowsOnlyOwnMachines", func(t *testing.T) {
		var page struct {
			Machines struct {
				PageInfo struct{ EndCursor string }
			}
		}
		isoDo(t, s, alice.Token, `{ machines(first: 1) { pageInfo { endCursor } } }`, nil, &page)
		cursor := page.Machines.PageInfo.EndCursor
		require.NotEmpty(t, cursor)

		ids, _ := isoVisibleIDs(t, s, alice.Token, map[string]any{"after": cursor})
		require.Equal(t, []string{fleet.running}, ids, "the cursor is real: Alice has a machine after it")
		ids, total := isoVisibleIDs(t, s, bob.Token, map[string]any{"after": cursor})
		require.Equal(t, []string{bobMachine}, ids)
		require.Equal(t, 1, total)
	})

	t.Run("AnotherUsersEventCursorShowsOnlyOwnEvents", func(t *testing.T) {
		var page struct {
			MachineEvents struct {
				PageInfo struct{ EndCursor string }
			}
		}
		isoDo(t, s, alice.Token, `query($id: ID!) { machineEvents(machineId: $id, first: 1) { pageInfo { endCursor } } }`,
			map[string]any{"id": fleet.stopped}, &page)
		var out struct {
			MachineEvents struct {
				Edges []struct {
					Node struct{ MachineID, EventType string }
				}
			}
		}
		isoDo(t, s, bob.Token, `query($id: ID!, $after: String) { machineEvents(machineId: $id, after: $after) { edges { node { machineId eventType } } } }`,
			map[string]any{"id": bobMachine, "after": page.MachineEvents.PageInfo.EndCursor}, &out)
		require.Len(t, out.MachineEvents.Edges, 1)
		require.Equal(t, bobMachine, out.MachineEvents.Edges[0].Node.MachineID)
		require.Equal(t, "created", out.MachineEvents.Edges[0].Node.EventType)
	})

	t.Run("NamesAreUniquePerOwnerNotGlobally", func(t *testing.T) {
		isoCreate(t, s, bob.Token, "alice-press")
		isoCreate(t, s, bob.Token, "ALICE-LATHE")
		// The names are taken for Alice herself.
		s.Do(t, alice.Token, `mutation { createMachine(input: {name: "Alice-Press"}) { id } }`, nil).Code(t, "CONFLICT")
		isoRequireUnchanged(t, s, alice.Token, before)
		ids, _ := isoVisibleIDs(t, s, alice.Token, nil)
		require.ElementsMatch(t, fleet.ids(), ids)
	})
}

func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	otherTenant := uuid.New()
	alice := s.NewUser(t, uuid.Nil)
	bob := s.NewUser(t, uuid.Nil)
	fleet := isoNewFleet(t, s, alice.Token)
	bobMachine := isoCreate(t, s, bob.Token, "bob-press")
	all := append(fleet.ids(), bobMachine)

	// Alice's user id, signed into another tenant.
	twinToken, err := s.JWT.Mint(auth.MintOptions{UserID: alice.ID, TenantID: otherTenant, Role: auth.RoleUser, TTL: time.Hour})
	require.NoError(t, err)

	t.Run("ServiceRoleOfAnotherTenantSeesAndChangesNothing", func(t *testing.T) {
		foreign := s.NewService(t, otherTenant)
		isoRequireSeesNothing(t, s, foreign.Token, alice.Token, fleet.ids())
		isoRequireSeesNothing(t, s, foreign.Token, bob.Token, []string{bobMachine})
		ids, total := isoVisibleIDs(t, s, foreign.Token, nil)
		require.Empty(t, ids)
		require.Zero(t, total)
	})

	t.Run("SameUserIDInAnotherTenantSeesNothing", func(t *testing.T) {
		var me struct {
			Me struct{ ID, TenantID, Role string }
		}
		isoDo(t, s, twinToken, `{ me { id tenantId role } }`, nil, &me)
		require.Equal(t, alice.ID.String(), me.Me.ID)
		require.Equal(t, otherTenant.String(), me.Me.TenantID)

		isoRequireSeesNothing(t, s, twinToken, alice.Token, fleet.ids())
		ids, total := isoVisibleIDs(t, s, twinToken, map[string]any{"filter": map[string]any{"nameContains": "alice"}})
		require.Empty(t, ids)
		require.Zero(t, total)

		// The twin's own machine, under one of Alice's names, is invisible to Alice.
		twinMachine := isoCreate(t, s, twinToken, "alice-press")
		var one struct{ Machine *struct{ ID string } }
		isoDo(t, s, alice.Token, `query($id: ID!) { machine(id: $id) { id } }`, map[string]any{"id": twinMachine}, &one)
		require.Nil(t, one.Machine)
		ids, _ = isoVisibleIDs(t, s, alice.Token, nil)
		require.ElementsMatch(t, fleet.ids(), ids)
		ids, _ = isoVisibleIDs(t, s, twinToken, nil)
		require.Equal(t, []string{twinMachine}, ids)
	})

	// Rule: service_role sees and may change every user's machines, but only
	// in its own tenant. This subtest changes Alice's and Bob's machines, so it runs last.
	t.Run("ServiceRoleSeesAndChangesEveryUsersMachinesInItsOwnTenantOnly", func(t *testing.T) {
		svc := s.NewService(t, uuid.Nil)
		ids, total := isoVisibleIDs(t, s, svc.Token, map[string]any{"first": 500})
		require.ElementsMatch(t, all, ids, "every machine of the tenant, none of another tenant's")
		require.Equal(t, 3, total)

		var one struct {
			Machine *struct {
				Name              string
				Events            struct{ TotalCount int }
				CurrentDeployment *struct{ Version string }
			}
		}
		isoDo(t, s, svc.Token, `query($id: ID!) { machine(id: $id) { name events { totalCount } currentDeployment { version } } }`,
			map[string]any{"id": fleet.running}, &one)
		require.NotNil(t, one.Machine)
		require.Equal(t, "alice-press", one.Machine.Name)
		require.NotNil(t, one.Machine.CurrentDeployment)
		require.Equal(t, "1.1.0", one.Machine.CurrentDeployment.Version)
		var evs struct{ MachineEvents struct{ TotalCount int } }
		isoDo(t, s, svc.Token, `query($id: ID!) { machineEvents(machineId: $id) { totalCount } }`, map[string]any{"id": fleet.running}, &evs)
		require.Equal(t, one.Machine.Events.TotalCount, evs.MachineEvents.TotalCount)

		var upd struct{ UpdateMachine struct{ Name string } }
		isoDo(t, s, svc.Token, `mutation($id: ID!) { updateMachine(id: $id, input: {name: "renamed-by-service"}) { name } }`,
			map[string]any{"id": fleet.stopped}, &upd)
		require.Equal(t, "renamed-by-service", upd.UpdateMachine.Name)
		for _, op := range []string{
			`mutation($id: ID!) { startMachine(id: $id) { id } }`,
			`mutation($id: ID!) { deployProtocol(machineId: $id, protocol: {name: "ops", version: "3.0.0"}) { id } }`,
			`mutation($id: ID!) { logMachineEvent(machineId: $id, eventType: "audit") { id } }`,
			`mutation($id: ID!) { stopMachine(id: $id) { id } }`,
		} {
			isoDo(t, s, svc.Token, op, map[string]any{"id": fleet.stopped}, nil)
		}
		// Alice sees what the service did, attributed to it.
		var seen struct {
			Machine struct {
				Name, Status      string
				CurrentDeployment struct{ Version string }
				Events            struct {
					Edges []struct {
						Node struct{ EventType, Actor string }
					}
				}
			}
		}
		isoDo(t, s, alice.Token, `query($id: ID!) { machine(id: $id) { name status currentDeployment { version }
			events(first: 1) { edges { node { eventType actor } } } } }`, map[string]any{"id": fleet.stopped}, &seen)
		require.Equal(t, "renamed-by-service", seen.Machine.Name)
		require.Equal(t, "STOPPED", seen.Machine.Status)
		require.Equal(t, "3.0.0", seen.Machine.CurrentDeployment.Version)
		require.Equal(t, "stopped", seen.Machine.Events.Edges[0].Node.EventType)
		require.Equal(t, "user:"+svc.ID.String(), seen.Machine.Events.Edges[0].Node.Actor)

		var del struct{ DeleteMachine string }
		isoDo(t, s, svc.Token, `mutation($id: ID!) { deleteMachine(id: $id) }`, map[string]any{"id": bobMachine}, &del)
		require.Equal(t, bobMachine, del.DeleteMachine)
		ids, _ = isoVisibleIDs(t, s, bob.Token, nil)
		require.Empty(t, ids)
	})
}

// isoAnonymousOps are every query and mutation, each needing a caller.
var isoAnonymousOps = []isoOp{
	{"me", `{ me { id } }`},
	{"machine", `query($id: ID!) { machine(id: $id) { id } }`},
	{"machines", `{ machines { totalCount edges { node { id } } } }`},
	{"machinesFiltered", `{ machines(filter: {nameContains: "alice"}) { edges { node { id } } } }`},
	{"machineEvents", `query($id: ID!) { machineEvents(machineId: $id) { totalCount edges { node { id } } } }`},
	{"createMachine", `mutation { createMachine(input: {name: "anon"}) { id } }`},
}

func TestAnonymousIsRefused(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	alice := s.NewUser(t, uuid.Nil)
	fleet := isoNewFleet(t, s, alice.Token)
	before := isoStates(t, s, alice.Token, fleet.ids())
	rows := isoRowCounts(t, s)

	for _, op := range append(append([]isoOp{}, isoAnonymousOps...), isoMutations...) {
		t.Run(op.name, func(t *testing.T) {
			resp := s.Do(t, "", op.query, map[string]any{"id": fleet.running})
			resp.Code(t, "UNAUTHENTICATED")
			apitest.RequireNoData(t, resp)
			require.Less(t, resp.Status, 500)
			isoRequireUnchanged(t, s, alice.Token, before)
			require.Equal(t, rows, isoRowCounts(t, s))
		})
	}
}

// isoClaims are the claims of a token the server accepts for user; attacks
// change one thing each.
func isoClaims(user uuid.UUID) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"sub":  user.String(),
		"aud":  "authenticated",
		"role": "authenticated",
		"iat":  now.Unix(),
		"exp":  now.Add(time.Hour).Unix(),
	}
}

func isoSign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
	require.NoError(t, err)
	return tok
}

func isoWith(c jwt.MapClaims, key string, v any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for k, val := range c {
		out[k] = val
	}
	if v == nil {
		delete(out, key)
	} else {
		out[key] = v
	}
	return out
}

// isoSend posts query with a raw Authorization header ("" sends none).
func isoSend(t *testing.T, s *apitest.Server, authorization, query string) *apitest.Response {
	t.Helper()
	body, err := json.Marshal(map[string]any{"query": query})
	require.NoError(t, err)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL+"/graphql", strings.NewReader(string(body)))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return s.Send(t, req)
}

func TestTokenAttacks(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	alice := s.NewUser(t, uuid.Nil)
	isoCreate(t, s, alice.Token, "alice-press")
	secret := []byte(apitest.Secret)
	valid := isoClaims(alice.ID)
	now := time.Now()

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	b64 := base64.RawURLEncoding.EncodeToString
	claimsJSON, err := json.Marshal(valid)
	require.NoError(t, err)
	algNone := b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + b64(claimsJSON) + "."
	// The same claims under an HS256 header, signature stripped.
	unsigned := b64([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + b64(claimsJSON) + "."
	validToken := isoSign(t, jwt.SigningMethodHS256, secret, valid)
	// Alice's real token with its payload swapped for Bob's claims: signature no longer matches.
	parts := strings.Split(validToken, ".")
	bobClaims, err := json.Marshal(isoWith(valid, "sub", uuid.NewString()))
	require.NoError(t, err)
	swapped := parts[0] + "." + b64(bobClaims) + "." + parts[2]

	const query = `{ me { id tenantId role } machines { totalCount edges { node { id name configuration } } } }`

	t.Run("ControlValidCraftedTokenIsAccepted", func(t *testing.T) {
		// Every attack below is this token with one thing changed.
		for _, tok := range []string{
			validToken,
			isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "exp", now.Add(-10*time.Second).Unix())), // within the 30s leeway
		} {
			resp := isoSend(t, s, "Bearer "+tok, query)
			require.Equal(t, http.StatusOK, resp.Status)
			var out struct {
				Me       struct{ ID string }
				Machines struct{ TotalCount int }
			}
			resp.OK(t, &out)
			require.Equal(t, alice.ID.String(), out.Me.ID)
			require.Equal(t, 1, out.Machines.TotalCount)
		}
	})

	attacks := []struct {
		name, authorization string
	}{
		{"ForgedSignature", "Bearer " + isoSign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-another-secret-0"), valid)},
		{"PayloadSwapped", "Bearer " + swapped},
		{"SignatureStripped", "Bearer " + unsigned},
		{"ExpiredBeyondLeeway", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "exp", now.Add(-2*time.Minute).Unix()))},
		{"NotValidYet", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "nbf", now.Add(5*time.Minute).Unix()))},
		{"IssuedInTheFuture", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "iat", now.Add(5*time.Minute).Unix()))},
		{"AlgNone", "Bearer " + algNone},
		{"WrongAudience", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "aud", "anon"))},
		{"MissingAudience", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "aud", nil))},
		{"HS512WithTheRightSecret", "Bearer " + isoSign(t, jwt.SigningMethodHS512, secret, valid)},
		{"RS256", "Bearer " + isoSign(t, jwt.SigningMethodRS256, rsaKey, valid)},
		{"MissingExp", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "exp", nil))},
		{"RoleAnon", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "role", "anon"))},
		{"RoleSuperuser", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "role", "superuser"))},
		{"RoleMissing", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "role", nil))},
		{"SubNotAUUID", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "sub", "alice"))},
		{"SubMissing", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "sub", nil))},
		{"TenantIDNotAUUID", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "tenant_id", "acme"))},
		{"AppMetadataTenantIDNotAUUID", "Bearer " + isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "app_metadata", map[string]any{"tenant_id": "acme"}))},
		{"Garbage", "Bearer garbage"},
		{"ThreeDotsOfGarbage", "Bearer a.b.c"},
		{"BasicScheme", "Basic " + b64([]byte("alice:password"))},
		{"TokenWithoutScheme", validToken},
		{"BearerWithEmptyToken", "Bearer "},
		{"BearerWithSpacesOnly", "Bearer    "},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			resp := isoSend(t, s, a.authorization, query)
			require.Equal(t, http.StatusUnauthorized, resp.Status, "response: %s", resp.Raw)
			resp.Code(t, "UNAUTHENTICATED")
			apitest.RequireNoData(t, resp)
			require.NotContains(t, string(resp.Raw), alice.ID.String())
			require.NotContains(t, string(resp.Raw), "alice-press")
			require.Equal(t, `Bearer realm="fleetgraph"`, resp.Header.Get("WWW-Authenticate"))
			if tok := strings.TrimSpace(strings.TrimPrefix(a.authorization, "Bearer ")); len(tok) > 20 {
				require.NotContains(t, string(resp.Raw), tok, "the error must not echo the credential")
			}
		})
	}

	t.Run("AppMetadataTenantIsHonoured", func(t *testing.T) {
		tenant := uuid.New()
		tok := isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "app_metadata", map[string]any{"tenant_id": tenant.String()}))
		var out struct {
			Me       struct{ ID, TenantID, Role string }
			Machines struct{ TotalCount int }
		}
		isoSend(t, s, "Bearer "+tok, query).OK(t, &out)
		require.Equal(t, alice.ID.String(), out.Me.ID)
		require.Equal(t, tenant.String(), out.Me.TenantID)
		require.Equal(t, "authenticated", out.Me.Role)
		require.Zero(t, out.Machines.TotalCount, "Alice's id in another tenant owns nothing there")
	})

	t.Run("TopLevelTenantIsHonoured", func(t *testing.T) {
		tenant := uuid.New()
		tok := isoSign(t, jwt.SigningMethodHS256, secret, isoWith(valid, "tenant_id", tenant.String()))
		var out struct{ Me struct{ TenantID string } }
		isoSend(t, s, "Bearer "+tok, query).OK(t, &out)
		require.Equal(t, tenant.String(), out.Me.TenantID)
	})
}

// isoWS is a graphql-transport-ws client connection.
type isoWS struct {
	conn *websocket.Conn
}

// isoWSOpen dials the endpoint and sends connection_init with payload. It
// returns the first message the server answers with, or the error that ended
// the connection instead.
func isoWSOpen(t *testing.T, s *apitest.Server, payload map[string]any) (*isoWS, map[string]any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+s.URL[len("http"):]+"/graphql",
		&websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.CloseNow() })
	require.Equal(t, "graphql-transport-ws", conn.Subprotocol())
	require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"type": "connection_init", "payload": payload}))
	ws := &isoWS{conn: conn}
	msg, err := ws.read(ctx)
	return ws, msg, err
}

// read returns the next message that is not a ping or pong.
func (w *isoWS) read(ctx context.Context) (map[string]any, error) {
	for {
		var msg map[string]any
		if err := wsjson.Read(ctx, w.conn, &msg); err != nil {
			return nil, err
		}
		if msg["type"] != "ping" && msg["type"] != "pong" {
			return msg, nil
		}
	}
}

// run sends one operation as subscription id and returns its `next` payload,
// after checking that the server completes it.
func (w *isoWS) run(t *testing.T, id, query string, vars map[string]any) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
	defer cancel()
	require.NoError(t, wsjson.Write(ctx, w.conn, map[string]any{"id": id, "type": "subscribe",
		"payload": map[string]any{"query": query, "variables": vars}}))
	next, err := w.read(ctx)
	require.NoError(t, err)
	require.Equal(t, "next", next["type"], "got %v", next)
	require.Equal(t, id, next["id"])
	payload, ok := next["payload"].(map[string]any)
	require.True(t, ok, "next without a payload: %v", next)
	done, err := w.read(ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]any{"id": id, "type": "complete"}, done)
	return payload
}

func isoFirstErrorCode(t *testing.T, payload map[string]any) string {
	t.Helper()
	errs, ok := payload["errors"].([]any)
	require.True(t, ok, "no errors in %v", payload)
	require.NotEmpty(t, errs)
	first, _ := errs[0].(map[string]any)
	ext, _ := first["extensions"].(map[string]any)
	code, _ := ext["code"].(string)
	return code
}

func TestWebsocketIsolation(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	alice := s.NewUser(t, uuid.Nil)
	bob := s.NewUser(t, uuid.Nil)
	fleet := isoNewFleet(t, s, alice.Token)
	bobMachine := isoCreate(t, s, bob.Token, "bob-press")
	before := isoStates(t, s, alice.Token, fleet.ids())
	const machineQuery = `query($id: ID!) { machine(id: $id) { id } }`

	t.Run("AnotherUsersMachineIsNull", func(t *testing.T) {
		ws, ack, err := isoWSOpen(t, s, map[string]any{"Authorization": "Bearer " + bob.Token})
		require.NoError(t, err)
		require.Equal(t, "connection_ack", ack["type"])

		got := ws.run(t, "1", machineQuery, map[string]any{"id": fleet.running})
		require.Equal(t, map[string]any{"data": map[string]any{"machine": nil}}, got)
		// Control: the same connection sees Bob's own machine.
		got = ws.run(t, "2", machineQuery, map[string]any{"id": bobMachine})
		require.Equal(t, map[string]any{"data": map[string]any{"machine": map[string]any{"id": bobMachine}}}, got)

		got = ws.run(t, "3", `{ machines { totalCount edges { node { id } } } }`, nil)
		require.Equal(t, map[string]any{"data": map[string]any{"machines": map[string]any{
			"totalCount": float64(1), "edges": []any{map[string]any{"node": map[string]any{"id": bobMachine}}}}}}, got)

		got = ws.run(t, "4", `query($id: ID!) { machineEvents(machineId: $id) { totalCount } }`, map[string]any{"id": fleet.running})
		require.Equal(t, "NOT_FOUND", isoFirstErrorCode(t, got))
		require.Nil(t, got["data"])

		for i, op := range isoMutations {
			got = ws.run(t, string(rune('a'+i)), op.query, map[string]any{"id": fleet.stopped})
			require.Equal(t, "NOT_FOUND", isoFirstErrorCode(t, got), "%s: %v", op.name, got)
			require.Nil(t, got["data"])
		}
		isoRequireUnchanged(t, s, alice.Token, before)
	})

	t.Run("ControlOwnerSeesTheMachine", func(t *testing.T) {
		ws, ack, err := isoWSOpen(t, s, map[string]any{"authToken": alice.Token})
		require.NoError(t, err)
		require.Equal(t, "connection_ack", ack["type"])
		got := ws.run(t, "1", machineQuery, map[string]any{"id": fleet.running})
		require.Equal(t, map[string]any{"data": map[string]any{"machine": map[string]any{"id": fleet.running}}}, got)
	})

	t.Run("AnonymousInitIsUnauthenticated", func(t *testing.T) {
		ws, ack, err := isoWSOpen(t, s, map[string]any{})
		require.NoError(t, err)
		require.Equal(t, "connection_ack", ack["type"])
		got := ws.run(t, "1", machineQuery, map[string]any{"id": fleet.running})
		require.Equal(t, "UNAUTHENTICATED", isoFirstErrorCode(t, got))
		require.Equal(t, map[string]any{"machine": nil}, got["data"])
	})

	expired, err := jwt.NewWithClaims(jwt.SigningMethodHS256, isoWith(isoClaims(bob.ID), "exp", time.Now().Add(-time.Hour).Unix())).
		SignedString([]byte(apitest.Secret))
	require.NoError(t, err)
	forged, err := jwt.NewWithClaims(jwt.SigningMethodHS256, isoClaims(alice.ID)).SignedString([]byte("another-secret-another-secret-another-secret-0"))
	require.NoError(t, err)
	for name, payload := range map[string]map[string]any{
		"GarbageBearer":          {"Authorization": "Bearer garbage"},
		"ForgedToken":            {"Authorization": "Bearer " + forged},
		"ExpiredToken":           {"authorization": "Bearer " + expired},
		"BadAuthToken":           {"authToken": "garbage"},
		"EmptyAuthToken":         {"authToken": ""},
		"AuthorizationNotString": {"Authorization": 42},
		"BasicScheme":            {"Authorization": "Basic YWxpY2U6cHc="},
	} {
		t.Run("BadInitIsRefused/"+name, func(t *testing.T) {
			ws, msg, err := isoWSOpen(t, s, payload)
			require.Error(t, err, "the server answered %v instead of closing", msg)
			// graphql-transport-ws: a rejected connection_init closes with
			// 4403 Forbidden, and the reason says why.
			var closeErr websocket.CloseError
			require.True(t, errors.As(err, &closeErr), "the connection must end with a close frame, got %v", err)
			require.Equal(t, websocket.StatusCode(4403), closeErr.Code, "reason %q", closeErr.Reason)
			require.Contains(t, closeErr.Reason, "Forbidden")
			// Nothing more comes on a refused connection.
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			_, err = ws.read(ctx)
			require.Error(t, err)
		})
	}

	t.Run("BadTokenOnUpgradeIsRefusedWith401", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
		defer cancel()
		conn, resp, err := websocket.Dial(ctx, "ws"+s.URL[len("http"):]+"/graphql", &websocket.DialOptions{
			Subprotocols: []string{"graphql-transport-ws"},
			HTTPHeader:   http.Header{"Authorization": {"Bearer " + forged}},
		})
		if conn != nil {
			_ = conn.CloseNow()
		}
		require.Error(t, err)
		require.NotNil(t, resp)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	})
}
