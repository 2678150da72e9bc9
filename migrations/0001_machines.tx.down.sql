DROP TABLE IF EXISTS deployments;
DROP TABLE IF EXISTS machine_events;
DROP TABLE IF EXISTS machines;
