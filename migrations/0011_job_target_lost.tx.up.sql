-- A job aimed at a robot (target_robot_id) loses the id when the robot is
-- deleted (ON DELETE SET NULL). target_lost remembers that it was aimed at
-- one, so that retrying it cannot let any robot run it. Adding a column
-- with a constant default rewrites nothing.
ALTER TABLE jobs ADD COLUMN target_lost boolean NOT NULL DEFAULT false;
