package graph_test

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// Number literals a field cannot read are refused before anything runs:
// gqlparser turns literals into Go values only when a field reads its
// arguments, and panicked on one beyond 64 bits where its validation does
// not look (custom scalars, numbers inside a JSON literal), which the
// client saw as INTERNAL.
func TestNumberLiteralsOutOfRangeAreRefused(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.New())
	cases := map[string]string{
		"FloatForATime":        `{ robotLogs(since: 1e400) { pageInfo { hasNextPage } } }`,
		"IntForATime":          `{ robotLogs(since: 99999999999999999999) { pageInfo { hasNextPage } } }`,
		"FloatInJSON":          `mutation { createMachine(input: {name: "f", configuration: {n: 1e400}}) { id } }`,
		"IntInJSON":            `mutation { createMachine(input: {name: "i", configuration: {n: [1, {m: 99999999999999999999}]}}) { id } }`,
		"FloatInAFragment":     `mutation { ...F } fragment F on Mutation { createMachine(input: {name: "g", configuration: {n: -1e400}}) { id } }`,
		"DefaultOfAVariable":   `query($t: Time = 1e999) { robotLogs(since: $t) { pageInfo { hasNextPage } } }`,
		"InADirectiveArgument": `{ me { id @include(if: true) } robotLogs(until: 123456789012345678901234567890) { pageInfo { hasNextPage } } }`,
	}
	for name, q := range cases {
		t.Run(name, func(t *testing.T) {
			res := s.Do(t, u.Token, q, nil)
			res.Code(t, "BAD_USER_INPUT")
			for _, e := range res.Errors {
				require.Equal(t, "BAD_USER_INPUT", e.Code(), "%s", res.Raw)
			}
			require.NotContains(t, string(res.Raw), "strconv")
			require.Nil(t, res.Data, "nothing ran: %s", res.Raw)
		})
	}
	n, err := s.DB.NewSelect().Table("machines").Count(t.Context())
	require.NoError(t, err)
	require.Zero(t, n, "a refused mutation wrote a machine")

	// The same numbers in range, and huge ones in a variable, are fine.
	var out struct {
		CreateMachine struct{ Configuration map[string]json.Number }
	}
	s.Do(t, u.Token, `mutation($c: JSON) { createMachine(input: {name: "ok", configuration: $c}) { configuration } }`,
		map[string]any{"c": map[string]any{"n": json.Number("1e400")}}).OK(t, &out)
	require.NotEmpty(t, out.CreateMachine.Configuration["n"], "the huge number is kept (as PostgreSQL writes it)")
	s.Do(t, u.Token, `mutation { createMachine(input: {name: "ok2", configuration: {n: 1.5e300, m: -9223372036854775808}}) { id } }`, nil).OK(t, nil)
}

// An operation's arguments are bounded with each variable counted wherever
// it is used: a request that carries a value once but uses it thousands of
// times is refused before any field reads its arguments, having cost the
// server about its own size.
func TestRepeatedVariablesAreCountedWhereUsed(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.New())
	wf := s.CreateWorkflow(t, u.Token, "main")

	requireRefusedCheaply := func(t *testing.T, query string, vars map[string]any) {
		t.Helper()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		res := s.Do(t, u.Token, query, vars)
		runtime.ReadMemStats(&after)
		e := res.Code(t, "BAD_USER_INPUT")
		require.Equal(t, "ARGUMENT_SIZE_LIMIT_EXCEEDED", e.Extensions["reason"], "%s", res.Raw)
		// The request is about 1 MB; its expansion would be gigabytes.
		require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(200<<20), "the refusal allocated as if it had expanded the variables")
	}

	t.Run("AStringRepeatedInAJSONLiteral", func(t *testing.T) {
		refs := strings.Repeat("$s ", 4000)
		q := `mutation($s: String) { createMachine(input: {name: "x", configuration: {k: [` + refs + `]}}) { id } }`
		requireRefusedCheaply(t, q, map[string]any{"s": strings.Repeat("a", 900_000)})
		n, err := s.DB.NewSelect().Table("machines").Count(t.Context())
		require.NoError(t, err)
		require.Zero(t, n)
	})

	t.Run("AJobRepeatedInAList", func(t *testing.T) {
		refs := strings.Repeat("$j ", 1000)
		q := `mutation($j: EnqueueJobInput!) { enqueueJobs(input: [` + refs + `]) { id } }`
		requireRefusedCheaply(t, q, map[string]any{"j": map[string]any{"workflowId": wf, "input": apitest.JSONOfSize(60_000)}})
		n, err := s.DB.NewSelect().Table("jobs").Count(t.Context())
		require.NoError(t, err)
		require.Zero(t, n)
	})

	t.Run("AListOfStringsRepeatedInInputObjects", func(t *testing.T) {
		// The argument check ran first, and walked the list at each use:
		// minutes of CPU for this request. The limit refuses it first now,
		// as it refuses it with a bad id in it.
		var objs strings.Builder
		for range 800 {
			objs.WriteString(`{workflowId: $w, requiredCapabilities: $s} `)
		}
		q := `mutation($w: ID!, $s: [String!]) { enqueueJobs(input: [` + objs.String() + `]) { id } }`
		caps := make([]string, 150_000) // within live.MaxDocumentElements
		requireRefusedCheaply(t, q, map[string]any{"w": wf, "s": caps})
		requireRefusedCheaply(t, q, map[string]any{"w": "not-an-id", "s": caps})
	})

	t.Run("TheSameValuesOnceEachAreAccepted", func(t *testing.T) {
		// Ten jobs of 60 KB, each its own value: about what the request carries.
		var in []map[string]any
		for range 10 {
			in = append(in, map[string]any{"workflowId": wf, "input": apitest.JSONOfSize(60_000)})
		}
		var out struct{ EnqueueJobs []struct{ ID string } }
		s.Do(t, u.Token, `mutation($in: [EnqueueJobInput!]!) { enqueueJobs(input: $in) { id } }`, map[string]any{"in": in}).OK(t, &out)
		require.Len(t, out.EnqueueJobs, 10)
		// And a variable used a few times is counted a few times.
		s.Do(t, u.Token, `mutation($j: EnqueueJobInput!) { enqueueJobs(input: [$j $j $j]) { id } }`,
			map[string]any{"j": map[string]any{"workflowId": wf, "input": apitest.JSONOfSize(60_000)}}).OK(t, nil)
	})
}
