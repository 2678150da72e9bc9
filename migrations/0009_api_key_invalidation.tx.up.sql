-- Every replica caches verified API keys for a few seconds (db.KeyCache).
-- Whatever makes a cached key wrong sends a NOTIFY on fleetgraph_key_revoked
-- in the same transaction, delivered on commit to every replica's listener,
-- which evicts the entry: a key revoked, deleted (directly, or with its
-- robot: ON DELETE CASCADE fires the row trigger), its expiry, tenant,
-- robot or hash changed, or its robot moved to another tenant or renumbered.
-- Payload: "key:<api key id>" or "robot:<robot id>".
CREATE FUNCTION fleetgraph_key_invalidate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'api_keys' THEN
        IF TG_OP = 'DELETE'
           OR NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
           OR NEW.expires_at IS DISTINCT FROM OLD.expires_at
           OR NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
           OR NEW.robot_id IS DISTINCT FROM OLD.robot_id
           OR NEW.key_hash IS DISTINCT FROM OLD.key_hash
           OR NEW.id IS DISTINCT FROM OLD.id THEN
            PERFORM pg_notify('fleetgraph_key_revoked', 'key:' || OLD.id::text);
        END IF;
    ELSIF TG_OP = 'DELETE'
          OR NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
          OR NEW.id IS DISTINCT FROM OLD.id THEN
        PERFORM pg_notify('fleetgraph_key_revoked', 'robot:' || OLD.id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER api_keys_invalidate AFTER UPDATE OF revoked_at, expires_at, tenant_id, robot_id, key_hash, id OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION fleetgraph_key_invalidate();
CREATE TRIGGER robots_key_invalidate AFTER UPDATE OF tenant_id, id OR DELETE ON robots
    FOR EACH ROW EXECUTE FUNCTION fleetgraph_key_invalidate();
