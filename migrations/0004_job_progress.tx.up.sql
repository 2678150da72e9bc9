-- When the robot holding a RUNNING job last showed progress on it (startJob
-- or reportJobProgress). Heartbeats extend a running job's lease only up to
-- progress_at + JOB_PROGRESS_TIMEOUT_SECONDS, so a robot that stays alive but
-- makes no progress loses the job.
ALTER TABLE jobs ADD COLUMN progress_at timestamptz;
UPDATE jobs SET progress_at = coalesce(started_at, claimed_at) WHERE status = 'RUNNING';
