package jobtests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/db"
	"fleetgraph/maintenance"
)

// A robot that goes OFFLINE and back in a loop is refused past a burst:
// each such heartbeat writes a robot.online or robot.offline event, a
// delivery to each of the tenant's webhook endpoints and a history sample,
// and one robot flapping made 2,200 deliveries a second. A refused
// heartbeat writes nothing; changes that keep the robot online are not
// limited.
func TestARobotFlappingItsStatusIsLimited(t *testing.T) {
	t.Parallel()
	// No maintenance: the offline sweep would take the robots, which stop
	// heartbeating, OFFLINE, writing events of its own (not limited).
	s := apitest.New(t, apitest.Options{Clock: maintenance.NewManualClock(time.Now())})
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "flapper", apitest.RobotOpts{})
	tn.Do(t, `mutation { createWebhookEndpoint(input: {url: "http://127.0.0.1:1/x", events: ["robot.online", "robot.offline"]}) { endpoint { id } } }`, nil, nil)
	events := func() int {
		var n int
		require.NoError(t, s.DB.NewRaw(`SELECT count(*) FROM webhook_events WHERE tenant_id = ? AND type IN ('robot.online', 'robot.offline')`,
			tn.User.Tenant).Scan(t.Context(), &n))
		return n
	}
	heartbeat := func(status string) *apitest.Response {
		return s.Do(t, r.Key, `mutation($s: RobotStatus!) { heartbeat(input: {status: $s}) { status } }`, map[string]any{"s": status})
	}

	// From OFFLINE (a new robot) five comings and goings pass.
	start := time.Now()
	for i, status := range []string{"ONLINE", "OFFLINE", "ONLINE", "OFFLINE", "ONLINE"} {
		heartbeat(status).OK(t, nil)
		require.Equal(t, i+1, events())
	}
	// Online all along: not limited.
	for range 10 {
		heartbeat("BUSY").OK(t, nil)
		heartbeat("ONLINE").OK(t, nil)
	}
	// Then refused, once what refilled meanwhile (one each 10 s, however
	// slow this machine is) is spent.
	status := "ONLINE"
	for {
		next := map[string]string{"ONLINE": "OFFLINE", "OFFLINE": "ONLINE"}[status]
		before := events()
		res := heartbeat(next)
		if len(res.Errors) > 0 {
			require.Equal(t, "ROBOT_STATUS_CHANGES", res.Code(t, "RATE_LIMITED").Extensions["limit"])
			require.Equal(t, before, events(), "a refused heartbeat writes nothing")
			break
		}
		status = next
		require.LessOrEqual(t, events(), 5+int(time.Since(start).Seconds()*db.StatusChangeLimit.PerSecond)+1, "the burst and what refilled")
	}
	var out struct{ Robot struct{ Status string } }
	tn.Do(t, `query($id: ID!) { robot(id: $id) { status } }`, map[string]any{"id": r.ID}, &out)
	require.Equal(t, status, out.Robot.Status)

	// A user changing the status writes the same events, and is limited
	// alike: one request of 50 aliases made 2,500 deliveries.
	other := tn.CreateRobot(t, "flipped", apitest.RobotOpts{})
	flip := func(status string) *apitest.Response {
		return s.Do(t, tn.User.Token, `mutation($id: ID!, $s: RobotStatus!) { updateRobot(id: $id, input: {status: $s}) { status } }`,
			map[string]any{"id": other.ID, "s": status})
	}
	start, base := time.Now(), events()
	for _, status := range []string{"ONLINE", "OFFLINE", "ONLINE", "OFFLINE", "ONLINE"} {
		flip(status).OK(t, nil)
	}
	require.Equal(t, base+5, events())
	flip("BUSY").OK(t, nil) // online all along: not limited
	var aliases strings.Builder
	aliases.WriteString(`mutation($id: ID!) {`)
	for i := range 50 {
		fmt.Fprintf(&aliases, ` a%d: updateRobot(id: $id, input: {status: %s}) { status }`, i, []string{"OFFLINE", "ONLINE"}[i%2])
	}
	res := s.Do(t, tn.User.Token, aliases.String()+"}", map[string]any{"id": other.ID})
	require.Equal(t, "ROBOT_STATUS_CHANGES", res.Code(t, "RATE_LIMITED").Extensions["limit"])
	// The burst, and what refilled meanwhile (one each 10 s, however slow
	// this machine), not 50.
	refilled := int(time.Since(start).Seconds()*db.StatusChangeLimit.PerSecond) + 1
	require.LessOrEqual(t, events(), base+5+refilled, "a refused change writes nothing, nor does a request of many")
}

