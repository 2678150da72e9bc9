package graph_test

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph"
)

// sugSchemaNames are the names of Fleetgraph's schema: its types, fields,
// arguments, enum values, input fields and directives, without the
// built-in scalars, directives and introspection types every schema has.
func sugSchemaNames(t *testing.T) map[string]bool {
	t.Helper()
	s := graph.NewExecutableSchema(graph.Config{}).Schema()
	names := map[string]bool{}
	builtin := map[string]bool{"Int": true, "Float": true, "String": true, "Boolean": true, "ID": true}
	for name, def := range s.Types {
		if builtin[name] || strings.HasPrefix(name, "__") {
			continue
		}
		names[name] = true
		for _, f := range def.Fields {
			names[f.Name] = true
			for _, a := range f.Arguments {
				names[a.Name] = true
			}
		}
		for _, v := range def.EnumValues {
			names[v.Name] = true
		}
	}
	for name, d := range s.Directives {
		if d.Position != nil && d.Position.Src != nil && !d.Position.Src.BuiltIn {
			names[name] = true
		}
	}
	require.Contains(t, names, "MachineFilter")
	require.Contains(t, names, "RUNNING")
	return names
}

// sugWords are the GraphQL names in a text.
var sugWords = regexp.MustCompile(`[_A-Za-z][_0-9A-Za-z]*`)

// sugEnglish are words of the refusals' own prose that happen to be schema
// names too; they name nothing when they read as English.
var sugEnglish = map[string]bool{"input": true, "type": true, "value": true, "field": true, "here": true, "since": true}

// sugLeaks returns the schema names an error response mentions (in messages,
// paths or extensions) that the request (query and variables) did not.
func sugLeaks(t *testing.T, schema map[string]bool, query string, vars map[string]any, raw []byte) []string {
	t.Helper()
	v, err := json.Marshal(vars)
	require.NoError(t, err)
	named := map[string]bool{}
	for _, w := range sugWords.FindAllString(query+" "+string(v), -1) {
		named[w] = true
	}
	var body struct {
		Errors []json.RawMessage `json:"errors"`
	}
	require.NoError(t, json.Unmarshal(raw, &body), "%s", raw)
	require.NotEmpty(t, body.Errors, "the request must be refused: %s", raw)
	var leaks []string
	for _, e := range body.Errors {
		var parsed struct {
			Message    string         `json:"message"`
			Path       []any          `json:"path"`
			Extensions map[string]any `json:"extensions"`
		}
		require.NoError(t, json.Unmarshal(e, &parsed))
		require.Equal(t, "BAD_USER_INPUT", parsed.Extensions["code"], "%s", e)
		delete(parsed.Extensions, "code")
		delete(parsed.Extensions, "reason")
		rest, err := json.Marshal([]any{parsed.Path, parsed.Extensions})
		require.NoError(t, err)
		for _, w := range sugWords.FindAllString(parsed.Message+" "+string(rest), -1) {
			if schema[w] && !named[w] && !sugEnglish[w] {
				leaks = append(leaks, w+" in "+string(e))
			}
		}
	}
	return leaks
}

// sugAttacks are requests that a client without the schema might send to
// learn it from refusals: misspelt arguments, types, enum values, input
// fields, directives, fragment type conditions and fields, missing
// arguments and fields, and values of the wrong type.
var sugAttacks = []struct {
	name  string
	query string
	vars  map[string]any
}{
	{"MisspeltArgument", `{ machines(filtr: {}) { totalCount } }`, nil},
	{"MisspeltArgumentOfMutation", `mutation { createMachine(inptu: {name: "x"}) { id } }`, nil},
	{"MisspeltArgumentOfSubscriptionField", `subscription { jobUpdated(idd: "x") { id } }`, nil},
	{"MisspeltVariableType", `query($f: MachineFiltr) { machines(filter: $f) { totalCount } }`, nil},
	{"WrongVariableType", `query($f: RobotFilter) { machines(filter: $f) { totalCount } }`, nil},
	{"ScalarVariableForInputObject", `query($f: String) { machines(filter: $f) { totalCount } }`, nil},
	{"MisspeltEnumLiteral", `{ machines(filter: {status: RUNNIN}) { totalCount } }`, nil},
	{"MisspeltEnumLiteralOfJobs", `{ jobs(filter: {status: QUEUE}) { totalCount } }`, nil},
	{"EnumAsString", `{ machines(filter: {status: "RUNNING"}) { totalCount } }`, nil},
	{"MisspeltEnumVariable", `query($f: MachineFilter) { machines(filter: $f) { totalCount } }`, map[string]any{"f": map[string]any{"status": "RUNNIN"}}},
	{"MisspeltInputFieldLiteral", `{ machines(filter: {statu: RUNNING}) { totalCount } }`, nil},
	{"MisspeltInputFieldVariable", `query($f: MachineFilter) { machines(filter: $f) { totalCount } }`, map[string]any{"f": map[string]any{"statu": "RUNNING"}}},
	{"MissingInputFieldLiteral", `mutation { createMachine(input: {}) { id } }`, nil},
	{"MissingInputFieldVariable", `mutation($in: CreateMachineInput!) { createMachine(input: $in) { id } }`, map[string]any{"in": map[string]any{}}},
	{"InputObjectVariableAsNumber", `mutation($in: CreateRobotInput!) { createRobot(input: $in) { id } }`, map[string]any{"in": 5}},
	{"MisspeltDirective", `{ machines @skp(if: true) { totalCount } }`, nil},
	{"MisspeltDirectiveArgument", `{ machines @include(iff: true) { totalCount } }`, nil},
	{"FragmentOnMisspeltType", `{ ...F } fragment F on Quer { __typename }`, nil},
	{"InlineFragmentOnMisspeltType", `{ machines { edges { node { ... on Machin { id } } } } }`, nil},
	{"InlineFragmentOnAnotherType", `{ machines { edges { node { ... on Robot { id } } } } }`, nil},
	{"FragmentOnAnotherType", `{ machines { edges { node { ...R } } } } fragment R on Robot { id }`, nil},
	{"MisspeltField", `{ machines { edges { node { nam } } } }`, nil},
	{"MisspeltRootField", `{ machine_s { totalCount } }`, nil},
	{"MissingRequiredArgument", `{ machine { name } }`, nil},
	{"MissingSelection", `{ machines }`, nil},
	{"SelectionOnScalar", `{ machines { totalCount { x } } }`, nil},
	{"ObjectForInputObjectOfAnotherShape", `{ machines(filter: 5) { totalCount } }`, nil},
	{"ListForEnum", `{ machines(filter: {status: [RUNNING]}) { totalCount } }`, nil},
	{"NullForRequiredInputField", `mutation { createMachine(input: {name: null}) { id } }`, nil},
	{"VariableOfWrongListType", `query($t: [Int!]) { machineEvents(machineId: "` + uuid.Nil.String() + `", eventTypes: $t) { totalCount } }`, nil},
}

