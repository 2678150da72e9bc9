package bench_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"fleetgraph/apitest"
	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/maintenance"
)

// BenchmarkScheduler10k measures the scheduler with 10,000 enabled
// schedules that all fire every minute: one op is one minute's round on the
// maintenance runner (10,000 jobs enqueued). It reports the ticks fired per
// second of round and the lag from the round's start (the tick's instant,
// had the leader stepped exactly at it) to each job's insertion, p50/p99.
func BenchmarkScheduler10k(b *testing.B) {
	const schedules = 10_000
	clock := maintenance.NewManualClock(time.Date(2026, 6, 1, 10, 0, 30, 0, time.UTC))
	s := apitest.New(b, apitest.Options{Clock: clock})
	ctx := context.Background()
	tenant := uuid.New()
	user := auth.WithPrincipal(ctx, &auth.Principal{UserID: uuid.New(), TenantID: tenant, Role: auth.RoleUser})
	store := s.App.Resolver.ScheduleStore
	wf, err := s.App.Resolver.WorkflowStore.Create(user, s.DB, db.CreateWorkflowInput{Name: "bench", Definition: map[string]any{"nodes": []any{}}})
	if err != nil {
		b.Fatal(err)
	}
	first, err := store.Create(user, s.DB, db.CreateScheduleInput{Name: "s-0", WorkflowID: wf.ID, CronExpression: "* * * * *"})
	if err != nil {
		b.Fatal(err)
	}
	// The other 9,999 are copies of the first, under other names.
	if _, err := s.DB.ExecContext(ctx, `INSERT INTO schedules (tenant_id, name, workflow_id, cron_expression, time_zone, next_tick_at, created_by)
		SELECT tenant_id, 's-' || n, workflow_id, cron_expression, time_zone, next_tick_at, created_by
		FROM schedules, generate_series(1, ?) AS n WHERE id = ?`, schedules-1, first.ID); err != nil {
		b.Fatal(err)
	}
	var lags []time.Duration
	fired := 0
	var rounds time.Duration
	b.ResetTimer()
	for b.Loop() {
		clock.Advance(time.Minute)
		tick := clock.Now().Truncate(time.Minute)
		start := time.Now()
		if leading, err := s.App.Maintenance.Step(ctx); err != nil || !leading {
			b.Fatalf("step: leading %v, %v", leading, err)
		}
		rounds += time.Since(start)
		var created []time.Time
		if err := s.DB.NewRaw("SELECT created_at FROM jobs WHERE scheduled_for = ?", tick).Scan(ctx, &created); err != nil {
			b.Fatal(err)
		}
		if len(created) != schedules {
			b.Fatalf("%d jobs for the tick, want %d", len(created), schedules)
		}
		fired += len(created)
		for _, c := range created {
			lags = append(lags, c.Sub(start))
		}
	}
	slices.Sort(lags)
	q := func(p float64) float64 { return float64(lags[int(p*float64(len(lags)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(float64(fired)/rounds.Seconds(), "ticks/s")
	b.ReportMetric(q(0.50), "lag-p50-ms")
	b.ReportMetric(q(0.99), "lag-p99-ms")
}
