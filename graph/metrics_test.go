package graph_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/google/uuid"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/metrics"
)

// Operators' view of the endpoint: what /metrics shows after real requests
// and the access log's lines. Helpers start with mt.

// mtWait bounds every wait for a metric to move: generous, for a busy machine.
const mtWait = 30 * time.Second

// mtScrape reads the server's /metrics and flattens it: one value per
// series, keyed `name{label="value",...}` with labels sorted; histograms
// give their sample count as name_count{...}.
func mtScrape(t *testing.T, s *apitest.Server) map[string]float64 {
	t.Helper()
	res, err := http.Get(s.MetricsURL)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(res.Body)
	require.NoError(t, err)
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			key := "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Counter != nil:
				out[name+key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[name+key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[name+"_count"+key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// mtEventually scrapes until cond holds of the metrics, or fails after mtWait.
func mtEventually(t *testing.T, s *apitest.Server, what string, cond func(map[string]float64) bool) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(mtWait)
	for {
		m := mtScrape(t, s)
		if cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			require.FailNowf(t, "metrics did not change", "waited %s for %s; last scrape:\n%v", mtWait, what, m)
		}
		time.Sleep(20 * time.Millisecond) // the scrape itself is the event; this only paces the polling
	}
}

// mtDelta is how much a series moved between two scrapes.
func mtDelta(before, after map[string]float64, key string) float64 { return after[key] - before[key] }

func mtUserTenant(t *testing.T, s *apitest.Server) apitest.User {
	return s.NewUser(t, uuid.New())
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Metrics: true})
	user := mtUserTenant(t, s)

	t.Run("QueriesAndErrors", func(t *testing.T) {
		before := mtScrape(t, s)
		s.Do(t, user.Token, `query ListMachines { machines(first: 5) { totalCount } }`, nil).OK(t, nil)
		// An execution error, from an anonymous caller whose name is not known yet.
		s.Do(t, "", `query AnonProbe { machines(first: 1) { totalCount } }`, nil).Code(t, "UNAUTHENTICATED")
		// A request refused before execution.
		s.Do(t, user.Token, `query Broken { noSuchField }`, nil).Code(t, "BAD_USER_INPUT")
		// A bad credential, refused before GraphQL.
		res := s.Do(t, "not-a-token", `{ __typename }`, nil)
		require.Equal(t, http.StatusUnauthorized, res.Status)
		after := mtScrape(t, s)

		op := func(typ, name, outcome string) string {
			return fmt.Sprintf(`fleetgraph_graphql_operation_duration_seconds_count{operation=%q,outcome=%q,type=%q}`, name, outcome, typ)
		}
		require.Equal(t, 1.0, mtDelta(before, after, op("query", "ListMachines", "ok")))
		require.Equal(t, 1.0, mtDelta(before, after, op("query", "(other)", "error")), "an anonymous caller's new name is not a label")
		require.Zero(t, after[op("query", "AnonProbe", "error")])
		require.Equal(t, 1.0, mtDelta(before, after, op("unknown", "(other)", "rejected")))
		require.Equal(t, 2.0, mtDelta(before, after, `fleetgraph_graphql_errors_total{code="UNAUTHENTICATED"}`), "one from the resolver, one from the bad credential")
		require.Equal(t, 1.0, mtDelta(before, after, `fleetgraph_graphql_errors_total{code="BAD_USER_INPUT"}`))
		require.GreaterOrEqual(t, mtDelta(before, after, `fleetgraph_http_requests_total{method="POST",status="200"}`), 2.0)
		require.Equal(t, 1.0, mtDelta(before, after, `fleetgraph_http_requests_total{method="POST",status="401"}`))
		require.GreaterOrEqual(t, mtDelta(before, after, `fleetgraph_http_request_duration_seconds_count{method="POST"}`), 4.0)
		require.Equal(t, 25.0, after[`go_sql_max_open_connections{db_name="fleetgraph"}`], "the pool's statistics")

		// Once known from a signed-in caller, the name is a label for anyone.
		s.Do(t, "", `query ListMachines { machines(first: 1) { totalCount } }`, nil).Code(t, "UNAUTHENTICATED")
		again := mtScrape(t, s)
		require.Equal(t, 1.0, mtDelta(after, again, op("query", "ListMachines", "error")))
	})

	t.Run("WebsocketSubscription", func(t *testing.T) {
		before := mtScrape(t, s)
		ctx, cancel := context.WithTimeout(context.Background(), mtWait)
		defer cancel()
		conn, _, err := websocket.Dial(ctx, strings.Replace(s.URL, "http", "ws", 1)+"/graphql",
			&websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
		require.NoError(t, err)
		defer conn.CloseNow()
		require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + user.Token}}))
		var ack struct{ Type string }
		require.NoError(t, wsjson.Read(ctx, conn, &ack))
		require.Equal(t, "connection_ack", ack.Type)
		require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"id": "1", "type": "subscribe",
			"payload": map[string]any{"query": `subscription Watch { machineUpdated { op id } }`}}))
		open := mtEventually(t, s, "the subscription to be held", func(m map[string]float64) bool {
			return m[`fleetgraph_hub_subscribers{kind="machine"}`] == before[`fleetgraph_hub_subscribers{kind="machine"}`]+1
		})
		require.Equal(t, 1.0, open[`fleetgraph_streams_open{transport="websocket"}`])
		require.Equal(t, 1.0, mtDelta(before, open, `fleetgraph_streams_total{transport="websocket"}`))

		var created struct{ CreateMachine struct{ ID string } }
		s.Do(t, user.Token, `mutation { createMachine(input: {name: "watched"}) { id } }`, nil).OK(t, &created)
		var msg struct {
			Type    string
			Payload json.RawMessage
		}
		require.NoError(t, wsjson.Read(ctx, conn, &msg))
		require.Equal(t, "next", msg.Type, "payload: %s", msg.Payload)
		require.Contains(t, string(msg.Payload), created.CreateMachine.ID)
		delivered := mtScrape(t, s)
		require.GreaterOrEqual(t, mtDelta(before, delivered, `fleetgraph_hub_deliveries_total{kind="machine"}`), 1.0)

		require.NoError(t, conn.Close(websocket.StatusNormalClosure, ""))
		mtEventually(t, s, "the websocket to close", func(m map[string]float64) bool {
			return m[`fleetgraph_streams_open{transport="websocket"}`] == 0 &&
				m[`fleetgraph_hub_subscribers{kind="machine"}`] == before[`fleetgraph_hub_subscribers{kind="machine"}`] &&
				mtDelta(before, m, `fleetgraph_graphql_operation_duration_seconds_count{operation="Watch",outcome="ok",type="subscription"}`) == 1 &&
				mtDelta(before, m, `fleetgraph_http_requests_total{method="GET",status="101"}`) == 1
		})
	})

	t.Run("JobsClaimsAndRescues", func(t *testing.T) {
		svc := s.NewService(t, user.Tenant)
		var robot struct{ CreateRobot struct{ ID string } }
		s.Do(t, svc.Token, `mutation { createRobot(input: {name: "metered", hostname: "h1"}) { id } }`, nil).OK(t, &robot)
		var key struct{ CreateApiKey struct{ Key string } }
		s.Do(t, svc.Token, `mutation($r: ID!) { createApiKey(robotId: $r, name: "k") { key } }`, map[string]any{"r": robot.CreateRobot.ID}).OK(t, &key)
		var wf struct{ CreateWorkflow struct{ ID string } }
		s.Do(t, svc.Token, `mutation($d: JSON!) { createWorkflow(input: {name: "metered", definition: $d}) { id } }`,
			map[string]any{"d": map[string]any{"nodes": []any{"a"}}}).OK(t, &wf)
		before := mtScrape(t, s)
		s.Do(t, svc.Token, `mutation($w: ID!) { enqueueJob(input: {workflowId: $w}) { id } }`, map[string]any{"w": wf.CreateWorkflow.ID}).OK(t, nil)
		queued := mtScrape(t, s)
		require.Equal(t, before[`fleetgraph_jobs{status="QUEUED"}`]+1, queued[`fleetgraph_jobs{status="QUEUED"}`])

		var claim struct{ ClaimJob *struct{ LeaseToken string } }
		s.Do(t, key.CreateApiKey.Key, `mutation { claimJob(waitSeconds: 5) { leaseToken } }`, nil).OK(t, &claim)
		require.NotNil(t, claim.ClaimJob)
		claimed := mtScrape(t, s)
		require.Equal(t, 1.0, mtDelta(before, claimed, `fleetgraph_claim_wait_seconds_count{outcome="job"}`))
		require.Equal(t, before[`fleetgraph_jobs{status="QUEUED"}`], claimed[`fleetgraph_jobs{status="QUEUED"}`])
		require.Equal(t, before[`fleetgraph_jobs{status="CLAIMED"}`]+1, claimed[`fleetgraph_jobs{status="CLAIMED"}`])

		// The lease runs out (as the database sees it); the maintenance task takes the job back.
		_, err := s.DB.ExecContext(t.Context(), `UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE status = 'CLAIMED'`)
		require.NoError(t, err)
		mtEventually(t, s, "the lease to be rescued", func(m map[string]float64) bool {
			return mtDelta(before, m, `fleetgraph_lease_rescues_total{to="QUEUED"}`) == 1
		})
	})

	t.Run("ListenerReconnects", func(t *testing.T) {
		before := mtScrape(t, s)
		// Every other session of the test database ends, the listener's
		// among them; pq reconnects it.
		_, err := s.DB.ExecContext(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`)
		require.NoError(t, err)
		mtEventually(t, s, "the listener to reconnect", func(m map[string]float64) bool {
			return mtDelta(before, m, `fleetgraph_listener_reconnects_total{}`) >= 1
		})
	})
}

// TestMetricsOperationNamesAreBounded: however many names callers make up,
// the operation label takes at most MaxOperationNames values plus the
// fixed ones.
func TestMetricsOperationNamesAreBounded(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Metrics: true})
	user := mtUserTenant(t, s)
	for i := range 10 {
		s.Do(t, "", fmt.Sprintf(`query Junk%d { __typename }`, i), nil).OK(t, nil)
	}
	m := mtScrape(t, s)
	names := map[string]bool{}
	re := regexp.MustCompile(`operation="([^"]*)"`)
	for k := range m {
		if strings.HasPrefix(k, "fleetgraph_graphql_operation_duration_seconds_count") {
			names[re.FindStringSubmatch(k)[1]] = true
		}
	}
	require.Equal(t, map[string]bool{"(other)": true}, names, "anonymous callers add no names")
	require.Equal(t, 10.0, m[`fleetgraph_graphql_operation_duration_seconds_count{operation="(other)",outcome="ok",type="query"}`])
	s.Do(t, user.Token, `query Named { __typename }`, nil).OK(t, nil)
	s.Do(t, user.Token, `{ __typename }`, nil).OK(t, nil)
	m = mtScrape(t, s)
	require.Equal(t, 1.0, m[`fleetgraph_graphql_operation_duration_seconds_count{operation="Named",outcome="ok",type="query"}`])
	require.Equal(t, 1.0, m[`fleetgraph_graphql_operation_duration_seconds_count{operation="(unnamed)",outcome="ok",type="query"}`])
}

