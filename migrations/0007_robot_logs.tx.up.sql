-- Robot logs at fleet scale: one table for every robot's lines, job lines
-- included, partitioned by day (UTC) on the line's time, so that retention
-- drops whole partitions instead of deleting rows. There is no default
-- partition: the maintenance leader keeps today plus LOG_PARTITIONS_AHEAD
-- days ready, and ingest creates a missing day's partition on demand
-- (fleetgraph_ensure_log_partition), so a row never lands in a catch-all.
--
-- level is a severity number, so "at least WARNING" is a range:
-- 10 DEBUG, 20 INFO, 30 WARNING, 40 ERROR, 50 CRITICAL.
-- ids come from one sequence shared by every partition (identity columns on
-- partitioned tables need PostgreSQL 17); (at, id) orders lines exactly.
-- No foreign keys: a per-row check would slow ingest, and lines of a deleted
-- robot or job simply age out with their partition.

CREATE SEQUENCE robot_logs_id_seq AS bigint;

CREATE TABLE robot_logs (
    id        bigint NOT NULL DEFAULT nextval('robot_logs_id_seq'),
    tenant_id uuid NOT NULL,
    robot_id  uuid NOT NULL,
    job_id    uuid,
    level     smallint NOT NULL CHECK (level IN (10, 20, 30, 40, 50)),
    message   text NOT NULL CHECK (char_length(message) <= 8000),
    fields    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(fields) = 'object'),
    at        timestamptz NOT NULL
) PARTITION BY RANGE (at);
ALTER SEQUENCE robot_logs_id_seq OWNED BY robot_logs.id;

-- Created on every partition: a robot's lines newest first (robotLogs), the
-- same for WARNING and above (the common "what went wrong" query), a
-- tenant's lines newest first (robotLogs without robotId), a job's lines.
CREATE INDEX robot_logs_robot_idx ON robot_logs (tenant_id, robot_id, at DESC, id DESC);
CREATE INDEX robot_logs_robot_warning_idx ON robot_logs (tenant_id, robot_id, at DESC, id DESC) WHERE level >= 30;
CREATE INDEX robot_logs_tenant_idx ON robot_logs (tenant_id, at DESC, id DESC);
CREATE INDEX robot_logs_job_idx ON robot_logs (job_id, at DESC, id DESC) WHERE job_id IS NOT NULL;

-- fleetgraph_ensure_log_partition creates the partition of one UTC day,
-- robot_logs_pYYYYMMDD, unless it exists, and says whether it created it.
-- Creators serialise on an advisory lock (locks.LogPartitions in Go:
-- 0x666c656574_07 = 112615743648775) held to the end of their transaction.
CREATE FUNCTION fleetgraph_ensure_log_partition(day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    name text := 'robot_logs_p' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(112615743648775);
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF robot_logs FOR VALUES FROM (%L) TO (%L)', name,
        day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    RETURN true;
END $$;

-- Partitions for the existing job logs and for today and three days ahead.
SELECT fleetgraph_ensure_log_partition(d)
FROM (SELECT DISTINCT (at AT TIME ZONE 'UTC')::date AS d FROM job_logs
      UNION SELECT ((now() AT TIME ZONE 'UTC')::date + n) FROM generate_series(0, 3) AS n) AS days
ORDER BY d;

-- Job logs become the lines of their job. A line without a robot (none
-- should exist: every job line was written by the robot holding the job)
-- takes its job's robot, else the nil robot id.
INSERT INTO robot_logs (id, tenant_id, robot_id, job_id, level, message, fields, at)
SELECT l.id, l.tenant_id, coalesce(l.robot_id, j.robot_id, '00000000-0000-0000-0000-000000000000'), l.job_id,
       CASE l.level WHEN 'DEBUG' THEN 10 WHEN 'INFO' THEN 20 WHEN 'WARN' THEN 30 ELSE 40 END,
       l.message, CASE WHEN jsonb_typeof(l.fields) = 'object' THEN l.fields ELSE '{}' END, l.at
FROM job_logs l LEFT JOIN jobs j ON j.id = l.job_id;
SELECT setval('robot_logs_id_seq', coalesce((SELECT max(id) FROM job_logs), 0) + 1, false);
DROP TABLE job_logs;

-- The old setup's daily summary, per tenant, robot, UTC day and level.
CREATE VIEW robot_logs_daily_summary AS
SELECT tenant_id, robot_id, (at AT TIME ZONE 'UTC')::date AS day, level,
       count(*) AS lines, min(at) AS first_at, max(at) AS last_at
FROM robot_logs
GROUP BY tenant_id, robot_id, (at AT TIME ZONE 'UTC')::date, level;

-- Heartbeat history keeps the agent version, and is pruned by the same
-- retention as the logs.
ALTER TABLE robot_heartbeats ADD COLUMN agent_version text NOT NULL DEFAULT '';
CREATE INDEX robot_heartbeats_at_idx ON robot_heartbeats (at);

-- Every retention run, by the leader or by hand, dry or not: what it
-- dropped (or would drop) in the whole installation ...
CREATE TABLE robot_log_cleanups (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor          text NOT NULL,
    -- The tenant of the service that ran it; NULL for the system (leader, CLI).
    actor_tenant   uuid,
    dry_run        boolean NOT NULL,
    retention_days integer NOT NULL,
    cutoff         timestamptz NOT NULL,
    partitions     text[] NOT NULL,
    rows           bigint NOT NULL,
    bytes          bigint NOT NULL,
    heartbeats     bigint NOT NULL,
    at             timestamptz NOT NULL DEFAULT now()
);
-- ... and per tenant, which is what a tenant's service role reads: its own
-- lines and heartbeats, and its share of the bytes (in proportion to lines).
CREATE TABLE robot_log_cleanup_tenants (
    cleanup_id bigint NOT NULL REFERENCES robot_log_cleanups (id) ON DELETE CASCADE,
    tenant_id  uuid NOT NULL,
    rows       bigint NOT NULL,
    bytes      bigint NOT NULL,
    heartbeats bigint NOT NULL,
    PRIMARY KEY (cleanup_id, tenant_id)
);
CREATE INDEX robot_log_cleanup_tenants_tenant_idx ON robot_log_cleanup_tenants (tenant_id, cleanup_id DESC);
