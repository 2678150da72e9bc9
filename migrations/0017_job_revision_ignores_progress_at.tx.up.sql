-- A job's revision (and with it its change-feed NOTIFY, its dashboards'
-- updates and updated_at) no longer moves for progress_at alone:
-- reportJobProgress sets it on every call (it restarts the progress
-- timeout), so a robot reporting the same progress in a loop made a new
-- revision and a notification to every jobUpdated subscriber per call.
-- progress_at is not part of the API; a report that changes progress,
-- currentNode or anything else still bumps the revision.
CREATE OR REPLACE FUNCTION fleetgraph_job_revision() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was jobs := OLD;
BEGIN
    was.lease_expires_at := NEW.lease_expires_at;
    was.progress_at := NEW.progress_at;
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
