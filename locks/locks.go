// Package locks is the one registry of the PostgreSQL advisory-lock keys
// Fleetgraph takes. Every key is declared here, so that no two purposes can
// share one by accident; the values never change, since replicas of
// different releases compete for the same locks during a rolling upgrade.
package locks

// Key is an advisory-lock key (the single bigint form of pg_advisory_lock).
type Key int64

const (
	// Migrations serialises migrators across processes ("fleet").
	Migrations Key = 0x666c656574
	// Maintenance is held by the maintenance leader: the one process per
	// database that runs the server's own work (package maintenance).
	Maintenance Key = 0x666c656574_02
	// LogPartitions serialises the creation and dropping of robot_logs
	// partitions (transaction-scoped). Migration 0007's
	// fleetgraph_ensure_log_partition takes it by value (112615743648775).
	LogPartitions Key = 0x666c656574_07
	// DeliveryQueues is the first of 256 transaction-scoped keys (this and
	// the 255 after it) of the webhook deliveries' queues per endpoint and
	// subject (migration 0021's fleetgraph_delivery_queue_key, by value).
	DeliveryQueues Key = 0x666c656574_080000
)

// Keys of the two-integer form, pg_advisory_xact_lock(class, id), a key
// space apart from the bigint one above: class says what is locked, id
// which one (e.g. hashtext of a tenant's id).
const (
	// WebhookEndpoints, with a tenant, serialises creations of the
	// tenant's webhook endpoints so that its cap holds.
	WebhookEndpoints int32 = 0x77686b01
	// Schedules, with a tenant, serialises creations of the tenant's
	// schedules so that its cap (db.MaxSchedules) holds.
	Schedules int32 = 0x73636801
)
