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

// BenchmarkRobotKeyRequest measures what the API key cache saves a robot's
// request: `{ __typename }` with a robot API key (so the key's resolution
// is the only database work), served in-process by two servers side by
// side, the key cache off (API_KEY_CACHE_TTL=0: a key lookup per request)
// and on (the default 5 s), each over its own database. Each iteration
// sends one request to each, alternating the order; it reports each one's
// median time per request, the ratio off/on, and the implied requests/s of
// one client (1e9 / median ns). See BENCHMARKS.md.
func BenchmarkRobotKeyRequest(b *testing.B) {
	modes := []struct {
		unit string
		ttl  time.Duration
	}{
		{"off-ns/req", 0},
		{"cached-ns/req", 5 * time.Second},
	}
	type target struct {
		s     *apitest.Server
		key   string
		spent []time.Duration
	}
	targets := make([]*target, len(modes))
	for i, m := range modes {
		s := apitest.New(b, apitest.Options{LogLevel: slog.LevelWarn, KeyCacheTTL: m.ttl})
		svc := s.NewService(b, uuid.New())
		var robot struct{ CreateRobot struct{ ID string } }
		s.Do(b, svc.Token, `mutation { createRobot(input: {name: "bench", hostname: "h"}) { id } }`, nil).OK(b, &robot)
		var key struct{ CreateApiKey struct{ Key string } }
		s.Do(b, svc.Token, `mutation($r: ID!) { createApiKey(robotId: $r, name: "k") { key } }`, map[string]any{"r": robot.CreateRobot.ID}).OK(b, &key)
		targets[i] = &target{s: s, key: key.CreateApiKey.Key}
	}
	const body = `{"query":"query Bench { __typename }"}`
	send := func(t *target) {
		req := httptest.NewRequest(http.MethodPost, "/graphql", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+t.key)
		rec := httptest.NewRecorder()
		start := time.Now()
		t.s.Handler.ServeHTTP(rec, req)
		t.spent = append(t.spent, time.Since(start))
		if rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), `"errors"`) {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
	for _, t := range targets {
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
	b.ReportMetric(med[0]/med[1], "off/cached")
	b.ReportMetric(1e9/med[0], "off-req/s")
	b.ReportMetric(1e9/med[1], "cached-req/s")
}
