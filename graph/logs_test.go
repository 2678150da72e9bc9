package graph_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lib/pq"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/auth"
)

// Robot logs through the API: shipping (limits, the time window, job lines
// fenced on their lease), reading (filters, keyset pages across daily
// partitions, the daily summary), isolation, heartbeat history, the live
// tail, and retention by hand. Helpers start with lg.

const (
	lgShip  = `mutation($e: [RobotLogInput!]!) { shipLogs(entries: $e) }`
	lgQuery = `query($r: ID, $j: ID, $min: LogLevel, $since: Time, $until: Time, $c: String, $first: Int, $after: String) {
		robotLogs(robotId: $r, jobId: $j, minLevel: $min, since: $since, until: $until, contains: $c, first: $first, after: $after) {
			edges { cursor node { id robotId jobId level message fields at } } pageInfo { hasNextPage endCursor } } }`
	lgTailSub = `subscription($r: ID, $min: LogLevel) { robotLogAdded(robotId: $r, minLevel: $min) { robotId missedLines lines { id robotId level message } } }`
)

type lgLine struct {
	ID      string
	RobotID string
	JobID   *string
	Level   string
	Message string
	Fields  map[string]any
	At      time.Time
}

type lgPage struct {
	RobotLogs struct {
		Edges []struct {
			Cursor string
			Node   lgLine
		}
		PageInfo struct {
			HasNextPage bool
			EndCursor   *string
		}
	}
}

func (p lgPage) messages() []string {
	var out []string
	for _, e := range p.RobotLogs.Edges {
		out = append(out, e.Node.Message)
	}
	return out
}

func lgEntry(level, message string) map[string]any {
	return map[string]any{"level": level, "message": message}
}

// lgShipOK ships entries as robot key and requires them all stored.
func lgShipOK(t *testing.T, s *apitest.Server, key string, entries ...map[string]any) {
	t.Helper()
	var out struct{ ShipLogs int }
	s.Do(t, key, lgShip, map[string]any{"e": entries}).OK(t, &out)
	require.Equal(t, len(entries), out.ShipLogs)
}

func lgList(t *testing.T, s *apitest.Server, token string, vars map[string]any) lgPage {
	t.Helper()
	var p lgPage
	s.Do(t, token, lgQuery, vars).OK(t, &p)
	return p
}

// lgCount counts a tenant's stored lines straight from the database.
func lgCount(t *testing.T, s *apitest.Server, tenant uuid.UUID) int {
	t.Helper()
	return rbCount(t, s, "robot_logs", "tenant_id = ?", tenant)
}

