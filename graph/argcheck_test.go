package graph_test

import (
	"os"
	"regexp"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// An argument a field would refuse when it reads it is refused before
// anything runs, as a request error without data, so the mutation fields
// before it in the same operation never commit: a client that saw
// `data: null` after the first field had written would retry and write it
// twice. Each case writes an event first, then refuses the second field.
func TestArgumentsAreCheckedBeforeAnythingRuns(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.New())
	var m struct{ CreateMachine struct{ ID string } }
	s.Do(t, u.Token, `mutation { createMachine(input: {name: "m"}) { id } }`, nil).OK(t, &m)
	id := m.CreateMachine.ID
	_, key := s.RobotWithKey(t, u.Token, "r")

	const twoEvents = `mutation($m: ID!, $d: JSON, $n: ID!) {
		a: logMachineEvent(machineId: $m, eventType: "first") { id }
		b: logMachineEvent(machineId: $n, eventType: "second", details: $d) { id } }`
	cases := []struct {
		name, token, query string
		vars               map[string]any
		mentions           string
	}{
		{"AJSONArrayInAVariable", u.Token, twoEvents, map[string]any{"m": id, "n": id, "d": []any{1, 2}}, "$d"},
		{"AJSONNumberInAVariable", u.Token, twoEvents, map[string]any{"m": id, "n": id, "d": 5}, "$d"},
		{"AnIDThatIsNoUUIDInAVariable", u.Token, twoEvents, map[string]any{"m": id, "n": "nope"}, "$n"},
		{"AnIDNumberInAVariable", u.Token, twoEvents, map[string]any{"m": id, "n": 7}, "$n"},
		{"AJSONArrayLiteral", u.Token, `mutation($m: ID!) {
			a: logMachineEvent(machineId: $m, eventType: "first") { id }
			b: logMachineEvent(machineId: $m, eventType: "second", details: [1]) { id } }`, map[string]any{"m": id}, "details"},
		{"AnIDLiteral", u.Token, `mutation($m: ID!) {
			a: logMachineEvent(machineId: $m, eventType: "first") { id }
			b: logMachineEvent(machineId: "nope", eventType: "second") { id } }`, map[string]any{"m": id}, "machineId"},
		{"AnIDNumberLiteral", u.Token, `mutation($m: ID!) {
			a: logMachineEvent(machineId: $m, eventType: "first") { id }
			b: logMachineEvent(machineId: 12, eventType: "second") { id } }`, map[string]any{"m": id}, "machineId"},
		{"AnIDInAnInputObjectLiteral", u.Token, `mutation($m: ID!) {
			a: logMachineEvent(machineId: $m, eventType: "first") { id }
			b: enqueueJob(input: {workflowId: "nope"}) { id } }`, map[string]any{"m": id}, "input.workflowId"},
		{"AJSONStringInsideAnInputObjectVariable", key, `mutation($e: [RobotLogInput!]!) {
			a: shipLogs(entries: [{level: INFO, message: "first"}])
			b: shipLogs(entries: $e) }`, map[string]any{"e": []any{map[string]any{"level": "INFO", "message": "second", "fields": "text"}}}, "$e[0].fields"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := s.Do(t, c.token, c.query, c.vars)
			res.Code(t, "BAD_USER_INPUT")
			require.Nil(t, res.Data, "a request error has no data: %s", res.Raw)
			require.Contains(t, res.Errors[0].Message, c.mentions)
		})
	}
	// A variable's refusal names where it is in the arguments too.
	res := s.Do(t, key, `mutation($e: [RobotLogInput!]!) { shipLogs(entries: $e) }`,
		map[string]any{"e": []any{map[string]any{"level": "INFO", "message": "m"}, map[string]any{"level": "INFO", "message": "m", "fields": []any{}}}})
	require.Equal(t, "entries[1].fields", res.Code(t, "BAD_USER_INPUT").Extensions["field"], "%s", res.Raw)

	n, err := s.DB.NewSelect().Table("machine_events").Where("event_type IN ('first', 'second')").Count(t.Context())
	require.NoError(t, err)
	require.Zero(t, n, "a refused operation wrote an event")
	n, err = s.DB.NewSelect().Table("robot_logs").Count(t.Context())
	require.NoError(t, err)
	require.Zero(t, n, "a refused operation wrote a log line")

	// What the fields take is taken: an object, null, and text where the
	// argument accepts it (@acceptsText), in a variable or a literal.
	for _, d := range []any{map[string]any{"k": 1}, nil, "plain text"} {
		s.Do(t, u.Token, twoEvents, map[string]any{"m": id, "n": id, "d": d}).OK(t, nil)
	}
	s.Do(t, u.Token, `mutation($m: ID!) { logMachineEvent(machineId: $m, eventType: "lit", details: "text") { id } }`, map[string]any{"m": id}).OK(t, nil)
	// A JSON variable used where text is taken and where it is not is
	// checked at each: text is refused where an object is needed.
	res = s.Do(t, u.Token, `mutation($m: ID!, $d: JSON) {
		a: logMachineEvent(machineId: $m, eventType: "first", details: $d) { id }
		b: createMachine(input: {name: "n", configuration: $d}) { id } }`, map[string]any{"m": id, "d": "text"})
	res.Code(t, "BAD_USER_INPUT")
	require.Nil(t, res.Data, "%s", res.Raw)
}

