package db

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/lib/pq"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"fleetgraph/fault"
)

// pgUUIDs passes ids as a text[] value; queries cast it with ?::uuid[]. It
// is a driver.Valuer, so it serves bun (which writes it into the text) and
// Params.Bind (which sends it as a parameter) alike.
func pgUUIDs(ids []uuid.UUID) any {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id.String()
	}
	return pq.StringArray(s)
}

// keyed maps rows by their id, for FindMany methods whose callers match
// results by key, never by order.
func keyed[T any](rows []*T, id func(*T) uuid.UUID) map[uuid.UUID]*T {
	out := make(map[uuid.UUID]*T, len(rows))
	for _, r := range rows {
		out[id(r)] = r
	}
	return out
}

// checkFilterText validates free text used in a filter.
func checkFilterText(field, s string) (string, error) {
	if len(s) > 100 {
		return "", fault.Invalid(field, "%s must be at most 100 bytes", field)
	}
	return s, checkText(field, s)
}

// EventPageKey selects one page of one machine's events. It holds values
// only, so equal requests compare equal and dataloaders can batch them.
type EventPageKey struct {
	MachineID uuid.UUID
	First     int    // page size, already defaulted and capped (see PageLimit)
	After     string // a cursor, or "" for the first page
	// Types, joined with "\x00", restricts the event types ("" = all).
	Types string
}

// EventTypesKey encodes an event type filter for EventPageKey.Types.
func EventTypesKey(types []string) string { return strings.Join(types, "\x00") }

func splitTypes(key string) []string {
	if key == "" {
		return nil
	}
	return strings.Split(key, "\x00")
}

// PageLimit resolves a connection's `first`: DefaultPageSize when nil, capped
// at MaxPageSize, BAD_USER_INPUT when negative.
func PageLimit(first *int) (int, error) { return pageSize(first, DefaultPageSize) }

// EventPages returns a page of events for each key, newest first, reading every
// machine of the batch in one statement per distinct (first, after, types).
// Machines the caller may not see get empty pages.
func (s *Machines) EventPages(ctx context.Context, idb bun.IDB, keys []EventPageKey) (map[EventPageKey]Page[MachineEvent], error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	groups := map[EventPageKey][]uuid.UUID{} // keyed with MachineID zeroed
	for _, k := range keys {
		g := k
		g.MachineID = uuid.Nil
		groups[g] = append(groups[g], k.MachineID)
	}
	out := make(map[EventPageKey]Page[MachineEvent], len(keys))
	for g, ids := range groups {
		var afterArg *string
		if g.After != "" {
			afterArg = &g.After
		}
		after, err := decodeSeq("event", afterArg)
		if err != nil {
			return nil, err
		}
		types := splitTypes(g.Types)
		if err := checkEventTypes(types); err != nil {
			return nil, err
		}
		inner := idb.NewSelect().Model((*MachineEvent)(nil)).Where("e.machine_id = k.id")
		if after > 0 {
			inner = inner.Where("e.id < ?", after)
		}
		if len(types) > 0 {
			inner = eachTypesNewest(idb, inner, types, g.First+1)
		} else {
			inner = inner.OrderExpr("e.id DESC").Apply(limitRows(g.First + 1))
		}
		var rows []*MachineEvent
		err = ownedBy(sc, idb.NewSelect().
			TableExpr("unnest(?::uuid[]) AS k(id)", pgUUIDs(ids)).
			Join("JOIN machines AS m ON m.id = k.id").
			Join("CROSS JOIN LATERAL (?) AS e", inner).
			ColumnExpr("e.*"), "m").
			Scan(ctx, &rows)
		if err != nil {
			return nil, fmt.Errorf("loading machine events: %w", err)
		}
		byMachine := map[uuid.UUID][]*MachineEvent{}
		for _, e := range rows {
			byMachine[e.MachineID] = append(byMachine[e.MachineID], e)
		}
		for _, id := range ids {
			k := g
			k.MachineID = id
			out[k] = trim(byMachine[id], g.First)
		}
	}
	return out, nil
}

// eachTypesNewest returns the newest n of the events machine selects
// (a machine's, aliased e) that have one of the given types: each type's
// newest n come from its own walk of machine_events_machine_type_idx, the
// only index that gives them in that order, and the newest n of those are
// kept. A single `event_type = ANY(types)` filter let the planner walk the
// machine's events newest first and skip the other types', reading every
// event of the machine when the types named are rare or old, however small
// the page; this way at most len(types)×n events are read.
func eachTypesNewest(idb bun.IDB, machine *bun.SelectQuery, types []string, n int) *bun.SelectQuery {
	once := distinct(types)
	perType := machine.Where("e.event_type = t.type").
		OrderExpr("e.event_type, e.id DESC").Apply(limitRows(n))
	return idb.NewSelect().
		TableExpr("unnest(?::text[]) AS t(type)", pgdialect.Array(once)).
		Join("CROSS JOIN LATERAL (?) AS e", perType).
		ColumnExpr("e.*").
		OrderExpr("e.id DESC").Apply(limitRows(n))
}

// distinct returns types without repeats, in their first order (an event
// type filter names at most 50).
func distinct(types []string) []string {
	var once []string
	for _, t := range types {
		if !slices.Contains(once, t) {
			once = append(once, t)
		}
	}
	return once
}

func checkEventTypes(types []string) error {
	if len(types) > 50 {
		return fault.Invalid("eventTypes", "eventTypes may name at most 50 types")
	}
	for _, t := range types {
		if err := checkEventType("eventTypes", t); err != nil {
			return err
		}
	}
	return nil
}

