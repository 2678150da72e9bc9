// Package dataloaders batches the reads of one GraphQL operation: each
// relation a resolver asks for is fetched with one keyed statement
// (`= ANY(...)`), results matched by key, never by row order. Loaders live in
// the operation's context, so caching never outlives it and every read runs
// with the operation's principal (and so its scope).
//
// Batching does not rely on timing alone. A list resolver records the ids of
// the page it returns (RememberPage); the first row whose relation is asked
// for queues the keys of every row of its page at once, and the other rows
// find their results already queued. A page of 500 therefore costs the same
// statements as a page of 5, however the scheduler interleaves resolvers.
package dataloaders

import (
	"context"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/vikstrous/dataloadgen"

	"fleetgraph/db"
)

// wait is how long a loader collects keys before fetching: long enough for
// the resolvers of one list to queue up, short enough to be invisible.
const wait = 2 * time.Millisecond

// Loaders are the batch loaders of one operation.
type Loaders struct {
	machineEvents     *dataloadgen.Loader[db.EventPageKey, db.Page[db.MachineEvent]]
	machineEventCount *dataloadgen.Loader[db.EventCountKey, int]
	deployments       *dataloadgen.Loader[db.DeploymentListKey, []*db.Deployment]
	activeDeployment  *dataloadgen.Loader[uuid.UUID, *db.Deployment]

	mu    sync.Mutex
	pages map[uuid.UUID][]uuid.UUID // machine id -> ids of the page it was listed in
}

// Stores are what the loaders read from.
type Stores struct {
	DB       bun.IDB
	Machines *db.Machines
}

// New returns fresh loaders for one operation.
func New(s Stores) *Loaders {
	return &Loaders{
		pages: map[uuid.UUID][]uuid.UUID{},
		machineEvents: dataloadgen.NewMappedLoader(func(ctx context.Context, keys []db.EventPageKey) (map[db.EventPageKey]db.Page[db.MachineEvent], error) {
			return s.Machines.EventPages(ctx, s.DB, keys)
		}, dataloadgen.WithWait(wait)),
		machineEventCount: dataloadgen.NewMappedLoader(func(ctx context.Context, keys []db.EventCountKey) (map[db.EventCountKey]int, error) {
			counts, err := s.Machines.EventCounts(ctx, s.DB, keys)
			return withZeros(keys, counts, 0), err
		}, dataloadgen.WithWait(wait)),
		deployments: dataloadgen.NewMappedLoader(func(ctx context.Context, keys []db.DeploymentListKey) (map[db.DeploymentListKey][]*db.Deployment, error) {
			lists, err := s.Machines.DeploymentLists(ctx, s.DB, keys)
			return withZeros(keys, lists, []*db.Deployment{}), err
		}, dataloadgen.WithWait(wait)),
		activeDeployment: dataloadgen.NewMappedLoader(func(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]*db.Deployment, error) {
			active, err := s.Machines.ActiveDeployments(ctx, s.DB, ids)
			return withZeros(ids, active, nil), err
		}, dataloadgen.WithWait(wait)),
	}
}

// RememberPage records that machines were listed together, so their
// relations load in one batch.
func (l *Loaders) RememberPage(machines []*db.Machine) {
	ids := make([]uuid.UUID, len(machines))
	for i, m := range machines {
		ids[i] = m.ID
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		l.pages[id] = ids
	}
}

// siblings returns the ids listed with id (id alone when it was not listed).
func (l *Loaders) siblings(id uuid.UUID) []uuid.UUID {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ids, ok := l.pages[id]; ok {
		return ids
	}
	return []uuid.UUID{id}
}

// loadWithPage loads own's value after queueing the same key for every row
// of own's page; withID makes a row's key from own's.
func loadWithPage[K comparable, V any](ctx context.Context, l *Loaders, loader *dataloadgen.Loader[K, V], own K, id uuid.UUID, withID func(K, uuid.UUID) K) (V, error) {
	var mine func() (V, error)
	for _, sibling := range l.siblings(id) {
		thunk := loader.LoadThunk(ctx, withID(own, sibling))
		if sibling == id {
			mine = thunk
		}
	}
	if mine == nil {
		mine = loader.LoadThunk(ctx, own)
	}
	return mine()
}

// EventPage returns a page of one machine's events.
func (l *Loaders) EventPage(ctx context.Context, key db.EventPageKey) (db.Page[db.MachineEvent], error) {
	return loadWithPage(ctx, l, l.machineEvents, key, key.MachineID, func(k db.EventPageKey, id uuid.UUID) db.EventPageKey {
		k.MachineID = id
		return k
	})
}

// EventCount counts one machine's events.
func (l *Loaders) EventCount(ctx context.Context, key db.EventCountKey) (int, error) {
	return loadWithPage(ctx, l, l.machineEventCount, key, key.MachineID, func(k db.EventCountKey, id uuid.UUID) db.EventCountKey {
		k.MachineID = id
		return k
	})
}

// DeploymentList returns one machine's newest deployments.
func (l *Loaders) DeploymentList(ctx context.Context, key db.DeploymentListKey) ([]*db.Deployment, error) {
	return loadWithPage(ctx, l, l.deployments, key, key.MachineID, func(k db.DeploymentListKey, id uuid.UUID) db.DeploymentListKey {
		k.MachineID = id
		return k
	})
}

// ActiveDeployment returns a machine's ACTIVE deployment, or nil.
func (l *Loaders) ActiveDeployment(ctx context.Context, machineID uuid.UUID) (*db.Deployment, error) {
	return loadWithPage(ctx, l, l.activeDeployment, machineID, machineID, func(_ uuid.UUID, id uuid.UUID) uuid.UUID { return id })
}

// withZeros gives keys with no rows an explicit empty value: for these
// relations "nothing" is an answer, not dataloadgen's ErrNotFound.
func withZeros[K comparable, V any](keys []K, m map[K]V, zero V) map[K]V {
	if m == nil {
		return nil
	}
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			m[k] = zero
		}
	}
	return m
}

type loadersKey struct{}

// With returns a context carrying l.
func With(ctx context.Context, l *Loaders) context.Context {
	return context.WithValue(ctx, loadersKey{}, l)
}

// For returns the operation's loaders. It panics when the server did not
// install them, which is a wiring bug caught by every test.
func For(ctx context.Context) *Loaders {
	return ctx.Value(loadersKey{}).(*Loaders)
}
