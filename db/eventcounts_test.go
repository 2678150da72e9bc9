package db_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// EventCounts counts every key of a batch in one statement, whatever
// filters the keys have (it ran one statement per distinct filter, one
// after another: 50 filters over a million events took 24.5 s), each key
// its own machine's events of its own types, and nothing of a machine the
// caller does not own. When every key filters, only the events of the
// named types are read.
func TestEventCountsInOneStatement(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant, user, other := uuid.New(), uuid.New(), uuid.New()
	machine := func(owner uuid.UUID, name string, events map[string]int) uuid.UUID {
		t.Helper()
		var id uuid.UUID
		require.NoError(t, d.NewRaw(`INSERT INTO machines (tenant_id, owner_id, name) VALUES (?, ?, ?) RETURNING id`, tenant, owner, name).Scan(ctx, &id))
		for typ, n := range events {
			_, err := d.ExecContext(ctx, `INSERT INTO machine_events (machine_id, tenant_id, event_type, actor)
				SELECT ?, ?, ?, 'test' FROM generate_series(1, ?)`, id, tenant, typ, n)
			require.NoError(t, err)
		}
		return id
	}
	m1 := machine(user, "m1", map[string]int{"a": 5, "b": 3, "c": 2, "noise": 3000})
	m2 := machine(user, "m2", map[string]int{"b": 4, "x": 1, "noise": 3000})
	theirs := machine(other, "theirs", map[string]int{"a": 7})
	_, err := d.ExecContext(ctx, `ANALYZE machine_events`)
	require.NoError(t, err)
	as := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, UserID: user, Role: auth.RoleUser})
	key := func(m uuid.UUID, types ...string) db.EventCountKey {
		return db.EventCountKey{MachineID: m, Types: db.EventTypesKey(types)}
	}

	count := func(keys []db.EventCountKey) (map[db.EventCountKey]int, []planNode) {
		t.Helper()
		var got map[db.EventCountKey]int
		plan := explainStatement(t, d, func(ctx context.Context, idb bun.IDB) error {
			var err error
			got, err = db.NewMachines().EventCounts(auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, UserID: user, Role: auth.RoleUser}), idb, keys)
			return err
		})
		return got, scansOf(plan, "machine_events")
	}

	// Filters only: the named types' events are read, not the noise.
	filtered := []db.EventCountKey{
		key(m1, "a"), key(m1, "a", "b"), key(m1, "b", "b"), key(m1, "zzz"),
		key(m2, "b"), key(m2, "a", "x"), key(theirs, "a"),
	}
	got, scans := count(filtered)
	require.Equal(t, map[db.EventCountKey]int{
		key(m1, "a"): 5, key(m1, "a", "b"): 8, key(m1, "b", "b"): 3, key(m1, "zzz"): 0,
		key(m2, "b"): 4, key(m2, "a", "x"): 1, key(theirs, "a"): 0,
	}, got)
	require.NotEmpty(t, scans)
	read := 0.0
	for _, s := range scans {
		read += s.ActualLoops * (s.ActualRows + s.RemovedByFilter + s.RemovedByRecheck)
	}
	require.LessOrEqual(t, read, float64(5+3+2+4+1+7), "only events of the named types: %+v", scans)

	// With a key that counts everything, in the same statement.
	mixed := append(filtered, key(m1), key(m2), key(theirs))
	got, _ = count(mixed)
	require.Equal(t, 3010, got[key(m1)])
	require.Equal(t, 3005, got[key(m2)])
	require.Equal(t, 0, got[key(theirs)])
	require.Equal(t, 8, got[key(m1, "a", "b")])
	require.Equal(t, 1, got[key(m2, "a", "x")])

	// A bad filter is refused, as before.
	_, err = db.NewMachines().EventCounts(as, d.DB, []db.EventCountKey{key(m1, "a"), key(m1, "")})
	require.NoError(t, err) // "" is no filter
	_, err = db.NewMachines().EventCounts(as, d.DB, []db.EventCountKey{{MachineID: m1, Types: "a\x00bad type!"}})
	require.Error(t, err)
}
