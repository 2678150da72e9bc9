-- The advisory lock of a subject's deliveries to an endpoint (migration
-- 0018) was one key per (endpoint, subject): a transaction that queued
-- deliveries of many subjects (the offline sweep's 1,000 robots, a lease
-- rescue, a robot's deletion, a completion batch) took one lock per
-- delivery, held to its commit, and overflowed PostgreSQL's shared lock
-- table ("out of shared memory": about 13,000 locks on a stock server).
-- The keys now fall into 256 buckets (locks.DeliveryQueues and the 255
-- after it): a transaction holds at most 256
-- such locks. Two subjects that share a bucket only wait for each other
-- as two finishes or a finish and an insert of one subject do.
CREATE OR REPLACE FUNCTION fleetgraph_delivery_queue_key(endpoint uuid, subject uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 7380385375766183936 + (hashtextextended(endpoint::text || subject::text, 0) & 255) $$;
