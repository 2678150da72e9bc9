-- Deleting a schedule or a robot detaches the finished jobs that name it
-- (their schedule_id or robot_id becomes NULL). Each such update notified
-- the change feed like any other: a schedule with 20,000 jobs of history
-- made 20,000 notifications, serialised by PostgreSQL at commit, read by
-- every replica's hub and sent to every dashboard of the tenant, which
-- fell behind and were ended as slow consumers. The deletions set
-- fleetgraph.detach in their transaction while they detach finished jobs,
-- and the job trigger stays quiet for those updates, as it does for
-- retention's deletions: history loses the id of what was deleted without
-- an event. Live jobs are detached (or released) with their events.
CREATE OR REPLACE FUNCTION fleetgraph_notify_job() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row jobs;
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF current_setting('fleetgraph.retention', true) = 'on' THEN
            RETURN NULL;
        END IF;
        row := OLD;
    ELSE
        IF TG_OP = 'UPDATE' AND current_setting('fleetgraph.detach', true) = 'on' THEN
            RETURN NULL;
        END IF;
        row := NEW;
    END IF;
    PERFORM pg_notify('fleetgraph_change', json_build_object(
        'k', 'job', 'op', TG_OP, 't', row.tenant_id, 'id', row.id, 'v', row.revision,
        's', row.status, 'r', row.robot_id, 'w', row.workflow_id)::text);
    RETURN NULL;
END $$;
