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
	c := &MachineConnection{Edges: make([]*MachineEdge, len(p.Items)), Filter: f}
	cursors := make([]string, len(p.Items))
	for i, m := range p.Items {
		cursors[i] = m.Cursor()
		c.Edges[i] = &MachineEdge{Cursor: cursors[i], Node: m}
	}
	c.PageInfo = pageInfo(cursors, p.HasNext)
	return c
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
	c := &MachineEventConnection{Edges: make([]*MachineEventEdge, len(p.Items)), MachineID: machineID, Types: types}
	cursors := make([]string, len(p.Items))
	for i, e := range p.Items {
		cursors[i] = e.Cursor()
		c.Edges[i] = &MachineEventEdge{Cursor: cursors[i], Node: e}
	}
	c.PageInfo = pageInfo(cursors, p.HasNext)
	return c
}
