CREATE OR REPLACE FUNCTION fleetgraph_job_revision() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was jobs := OLD;
BEGIN
    was.lease_expires_at := NEW.lease_expires_at;
    was.updated_at := NEW.updated_at;
    was.revision := NEW.revision;
    IF NEW IS DISTINCT FROM was THEN
        NEW.revision := OLD.revision + 1;
        NEW.updated_at := now();
    ELSE
        NEW.revision := OLD.revision;
        NEW.updated_at := OLD.updated_at;
    END IF;
    RETURN NEW;
END $$;