// TestMetricsOneCallerCannotUseUpOperationNames: a signed-in caller making
// up names gets MaxOperationNamesPerCaller of them as labels and the rest
// as (other); the names it could not take are left for other callers.
func TestMetricsOneCallerCannotUseUpOperationNames(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Metrics: true})
	squatter, other := mtUserTenant(t, s), mtUserTenant(t, s)
	for i := range metrics.MaxOperationNames + 5 {
		s.Do(t, squatter.Token, fmt.Sprintf(`query AcmeCorp_customer_%d { __typename }`, i), nil).OK(t, nil)
	}
	s.Do(t, other.Token, `query RealDashboard { __typename }`, nil).OK(t, nil)
	m := mtScrape(t, s)
	const key = `fleetgraph_graphql_operation_duration_seconds_count{operation="%s",outcome="ok",type="query"}`
	require.Equal(t, 1.0, m[fmt.Sprintf(key, "RealDashboard")], "another caller's name is a label")
	require.Equal(t, 1.0, m[fmt.Sprintf(key, "AcmeCorp_customer_0")])
	require.Equal(t, 1.0, m[fmt.Sprintf(key, fmt.Sprintf("AcmeCorp_customer_%d", metrics.MaxOperationNamesPerCaller-1))])
	require.Zero(t, m[fmt.Sprintf(key, fmt.Sprintf("AcmeCorp_customer_%d", metrics.MaxOperationNamesPerCaller))])
	require.Equal(t, float64(metrics.MaxOperationNames+5-metrics.MaxOperationNamesPerCaller), m[fmt.Sprintf(key, "(other)")])
}

