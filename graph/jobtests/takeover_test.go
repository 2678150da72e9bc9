package jobtests

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/maintenance"
)

// After an outage longer than a lease and the offline threshold, the
// replica that takes over the maintenance gives robots the takeover grace
// to get in touch: a robot that heartbeats in it keeps its job and stays
// online; one that stays silent loses its job and goes OFFLINE once the
// grace has passed.
func TestATakeoverGivesRobotsAGrace(t *testing.T) {
	t.Parallel()
	clock := maintenance.NewManualClock(time.Now())
	q := apitest.LongLeaseQueue()
	q.OfflineAfter, q.TakeoverGrace = time.Hour, time.Minute
	s := apitest.New(t, apitest.Options{Clock: clock, Queue: q})
	tn := apitest.NewTenant(t, s)
	back, gone := tn.CreateRobot(t, "back", apitest.RobotOpts{}), tn.CreateRobot(t, "gone", apitest.RobotOpts{})
	work := func(r *apitest.Robot) string {
		r.Heartbeat(t, "BUSY")
		tn.Enqueue(t, nil)
		l := r.Claim(t, 0)
		require.NotNil(t, l)
		r.Start(t, l)
		return l.Job.ID
	}
	backJob, goneJob := work(back), work(gone)
	state := func() (jobs, robots map[string]string) {
		jobs, robots = map[string]string{}, map[string]string{}
		for _, id := range []string{backJob, goneJob} {
			jobs[id] = tn.Job(t, id).Status
		}
		var rows []struct{ Name, Status string }
		require.NoError(t, s.DB.NewRaw(`SELECT name, status FROM robots WHERE tenant_id = ?`, tn.User.Tenant).Scan(t.Context(), &rows))
		for _, r := range rows {
			robots[r.Name] = r.Status
		}
		return jobs, robots
	}
	step := func() {
		t.Helper()
		leading, err := s.App.Maintenance.Step(t.Context())
		require.NoError(t, err)
		require.True(t, leading)
	}

	// Two hours pass in the database with no leader: every lease ran out,
	// every robot is past the offline threshold.
	_, err := s.DB.NewRaw(`UPDATE jobs SET lease_expires_at = now() - interval '1 hour' WHERE tenant_id = ?`, tn.User.Tenant).Exec(t.Context())
	require.NoError(t, err)
	_, err = s.DB.NewRaw(`UPDATE robots SET last_heartbeat_at = now() - interval '2 hours' WHERE tenant_id = ?`, tn.User.Tenant).Exec(t.Context())
	require.NoError(t, err)

	step() // the takeover
	jobs, robots := state()
	require.Equal(t, map[string]string{backJob: "RUNNING", goneJob: "RUNNING"}, jobs, "no rescue in the grace")
	require.Equal(t, map[string]string{"back": "BUSY", "gone": "BUSY"}, robots, "no robot OFFLINE in the grace")

	back.Heartbeat(t, "BUSY") // in the grace: it extends the expired lease
	clock.Advance(30 * time.Second)
	step()
	jobs, _ = state()
	require.Equal(t, "RUNNING", jobs[goneJob], "still in the grace")

	clock.Advance(30 * time.Second)
	step()
	jobs, robots = state()
	require.Equal(t, map[string]string{backJob: "RUNNING", goneJob: "QUEUED"}, jobs, "the silent robot's job is rescued after the grace")
	require.Equal(t, map[string]string{"back": "BUSY", "gone": "OFFLINE"}, robots)
}