// EventCountKey selects the events of one machine to count.
type EventCountKey struct {
	MachineID uuid.UUID
	Types     string // as EventPageKey.Types
}

// EventCounts counts the events of each key's machine that match its type
// filter, every key in one statement, however many filters the keys have
// (a statement per filter, one after another, took 24.5 s for 50 of them
// over a million events): the events of the keys' machines are counted by
// machine and by type, the types no filter names together as one, and each
// key's count is summed from those. When every key has a filter, only
// events of the types they name are read (machine_events_machine_type_idx);
// a key without one reads all events of the keys' machines once.
// Machines the caller may not see count 0.
func (s *Machines) EventCounts(ctx context.Context, idb bun.IDB, keys []EventCountKey) (map[EventCountKey]int, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var ids []uuid.UUID
	seenID := map[uuid.UUID]bool{}
	named := map[string]bool{}
	filters := map[string][]string{} // each distinct filter's types, once each
	everyKeyFilters := true
	for _, k := range keys {
		if !seenID[k.MachineID] {
			seenID[k.MachineID] = true
			ids = append(ids, k.MachineID)
		}
		if _, ok := filters[k.Types]; ok {
			continue
		}
		ts := splitTypes(k.Types)
		if err := checkEventTypes(ts); err != nil {
			return nil, err
		}
		if len(ts) == 0 {
			everyKeyFilters = false
		}
		once := distinct(ts)
		for _, t := range once {
			named[t] = true
		}
		filters[k.Types] = once
	}
	types := make([]string, 0, len(named))
	for t := range named {
		types = append(types, t)
	}
	slices.Sort(types)
	q := ownedBy(sc, idb.NewSelect().
		TableExpr("machine_events AS e").
		Join("JOIN machines AS m ON m.id = e.machine_id").
		ColumnExpr("e.machine_id").
		// null for the types no filter names
		ColumnExpr("CASE WHEN e.event_type = ANY(?) THEN e.event_type END AS event_type", pgdialect.Array(types)).
		ColumnExpr("count(*) AS n").
		Where("e.machine_id = ANY(?::uuid[])", pgUUIDs(ids)).
		GroupExpr("1, 2"), "m")
	if everyKeyFilters {
		q = q.Where("e.event_type = ANY(?)", pgdialect.Array(types))
	}
	var rows []struct {
		MachineID uuid.UUID `bun:"machine_id"`
		EventType *string   `bun:"event_type"`
		N         int       `bun:"n"`
	}
	if err := q.Scan(ctx, &rows); err != nil {
		return nil, fmt.Errorf("counting machine events: %w", err)
	}
	type machineType struct {
		machine uuid.UUID
		typ     string
	}
	all := map[uuid.UUID]int{}
	byType := map[machineType]int{}
	for _, r := range rows {
		all[r.MachineID] += r.N
		if r.EventType != nil {
			byType[machineType{r.MachineID, *r.EventType}] = r.N
		}
	}
	out := make(map[EventCountKey]int, len(keys))
	for _, k := range keys {
		ts := filters[k.Types]
		if len(ts) == 0 {
			out[k] = all[k.MachineID]
			continue
		}
		n := 0
		for _, t := range ts {
			n += byType[machineType{k.MachineID, t}]
		}
		out[k] = n
	}
	return out, nil
}

// DeploymentListKey selects the newest deployments of one machine.
type DeploymentListKey struct {
	MachineID uuid.UUID
	First     int
}

// DeploymentLists returns each machine's newest deployments, one statement per distinct size.
func (s *Machines) DeploymentLists(ctx context.Context, idb bun.IDB, keys []DeploymentListKey) (map[DeploymentListKey][]*Deployment, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	bySize := map[int][]uuid.UUID{}
	for _, k := range keys {
		bySize[k.First] = append(bySize[k.First], k.MachineID)
	}
	out := make(map[DeploymentListKey][]*Deployment, len(keys))
	for size, ids := range bySize {
		inner := idb.NewSelect().Model((*Deployment)(nil)).Where("d.machine_id = k.id").
			OrderExpr("d.created_at DESC, d.id DESC").Apply(limitRows(size))
		var rows []*Deployment
		err := ownedBy(sc, idb.NewSelect().
			TableExpr("unnest(?::uuid[]) AS k(id)", pgUUIDs(ids)).
			Join("JOIN machines AS m ON m.id = k.id").
			Join("CROSS JOIN LATERAL (?) AS d", inner).
			ColumnExpr("d.*"), "m").
			Scan(ctx, &rows)
		if err != nil {
			return nil, fmt.Errorf("loading deployments: %w", err)
		}
		for _, d := range rows {
			k := DeploymentListKey{d.MachineID, size}
			out[k] = append(out[k], d)
		}
	}
	return out, nil
}

// ActiveDeployments returns the ACTIVE deployment of each visible machine that has one.
func (s *Machines) ActiveDeployments(ctx context.Context, idb bun.IDB, machineIDs []uuid.UUID) (map[uuid.UUID]*Deployment, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*Deployment
	err = ownedBy(sc, idb.NewSelect().Model(&rows).
		Join("JOIN machines AS m ON m.id = d.machine_id").
		Where("d.machine_id = ANY(?::uuid[])", pgUUIDs(machineIDs)).
		Where("d.status = ?", DeploymentActive), "m").
		Scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading active deployments: %w", err)
	}
	out := make(map[uuid.UUID]*Deployment, len(rows))
	for _, d := range rows {
		out[d.MachineID] = d
	}
	return out, nil
}
