package jobtests

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2"
	"github.com/vektah/gqlparser/v2/ast"

	"fleetgraph/apitest"
	"fleetgraph/app"
	"fleetgraph/maintenance"
	"fleetgraph/webhook"
)

// Webhooks through the API, to real HTTP receivers on loopback: what is
// sent (signed, the job or robot as the API shows it), when (the retry
// schedule, on an injectable clock), what disables an endpoint, ordering,
// slow receivers, and the SSRF guard. Tests that step time drive delivery
// themselves (apitest.Options.Webhooks.Manual) with round.

// whRequest is one request a receiver got.
type whRequest struct {
	Header http.Header
	Body   []byte
}

// whReceiver is a webhook receiver on loopback that records each request
// and answers with the status the test sets (default 204).
type whReceiver struct {
	srv    *httptest.Server
	status atomic.Int32
	mu     sync.Mutex
	got    []whRequest
}

func whNewReceiver(t *testing.T) *whReceiver {
	r := &whReceiver{}
	r.status.Store(http.StatusNoContent)
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, whRequest{Header: req.Header.Clone(), Body: body})
		r.mu.Unlock()
		w.WriteHeader(int(r.status.Load()))
		_, _ = io.WriteString(w, "answer "+http.StatusText(int(r.status.Load())))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *whReceiver) requests() []whRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]whRequest(nil), r.got...)
}

func (r *whReceiver) count() int { return len(r.requests()) }

// wait waits until the receiver got n requests and returns them.
func (r *whReceiver) wait(t *testing.T, n int) []whRequest {
	t.Helper()
	apitest.Eventually(t, time.Minute, "the receiver got its deliveries", func() bool { return r.count() >= n })
	return r.requests()
}

// whBody is a delivery's body, decoded.
type whBody struct {
	Type      string
	Timestamp time.Time
	Data      map[string]any
}

func (q whRequest) body(t *testing.T) whBody {
	t.Helper()
	var b whBody
	require.NoError(t, json.Unmarshal(q.Body, &b), "body: %s", q.Body)
	return b
}

// whVerify checks the request's Standard Webhooks signature with secret,
// computed here by hand.
func whVerify(t *testing.T, secret string, q whRequest) {
	t.Helper()
	id, ts := q.Header.Get("webhook-id"), q.Header.Get("webhook-timestamp")
	require.NotEmpty(t, id)
	require.NotEmpty(t, ts)
	require.Contains(t, whSignatures(q), whSignature(t, secret, id, ts, q.Body), "no signature of the secret in %q", q.Header.Get("webhook-signature"))
}

func whSignature(t *testing.T, secret, id, ts string, body []byte) string {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	require.NoError(t, err)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "." + string(body)))
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func whSignatures(q whRequest) []string { return strings.Fields(q.Header.Get("webhook-signature")) }

// whBundle is a server whose webhook delivery the test steps on a manual clock.
type whBundle struct {
	s     *apitest.Server
	clock *maintenance.ManualClock
	tn    *apitest.Tenant
}

func whManual(t *testing.T, o apitest.Options) *whBundle {
	t.Helper()
	clock := maintenance.NewManualClock(time.Now().Truncate(time.Millisecond))
	o.Clock = clock
	o.Webhooks.Manual = true
	s := apitest.New(t, o)
	return &whBundle{s: s, clock: clock, tn: apitest.NewTenant(t, s)}
}

// round runs one delivery round at the clock's time and waits for its sends.
func (b *whBundle) round(t *testing.T) {
	t.Helper()
	require.NoError(t, b.s.App.Webhooks.Run(t.Context(), b.clock.Now()))
	b.s.App.Webhooks.Wait()
}

// whEndpoint creates an endpoint of the tenant and returns its id and secret.
func whEndpoint(t *testing.T, tn *apitest.Tenant, url string, events ...string) (string, string) {
	t.Helper()
	var out struct {
		CreateWebhookEndpoint struct {
			Endpoint struct{ ID string }
			Secret   string
		}
	}
	tn.Do(t, `mutation($in: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $in) { endpoint { id } secret } }`,
		map[string]any{"in": map[string]any{"url": url, "events": events}}, &out)
	require.True(t, strings.HasPrefix(out.CreateWebhookEndpoint.Secret, "whsec_"))
	return out.CreateWebhookEndpoint.Endpoint.ID, out.CreateWebhookEndpoint.Secret
}

type whAttempt struct {
	At           time.Time
	StatusCode   *int
	DurationMs   int
	ResponseBody *string
	Error        *string
}

type whDelivery struct {
	ID            string
	EndpointID    string
	EventID       string
	EventType     string
	Status        string
	AttemptCount  int
	NextAttemptAt *time.Time
	FinishedAt    *time.Time
	Attempts      []whAttempt
}

const whDeliveryFields = `id endpointId eventId eventType status attemptCount nextAttemptAt finishedAt
	attempts { at statusCode durationMs responseBody error }`

// deliveries lists an endpoint's deliveries, oldest first.
func whDeliveries(t *testing.T, tn *apitest.Tenant, endpoint string) []whDelivery {
	t.Helper()
	var out struct {
		WebhookDeliveries struct{ Edges []struct{ Node whDelivery } }
	}
	tn.Do(t, `query($e: ID!) { webhookDeliveries(endpointId: $e, first: 100) { edges { node { `+whDeliveryFields+` } } } }`,
		map[string]any{"e": endpoint}, &out)
	var ds []whDelivery
	for i := len(out.WebhookDeliveries.Edges) - 1; i >= 0; i-- {
		ds = append(ds, out.WebhookDeliveries.Edges[i].Node)
	}
	return ds
}

type whEndpointState struct {
	ID             string
	Enabled        bool
	DisabledReason *string
	FailingSince   *time.Time
}

func whEndpoints(t *testing.T, tn *apitest.Tenant) []whEndpointState {
	t.Helper()
	var out struct{ WebhookEndpoints []whEndpointState }
	tn.Do(t, `{ webhookEndpoints { id enabled disabledReason failingSince } }`, nil, &out)
	return out.WebhookEndpoints
}

// finishJob enqueues a job, has robot r claim and start it, and returns its lease.
func whRunning(t *testing.T, tn *apitest.Tenant, r *apitest.Robot, in map[string]any) *apitest.Lease {
	t.Helper()
	tn.Enqueue(t, in)
	l := r.Claim(t, 0)
	require.NotNil(t, l)
	r.Start(t, l)
	return l
}

// jobJSON is the job as the API shows it, decoded into a map.
func whJobJSON(t *testing.T, tn *apitest.Tenant, id string) map[string]any {
	t.Helper()
	var out struct{ Job map[string]any }
	tn.Do(t, `query($id: ID!) { job(id: $id) { `+whScalarFields(t, "Job")+` } }`, map[string]any{"id": id}, &out)
	return out.Job
}