// A field that @skip or @include leaves out runs nothing and reads no
// argument: a placeholder for its variable (a common client pattern for a
// non-null one) is not refused.
func TestArgumentsOfFieldsLeftOutAreNotChecked(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.New())
	const placeholder = `query($id: ID!, $has: Boolean!) { me { id }
		machine(id: $id) @include(if: $has) { id }
		... on Query @skip(if: true) { none: machine(id: "x") { id } }
		...F @include(if: $has) }
		fragment F on Query { again: machine(id: $id) { id } }`
	s.Do(t, u.Token, placeholder, map[string]any{"id": "", "has": false}).OK(t, nil)
	res := s.Do(t, u.Token, placeholder, map[string]any{"id": "", "has": true})
	res.Code(t, "BAD_USER_INPUT")
	require.Nil(t, res.Data, "%s", res.Raw)
}

// An enum value in a variable must be written as the schema writes it, as
// it must in a literal: gqlparser's validation takes "offline" for OFFLINE
// in a variable, and the stores compared it as given, so a filter matched
// nothing and a subscription's filter never delivered.
func TestEnumVariablesAreCaseSensitive(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.New())
	s.RobotWithKey(t, u.Token, "r")
	cases := map[string]struct {
		query string
		vars  map[string]any
	}{
		"AtTheTop":          {`query($s: LogLevel) { robotLogs(minLevel: $s) { pageInfo { hasNextPage } } }`, map[string]any{"s": "warning"}},
		"InAnInputObject":   {`query($s: RobotStatus) { robots(filter: {status: $s}) { totalCount } }`, map[string]any{"s": "offline"}},
		"AnInputObject":     {`query($f: RobotFilter) { robots(filter: $f) { totalCount } }`, map[string]any{"f": map[string]any{"status": "Offline"}}},
		"InAListLiteral":    {`mutation($l: LogLevel!) { shipLogs(entries: [{level: INFO, message: "a"}, {level: $l, message: "b"}]) }`, map[string]any{"l": "info"}},
		"InAMutationsInput": {`mutation($e: [RobotLogInput!]!) { shipLogs(entries: $e) }`, map[string]any{"e": []any{map[string]any{"level": "info", "message": "m"}}}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			res := s.Do(t, u.Token, c.query, c.vars)
			res.Code(t, "BAD_USER_INPUT")
			require.Nil(t, res.Data, "%s", res.Raw)
			require.Contains(t, res.Errors[0].Message, "case-sensitive")
		})
	}
	var out struct{ Robots struct{ TotalCount int } }
	s.Do(t, u.Token, `query($s: RobotStatus) { robots(filter: {status: $s}) { totalCount } }`, map[string]any{"s": "OFFLINE"}).OK(t, &out)
	require.Equal(t, 1, out.Robots.TotalCount)
}

// TestEveryIDArgumentIsAUUID keeps checkedScalars' ID check true: every ID a
// client sends is read as a UUID. An argument or input field of another Go
// type (an int64 SeqID, a plain string) would be refused before it ran.
func TestEveryIDArgumentIsAUUID(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("generated.go")
	require.NoError(t, err)
	calls := regexp.MustCompile(`ec\.unmarshal[NO]ID2(\S+?)\(`).FindAllSubmatch(src, -1)
	require.NotEmpty(t, calls)
	for _, c := range calls {
		require.Contains(t, []string{"githubᚗcomᚋgoogleᚋuuidᚐUUID", "ᚖgithubᚗcomᚋgoogleᚋuuidᚐUUID", "ᚕgithubᚗcomᚋgoogleᚋuuidᚐUUIDᚄ"}, string(c[1]),
			"an ID argument is read as %s: teach scalarCheck its type", c[1])
	}
}
