package jobtests

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// A claim whose answer is not delivered leases nothing: a batch selecting
// its workflows' definitions outgrows the response budget, the robot gets
// RESPONSE_TOO_LARGE and no token, and its jobs go back to the queue at
// once, their attempts uncounted, rather than sitting CLAIMED until their
// leases run out. The same holds for the next leases of completions.
func TestAnUndeliveredClaimLeasesNothing(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	tn := apitest.NewTenant(t, s)
	for range 3 {
		var v struct{ PublishWorkflowVersion struct{ Version int } }
		tn.Do(t, `mutation($w: ID!, $d: JSON!) { publishWorkflowVersion(workflowId: $w, definition: $d) { version } }`,
			map[string]any{"w": tn.Workflow, "d": apitest.JSONOfSize(60 << 10)}, &v)
	}
	const jobs = 100
	jbEnqueue(t, tn, jobs, func(int) int { return 0 })
	r := tn.CreateRobot(t, "r", apitest.RobotOpts{Slots: jobs})
	const heavy = `leaseToken job { id workflow { versions { definition } } }`

	tooLarge := func(t *testing.T, resp *apitest.Response) {
		t.Helper()
		require.Len(t, resp.Errors, 1, "%s", resp.Raw[:min(len(resp.Raw), 500)])
		require.Equal(t, "RESPONSE_TOO_LARGE", resp.Errors[0].Extensions["reason"])
	}
	attempts := func(t *testing.T) (claimed, total int) {
		t.Helper()
		require.NoError(t, s.DB.NewRaw("SELECT count(*) FILTER (WHERE status <> 'QUEUED'), coalesce(sum(attempt), 0) FROM jobs WHERE tenant_id = ?",
			tn.User.Tenant).Scan(t.Context(), &claimed, &total))
		return claimed, total
	}

	tooLarge(t, s.Do(t, r.Key, `mutation { claimJobs(limit: 100) { `+heavy+` } }`, nil))
	require.Zero(t, jbHeld(t, s, r.ID), "the robot got no lease token, so it holds nothing")
	claimed, total := attempts(t)
	require.Zero(t, claimed)
	require.Zero(t, total, "no attempt was used")

	// Completions claiming next: the completions stand, the next leases go back.
	var got struct {
		ClaimJobs []struct {
			LeaseToken string
			Job        struct{ ID string }
		}
	}
	s.Do(t, r.Key, `mutation { claimJobs(limit: 100) { leaseToken job { id } } }`, nil).OK(t, &got)
	require.Len(t, got.ClaimJobs, jobs)
	done := got.ClaimJobs[:10]
	completions := make([]map[string]any, len(done))
	for i, l := range done {
		completions[i] = map[string]any{"jobId": l.Job.ID, "leaseToken": l.LeaseToken}
	}
	// Free the other 90 first, so the claimNext has slots.
	for _, l := range got.ClaimJobs[10:] {
		s.Do(t, r.Key, `mutation($j: ID!, $l: ID!) { failJob(jobId: $j, leaseToken: $l, error: "x", retryable: false) { id } }`,
			map[string]any{"j": l.Job.ID, "l": l.LeaseToken}).OK(t, nil)
	}
	jbEnqueue(t, tn, jobs, func(int) int { return 0 })
	tooLarge(t, s.Do(t, r.Key, `mutation($c: [JobCompletionInput!]!) { completeJobs(completions: $c, startIfClaimed: true, claimNext: 100) {
		jobs { id } nextLeases { `+heavy+` } } }`, map[string]any{"c": completions}))
	require.Zero(t, jbHeld(t, s, r.ID), "the completions stand and the next leases went back")
	var completed int
	require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM jobs WHERE tenant_id = ? AND status = 'COMPLETED'", tn.User.Tenant).Scan(t.Context(), &completed))
	require.Equal(t, 10, completed)
	require.Equal(t, jobs, jbQueued(t, tn))
}

// Leases go back when a later field's error nulls the whole data
// (shipLogs is non-null). A lease the answer carries stays, as does one
// whose job it shows without the token (the client chose what to read).
func TestLeasesTheAnswerDoesNotCarryGoBack(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()})
	tn := apitest.NewTenant(t, s)
	jbEnqueue(t, tn, 10, func(int) int { return 0 })
	r := tn.CreateRobot(t, "r", apitest.RobotOpts{Slots: 10})

	resp := s.Do(t, r.Key, `mutation($m: String!) { claimJobs(limit: 5) { leaseToken job { id } } shipLogs(entries: [{level: INFO, message: $m}]) }`,
		map[string]any{"m": strings.Repeat("x", 10_000)})
	require.NotEmpty(t, resp.Errors)
	require.Contains(t, []string{"", "null"}, string(resp.Data), "the error nulled the data, leases with it")
	require.Zero(t, jbHeld(t, s, r.ID), "no token was sent, so nothing is held")

	s.Do(t, r.Key, `mutation { claimJob { job { id } } }`, nil).OK(t, nil)
	require.Equal(t, 1, jbHeld(t, s, r.ID), "a claim that shows its job stands")

	var got struct{ ClaimJob struct{ LeaseToken string } }
	s.Do(t, r.Key, `mutation { claimJob { leaseToken } }`, nil).OK(t, &got)
	require.NotEmpty(t, got.ClaimJob.LeaseToken)
	require.Equal(t, 2, jbHeld(t, s, r.ID), "a delivered lease stays")
	require.Equal(t, 8, jbQueued(t, tn))
}
