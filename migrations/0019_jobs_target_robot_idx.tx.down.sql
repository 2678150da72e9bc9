DROP INDEX IF EXISTS jobs_target_robot_idx;