// TestAccessLog: one line per request at info, with what operators need to
// find it; none at warn.
func TestAccessLog(t *testing.T) {
	t.Parallel()
	t.Run("Info", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t, apitest.Options{LogLevel: slog.LevelInfo})
		user := mtUserTenant(t, s)
		req, err := http.NewRequest(http.MethodPost, s.URL+"/graphql", strings.NewReader(`{"query":"query ListMachines { machines(first: 1) { totalCount } }"}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+user.Token)
		req.Header.Set("X-Request-Id", "access-log-test-1")
		s.Send(t, req).OK(t, nil)
		line := mtLogLine(t, s, "access-log-test-1")
		for _, want := range []string{`msg=request`, `method=POST`, `path=/graphql`, `status=200`, `duration_ms=`, `operation=ListMachines`, `caller=user`} {
			require.Contains(t, line, want)
		}

		// An anonymous request is anonymous; one refused before its
		// credential was read (a body too large) is of an unknown caller,
		// whatever credential it carried.
		req, err = http.NewRequest(http.MethodPost, s.URL+"/graphql", strings.NewReader(`{"query":"{ __typename }"}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-Id", "access-log-test-anon")
		s.Send(t, req).OK(t, nil)
		require.Contains(t, mtLogLine(t, s, "access-log-test-anon"), "caller=anonymous")
		req, err = http.NewRequest(http.MethodPost, s.URL+"/graphql", strings.NewReader(`{"query":"{ __typename }"}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "text/plain")
		req.Header.Set("Authorization", "Bearer "+user.Token)
		req.Header.Set("X-Request-Id", "access-log-test-415")
		require.Equal(t, http.StatusUnsupportedMediaType, s.Send(t, req).Status)
		require.Contains(t, mtLogLine(t, s, "access-log-test-415"), "caller=unknown")

		// A websocket logs once, when it closes, with the caller it
		// authenticated as in connection_init.
		ctx, cancel := context.WithTimeout(context.Background(), mtWait)
		defer cancel()
		conn, _, err := websocket.Dial(ctx, strings.Replace(s.URL, "http", "ws", 1)+"/graphql", &websocket.DialOptions{
			Subprotocols: []string{"graphql-transport-ws"}, HTTPHeader: http.Header{"X-Request-Id": {"access-log-test-ws"}}})
		require.NoError(t, err)
		defer conn.CloseNow()
		require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + user.Token}}))
		var ack struct{ Type string }
		require.NoError(t, wsjson.Read(ctx, conn, &ack))
		require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"id": "1", "type": "subscribe",
			"payload": map[string]any{"query": `query Once { machines(first: 1) { totalCount } }`}}))
		var next struct{ Type string }
		require.NoError(t, wsjson.Read(ctx, conn, &next))
		require.Equal(t, "next", next.Type)
		require.NotContains(t, s.Log.String(), "access-log-test-ws", "nothing is logged while the stream is open")
		require.NoError(t, conn.Close(websocket.StatusNormalClosure, ""))
		line = mtLogLine(t, s, "access-log-test-ws")
		for _, want := range []string{`msg="stream ended"`, `method=GET`, `status=101`, `operation=Once`, `caller=user`, `transport=websocket`, `operations=1`} {
			require.Contains(t, line, want)
		}
	})
	t.Run("Warn", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t, apitest.Options{LogLevel: slog.LevelWarn})
		user := mtUserTenant(t, s)
		s.Do(t, user.Token, `query ListMachines { machines(first: 1) { totalCount } }`, nil).OK(t, nil)
		s.Do(t, "", `{ __typename }`, nil).OK(t, nil)
		require.NotContains(t, s.Log.String(), "msg=request")
	})
}

// mtLogLine waits for the access log line of request id, and returns it.
func mtLogLine(t *testing.T, s *apitest.Server, id string) string {
	t.Helper()
	deadline := time.Now().Add(mtWait)
	for {
		for _, l := range strings.Split(s.Log.String(), "\n") {
			if strings.Contains(l, "request_id="+id) && strings.Contains(l, "duration_ms=") {
				return l
			}
		}
		if time.Now().After(deadline) {
			require.FailNowf(t, "no access log line", "for request %s in:\n%s", id, s.Log.String())
		}
		time.Sleep(10 * time.Millisecond) // paces the look at the log; the line is the event
	}
}
