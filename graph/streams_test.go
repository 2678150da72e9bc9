package graph_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph"
	"fleetgraph/graph/live"
)

const streamSub = `subscription($id: ID) { machineUpdated(id: $id) { op version machine { status } } }`

// streamRequest is a POST of query with the given Accept header.
func streamRequest(t *testing.T, ctx context.Context, s *apitest.Server, token, accept, query string, vars map[string]any) *http.Response {
	t.Helper()
	body, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	require.NoError(t, err)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/graphql", strings.NewReader(string(body)))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", accept)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { res.Body.Close() })
	return res
}

// apolloAccept is the Accept header Apollo Client sends with a subscription over HTTP.
const apolloAccept = `multipart/mixed;boundary="graphql";subscriptionSpec=1.0,application/json`

// multipartStream reads the parts of a multipart subscription response.
type multipartStream struct {
	t *testing.T
	r *multipart.Reader
}

func openMultipart(t *testing.T, res *http.Response) *multipartStream {
	t.Helper()
	require.Equal(t, http.StatusOK, res.StatusCode)
	mt, params, err := mime.ParseMediaType(res.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/mixed", mt)
	require.Equal(t, "graphql", params["boundary"])
	require.Equal(t, "1.0", params["subscriptionspec"])
	return &multipartStream{t: t, r: multipart.NewReader(res.Body, params["boundary"])}
}

// next returns the next part's JSON, skipping heartbeats (and the empty
// last part) unless heartbeats is set; io.EOF means the stream ended with
// its closing boundary, anything else that it was cut.
func (m *multipartStream) next(heartbeats bool) (map[string]any, error) {
	for {
		p, err := m.r.NextPart()
		if err != nil {
			return nil, err
		}
		require.Equal(m.t, "application/json", p.Header.Get("Content-Type"))
		// The whole part, up to the delimiter after it, as a client
		// must read it before it can know the part is complete.
		body, err := io.ReadAll(p)
		require.NoError(m.t, err)
		var v map[string]any
		require.NoError(m.t, json.Unmarshal(body, &v), "%s", body)
		if len(v) > 0 || heartbeats {
			return v, nil
		}
	}
}

// payload returns the next part's payload.
func (m *multipartStream) payload() map[string]any {
	m.t.Helper()
	v, err := m.next(false)
	require.NoError(m.t, err)
	p, ok := v["payload"].(map[string]any)
	require.True(m.t, ok, "a part without a payload: %v", v)
	return p
}

func change(t *testing.T, payload map[string]any) (op, status string) {
	t.Helper()
	raw, _ := json.Marshal(payload)
	var out struct {
		Data struct {
			MachineUpdated struct {
				Op      string
				Machine struct{ Status string }
			}
		}
	}
	require.NoError(t, json.Unmarshal(raw, &out), "%s", raw)
	return out.Data.MachineUpdated.Op, out.Data.MachineUpdated.Machine.Status
}

// A subscription over plain HTTP (a JSON response) cannot stream: it is
// refused at once, naming the transports that can, instead of waiting for
// its first event.
func TestSubscriptionOverPlainHTTPIsRefused(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	c := newClient(t, s)
	m := c.create("plain-sub")
	// Nothing changes the machine: the old code waited here forever.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	check := func(t *testing.T, r *apitest.Response) {
		t.Helper()
		require.NotEmpty(t, r.Errors, "status %d", r.Status)
		e := r.Code(t, "BAD_USER_INPUT")
		require.Equal(t, "SUBSCRIPTION_NEEDS_STREAM", e.Extensions["reason"])
		for _, name := range []string{"graphql-transport-ws", "text/event-stream", "multipart/mixed"} {
			require.Contains(t, e.Message, name)
		}
	}
	for _, accept := range []string{"", "application/json", "application/graphql-response+json", "application/json, text/event-stream;q=0.5"} {
		t.Run("POST Accept="+accept, func(t *testing.T) {
			body, _ := json.Marshal(map[string]any{"query": streamSub, "variables": map[string]any{"id": m.ID}})
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/graphql", strings.NewReader(string(body)))
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+c.token)
			req.Header.Set("Content-Type", "application/json")
			if accept != "" {
				req.Header.Set("Accept", accept)
			}
			check(t, s.Send(t, req))
		})
	}
	t.Run("GET", func(t *testing.T) {
		q := url.Values{"query": {streamSub}, "variables": {`{"id":"` + m.ID + `"}`}}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/graphql?"+q.Encode(), nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+c.token)
		check(t, s.Send(t, req))
	})
}