// whScalarFields lists the fields of the schema's type typ that take no
// arguments and hold a scalar or an enum (a list of them included): what
// the data of an event about one carries. It reads the schema itself, so
// a field added to the type is expected in the events too.
func whScalarFields(t *testing.T, typ string) string {
	t.Helper()
	src, err := os.ReadFile("../../schema.graphqls")
	require.NoError(t, err)
	schema, gerr := gqlparser.LoadSchema(&ast.Source{Name: "schema.graphqls", Input: string(src)})
	require.Nil(t, gerr)
	def := schema.Types[typ]
	require.NotNil(t, def, typ)
	var names []string
	for _, f := range def.Fields {
		if len(f.Arguments) > 0 || strings.HasPrefix(f.Name, "__") {
			continue
		}
		if k := schema.Types[f.Type.Name()].Kind; k == ast.Scalar || k == ast.Enum {
			names = append(names, f.Name)
		}
	}
	return strings.Join(names, " ")
}

// whDelivered is a manual bundle with one endpoint and one test delivery,
// sent and succeeded.
func whDelivered(t *testing.T) (*whBundle, string, whDelivery) {
	t.Helper()
	b := whManual(t, apitest.Options{})
	rcv := whNewReceiver(t)
	ep, _ := whEndpoint(t, b.tn, rcv.srv.URL, "robot.offline")
	var sent struct{ SendTestWebhook whDelivery }
	b.tn.Do(t, `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { `+whDeliveryFields+` } }`, map[string]any{"e": ep}, &sent)
	b.round(t)
	require.Len(t, rcv.requests(), 1)
	return b, ep, sent.SendTestWebhook
}

// whAwaitLockWait waits until a session of the test's database waits for a
// lock in a statement about webhooks, or done says there is no need.
func whAwaitLockWait(t *testing.T, b *whBundle, what string, done func() bool) {
	t.Helper()
	apitest.Eventually(t, 30*time.Second, what, func() bool {
		if done() {
			return true
		}
		return b.s.LockWaiters(t, "%webhook_%") > 0
	})
}

func TestWebhookDelivery(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("JobEventsAreSignedAndCarryTheJobAsTheAPIShowsIt", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		rcv := whNewReceiver(t)
		_, secret := whEndpoint(t, tn, rcv.srv.URL, "job.completed", "job.failed", "job.cancelled")
		r := tn.CreateRobot(t, "r1", apitest.RobotOpts{})

		done := r.Complete(t, whRunning(t, tn, r, nil), map[string]any{"ok": true})
		failed := r.Fail(t, whRunning(t, tn, r, map[string]any{"maxAttempts": 1}), "broke", false)
		queued := tn.Enqueue(t, nil)
		tn.Do(t, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": queued.ID}, nil)

		got := rcv.wait(t, 3)
		require.Len(t, got, 3)
		byJob := map[string]whRequest{}
		for _, q := range got {
			whVerify(t, secret, q)
			require.Equal(t, "application/json", q.Header.Get("Content-Type"))
			byJob[q.body(t).Data["id"].(string)] = q
		}
		for id, typ := range map[string]string{done.ID: "job.completed", failed.ID: "job.failed", queued.ID: "job.cancelled"} {
			q, ok := byJob[id]
			require.True(t, ok, "no %s event for job %s", typ, id)
			b := q.body(t)
			require.Equal(t, typ, b.Type)
			require.False(t, b.Timestamp.IsZero())
			require.Equal(t, whJobJSON(t, tn, id), b.Data, "the event's data is not the job as the API shows it")
		}
		// Each delivery is recorded as succeeded, with its attempt.
		apitest.Eventually(t, time.Minute, "the deliveries are recorded", func() bool {
			var out struct{ WebhookEndpoints []struct{ ID string } }
			tn.Do(t, `{ webhookEndpoints { id } }`, nil, &out)
			ds := whDeliveries(t, tn, out.WebhookEndpoints[0].ID)
			for _, d := range ds {
				if d.Status != "SUCCEEDED" {
					return false
				}
			}
			return len(ds) == 3
		})
	})

	t.Run("OnlyTheEventsAnEndpointWantsAndNoneWhenDisabled", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		rcv, off := whNewReceiver(t), whNewReceiver(t)
		whEndpoint(t, tn, rcv.srv.URL, "job.failed")
		offID, _ := whEndpoint(t, tn, off.srv.URL, "job.completed", "job.failed")
		tn.Do(t, `mutation($id: ID!) { updateWebhookEndpoint(id: $id, input: {enabled: false}) { id } }`, map[string]any{"id": offID}, nil)
		r := tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Complete(t, whRunning(t, tn, r, nil), nil)
		failed := r.Fail(t, whRunning(t, tn, r, map[string]any{"maxAttempts": 1}), "broke", false)

		got := rcv.wait(t, 1)
		require.Equal(t, failed.ID, got[0].body(t).Data["id"])
		// The completion wrote no event at all: no endpoint wanted it.
		var events int
		require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM webhook_events WHERE type = 'job.completed' AND tenant_id = (SELECT tenant_id FROM jobs WHERE id = ?)", failed.ID).Scan(t.Context(), &events))
		require.Zero(t, events)
		require.Len(t, rcv.requests(), 1)
		require.Empty(t, whDeliveries(t, tn, offID))
		require.Zero(t, off.count())
	})

	t.Run("RobotsComingOnlineAndGoingOffline", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		rcv := whNewReceiver(t)
		_, secret := whEndpoint(t, tn, rcv.srv.URL, "robot.online", "robot.offline")
		r := tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Heartbeat(t, "ONLINE")
		r.Heartbeat(t, "BUSY") // still online: no event
		r.Heartbeat(t, "OFFLINE")
		tn.Do(t, `mutation($id: ID!) { updateRobot(id: $id, input: {status: ONLINE}) { id } }`, map[string]any{"id": r.ID}, nil)

		got := rcv.wait(t, 3)
		var types []string
		for _, q := range got {
			whVerify(t, secret, q)
			b := q.body(t)
			require.Equal(t, r.ID, b.Data["id"])
			require.Equal(t, "r1", b.Data["name"])
			types = append(types, b.Type+":"+b.Data["status"].(string))
		}
		// A robot's events reach an endpoint in order.
		require.Equal(t, []string{"robot.online:ONLINE", "robot.offline:OFFLINE", "robot.online:ONLINE"}, types)
		// The last is the robot as the API shows it now.
		var now struct{ Robot map[string]any }
		tn.Do(t, `query($id: ID!) { robot(id: $id) { `+whScalarFields(t, "Robot")+` } }`, map[string]any{"id": r.ID}, &now)
		require.Equal(t, now.Robot, got[2].body(t).Data, "the event's data is not the robot as the API shows it")
	})

	t.Run("ARescueThatFailsAJobReportsIt", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		rcv := whNewReceiver(t)
		whEndpoint(t, tn, rcv.srv.URL, "job.failed", "job.completed")
		r := tn.CreateRobot(t, "r1", apitest.RobotOpts{Slots: 2})
		// A retryable failure requeues the job: no event.
		retried := r.Fail(t, whRunning(t, tn, r, map[string]any{"maxAttempts": 2}), "flaky", true)
		require.Equal(t, "QUEUED", retried.Status)
		lost := whRunning(t, tn, r, map[string]any{"maxAttempts": 1, "priority": 10})
		jqExpire(t, s, lost.Job.ID)
		got := rcv.wait(t, 1)
		b := got[0].body(t)
		require.Equal(t, "job.failed", b.Type)
		require.Equal(t, lost.Job.ID, b.Data["id"])
		require.Contains(t, b.Data["error"], "lease expired")
		require.Len(t, rcv.requests(), 1)
	})

	t.Run("DeletingARobotReportsItsJobs", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		rcv := whNewReceiver(t)
		whEndpoint(t, tn, rcv.srv.URL, "job.failed", "job.cancelled")
		r := tn.CreateRobot(t, "r1", apitest.RobotOpts{Slots: 2})
		held := whRunning(t, tn, r, map[string]any{"maxAttempts": 1})
		aimed := tn.Enqueue(t, map[string]any{"robotId": r.ID, "runAt": jqTime(time.Hour)})
		tn.Do(t, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": r.ID}, nil)

		got := rcv.wait(t, 2)
		types := map[string]string{}
		for _, q := range got {
			b := q.body(t)
			types[b.Data["id"].(string)] = b.Type
		}
		require.Equal(t, map[string]string{held.Job.ID: "job.failed", aimed.ID: "job.cancelled"}, types)
	})
}

