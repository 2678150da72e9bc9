DROP TRIGGER IF EXISTS robots_key_invalidate ON robots;
DROP TRIGGER IF EXISTS api_keys_invalidate ON api_keys;
DROP FUNCTION IF EXISTS fleetgraph_key_invalidate();
