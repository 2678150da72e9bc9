package bench_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fleetgraph/apitest"
	"fleetgraph/app"
)

// fastReceiver answers every delivery 204 at once and calls seen with the
// event's data id.
func fastReceiver(b *testing.B, seen func(id string)) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var ev struct{ Data struct{ ID string } }
		_ = json.Unmarshal(body, &ev)
		seen(ev.Data.ID)
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// createEndpoint adds an endpoint for job.completed to the fleet's tenant.
func (f *fleet) createEndpoint(b *testing.B, url string) string {
	var out struct {
		CreateWebhookEndpoint struct{ Endpoint struct{ ID string } }
	}
	must(b, f.c.do(b.Context(), f.user, `mutation($u: String!) { createWebhookEndpoint(input: {url: $u, events: ["job.completed"]}) { endpoint { id } } }`,
		map[string]any{"u": url}, &out))
	return out.CreateWebhookEndpoint.Endpoint.ID
}

// BenchmarkWebhookThroughput measures how fast the deliverer drains a
// backlog of b.N due deliveries (each of its own job) to a fast local
// receiver, with the default 16 workers: one op is one delivery (claim,
// sign, POST, record).
func BenchmarkWebhookThroughput(b *testing.B) {
	s := apitest.New(b, apitest.Options{SweepEvery: time.Hour, Webhooks: app.WebhookConfig{Manual: true}})
	c := newClient(b, s)
	f := newFleet(b, s, c, 0)
	var got atomic.Int64
	ep := f.createEndpoint(b, fastReceiver(b, func(string) { got.Add(1) }).URL)
	ctx := b.Context()
	// The backlog, written as job transitions would write it.
	_, err := s.DB.NewRaw(`WITH ev AS (
			INSERT INTO webhook_events (tenant_id, type, subject_id, data)
			SELECT w.tenant_id, 'job.completed', gen_random_uuid(), jsonb_build_object('id', gen_random_uuid(), 'status', 'COMPLETED')
			FROM webhook_endpoints w, generate_series(1, ?) WHERE w.id = ?
			RETURNING id, tenant_id, subject_id)
		INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id, subject_id, event_type)
		SELECT tenant_id, ?, id, subject_id, 'job.completed' FROM ev`, b.N, ep, ep).Exec(ctx)
	must(b, err)
	b.ResetTimer()
	must(b, s.App.Webhooks.Run(ctx, time.Now()))
	s.App.Webhooks.Wait()
	b.StopTimer()
	if got.Load() != int64(b.N) {
		b.Fatalf("the receiver got %d of %d deliveries", got.Load(), b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkWebhookLag measures the time from completeJob's response to the
// receiver getting the job.completed event, one job at a time, with every
// worker idle: the outbox's NOTIFY wakes the deliverer.
func BenchmarkWebhookLag(b *testing.B) {
	s := apitest.New(b)
	c := newClient(b, s)
	f := newFleet(b, s, c, 1)
	key := f.robots[0]
	var mu sync.Mutex
	arrived := map[string]chan time.Time{}
	arrival := func(id string) chan time.Time {
		mu.Lock()
		defer mu.Unlock()
		if arrived[id] == nil {
			arrived[id] = make(chan time.Time, 1)
		}
		return arrived[id]
	}
	f.createEndpoint(b, fastReceiver(b, func(id string) { arrival(id) <- time.Now() }).URL)
	ctx := b.Context()
	lags := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		must(b, f.enqueue(ctx, 1, 1))
		var out struct{ ClaimJob *lease }
		must(b, c.do(ctx, key, claimQuery, map[string]any{"w": 10}, &out))
		must(b, f.finish(ctx, key, out.ClaimJob))
		done := time.Now()
		select {
		case at := <-arrival(out.ClaimJob.Job.ID):
			lags = append(lags, at.Sub(done))
		case <-time.After(time.Minute):
			b.Fatal("the job's event did not arrive")
		}
	}
	b.StopTimer()
	slices.Sort(lags)
	ms := func(q float64) float64 {
		return float64(lags[min(len(lags)-1, int(q*float64(len(lags))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(0.50), "lag-p50-ms")
	b.ReportMetric(ms(0.99), "lag-p99-ms")
}
