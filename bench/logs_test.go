package bench_test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"fleetgraph/apitest"
	"fleetgraph/auth"
)

// BenchmarkShipLogs measures ingest through the API: robots shipping
// batches of 500 lines (about 100-character messages with two fields each)
// in parallel. It reports lines/s.
func BenchmarkShipLogs(b *testing.B) {
	const robots, perRobot, batch = 8, 2, 500
	s := apitest.New(b)
	c := newClient(b, s)
	f := newFleet(b, s, c, robots)
	entries := make([]map[string]any, batch)
	for i := range entries {
		entries[i] = map[string]any{
			"level":   []string{"DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR"}[i%6],
			"message": fmt.Sprintf("step %d: opened https://portal.example.com/orders/%06d and read the table of open invoices", i, i),
			"fields":  map[string]any{"step": i, "node": "fetch"},
		}
	}
	vars := map[string]any{"e": entries}
	const ship = `mutation($e: [RobotLogInput!]!) { shipLogs(entries: $e) }`
	b.ResetTimer()
	var next atomic.Int64
	var lines atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, robots*perRobot)
	for w := range robots * perRobot {
		key := f.robots[w%robots]
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := c.do(b.Context(), key, ship, vars, nil); err != nil {
					errs <- err
					return
				}
				lines.Add(batch)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(lines.Load())/elapsed.Seconds(), "lines/s")
}

// BenchmarkRobotLogsQuery measures the newest 100 lines of one robot at
// minLevel WARNING through the API, among LOG_BENCH_ROWS generated lines
// (default 1,000,000; the target is 10,000,000) of 200 robots over
// 10 days, 10% of them WARNING or above. It reports p50 and p99 in ms.
func BenchmarkRobotLogsQuery(b *testing.B) {
	rows := 1_000_000
	if v := os.Getenv("LOG_BENCH_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		must(b, err)
		rows = n
	}
	s := apitest.New(b)
	c := newClient(b, s)
	f := newFleet(b, s, c, 1)
	var me struct{ CurrentRobot struct{ ID string } }
	must(b, c.do(b.Context(), f.robots[0], `{ currentRobot { id } }`, nil, &me))
	var tenant uuid.UUID
	must(b, s.DB.NewRaw("SELECT tenant_id FROM robots WHERE id = ?", me.CurrentRobot.ID).Scan(b.Context(), &tenant))
	generated := time.Now()
	must(b, generateLogs(b, s, tenant, me.CurrentRobot.ID, rows))
	b.Logf("generated %d lines in %s", rows, time.Since(generated).Round(time.Second))

	const query = `query($r: ID!) { robotLogs(robotId: $r, minLevel: WARNING, first: 100) { edges { node { id at level message } } } }`
	vars := map[string]any{"r": me.CurrentRobot.ID}
	var out struct {
		RobotLogs struct {
			Edges []struct{ Node struct{ ID string } }
		}
	}
	must(b, c.do(b.Context(), f.user, query, vars, &out))
	if len(out.RobotLogs.Edges) != 100 {
		b.Fatalf("expected 100 lines, got %d", len(out.RobotLogs.Edges))
	}
	var plan []string
	must(b, s.DB.NewRaw(`EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM robot_logs AS l WHERE l.tenant_id = ? AND l.robot_id = ? AND l.level >= 30
		ORDER BY l.at DESC, l.id DESC LIMIT 101`, tenant, me.CurrentRobot.ID).Scan(b.Context(), &plan))
	b.Logf("the store's query, in the database alone:\n%s", strings.Join(plan, "\n"))
	var took []time.Duration
	for b.Loop() { // b.Loop runs the setup above once
		start := time.Now()
		must(b, c.do(b.Context(), f.user, query, vars, nil))
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
}

// generateLogs writes rows lines straight into robot_logs: 200 robots (one
// of them robot) over the last 10 days, one in ten at WARNING or above, in
// chunks of a day so that each statement fills one partition.
func generateLogs(b *testing.B, s *apitest.Server, tenant uuid.UUID, robot string, rows int) error {
	b.Helper()
	ctx := b.Context()
	robots := make([]string, 200)
	robots[0] = robot
	for i := 1; i < len(robots); i++ {
		robots[i] = uuid.NewString()
	}
	const days = 10
	perDay := rows / days
	for d := range days {
		day := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -d)
		if _, err := s.DB.ExecContext(ctx, "SELECT fleetgraph_ensure_log_partition(?::date)", day.Format(time.DateOnly)); err != nil {
			return err
		}
		_, err := s.DB.NewRaw(`INSERT INTO robot_logs (tenant_id, robot_id, level, message, fields, at)
			SELECT ?, (?::uuid[])[1 + (g / 10) % 200],
			       CASE WHEN g % 10 = 0 THEN 30 + 10 * (g % 3) ELSE 10 + 10 * (g % 2) END,
			       'generated line ' || g || ' of the benchmark data set, about as long as a real one',
			       jsonb_build_object('g', g),
			       ?::timestamptz + make_interval(secs => (g::float8 / ?) * 86399)
			FROM generate_series(1, ?) AS g`,
			tenant, "{"+strings.Join(robots, ",")+"}", day, perDay, perDay).Exec(ctx)
		if err != nil {
			return err
		}
	}
	_, err := s.DB.ExecContext(ctx, "ANALYZE robot_logs")
	return err
}

// BenchmarkLogRetention measures one retention run that drops five of ten
// daily partitions of LOG_BENCH_ROWS generated lines (default 1,000,000):
// counting each partition's lines per tenant, sizing and dropping it.
func BenchmarkLogRetention(b *testing.B) {
	rows := 1_000_000
	if v := os.Getenv("LOG_BENCH_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		must(b, err)
		rows = n
	}
	s := apitest.New(b)
	c := newClient(b, s)
	f := newFleet(b, s, c, 1)
	var me struct{ CurrentRobot struct{ ID string } }
	must(b, c.do(b.Context(), f.robots[0], `{ currentRobot { id } }`, nil, &me))
	var tenant uuid.UUID
	must(b, s.DB.NewRaw("SELECT tenant_id FROM robots WHERE id = ?", me.CurrentRobot.ID).Scan(b.Context(), &tenant))
	must(b, generateLogs(b, s, tenant, me.CurrentRobot.ID, rows))
	logs := s.App.Resolver.LogStore
	ctx := auth.WithPrincipal(b.Context(), auth.SystemPrincipal("bench"))
	keep := 4 // the days 5 to 9 ago end at or before today - 4 days
	for b.Loop() {
		start := time.Now()
		run, err := logs.Cleanup(ctx, s.DB.DB, &keep, false)
		must(b, err)
		if len(run.Partitions) != 5 {
			b.Fatalf("expected 5 partitions dropped, got %v", run.Partitions)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/run")
		b.ReportMetric(float64(run.Rows), "lines")
		b.ReportMetric(float64(run.Bytes)/(1<<20), "MiB")
	}
}