func TestRobotLogs(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("shipped lines read back newest first, WARN as WARNING, filtered", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "shipper", apitest.RobotOpts{})
		now := time.Now().UTC().Truncate(time.Millisecond)
		at := func(d time.Duration) string { return now.Add(d).Format(time.RFC3339Nano) }
		lgShipOK(t, s, r.Key,
			map[string]any{"level": "DEBUG", "message": "opening 100% of portal", "at": at(-4 * time.Minute), "fields": map[string]any{"url": "https://portal"}},
			map[string]any{"level": "WARN", "message": "Slow page", "at": at(-3 * time.Minute)},
			map[string]any{"level": "ERROR", "message": "captcha", "at": at(-2 * time.Minute)},
			map[string]any{"level": "CRITICAL", "message": "portal down", "at": at(-time.Minute)},
			map[string]any{"level": "INFO", "message": "retrying slow page", "at": at(0)},
		)
		all := lgList(t, s, tn.User.Token, map[string]any{"r": r.ID})
		require.Equal(t, []string{"retrying slow page", "portal down", "captcha", "Slow page", "opening 100% of portal"}, all.messages())
		require.Equal(t, "WARNING", all.RobotLogs.Edges[3].Node.Level, "WARN is stored as WARNING")
		require.Equal(t, r.ID, all.RobotLogs.Edges[0].Node.RobotID)
		require.Equal(t, map[string]any{"url": "https://portal"}, all.RobotLogs.Edges[4].Node.Fields)
		require.True(t, now.Add(-4*time.Minute).Equal(all.RobotLogs.Edges[4].Node.At), "a line in the window keeps the robot's time")

		require.Equal(t, []string{"portal down", "captcha", "Slow page"}, lgList(t, s, tn.User.Token, map[string]any{"r": r.ID, "min": "WARNING"}).messages())
		require.Equal(t, []string{"portal down", "captcha"}, lgList(t, s, tn.User.Token, map[string]any{"r": r.ID, "min": "ERROR"}).messages())
		require.Equal(t, []string{"retrying slow page", "Slow page"}, lgList(t, s, tn.User.Token, map[string]any{"r": r.ID, "c": "SLOW"}).messages(), "contains is case-insensitive")
		require.Equal(t, []string{"opening 100% of portal"}, lgList(t, s, tn.User.Token, map[string]any{"c": "100%"}).messages(), "% is a character, not a wildcard")
		require.Empty(t, lgList(t, s, tn.User.Token, map[string]any{"c": "1%p"}).messages())
		require.Equal(t, []string{"captcha", "Slow page"}, lgList(t, s, tn.User.Token,
			map[string]any{"since": at(-3 * time.Minute), "until": at(-time.Minute)}).messages(), "since is inclusive, until exclusive")
	})

	t.Run("messages and fields arrive byte for byte", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "quoting", apitest.RobotOpts{})
		msg := "quotes \" ' {braces} \\ back\\slash ? $1 :name\nnew line\ttab ünïcödé 🤖 ,;"
		fields := map[string]any{"q": `"{a,b}"`, "b": `\`, "n": map[string]any{"deep": []any{1.5, "x\"y", nil, true}}, "empty": ""}
		lgShipOK(t, s, r.Key, map[string]any{"level": "INFO", "message": msg, "fields": fields}, lgEntry("INFO", ""))
		p := lgList(t, s, tn.User.Token, map[string]any{"r": r.ID})
		require.Len(t, p.RobotLogs.Edges, 2)
		require.Equal(t, "", p.RobotLogs.Edges[0].Node.Message)
		require.Equal(t, msg, p.RobotLogs.Edges[1].Node.Message)
		require.Equal(t, fields, p.RobotLogs.Edges[1].Node.Fields)
	})

	t.Run("pages are exact across days and ties", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "pager", apitest.RobotOpts{})
		now := time.Now().UTC().Truncate(time.Second)
		var entries []map[string]any
		var want []string
		for day := 3; day >= 0; day-- {
			ts := now.AddDate(0, 0, -day).Format(time.RFC3339Nano)
			for i := range 3 { // three lines with the very same time each day
				entries = append(entries, map[string]any{"level": "INFO", "message": fmt.Sprintf("d%d-%d", day, i), "at": ts})
			}
		}
		lgShipOK(t, s, r.Key, entries...)
		for i := len(entries) - 1; i >= 0; i-- {
			want = append(want, entries[i]["message"].(string)) // newest first; ties by id, last shipped first
		}
		var days int
		require.NoError(t, s.DB.NewRaw("SELECT count(DISTINCT tableoid) FROM robot_logs WHERE robot_id = ?", r.ID).Scan(t.Context(), &days))
		require.Equal(t, 4, days, "the lines are in four daily partitions")

		var got []string
		var after *string
		for pages := 0; ; pages++ {
			require.Less(t, pages, 20)
			p := lgList(t, s, tn.User.Token, map[string]any{"r": r.ID, "first": 2, "after": after})
			got = append(got, p.messages()...)
			if !p.RobotLogs.PageInfo.HasNextPage {
				break
			}
			after = p.RobotLogs.PageInfo.EndCursor
		}
		require.Equal(t, want, got)
	})

	t.Run("a line out of the window is stored at the receive time with the robot's time in fields", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "skewed", apitest.RobotOpts{})
		future := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
		old := time.Now().AddDate(0, 0, -45).UTC().Truncate(time.Millisecond)
		before := time.Now()
		lgShipOK(t, s, r.Key,
			map[string]any{"level": "INFO", "message": "from the future", "at": future.Format(time.RFC3339Nano), "fields": map[string]any{"k": 1}},
			map[string]any{"level": "INFO", "message": "from long ago", "at": old.Format(time.RFC3339Nano)},
		)
		after := time.Now()
		p := lgList(t, s, tn.User.Token, map[string]any{"r": r.ID})
		require.Len(t, p.RobotLogs.Edges, 2)
		for _, e := range p.RobotLogs.Edges {
			l := e.Node
			require.False(t, l.At.Before(before.Truncate(time.Microsecond)) || l.At.After(after), "%s stored at %s, not between %s and %s", l.Message, l.At, before, after)
			want := future
			if l.Message == "from long ago" {
				want = old
			}
			robotAt, err := time.Parse(time.RFC3339Nano, l.Fields["robotAt"].(string))
			require.NoError(t, err)
			require.True(t, want.Equal(robotAt), "%s keeps the robot's time %s, got %v", l.Message, want, l.Fields)
		}
	})

	t.Run("job lines are fenced on the lease and are the job's logs", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "worker", apitest.RobotOpts{})
		tn.Enqueue(t, nil)
		l := r.Claim(t, 0)
		require.NotNil(t, l)
		lgShipOK(t, s, r.Key,
			map[string]any{"level": "INFO", "message": "about the job", "jobId": l.Job.ID, "leaseToken": l.LeaseToken},
			lgEntry("INFO", "about the robot"))
		logs := tn.Job(t, l.Job.ID).Logs
		require.Len(t, logs, 1)
		require.Equal(t, "about the job", logs[0].Message)
		p := lgList(t, s, tn.User.Token, map[string]any{"j": l.Job.ID})
		require.Equal(t, []string{"about the job"}, p.messages())
		require.Equal(t, l.Job.ID, *p.RobotLogs.Edges[0].Node.JobID)

		before := lgCount(t, s, tn.User.Tenant)
		e := s.Do(t, r.Key, lgShip, map[string]any{"e": []any{lgEntry("INFO", "fine"),
			map[string]any{"level": "INFO", "message": "stale", "jobId": l.Job.ID, "leaseToken": uuid.NewString()}}}).Code(t, "CONFLICT")
		require.Equal(t, "LEASE_LOST", e.Extensions["reason"])
		require.Equal(t, "entries[1].leaseToken", e.Extensions["field"], "the refused line is named")
		e = s.Do(t, r.Key, lgShip, map[string]any{"e": []any{map[string]any{"level": "INFO", "message": "half", "jobId": l.Job.ID}}}).Code(t, "BAD_USER_INPUT")
		require.Equal(t, "entries[0].leaseToken", e.Extensions["field"])
		e = s.Do(t, r.Key, lgShip, map[string]any{"e": []any{lgEntry("INFO", "fine"), lgEntry("INFO", "fine"),
			map[string]any{"level": "INFO", "message": "x", "jobId": uuid.NewString(), "leaseToken": l.LeaseToken}}}).Code(t, "NOT_FOUND")
		require.Equal(t, "entries[2].jobId", e.Extensions["field"])
		require.Equal(t, before, lgCount(t, s, tn.User.Tenant), "a refused batch writes nothing")
	})

	t.Run("bad input is refused naming the line, and nothing is written", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "bad", apitest.RobotOpts{})
		many := func(n int) []any {
			out := make([]any, n)
			for i := range out {
				out[i] = lgEntry("INFO", fmt.Sprintf("line %d", i))
			}
			return out
		}
		cases := []struct {
			name    string
			entries []any
			field   string
		}{
			{"None", []any{}, "entries"},
			{"1001Lines", many(1001), "entries"},
			{"Message8001", []any{lgEntry("INFO", "ok"), lgEntry("INFO", strings.Repeat("é", 8001))}, "entries[1].message"},
			{"MessageNUL", []any{lgEntry("INFO", "a\u0000b")}, "entries[0].message"},
			{"FieldsNUL", []any{map[string]any{"level": "INFO", "message": "m", "fields": map[string]any{"k": "a\u0000"}}}, "entries[0].fields"},
			{"FieldsKeyNUL", []any{map[string]any{"level": "INFO", "message": "m", "fields": map[string]any{"k\u0000": 1}}}, "entries[0].fields"},
			{"FieldsTooBig", []any{map[string]any{"level": "INFO", "message": "m", "fields": map[string]any{"k": strings.Repeat("x", 70_000)}}}, "entries[0].fields"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				e := s.Do(t, r.Key, lgShip, map[string]any{"e": c.entries}).Code(t, "BAD_USER_INPUT")
				require.Equal(t, c.field, e.Extensions["field"], "%s", e.Message)
				require.Zero(t, lgCount(t, s, tn.User.Tenant))
			})
		}
		t.Run("LevelUnknown", func(t *testing.T) {
			resp := s.Do(t, r.Key, lgShip, map[string]any{"e": []any{lgEntry("TRACE", "m")}})
			require.NotEmpty(t, resp.Errors)
			require.Zero(t, lgCount(t, s, tn.User.Tenant))
		})
		t.Run("1000LinesAreFine", func(t *testing.T) {
			var out struct{ ShipLogs int }
			s.Do(t, r.Key, lgShip, map[string]any{"e": many(1000)}).OK(t, &out)
			require.Equal(t, 1000, out.ShipLogs)
			require.Equal(t, 1000, lgCount(t, s, tn.User.Tenant))
		})
		for name, vars := range map[string]map[string]any{
			"SinceAfterUntil": {"since": "2026-02-02T00:00:00Z", "until": "2026-02-01T00:00:00Z"},
			"ContainsNUL":     {"c": "a\u0000"},
			"Contains101":     {"c": strings.Repeat("a", 101)},
			"ForgedCursor":    {"after": "bG9nOjAwMDEtMDEtMDFUMDA6MDA6MDBafDA"},
			"OtherCursor":     {"after": "am9iOjIwMjYtMDEtMDFUMDA6MDA6MDBafDE"},
			"NegativeFirst":   {"first": -1},
		} {
			t.Run("Query/"+name, func(t *testing.T) {
				s.Do(t, tn.User.Token, lgQuery, vars).Code(t, "BAD_USER_INPUT")
			})
		}
	})

	t.Run("the daily summary counts per day, robot and level", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		a, b := tn.CreateRobot(t, "a", apitest.RobotOpts{}), tn.CreateRobot(t, "b", apitest.RobotOpts{})
		yesterday := time.Now().UTC().AddDate(0, 0, -1).Truncate(24 * time.Hour).Add(12 * time.Hour)
		y := func(d time.Duration) string { return yesterday.Add(d).Format(time.RFC3339Nano) }
		lgShipOK(t, s, a.Key, map[string]any{"level": "ERROR", "message": "1", "at": y(0)}, map[string]any{"level": "ERROR", "message": "2", "at": y(time.Hour)},
			lgEntry("INFO", "today"))
		lgShipOK(t, s, b.Key, lgEntry("WARN", "b today"))
		type row struct {
			Day, RobotID, Level string
			Count               int
			FirstAt, LastAt     time.Time
		}
		var out struct{ LogSummary []row }
		s.Do(t, tn.User.Token, `query($r: ID) { logSummary(robotId: $r) { day robotId level count firstAt lastAt } }`, map[string]any{"r": a.ID}).OK(t, &out)
		today := time.Now().UTC().Format(time.DateOnly)
		require.Len(t, out.LogSummary, 2)
		require.Equal(t, today, out.LogSummary[0].Day)
		require.Equal(t, "INFO", out.LogSummary[0].Level)
		got := out.LogSummary[1]
		require.Equal(t, []any{yesterday.Format(time.DateOnly), a.ID, "ERROR", 2}, []any{got.Day, got.RobotID, got.Level, got.Count})
		require.True(t, yesterday.Equal(got.FirstAt) && yesterday.Add(time.Hour).Equal(got.LastAt), "%+v", got)
		s.Do(t, tn.User.Token, `{ logSummary { robotId level count } }`, nil).OK(t, &out)
		require.Len(t, out.LogSummary, 3, "both robots without robotId")
	})

	t.Run("heartbeat history is sampled, newest first", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "beating", apitest.RobotOpts{})
		for _, st := range []string{"ONLINE", "ONLINE", "BUSY"} {
			s.Do(t, r.Key, `mutation($s: RobotStatus!) { heartbeat(input: {status: $s, metrics: {cpu: 5}, agentVersion: "2.1"}) { id } }`, map[string]any{"s": st}).OK(t, nil)
		}
		var out struct {
			Robot struct {
				Heartbeats []struct {
					Status, AgentVersion string
					Metrics              map[string]any
					At                   time.Time
				}
			}
		}
		s.Do(t, tn.User.Token, `query($r: ID!) { robot(id: $r) { heartbeats { status agentVersion metrics at } } }`, map[string]any{"r": r.ID}).OK(t, &out)
		hb := out.Robot.Heartbeats
		require.Len(t, hb, 2, "the second ONLINE within a minute is not sampled; the status change is")
		require.Equal(t, "BUSY", hb[0].Status)
		require.Equal(t, "ONLINE", hb[1].Status)
		require.Equal(t, "2.1", hb[0].AgentVersion)
		require.Equal(t, map[string]any{"cpu": float64(5)}, hb[0].Metrics)
		s.Do(t, tn.User.Token, `query($r: ID!) { robot(id: $r) { heartbeats(first: 1) { status } } }`, map[string]any{"r": r.ID}).OK(t, &out)
		require.Len(t, out.Robot.Heartbeats, 1)
		s.Do(t, tn.User.Token, `query($r: ID!, $s: Time) { robot(id: $r) { heartbeats(since: $s) { status } } }`,
			map[string]any{"r": r.ID, "s": time.Now().Add(time.Hour).Format(time.RFC3339)}).OK(t, &out)
		require.Empty(t, out.Robot.Heartbeats)
	})
}

func TestRobotLogsIsolation(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	victim := apitest.NewTenant(t, s)
	vr := victim.CreateRobot(t, "victim", apitest.RobotOpts{})
	victim.Enqueue(t, nil)
	vl := vr.Claim(t, 0)
	require.NotNil(t, vl)
	lgShipOK(t, s, vr.Key, lgEntry("ERROR", "victim secret"),
		map[string]any{"level": "INFO", "message": "victim job line", "jobId": vl.Job.ID, "leaseToken": vl.LeaseToken})
	s.Do(t, vr.Key, `mutation { heartbeat(input: {status: ONLINE, agentVersion: "v"}) { id } }`, nil).OK(t, nil)

	attacker := apitest.NewTenant(t, s)
	ar := attacker.CreateRobot(t, "attacker", apitest.RobotOpts{})
	lgShipOK(t, s, ar.Key, lgEntry("INFO", "attacker line"))
	sibling := victim.CreateRobot(t, "sibling", apitest.RobotOpts{}) // same tenant, another robot
	lgShipOK(t, s, sibling.Key, lgEntry("INFO", "sibling line"))

	victimLines := lgCount(t, s, victim.User.Tenant)

	t.Run("another tenant sees none of the lines", func(t *testing.T) {
		require.Equal(t, []string{"attacker line"}, lgList(t, s, attacker.User.Token, nil).messages())
		require.Equal(t, []string{"attacker line"}, lgList(t, s, ar.Key, nil).messages())
		for _, tok := range []string{attacker.User.Token, ar.Key, s.NewService(t, attacker.User.Tenant).Token} {
			s.Do(t, tok, lgQuery, map[string]any{"r": vr.ID}).Code(t, "NOT_FOUND")
			s.Do(t, tok, lgQuery, map[string]any{"j": vl.Job.ID}).Code(t, "NOT_FOUND")
			s.Do(t, tok, `query($r: ID) { logSummary(robotId: $r) { count } }`, map[string]any{"r": vr.ID}).Code(t, "NOT_FOUND")
		}
		var sum struct{ LogSummary []struct{ RobotID string } }
		s.Do(t, attacker.User.Token, `{ logSummary { robotId } }`, nil).OK(t, &sum)
		require.Len(t, sum.LogSummary, 1)
		require.Equal(t, ar.ID, sum.LogSummary[0].RobotID)
	})

	t.Run("a robot reads only its own lines", func(t *testing.T) {
		require.Equal(t, []string{"sibling line"}, lgList(t, s, sibling.Key, nil).messages())
		s.Do(t, sibling.Key, lgQuery, map[string]any{"r": vr.ID}).Code(t, "NOT_FOUND")
		s.Do(t, sibling.Key, lgQuery, map[string]any{"j": vl.Job.ID}).Code(t, "NOT_FOUND")
		var sum struct{ LogSummary []struct{ RobotID string } }
		s.Do(t, sibling.Key, `{ logSummary { robotId } }`, nil).OK(t, &sum)
		require.Len(t, sum.LogSummary, 1)
		require.Equal(t, sibling.ID, sum.LogSummary[0].RobotID)
		// The victim's user sees all three robots' lines of its tenant.
		require.ElementsMatch(t, []string{"victim secret", "victim job line", "sibling line"}, lgList(t, s, victim.User.Token, nil).messages())
	})

	t.Run("a robot writes only its own lines", func(t *testing.T) {
		// Lines name no robot: they are the caller's. Another robot's job is not found.
		for _, key := range []string{sibling.Key, ar.Key} {
			s.Do(t, key, lgShip, map[string]any{"e": []any{map[string]any{"level": "INFO", "message": "forged", "jobId": vl.Job.ID, "leaseToken": vl.LeaseToken}}}).Code(t, "NOT_FOUND")
			s.Do(t, key, `mutation($j: ID!, $l: ID!) { appendJobLogs(jobId: $j, leaseToken: $l, entries: [{level: INFO, message: "forged"}]) }`,
				map[string]any{"j": vl.Job.ID, "l": vl.LeaseToken}).Code(t, "NOT_FOUND")
		}
		require.Equal(t, victimLines, lgCount(t, s, victim.User.Tenant))
		s.Do(t, victim.User.Token, lgShip, map[string]any{"e": []any{lgEntry("INFO", "user line")}}).Code(t, "FORBIDDEN")
		require.Equal(t, victimLines, lgCount(t, s, victim.User.Tenant))
	})

	t.Run("job logs show only the robot's own lines to a robot", func(t *testing.T) {
		var out struct {
			Job *struct{ Logs []struct{ Message string } }
		}
		s.Do(t, vr.Key, `query($j: ID!) { job(id: $j) { logs { message } } }`, map[string]any{"j": vl.Job.ID}).OK(t, &out)
		require.Len(t, out.Job.Logs, 1)
		s.Do(t, sibling.Key, `query($j: ID!) { job(id: $j) { logs { message } } }`, map[string]any{"j": vl.Job.ID}).OK(t, &out)
		require.Nil(t, out.Job)
	})

	t.Run("heartbeat history stays in its tenant", func(t *testing.T) {
		var out struct {
			Robot *struct{ Heartbeats []struct{ Status string } }
		}
		s.Do(t, attacker.User.Token, `query($r: ID!) { robot(id: $r) { heartbeats { status } } }`, map[string]any{"r": vr.ID}).OK(t, &out)
		require.Nil(t, out.Robot)
		s.Do(t, sibling.Key, `query($r: ID!) { robot(id: $r) { heartbeats { status } } }`, map[string]any{"r": vr.ID}).OK(t, &out)
		require.Nil(t, out.Robot)
		s.Do(t, victim.User.Token, `query($r: ID!) { robot(id: $r) { heartbeats { status } } }`, map[string]any{"r": vr.ID}).OK(t, &out)
		require.Len(t, out.Robot.Heartbeats, 1)
	})

	t.Run("only service_role cleans up and reads the history", func(t *testing.T) {
		for _, tok := range []string{victim.User.Token, vr.Key} {
			s.Do(t, tok, `mutation { cleanupLogs(dryRun: true) { id } }`, nil).Code(t, "FORBIDDEN")
			s.Do(t, tok, `{ logCleanupHistory { edges { node { id } } } }`, nil).Code(t, "FORBIDDEN")
		}
		s.Do(t, "", `{ logCleanupHistory { edges { node { id } } } }`, nil).Code(t, "UNAUTHENTICATED")
	})

	t.Run("tails stay in their tenant and robot", func(t *testing.T) {
		c := lvConnect(t, s, attacker.User.Token)
		e := c.refusal("victim", lgTailSub, map[string]any{"r": vr.ID})
		require.Equal(t, "NOT_FOUND", e.Code())
		require.Equal(t, "robotId", e.Extensions["field"], "named as the robotLogs query names it")
		rc := lvConnect(t, s, sibling.Key)
		require.Equal(t, "NOT_FOUND", rc.refused("victim", lgTailSub, map[string]any{"r": vr.ID}))

		// Tenant-wide tails of the attacker (user) and of the sibling robot
		// (its own lines only): the victim's batch must never reach them.
		c.subscribe("all", lgTailSub, nil)
		rc.subscribe("own", lgTailSub, nil)
		lgSyncTail(t, s, c, "all", ar.Key)
		lgSyncTail(t, s, rc, "own", sibling.Key)
		lgShipOK(t, s, vr.Key, lgEntry("CRITICAL", "victim batch"))
		// Barriers: a later batch of their own must be the next message.
		lgShipOK(t, s, ar.Key, lgEntry("INFO", "attacker barrier"))
		lgShipOK(t, s, sibling.Key, lgEntry("INFO", "sibling barrier"))
		var got lgTail
		c.value("all", &got)
		require.Equal(t, []string{"attacker barrier"}, got.messages())
		rc.value("own", &got)
		require.Equal(t, []string{"sibling barrier"}, got.messages())
	})
}

type lgTail struct {
	RobotID     *string
	MissedLines int
	Lines       []struct{ ID, RobotID, Level, Message string }
}

func (b lgTail) messages() []string {
	var out []string
	for _, l := range b.Lines {
		out = append(out, l.Message)
	}
	return out
}

// lgSyncTail makes tail id live by shipping CRITICAL probes as key until one arrives.
func lgSyncTail(t *testing.T, s *apitest.Server, c *lvConn, id, key string) {
	t.Helper()
	n := 0
	c.sync(id, func() {
		n++
		lgShipOK(t, s, key, lgEntry("CRITICAL", fmt.Sprintf("probe %d", n)))
	}, func(m lvMsg) bool {
		var p struct {
			Data map[string]lgTail
		}
		if json.Unmarshal(m.Payload, &p) != nil {
			return false
		}
		for _, b := range p.Data {
			for _, l := range b.Lines {
				if strings.HasPrefix(l.Message, "probe ") {
					return true
				}
			}
		}
		return false
	})
}

func TestRobotLogTail(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "tailed", apitest.RobotOpts{})
	other := tn.CreateRobot(t, "other", apitest.RobotOpts{})

	c := lvConnect(t, s, tn.User.Token)
	c.ws.SetReadLimit(1 << 20) // a batch of 1,000 lines is one message
	c.subscribe("warn", lgTailSub, map[string]any{"r": r.ID, "min": "WARNING"})
	lgSyncTail(t, s, c, "warn", r.Key)

	lgShipOK(t, s, other.Key, lgEntry("CRITICAL", "another robot")) // not this tail's robot
	lgShipOK(t, s, r.Key, lgEntry("INFO", "quiet batch"))           // nothing at WARNING: no message
	lgShipOK(t, s, r.Key, lgEntry("DEBUG", "a"), lgEntry("WARN", "b"), lgEntry("INFO", "c"), lgEntry("ERROR", "d"), lgEntry("CRITICAL", "e"))
	var got lgTail
	c.value("warn", &got)
	require.Equal(t, []string{"b", "d", "e"}, got.messages(), "one message per batch, oldest first, at WARNING and above")
	require.Equal(t, r.ID, *got.RobotID)
	require.Equal(t, "WARNING", got.Lines[0].Level)
	require.Zero(t, got.MissedLines)

	// A batch of 1,000 lines is one message.
	many := make([]map[string]any, 1000)
	for i := range many {
		many[i] = lgEntry("ERROR", fmt.Sprintf("bulk %d", i))
	}
	lgShipOK(t, s, r.Key, many...)
	c.value("warn", &got)
	require.Len(t, got.Lines, 1000)
	require.Equal(t, "bulk 0", got.Lines[0].Message)
	require.Equal(t, "bulk 999", got.Lines[999].Message)

	// Job lines (appendJobLogs, progress messages) are tailed too.
	tn.Enqueue(t, nil)
	l := r.Claim(t, 0)
	require.NotNil(t, l)
	s.Do(t, r.Key, `mutation($j: ID!, $l: ID!) { appendJobLogs(jobId: $j, leaseToken: $l, entries: [{level: ERROR, message: "job failed a step"}]) }`,
		map[string]any{"j": l.Job.ID, "l": l.LeaseToken}).OK(t, nil)
	c.value("warn", &got)
	require.Equal(t, []string{"job failed a step"}, got.messages())

	// A deleted robot ships no more lines: its tail completes; a tail of
	// every robot goes on.
	c.subscribe("all", lgTailSub, nil)
	lgSyncTail(t, s, c, "all", other.Key)
	tn.Do(t, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": r.ID}, nil)
	require.Equal(t, "complete", c.next("warn").Type)
	lgShipOK(t, s, other.Key, lgEntry("INFO", "still tailed"))
	c.value("all", &got)
	require.Equal(t, []string{"still tailed"}, got.messages())
}

func TestRobotLogShipSendsOneNotificationPerBatch(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "counted", apitest.RobotOpts{})

	l := pq.NewListener(s.DB.DSN, time.Second, time.Minute, nil)
	t.Cleanup(func() { _ = l.Close() })
	require.NoError(t, l.Listen("fleetgraph_change"))
	require.NoError(t, l.Listen("lg_barrier"))

	many := make([]map[string]any, 500)
	for i := range many {
		many[i] = lgEntry("INFO", fmt.Sprintf("line %d", i))
	}
	lgShipOK(t, s, r.Key, many...)
	lgShipOK(t, s, r.Key, many[:3]...)
	// Notifications arrive in commit order: the barrier comes after both batches'.
	_, err := s.DB.ExecContext(t.Context(), "SELECT pg_notify('lg_barrier', '')")
	require.NoError(t, err)

	var batches []map[string]any
	deadline := time.After(lvWait)
	for {
		select {
		case n := <-l.Notify:
			require.NotNil(t, n, "the listener reconnected; notifications may be lost")
			if n.Channel == "lg_barrier" {
				require.Len(t, batches, 2, "one notification per batch: %v", batches)
				require.EqualValues(t, 500, batches[0]["n"])
				require.EqualValues(t, 3, batches[1]["n"])
				require.Equal(t, r.ID, batches[0]["r"])
				require.Less(t, len(n.Extra)+len(fmt.Sprint(batches[0])), 8000)
				return
			}
			var c map[string]any
			require.NoError(t, json.Unmarshal([]byte(n.Extra), &c))
			if c["k"] == "log" {
				batches = append(batches, c)
			}
		case <-deadline:
			require.FailNow(t, "the barrier notification never came")
		}
	}
}

func TestCleanupLogs(t *testing.T) {
	t.Parallel()
	s := apitest.New(t) // its own database: retention is installation-wide
	a, b := apitest.NewTenant(t, s), apitest.NewTenant(t, s)
	svcA, svcB := s.NewService(t, a.User.Tenant), s.NewService(t, b.User.Tenant)
	// The leader's first retention run happens at start; wait for it, so
	// that the old day made below is dropped only by the runs of this test.
	require.Eventually(t, func() bool {
		return rbCount(t, s, "robot_log_cleanups", "actor = 'system:log-retention'") > 0
	}, lvWait, 10*time.Millisecond)

	old := time.Now().UTC().AddDate(0, 0, -45)
	oldDay := old.Format(time.DateOnly)
	_, err := s.DB.ExecContext(t.Context(), "SELECT fleetgraph_ensure_log_partition(?::date)", oldDay)
	require.NoError(t, err)
	_, err = s.DB.ExecContext(t.Context(), `INSERT INTO robot_logs (tenant_id, robot_id, level, message, at)
		VALUES (?, gen_random_uuid(), 20, 'a1', ?), (?, gen_random_uuid(), 20, 'a2', ?), (?, gen_random_uuid(), 20, 'b1', ?)`,
		a.User.Tenant, old, a.User.Tenant, old, b.User.Tenant, old)
	require.NoError(t, err)
	partition := "robot_logs_p" + old.Format("20060102")
	exists := func() bool {
		var ok bool
		require.NoError(t, s.DB.NewRaw("SELECT to_regclass(?) IS NOT NULL", partition).Scan(t.Context(), &ok))
		return ok
	}

	type run struct {
		ID                string
		Actor             string
		DryRun            bool
		RetentionDays     int
		Cutoff            time.Time
		PartitionsDropped []string
		LinesDropped      float64
		BytesFreed        float64
		HeartbeatsDropped float64
	}
	const fields = `id actor dryRun retentionDays cutoff partitionsDropped linesDropped bytesFreed heartbeatsDropped`
	var out struct{ CleanupLogs run }

	s.Do(t, svcA.Token, `mutation { cleanupLogs(retentionDays: 29) { id } }`, nil).Code(t, "BAD_USER_INPUT")
	s.Do(t, svcA.Token, `mutation { cleanupLogs(retentionDays: 0, dryRun: true) { id } }`, nil).Code(t, "BAD_USER_INPUT")
	s.Do(t, svcA.Token, `mutation { cleanupLogs(retentionDays: 100000, dryRun: true) { id } }`, nil).Code(t, "BAD_USER_INPUT")
	require.True(t, exists())

	var size int64
	require.NoError(t, s.DB.NewRaw("SELECT pg_total_relation_size(?::regclass)", partition).Scan(t.Context(), &size))
	s.Do(t, svcA.Token, `mutation { cleanupLogs(dryRun: true) { `+fields+` } }`, nil).OK(t, &out)
	dry := out.CleanupLogs
	require.True(t, dry.DryRun)
	require.Equal(t, 30, dry.RetentionDays)
	require.Equal(t, []string{oldDay}, dry.PartitionsDropped)
	require.EqualValues(t, 2, dry.LinesDropped, "tenant A's own lines, not B's")
	require.EqualValues(t, size*2/3, dry.BytesFreed, "A's 2 lines of 3, though the day was never analyzed")
	require.Equal(t, "user:"+svcA.ID.String(), dry.Actor)
	require.True(t, exists(), "a dry run drops nothing")

	// The operator's dry run (the CLI's, as the system): its days say which
	// days hold lines, of any tenant, so only the system sees it.
	sysCtx := auth.WithPrincipal(t.Context(), auth.SystemPrincipal("cli"))
	sysDry, err := s.App.Resolver.LogStore.Cleanup(sysCtx, s.DB, nil, true)
	require.NoError(t, err)
	require.Equal(t, []string{oldDay}, sysDry.Partitions)

	s.Do(t, svcA.Token, `mutation { cleanupLogs { `+fields+` } }`, nil).OK(t, &out)
	real := out.CleanupLogs
	require.False(t, real.DryRun)
	require.Equal(t, []string{oldDay}, real.PartitionsDropped)
	require.EqualValues(t, 2, real.LinesDropped)
	require.False(t, exists())

	s.Do(t, svcA.Token, `mutation { cleanupLogs { `+fields+` } }`, nil).OK(t, &out)
	require.Empty(t, out.CleanupLogs.PartitionsDropped, "nothing is left to drop")

	type history struct {
		LogCleanupHistory struct {
			Edges []struct {
				Cursor string
				Node   run
			}
			PageInfo struct{ HasNextPage bool }
		}
	}
	var h history
	s.Do(t, svcA.Token, `{ logCleanupHistory { edges { cursor node { `+fields+` } } pageInfo { hasNextPage } } }`, nil).OK(t, &h)
	var ids []string
	for _, e := range h.LogCleanupHistory.Edges {
		ids = append(ids, e.Node.ID)
	}
	require.Equal(t, []string{out.CleanupLogs.ID, real.ID, dry.ID}, ids[:3], "newest first, dry runs included")
	require.Equal(t, "system:log-retention", h.LogCleanupHistory.Edges[len(ids)-1].Node.Actor)

	// Tenant B sees the run that dropped its lines, with its own share and
	// without A's identity; not A's dry run, nor A's run that dropped nothing.
	s.Do(t, svcB.Token, `{ logCleanupHistory { edges { node { `+fields+` } } } }`, nil).OK(t, &h)
	var seen []run
	for _, e := range h.LogCleanupHistory.Edges {
		if e.Node.Actor != "system:log-retention" {
			seen = append(seen, e.Node)
		}
	}
	require.Len(t, seen, 1, "B sees neither A's dry run nor the system's: %+v", seen)
	require.Equal(t, real.ID, seen[0].ID)
	require.Equal(t, "service", seen[0].Actor)
	require.EqualValues(t, 1, seen[0].LinesDropped)

	// Pages.
	var p1, p2 history
	s.Do(t, svcA.Token, `{ logCleanupHistory(first: 1) { edges { cursor node { id } } pageInfo { hasNextPage } } }`, nil).OK(t, &p1)
	require.True(t, p1.LogCleanupHistory.PageInfo.HasNextPage)
	s.Do(t, svcA.Token, `query($a: String) { logCleanupHistory(first: 1, after: $a) { edges { cursor node { id } } } }`,
		map[string]any{"a": p1.LogCleanupHistory.Edges[0].Cursor}).OK(t, &p2)
	require.Equal(t, real.ID, p2.LogCleanupHistory.Edges[0].Node.ID)
	s.Do(t, svcA.Token, `{ logCleanupHistory(after: "bm9wZQ") { edges { cursor } } }`, nil).Code(t, "BAD_USER_INPUT")
}

// TestCleanupDryRunReadsOnlyTheCallersLines checks that a tenant's dry
// run counts its own lines through the tenant index and scans no other
// tenant's: a day of another tenant's 20,000 lines is not read (the
// partition's count of rows read by sequential scans stays still once its
// index scan is counted), and the dry run still reports the caller's exact lines and a
// share of the bytes.
func TestCleanupDryRunReadsOnlyTheCallersLines(t *testing.T) {
	t.Parallel()
	s := apitest.New(t) // its own database: retention is installation-wide
	a, b := apitest.NewTenant(t, s), apitest.NewTenant(t, s)
	svcA := s.NewService(t, a.User.Tenant)
	require.Eventually(t, func() bool { // the leader's run at start, so that none runs below
		return rbCount(t, s, "robot_log_cleanups", "actor = 'system:log-retention'") > 0
	}, lvWait, 10*time.Millisecond)

	old := time.Now().UTC().AddDate(0, 0, -45)
	partition := "robot_logs_p" + old.Format("20060102")
	ctx := t.Context()
	_, err := s.DB.ExecContext(ctx, "SELECT fleetgraph_ensure_log_partition(?::date)", old.Format(time.DateOnly))
	require.NoError(t, err)
	_, err = s.DB.ExecContext(ctx, `INSERT INTO robot_logs (tenant_id, robot_id, level, message, at)
		SELECT CASE WHEN i <= 5 THEN ?::uuid ELSE ?::uuid END, gen_random_uuid(), 20, 'line', ? FROM generate_series(1, 20005) AS i`,
		a.User.Tenant, b.User.Tenant, old)
	require.NoError(t, err)
	_, err = s.DB.ExecContext(ctx, "VACUUM ANALYZE "+partition)
	require.NoError(t, err)

	type scans struct{ SeqRead, Index int64 }
	read := func() scans {
		var sc scans
		_, err := s.DB.ExecContext(ctx, "SELECT pg_stat_clear_snapshot()")
		require.NoError(t, err)
		require.NoError(t, s.DB.NewRaw(`SELECT coalesce(seq_tup_read, 0), coalesce(idx_scan, 0)
			FROM pg_stat_user_tables WHERE relname = ?`, partition).Scan(ctx, &sc.SeqRead, &sc.Index))
		return sc
	}
	before := read()

	var out struct {
		CleanupLogs struct {
			DryRun            bool
			PartitionsDropped []string
			LinesDropped      float64
			BytesFreed        float64
		}
	}
	s.Do(t, svcA.Token, `mutation { cleanupLogs(dryRun: true) { dryRun partitionsDropped linesDropped bytesFreed } }`, nil).OK(t, &out)
	require.True(t, out.CleanupLogs.DryRun)
	require.Equal(t, []string{old.Format(time.DateOnly)}, out.CleanupLogs.PartitionsDropped)
	require.EqualValues(t, 5, out.CleanupLogs.LinesDropped, "tenant A's own lines")
	require.Positive(t, out.CleanupLogs.BytesFreed)

	// The server's session reports its counters when it next finishes a
	// transaction a second after its last report, or when idle: wait for the
	// index scan to show, then check no sequential scan came with it.
	var after scans
	apitest.Eventually(t, 30*time.Second, "the dry run's index scan in the statistics", func() bool {
		after = read()
		return after.Index > before.Index || after.SeqRead > before.SeqRead
	})
	require.Less(t, after.SeqRead-before.SeqRead, int64(1000), "the partition was scanned: %+v then %+v", before, after)
}

// TestShipLogsLocksJobsInIDOrder checks that shipLogs locks the jobs its
// lines are about in id order, whatever order the lines come in, as a
// heartbeat extending the same jobs' leases does: in the lines' order the
// two could deadlock. With the lower job held by another transaction, a
// shipLogs whose first line is about the higher job waits without having
// locked the higher one.
func TestShipLogsLocksJobsInIDOrder(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "r", apitest.RobotOpts{Slots: 2})
	tn.Enqueue(t, nil)
	tn.Enqueue(t, nil)
	leases := []*apitest.Lease{r.Claim(t, 0), r.Claim(t, 0)}
	for _, l := range leases {
		require.NotNil(t, l)
		r.Start(t, l)
	}
	sort.Slice(leases, func(i, j int) bool { // the uuids' byte order, PostgreSQL's
		a, b := uuid.MustParse(leases[i].Job.ID), uuid.MustParse(leases[j].Job.ID)
		return bytes.Compare(a[:], b[:]) < 0
	})
	low, high := leases[0], leases[1]

	ctx := t.Context()
	holder, err := s.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer holder.Rollback()
	_, err = holder.ExecContext(ctx, "SELECT id FROM jobs WHERE id = ? FOR UPDATE", low.Job.ID)
	require.NoError(t, err)

	shipped := make(chan *apitest.Response, 1)
	go func() {
		shipped <- s.Do(t, r.Key, lgShip, map[string]any{"e": []any{
			map[string]any{"level": "INFO", "message": "about the higher", "jobId": high.Job.ID, "leaseToken": high.LeaseToken},
			map[string]any{"level": "INFO", "message": "about the lower", "jobId": low.Job.ID, "leaseToken": low.LeaseToken},
		}})
	}()
	apitest.Eventually(t, apitest.Patience, "shipLogs waits for the lower job", func() bool {
		return s.LockWaiters(t, "%") > 0
	})
	probe, err := s.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	_, err = probe.ExecContext(ctx, "SELECT id FROM jobs WHERE id = ? FOR UPDATE NOWAIT", high.Job.ID)
	require.NoError(t, err, "shipLogs locked the higher job before the lower one")
	require.NoError(t, probe.Rollback())

	require.NoError(t, holder.Rollback())
	select {
	case resp := <-shipped:
		resp.OK(t, nil)
	case <-time.After(apitest.Patience):
		t.Fatal("shipLogs never finished")
	}
}
