// Package graph is Fleetgraph's GraphQL layer: the generated executable
// schema, thin resolvers that adapt arguments and call one store or loader
// each, and the HTTP handler with its transports, limits and error presenter.
// Business rules live in package db, not here.
package graph

import (
	"github.com/uptrace/bun"

	"fleetgraph/db"
	"fleetgraph/dispatch"
	"fleetgraph/realtime"
)

// Resolver is the root resolver: the stores the API reads and writes.
type Resolver struct {
	DB            *bun.DB
	MachineStore  *db.Machines
	RobotStore    *db.Robots
	APIKeyStore   *db.APIKeys
	WorkflowStore *db.Workflows
	JobStore      *db.Jobs
	LogStore      *db.Logs
	Dispatcher    *dispatch.Dispatcher
	// Hub feeds subscriptions.
	Hub *realtime.Hub
	// ScheduleStore holds cron schedules (the scheduler fires them).
	ScheduleStore *db.Schedules
	// WebhookStore holds webhook endpoints and their deliveries.
	WebhookStore *db.Webhooks
}
