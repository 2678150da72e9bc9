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
