package graph_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/auth"
	"fleetgraph/db"
)

// Bad input gets a clear client error and writes nothing. Every case checks
// the error's code (and field or reason), that the response names no SQL,
// that nothing was logged as internal, and, in the database, that no row
// appeared, vanished or changed.

// badCase is one request the API must refuse.
type badCase struct {
	name  string
	query string
	vars  map[string]any
	code  string
	// field is the expected extensions.field, when the error names one.
	field string
	// reason is the expected extensions.reason of a request refused before execution.
	reason string
	// bug, when set, describes a known server bug this case still shows: see
	// badKnownBug.
	bug string
}

// badKnownBug is a tripwire for a bug the server still has: the case asserts
// the wrong behaviour it shows today (INTERNAL for a client error) so the
// suite stays green, and fails the moment the bug is fixed, so that whoever
// fixes it deletes the case's bug field and the case checks the contract.
func badKnownBug(t *testing.T, resp *apitest.Response, bug string) {
	t.Helper()
	require.NotEmpty(t, resp.Errors, "BUG FIXED? %s: the request now succeeds: %s", bug, resp.Raw)
	require.Equal(t, "INTERNAL", resp.Errors[0].Code(),
		"BUG FIXED? %s: delete this case's bug field so it asserts the contract; response: %s", bug, resp.Raw)
	t.Logf("known bug, still present: %s", bug)
}

// badSnapshot describes, in one statement, everything a refused request must
// leave as it was: how many rows each table has, and the fixture machine's
// row with its deployments and events.
func badSnapshot(t *testing.T, s *apitest.Server, machineID string) string {
	t.Helper()
	var snap string
	err := s.DB.NewRaw(`SELECT concat_ws(E'\n',
			(SELECT count(*) FROM machines), (SELECT count(*) FROM machine_events), (SELECT count(*) FROM deployments),
			(SELECT concat_ws(' | ', name, status, configuration::text, version, updated_at, last_started_at, last_stopped_at) FROM machines WHERE id = ?0),
			(SELECT string_agg(concat_ws(' ', id, name, version, status, settings::text, activated_at, superseded_at), ', ' ORDER BY id) FROM deployments WHERE machine_id = ?0),
			(SELECT string_agg(concat_ws(' ', id, event_type, details::text), ', ' ORDER BY id) FROM machine_events WHERE machine_id = ?0))`,
		machineID).Scan(t.Context(), &snap)
	require.NoError(t, err)
	return snap
}

// badFixture is a user with a RUNNING machine (an ACTIVE deployment, events)
// and a second machine whose name is taken.
type badFixture struct {
	s           *apitest.Server
	user        apitest.User
	machine     string
	taken       string
	eventCursor string
	machCursor  string
	slot        int // index of the fixture in a pool
}

func badNewFixture(t *testing.T) badFixture {
	t.Helper()
	s := apitest.New(t)
	f := badFixture{s: s, user: s.NewUser(t, uuid.Nil)}
	f.taken = isoCreate(t, s, f.user.Token, "taken")
	f.machine = isoCreate(t, s, f.user.Token, "press")
	isoDo(t, s, f.user.Token, `mutation($id: ID!) { startMachine(id: $id) { id } }`, map[string]any{"id": f.machine}, nil)
	isoDo(t, s, f.user.Token, `mutation($id: ID!) { deployProtocol(machineId: $id, protocol: {name: "stamping", version: "1.0.0"}) { id } }`,
		map[string]any{"id": f.machine}, nil)
	var evs struct {
		MachineEvents struct{ PageInfo struct{ EndCursor string } }
	}
	isoDo(t, s, f.user.Token, `query($id: ID!) { machineEvents(machineId: $id, first: 1) { pageInfo { endCursor } } }`,
		map[string]any{"id": f.machine}, &evs)
	f.eventCursor = evs.MachineEvents.PageInfo.EndCursor
	var ms struct {
		Machines struct{ PageInfo struct{ EndCursor string } }
	}
	isoDo(t, s, f.user.Token, `{ machines(first: 1) { pageInfo { endCursor } } }`, nil, &ms)
	f.machCursor = ms.Machines.PageInfo.EndCursor
	require.NotEmpty(t, f.eventCursor)
	require.NotEmpty(t, f.machCursor)
	return f
}

const (
	badGQLValidation = "GRAPHQL_VALIDATION_FAILED"
	badGQLParse      = "GRAPHQL_PARSE_FAILED"
)

