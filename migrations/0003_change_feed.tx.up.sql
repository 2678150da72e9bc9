-- The change feed behind subscriptions: every change to a machine, machine
-- event, robot or job NOTIFYs 'fleetgraph_change' with the ids and routing
-- fields a subscriber's filter needs, never the row (NOTIFY bypasses every
-- permission, and payloads are capped at 8000 bytes). Subscribers re-read
-- rows through the scoped stores. Notifications are delivered on commit.
--
-- Payload keys: k kind, op INSERT/UPDATE/DELETE, t tenant, id, v version,
-- o owner (machines), m machine (events), s status and ps previous status
-- (robots, jobs), r robot and w workflow (jobs).

CREATE FUNCTION fleetgraph_notify_machine() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row machines;
BEGIN
    IF TG_OP = 'DELETE' THEN row := OLD; ELSE row := NEW; END IF;
    PERFORM pg_notify('fleetgraph_change', json_build_object(
        'k', 'machine', 'op', TG_OP, 't', row.tenant_id, 'o', row.owner_id, 'id', row.id, 'v', row.version)::text);
    RETURN NULL;
END $$;

CREATE TRIGGER machines_notify AFTER INSERT OR DELETE ON machines
    FOR EACH ROW EXECUTE FUNCTION fleetgraph_notify_machine();
CREATE TRIGGER machines_notify_update AFTER UPDATE ON machines
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version) EXECUTE FUNCTION fleetgraph_notify_machine();

CREATE FUNCTION fleetgraph_notify_machine_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetgraph_change', json_build_object(
        'k', 'machine_event', 'op', TG_OP, 't', NEW.tenant_id, 'id', NEW.id::text, 'm', NEW.machine_id,
        'o', (SELECT owner_id FROM machines WHERE id = NEW.machine_id))::text);
    RETURN NULL;
END $$;

CREATE TRIGGER machine_events_notify AFTER INSERT ON machine_events
    FOR EACH ROW EXECUTE FUNCTION fleetgraph_notify_machine_event();

-- Robots notify when their revision changes (a status change, an edit), not
-- on every heartbeat.
CREATE FUNCTION fleetgraph_notify_robot() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row robots;
    previous text;
BEGIN
    IF TG_OP = 'DELETE' THEN row := OLD; ELSE row := NEW; END IF;
    IF TG_OP = 'UPDATE' THEN previous := OLD.status; END IF;
    PERFORM pg_notify('fleetgraph_change', json_build_object(
        'k', 'robot', 'op', TG_OP, 't', row.tenant_id, 'id', row.id, 'v', row.revision,
        's', row.status, 'ps', previous)::text);
    RETURN NULL;
END $$;

CREATE TRIGGER robots_notify AFTER INSERT OR DELETE ON robots
    FOR EACH ROW EXECUTE FUNCTION fleetgraph_notify_robot();
CREATE TRIGGER robots_notify_update AFTER UPDATE ON robots
    FOR EACH ROW WHEN (OLD.revision IS DISTINCT FROM NEW.revision) EXECUTE FUNCTION fleetgraph_notify_robot();

-- Jobs notify on every state or progress change (each bumps the revision);
-- lease extensions by heartbeats do not.
CREATE FUNCTION fleetgraph_notify_job() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row jobs;
BEGIN
    IF TG_OP = 'DELETE' THEN row := OLD; ELSE row := NEW; END IF;
    PERFORM pg_notify('fleetgraph_change', json_build_object(
        'k', 'job', 'op', TG_OP, 't', row.tenant_id, 'id', row.id, 'v', row.revision,
        's', row.status, 'r', row.robot_id, 'w', row.workflow_id)::text);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify AFTER INSERT OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION fleetgraph_notify_job();
CREATE TRIGGER jobs_notify_update AFTER UPDATE ON jobs
    FOR EACH ROW WHEN (OLD.revision IS DISTINCT FROM NEW.revision) EXECUTE FUNCTION fleetgraph_notify_job();