// A progress report that changes nothing a client can see (the same
// progress and node) makes no new revision, so no notification to the
// tenant's jobUpdated subscribers: it still restarts the progress timeout.
// Each once made a revision, and a robot reporting in a loop a
// notification per call to every dashboard.
func TestAProgressReportOfNothingNewIsQuiet(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "r", apitest.RobotOpts{})
	tn.Enqueue(t, nil)
	l := r.Claim(t, 0)
	require.NotNil(t, l)
	s.Do(t, r.Key, `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { id } }`,
		map[string]any{"j": l.Job.ID, "l": l.LeaseToken}).OK(t, nil)
	revision := func() int {
		return tn.Job(t, l.Job.ID).Revision
	}
	report := func(progress int) {
		s.Do(t, r.Key, `mutation($j: ID!, $l: ID!, $p: Int!) { reportJobProgress(jobId: $j, leaseToken: $l, progress: $p, currentNode: "n") { id } }`,
			map[string]any{"j": l.Job.ID, "l": l.LeaseToken, "p": progress}).OK(t, nil)
	}
	report(10)
	after := revision()
	var progressAt1, progressAt2 string
	require.NoError(t, s.DB.NewRaw(`SELECT progress_at::text FROM jobs WHERE id = ?`, l.Job.ID).Scan(t.Context(), &progressAt1))
	report(10)
	report(10)
	require.Equal(t, after, revision(), "the same progress again is no change")
	require.NoError(t, s.DB.NewRaw(`SELECT progress_at::text FROM jobs WHERE id = ?`, l.Job.ID).Scan(t.Context(), &progressAt2))
	require.NotEqual(t, progressAt1, progressAt2, "the report still restarts the progress timeout")
	report(20)
	require.Equal(t, after+1, revision())
}

// A heartbeat writes a running job's lease only when it moves by half a
// lease or more: lease_expires_at is indexed, so every extension wrote a
// new version of the job and its index entries, and 50 heartbeats in one
// 2 KB request rewrote 100 running jobs 50 times (9 MB of WAL). A lease
// with less than half left is extended as before.
func TestAHeartbeatExtendsOnlyLeasesThatNeedIt(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Queue: apitest.LongLeaseQueue()}) // an hour's lease
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "r", apitest.RobotOpts{})
	job := tn.Enqueue(t, nil)
	l := jqStarted(t, r, r.Claim(t, 0))
	require.Equal(t, job.ID, l.Job.ID)
	version := func() (xmin string, left time.Duration) {
		t.Helper()
		var secs float64
		require.NoError(t, s.DB.NewRaw(`SELECT xmin::text, extract(epoch FROM lease_expires_at - now()) FROM jobs WHERE id = ?`, job.ID).
			Scan(t.Context(), &xmin, &secs))
		return xmin, time.Duration(secs * float64(time.Second))
	}
	before, _ := version()
	for range 3 {
		r.Heartbeat(t, "BUSY")
	}
	after, left := version()
	require.Equal(t, before, after, "a fresh lease is not written again")
	require.Greater(t, left, 30*time.Minute)

	jqAge(t, s, job.ID, 40*time.Minute) // 20 minutes left
	r.Heartbeat(t, "BUSY")
	_, left = version()
	require.Greater(t, left, 50*time.Minute, "extended from now")
	require.Equal(t, "COMPLETED", r.Complete(t, l, nil).Status)
}