// Apollo's multipart HTTP subscriptions: each event a part with a payload,
// heartbeats while idle, the closing boundary at the end.
func TestMultipartSubscriptions(t *testing.T) {
	t.Parallel()
	// No heartbeat in a test's lifetime: each part must reach the client
	// on its own, not pushed through by the next write.
	s := apitest.New(t, apitest.Options{KeepAlive: time.Hour})
	c := newClient(t, s)
	m := c.create("multipart-sub")

	t.Run("EventsAsTheDataChanges", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		mp := openMultipart(t, streamRequest(t, ctx, s, c.token, apolloAccept, streamSub, map[string]any{"id": m.ID}))
		op, status := change(t, mp.payload())
		require.Equal(t, "CURRENT", op)
		require.Equal(t, "STOPPED", status)
		c.mutate("startMachine", m.ID)
		op, status = change(t, mp.payload())
		require.Equal(t, "UPDATED", op)
		require.Equal(t, "RUNNING", status)
		c.mutate("stopMachine", m.ID)
		_, status = change(t, mp.payload())
		require.Equal(t, "STOPPED", status)
	})

	t.Run("HeartbeatsWhileIdle", func(t *testing.T) {
		s := apitest.New(t, apitest.Options{KeepAlive: 50 * time.Millisecond})
		c := newClient(t, s)
		m := c.create("multipart-heartbeats")
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		mp := openMultipart(t, streamRequest(t, ctx, s, c.token, apolloAccept, streamSub, map[string]any{"id": m.ID}))
		mp.payload() // CURRENT
		v, err := mp.next(true)
		require.NoError(t, err)
		require.Empty(t, v, "a heartbeat is an empty object")
	})

	t.Run("QueryEndsWithTheClosingBoundary", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		mp := openMultipart(t, streamRequest(t, ctx, s, c.token, `multipart/mixed;subscriptionSpec="1.0", application/json`, `{ machines { totalCount } }`, nil))
		require.Equal(t, map[string]any{"data": map[string]any{"machines": map[string]any{"totalCount": float64(1)}}}, mp.payload())
		_, err := mp.next(false)
		require.ErrorIs(t, err, io.EOF, "the stream ends with --graphql--")
	})

	t.Run("ErrorsArePayloads", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		mp := openMultipart(t, streamRequest(t, ctx, s, c.token, apolloAccept, streamSub, map[string]any{"id": "00000000-0000-0000-0000-000000000001"}))
		p := mp.payload()
		raw, _ := json.Marshal(p)
		require.Contains(t, string(raw), "NOT_FOUND")
		_, err := mp.next(false)
		require.ErrorIs(t, err, io.EOF)
	})

	t.Run("DocumentOverTheSubscriptionLimitIsRefused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		// A subscription keeps its document while it runs (the websocket
		// and SSE cases, and the quota: graph/live).
		big := streamSub + "\n#" + strings.Repeat("x", graph.DefaultLimits.SubscriptionBytes)
		mp := openMultipart(t, streamRequest(t, ctx, s, c.token, apolloAccept, big, map[string]any{"id": m.ID}))
		raw, _ := json.Marshal(mp.payload())
		require.Contains(t, string(raw), `"reason":"SUBSCRIPTION_TOO_LARGE"`)
		require.Contains(t, string(raw), `"code":"BAD_USER_INPUT"`)
		_, err := mp.next(false)
		require.ErrorIs(t, err, io.EOF)
	})

	t.Run("JSONPreferredGetsJSON", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		res := streamRequest(t, ctx, s, c.token, `application/json, multipart/mixed;subscriptionSpec=1.0`, `{ machines { totalCount } }`, nil)
		require.Contains(t, res.Header.Get("Content-Type"), "json")
	})

	t.Run("DeferSpecIsNotSubscriptionSpec", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		res := streamRequest(t, ctx, s, c.token, `multipart/mixed;deferSpec=20220824, application/json`, `{ machines { totalCount } }`, nil)
		require.Contains(t, res.Header.Get("Content-Type"), "json")
	})

	t.Run("QuotaCountsStreams", func(t *testing.T) {
		s := apitest.New(t, apitest.Options{LiveLimits: live.Limits{PerPrincipal: 1}})
		c := newClient(t, s)
		m := c.create("quota")
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		mp := openMultipart(t, streamRequest(t, ctx, s, c.token, apolloAccept, streamSub, map[string]any{"id": m.ID}))
		mp.payload()
		res := streamRequest(t, ctx, s, c.token, apolloAccept, streamSub, map[string]any{"id": m.ID})
		require.Equal(t, http.StatusTooManyRequests, res.StatusCode)
		b, _ := io.ReadAll(res.Body)
		require.Contains(t, string(b), "RATE_LIMITED")
	})
}

// Shutdown ends SSE and multipart streams with their final message and
// returns once they are closed, instead of waiting for their clients.
func TestShutdownEndsStreams(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	c := newClient(t, s)
	m := c.create("shutdown-streams")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	mp := openMultipart(t, streamRequest(t, ctx, s, c.token, apolloAccept, streamSub, map[string]any{"id": m.ID}))
	mp.payload() // CURRENT: the subscription runs
	sse := streamRequest(t, ctx, s, c.token, "text/event-stream", streamSub, map[string]any{"id": m.ID})
	require.Contains(t, sse.Header.Get("Content-Type"), "text/event-stream")
	lines := bufio.NewScanner(sse.Body)
	var events []string
	readEvent := func() string {
		for lines.Scan() {
			if ev, ok := strings.CutPrefix(lines.Text(), "event: "); ok {
				events = append(events, ev)
				return ev
			}
		}
		return ""
	}
	require.Equal(t, "next", readEvent(), "CURRENT")

	closed := make(chan error, 1)
	go func() { closed <- s.Handler.CloseStreams(ctx) }()

	_, err := mp.next(false)
	require.ErrorIs(t, err, io.EOF, "the multipart stream ends with its closing boundary")
	require.Equal(t, "complete", readEvent(), "events: %v", events)
	require.NoError(t, <-closed, "every stream closed before the deadline")

	// New streams are refused while the server shuts down.
	res := streamRequest(t, ctx, s, c.token, apolloAccept, streamSub, map[string]any{"id": m.ID})
	require.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	require.False(t, errors.Is(ctx.Err(), context.DeadlineExceeded))
}

