CREATE OR REPLACE FUNCTION fleetgraph_job_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (to_jsonb(NEW) - '{lease_expires_at,updated_at,revision}'::text[])
       IS DISTINCT FROM (to_jsonb(OLD) - '{lease_expires_at,updated_at,revision}'::text[]) THEN
        NEW.revision := OLD.revision + 1;
        NEW.updated_at := now();
    ELSE
        NEW.revision := OLD.revision;
        NEW.updated_at := OLD.updated_at;
    END IF;
    RETURN NEW;
END $$;
