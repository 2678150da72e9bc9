DROP INDEX IF EXISTS jobs_finished_idx;
