-- Deleting a schedule or a robot detaches the finished jobs that name it
-- (their schedule_id or robot_id becomes NULL, a job aimed at a deleted
-- robot is marked target_lost). Each such update notified the change feed
-- like any other: a schedule with 20,000 jobs of history made 20,000
-- notifications, serialised by PostgreSQL at commit, read by every
-- replica's hub and sent to every dashboard of the tenant, which fell
-- behind and were ended as slow consumers. The deletions set
-- fleetgraph.detach in their transaction, and the job trigger stays quiet
-- for an update of a job that was finished and stays so, as it does for
-- retention's deletions: history loses the id of what was deleted without
-- an event. The rule is the row's, so a live job, or one that finishes
-- or is cancelled by the deletion, notifies as before, whatever the
-- statement.
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
        IF TG_OP = 'UPDATE' AND current_setting('fleetgraph.detach', true) = 'on'
            AND OLD.status = NEW.status AND NEW.status IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN
            RETURN NULL;
        END IF;
        row := NEW;
    END IF;
    PERFORM pg_notify('fleetgraph_change', json_build_object(
        'k', 'job', 'op', TG_OP, 't', row.tenant_id, 'id', row.id, 'v', row.revision,
        's', row.status, 'r', row.robot_id, 'w', row.workflow_id)::text);
    RETURN NULL;
END $$;