// badCases are the refusals of every mutation and list query.
func badCases(f badFixture) []badCase {
	id, unknown := f.machine, uuid.NewString()
	over := apitest.JSONOfSize(db.MaxJSONBytes + 1)
	withID := func(extra map[string]any) map[string]any {
		v := map[string]any{"id": id}
		for k, x := range extra {
			v[k] = x
		}
		return v
	}

	cases := []badCase{
		// Missing arguments and fields: refused by GraphQL validation before execution.
		{name: "createMachine/MissingInput", query: `mutation { createMachine { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "createMachine/MissingName", query: `mutation { createMachine(input: {}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "createMachine/NullName", query: `mutation { createMachine(input: {name: null}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "createMachine/NameAsNumber", query: `mutation { createMachine(input: {name: 5}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "createMachine/UnknownInputField", query: `mutation { createMachine(input: {name: "x", colour: "red"}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "createMachine/UnknownResultField", query: `mutation { createMachine(input: {name: "x"}) { id owner } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "createMachine/SyntaxError", query: `mutation { createMachine(input: {name: "x"}) { id }`, code: "BAD_USER_INPUT", reason: badGQLParse},
		{name: "updateMachine/MissingID", query: `mutation { updateMachine(input: {name: "x"}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "updateMachine/MissingInput", query: `mutation($id: ID!) { updateMachine(id: $id) { id } }`, vars: withID(nil), code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "deleteMachine/MissingID", query: `mutation { deleteMachine }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "startMachine/MissingID", query: `mutation { startMachine { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "stopMachine/MissingID", query: `mutation { stopMachine { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "deployProtocol/MissingMachineID", query: `mutation { deployProtocol(protocol: {name: "p", version: "1.0.0"}) { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "deployProtocol/MissingProtocol", query: `mutation($id: ID!) { deployProtocol(machineId: $id) { id } }`, vars: withID(nil), code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "deployProtocol/MissingVersion", query: `mutation($id: ID!) { deployProtocol(machineId: $id, protocol: {name: "p"}) { id } }`, vars: withID(nil), code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "logMachineEvent/MissingEventType", query: `mutation($id: ID!) { logMachineEvent(machineId: $id) { id } }`, vars: withID(nil), code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "logMachineEvent/MissingMachineID", query: `mutation { logMachineEvent(eventType: "x") { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "machine/MissingID", query: `{ machine { id } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "machineEvents/MissingMachineID", query: `{ machineEvents { totalCount } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "machines/FirstAsString", query: `{ machines(first: "3") { totalCount } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "machines/StatusNotInEnum", query: `{ machines(filter: {status: BROKEN}) { totalCount } }`, code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "machineEvents/FirstAsString", query: `query($id: ID!) { machineEvents(machineId: $id, first: "3") { totalCount } }`, vars: withID(nil), code: "BAD_USER_INPUT", reason: badGQLValidation},
		{name: "startMachine/UnusedVariable", query: `mutation($id: ID!, $x: Int) { startMachine(id: $id) { id } }`, vars: withID(nil), code: "BAD_USER_INPUT", reason: badGQLValidation},

		// Variables that are missing, null or of the wrong type.
		{name: "createMachine/VariableMissing", query: `mutation($in: CreateMachineInput!) { createMachine(input: $in) { id } }`, code: "BAD_USER_INPUT"},
		{name: "createMachine/VariableWithoutName", query: `mutation($in: CreateMachineInput!) { createMachine(input: $in) { id } }`, vars: map[string]any{"in": map[string]any{}}, code: "BAD_USER_INPUT"},
		{name: "createMachine/VariableWithUnknownField", query: `mutation($in: CreateMachineInput!) { createMachine(input: $in) { id } }`, vars: map[string]any{"in": map[string]any{"name": "x", "colour": "red"}}, code: "BAD_USER_INPUT"},
		{name: "createMachine/VariableInputAsString", query: `mutation($in: CreateMachineInput!) { createMachine(input: $in) { id } }`, vars: map[string]any{"in": "x"}, code: "BAD_USER_INPUT"},
		{name: "startMachine/NullIDVariable", query: `mutation($id: ID!) { startMachine(id: $id) { id } }`, vars: map[string]any{"id": nil}, code: "BAD_USER_INPUT"},
		{name: "machines/FirstVariableAsWord", query: `query($f: Int) { machines(first: $f) { totalCount } }`, vars: map[string]any{"f": "three"}, code: "BAD_USER_INPUT"},
		{name: "machines/FirstVariableAsFraction", query: `query($f: Int) { machines(first: $f) { totalCount } }`, vars: map[string]any{"f": 1.5}, code: "BAD_USER_INPUT"},
		{name: "machines/StatusVariableNotInEnum", query: `query($f: MachineFilter) { machines(filter: $f) { totalCount } }`, vars: map[string]any{"f": map[string]any{"status": "BROKEN"}}, code: "BAD_USER_INPUT"},
		{name: "machineEvents/NullEventTypeVariable", query: `query($id: ID!, $t: [String!]) { machineEvents(machineId: $id, eventTypes: $t) { totalCount } }`, vars: withID(map[string]any{"t": []any{nil}}), code: "BAD_USER_INPUT"},

		// JSON arguments that are not objects.
		{name: "createMachine/ConfigurationArray", query: `mutation($c: JSON) { createMachine(input: {name: "x", configuration: $c}) { id } }`, vars: map[string]any{"c": []any{1, 2}}, code: "BAD_USER_INPUT"},
		{name: "createMachine/ConfigurationString", query: `mutation($c: JSON) { createMachine(input: {name: "x", configuration: $c}) { id } }`, vars: map[string]any{"c": `{"cpu": 2}`}, code: "BAD_USER_INPUT"},
		{name: "createMachine/ConfigurationNumber", query: `mutation($c: JSON) { createMachine(input: {name: "x", configuration: $c}) { id } }`, vars: map[string]any{"c": 42}, code: "BAD_USER_INPUT"},
		{name: "createMachine/ConfigurationBoolean", query: `mutation($c: JSON) { createMachine(input: {name: "x", configuration: $c}) { id } }`, vars: map[string]any{"c": true}, code: "BAD_USER_INPUT"},
		{name: "createMachine/ConfigurationArrayLiteral", query: `mutation { createMachine(input: {name: "x", configuration: [1, 2]}) { id } }`, code: "BAD_USER_INPUT"},
		{name: "createMachine/ConfigurationStringLiteral", query: `mutation { createMachine(input: {name: "x", configuration: "{}"}) { id } }`, code: "BAD_USER_INPUT"},
		{name: "createMachine/ConfigurationNumberLiteral", query: `mutation { createMachine(input: {name: "x", configuration: 42}) { id } }`, code: "BAD_USER_INPUT"},
		{name: "updateMachine/ConfigurationArray", query: `mutation($id: ID!, $c: JSON) { updateMachine(id: $id, input: {configuration: $c}) { id } }`, vars: withID(map[string]any{"c": []any{}}), code: "BAD_USER_INPUT"},
		{name: "deployProtocol/SettingsArray", query: `mutation($id: ID!, $c: JSON) { deployProtocol(machineId: $id, protocol: {name: "p", version: "1.0.0", settings: $c}) { id } }`, vars: withID(map[string]any{"c": []any{}}), code: "BAD_USER_INPUT"},
		// logMachineEvent's details take a string too (eventdetails_test.go), nothing else.
		{name: "logMachineEvent/DetailsNumber", query: `mutation($id: ID!, $c: JSON) { logMachineEvent(machineId: $id, eventType: "x", details: $c) { id } }`, vars: withID(map[string]any{"c": 42}), code: "BAD_USER_INPUT"},
		{name: "logMachineEvent/DetailsArrayLiteral", query: `mutation($id: ID!) { logMachineEvent(machineId: $id, eventType: "x", details: ["a"]) { id } }`, vars: withID(nil), code: "BAD_USER_INPUT"},

		// Pagination.
		{name: "machines/NegativeFirst", query: `{ machines(first: -1) { totalCount } }`, code: "BAD_USER_INPUT", field: "first"},
		{name: "machineEvents/NegativeFirst", query: `query($id: ID!) { machineEvents(machineId: $id, first: -1) { totalCount } }`, vars: withID(nil), code: "BAD_USER_INPUT", field: "first"},
		{name: "Machine.events/NegativeFirst", query: `query($id: ID!) { machine(id: $id) { events(first: -1) { totalCount } } }`, vars: withID(nil), code: "BAD_USER_INPUT", field: "first"},
		{name: "Machine.deployments/NegativeFirst", query: `query($id: ID!) { machine(id: $id) { deployments(first: -1) { id } } }`, vars: withID(nil), code: "BAD_USER_INPUT", field: "first"},
		{name: "machines/GarbageCursor", query: `{ machines(after: "garbage!") { totalCount } }`, code: "BAD_USER_INPUT", field: "after"},
		{name: "machines/EventCursor", query: `query($a: String) { machines(after: $a) { totalCount } }`, vars: map[string]any{"a": f.eventCursor}, code: "BAD_USER_INPUT", field: "after"},
		{name: "machines/CursorWithBadPosition", query: `query($a: String) { machines(after: $a) { totalCount } }`, vars: map[string]any{"a": base64.RawURLEncoding.EncodeToString([]byte("machine:yesterday|x"))}, code: "BAD_USER_INPUT", field: "after"},
		{name: "machineEvents/GarbageCursor", query: `query($id: ID!) { machineEvents(machineId: $id, after: "garbage!") { totalCount } }`, vars: withID(nil), code: "BAD_USER_INPUT", field: "after"},
		{name: "machineEvents/MachineCursor", query: `query($id: ID!, $a: String) { machineEvents(machineId: $id, after: $a) { totalCount } }`, vars: withID(map[string]any{"a": f.machCursor}), code: "BAD_USER_INPUT", field: "after"},
		{name: "machineEvents/NegativeSeqCursor", query: `query($id: ID!, $a: String) { machineEvents(machineId: $id, after: $a) { totalCount } }`, vars: withID(map[string]any{"a": base64.RawURLEncoding.EncodeToString([]byte("event:-5"))}), code: "BAD_USER_INPUT", field: "after"},
		{name: "machines/NameContainsTooLong", query: `query($f: MachineFilter) { machines(filter: $f) { totalCount } }`, vars: map[string]any{"f": map[string]any{"nameContains": strings.Repeat("a", 101)}}, code: "BAD_USER_INPUT", field: "filter.nameContains"},
		{name: "machines/NameContainsNUL", query: `query($f: MachineFilter) { machines(filter: $f) { totalCount } }`, vars: map[string]any{"f": map[string]any{"nameContains": "a\u0000"}}, code: "BAD_USER_INPUT", field: "filter.nameContains"},
		{name: "machineEvents/TooManyEventTypes", query: `query($id: ID!, $t: [String!]) { machineEvents(machineId: $id, eventTypes: $t) { totalCount } }`, vars: withID(map[string]any{"t": badManyTypes(51)}), code: "BAD_USER_INPUT", field: "eventTypes"},
	}

	for _, bad := range []string{"Error", "1abc", "", "with space", "a b", strings.Repeat("a", 65), "é"} {
		cases = append(cases,
			badCase{name: fmt.Sprintf("logMachineEvent/EventType%q", bad), query: `mutation($id: ID!, $t: String!) { logMachineEvent(machineId: $id, eventType: $t) { id } }`,
				vars: withID(map[string]any{"t": bad}), code: "BAD_USER_INPUT", field: "eventType"},
			badCase{name: fmt.Sprintf("machineEvents/EventTypes%q", bad), query: `query($id: ID!, $t: [String!]) { machineEvents(machineId: $id, eventTypes: $t) { totalCount } }`,
				vars: withID(map[string]any{"t": []any{"telemetry", bad}}), code: "BAD_USER_INPUT", field: "eventTypes"},
		)
	}

	// Ids: malformed ones are BAD_USER_INPUT, well-formed unknown ones NOT_FOUND.
	idOps := []struct{ name, query string }{
		{"machineEvents", `query($id: ID!) { machineEvents(machineId: $id) { totalCount } }`},
		{"updateMachine", `mutation($id: ID!) { updateMachine(id: $id, input: {name: "x"}) { id } }`},
		{"deleteMachine", `mutation($id: ID!) { deleteMachine(id: $id) }`},
		{"startMachine", `mutation($id: ID!) { startMachine(id: $id) { id } }`},
		{"stopMachine", `mutation($id: ID!) { stopMachine(id: $id) { id } }`},
		{"deployProtocol", `mutation($id: ID!) { deployProtocol(machineId: $id, protocol: {name: "p", version: "1.0.0"}) { id } }`},
		{"logMachineEvent", `mutation($id: ID!) { logMachineEvent(machineId: $id, eventType: "x") { id } }`},
	}
	for _, op := range idOps {
		cases = append(cases,
			badCase{name: op.name + "/UnknownID", query: op.query, vars: map[string]any{"id": unknown}, code: "NOT_FOUND"},
			badCase{name: op.name + "/MalformedID", query: op.query, vars: map[string]any{"id": "not-a-uuid"}, code: "BAD_USER_INPUT"},
			badCase{name: op.name + "/UUIDWithoutDashes", query: op.query, vars: map[string]any{"id": strings.ReplaceAll(id, "-", "")}, code: "BAD_USER_INPUT"},
			badCase{name: op.name + "/UUIDInBraces", query: op.query, vars: map[string]any{"id": "{" + id + "}"}, code: "BAD_USER_INPUT"},
			badCase{name: op.name + "/IDAsNumber", query: op.query, vars: map[string]any{"id": 42}, code: "BAD_USER_INPUT"},
			badCase{name: op.name + "/IDAsNumberLiteral", query: strings.Replace(strings.Replace(op.query, "($id: ID!)", "", 1), "$id", "42", 1), code: "BAD_USER_INPUT"},
		)
	}
	cases = append(cases, badCase{name: "machine/MalformedID", query: `query($id: ID!) { machine(id: $id) { id } }`, vars: map[string]any{"id": "not-a-uuid"}, code: "BAD_USER_INPUT"})

	// Names, on create, rename and protocols.
	badNames := map[string]string{
		"Empty":           "",
		"OnlySpaces":      "   ",
		"OnlyWhitespace":  "\t\n\u00a0",
		"TooLong":         strings.Repeat("a", 101),
		"TooLongRunes":    strings.Repeat("é", 101),
		"ControlChar":     "press\u0001",
		"NUL":             "pre\u0000ss",
		"EmbeddedNewline": "press\n01",
		"Escape":          "press\u001b[31m",
	}
	for _, label := range slices.Sorted(maps.Keys(badNames)) {
		name := badNames[label]
		cases = append(cases,
			badCase{name: "createMachine/Name" + label, query: `mutation($n: String!) { createMachine(input: {name: $n}) { id } }`,
				vars: map[string]any{"n": name}, code: "BAD_USER_INPUT", field: "name"},
			badCase{name: "updateMachine/Name" + label, query: `mutation($id: ID!, $n: String) { updateMachine(id: $id, input: {name: $n, configuration: {x: 1}}) { id } }`,
				vars: withID(map[string]any{"n": name}), code: "BAD_USER_INPUT", field: "name"},
			badCase{name: "deployProtocol/Name" + label, query: `mutation($id: ID!, $n: String!) { deployProtocol(machineId: $id, protocol: {name: $n, version: "1.0.0"}) { id } }`,
				vars: withID(map[string]any{"n": name}), code: "BAD_USER_INPUT", field: "protocol.name"},
		)
	}
	cases = append(cases, badCase{name: "createMachine/NameNULLiteral", query: `mutation { createMachine(input: {name: "pre\u0000ss"}) { id } }`, code: "BAD_USER_INPUT", field: "name"})

	// Duplicate names, compared case-insensitively after trimming.
	for _, name := range []string{"taken", "TAKEN", "  Taken  "} {
		cases = append(cases,
			badCase{name: fmt.Sprintf("createMachine/Duplicate%q", name), query: `mutation($n: String!) { createMachine(input: {name: $n}) { id } }`,
				vars: map[string]any{"n": name}, code: "CONFLICT", field: "name"},
			badCase{name: fmt.Sprintf("updateMachine/RenameInto%q", name), query: `mutation($id: ID!, $n: String) { updateMachine(id: $id, input: {name: $n, configuration: {x: 1}}) { id } }`,
				vars: withID(map[string]any{"n": name}), code: "CONFLICT", field: "name"},
		)
	}

	// Semantic versions.
	for _, v := range []string{"1.2", "v1.2.3", "01.2.3", "1.02.3", "", "1.2.3.4", "1.2.3-", "1.2.3+", " 1.2.3", "1.2.3\n", "1.2.3-" + strings.Repeat("a", 59)} {
		cases = append(cases, badCase{name: fmt.Sprintf("deployProtocol/Version%q", v),
			query: `mutation($id: ID!, $v: String!) { deployProtocol(machineId: $id, protocol: {name: "p", version: $v}) { id } }`,
			vars:  withID(map[string]any{"v": v}), code: "BAD_USER_INPUT", field: "protocol.version"})
	}

	// JSON documents: size, NUL characters and numbers numeric cannot hold.
	type jsonArg struct{ op, field, query string }
	jsonArgs := []jsonArg{
		{"createMachine", "configuration", `mutation($c: JSON) { createMachine(input: {name: "x", configuration: $c}) { id } }`},
		{"updateMachine", "configuration", `mutation($id: ID!, $c: JSON) { updateMachine(id: $id, input: {name: "renamed", configuration: $c}) { id } }`},
		{"deployProtocol", "protocol.settings", `mutation($id: ID!, $c: JSON) { deployProtocol(machineId: $id, protocol: {name: "p", version: "1.0.0", settings: $c}) { id } }`},
		{"logMachineEvent", "details", `mutation($id: ID!, $c: JSON) { logMachineEvent(machineId: $id, eventType: "error", details: $c) { id } }`},
	}
	manyExponents := map[string]any{}
	for i := range 1000 {
		manyExponents[fmt.Sprintf("k%d", i)] = json.Number("1e300")
	}
	badDocs := map[string]map[string]any{
		"OverTheLimit":                over,
		"NestedOverTheLimit":          {"a": map[string]any{"b": []any{over}}},
		"NULInValue":                  {"k": "a\u0000b"},
		"NULInKey":                    {"a\u0000": 1},
		"NULDeepInArray":              {"k": []any{"ok", map[string]any{"x": "\u0000"}}},
		"NumberOverflowsNumeric":      {"x": json.Number("1e1000000")},
		"NumberWithHugeExponent":      {"x": json.Number("1e99999999999999999999")},
		"NumberUnderflowsNumeric":     {"x": json.Number("1e-20000")},
		"TooManyFractionDigits":       {"x": json.Number("0." + strings.Repeat("1", 17000))},
		"ExponentsExpandPastTheLimit": manyExponents,
	}
	for _, arg := range jsonArgs {
		for _, label := range slices.Sorted(maps.Keys(badDocs)) {
			doc := badDocs[label]
			cases = append(cases, badCase{name: arg.op + "/" + label, query: arg.query, vars: withID(map[string]any{"c": doc}),
				code: "BAD_USER_INPUT", field: arg.field})
		}
	}
	cases = append(cases, badCase{name: "createMachine/NULInConfigurationLiteral",
		query: `mutation { createMachine(input: {name: "x", configuration: {k: "a\u0000b"}}) { id } }`, code: "BAD_USER_INPUT", field: "configuration"})
	return cases
}

func badManyTypes(n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = fmt.Sprintf("type%d", i)
	}
	return out
}

func TestBadInputIsRefusedAndWritesNothing(t *testing.T) {
	t.Parallel()
	// Each case compares a whole database before and after its request, so
	// a database serves one case at a time; a small pool of fixtures, each
	// with its own server and database, lets cases run side by side.
	const servers = 3
	pool := make(chan badFixture, servers)
	var cases [servers][]badCase
	for i := range servers {
		f := badNewFixture(t)
		cases[i] = badCases(f)
		f.slot = i
		pool <- f
	}
	for i, c := range cases[0] {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := <-pool
			defer func() { pool <- f }()
			c := cases[f.slot][i] // the same case, with this fixture's ids
			require.Equal(t, c.name, cases[0][i].name)
			s := f.s

			before := badSnapshot(t, s, f.machine)
			logged := len(s.Log.String())

			resp := s.Do(t, f.user.Token, c.query, c.vars)

			require.Less(t, resp.Status, 500, "response: %s", resp.Raw)
			apitest.RequireNoLeak(t, resp.Raw)
			apitest.RequireNoData(t, resp)
			if c.bug != "" {
				badKnownBug(t, resp, c.bug)
			} else {
				e := resp.Code(t, c.code)
				require.NotEmpty(t, e.Message)
				if c.field != "" {
					require.Equal(t, c.field, e.Extensions["field"], "response: %s", resp.Raw)
				}
				if c.reason != "" {
					require.Equal(t, c.reason, e.Extensions["reason"], "response: %s", resp.Raw)
				}
				require.NotContains(t, s.Log.String()[logged:], "internal error")
			}
			require.Equal(t, before, badSnapshot(t, s, f.machine), "a refused request changed data")
		})
	}
}

func TestBadInputBoundariesAreAccepted(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	type created struct {
		ID            string
		Name          string
		Configuration map[string]any
	}
	create := func(t *testing.T, token, name string, cfg map[string]any) created {
		t.Helper()
		var out struct{ CreateMachine created }
		isoDo(t, s, token, `mutation($n: String!, $c: JSON) { createMachine(input: {name: $n, configuration: $c}) { id name configuration } }`,
			map[string]any{"n": name, "c": cfg}, &out)
		return out.CreateMachine
	}

	t.Run("NamesOf100Characters", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.Nil)
		m := create(t, u.Token, strings.Repeat("é", 100), nil)
		require.Equal(t, strings.Repeat("é", 100), m.Name)
		m2 := create(t, u.Token, "  "+strings.Repeat("a", 100)+"\t", nil)
		require.Equal(t, strings.Repeat("a", 100), m2.Name, "surrounding whitespace is trimmed before counting")

		var upd struct{ UpdateMachine struct{ Name string } }
		isoDo(t, s, u.Token, `mutation($id: ID!, $n: String) { updateMachine(id: $id, input: {name: $n}) { name } }`,
			map[string]any{"id": m.ID, "n": strings.Repeat("ü", 100)}, &upd)
		require.Equal(t, strings.Repeat("ü", 100), upd.UpdateMachine.Name)
		// Renaming a machine to its own name in another case is no conflict.
		isoDo(t, s, u.Token, `mutation($id: ID!) { updateMachine(id: $id, input: {name: "AAAA"}) { name } }`, map[string]any{"id": m2.ID}, nil)
		isoDo(t, s, u.Token, `mutation($id: ID!) { updateMachine(id: $id, input: {name: "aaaa"}) { name } }`, map[string]any{"id": m2.ID}, nil)

		var dep struct{ DeployProtocol struct{ Name string } }
		isoDo(t, s, u.Token, `mutation($id: ID!, $n: String!) { deployProtocol(machineId: $id, protocol: {name: $n, version: "1.0.0"}) { name } }`,
			map[string]any{"id": m.ID, "n": strings.Repeat("é", 100)}, &dep)
		require.Equal(t, strings.Repeat("é", 100), dep.DeployProtocol.Name)
	})

	t.Run("JSONAtTheSizeLimit", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.Nil)
		doc := apitest.JSONOfSize(db.MaxJSONBytes)
		b, err := json.Marshal(doc)
		require.NoError(t, err)
		require.Len(t, b, db.MaxJSONBytes)

		m := create(t, u.Token, "at-limit", doc)
		require.Equal(t, doc, m.Configuration)
		isoDo(t, s, u.Token, `mutation($id: ID!, $c: JSON) { updateMachine(id: $id, input: {configuration: $c}) { id } }`,
			map[string]any{"id": m.ID, "c": doc}, nil)
		isoDo(t, s, u.Token, `mutation($id: ID!, $c: JSON) { deployProtocol(machineId: $id, protocol: {name: "p", version: "1.0.0", settings: $c}) { id } }`,
			map[string]any{"id": m.ID, "c": doc}, nil)
		var ev struct {
			LogMachineEvent struct{ Details map[string]any }
		}
		isoDo(t, s, u.Token, `mutation($id: ID!, $c: JSON) { logMachineEvent(machineId: $id, eventType: "x", details: $c) { details } }`,
			map[string]any{"id": m.ID, "c": doc}, &ev)
		require.Equal(t, doc, ev.LogMachineEvent.Details)
	})

	t.Run("JSONIsMeasuredAsStored", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.Nil)
		// "<" is one byte in jsonb, not the six of Go's HTML-safe \u003c.
		html := map[string]any{"k": strings.Repeat("<", db.MaxJSONBytes-len(`{"k":""}`))}
		require.Equal(t, html, create(t, u.Token, "html", html).Configuration)
		// A backslash followed by u0000 is text, not a NUL character.
		text := map[string]any{"path": `C:\u0000\new`}
		require.Equal(t, text, create(t, u.Token, "backslash", text).Configuration)
		// Exponents within numeric's range are stored written out.
		nums := map[string]any{"big": json.Number("1e300"), "small": json.Number("1.5e-3"), "neg": json.Number("-2.5E+2"), "tiny": json.Number("1e-16383")}
		got := create(t, u.Token, "numbers", nums).Configuration
		require.InDelta(t, 1e300, got["big"], 1e285)
		require.InDelta(t, 0.0015, got["small"], 1e-12)
		require.InDelta(t, -250.0, got["neg"], 1e-12)
		require.Zero(t, got["tiny"])
	})

	t.Run("SemanticVersions", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.Nil)
		m := create(t, u.Token, "semver", nil)
		for _, v := range []string{"1.2.3", "2.0.0-rc.1+build.5", "0.0.0", "10.20.30-alpha.beta+exp.sha.5114f85", "1.0.0-0A.is.legal"} {
			var out struct{ DeployProtocol struct{ Version string } }
			isoDo(t, s, u.Token, `mutation($id: ID!, $v: String!) { deployProtocol(machineId: $id, protocol: {name: "p", version: $v}) { version } }`,
				map[string]any{"id": m.ID, "v": v}, &out)
			require.Equal(t, v, out.DeployProtocol.Version)
		}
	})

	t.Run("EventTypes", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.Nil)
		m := create(t, u.Token, "events", nil)
		for _, et := range []string{"a", strings.Repeat("a", 64), "telemetry.temp-1_x"} {
			var out struct{ LogMachineEvent struct{ EventType string } }
			isoDo(t, s, u.Token, `mutation($id: ID!, $t: String!) { logMachineEvent(machineId: $id, eventType: $t) { eventType } }`,
				map[string]any{"id": m.ID, "t": et}, &out)
			require.Equal(t, et, out.LogMachineEvent.EventType)
		}
		var evs struct{ MachineEvents struct{ TotalCount int } }
		isoDo(t, s, u.Token, `query($id: ID!, $t: [String!]) { machineEvents(machineId: $id, eventTypes: $t) { totalCount } }`,
			map[string]any{"id": m.ID, "t": badManyTypes(50)}, &evs)
		require.Zero(t, evs.MachineEvents.TotalCount, "50 types are allowed")
	})

	t.Run("UnknownIDIsNullForMachine", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.Nil)
		var out struct{ Machine *struct{ ID string } }
		isoDo(t, s, u.Token, `query($id: ID!) { machine(id: $id) { id } }`, map[string]any{"id": uuid.NewString()}, &out)
		require.Nil(t, out.Machine)
	})

	t.Run("HugeFirstIsCappedAt500", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.Nil)
		var ids []string
		for i := range 3 {
			ids = append(ids, create(t, u.Token, fmt.Sprintf("m%d", i), nil).ID)
		}
		got, total := isoVisibleIDs(t, s, u.Token, map[string]any{"first": 100000})
		require.ElementsMatch(t, ids, got)
		require.Equal(t, 3, total)
		var evs struct {
			MachineEvents struct {
				Edges []struct{ Node struct{ ID string } }
			}
		}
		isoDo(t, s, u.Token, `query($id: ID!) { machineEvents(machineId: $id, first: 100000) { edges { node { id } } } }`,
			map[string]any{"id": ids[0]}, &evs)
		require.Len(t, evs.MachineEvents.Edges, 1)

		// With more than 500 machines the cap shows.
		_, err := s.DB.NewRaw(`INSERT INTO machines (tenant_id, owner_id, name) SELECT ?, ?, 'bulk-' || g FROM generate_series(1, 510) AS g`,
			auth.DefaultTenant, u.ID).Exec(t.Context())
		require.NoError(t, err)
		var page struct {
			Machines struct {
				TotalCount int
				PageInfo   struct{ HasNextPage bool }
				Edges      []struct{ Node struct{ ID string } }
			}
		}
		isoDo(t, s, u.Token, `{ machines(first: 100000) { totalCount pageInfo { hasNextPage } edges { node { id } } } }`, nil, &page)
		require.Len(t, page.Machines.Edges, db.MaxPageSize)
		require.True(t, page.Machines.PageInfo.HasNextPage)
		require.Equal(t, 513, page.Machines.TotalCount)
	})

	t.Run("NameContainsMatchesWildcardsLiterally", func(t *testing.T) {
		t.Parallel()
		u := s.NewUser(t, uuid.Nil)
		byName := map[string]string{}
		for _, name := range []string{"a%b", "axb", "a_b", `a\b`} {
			byName[create(t, u.Token, name, nil).ID] = name
		}
		for needle, want := range map[string][]string{
			"%":   {"a%b"},
			"_":   {"a_b"},
			`\`:   {`a\b`},
			"A%B": {"a%b"},
			"x":   {"axb"},
			"a":   {"a%b", "axb", "a_b", `a\b`},
			"%%":  {},
		} {
			ids, total := isoVisibleIDs(t, s, u.Token, map[string]any{"filter": map[string]any{"nameContains": needle}})
			names := []string{}
			for _, id := range ids {
				names = append(names, byName[id])
			}
			require.ElementsMatch(t, want, names, "nameContains %q", needle)
			require.Equal(t, len(want), total, "nameContains %q", needle)
		}
	})
}

// badRawError decodes the first error of a response body of any content type.
func badRawError(t *testing.T, raw []byte) apitest.Error {
	t.Helper()
	var body struct{ Errors []apitest.Error }
	require.NoError(t, json.Unmarshal(raw, &body), "the body must be a GraphQL error: %s", raw)
	require.NotEmpty(t, body.Errors, "no errors in %s", raw)
	return body.Errors[0]
}

func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	isoCreate(t, s, u.Token, "existing")
	const mutation = `mutation { createMachine(input: {name: \"sneaky\"}) { id } }`
	valid := `{"query": "` + mutation + `"}`

	// Every refusal below carries this mutation in some broken form; none may run it.
	requireNothingWritten := func(t *testing.T, before map[string]int) {
		t.Helper()
		require.Equal(t, before, isoRowCounts(t, s))
		n, err := s.DB.NewSelect().Table("machines").Where("name = 'sneaky'").Count(t.Context())
		require.NoError(t, err)
		require.Zero(t, n)
	}

	// Every broken body is a 4xx with a GraphQL error coded BAD_USER_INPUT:
	// broken JSON 400, a content type other than JSON 415.
	cases := []struct {
		name, contentType, body string
		wantCode                string
	}{
		{"NotJSON", "application/json", "hello", "BAD_USER_INPUT"},
		{"TruncatedJSON", "application/json", valid[:len(valid)-2], "BAD_USER_INPUT"},
		{"ArrayAtTopLevel", "application/json", "[" + valid + "]", "BAD_USER_INPUT"},
		{"QueryNotAString", "application/json", `{"query": 5}`, "BAD_USER_INPUT"},
		{"QueryAnObject", "application/json", `{"query": {"mutation": "createMachine"}}`, "BAD_USER_INPUT"},
		{"VariablesAnArray", "application/json", `{"query": "` + mutation + `", "variables": [1]}`, "BAD_USER_INPUT"},
		{"EmptyBody", "application/json", "", "BAD_USER_INPUT"},
		{"NoQuery", "application/json", `{}`, "BAD_USER_INPUT"},
		{"EmptyQuery", "application/json", `{"query": ""}`, "BAD_USER_INPUT"},
		{"TextPlain", "text/plain", valid, "BAD_USER_INPUT"},
		{"NoContentType", "", valid, "BAD_USER_INPUT"},
		{"FormURLEncoded", "application/x-www-form-urlencoded", "query=" + url.QueryEscape(strings.ReplaceAll(mutation, `\"`, `"`)), "BAD_USER_INPUT"},
		{"Multipart", "multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n" + valid + "\r\n--x--\r\n", "BAD_USER_INPUT"},
		{"XML", "application/xml", "<query>" + mutation + "</query>", "BAD_USER_INPUT"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := isoRowCounts(t, s)
			resp := s.Post(t, u.Token, c.contentType, []byte(c.body))
			require.GreaterOrEqual(t, resp.Status, 400, "response: %s", resp.Raw)
			require.Less(t, resp.Status, 500, "response: %s", resp.Raw)
			apitest.RequireNoLeak(t, resp.Raw)
			e := badRawError(t, resp.Raw)
			require.NotEmpty(t, e.Message)
			require.Equal(t, c.wantCode, e.Code(), "response: %s", resp.Raw)
			requireNothingWritten(t, before)
		})
	}

	t.Run("ControlValidBodyRuns", func(t *testing.T) {
		resp := s.Post(t, u.Token, "application/json", []byte(`{"query": "{ machines { totalCount } }"}`))
		var out struct{ Machines struct{ TotalCount int } }
		resp.OK(t, &out)
		require.Equal(t, 1, out.Machines.TotalCount)
	})

	// padded returns a createMachine request body of exactly n bytes.
	padded := func(t *testing.T, n int) []byte {
		t.Helper()
		head := `{"query": "` + mutation + `", "extensions": {"pad": "`
		tail := `"}}`
		body := head + strings.Repeat("a", n-len(head)-len(tail)) + tail
		require.Len(t, body, n)
		return []byte(body)
	}

	t.Run("BodyOverTheLimitIs413", func(t *testing.T) {
		before := isoRowCounts(t, s)
		resp := s.Post(t, u.Token, "application/json", padded(t, 1<<20+1))
		require.Equal(t, http.StatusRequestEntityTooLarge, resp.Status)
		e := resp.Code(t, "BAD_USER_INPUT")
		require.Contains(t, e.Message, "limit")
		requireNothingWritten(t, before)
	})

	t.Run("BodyAtTheLimitIsAccepted", func(t *testing.T) {
		var out struct{ CreateMachine struct{ ID string } }
		s.Post(t, u.Token, "application/json", padded(t, 1<<20)).OK(t, &out)
		require.NotEmpty(t, out.CreateMachine.ID)
		isoDo(t, s, u.Token, `mutation($id: ID!) { deleteMachine(id: $id) }`, map[string]any{"id": out.CreateMachine.ID}, nil)
	})

	t.Run("ChunkedBodyOverTheLimitIsRefused", func(t *testing.T) {
		before := isoRowCounts(t, s)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL+"/graphql", io.MultiReader(bytes.NewReader(padded(t, 1<<20+1))))
		require.NoError(t, err)
		req.ContentLength = -1 // sent chunked: the limit is only found while reading
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+u.Token)
		resp := s.Send(t, req)
		e := resp.Code(t, "BAD_USER_INPUT")
		require.NotEmpty(t, e.Message)
		apitest.RequireNoLeak(t, resp.Raw)
		requireNothingWritten(t, before)
		require.Equal(t, http.StatusRequestEntityTooLarge, resp.Status)
	})

	get := func(t *testing.T, params url.Values) *apitest.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.URL+"/graphql?"+params.Encode(), nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+u.Token)
		return s.Send(t, req)
	}

	t.Run("GetWithAMutationIsRefused", func(t *testing.T) {
		for _, params := range []url.Values{
			{"query": {`mutation { createMachine(input: {name: "sneaky"}) { id } }`}},
			{"query": {`query A { me { id } } mutation B { createMachine(input: {name: "sneaky"}) { id } }`}, "operationName": {"B"}},
		} {
			before := isoRowCounts(t, s)
			resp := get(t, params)
			// GraphQL over HTTP: 405, here with a code (see refusals.go).
			require.Equal(t, http.StatusMethodNotAllowed, resp.Status, "response: %s", resp.Raw)
			e := badRawError(t, resp.Raw)
			require.Contains(t, e.Message, "GET")
			require.Equal(t, "BAD_USER_INPUT", e.Code())
			requireNothingWritten(t, before)
		}
	})

	t.Run("ControlGetWithAQueryRuns", func(t *testing.T) {
		var out struct{ Machines struct{ TotalCount int } }
		get(t, url.Values{"query": {`{ machines { totalCount } }`}}).OK(t, &out)
		require.Equal(t, 1, out.Machines.TotalCount)
	})
}
