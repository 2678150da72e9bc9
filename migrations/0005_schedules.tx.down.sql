DROP INDEX IF EXISTS jobs_schedule_live_idx;
DROP INDEX IF EXISTS jobs_schedule_tick_key;
ALTER TABLE jobs DROP COLUMN IF EXISTS scheduled_for;
ALTER TABLE jobs DROP COLUMN IF EXISTS schedule_id;
DROP TABLE IF EXISTS schedules;
