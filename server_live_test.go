package main

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/realtime/faulttest"
)

// TestTwoServersShareTheChangeFeed runs two independent servers, each with
// its own listener and hub, on one database, started together so that both
// apply the migrations at once. A change made through either must reach
// the subscribers of both: replicas fan out the same feed.
func TestTwoServersShareTheChangeFeed(t *testing.T) {
	t.Parallel()
	dsn, _ := emptyDatabase(t)
	e := baseEnv(t).with("DATABASE_URL", dsn, "JWT_SECRET", testSecret, "LOG_LEVEL", "debug")
	servers := []*serveProcess{
		startServe(t, e, "--listen", "127.0.0.1:0", "--auto-migrate"),
		startServe(t, e, "--listen", "127.0.0.1:0", "--auto-migrate"),
	}
	var urls []string
	for _, p := range servers {
		urls = append(urls, p.waitFor(t, p.stderr, servingLog)[1])
	}
	require.NotEqual(t, urls[0], urls[1])

	tok, err := verifier(t, testSecret, "").Mint(auth.MintOptions{UserID: uuid.New(), Role: auth.RoleUser, TTL: time.Hour})
	require.NoError(t, err)
	// The fleet is made through server 0; its robot works through server 1.
	f := faulttest.NewFleet(t, urls[0], tok, 2)
	f.Robot.URL = urls[1]
	m0 := f.Machines[0]
	var subs []*faulttest.Subscriber
	for i, url := range urls {
		subs = append(subs, faulttest.Subscribe(t, "server"+string(rune('0'+i)), faulttest.WSURL(url), tok,
			faulttest.AllMachines("machines"), faulttest.OneMachine("machine0", m0), faulttest.AllJobs("jobs")))
	}
	for _, sub := range subs {
		sub.WaitReceived(t, "machine0", m0, 1)
	}
	f.WaitLive(t, subs, "machines", "jobs") // no first state: wait until they see a change

	ctx := context.Background()
	// Machine changes through server 0, then through server 1.
	for _, url := range urls {
		f.User.URL = url
		for _, id := range f.Machines {
			v, err := f.ToggleMachine(ctx, id)
			require.NoError(t, err)
			for _, sub := range subs {
				sub.WaitReceived(t, "machines", id, v)
			}
		}
		v, err := f.TouchMachine(ctx, m0)
		require.NoError(t, err)
		for _, sub := range subs {
			sub.WaitReceived(t, "machine0", m0, v)
		}
	}
	// A job queued through server 1 and worked by the robot through server 1.
	for range 4 { // queue, claim, start, progress
		job, rev := f.MustAdvanceJob(t)
		for _, sub := range subs {
			sub.WaitReceived(t, "jobs", job, rev)
		}
	}

	machines, jobs := f.MachineSnapshot(t), f.JobSnapshot(t)
	for _, sub := range subs {
		sub.WaitConverged(t, "machines", machines, false)
		sub.WaitConverged(t, "machine0", machines.Only(m0), true)
		sub.WaitConverged(t, "jobs", jobs, false)
	}
	for _, p := range servers {
		require.Equal(t, 0, p.stop(t), p.stderr.String())
	}
}
