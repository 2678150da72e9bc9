package realtime

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
)

// StoreSource reads rows for the hub through the scoped stores, as a
// service principal of the change's tenant: one read per batch serves every
// subscriber, whose own visibility the hub checks in Go on each row it
// sends (db.CanSeeRow).
type StoreSource struct {
	DB       bun.IDB
	Machines *db.Machines
	Robots   *db.Robots
	Jobs     *db.Jobs
	Logs     *db.Logs
}

var _ Source = (*StoreSource)(nil)

// tenantContext acts as the tenant's service role: it sees the whole tenant, nothing else.
func tenantContext(ctx context.Context, tenant uuid.UUID) context.Context {
	return auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
}

func uuids(keys []string) []uuid.UUID {
	ids := make([]uuid.UUID, 0, len(keys))
	for _, k := range keys {
		if id, err := uuid.Parse(k); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// Load implements Source.
func (s *StoreSource) Load(ctx context.Context, kind string, tenant uuid.UUID, keys []string) (map[string]Versioned, error) {
	ctx = tenantContext(ctx, tenant)
	out := map[string]Versioned{}
	switch kind {
	case KindMachine:
		rows, err := s.Machines.FindMany(ctx, s.DB, uuids(keys))
		if err != nil {
			return nil, err
		}
		for id, m := range rows {
			out[id.String()] = Versioned{Key: id.String(), Version: m.Version, Value: m}
		}
	case KindMachineEvent:
		ids := make([]int64, 0, len(keys))
		for _, k := range keys {
			if n, err := strconv.ParseInt(k, 10, 64); err == nil {
				ids = append(ids, n)
			}
		}
		rows, err := s.Machines.EventsByID(ctx, s.DB, ids)
		if err != nil {
			return nil, err
		}
		for _, e := range rows {
			k := strconv.FormatInt(e.ID, 10)
			out[k] = Versioned{Key: k, Version: e.ID, Value: e}
		}
	case KindRobot:
		rows, err := s.Robots.FindMany(ctx, s.DB, uuids(keys))
		if err != nil {
			return nil, err
		}
		for id, r := range rows {
			out[id.String()] = Versioned{Key: id.String(), Version: r.Revision, Value: r}
		}
	case KindJob:
		rows, err := s.Jobs.FindMany(ctx, s.DB, uuids(keys))
		if err != nil {
			return nil, err
		}
		for id, j := range rows {
			out[id.String()] = Versioned{Key: id.String(), Version: j.Revision, Value: j}
		}
	case KindLog:
		byKey := map[db.LogBatchKey]string{}
		for _, k := range keys {
			if bk, ok := db.ParseLogBatchKey(k); ok {
				byKey[bk] = k
			}
		}
		rows, unread, err := s.Logs.Batches(ctx, s.DB, slices.Collect(maps.Keys(byKey)))
		if err != nil {
			return nil, err
		}
		for bk, b := range rows {
			out[byKey[bk]] = Versioned{Key: byKey[bk], Version: bk.Hi, Value: b}
		}
		for _, bk := range unread { // past db.MaxTailLines: no Value
			out[byKey[bk]] = Versioned{Key: byKey[bk], Version: bk.Hi}
		}
	default:
		return nil, fmt.Errorf("loading rows of unknown kind %q", kind)
	}
	return out, nil
}

// Snapshot implements Source.
func (s *StoreSource) Snapshot(ctx context.Context) (db.Snapshot, error) {
	return db.CurrentSnapshot(ctx, s.DB)
}

// ChangedSince implements Source.
func (s *StoreSource) ChangedSince(ctx context.Context, kind string, tenant uuid.UUID, since time.Time) ([]Versioned, error) {
	ctx = tenantContext(ctx, tenant)
	var out []Versioned
	switch kind {
	case KindMachine:
		rows, err := s.Machines.ChangedSince(ctx, s.DB, since)
		if err != nil {
			return nil, err
		}
		for _, m := range rows {
			out = append(out, Versioned{Key: m.ID.String(), Version: m.Version, Value: m})
		}
	case KindMachineEvent:
		rows, err := s.Machines.EventsSince(ctx, s.DB, since)
		if err != nil {
			return nil, err
		}
		for _, e := range rows {
			k := strconv.FormatInt(e.ID, 10)
			out = append(out, Versioned{Key: k, Version: e.ID, Value: e, Xact: e.Xact})
		}
	case KindRobot:
		rows, err := s.Robots.ChangedSince(ctx, s.DB, since)
		if err != nil {
			return nil, err
		}
		for _, r := range rows {
			out = append(out, Versioned{Key: r.ID.String(), Version: r.Revision, Value: r})
		}
	case KindJob:
		rows, err := s.Jobs.ChangedSince(ctx, s.DB, since)
		if err != nil {
			return nil, err
		}
		for _, j := range rows {
			out = append(out, Versioned{Key: j.ID.String(), Version: j.Revision, Value: j})
		}
	case KindLog:
		rows, err := s.Logs.ChangedSince(ctx, s.DB, since)
		if err != nil {
			return nil, err
		}
		for _, b := range rows {
			last := b.Lines[len(b.Lines)-1].ID
			// A key of its own: tails drop the lines they already sent.
			k := "resync:" + b.RobotID.String() + ":" + strconv.FormatInt(last, 10)
			// One transaction's lines (db.Logs.ChangedSince).
			out = append(out, Versioned{Key: k, Version: last, Value: b, Xact: b.Lines[0].Xact})
		}
	default:
		return nil, fmt.Errorf("re-reading rows of unknown kind %q", kind)
	}
	return out, nil
}
