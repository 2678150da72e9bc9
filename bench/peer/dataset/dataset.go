// Package dataset is the peer benchmark's data set: one tenant with 1,000
// robots, 5 workflows and 100,000 jobs, seeded with set-based SQL, and the
// benchmark queries in Fleetgraph's spelling. bench/peer seeds it into its
// own cluster; the in-process benchmarks in bench seed it into a test
// database, so a profile of the request path sees the same data.
package dataset

import "fmt"

const (
	// DBName is the database bench/peer seeds.
	DBName = "peerbench"
	// TenantID is the one tenant of the data set.
	TenantID = "a0000000-0000-4000-8000-000000000001"
	// RobotCount, WorkflowCount and JobCount size the data set.
	RobotCount    = 1000
	WorkflowCount = 5
	JobCount      = 100000
	// LiveJobs are the CLAIMED or RUNNING jobs: two per robot.
	LiveJobs = 2 * RobotCount
)

// IDExpr is SQL for the deterministic UUID number n of a kind (1 robots,
// 2 workflows, 3 jobs), so that pgbench and the load generator can name a
// random job from its number alone.
func IDExpr(kind int, n string) string {
	return fmt.Sprintf("('%08x-0000-4000-8000-' || lpad(to_hex(%s), 12, '0'))::uuid", kind, n)
}

// JobID is the UUID of job number n, as IDExpr(3, n) computes it.
func JobID(n int) string { return fmt.Sprintf("00000003-0000-4000-8000-%012x", n) }

// SeedSQL seeds the data set with set-based INSERTs. The change-feed
// triggers (and foreign-key checks) are off while it runs
// (session_replication_role = replica), so seeding sends no notifications.
// It also creates robots_current_jobs, the computed column PostGraphile
// needs to serve Robot.currentJobs; it is harness setup, not a migration.
func SeedSQL() []string {
	t := "'" + TenantID + "'::uuid"
	day0 := "'2026-01-01T00:00:00Z'::timestamptz"
	return []string{
		"SET session_replication_role = replica",
		fmt.Sprintf(`INSERT INTO workflows (id, tenant_id, name, description, created_at, updated_at)
SELECT %s, %s, 'workflow-' || i, 'benchmark workflow ' || i, %s + i * interval '1 second', %s
FROM generate_series(1, %d) i`, IDExpr(2, "i"), t, day0, day0, WorkflowCount),
		`INSERT INTO workflow_versions (workflow_id, version, tenant_id, definition, created_by)
SELECT id, 1, tenant_id, '{"nodes": [{"id": "start", "type": "task"}]}', 'bench' FROM workflows`,
		fmt.Sprintf(`INSERT INTO robots (id, tenant_id, name, hostname, status, capabilities, max_concurrent_jobs,
  environment, agent_version, metadata, last_heartbeat_at, created_at, updated_at)
SELECT %s, %s, 'robot-' || lpad(i::text, 4, '0'), 'host-' || i || '.example.internal',
  'OFFLINE', ARRAY['excel', 'browser', 'site-' || (i %% 7)], 2, 'production', '1.4.2',
  jsonb_build_object('rack', i %% 20, 'os', 'windows'), NULL,
  %s + i * interval '1 minute', %s + i * interval '1 minute'
FROM generate_series(1, %d) i`, IDExpr(1, "i"), t, day0, day0, RobotCount),
		// Jobs 1-1000 are RUNNING on robot i, 1001-2000 CLAIMED by robot
		// i-1000; the rest are COMPLETED, FAILED or QUEUED.
		fmt.Sprintf(`INSERT INTO jobs (id, tenant_id, workflow_id, workflow_version, status, priority, input, result, error,
  progress, robot_id, attempt, lease_token, lease_expires_at, created_by, created_at, claimed_at, started_at,
  progress_at, finished_at, updated_at)
SELECT %s, %s, %s, 1, s.status, (i %% 5) * 10, jsonb_build_object('n', i, 'customer', 'c' || (i %% 97)),
  CASE WHEN s.status = 'COMPLETED' THEN '{"ok": true}'::jsonb END,
  CASE WHEN s.status = 'FAILED' THEN 'the robot reported a failure' END,
  CASE WHEN s.status IN ('COMPLETED', 'FAILED') THEN 100 WHEN s.status = 'RUNNING' THEN 40 ELSE 0 END,
  CASE WHEN s.status <> 'QUEUED' THEN %s END,
  CASE WHEN s.status <> 'QUEUED' THEN 1 ELSE 0 END,
  CASE WHEN s.status IN ('CLAIMED', 'RUNNING') THEN gen_random_uuid() END,
  CASE WHEN s.status IN ('CLAIMED', 'RUNNING') THEN now() + interval '1 day' END,
  'user:bench', %s + i * interval '100 milliseconds',
  CASE WHEN s.status <> 'QUEUED' THEN %s + i * interval '100 milliseconds' + interval '1 second' END,
  CASE WHEN s.status IN ('RUNNING', 'COMPLETED', 'FAILED') THEN %s + i * interval '100 milliseconds' + interval '2 seconds' END,
  CASE WHEN s.status = 'RUNNING' THEN %s + i * interval '100 milliseconds' + interval '2 seconds' END,
  CASE WHEN s.status IN ('COMPLETED', 'FAILED') THEN %s + i * interval '100 milliseconds' + interval '9 seconds' END,
  %s + i * interval '100 milliseconds'
FROM generate_series(1, %d) i,
LATERAL (SELECT CASE WHEN i <= %d THEN 'RUNNING' WHEN i <= %d THEN 'CLAIMED'
  WHEN i %% 10 = 0 THEN 'FAILED' WHEN i %% 10 = 1 THEN 'QUEUED' ELSE 'COMPLETED' END AS status) s`,
			IDExpr(3, "i"), t, IDExpr(2, "(i % 5) + 1"), IDExpr(1, "((i - 1) % 1000) + 1"),
			day0, day0, day0, day0, day0, day0, JobCount, RobotCount, LiveJobs),
		"RESET session_replication_role",
		`CREATE FUNCTION robots_current_jobs(r robots) RETURNS SETOF jobs LANGUAGE sql STABLE AS $$
  SELECT j.* FROM jobs j
  WHERE j.robot_id = r.id AND j.tenant_id = r.tenant_id AND j.status IN ('CLAIMED', 'RUNNING')
  ORDER BY j.claimed_at
$$`,
		`COMMENT ON FUNCTION robots_current_jobs(robots) IS E'@behavior -connection +list\nJobs the robot holds now (created by bench/peer for PostGraphile, not by the migrations).'`,
		"VACUUM ANALYZE",
	}
}

// The benchmark queries in Fleetgraph's spelling: List reads 50 robots with
// their current jobs and each job's workflow; Point reads one job (variable
// id, see JobID) with its robot's name.
const (
	List = `query List { robots(first: 50) { edges { node {
  id name hostname status capabilities maxConcurrentJobs createdAt
  currentJobs { id status priority progress attempt claimedAt workflow { name } } } } } }`
	Point = `query Point($id: ID!) { job(id: $id) { id status priority progress attempt input createdAt robot { name } } }`
)
