package main

import "fmt"

const (
	benchDB = "peerbench"
	// tenantID is the one tenant of the data set.
	tenantID      = "a0000000-0000-4000-8000-000000000001"
	robotCount    = 1000
	workflowCount = 5
	jobCount      = 100000
	// liveJobs are the CLAIMED or RUNNING jobs: two per robot.
	liveJobs = 2 * robotCount
)

// idExpr is SQL for the deterministic UUID number n of a kind (1 robots,
// 2 workflows, 3 jobs), so that pgbench and the load generator can name a
// random job from its number alone.
func idExpr(kind int, n string) string {
	return fmt.Sprintf("('%08x-0000-4000-8000-' || lpad(to_hex(%s), 12, '0'))::uuid", kind, n)
}

// jobID is the UUID of job number n, as idExpr(3, n) computes it.
func jobID(n int) string { return fmt.Sprintf("00000003-0000-4000-8000-%012x", n) }

// seedSQL seeds the data set with set-based INSERTs. The change-feed
// triggers (and foreign-key checks) are off while it runs
// (session_replication_role = replica), so seeding sends no notifications.
// It also creates robots_current_jobs, the computed column PostGraphile
// needs to serve Robot.currentJobs; it is harness setup, not a migration.
func seedSQL() []string {
	t := "'" + tenantID + "'::uuid"
	day0 := "'2026-01-01T00:00:00Z'::timestamptz"
	return []string{
		"SET session_replication_role = replica",
		fmt.Sprintf(`INSERT INTO workflows (id, tenant_id, name, description, created_at, updated_at)
SELECT %s, %s, 'workflow-' || i, 'benchmark workflow ' || i, %s + i * interval '1 second', %s
FROM generate_series(1, %d) i`, idExpr(2, "i"), t, day0, day0, workflowCount),
		`INSERT INTO workflow_versions (workflow_id, version, tenant_id, definition, created_by)
SELECT id, 1, tenant_id, '{"nodes": [{"id": "start", "type": "task"}]}', 'bench' FROM workflows`,
		fmt.Sprintf(`INSERT INTO robots (id, tenant_id, name, hostname, status, capabilities, max_concurrent_jobs,
  environment, agent_version, metadata, last_heartbeat_at, created_at, updated_at)
SELECT %s, %s, 'robot-' || lpad(i::text, 4, '0'), 'host-' || i || '.example.internal',
  'OFFLINE', ARRAY['excel', 'browser', 'site-' || (i %% 7)], 2, 'production', '1.4.2',
  jsonb_build_object('rack', i %% 20, 'os', 'windows'), NULL,
  %s + i * interval '1 minute', %s + i * interval '1 minute'
FROM generate_series(1, %d) i`, idExpr(1, "i"), t, day0, day0, robotCount),
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
			idExpr(3, "i"), t, idExpr(2, "(i % 5) + 1"), idExpr(1, "((i - 1) % 1000) + 1"),
			day0, day0, day0, day0, day0, day0, jobCount, robotCount, liveJobs),
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