func TestWebhookRetries(t *testing.T) {
	t.Parallel()

	t.Run("OnTheScheduleThenFailed", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{})
		rcv := whNewReceiver(t)
		rcv.status.Store(http.StatusInternalServerError)
		ep, _ := whEndpoint(t, b.tn, rcv.srv.URL, "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)

		b.round(t)
		require.Equal(t, 1, rcv.count())
		waits := []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour}
		for i, wait := range waits {
			d := whDeliveries(t, b.tn, ep)[0]
			require.Equal(t, "PENDING", d.Status)
			require.NotNil(t, d.NextAttemptAt)
			last := d.Attempts[len(d.Attempts)-1].At
			delay := d.NextAttemptAt.Sub(last)
			require.True(t, delay >= wait && delay <= wait+wait/10+time.Millisecond, "retry %d after %s, want %s plus at most 10%%", i+1, delay, wait)
			// Not before its time...
			b.clock.Set(d.NextAttemptAt.Add(-time.Millisecond))
			b.round(t)
			require.Equal(t, i+1, rcv.count(), "retry %d went out early", i+1)
			// ...and at it.
			b.clock.Set(*d.NextAttemptAt)
			b.round(t)
			require.Equal(t, i+2, rcv.count(), "retry %d did not go out", i+1)
		}
		d := whDeliveries(t, b.tn, ep)[0]
		require.Equal(t, "FAILED", d.Status)
		require.Equal(t, 8, d.AttemptCount)
		require.Len(t, d.Attempts, 8)
		for _, a := range d.Attempts {
			require.NotNil(t, a.StatusCode)
			require.Equal(t, 500, *a.StatusCode)
			require.Equal(t, "answer Internal Server Error", *a.ResponseBody)
		}
		b.clock.Advance(48 * time.Hour)
		b.round(t)
		require.Equal(t, 8, rcv.count(), "a FAILED delivery was attempted again")
		// Every delivery failed for less than 3 days: still enabled.
		require.True(t, whEndpoints(t, b.tn)[0].Enabled)
	})

	t.Run("GoneDisablesTheEndpoint", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{})
		rcv := whNewReceiver(t)
		rcv.status.Store(http.StatusGone)
		ep, _ := whEndpoint(t, b.tn, rcv.srv.URL, "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		b.round(t)
		e := whEndpoints(t, b.tn)[0]
		require.False(t, e.Enabled)
		require.NotNil(t, e.DisabledReason)
		require.Contains(t, *e.DisabledReason, "410 Gone")
		require.Equal(t, "FAILED", whDeliveries(t, b.tn, ep)[0].Status)
		// Nothing more goes to it: not the next event, not a retry.
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		b.clock.Advance(time.Hour)
		b.round(t)
		require.Equal(t, 1, rcv.count())
		require.Len(t, whDeliveries(t, b.tn, ep), 1)
	})

	t.Run("FailingForThreeDaysDisablesTheEndpoint", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{})
		rcv := whNewReceiver(t)
		rcv.status.Store(http.StatusServiceUnavailable)
		whEndpoint(t, b.tn, rcv.srv.URL, "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		start := b.clock.Now()
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		b.round(t)
		// Every attempt fails, for 70 hours: a new event every 10 hours.
		for b.clock.Now().Add(10*time.Hour).Sub(start) < 72*time.Hour {
			b.clock.Advance(10 * time.Hour)
			r.Complete(t, whRunning(t, b.tn, r, nil), nil)
			b.round(t)
			require.True(t, whEndpoints(t, b.tn)[0].Enabled, "disabled after %s", b.clock.Now().Sub(start))
		}
		b.clock.Set(start.Add(72 * time.Hour))
		b.round(t)
		e := whEndpoints(t, b.tn)[0]
		require.False(t, e.Enabled)
		require.NotNil(t, e.DisabledReason)
		require.Contains(t, *e.DisabledReason, "every delivery failed for 72h0m0s")
	})

	t.Run("AReceiverDownForAnHourGetsEveryEventInOrder", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{})
		rcv := whNewReceiver(t)
		rcv.status.Store(http.StatusServiceUnavailable)
		ep, secret := whEndpoint(t, b.tn, rcv.srv.URL, "job.completed", "job.failed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		var ids []string
		for range 3 {
			ids = append(ids, r.Complete(t, whRunning(t, b.tn, r, nil), nil).ID)
		}
		b.tn.Do(t, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": b.tn.Enqueue(t, nil).ID}, nil) // not wanted
		// A job that fails, is retried and completes: two events of one
		// job, the second of which must wait for the first.
		l := whRunning(t, b.tn, r, map[string]any{"maxAttempts": 1})
		r.Fail(t, l, "broke", false)
		b.tn.Do(t, `mutation($id: ID!) { retryJob(id: $id) { id } }`, map[string]any{"id": l.Job.ID}, nil)
		l2 := r.Claim(t, 0)
		require.Equal(t, l.Job.ID, l2.Job.ID)
		r.Start(t, l2)
		r.Complete(t, l2, nil)
		b.round(t)
		require.Equal(t, 4, rcv.count(), "the job's second event went out before its first succeeded")
		// Down for an hour, with a round every minute.
		for range 60 {
			b.clock.Advance(time.Minute)
			b.round(t)
		}
		before := rcv.count()
		rcv.status.Store(http.StatusOK)
		// Back: every event arrives within the retry schedule.
		for range 10 {
			b.clock.Advance(time.Hour)
			b.round(t)
		}
		ds := whDeliveries(t, b.tn, ep)
		require.Len(t, ds, 5)
		for _, d := range ds {
			require.Equal(t, "SUCCEEDED", d.Status, "delivery %s of %s", d.ID, d.EventType)
		}
		got := rcv.requests()[before:]
		require.Len(t, got, 5, "each event is delivered once it succeeds")
		var order []string
		delivered := map[string]bool{}
		for _, q := range got {
			whVerify(t, secret, q)
			bd := q.body(t)
			delivered[bd.Data["id"].(string)] = true
			if bd.Data["id"] == l.Job.ID {
				order = append(order, bd.Type)
			}
		}
		for _, id := range ids {
			require.True(t, delivered[id], "job %s's completion was never delivered", id)
		}
		require.Equal(t, []string{"job.failed", "job.completed"}, order, "a job's events reached the endpoint out of order")
		// While its first event was failing, the job's second was never sent.
		var completions int
		for _, q := range rcv.requests() {
			if bd := q.body(t); bd.Data["id"] == l.Job.ID && bd.Type == "job.completed" {
				completions++
			}
		}
		require.Equal(t, 1, completions)
	})

	t.Run("TwoReplicasSendEachDeliveryOnce", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{})
		rcv := whNewReceiver(t)
		ep, _ := whEndpoint(t, b.tn, rcv.srv.URL, "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		const jobs = 20
		for range jobs {
			r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		}
		// A second replica's deliverer over the same database, both
		// stepping at once until every delivery is done.
		other := webhook.NewDeliverer(webhook.Config{DB: b.s.DB.DB, Store: b.s.App.Resolver.WebhookStore,
			Client: webhook.NewClient(webhook.ClientConfig{AllowPrivate: true}), Workers: 4, Now: b.clock.Now})
		for rcv.count() < jobs {
			var wg sync.WaitGroup
			for _, d := range []*webhook.Deliverer{b.s.App.Webhooks, other} {
				wg.Go(func() {
					require.NoError(t, d.Run(t.Context(), b.clock.Now()))
					d.Wait()
				})
			}
			wg.Wait()
		}
		seen := map[string]int{}
		for _, q := range rcv.requests() {
			seen[q.Header.Get("webhook-id")]++
		}
		require.Len(t, seen, jobs)
		for id, n := range seen {
			require.Equal(t, 1, n, "event %s was sent %d times", id, n)
		}
		for _, d := range whDeliveries(t, b.tn, ep) {
			require.Equal(t, 1, d.AttemptCount)
		}
	})

	t.Run("AHangingReceiverDoesNotDelayOthers", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{Webhooks: app.WebhookConfig{Workers: 2, Timeout: time.Hour}})
		hang, hung := whHangingReceiver(t)
		fast := whNewReceiver(t)
		other := apitest.NewTenant(t, b.s)
		whEndpoint(t, b.tn, hang, "job.completed")
		whEndpoint(t, other, fast.srv.URL, "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		require.NoError(t, b.s.App.Webhooks.Run(t.Context(), b.clock.Now()))
		apitest.Eventually(t, time.Minute, "the hanging receiver got its delivery", func() bool { return hung.Load() == 1 })
		// While it hangs, the other worker serves the other tenant, twice.
		ro := other.CreateRobot(t, "r1", apitest.RobotOpts{})
		for i := 1; i <= 2; i++ {
			ro.Complete(t, whRunning(t, other, ro, nil), nil)
			apitest.Eventually(t, time.Minute, "the fast receiver got its delivery", func() bool {
				require.NoError(t, b.s.App.Webhooks.Run(t.Context(), b.clock.Now()))
				return fast.count() == i
			})
			require.EqualValues(t, 1, hung.Load())
		}
	})

	t.Run("ADeliveryCutShortByAShutdownIsGivenBack", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{Webhooks: app.WebhookConfig{Workers: 2, Timeout: time.Hour}})
		hang, hung := whHangingReceiver(t)
		ep, _ := whEndpoint(t, b.tn, hang, "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		ctx, shutdown := context.WithCancel(t.Context())
		require.NoError(t, b.s.App.Webhooks.Run(ctx, b.clock.Now()))
		apitest.Eventually(t, time.Minute, "the receiver got the delivery", func() bool { return hung.Load() == 1 })
		shutdown()
		b.s.App.Webhooks.Wait()
		d := whDeliveries(t, b.tn, ep)[0]
		require.Equal(t, "PENDING", d.Status)
		require.Zero(t, d.AttemptCount, "the attempt cut short counted")
		// Due again at once, not when its lease would have run out.
		require.NoError(t, b.s.App.Webhooks.Run(t.Context(), b.clock.Now()))
		apitest.Eventually(t, time.Minute, "the delivery was not sent again", func() bool { return hung.Load() == 2 })
	})

	// An answer that came is recorded though a shutdown cuts its reading
	// short: the claim was given back, uncounted, and the next leader sent
	// the event again, though the receiver had it and only a sender that
	// died may send one twice. A 2xx is a success; another answer an
	// attempt of the retry schedule.
	t.Run("AnAnswerCutShortByAShutdownIsRecorded", func(t *testing.T) {
		t.Parallel()
		for _, status := range []int{http.StatusOK, http.StatusServiceUnavailable} {
			b := whManual(t, apitest.Options{Webhooks: app.WebhookConfig{Timeout: time.Hour}})
			url, sent := whStalledAnswer(t, status)
			ep, _ := whEndpoint(t, b.tn, url, "job.completed")
			b.tn.Do(t, `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }`, map[string]any{"e": ep}, nil)
			// The deliverer's client says when the answer's head came;
			// its body never ends until the request does.
			answered := make(chan struct{}, 1)
			transport := &http.Transport{}
			t.Cleanup(transport.CloseIdleConnections)
			d := webhook.NewDeliverer(webhook.Config{
				DB: b.s.DB.DB, Store: b.s.App.Resolver.WebhookStore, Timeout: time.Hour, Now: b.clock.Now,
				Client: &http.Client{Transport: whRoundTrip(func(req *http.Request) (*http.Response, error) {
					res, err := transport.RoundTrip(req)
					if err == nil {
						answered <- struct{}{}
					}
					return res, err
				})},
			})
			ctx, shutdown := context.WithCancel(t.Context())
			require.NoError(t, d.Run(ctx, b.clock.Now()))
			select {
			case <-answered:
			case <-time.After(time.Minute):
				t.Fatal("the receiver did not answer")
			}
			shutdown()
			d.Wait()
			got := whDeliveries(t, b.tn, ep)[0]
			require.Equal(t, 1, got.AttemptCount, "the answered attempt was not counted (%d)", status)
			require.Len(t, got.Attempts, 1)
			require.NotNil(t, got.Attempts[0].StatusCode)
			require.Equal(t, status, *got.Attempts[0].StatusCode)
			if status == http.StatusOK {
				require.Equal(t, "SUCCEEDED", got.Status)
			} else {
				require.Equal(t, "PENDING", got.Status)
				require.True(t, got.NextAttemptAt.After(b.clock.Now()), "retried after the schedule's wait")
			}
			// Nothing is due: the next round sends nothing.
			require.NoError(t, d.Run(t.Context(), b.clock.Now()))
			d.Wait()
			require.EqualValues(t, 1, sent.Load(), "the answered delivery was sent again (%d)", status)
		}
	})

	t.Run("ATenantHoldsNoMoreThanItsShareOfTheWorkers", func(t *testing.T) {
		t.Parallel()
		// Four workers: a tenant's share is one, and it may hold more
		// only while one more stays free.
		b := whManual(t, apitest.Options{Webhooks: app.WebhookConfig{Workers: 4, Timeout: time.Hour}})
		hang, hung := whHangingReceiver(t)
		fast := whNewReceiver(t)
		other := apitest.NewTenant(t, b.s)
		// Six hanging endpoints: one job's completion is six deliveries.
		for i := range 6 {
			whEndpoint(t, b.tn, fmt.Sprintf("%s/%d", hang, i), "job.completed")
		}
		whEndpoint(t, other, fast.srv.URL, "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		require.NoError(t, b.s.App.Webhooks.Run(t.Context(), b.clock.Now()))
		apitest.Eventually(t, time.Minute, "the hanging receivers got their deliveries", func() bool { return hung.Load() == 3 })
		// The last worker is the other tenants': each of their deliveries
		// goes out while the first tenant's hang.
		ro := other.CreateRobot(t, "r1", apitest.RobotOpts{})
		for i := 1; i <= 3; i++ {
			ro.Complete(t, whRunning(t, other, ro, nil), nil)
			apitest.Eventually(t, time.Minute, "the other tenant's delivery went out", func() bool {
				require.NoError(t, b.s.App.Webhooks.Run(t.Context(), b.clock.Now()))
				return fast.count() == i
			})
		}
		require.EqualValues(t, 3, hung.Load(), "the hanging tenant took the last worker")
	})

	t.Run("HugeAndTricklingAnswersCostAtMostTheTimeout", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{}) // the default timeout, 10 s
		var wrote atomic.Int64
		huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			chunk := []byte(strings.Repeat("x", 64<<10))
			for range 160 { // 10 MB
				n, err := w.Write(chunk)
				wrote.Add(int64(n))
				if err != nil {
					return
				}
			}
		}))
		t.Cleanup(huge.Close)
		trickle := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Headers never complete: one byte at a time until the client gives up.
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			for _, c := range []byte("HTTP/1.1 200 OK\r\nX-Slow: " + strings.Repeat("a", 10000)) {
				if _, err := buf.Write([]byte{c}); err != nil || buf.Flush() != nil {
					return
				}
				select {
				case <-time.After(50 * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
		}))
		t.Cleanup(trickle.Close)
		hugeEP, _ := whEndpoint(t, b.tn, huge.URL, "job.completed")
		trickleEP, _ := whEndpoint(t, b.tn, trickle.URL, "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		b.round(t) // returns: neither receiver holds a worker past the timeout

		h := whDeliveries(t, b.tn, hugeEP)[0]
		require.Equal(t, "SUCCEEDED", h.Status)
		require.Len(t, *h.Attempts[0].ResponseBody, 1024, "the attempt keeps the first 1 KiB")
		require.Less(t, wrote.Load(), int64(10<<20), "the whole 10 MB answer was read")
		tr := whDeliveries(t, b.tn, trickleEP)[0]
		require.Equal(t, "PENDING", tr.Status)
		require.Nil(t, tr.Attempts[0].StatusCode)
		require.NotNil(t, tr.Attempts[0].Error)
	})

	t.Run("ARotatedSecretSignsAlongsideFor24Hours", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{})
		rcv := whNewReceiver(t)
		ep, old := whEndpoint(t, b.tn, rcv.srv.URL, "job.completed")
		var out struct {
			RotateWebhookSecret struct {
				Secret   string
				Endpoint struct{ PreviousSecretExpiresAt time.Time }
			}
		}
		b.tn.Do(t, `mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret endpoint { previousSecretExpiresAt } } }`, map[string]any{"id": ep}, &out)
		fresh := out.RotateWebhookSecret.Secret
		require.NotEqual(t, old, fresh)
		jqSameTime(t, b.clock.Now().Add(24*time.Hour), out.RotateWebhookSecret.Endpoint.PreviousSecretExpiresAt, "previousSecretExpiresAt")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})

		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		b.round(t)
		q := rcv.requests()[0]
		require.Len(t, whSignatures(q), 2)
		whVerify(t, fresh, q)
		whVerify(t, old, q)

		// A second rotation within the overlap would drop old at once: it
		// is refused, says until when, and changes nothing.
		const rotate = `mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret endpoint { previousSecretExpiresAt } } }`
		b.clock.Advance(23 * time.Hour)
		e := b.s.Do(t, b.tn.User.Token, rotate, map[string]any{"id": ep}).Code(t, "CONFLICT")
		require.Contains(t, e.Message, "until "+out.RotateWebhookSecret.Endpoint.PreviousSecretExpiresAt.UTC().Format(time.RFC3339))
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		b.round(t)
		q = rcv.requests()[1]
		whVerify(t, fresh, q)
		whVerify(t, old, q)

		b.clock.Advance(time.Hour + time.Second)
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		b.round(t)
		q = rcv.requests()[2]
		require.Equal(t, []string{whSignature(t, fresh, q.Header.Get("webhook-id"), q.Header.Get("webhook-timestamp"), q.Body)}, whSignatures(q))

		// Past the overlap, rotating again is allowed.
		b.tn.Do(t, rotate, map[string]any{"id": ep}, &out)
		require.NotEqual(t, fresh, out.RotateWebhookSecret.Secret)
		jqSameTime(t, b.clock.Now().Add(24*time.Hour), out.RotateWebhookSecret.Endpoint.PreviousSecretExpiresAt, "previousSecretExpiresAt")

		// A secret that leaked is replaced at once, within the overlap too,
		// and then only the new one signs.
		var dropped struct {
			RotateWebhookSecret struct {
				Secret   string
				Endpoint struct{ PreviousSecretExpiresAt *time.Time }
			}
		}
		b.tn.Do(t, `mutation($id: ID!) { rotateWebhookSecret(id: $id, dropPrevious: true) { secret endpoint { previousSecretExpiresAt } } }`,
			map[string]any{"id": ep}, &dropped)
		require.Nil(t, dropped.RotateWebhookSecret.Endpoint.PreviousSecretExpiresAt)
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		b.round(t)
		q = rcv.requests()[3]
		require.Equal(t, []string{whSignature(t, dropped.RotateWebhookSecret.Secret, q.Header.Get("webhook-id"), q.Header.Get("webhook-timestamp"), q.Body)}, whSignatures(q))
	})

	// A redelivery of a delivery the retention prune is deleting waits for
	// the prune, then answers NOT_FOUND: it used to queue a delivery at
	// once whose event the prune then deleted, and the queued delivery with
	// it. The test's transaction deletes as the prune does.
	t.Run("RedeliverWaitsForAPruneOfItsDelivery", func(t *testing.T) {
		t.Parallel()
		b, ep, sent := whDelivered(t)
		ctx := t.Context()
		prune, err := b.s.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer prune.Rollback()
		var event string
		require.NoError(t, prune.QueryRowContext(ctx, "DELETE FROM webhook_deliveries WHERE id = ? RETURNING event_id", sent.ID).Scan(&event))

		done := make(chan *apitest.Response, 1)
		go func() {
			done <- b.s.Do(t, b.tn.User.Token, `mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { id } }`, map[string]any{"d": sent.ID})
		}()
		whAwaitLockWait(t, b, "the redelivery waits for the prune's lock", func() bool {
			select {
			case r := <-done:
				done <- r
				return true // answered without waiting: the check below says so
			default:
				return false
			}
		})
		select {
		case r := <-done:
			require.FailNow(t, "the redelivery did not wait for the prune", "%s", r.Raw)
		default:
		}
		_, err = prune.ExecContext(ctx, "DELETE FROM webhook_events AS e WHERE e.id = ? AND NOT EXISTS (SELECT 1 FROM webhook_deliveries AS d WHERE d.event_id = e.id)", event)
		require.NoError(t, err)
		require.NoError(t, prune.Commit())
		(<-done).Code(t, "NOT_FOUND")
		var left int
		require.NoError(t, b.s.DB.NewRaw("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = ?", ep).Scan(ctx, &left))
		require.Zero(t, left, "no delivery of a deleted event")
	})

	// Deleting an endpoint deletes its deliveries and the events only they
	// referred to (retention finds events through deliveries, and would
	// never find these); an event another endpoint's delivery refers to
	// stays.
	t.Run("DeletingAnEndpointTakesTheEventsOnlyItHad", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{})
		one, two := whNewReceiver(t), whNewReceiver(t)
		ep1, _ := whEndpoint(t, b.tn, one.srv.URL, "job.completed")
		ep2, _ := whEndpoint(t, b.tn, two.srv.URL, "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Complete(t, whRunning(t, b.tn, r, nil), nil) // one event, a delivery to each
		b.tn.Do(t, `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }`, map[string]any{"e": ep1}, nil)
		events := func() int {
			var n int
			require.NoError(t, b.s.DB.NewRaw("SELECT count(*) FROM webhook_events WHERE tenant_id = ?", b.tn.User.Tenant).Scan(t.Context(), &n))
			return n
		}
		require.Equal(t, 2, events())
		del := `mutation($e: ID!) { deleteWebhookEndpoint(id: $e) }`
		b.tn.Do(t, del, map[string]any{"e": ep1}, nil)
		require.Equal(t, 1, events(), "the test event was ep1's alone; the job's event is ep2's too")
		b.tn.Do(t, del, map[string]any{"e": ep2}, nil)
		require.Zero(t, events())
		b.s.Do(t, b.tn.User.Token, del, map[string]any{"e": ep2}).Code(t, "NOT_FOUND")
	})

	// Two endpoints of one event deleted at once: each deletes its own
	// deliveries and sees the other's, uncommitted, still there. Without a
	// lock on the event both kept it, and no prune could find it again.
	// With the event held, both deletions must come to wait for it; the
	// second to go on sees the first's deletions, and the event goes.
	t.Run("DeletingTwoEndpointsAtOnceLeavesNoEventBehind", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{})
		ep1, _ := whEndpoint(t, b.tn, whNewReceiver(t).srv.URL, "job.completed")
		ep2, _ := whEndpoint(t, b.tn, whNewReceiver(t).srv.URL, "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Complete(t, whRunning(t, b.tn, r, nil), nil) // one event, a delivery to each
		ctx := t.Context()
		var event uuid.UUID
		require.NoError(t, b.s.DB.NewRaw("SELECT id FROM webhook_events WHERE tenant_id = ?", b.tn.User.Tenant).Scan(ctx, &event))
		holder, err := b.s.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer holder.Rollback()
		_, err = holder.ExecContext(ctx, "SELECT 1 FROM webhook_events WHERE id = ? FOR UPDATE", event)
		require.NoError(t, err)

		done := make(chan *apitest.Response, 2)
		for _, ep := range []string{ep1, ep2} {
			go func() {
				done <- b.s.Do(t, b.tn.User.Token, `mutation($e: ID!) { deleteWebhookEndpoint(id: $e) }`, map[string]any{"e": ep})
			}()
		}
		apitest.Eventually(t, 30*time.Second, "both deletions wait for the event", func() bool {
			return b.s.LockWaiters(t, "%webhook_events%") == 2
		})
		require.NoError(t, holder.Rollback())
		(<-done).OK(t, nil)
		(<-done).OK(t, nil)
		var left int
		require.NoError(t, b.s.DB.NewRaw("SELECT count(*) FROM webhook_events WHERE tenant_id = ?", b.tn.User.Tenant).Scan(ctx, &left))
		require.Zero(t, left, "the event of two deleted endpoints")
	})

	// Deleting an endpoint takes its locks in the order the prune,
	// redeliverWebhook and a recorded attempt do: its deliveries before
	// the endpoint. With one of its deliveries held (as a prune deleting
	// it holds it), the deletion waits without holding the endpoint, which
	// a redelivery's insert can still take KEY SHARE on (NOWAIT): locked
	// the other way round, the two deadlocked.
	t.Run("DeletingAnEndpointLocksItsDeliveriesFirst", func(t *testing.T) {
		t.Parallel()
		b, ep, sent := whDelivered(t)
		ctx := t.Context()
		holder, err := b.s.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer holder.Rollback()
		_, err = holder.ExecContext(ctx, "SELECT 1 FROM webhook_deliveries WHERE id = ? FOR UPDATE", sent.ID)
		require.NoError(t, err)

		done := make(chan *apitest.Response, 1)
		go func() {
			done <- b.s.Do(t, b.tn.User.Token, `mutation($e: ID!) { deleteWebhookEndpoint(id: $e) }`, map[string]any{"e": ep})
		}()
		whAwaitLockWait(t, b, "the deletion waits for the held delivery", func() bool { return false })
		_, err = holder.ExecContext(ctx, "SELECT 1 FROM webhook_endpoints WHERE id = ? FOR KEY SHARE NOWAIT", ep)
		require.NoError(t, err, "the waiting deletion holds the endpoint")
		require.NoError(t, holder.Rollback())
		(<-done).OK(t, nil)
	})

	t.Run("RedeliverAndTest", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{})
		rcv := whNewReceiver(t)
		ep, secret := whEndpoint(t, b.tn, rcv.srv.URL, "robot.offline")
		var sent struct{ SendTestWebhook whDelivery }
		b.tn.Do(t, `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { `+whDeliveryFields+` } }`, map[string]any{"e": ep}, &sent)
		require.Equal(t, "PENDING", sent.SendTestWebhook.Status)
		require.Equal(t, "webhook.test", sent.SendTestWebhook.EventType)
		// A pending delivery is retried on its own.
		resp := b.s.Do(t, b.tn.User.Token, `mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { id } }`, map[string]any{"d": sent.SendTestWebhook.ID})
		resp.Code(t, "CONFLICT")
		b.round(t)
		q := rcv.requests()[0]
		whVerify(t, secret, q)
		require.Equal(t, "webhook.test", q.body(t).Type)
		require.Equal(t, ep, q.body(t).Data["endpointId"])

		var again struct{ RedeliverWebhook whDelivery }
		b.tn.Do(t, `mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { `+whDeliveryFields+` } }`, map[string]any{"d": sent.SendTestWebhook.ID}, &again)
		require.NotEqual(t, sent.SendTestWebhook.ID, again.RedeliverWebhook.ID)
		b.round(t)
		got := rcv.requests()
		require.Len(t, got, 2)
		require.Equal(t, got[0].Header.Get("webhook-id"), got[1].Header.Get("webhook-id"), "a redelivery keeps the webhook-id")
		require.Equal(t, got[0].Body, got[1].Body)
		ds := whDeliveries(t, b.tn, ep)
		require.Len(t, ds, 2)
		var st struct {
			WebhookDeliveries struct {
				Edges []struct{ Node struct{ ID string } }
			}
		}
		b.tn.Do(t, `query($e: ID!) { webhookDeliveries(endpointId: $e, status: PENDING) { edges { node { id } } } }`, map[string]any{"e": ep}, &st)
		require.Empty(t, st.WebhookDeliveries.Edges)
	})

	t.Run("PrivateAddressesAreRefusedUnlessAllowed", func(t *testing.T) {
		t.Parallel()
		b := whManual(t, apitest.Options{WebhookGuard: true, Webhooks: app.WebhookConfig{AllowHTTP: true}})
		rcv := whNewReceiver(t)
		port := rcv.srv.Listener.Addr().String()[len("127.0.0.1:"):]
		for _, url := range []string{rcv.srv.URL, "http://169.254.169.254/latest/meta-data/", "http://10.0.0.7/hook", "http://[::1]:" + port + "/"} {
			resp := b.s.Do(t, b.tn.User.Token, `mutation($in: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $in) { secret } }`,
				map[string]any{"in": map[string]any{"url": url, "events": []string{"job.completed"}}})
			e := resp.Code(t, "BAD_USER_INPUT")
			require.Contains(t, e.Message, "address", url)
		}
		// A name is checked where it leads, at connect time.
		ep, _ := whEndpoint(t, b.tn, "http://localhost:"+port+"/hook/T0-S3CRET?token=S3CRET-TOO", "job.completed")
		r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
		r.Complete(t, whRunning(t, b.tn, r, nil), nil)
		b.round(t)
		d := whDeliveries(t, b.tn, ep)[0]
		require.Equal(t, "PENDING", d.Status)
		require.NotNil(t, d.Attempts[0].Error)
		require.Equal(t, "refused: the endpoint's host is at a loopback address, where webhooks are not delivered", *d.Attempts[0].Error,
			"the tenant reads the kind of address, not the address its name resolved to")
		logs := b.s.Log.String()
		require.Contains(t, logs, "webhook attempt got no answer", "the operator reads the whole error")
		require.Contains(t, logs, "127.0.0.1")
		require.NotContains(t, logs, "S3CRET", "but not the URL, whose path and query may hold the tenant's token")
		require.Zero(t, rcv.count(), "a delivery reached loopback")
	})
}

