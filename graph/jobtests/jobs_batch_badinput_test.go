package jobtests

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
)

// Bad input to the batching calls (claimJobs, completeJobs, claimNext, startIfClaimed)
// is refused with a clear code naming the field, leaks no SQL, logs no
// internal error, and writes nothing: no job is leased, started or
// finished by a refused call.

// jbbGQLValidation is the reason of a request GraphQL validation refuses,
// as badGQLValidation is in package graph's tests.
const jbbGQLValidation = "GRAPHQL_VALIDATION_FAILED"

// jbbFixture is a robot with three slots holding a RUNNING and a CLAIMED
// job, with three more jobs queued that it could take.
type jbbFixture struct {
	s                *apitest.Server
	tn               *apitest.Tenant
	r                *apitest.Robot
	running, claimed apitest.Lease
}

func jbbNewFixture(t *testing.T) jbbFixture {
	t.Helper()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "bot", apitest.RobotOpts{Slots: 3})
	jbEnqueue(t, tn, 5, func(int) int { return 0 })
	leases := jbClaimJobs(t, r, 2, 0)
	require.Len(t, leases, 2)
	r.Start(t, &leases[0])
	require.Equal(t, 3, jbQueued(t, tn))
	return jbbFixture{s: s, tn: tn, r: r, running: leases[0], claimed: leases[1]}
}

// jbbSnapshot is everything a refused call must leave as it was: every job
// row, the robots, and the rows transitions and progress reports add.
func jbbSnapshot(t *testing.T, s *apitest.Server) string {
	t.Helper()
	var snap string
	require.NoError(t, s.DB.NewRaw(`SELECT concat_ws(E'\n',
		(SELECT string_agg(row_to_json(j)::text, E'\n' ORDER BY j.id) FROM jobs j),
		(SELECT string_agg(concat_ws(' | ', id, status, max_concurrent_jobs, updated_at, revision), E'\n' ORDER BY id) FROM robots),
		(SELECT 'robot_logs ' || count(*) FROM robot_logs),
		(SELECT 'webhook_events ' || count(*) FROM webhook_events),
		(SELECT 'webhook_deliveries ' || count(*) FROM webhook_deliveries))`).Scan(t.Context(), &snap))
	return snap
}

// jbbCompletion is l's completion in a completeJobs batch, with result.
func jbbCompletion(l apitest.Lease, result any) map[string]any {
	return map[string]any{"jobId": l.Job.ID, "leaseToken": l.LeaseToken, "result": result}
}

// jbbMany is n completions of the same lease.
func jbbMany(l apitest.Lease, n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = jbbCompletion(l, nil)
	}
	return out
}

