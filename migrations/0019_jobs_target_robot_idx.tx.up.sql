-- Jobs aimed at a robot, by robot: deleting a robot finds them (its locks,
-- the release of its jobs, the foreign key's ON DELETE SET NULL), and
-- without an index each of those read the whole jobs table while the
-- robot's row was locked. Partial: most jobs are aimed at no robot.
CREATE INDEX IF NOT EXISTS jobs_target_robot_idx ON jobs (target_robot_id) WHERE target_robot_id IS NOT NULL;
