-- A new day's log partition is created standalone and then attached,
-- instead of CREATE TABLE ... PARTITION OF, which takes ACCESS EXCLUSIVE on
-- robot_logs: it waited behind any reader (pg_dump, a slow robotLogs, an
-- operator's open transaction), and every log read and write queued behind
-- it, the maintenance leader's whole step with them. ATTACH PARTITION takes
-- SHARE UPDATE EXCLUSIVE on robot_logs (PostgreSQL 12 and later), which
-- reads and writes do not conflict with; the CHECK constraint matching the
-- range lets it skip the scan of the new table, and is dropped once
-- attached. lock_timeout bounds what still waits (the advisory lock while a
-- retention run holds it, DDL by hand on robot_logs): the caller gets
-- lock_not_available (55P03) and tries again later; the leader makes
-- partitions days ahead, so a busy moment costs nothing.
CREATE OR REPLACE FUNCTION fleetgraph_ensure_log_partition(day date) RETURNS boolean LANGUAGE plpgsql
SET lock_timeout = '2s' AS $$
DECLARE
    name text := 'robot_logs_p' || to_char(day, 'YYYYMMDD');
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(112615743648775);
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE robot_logs INCLUDING DEFAULTS INCLUDING CONSTRAINTS, CONSTRAINT %I CHECK (at >= %L AND at < %L))',
        name, name || '_range', lo, hi);
    EXECUTE format('ALTER TABLE robot_logs ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', name, name || '_range');
    RETURN true;
END $$;