func TestJobBatchBadInputIsRefusedAndWritesNothing(t *testing.T) {
	t.Parallel()
	f := jbbNewFixture(t)
	const claimJobs = `mutation($n: Int!, $w: Int) { claimJobs(limit: $n, waitSeconds: $w) { leaseToken } }`
	claimed, running := f.claimed, f.running
	fenced := func(l apitest.Lease, extra map[string]any) map[string]any {
		v := map[string]any{"j": l.Job.ID, "l": l.LeaseToken}
		for k, x := range extra {
			v[k] = x
		}
		return v
	}
	cases := []struct {
		name  string
		user  bool // as the tenant's user instead of the robot
		query string
		vars  map[string]any
		code  string
		field string
		// reason is the expected extensions.reason, when there is one.
		reason string
	}{
		{name: "claimJobs/Limit0", query: claimJobs, vars: map[string]any{"n": 0}, code: "BAD_USER_INPUT", field: "limit"},
		{name: "claimJobs/LimitNegative", query: claimJobs, vars: map[string]any{"n": -1}, code: "BAD_USER_INPUT", field: "limit"},
		{name: "claimJobs/Limit101", query: claimJobs, vars: map[string]any{"n": db.MaxClaimBatch + 1}, code: "BAD_USER_INPUT", field: "limit"},
		{name: "claimJobs/LimitHuge", query: claimJobs, vars: map[string]any{"n": 2147483647}, code: "BAD_USER_INPUT", field: "limit"},
		{name: "claimJobs/LimitLiteral0", query: `mutation { claimJobs(limit: 0) { leaseToken } }`, code: "BAD_USER_INPUT", field: "limit"},
		{name: "claimJobs/LimitOver32Bits", query: `mutation { claimJobs(limit: 2147483648) { leaseToken } }`, code: "BAD_USER_INPUT"},
		{name: "claimJobs/LimitVariableOver32Bits", query: claimJobs, vars: map[string]any{"n": json.Number("2147483648")}, code: "BAD_USER_INPUT"},
		{name: "claimJobs/LimitMissing", query: `mutation { claimJobs { leaseToken } }`, code: "BAD_USER_INPUT", reason: jbbGQLValidation},
		{name: "claimJobs/LimitNull", query: claimJobs, vars: map[string]any{"n": nil}, code: "BAD_USER_INPUT"},
		{name: "claimJobs/LimitString", query: claimJobs, vars: map[string]any{"n": "3"}, code: "BAD_USER_INPUT"},
		{name: "claimJobs/WaitNegative", query: claimJobs, vars: map[string]any{"n": 1, "w": -1}, code: "BAD_USER_INPUT", field: "waitSeconds"},
		{name: "claimJobs/Wait61", query: claimJobs, vars: map[string]any{"n": 1, "w": 61}, code: "BAD_USER_INPUT", field: "waitSeconds"},
		{name: "claimJobs/ByAUser", user: true, query: claimJobs, vars: map[string]any{"n": 1}, code: "FORBIDDEN"},
		{name: "claimJobs/ByAUserWaiting", user: true, query: claimJobs, vars: map[string]any{"n": 3, "w": 5}, code: "FORBIDDEN"},
		{name: "completeJob/ClaimNextWrongToken", query: jbCompleteQuery, vars: map[string]any{"j": running.Job.ID, "l": uuid.NewString(), "c": true},
			code: "CONFLICT", reason: db.ReasonLeaseLost},
		{name: "completeJob/ClaimNextOnAClaimedJobNotStarted", query: jbCompleteQuery, vars: fenced(claimed, map[string]any{"c": true}),
			code: "CONFLICT", reason: db.ReasonIllegalTransition},
		{name: "completeJob/ClaimNextUnknownJob", query: jbCompleteQuery, vars: map[string]any{"j": uuid.NewString(), "l": running.LeaseToken, "s": true, "c": true}, code: "NOT_FOUND"},
		{name: "completeJob/ClaimNextResultNotAnObject", query: jbCompleteQuery, vars: fenced(running, map[string]any{"r": []any{1}, "c": true}), code: "BAD_USER_INPUT"},
		{name: "completeJob/ClaimNextNotABoolean", query: jbCompleteQuery, vars: fenced(running, map[string]any{"c": "yes"}), code: "BAD_USER_INPUT"},
		{name: "completeJob/StartIfClaimedNotABoolean", query: jbCompleteQuery, vars: fenced(claimed, map[string]any{"s": 1}), code: "BAD_USER_INPUT"},
		{name: "completeJob/ClaimNextByAUser", user: true, query: jbCompleteQuery, vars: fenced(running, map[string]any{"c": true}), code: "FORBIDDEN"},
		{name: "completeJobs/Empty", query: jbCompleteJobsQuery, vars: map[string]any{"c": []any{}}, code: "BAD_USER_INPUT", field: "completions"},
		{name: "completeJobs/Null", query: jbCompleteJobsQuery, vars: map[string]any{"c": nil}, code: "BAD_USER_INPUT"},
		{name: "completeJobs/Over100", query: jbCompleteJobsQuery, vars: map[string]any{"c": jbbMany(running, db.MaxClaimBatch+1)}, code: "BAD_USER_INPUT", field: "completions"},
		{name: "completeJobs/SameJobTwice", query: jbCompleteJobsQuery, vars: map[string]any{"c": jbbMany(running, 2), "s": true},
			code: "BAD_USER_INPUT", field: "completions[1].jobId"},
		{name: "completeJobs/ResultNotAnObject", query: jbCompleteJobsQuery, vars: map[string]any{"c": []any{jbbCompletion(running, []any{1})}},
			code: "BAD_USER_INPUT", field: "completions[0].result"},
		{name: "completeJobs/JobIDNotAUUID", query: jbCompleteJobsQuery, vars: map[string]any{"c": []any{map[string]any{"jobId": "x'; --", "leaseToken": running.LeaseToken}}},
			code: "BAD_USER_INPUT"},
		{name: "completeJobs/LeaseTokenMissing", query: jbCompleteJobsQuery, vars: map[string]any{"c": []any{map[string]any{"jobId": running.Job.ID}}}, code: "BAD_USER_INPUT"},
		{name: "completeJobs/ClaimNextNegative", query: jbCompleteJobsQuery, vars: map[string]any{"c": []any{jbbCompletion(running, nil)}, "n": -1},
			code: "BAD_USER_INPUT", field: "claimNext"},
		{name: "completeJobs/ClaimNext101", query: jbCompleteJobsQuery, vars: map[string]any{"c": []any{jbbCompletion(running, nil)}, "n": db.MaxClaimBatch + 1},
			code: "BAD_USER_INPUT", field: "claimNext"},
		{name: "completeJobs/ClaimNextOver32Bits", query: jbCompleteJobsQuery, vars: map[string]any{"c": []any{jbbCompletion(running, nil)}, "n": json.Number("2147483648")},
			code: "BAD_USER_INPUT"},
		{name: "completeJobs/ByAUser", user: true, query: jbCompleteJobsQuery, vars: map[string]any{"c": []any{jbbCompletion(running, nil)}}, code: "FORBIDDEN"},
		// One refused completion refuses the batch: the other job stays
		// as it was, and no next job is leased.
		{name: "completeJobs/OneWrongToken", query: jbCompleteJobsQuery,
			vars: map[string]any{"c": []any{jbbCompletion(running, nil), map[string]any{"jobId": claimed.Job.ID, "leaseToken": uuid.NewString()}}, "s": true, "n": 3},
			code: "CONFLICT", field: "completions[1]", reason: db.ReasonLeaseLost},
		{name: "completeJobs/OneUnknownJob", query: jbCompleteJobsQuery,
			vars: map[string]any{"c": []any{map[string]any{"jobId": uuid.NewString(), "leaseToken": running.LeaseToken}, jbbCompletion(running, nil)}, "n": 3},
			code: "NOT_FOUND", field: "completions[0]"},
		{name: "completeJobs/ClaimedWithoutStartIfClaimed", query: jbCompleteJobsQuery,
			vars: map[string]any{"c": []any{jbbCompletion(running, nil), jbbCompletion(claimed, nil)}, "n": 1},
			code: "CONFLICT", field: "completions[1]", reason: db.ReasonIllegalTransition},
		{name: "failJob/ClaimNextNoReason", query: jbFailQuery, vars: fenced(running, map[string]any{"e": "", "c": true}), code: "BAD_USER_INPUT", field: "error"},
		{name: "failJob/ClaimNextWrongToken", query: jbFailQuery, vars: map[string]any{"j": claimed.Job.ID, "l": uuid.NewString(), "e": "x", "c": true},
			code: "CONFLICT", reason: db.ReasonLeaseLost},
		{name: "reportJobProgress/StartIfClaimedProgress101", query: jbProgressQuery, vars: fenced(claimed, map[string]any{"p": 101, "s": true}), code: "BAD_USER_INPUT", field: "progress"},
		{name: "reportJobProgress/StartIfClaimedWrongToken", query: jbProgressQuery, vars: map[string]any{"j": claimed.Job.ID, "l": uuid.NewString(), "p": 5, "s": true},
			code: "CONFLICT", reason: db.ReasonLeaseLost},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			token := f.r.Key
			if c.user {
				token = f.tn.User.Token
			}
			before := jbbSnapshot(t, f.s)
			logged := len(f.s.Log.String())
			resp := f.s.Do(t, token, c.query, c.vars)
			require.Less(t, resp.Status, 500, "response: %s", resp.Raw)
			apitest.RequireNoLeak(t, resp.Raw)
			apitest.RequireNoData(t, resp)
			e := resp.Code(t, c.code)
			require.NotEmpty(t, e.Message)
			if c.field != "" {
				require.Equal(t, c.field, e.Extensions["field"], "response: %s", resp.Raw)
			}
			if c.field == "limit" || c.field == "waitSeconds" {
				require.Contains(t, e.Message, c.field, "the message names the argument")
			}
			if c.reason != "" {
				require.Equal(t, c.reason, e.Extensions["reason"], "response: %s", resp.Raw)
			}
			var index int
			if _, err := fmt.Sscanf(c.field, "completions[%d]", &index); err == nil && c.code != "BAD_USER_INPUT" {
				require.Equal(t, float64(index), e.Extensions["index"], "a refused completion names its place in the batch: %s", resp.Raw)
			}
			require.NotContains(t, f.s.Log.String()[logged:], "internal error")
			require.Equal(t, before, jbbSnapshot(t, f.s), "a refused request changed data")
		})
	}
	// The fixture still works: the refusals left its leases as they were.
	require.Len(t, jbClaimJobs(t, f.r, 3, 0), 1, "one slot was free")
}