// Deliveries queued by hand (sendTestWebhook, redeliverWebhook) are
// limited per endpoint: each is an outbound request to an address the
// tenant chose, a third party's perhaps, and one request of 50 aliases
// queued 50, as often as it was sent.
func TestDeliveriesByHandAreLimited(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	var ep struct {
		CreateWebhookEndpoint struct{ Endpoint struct{ ID string } }
	}
	tn.Do(t, `mutation { createWebhookEndpoint(input: {url: "http://127.0.0.1:1/x", events: ["job.completed"]}) { endpoint { id } } }`, nil, &ep)
	id := ep.CreateWebhookEndpoint.Endpoint.ID
	deliveries := func() int {
		var n int
		require.NoError(t, s.DB.NewRaw(`SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = ?`, id).Scan(t.Context(), &n))
		return n
	}
	// At most the burst, and what refilled meanwhile (one a second,
	// however slow this machine is), not 50.
	start := time.Now()
	atMost := func() int {
		return db.ManualSendLimit.Burst + int(time.Since(start).Seconds()*db.ManualSendLimit.PerSecond) + 1
	}
	many := func(field string) string {
		var b strings.Builder
		b.WriteString(`mutation($x: ID!) {`)
		for i := range 50 {
			fmt.Fprintf(&b, ` a%d: %s { id }`, i, field)
		}
		return b.String() + "}"
	}
	res := s.Do(t, tn.User.Token, many(`sendTestWebhook(endpointId: $x)`), map[string]any{"x": id})
	require.Equal(t, "WEBHOOK_MANUAL_SENDS", res.Code(t, "RATE_LIMITED").Extensions["limit"])
	sent := deliveries()
	require.GreaterOrEqual(t, sent, db.ManualSendLimit.Burst)
	require.LessOrEqual(t, sent, atMost())

	var first struct {
		WebhookDeliveries struct {
			Edges []struct{ Node struct{ ID string } }
		}
	}
	tn.Do(t, `query($e: ID!) { webhookDeliveries(endpointId: $e, first: 1) { edges { node { id } } } }`, map[string]any{"e": id}, &first)
	delivery := first.WebhookDeliveries.Edges[0].Node.ID
	_, err := s.DB.ExecContext(t.Context(), `UPDATE webhook_deliveries SET status = 'FAILED' WHERE id = ?`, delivery) // as if it had failed
	require.NoError(t, err)
	r := s.Do(t, tn.User.Token, many(`redeliverWebhook(deliveryId: $x)`), map[string]any{"x": delivery})
	require.Equal(t, "WEBHOOK_MANUAL_SENDS", r.Code(t, "RATE_LIMITED").Extensions["limit"], "redeliveries share the limit")
	require.LessOrEqual(t, deliveries(), atMost())

	// The bucket is the tenant's: new endpoints (another path, another
	// name of the address, another host: names cost a tenant nothing)
	// add nothing to it, while another tenant has a bucket of its own.
	endpoint := func(tn *apitest.Tenant, url string) string {
		var ep struct {
			CreateWebhookEndpoint struct{ Endpoint struct{ ID string } }
		}
		tn.Do(t, `mutation($u: String!) { createWebhookEndpoint(input: {url: $u, events: ["job.completed"]}) { endpoint { id } } }`,
			map[string]any{"u": url}, &ep)
		return ep.CreateWebhookEndpoint.Endpoint.ID
	}
	const send = `mutation($x: ID!) { sendTestWebhook(endpointId: $x) { id } }`
	for _, url := range []string{"http://127.0.0.1:1/y", "http://127.0.0.1.:1/x", "http://localhost:1/x", "http://n1.127.0.0.1.nip.io:1/x"} {
		id := endpoint(tn, url)
		for range 5 {
			s.Do(t, tn.User.Token, send, map[string]any{"x": id})
		}
	}
	var byHand int
	require.NoError(t, s.DB.NewRaw(`SELECT count(*) FROM webhook_deliveries WHERE tenant_id = ?`, tn.User.Tenant).Scan(t.Context(), &byHand))
	require.LessOrEqual(t, byHand, atMost(), "deliveries by hand through five endpoints")
	other := apitest.NewTenant(t, s)
	s.Do(t, other.User.Token, send, map[string]any{"x": endpoint(other, "http://127.0.0.1:1/x")}).OK(t, nil)
}