func TestJobRevisionIsBumpedByTheDatabase(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "r1", apitest.RobotOpts{})
	l := whRunning(t, tn, r, nil)
	before := tn.Job(t, l.Job.ID)

	// A heartbeat extends the lease: nothing a subscriber sees changes.
	r.Heartbeat(t, "ONLINE")
	after := tn.Job(t, l.Job.ID)
	require.Equal(t, before.Revision, after.Revision)
	jqSameTime(t, before.UpdatedAt, after.UpdatedAt, "updatedAt")

	// Any statement that changes a job bumps its revision, even one that
	// forgets to, and one cannot set it by hand.
	_, err := s.DB.ExecContext(t.Context(), "UPDATE jobs SET priority = 7 WHERE id = ?", l.Job.ID)
	require.NoError(t, err)
	require.Equal(t, before.Revision+1, tn.Job(t, l.Job.ID).Revision)
	_, err = s.DB.ExecContext(t.Context(), "UPDATE jobs SET revision = 1000 WHERE id = ?", l.Job.ID)
	require.NoError(t, err)
	require.Equal(t, before.Revision+1, tn.Job(t, l.Job.ID).Revision)
}

// A queued delivery wakes the leader's deliverer through NOTIFY: it goes
// out long before the maintenance runner's next tick (an hour here).
func TestWebhookDeliveryIsWokenByTheOutbox(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{SweepEvery: time.Hour})
	apitest.Eventually(t, time.Minute, "the runner leads", s.App.Maintenance.Leading)
	tn := apitest.NewTenant(t, s)
	rcv := whNewReceiver(t)
	ep, _ := whEndpoint(t, tn, rcv.srv.URL, "job.completed")
	r := tn.CreateRobot(t, "r1", apitest.RobotOpts{})
	done := r.Complete(t, whRunning(t, tn, r, nil), nil)
	require.Equal(t, done.ID, rcv.wait(t, 1)[0].body(t).Data["id"])
	tn.Do(t, `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }`, map[string]any{"e": ep}, nil)
	require.Equal(t, "webhook.test", rcv.wait(t, 2)[1].body(t).Type)
}

