// Package dataloaders batches the reads of one GraphQL operation: each
// relation a resolver asks for is collected for a moment and fetched with one
// keyed statement (`= ANY(...)`), results matched by key, never by row order.
// Loaders live in the operation's context, so caching never outlives it and
// every read runs with the operation's principal (and so its scope).
package dataloaders

import (
	"context"
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
	MachineEvents     *dataloadgen.Loader[db.EventPageKey, db.Page[db.MachineEvent]]
	MachineEventCount *dataloadgen.Loader[db.EventCountKey, int]
	Deployments       *dataloadgen.Loader[db.DeploymentListKey, []*db.Deployment]
	ActiveDeployment  *dataloadgen.Loader[uuid.UUID, *db.Deployment]
}

// Stores are what the loaders read from.
type Stores struct {
	DB       bun.IDB
	Machines *db.Machines
}

// New returns fresh loaders for one operation.
func New(s Stores) *Loaders {
	return &Loaders{
		MachineEvents: dataloadgen.NewMappedLoader(func(ctx context.Context, keys []db.EventPageKey) (map[db.EventPageKey]db.Page[db.MachineEvent], error) {
			return s.Machines.EventPages(ctx, s.DB, keys)
		}, dataloadgen.WithWait(wait)),
		MachineEventCount: dataloadgen.NewMappedLoader(func(ctx context.Context, keys []db.EventCountKey) (map[db.EventCountKey]int, error) {
			counts, err := s.Machines.EventCounts(ctx, s.DB, keys)
			return withZeros(keys, counts, 0), err
		}, dataloadgen.WithWait(wait)),
		Deployments: dataloadgen.NewMappedLoader(func(ctx context.Context, keys []db.DeploymentListKey) (map[db.DeploymentListKey][]*db.Deployment, error) {
			lists, err := s.Machines.DeploymentLists(ctx, s.DB, keys)
			return withZeros(keys, lists, []*db.Deployment{}), err
		}, dataloadgen.WithWait(wait)),
		ActiveDeployment: dataloadgen.NewMappedLoader(func(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]*db.Deployment, error) {
			active, err := s.Machines.ActiveDeployments(ctx, s.DB, ids)
			return withZeros(ids, active, nil), err
		}, dataloadgen.WithWait(wait)),
	}
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
