-- A pending delivery is waiting while an earlier delivery of its subject to
-- its endpoint is pending: it cannot go out before that one finishes. The
-- claim reads only the deliveries that are not waiting (its index below),
-- so a subject's blocked backlog (an endpoint that never answers, a robot
-- flapping its status) costs a claim nothing, however long it grows.
--
-- The database keeps the flag, whatever statement inserts or finishes a
-- delivery. Both take a transaction-scoped advisory lock of the (endpoint,
-- subject): an insert shared, a finish exclusive. An insert while one
-- finishes waits for it (and then, reading afresh, sees it finished); a
-- finish while one inserts waits for the insert's commit, so its promotion
-- of the next delivery sees the new one. No delivery is left waiting
-- behind nothing. Advisory locks, not row locks: a transaction queueing
-- deliveries of several subjects would lock their heads in its own order,
-- and deleteWebhookEndpoint locks an endpoint's deliveries in seq order,
-- so the two deadlocked; nothing else takes these locks.
ALTER TABLE webhook_deliveries ADD COLUMN waiting boolean NOT NULL DEFAULT false;

UPDATE webhook_deliveries c SET waiting = true
WHERE c.status = 'PENDING' AND EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = c.endpoint_id
    AND p.subject_id = c.subject_id AND p.status = 'PENDING' AND p.seq < c.seq);

-- The advisory lock key of a subject's deliveries to an endpoint.
CREATE FUNCTION fleetgraph_delivery_queue_key(endpoint uuid, subject uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended(endpoint::text || subject::text, 0) $$;

CREATE FUNCTION fleetgraph_delivery_waits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(fleetgraph_delivery_queue_key(NEW.endpoint_id, NEW.subject_id));
    -- A statement of its own: a fresh snapshot, after the lock.
    PERFORM 1 FROM webhook_deliveries p
    WHERE p.endpoint_id = NEW.endpoint_id AND p.subject_id = NEW.subject_id AND p.status = 'PENDING'
    LIMIT 1;
    NEW.waiting := FOUND AND NEW.status = 'PENDING';
    RETURN NEW;
END $$;

CREATE TRIGGER webhook_deliveries_waiting BEFORE INSERT ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION fleetgraph_delivery_waits();

-- A delivery that finishes lets the next pending one of its subject go.
CREATE FUNCTION fleetgraph_delivery_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(fleetgraph_delivery_queue_key(NEW.endpoint_id, NEW.subject_id));
    UPDATE webhook_deliveries SET waiting = false
    WHERE id = (SELECT n.id FROM webhook_deliveries n
                WHERE n.endpoint_id = NEW.endpoint_id AND n.subject_id = NEW.subject_id AND n.status = 'PENDING'
                ORDER BY n.seq LIMIT 1)
      AND waiting;
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_deliveries_finished AFTER UPDATE OF status ON webhook_deliveries
    FOR EACH ROW WHEN (OLD.status = 'PENDING' AND NEW.status <> 'PENDING')
    EXECUTE FUNCTION fleetgraph_delivery_finished();

DROP INDEX webhook_deliveries_pending_idx;
CREATE INDEX webhook_deliveries_ready_idx ON webhook_deliveries (seq) WHERE status = 'PENDING' AND NOT waiting;
