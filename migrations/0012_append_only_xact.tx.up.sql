-- Append-only rows (machine events, robot log lines) record the top-level
-- transaction that wrote them (pg_current_xact_id() is the top-level id in
-- a savepoint too, unlike xmin), so that the live path can tell the rows a
-- subscriber could have missed (committed after it subscribed) from those
-- it found by query: the hub compares xact with a pg_current_snapshot()
-- taken when the subscriber registered. The default is set after the
-- column is added, so that existing rows keep NULL (written before any
-- subscriber of this schema) and nothing is rewritten; on robot_logs both
-- statements recurse to the partitions.
ALTER TABLE machine_events ADD COLUMN xact xid8;
ALTER TABLE machine_events ALTER COLUMN xact SET DEFAULT pg_current_xact_id();
ALTER TABLE robot_logs ADD COLUMN xact xid8;
ALTER TABLE robot_logs ALTER COLUMN xact SET DEFAULT pg_current_xact_id();