// The edges of claimJobs' range are accepted: a limit of 100 on a robot
// with 100 slots leases 100 jobs in one call, within the cost limit, and
// completeJobs takes all 100 back with claimNext 100.
func TestJobBatchLimitEdgesAreAccepted(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "hundred", apitest.RobotOpts{Slots: 100})
	jbEnqueue(t, tn, 120, func(i int) int { return i % 3 })
	leases := jbClaimJobs(t, r, db.MaxClaimBatch, 60)
	require.Len(t, leases, 100)
	seen := map[string]bool{}
	for i, l := range leases {
		require.False(t, seen[l.Job.ID])
		seen[l.Job.ID] = true
		if i > 0 {
			require.GreaterOrEqual(t, leases[i-1].Job.Priority, l.Job.Priority, "best first")
		}
	}
	require.Equal(t, 2, leases[0].Job.Priority)
	require.Empty(t, jbClaimJobs(t, r, 1, 0), "no slot left")
	require.Equal(t, 100, jbHeld(t, s, r.ID))

	// completeJobs' edges too: 100 completions and claimNext 100, every
	// field of both lists selected, within the cost limit.
	done := jcbDecode(t, jcbCompleteJobs(t, r, leases, true, db.MaxClaimBatch))
	require.Len(t, done.Jobs, 100)
	require.Len(t, done.NextLeases, 20, "what was left in the queue")
	require.Equal(t, 20, jbHeld(t, s, r.ID))
}
