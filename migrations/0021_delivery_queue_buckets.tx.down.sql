CREATE OR REPLACE FUNCTION fleetgraph_delivery_queue_key(endpoint uuid, subject uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended(endpoint::text || subject::text, 0) $$;
