DROP TABLE robot_log_cleanup_tenants;
DROP TABLE robot_log_cleanups;
DROP INDEX robot_heartbeats_at_idx;
ALTER TABLE robot_heartbeats DROP COLUMN agent_version;
DROP VIEW robot_logs_daily_summary;

CREATE TABLE job_logs (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id    uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    tenant_id uuid NOT NULL,
    robot_id  uuid,
    level     text NOT NULL CHECK (level IN ('DEBUG', 'INFO', 'WARN', 'ERROR')),
    message   text NOT NULL CHECK (char_length(message) <= 8000),
    fields    jsonb NOT NULL DEFAULT '{}',
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX job_logs_job_idx ON job_logs (job_id, id DESC);
INSERT INTO job_logs (id, job_id, tenant_id, robot_id, level, message, fields, at) OVERRIDING SYSTEM VALUE
SELECT l.id, l.job_id, l.tenant_id, l.robot_id,
       CASE l.level WHEN 10 THEN 'DEBUG' WHEN 20 THEN 'INFO' WHEN 30 THEN 'WARN' ELSE 'ERROR' END,
       l.message, l.fields, l.at
FROM robot_logs l JOIN jobs j ON j.id = l.job_id;
SELECT setval(pg_get_serial_sequence('job_logs', 'id'), coalesce((SELECT max(id) FROM job_logs), 0) + 1, false);

DROP TABLE robot_logs;
DROP FUNCTION fleetgraph_ensure_log_partition(date);
