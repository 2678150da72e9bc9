DROP INDEX webhook_deliveries_ready_idx;
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (seq) WHERE status = 'PENDING';
DROP TRIGGER webhook_deliveries_finished ON webhook_deliveries;
DROP FUNCTION fleetgraph_delivery_finished();
DROP TRIGGER webhook_deliveries_waiting ON webhook_deliveries;
DROP FUNCTION fleetgraph_delivery_waits();
ALTER TABLE webhook_deliveries DROP COLUMN waiting;
DROP FUNCTION fleetgraph_delivery_queue_key(uuid, uuid);
