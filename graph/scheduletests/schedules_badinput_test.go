package scheduletests

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
)

// schSnapshot is every schedule and scheduled job of the server, as rows:
// what a refused request must leave as it was.
func schSnapshot(t *testing.T, b *schBundle) string {
	t.Helper()
	var dump string
	require.NoError(t, b.s.DB.NewRaw(`SELECT coalesce((SELECT string_agg(row_to_json(s)::text, E'\n' ORDER BY s.id) FROM schedules s), '')
		|| '|' || (SELECT count(*) FROM jobs)`).Scan(t.Context(), &dump))
	return dump
}

// Bad input to the schedule API: BAD_USER_INPUT (or NOT_FOUND, CONFLICT)
// naming the field and saying why, no SQL in the message, nothing written.
func TestScheduleBadInput(t *testing.T) {
	t.Parallel()
	b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
	existing := b.create(t, map[string]any{"name": "taken", "cronExpression": "0 9 * * MON-FRI", "timeZone": "Europe/Paris",
		"startAt": "2026-06-02T00:00:00Z", "endAt": "2026-12-31T00:00:00Z"})
	long := strings.Repeat("x", 101)

	type tc struct {
		name   string
		input  map[string]any
		code   string
		field  string
		reason string // a part of the message
	}
	cases := []tc{
		{"UnparsableMinute", map[string]any{"cronExpression": "61 * * * *"}, "BAD_USER_INPUT", "cronExpression", `minute field "61"`},
		{"UnparsableHour", map[string]any{"cronExpression": "0 25 * * *"}, "BAD_USER_INPUT", "cronExpression", "hour field"},
		{"UnparsableDayOfWeek", map[string]any{"cronExpression": "0 0 * * FUNDAY"}, "BAD_USER_INPUT", "cronExpression", "day-of-week field"},
		{"UnparsableSeconds", map[string]any{"cronExpression": "75 0 0 * * *"}, "BAD_USER_INPUT", "cronExpression", "second field"},
		{"TooFewFields", map[string]any{"cronExpression": "0 0 *"}, "BAD_USER_INPUT", "cronExpression", "3 fields"},
		{"TooManyFields", map[string]any{"cronExpression": "0 0 0 * * * 2026"}, "BAD_USER_INPUT", "cronExpression", "7 fields"},
		{"EmptyExpression", map[string]any{"cronExpression": "  "}, "BAD_USER_INPUT", "cronExpression", "empty"},
		{"LongExpression", map[string]any{"cronExpression": strings.Repeat("1,", 150) + "2 * * * *"}, "BAD_USER_INPUT", "cronExpression", "limit is 200"},
		{"UnknownDescriptor", map[string]any{"cronExpression": "@fortnightly"}, "BAD_USER_INPUT", "cronExpression", "not a descriptor"},
		{"SubSecondEvery", map[string]any{"cronExpression": "@every 250ms"}, "BAD_USER_INPUT", "cronExpression", "whole number of seconds"},
		{"ZoneInExpression", map[string]any{"cronExpression": "CRON_TZ=Asia/Tokyo 0 9 * * *"}, "BAD_USER_INPUT", "cronExpression", "timeZone"},
		{"NeverFires", map[string]any{"cronExpression": "0 0 30 2 *"}, "BAD_USER_INPUT", "cronExpression", "can never fire"},
		{"UnknownZone", map[string]any{"timeZone": "Mars/Olympus_Mons"}, "BAD_USER_INPUT", "timeZone", "not an IANA time zone"},
		{"ServerLocalZone", map[string]any{"timeZone": "Local"}, "BAD_USER_INPUT", "timeZone", "not an IANA time zone"},
		{"HostLocalZone", map[string]any{"timeZone": "localtime"}, "BAD_USER_INPUT", "timeZone", "not an IANA time zone"},
		{"HostOnlyZone", map[string]any{"timeZone": "right/Europe/Paris"}, "BAD_USER_INPUT", "timeZone", "not an IANA time zone"},
		{"PathAsZone", map[string]any{"timeZone": "../../etc/passwd"}, "BAD_USER_INPUT", "timeZone", "not an IANA time zone"},
		{"EndBeforeStart", map[string]any{"startAt": "2026-07-01T00:00:00Z", "endAt": "2026-06-15T00:00:00Z"}, "BAD_USER_INPUT", "endAt", "must be after startAt"},
		{"EndEqualsStart", map[string]any{"startAt": "2026-07-01T00:00:00Z", "endAt": "2026-07-01T00:00:00Z"}, "BAD_USER_INPUT", "endAt", "must be after startAt"},
		// Stored to the microsecond, these are equal.
		{"EndWithinAMicrosecondOfStart", map[string]any{"startAt": "2026-07-01T00:00:00Z", "endAt": "2026-07-01T00:00:00.0000004Z"}, "BAD_USER_INPUT", "endAt", "must be after startAt"},
		{"EndInThePast", map[string]any{"endAt": "2026-05-01T00:00:00Z"}, "BAD_USER_INPUT", "endAt", "can never fire again"},
		{"EndBeforeTheNextTick", map[string]any{"cronExpression": "0 0 1 1 *", "endAt": "2026-12-31T00:00:00Z"}, "BAD_USER_INPUT", "endAt", "can never fire again"},
		{"FirstTickPastYear9999", map[string]any{"cronExpression": "0 0 1 1 *", "startAt": "9999-12-31T23:59:59Z"}, "BAD_USER_INPUT", "cronExpression", "can never fire"},
		{"NegativeJitter", map[string]any{"jitterSeconds": -1}, "BAD_USER_INPUT", "jitterSeconds", "between 0 and 3600"},
		{"LongJitter", map[string]any{"jitterSeconds": 3601}, "BAD_USER_INPUT", "jitterSeconds", "between 0 and 3600"},
		{"ShortWindow", map[string]any{"catchupWindowSeconds": 9}, "BAD_USER_INPUT", "catchupWindowSeconds", "between 10 and 2592000"},
		{"LongWindow", map[string]any{"catchupWindowSeconds": 2592001}, "BAD_USER_INPUT", "catchupWindowSeconds", "between 10 and 2592000"},
		{"Priority", map[string]any{"priority": 1001}, "BAD_USER_INPUT", "priority", "between -1000 and 1000"},
		{"MaxAttempts", map[string]any{"maxAttempts": 0}, "BAD_USER_INPUT", "maxAttempts", "between 1 and 100"},
		{"Capability", map[string]any{"requiredCapabilities": []any{"no spaces"}}, "BAD_USER_INPUT", "requiredCapabilities", "capability"},
		{"BigInput", map[string]any{"input": apitest.JSONOfSize(64<<10 + 1)}, "BAD_USER_INPUT", "input", "limit is"},
		{"EmptyName", map[string]any{"name": " "}, "BAD_USER_INPUT", "name", "must not be empty"},
		{"LongName", map[string]any{"name": long}, "BAD_USER_INPUT", "name", "at most 100"},
		{"DuplicateName", map[string]any{"name": "TAKEN"}, "CONFLICT", "name", "already has a schedule"},
		{"NoSuchVersion", map[string]any{"version": 7}, "BAD_USER_INPUT", "version", "no version 7"},
		{"NoSuchWorkflow", map[string]any{"workflowId": uuid.NewString()}, "NOT_FOUND", "workflowId", "workflow not found"},
		{"NoSuchRobot", map[string]any{"robotId": uuid.NewString()}, "NOT_FOUND", "robotId", "robot not found"},
		{"NoteWithoutPause", map[string]any{"pauseNote": "why"}, "BAD_USER_INPUT", "pauseNote", "paused"},
		{"LongNote", map[string]any{"paused": true, "pauseNote": strings.Repeat("n", 501)}, "BAD_USER_INPUT", "pauseNote", "pauseNote must be at most 500"},
		{"NULNote", map[string]any{"paused": true, "pauseNote": "a\x00b"}, "BAD_USER_INPUT", "pauseNote", "pauseNote"},
	}
	before := schSnapshot(t, b)
	for _, c := range cases {
		t.Run("Create"+c.name, func(t *testing.T) {
			in := map[string]any{"name": "new", "workflowId": b.workflow, "cronExpression": "*/5 * * * *"}
			for k, v := range c.input {
				in[k] = v
			}
			e := b.s.Do(t, b.user.Token, `mutation($in: CreateScheduleInput!) { createSchedule(input: $in) { id } }`, map[string]any{"in": in}).Code(t, c.code)
			require.Equal(t, c.field, e.Extensions["field"], "%s", e.Message)
			require.Contains(t, e.Message, c.reason)
			require.NotContains(t, strings.ToLower(e.Message), "sql")
			require.NotContains(t, e.Message, "schedules_")
			require.Equal(t, before, schSnapshot(t, b), "nothing written")
		})
		switch c.name {
		case "DuplicateName", "NoteWithoutPause", "LongNote", "NULNote", "NoSuchWorkflow":
			continue // not fields of UpdateScheduleInput, or the schedule's own name
		case "EndInThePast", "FirstTickPastYear9999":
			continue // against the stored start or end, another field is wrong first
		}
		t.Run("Update"+c.name, func(t *testing.T) {
			e := b.s.Do(t, b.user.Token, `mutation($id: ID!, $in: UpdateScheduleInput!) { updateSchedule(id: $id, input: $in) { id } }`,
				map[string]any{"id": existing.ID, "in": c.input}).Code(t, c.code)
			require.Equal(t, c.field, e.Extensions["field"], "%s", e.Message)
			require.Contains(t, e.Message, c.reason)
			require.Equal(t, before, schSnapshot(t, b), "nothing written")
		})
	}

	t.Run("UpdateCombinesWithTheStoredSettings", func(t *testing.T) {
		// The stored start is 2026-06-02: an end before it is refused.
		e := b.s.Do(t, b.user.Token, `mutation($id: ID!) { updateSchedule(id: $id, input: {endAt: "2026-06-01T12:00:00Z"}) { id } }`,
			map[string]any{"id": existing.ID}).Code(t, "BAD_USER_INPUT")
		require.Equal(t, "endAt", e.Extensions["field"])
		e = b.s.Do(t, b.user.Token, `mutation($id: ID!) { updateSchedule(id: $id, input: {unset: [START_AT], endAt: "2026-06-01T12:00:00Z"}) { id } }`,
			map[string]any{"id": existing.ID}).Code(t, "BAD_USER_INPUT")
		require.Contains(t, e.Message, "can never fire again", "09:00 Paris on a weekday does not come before 12:00 UTC today")
		require.Equal(t, before, schSnapshot(t, b))
	})
	t.Run("ListAndFieldArguments", func(t *testing.T) {
		for q, field := range map[string]string{
			`{ schedules(first: -1) { totalCount } }`:                                                        "first",
			`{ schedules(after: "bm90LWEtY3Vyc29y") { totalCount } }`:                                        "after",
			`{ schedules(filter: {nameContains: "` + long + `"}) { totalCount } }`:                           "filter.nameContains",
			`query($id: ID!) { schedule(id: $id) { nextRuns(count: 101) } }`:                                 "count",
			`query($id: ID!) { schedule(id: $id) { nextRuns(count: -1) } }`:                                  "count",
			`query($id: ID!) { schedule(id: $id) { recentJobs(first: -1) { id } } }`:                         "first",
			`mutation($id: ID!) { pauseSchedule(id: $id, note: "` + strings.Repeat("n", 501) + `") { id } }`: "note",
		} {
			e := b.s.Do(t, b.user.Token, q, map[string]any{"id": existing.ID}).Code(t, "BAD_USER_INPUT")
			require.Equal(t, field, e.Extensions["field"], "%s: %s", q, e.Message)
		}
		require.Equal(t, before, schSnapshot(t, b))
	})
	t.Run("NotFound", func(t *testing.T) {
		for _, q := range []string{
			`mutation($id: ID!) { updateSchedule(id: $id, input: {priority: 1}) { id } }`,
			`mutation($id: ID!) { pauseSchedule(id: $id) { id } }`,
			`mutation($id: ID!) { resumeSchedule(id: $id) { id } }`,
			`mutation($id: ID!) { deleteSchedule(id: $id) }`,
			`mutation($id: ID!) { triggerSchedule(id: $id) { id } }`,
		} {
			b.s.Do(t, b.user.Token, q, map[string]any{"id": uuid.NewString()}).Code(t, "NOT_FOUND")
		}
		var out struct{ Schedule *struct{ ID string } }
		b.s.Do(t, b.user.Token, `query($id: ID!) { schedule(id: $id) { id } }`, map[string]any{"id": uuid.NewString()}).OK(t, &out)
		require.Nil(t, out.Schedule)
		require.Equal(t, before, schSnapshot(t, b))
	})
	t.Run("EdgesAreAccepted", func(t *testing.T) {
		sch := b.create(t, map[string]any{"name": strings.Repeat("é", 100), "cronExpression": "0 0 1 1 *", "jitterSeconds": 3600,
			"catchupWindowSeconds": 10, "priority": -1000, "maxAttempts": 100, "timeZone": "Pacific/Kiritimati",
			"startAt": "9998-06-01T00:00:00Z", "endAt": "9999-12-31T23:59:59.999999Z", "input": apitest.JSONOfSize(64 << 10)})
		require.Equal(t, []time.Time{utcTime("9998-12-31T10:00:00Z"), utcTime("9999-12-31T10:00:00Z")}, sch.NextRuns, "and no tick in year 10000")
		var upd struct{ UpdateSchedule schSchedule }
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { updateSchedule(id: $id, input: {cronExpression: "@every 8784h", unset: [START_AT, END_AT], catchupWindowSeconds: 2592000}) { `+schFields+` } }`, map[string]any{"id": sch.ID}).OK(t, &upd)
		require.Len(t, upd.UpdateSchedule.NextRuns, 3)

		// A schedule's input is kept as stored: its numbers, past float64's
		// range or precision, reach each job it enqueues digit for digit.
		const big = "12345678901234567890123"
		var numeric struct{ CreateSchedule struct{ ID string } }
		b.s.Do(t, b.user.Token, `mutation($in: CreateScheduleInput!) { createSchedule(input: $in) { id } }`, map[string]any{"in": map[string]any{
			"name": "numbers", "workflowId": b.workflow, "cronExpression": "@daily",
			"input": map[string]any{"big": json.Number(big), "huge": json.Number("1e309")}}}).OK(t, &numeric)
		trig := b.s.Do(t, b.user.Token, `mutation($id: ID!) { triggerSchedule(id: $id) { input } }`, map[string]any{"id": numeric.CreateSchedule.ID})
		trig.OK(t, nil)
		require.Contains(t, string(trig.Raw), big)
		require.Contains(t, string(trig.Raw), "1"+strings.Repeat("0", 309))

		// Spaces around an expression are not part of it: past the limit
		// with them, within it without, and stored without.
		padded := "  " + strings.Repeat("1,", 95) + "2 * * * *" + strings.Repeat(" ", 200)
		sch = b.create(t, map[string]any{"name": "padded", "cronExpression": padded})
		require.Equal(t, strings.TrimSpace(padded), sch.CronExpression)
		b.s.Do(t, b.user.Token, `mutation($id: ID!, $e: String!) { updateSchedule(id: $id, input: {cronExpression: $e}) { `+schFields+` } }`,
			map[string]any{"id": sch.ID, "e": "\t@daily" + strings.Repeat(" ", 300)}).OK(t, &upd)
		require.Equal(t, "@daily", upd.UpdateSchedule.CronExpression)
	})
}

// A tenant has at most db.MaxSchedules schedules (the scheduler is one
// task on one leader): the next is CONFLICT, says the cap and what to do,
// and writes nothing. Another tenant has its own.
func TestScheduleCap(t *testing.T) {
	t.Parallel()
	b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
	for i := range db.MaxSchedules {
		b.create(t, map[string]any{"name": fmt.Sprintf("s%03d", i), "cronExpression": "@hourly"})
	}
	before := schSnapshot(t, b)
	in := map[string]any{"name": "one-too-many", "workflowId": b.workflow, "cronExpression": "@hourly"}
	e := b.s.Do(t, b.user.Token, `mutation($in: CreateScheduleInput!) { createSchedule(input: $in) { id } }`, map[string]any{"in": in}).Code(t, "CONFLICT")
	require.Contains(t, e.Message, fmt.Sprintf("at most %d schedules", db.MaxSchedules))
	require.Contains(t, e.Message, "delete one")
	require.Equal(t, before, schSnapshot(t, b), "nothing written")

	other := b.s.NewUser(t, uuid.New())
	in["workflowId"] = b.s.CreateWorkflow(t, other.Token, "other")
	b.s.Do(t, other.Token, `mutation($in: CreateScheduleInput!) { createSchedule(input: $in) { id } }`, map[string]any{"in": in}).OK(t, nil)
}

// A schedule whose target robot was deleted: running it now, changing it
// without naming a robot, and its ticks all say so and how to fix it,
// naming the field robotId only when the input named a robot; nothing is
// written until it is fixed.
func TestScheduleWhoseTargetRobotWasDeleted(t *testing.T) {
	t.Parallel()
	b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
	robot, _ := b.s.RobotWithKey(t, b.user.Token, "gone")
	sch := b.create(t, map[string]any{"cronExpression": "*/10 * * * *", "robotId": robot})
	b.s.Do(t, b.user.Token, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": robot}).OK(t, nil)
	before := schSnapshot(t, b)
	deleted := func(t *testing.T, e apitest.Error) {
		t.Helper()
		require.Contains(t, e.Message, "the schedule's target robot was deleted")
		require.Contains(t, e.Message, "unset: [ROBOT_ID]")
		require.Equal(t, db.ReasonTargetRobotDeleted, e.Extensions["reason"])
		require.NotContains(t, e.Extensions, "field", "the input named no robot")
		require.Equal(t, before, schSnapshot(t, b), "nothing written")
	}
	vars := map[string]any{"id": sch.ID}

	t.Run("Trigger", func(t *testing.T) {
		deleted(t, b.s.Do(t, b.user.Token, `mutation($id: ID!) { triggerSchedule(id: $id) { id } }`, vars).Code(t, "CONFLICT"))
	})
	t.Run("UpdateWithoutARobot", func(t *testing.T) {
		deleted(t, b.s.Do(t, b.user.Token, `mutation($id: ID!) { updateSchedule(id: $id, input: {priority: 5}) { id } }`, vars).Code(t, "CONFLICT"))
	})
	t.Run("UpdateNamingTheDeletedRobot", func(t *testing.T) {
		e := b.s.Do(t, b.user.Token, `mutation($id: ID!, $r: ID!) { updateSchedule(id: $id, input: {priority: 5, robotId: $r}) { id } }`,
			map[string]any{"id": sch.ID, "r": robot}).Code(t, "NOT_FOUND")
		require.Equal(t, "robotId", e.Extensions["field"])
		require.Equal(t, "robot not found", e.Message)
		require.Equal(t, before, schSnapshot(t, b))
	})
	t.Run("TheScheduler", func(t *testing.T) {
		b.advance(t, 10*time.Minute)
		got := b.get(t, sch.ID)
		require.NotNil(t, got.LastError)
		require.Equal(t, "the job for 2026-06-01T10:10:00Z was not enqueued: the schedule's target robot was deleted: unset it (unset: [ROBOT_ID]) or set another robotId", *got.LastError)
		require.Equal(t, utcTime("2026-06-01T10:20:00Z"), got.NextRuns[0], "its ticks go on")
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Empty(t, ticks)
	})
	t.Run("Fixed", func(t *testing.T) {
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { updateSchedule(id: $id, input: {unset: [ROBOT_ID]}) { id } }`, vars).OK(t, nil)
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { triggerSchedule(id: $id) { id } }`, vars).OK(t, nil)
		b.advance(t, 10*time.Minute)
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Len(t, ticks, 2, "the triggered job and the 10:20 tick's")
	})
}