// whHangingReceiver is a receiver that never answers until the test ends;
// hung counts the deliveries it holds.
func whHangingReceiver(t *testing.T) (url string, hung *atomic.Int64) {
	t.Helper()
	release := make(chan struct{})
	hung = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hung.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	return srv.URL, hung
}

// whStalledAnswer is a receiver that answers status and the first bytes
// of a body whose rest never comes while the request lasts; sent counts
// the deliveries it got.
func whStalledAnswer(t *testing.T, status int) (url string, sent *atomic.Int64) {
	t.Helper()
	release := make(chan struct{})
	sent = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sent.Add(1)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	return srv.URL, sent
}

// whRoundTrip is an http.RoundTripper of a function.
type whRoundTrip func(*http.Request) (*http.Response, error)

func (f whRoundTrip) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// A test delivery sent while its endpoint is deleted either lands before
// the deletion (which then deletes it) or finds the endpoint gone; it once
// failed its insert on the foreign key (INTERNAL). The send is held after
// reading the endpoint by a lock on webhook_events, the deletion queued
// behind it.
func TestSendingATestWebhookWhileTheEndpointIsDeleted(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	var wh struct {
		CreateWebhookEndpoint struct{ Endpoint struct{ ID string } }
	}
	tn.Do(t, `mutation { createWebhookEndpoint(input: {url: "http://127.0.0.1:1/x", events: ["job.completed"]}) { endpoint { id } } }`, nil, &wh)
	id := wh.CreateWebhookEndpoint.Endpoint.ID
	release := s.LockTable(t, "webhook_events")
	// Waiting counted by the requests' own statements, not rdWaiting's
	// "%": this server's deliverer claims due deliveries every step in a
	// statement joining webhook_events, which waits on the locked table
	// too, and counted as the send (then the deletion) before either
	// waited. The send waits in its insert of the event; the deletion
	// behind it, for the endpoint the send holds.
	waitingIn := func(what, like string) {
		t.Helper()
		apitest.Eventually(t, 30*time.Second, what, func() bool { return s.LockWaiters(t, like) > 0 })
	}
	send := rdAsync(tn, `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }`, map[string]any{"e": id})
	waitingIn("the send waits for the events' table", "INSERT INTO webhook_events%")
	del := rdAsync(tn, `mutation($e: ID!) { deleteWebhookEndpoint(id: $e) }`, map[string]any{"e": id})
	waitingIn("the deletion waits for the endpoint", `SELECT%FROM "webhook_endpoints"%FOR UPDATE`)
	release()
	sent, deleted := <-send, <-del
	for _, out := range []*apitest.Result{sent, deleted} {
		for _, e := range out.Errors {
			require.Equal(t, "NOT_FOUND", e.Code(), "%+v", out.Errors)
		}
	}
	var left int
	require.NoError(t, s.DB.NewRaw(`SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = ?`, id).Scan(t.Context(), &left))
	require.Zero(t, left, "the endpoint's deliveries went with it")
}