// Shutdown lets a query or mutation on a stream finish and send its result,
// as it does one over a plain POST: only subscriptions are cut. The old
// code cancelled the mutation (its statement stopped, its transaction
// rolled back) and ended the stream with a bare `complete`.
func TestShutdownLetsAStreamedMutationFinish(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	c := newClient(t, s)
	m := c.create("shutdown-mutation")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// The machine's row held, the mutation waits for it.
	holder, err := s.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer holder.Rollback()
	_, err = holder.ExecContext(ctx, "SELECT 1 FROM machines WHERE id = ? FOR UPDATE", m.ID)
	require.NoError(t, err)
	sse := streamRequest(t, ctx, s, c.token, "text/event-stream", `mutation($id: ID!) { startMachine(id: $id) { status } }`, map[string]any{"id": m.ID})
	require.Contains(t, sse.Header.Get("Content-Type"), "text/event-stream")
	apitest.Eventually(t, 30*time.Second, "the mutation waits for the machine's row", func() bool {
		return s.LockWaiters(t, "%machines%") > 0
	})

	closed := make(chan error, 1)
	go func() { closed <- s.Handler.CloseStreams(ctx) }()
	apitest.Eventually(t, 30*time.Second, "the server shuts its streams", func() bool {
		res := streamRequest(t, ctx, s, c.token, "text/event-stream", streamSub, map[string]any{"id": m.ID})
		_ = res.Body.Close()
		return res.StatusCode == http.StatusServiceUnavailable
	})
	require.NoError(t, holder.Rollback())

	lines := bufio.NewScanner(sse.Body)
	var events []string
	for lines.Scan() {
		events = append(events, lines.Text())
	}
	require.Contains(t, events, `data: {"data":{"startMachine":{"status":"RUNNING"}}}`, "events: %v", events)
	require.Contains(t, events, "event: complete")
	require.NoError(t, <-closed)
	var status string
	require.NoError(t, s.DB.NewRaw("SELECT status FROM machines WHERE id = ?", m.ID).Scan(ctx, &status))
	require.Equal(t, "RUNNING", status, "the mutation committed")
}

// Multipart is chosen as SSE is: when the Accept header prefers it by
// q-value, then order, and only with a subscriptionSpec (Apollo's @defer
// format, deferSpec, is another protocol).
func TestMultipartNegotiation(t *testing.T) {
	t.Parallel()
	cases := map[string]struct{ multipart, sse bool }{
		apolloAccept: {multipart: true},
		`multipart/mixed;subscriptionSpec="1.0", application/json`:           {multipart: true},
		`application/json, multipart/mixed;subscriptionSpec=1.0`:             {},
		`application/json;q=0.5, multipart/mixed;subscriptionSpec=1.0`:       {multipart: true},
		`multipart/mixed;subscriptionSpec=1.0;q=0.4, application/json;q=0.9`: {},
		`multipart/mixed;subscriptionSpec=1.0;q=0`:                           {},
		`multipart/mixed;deferSpec=20220824, application/json`:               {},
		`multipart/mixed`: {},
		`multipart/mixed;subscriptionSpec=1.0, */*`:                     {multipart: true},
		`text/event-stream, multipart/mixed;subscriptionSpec=1.0`:       {sse: true},
		`multipart/mixed;subscriptionSpec=1.0, text/event-stream`:       {multipart: true},
		`text/event-stream;q=0.5, multipart/mixed;subscriptionSpec=1.0`: {multipart: true},
	}
	for accept, want := range cases {
		require.Equal(t, want.multipart, live.PrefersMultipart(accept), "Accept: %q", accept)
		require.Equal(t, want.sse, live.PrefersEventStream(accept), "Accept: %q", accept)
	}
}

// Shutdown ends a robot's waiting claim with no job (the robot asks
// again, of another replica) instead of holding the server for up to a
// minute; a job queued meanwhile is still handed out, without waiting.
func TestShutdownEndsWaitingClaims(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "waiting", apitest.RobotOpts{})
	claimed := r.ClaimAsync(t, 60)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- s.Handler.CloseStreams(ctx) }()
	// Well within the claim's 60 s: the old code answered only then.
	require.Nil(t, apitest.ReceiveClaim(t, claimed, 45*time.Second), "no job came")
	require.NoError(t, <-closed)

	job := tn.Enqueue(t, nil)
	lease := r.Claim(t, 60)
	require.NotNil(t, lease)
	require.Equal(t, job.ID, lease.Job.ID)
}
