package graph_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

func TestRobotJobHappyPath(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	var robot struct{ CreateRobot struct{ ID string } }
	s.Do(t, u.Token, `mutation { createRobot(input: {name: "r1", capabilities: ["excel"], maxConcurrentJobs: 2}) { id } }`, nil).OK(t, &robot)
	var key struct{ CreateApiKey struct{ Key string } }
	s.Do(t, u.Token, `mutation($r: ID!) { createApiKey(robotId: $r, name: "k") { key apiKey { prefix } } }`, map[string]any{"r": robot.CreateRobot.ID}).OK(t, &key)
	var wf struct{ CreateWorkflow struct{ ID string } }
	s.Do(t, u.Token, `mutation { createWorkflow(input: {name: "w", definition: {nodes: []}}) { id } }`, nil).OK(t, &wf)
	var job struct{ EnqueueJob struct{ ID, Status string } }
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.Log.String())
		}
	})
	s.Do(t, u.Token, `mutation($w: ID!) { enqueueJob(input: {workflowId: $w, requiredCapabilities: ["excel"], input: {a: 1}}) { id status } }`, map[string]any{"w": wf.CreateWorkflow.ID}).OK(t, &job)

	rk := key.CreateApiKey.Key
	var hb struct{ Heartbeat struct{ Status string } }
	s.Do(t, rk, `mutation { heartbeat(input: {status: ONLINE, metrics: {cpu: 0.5}}) { status } }`, nil).OK(t, &hb)
	require.Equal(t, "ONLINE", hb.Heartbeat.Status)
	var claim struct {
		ClaimJob struct {
			LeaseToken string
			Job        struct{ ID, Status string }
		}
	}
	s.Do(t, rk, `mutation { claimJob { leaseToken job { id status } } }`, nil).OK(t, &claim)
	require.Equal(t, job.EnqueueJob.ID, claim.ClaimJob.Job.ID)
	vars := map[string]any{"j": job.EnqueueJob.ID, "l": claim.ClaimJob.LeaseToken}
	s.Do(t, rk, `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { status } }`, vars).OK(t, nil)
	s.Do(t, rk, `mutation($j: ID!, $l: ID!) { reportJobProgress(jobId: $j, leaseToken: $l, progress: 50, message: "half") { progress } }`, vars).OK(t, nil)
	var done struct{ CompleteJob struct{ Status string } }
	s.Do(t, rk, `mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}) { status } }`, vars).OK(t, &done)
	require.Equal(t, "COMPLETED", done.CompleteJob.Status)
	var stats struct {
		RobotStats struct {
			Online int
			Robots []struct {
				JobsCompleted int
				SuccessRate   float64
			}
		}
	}
	s.Do(t, u.Token, `{ robotStats { online robots { jobsCompleted successRate } } }`, nil).OK(t, &stats)
	require.Equal(t, 1, stats.RobotStats.Online)
	require.Equal(t, 1, stats.RobotStats.Robots[0].JobsCompleted)
	s.Do(t, u.Token, `query($j: ID!) { job(id: $j) { status robot { name } workflow { name versions { version } } logs { message } } }`, map[string]any{"j": job.EnqueueJob.ID}).OK(t, nil)
}