// A job finished while a webhook endpoint of its tenant is being deleted:
// the deletion holds the endpoint from early in its transaction, and the
// outbox statement of the completion waits for it. Once the deletion
// committed, the completion left the endpoint out; its deliveries' foreign
// key once failed instead (INTERNAL, the completion rolled back). The
// deletion is held, after it locked the endpoint, by a lock on the event
// of the endpoint's test delivery. With another endpoint, the job's event
// goes to that one alone; without, no event is written (none without a
// delivery).
func TestFinishingAJobWhileAnEndpointIsDeleted(t *testing.T) {
	t.Parallel()
	for _, other := range []bool{false, true} {
		t.Run(fmt.Sprintf("another endpoint %v", other), func(t *testing.T) {
			t.Parallel()
			b := whManual(t, apitest.Options{})
			ctx := t.Context()
			doomed, _ := whEndpoint(t, b.tn, whNewReceiver(t).srv.URL, "job.completed")
			var kept string
			if other {
				kept, _ = whEndpoint(t, b.tn, whNewReceiver(t).srv.URL, "job.completed")
			}
			var sent struct{ SendTestWebhook whDelivery }
			b.tn.Do(t, `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { `+whDeliveryFields+` } }`, map[string]any{"e": doomed}, &sent)
			r := b.tn.CreateRobot(t, "r1", apitest.RobotOpts{})
			l := whRunning(t, b.tn, r, nil)

			holder, err := b.s.DB.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer holder.Rollback()
			_, err = holder.ExecContext(ctx, "SELECT 1 FROM webhook_events WHERE id = ? FOR UPDATE", sent.SendTestWebhook.EventID)
			require.NoError(t, err)

			deleted := rdAsync(b.tn, `mutation($e: ID!) { deleteWebhookEndpoint(id: $e) }`, map[string]any{"e": doomed})
			apitest.Eventually(t, 30*time.Second, "the deletion holds the endpoint and waits for its events", func() bool {
				return b.s.LockWaiters(t, "%FROM webhook_events WHERE id IN%FOR UPDATE%") == 1
			})
			completed := make(chan *apitest.Result, 1)
			go func() {
				out, err := b.tn.Client.Do(context.Background(), r.Key,
					`mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}) { id status } }`,
					map[string]any{"j": l.Job.ID, "l": l.LeaseToken})
				if err != nil {
					out = &apitest.Result{Errors: []apitest.Error{{Message: err.Error()}}}
				}
				completed <- out
			}()
			apitest.Eventually(t, 30*time.Second, "the completion's outbox statement waits for the endpoint", func() bool {
				return b.s.LockWaiters(t, "%INSERT INTO webhook_deliveries%") == 1
			})
			require.NoError(t, holder.Rollback())

			d, c := <-deleted, <-completed
			require.Empty(t, d.Errors, "the deletion: %+v", d.Errors)
			require.Empty(t, c.Errors, "the completion: %+v\nserver log:\n%s", c.Errors, b.s.Log.String())
			var done struct{ CompleteJob struct{ Status string } }
			require.NoError(t, c.Decode(&done))
			require.Equal(t, "COMPLETED", done.CompleteJob.Status)

			var endpoints []string
			require.NoError(t, b.s.DB.NewRaw(`SELECT d.endpoint_id::text FROM webhook_deliveries d WHERE d.subject_id = ?`, l.Job.ID).
				Scan(ctx, &endpoints))
			var events int
			require.NoError(t, b.s.DB.NewRaw(`SELECT count(*) FROM webhook_events WHERE subject_id = ?`, l.Job.ID).Scan(ctx, &events))
			if other {
				require.Equal(t, []string{kept}, endpoints, "the job's deliveries")
				require.Equal(t, 1, events, "the job's events")
			} else {
				require.Empty(t, endpoints, "the job's deliveries")
				require.Zero(t, events, "an event without a delivery")
			}
		})
	}
}
