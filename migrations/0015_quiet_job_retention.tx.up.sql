-- Job retention deletes finished jobs in batches of 5,000, up to 200,000
-- an hour. Each deletion notified the change feed like any other: every
-- replica's hub read them all, and a dashboard subscribed to a tenant's
-- jobs was sent a DELETED for each job that had finished a month before,
-- through the queue of notifications PostgreSQL serialises at commit. A
-- retention batch sets fleetgraph.retention in its transaction, and the
-- job trigger stays quiet for the deletions it makes: a job past
-- retention leaves the API's lists without an event, as a dropped day of
-- log lines does. Any other deletion notifies as before.
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
        row := NEW;
    END IF;
    PERFORM pg_notify('fleetgraph_change', json_build_object(
        'k', 'job', 'op', TG_OP, 't', row.tenant_id, 'id', row.id, 'v', row.revision,
        's', row.status, 'r', row.robot_id, 'w', row.workflow_id)::text);
    RETURN NULL;
END $$;
