// Package model holds the GraphQL-only types: Relay connections and what
// gqlgen generates from the schema. Domain types come from package db.
package model

import (
	"github.com/google/uuid"

	"fleetgraph/db"
)

// PageInfo is Relay's page information.
type PageInfo struct {
	HasNextPage     bool
	HasPreviousPage bool
	StartCursor     *string
	EndCursor       *string
}

func pageInfo(cursors []string, hasNext bool) *PageInfo {
	pi := &PageInfo{HasNextPage: hasNext}
	if n := len(cursors); n > 0 {
		pi.StartCursor, pi.EndCursor = &cursors[0], &cursors[n-1]
	}
	return pi
}

// MachineEdge is one machine in a page.
type MachineEdge struct {
	Cursor string
	Node   *db.Machine
}

// MachineConnection is a page of machines. Filter is kept to compute
// totalCount only when a client asks for it.
type MachineConnection struct {
	Edges    []*MachineEdge
	PageInfo *PageInfo
	Filter   db.MachineFilter
}

// NewMachineConnection wraps a page of machines.
func NewMachineConnection(p db.Page[db.Machine], f db.MachineFilter) *MachineConnection {
	edges, pi := edgesOf(p, func(c string, n *db.Machine) *MachineEdge { return &MachineEdge{c, n} })
	return &MachineConnection{Edges: edges, PageInfo: pi, Filter: f}
}

// MachineEventEdge is one event in a page.
type MachineEventEdge struct {
	Cursor string
	Node   *db.MachineEvent
}

// MachineEventConnection is a page of one machine's events. MachineID and
// Types are kept to compute totalCount only when a client asks for it.
type MachineEventConnection struct {
	Edges     []*MachineEventEdge
	PageInfo  *PageInfo
	MachineID uuid.UUID
	Types     string
}

// NewMachineEventConnection wraps a page of a machine's events.
func NewMachineEventConnection(p db.Page[db.MachineEvent], machineID uuid.UUID, types string) *MachineEventConnection {
	edges, pi := edgesOf(p, func(c string, n *db.MachineEvent) *MachineEventEdge { return &MachineEventEdge{c, n} })
	return &MachineEventConnection{Edges: edges, PageInfo: pi, MachineID: machineID, Types: types}
}

// RobotEdge is one robot in a page.
type RobotEdge struct {
	Cursor string
	Node   *db.Robot
}

// RobotConnection is a page of robots; Filter computes totalCount on demand.
type RobotConnection struct {
	Edges    []*RobotEdge
	PageInfo *PageInfo
	Filter   db.RobotFilter
}

// NewRobotConnection wraps a page of robots.
func NewRobotConnection(p db.Page[db.Robot], f db.RobotFilter) *RobotConnection {
	edges, pi := edgesOf(p, func(c string, n *db.Robot) *RobotEdge { return &RobotEdge{c, n} })
	return &RobotConnection{Edges: edges, PageInfo: pi, Filter: f}
}

// WorkflowEdge is one workflow in a page.
type WorkflowEdge struct {
	Cursor string
	Node   *db.Workflow
}

// WorkflowConnection is a page of workflows; NameContains computes totalCount on demand.
type WorkflowConnection struct {
	Edges        []*WorkflowEdge
	PageInfo     *PageInfo
	NameContains *string
}

// NewWorkflowConnection wraps a page of workflows.
func NewWorkflowConnection(p db.Page[db.Workflow], nameContains *string) *WorkflowConnection {
	edges, pi := edgesOf(p, func(c string, n *db.Workflow) *WorkflowEdge { return &WorkflowEdge{c, n} })
	return &WorkflowConnection{Edges: edges, PageInfo: pi, NameContains: nameContains}
}

// JobEdge is one job in a page.
type JobEdge struct {
	Cursor string
	Node   *db.Job
}

// JobConnection is a page of jobs; Filter computes totalCount on demand.
type JobConnection struct {
	Edges    []*JobEdge
	PageInfo *PageInfo
	Filter   db.JobFilter
}

// NewJobConnection wraps a page of jobs.
func NewJobConnection(p db.Page[db.Job], f db.JobFilter) *JobConnection {
	edges, pi := edgesOf(p, func(c string, n *db.Job) *JobEdge { return &JobEdge{c, n} })
	return &JobConnection{Edges: edges, PageInfo: pi, Filter: f}
}

// cursored is a row with a position in its list.
type cursored interface{ Cursor() string }

// WebhookDeliveryEdge is one delivery in a page.
type WebhookDeliveryEdge struct {
	Cursor string
	Node   *db.WebhookDelivery
}

// WebhookDeliveryConnection is a page of an endpoint's deliveries.
type WebhookDeliveryConnection struct {
	Edges    []*WebhookDeliveryEdge
	PageInfo *PageInfo
}

// NewWebhookDeliveryConnection wraps a page of deliveries.
func NewWebhookDeliveryConnection(p db.Page[db.WebhookDelivery]) *WebhookDeliveryConnection {
	edges, pi := edgesOf(p, func(c string, n *db.WebhookDelivery) *WebhookDeliveryEdge { return &WebhookDeliveryEdge{c, n} })
	return &WebhookDeliveryConnection{Edges: edges, PageInfo: pi}
}

// edgesOf builds the edges and page info of a page.
func edgesOf[T any, PT interface {
	*T
	cursored
}, E any](p db.Page[T], edge func(cursor string, node *T) E) ([]E, *PageInfo) {
	edges := make([]E, len(p.Items))
	cursors := make([]string, len(p.Items))
	for i, n := range p.Items {
		cursors[i] = PT(n).Cursor()
		edges[i] = edge(cursors[i], n)
	}
	return edges, pageInfo(cursors, p.HasNext)
}

// RobotLogEdge is one log line in a page.
type RobotLogEdge struct {
	Cursor string
	Node   *db.RobotLog
}

// RobotLogConnection is a page of log lines (no totalCount: counting
// millions of lines per page would cost more than the page).
type RobotLogConnection struct {
	Edges    []*RobotLogEdge
	PageInfo *PageInfo
}

// NewRobotLogConnection wraps a page of log lines.
func NewRobotLogConnection(p db.Page[db.RobotLog]) *RobotLogConnection {
	edges, pi := edgesOf(p, func(c string, n *db.RobotLog) *RobotLogEdge { return &RobotLogEdge{c, n} })
	return &RobotLogConnection{Edges: edges, PageInfo: pi}
}

// LogCleanupEdge is one retention run in a page.
type LogCleanupEdge struct {
	Cursor string
	Node   *db.LogCleanup
}

// LogCleanupConnection is a page of retention runs.
type LogCleanupConnection struct {
	Edges    []*LogCleanupEdge
	PageInfo *PageInfo
}

// NewLogCleanupConnection wraps a page of retention runs.
func NewLogCleanupConnection(p db.Page[db.LogCleanup]) *LogCleanupConnection {
	edges, pi := edgesOf(p, func(c string, n *db.LogCleanup) *LogCleanupEdge { return &LogCleanupEdge{c, n} })
	return &LogCleanupConnection{Edges: edges, PageInfo: pi}
}
