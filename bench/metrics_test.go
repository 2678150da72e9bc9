package bench_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"fleetgraph/apitest"
)

// BenchmarkRequestMetrics measures what metrics and the access log add to
// one request: a signed-in user's query served by the real handler (CORS,
// body check, JWT verification, gqlgen with its cached parse and limits,
// the resolver), in-process without a network, by three servers side by
// side: metrics off, metrics on, and metrics on with the access log at
// info. Each iteration sends one request to each, in a rotating order, so
// that the load of a shared machine falls on all three alike; it reports
// each one's median time per request (off-ns/req, on-ns/req,
// on+log-ns/req; medians, as a busy machine's preemptions make means
// noise) and their ratios on/off and on+log/off. See BENCHMARKS.md.
func BenchmarkRequestMetrics(b *testing.B) {
	queries := []struct{ name, query string }{
		// No database: the whole cost is the request path's.
		{"typename", `query Bench { __typename }`},
		// One small statement: a typical read.
		{"machines", `query Bench { machines(first: 1) { totalCount } }`},
	}
	modes := []struct {
		unit string
		opts apitest.Options
	}{
		{"off-ns/req", apitest.Options{LogLevel: slog.LevelWarn}},
		{"on-ns/req", apitest.Options{Metrics: true, LogLevel: slog.LevelWarn}},
		{"on+log-ns/req", apitest.Options{Metrics: true, LogLevel: slog.LevelInfo}},
	}
	for _, q := range queries {
		b.Run(q.name, func(b *testing.B) {
			type target struct {
				s     *apitest.Server
				token string
				spent []time.Duration
			}
			targets := make([]*target, len(modes))
			for i, m := range modes {
				s := apitest.New(b, m.opts)
				targets[i] = &target{s: s, token: s.NewUser(b, uuid.New()).Token}
			}
			body := `{"query":"` + q.query + `"}`
			send := func(t *target) {
				req := httptest.NewRequest(http.MethodPost, "/graphql", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+t.token)
				rec := httptest.NewRecorder()
				start := time.Now()
				t.s.Handler.ServeHTTP(rec, req)
				t.spent = append(t.spent, time.Since(start))
				if rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), `"errors"`) {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
			for _, t := range targets { // warm caches and pools alike
				send(t)
				t.spent = t.spent[:0]
			}
			for n := 0; b.Loop(); n++ {
				for j := range targets {
					send(targets[(n+j)%len(targets)])
				}
			}
			med := make([]float64, len(targets))
			for i, t := range targets {
				slices.Sort(t.spent)
				med[i] = float64(t.spent[len(t.spent)/2].Nanoseconds())
				b.ReportMetric(med[i], modes[i].unit)
			}
			b.ReportMetric(med[1]/med[0], "on/off")
			b.ReportMetric(med[2]/med[0], "on+log/off")
		})
	}
}
