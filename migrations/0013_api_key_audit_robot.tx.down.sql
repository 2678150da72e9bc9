DROP INDEX IF EXISTS api_key_audit_robot_idx;
