package db_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/fault"
)

// kcTrusted is a listener that always delivers, in one epoch.
type kcTrusted struct{ epoch atomic.Uint64 }

func (g *kcTrusted) Trusted() (uint64, bool) { return g.epoch.Load(), true }

// TestKeyCacheNeverOutlivesTheKey checks that a cached key is refused (and
// audited) once its own expiry passes, however long the cache's TTL.
func TestKeyCacheNeverOutlivesTheKey(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	keys := db.NewAPIKeysAt(clock)
	keys.Cache = db.NewKeyCache(time.Hour, &kcTrusted{}, clock)

	tenant, robot := uuid.New(), uuid.New()
	_, err := d.ExecContext(ctx, `INSERT INTO robots (id, tenant_id, name) VALUES (?, ?, 'r')`, robot, tenant)
	require.NoError(t, err)
	svc := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	expires := time.Now().Add(time.Hour)
	created, err := keys.Create(svc, d.DB, robot, "k", &expires)
	require.NoError(t, err)

	p, err := keys.Verify(ctx, d.DB, created.Key, "")
	require.NoError(t, err)
	require.Equal(t, robot, p.RobotID)
	require.Equal(t, 1, keys.Cache.Len())

	offset.Store(int64(2 * time.Hour))
	_, err = keys.Verify(ctx, d.DB, created.Key, "")
	require.Equal(t, fault.Unauthenticated, fault.CodeOf(err))
	require.ErrorContains(t, err, "expired")
	var audited int
	require.NoError(t, d.QueryRowContext(ctx, `SELECT count(*) FROM api_key_audit WHERE api_key_id = ? AND event = ?`,
		created.APIKey.ID, db.AuditExpired).Scan(&audited))
	require.Equal(t, 1, audited, "the refusal was read from the database and audited")
}

// TestKeyCacheDistrustsAnotherEpoch checks that what was cached under one
// epoch of the listener is read again under the next (a reconnect).
func TestKeyCacheDistrustsAnotherEpoch(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	guard := &kcTrusted{}
	keys := db.NewAPIKeys()
	keys.Cache = db.NewKeyCache(time.Hour, guard, nil)
	tenant, robot := uuid.New(), uuid.New()
	_, err := d.ExecContext(ctx, `INSERT INTO robots (id, tenant_id, name) VALUES (?, ?, 'r')`, robot, tenant)
	require.NoError(t, err)
	created, err := keys.Create(auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService}), d.DB, robot, "k", nil)
	require.NoError(t, err)
	_, err = keys.Verify(ctx, d.DB, created.Key, "")
	require.NoError(t, err)
	// Revoked behind the cache's back (no listener here to hear it).
	_, err = d.ExecContext(ctx, `UPDATE api_keys SET revoked_at = now() WHERE id = ?`, created.APIKey.ID)
	require.NoError(t, err)
	_, err = keys.Verify(ctx, d.DB, created.Key, "")
	require.NoError(t, err, "the same epoch trusts the entry (this is what notifications are for)")
	guard.epoch.Add(1)
	_, err = keys.Verify(ctx, d.DB, created.Key, "")
	require.ErrorContains(t, err, "revoked")
}

// TestKeyCacheForgetsADeletedRobotAtOnce checks that deleting a robot evicts
// its keys from this process's cache before Delete returns, as a revoke
// does, rather than when the deletion's notification comes back (there is
// no listener here, so only the store itself can evict).
func TestKeyCacheForgetsADeletedRobotAtOnce(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	keys := db.NewAPIKeys()
	keys.Cache = db.NewKeyCache(time.Hour, &kcTrusted{}, nil)
	robots := db.NewRobots(db.DefaultQueueConfig)
	robots.Keys = keys.Cache

	tenant, robot := uuid.New(), uuid.New()
	_, err := d.ExecContext(ctx, `INSERT INTO robots (id, tenant_id, name) VALUES (?, ?, 'r')`, robot, tenant)
	require.NoError(t, err)
	svc := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	created, err := keys.Create(svc, d.DB, robot, "k", nil)
	require.NoError(t, err)
	_, err = keys.Verify(ctx, d.DB, created.Key, "")
	require.NoError(t, err)
	require.Equal(t, 1, keys.Cache.Len())

	deleted, err := robots.Delete(svc, d.DB, robot)
	require.NoError(t, err)
	require.Equal(t, robot, deleted)
	require.Zero(t, keys.Cache.Len(), "the deleted robot's key is evicted by the deletion itself")
	_, err = keys.Verify(ctx, d.DB, created.Key, "")
	require.Equal(t, fault.Unauthenticated, fault.CodeOf(err))
}