func TestSuggestionsAreHiddenWithIntrospectionOff(t *testing.T) {
	t.Parallel()
	schema := sugSchemaNames(t)
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	for _, a := range sugAttacks {
		t.Run(a.name, func(t *testing.T) {
			t.Parallel()
			resp := s.Do(t, u.Token, a.query, a.vars)
			require.Less(t, resp.Status, 500, "%s", resp.Raw)
			require.NotContains(t, string(resp.Raw), "Did you mean")
			require.Empty(t, sugLeaks(t, schema, a.query, a.vars, resp.Raw), "the refusal names the schema")
			for _, e := range resp.Errors {
				require.NotEmpty(t, e.Message)
			}
		})
	}
}

func TestSuggestionsRemainWithIntrospectionOn(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Introspection: true})
	u := s.NewUser(t, uuid.Nil)
	for _, c := range []struct{ query, want string }{
		{`{ machines(filtr: {}) { totalCount } }`, `Did you mean "filter"`},
		{`{ machines(filter: {status: RUNNIN}) { totalCount } }`, `Did you mean the enum value "RUNNING"`},
		{`{ machines(filter: {statu: RUNNING}) { totalCount } }`, `Did you mean "status"`},
		{`query($f: MachineFiltr) { machines(filter: $f) { totalCount } }`, `expecting type "MachineFilter"`},
		{`{ ...F } fragment F on Quer { __typename }`, `Did you mean "Query"`},
		{`{ machines { edges { node { nam } } } }`, `Did you mean "name"`},
		{`{ machines { edges { node { ... on Robot { id } } } } }`, `"Machine"`},
	} {
		resp := s.Do(t, u.Token, c.query, nil)
		require.Equal(t, "BAD_USER_INPUT", resp.Code(t, "BAD_USER_INPUT").Code())
		require.Contains(t, string(resp.Raw), strings.ReplaceAll(c.want, `"`, `\"`), "query %s", c.query)
	}
}

// The leak detector itself must see a leak, or the attack test proves nothing.
func TestSuggestionLeakDetector(t *testing.T) {
	t.Parallel()
	schema := sugSchemaNames(t)
	raw := []byte(`{"errors":[{"message":"Unknown argument \"filtr\" on field \"Query.machines\". Did you mean \"filter\"?","extensions":{"code":"BAD_USER_INPUT"}}]}`)
	require.Len(t, sugLeaks(t, schema, `{ machines(filtr: {}) { totalCount } }`, nil, raw), 2, "Query and filter")
	raw = []byte(`{"errors":[{"message":"must be defined","path":["variable","in","name"],"extensions":{"code":"BAD_USER_INPUT"}}]}`)
	require.Len(t, sugLeaks(t, schema, `mutation($in: CreateMachineInput!) { createMachine(input: $in) { id } }`, map[string]any{"in": map[string]any{}}, raw), 1)
}

// A refusal quotes what it refuses in a few bytes, not as sent: a 100 KB
// field name, argument name or list literal once came back whole in the
// message, on both sides of the introspection switch.
func TestRefusalsQuoteInputInAFewBytes(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 100_000)
	deep := strings.Repeat("[", 4000) + strings.Repeat("]", 4000)
	for _, introspection := range []bool{false, true} {
		s := apitest.New(t, apitest.Options{Introspection: introspection})
		u := s.NewUser(t, uuid.Nil)
		for _, q := range []string{
			`{ ` + long + ` }`,
			`{ machines(` + long + `: 1) { totalCount } }`,
			`{ machines(filter: {nameContains: ` + deep + `}) { totalCount } }`,
		} {
			resp := s.Do(t, u.Token, q, nil)
			resp.Code(t, "BAD_USER_INPUT")
			require.Less(t, len(resp.Raw), 8<<10, "introspection %v: a %d-byte refusal of a %d-byte query", introspection, len(resp.Raw), len(q))
			for _, e := range resp.Errors {
				require.LessOrEqual(t, len(e.Message), 1024+len("…"), "%.200s", e.Message)
			}
		}
	}
}
