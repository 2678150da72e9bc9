DROP TABLE IF EXISTS webhook_deliveries;
DROP TABLE IF EXISTS webhook_events;
DROP TABLE IF EXISTS webhook_endpoints;
DROP TRIGGER IF EXISTS jobs_revision ON jobs;
DROP FUNCTION IF EXISTS fleetgraph_job_revision();
