package model

import "fleetgraph/db"

// ScheduleEdge is one schedule in a page.
type ScheduleEdge struct {
	Cursor string
	Node   *db.Schedule
}

// ScheduleConnection is a page of schedules; Filter computes totalCount on demand.
type ScheduleConnection struct {
	Edges    []*ScheduleEdge
	PageInfo *PageInfo
	Filter   db.ScheduleFilter
}

// NewScheduleConnection wraps a page of schedules.
func NewScheduleConnection(p db.Page[db.Schedule], f db.ScheduleFilter) *ScheduleConnection {
	edges, pi := edgesOf(p, func(c string, n *db.Schedule) *ScheduleEdge { return &ScheduleEdge{c, n} })
	return &ScheduleConnection{Edges: edges, PageInfo: pi, Filter: f}
}
