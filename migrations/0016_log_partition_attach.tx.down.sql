CREATE OR REPLACE FUNCTION fleetgraph_ensure_log_partition(day date) RETURNS boolean LANGUAGE plpgsql AS $$
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
