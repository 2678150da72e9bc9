package bench_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	"fleetgraph/apitest"
	"fleetgraph/bench/peer/dataset"
	"fleetgraph/gcfloor"
)

// BenchmarkRequestPath serves the peer benchmark's queries (bench/peer:
// dataset.List, 50 robots with their current jobs and workflows, and
// dataset.Point, one job with its robot's name) in-process, over the peer's
// data set seeded into a test database, with b.RunParallel's clients.
// list and point leave HTTP and the load generator out, so their CPU
// profile is the server's request path alone; http-list and http-point
// send the same requests over loopback HTTP, for what net/http and the
// middleware add:
//
//	go test ./bench/ -run '^$' -bench RequestPath -benchmem -cpuprofile /tmp/cpu.out
//
// It runs under Go's default garbage collection; GC_MIN_HEAP_MB=N runs it
// under the floor serve puts under the heap goal (package gcfloor).
//
// The raw-point runs are the point query's SELECT through the same pool
// (the ceiling over lib/pq), sent three ways (see raws).
func BenchmarkRequestPath(b *testing.B) {
	if mb, err := strconv.Atoi(os.Getenv("GC_MIN_HEAP_MB")); err == nil && mb > 0 {
		defer gcfloor.Start(uint64(mb) << 20).Stop()
	}
	s := apitest.New(b, apitest.Options{LogLevel: slog.LevelWarn})
	ctx := context.Background()
	for _, stmt := range dataset.SeedSQL() {
		if _, err := s.DB.ExecContext(ctx, stmt); err != nil {
			b.Fatalf("seeding: %v\n%s", err, stmt)
		}
	}
	token := s.NewService(b, uuid.MustParse(dataset.TenantID)).Token
	body := func(query string, vars map[string]any) string {
		p, err := json.Marshal(map[string]any{"query": query, "variables": vars})
		if err != nil {
			b.Fatal(err)
		}
		return string(p)
	}
	serve := func(b *testing.B, payload string) {
		req := httptest.NewRequest(http.MethodPost, "/graphql", strings.NewReader(payload))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		s.Handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), `"errors"`) {
			b.Fatalf("status %d: %.500s", rec.Code, rec.Body)
		}
	}
	list := body(dataset.List, nil)
	points := make([]string, 1000)
	for i := range points {
		points[i] = body(dataset.Point, map[string]any{"id": dataset.JobID(1 + rand.IntN(dataset.JobCount))})
	}
	// The same two queries over real HTTP on loopback, keep-alive, to
	// profile what the server adds around the operation (net/http, the
	// middleware, the body's JSON). The clients run in this process too:
	// in a profile they are the stacks under net/http.(*Client).
	srv := httptest.NewServer(s.Handler)
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	overHTTP := func(b *testing.B, payload string) {
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/graphql", strings.NewReader(payload))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || bytes.Contains(body, []byte(`"errors"`)) {
			b.Fatalf("status %d, %v: %.500s", resp.StatusCode, err, body)
		}
	}
	for _, via := range []struct {
		prefix string
		send   func(b *testing.B, payload string)
	}{{"", serve}, {"http-", overHTTP}} {
		b.Run(via.prefix+"list", func(b *testing.B) {
			via.send(b, list)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					via.send(b, list)
				}
			})
		})
		b.Run(via.prefix+"point", func(b *testing.B) {
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					via.send(b, points[n.Add(1)%int64(len(points))])
				}
			})
		})
	}

	const rawPoint = `SELECT j.id, j.status, j.priority, j.progress, j.attempt, j.input, j.created_at, r.name
FROM jobs j LEFT JOIN robots r ON r.id = j.robot_id AND r.tenant_id = j.tenant_id
WHERE j.id = $1 AND j.tenant_id = $2`
	pool := s.DB.DB.DB
	stmt, err := pool.PrepareContext(ctx, rawPoint)
	if err != nil {
		b.Fatal(err)
	}
	defer stmt.Close()
	// The three ways to send the raw point query: values written into the
	// text (the simple protocol, as bun sends every statement), bound
	// parameters of an unnamed statement (parsed and planned each time),
	// and a prepared statement (parsed once per connection).
	raws := []struct {
		name  string
		query func(id string) *sql.Row
	}{
		{"raw-point-simple", func(id string) *sql.Row {
			return pool.QueryRowContext(ctx, strings.NewReplacer("$1", "'"+id+"'", "$2", "'"+dataset.TenantID+"'").Replace(rawPoint))
		}},
		{"raw-point-bound", func(id string) *sql.Row { return pool.QueryRowContext(ctx, rawPoint, id, dataset.TenantID) }},
		{"raw-point-prepared", func(id string) *sql.Row { return stmt.QueryRowContext(ctx, id, dataset.TenantID) }},
	}
	for _, raw := range raws {
		b.Run(raw.name, func(b *testing.B) {
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var (
						id, status      string
						name            sql.NullString
						prio, prog, att int
						input           []byte
						created         any
					)
					err := raw.query(dataset.JobID(1+int(n.Add(1)%dataset.JobCount))).Scan(&id, &status, &prio, &prog, &att, &input, &created, &name)
					if err != nil {
						b.Fatal(fmt.Errorf("%s: %w", raw.name, err))
					}
				}
			})
		})
	}
}
