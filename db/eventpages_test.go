package db_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// A page of a machine's events filtered by type reads at most the page
// size of events of each type named: a single `event_type = ANY(...)`
// filter let the planner walk the machine's events newest first and skip
// the others, so a page of 5 events of two rare, old types could read all
// 20,000 events of the machine.
func TestEventPagesByTypeReadOnlyTheirTypes(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant, user := uuid.New(), uuid.New()
	var m uuid.UUID
	require.NoError(t, d.NewRaw(`INSERT INTO machines (tenant_id, owner_id, name) VALUES (?, ?, 'm') RETURNING id`, tenant, user).Scan(ctx, &m))
	events := func(typ string, n int) {
		t.Helper()
		_, err := d.ExecContext(ctx, `INSERT INTO machine_events (machine_id, tenant_id, event_type, actor)
			SELECT ?, ?, ?, 'test' FROM generate_series(1, ?)`, m, tenant, typ, n)
		require.NoError(t, err)
	}
	events("old", 3)
	events("rare", 2)
	events("noise", 20000)
	events("rare", 4)
	// Other users' machines, so the machine is one of many as in use.
	_, err := d.ExecContext(ctx, `WITH m AS (INSERT INTO machines (tenant_id, owner_id, name)
			SELECT ?, ?, 'other-' || i FROM generate_series(1, 200) i RETURNING id)
		INSERT INTO machine_events (machine_id, tenant_id, event_type, actor)
		SELECT m.id, ?, 'noise', 'test' FROM m, generate_series(1, 100)`, tenant, uuid.New(), tenant)
	require.NoError(t, err)
	_, err = d.ExecContext(ctx, `ANALYZE machine_events`)
	require.NoError(t, err)
	as := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, UserID: user, Role: auth.RoleUser})

	const first = 5
	for _, types := range [][]string{{"old", "rare"}, {"rare", "old", "rare", "absent"}, {"old"}} {
		key := db.EventPageKey{MachineID: m, First: first, Types: db.EventTypesKey(types)}
		var got map[db.EventPageKey]db.Page[db.MachineEvent]
		distinct := map[string]bool{}
		for _, typ := range types {
			distinct[typ] = true
		}
		// As planned, and in the plan the old filter fell into: the
		// machine's events newest first, no sort.
		for _, settings := range [][]string{nil, {"enable_sort = off", "enable_bitmapscan = off"}} {
			plan := explainStatement(t, d, func(ctx context.Context, idb bun.IDB) error {
				var err error
				got, err = db.NewMachines().EventPages(auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, UserID: user, Role: auth.RoleUser}), idb, []db.EventPageKey{key})
				return err
			}, settings...)
			read := 0.0
			for _, s := range scansOf(plan, "machine_events") {
				read += s.ActualLoops * (s.ActualRows + s.RemovedByFilter + s.RemovedByRecheck)
			}
			require.LessOrEqual(t, read, float64(len(distinct)*(first+1)), "%v %v: only the newest of each type: %s", types, settings, plan)
		}

		// The page is the newest of the named types, each once.
		page := got[key]
		var seen []string
		for _, e := range page.Items {
			seen = append(seen, e.EventType)
		}
		want := map[string][]string{
			"old,rare":             {"rare", "rare", "rare", "rare", "rare"},
			"rare,old,rare,absent": {"rare", "rare", "rare", "rare", "rare"},
			"old":                  {"old", "old", "old"},
		}
		require.Equal(t, want[strings.Join(types, ",")], seen, "%v", types)
		for i := 1; i < len(page.Items); i++ {
			require.Greater(t, page.Items[i-1].ID, page.Items[i].ID, "newest first")
		}
		require.Equal(t, strings.Join(types, ",") != "old", page.HasNext, "%v", types)

		// The next page carries on from the cursor, into the older type.
		if page.HasNext {
			nextKey := key
			nextKey.After = page.Items[len(page.Items)-1].Cursor()
			next, err := db.NewMachines().EventPages(as, d.DB, []db.EventPageKey{nextKey})
			require.NoError(t, err)
			var rest []string
			for _, e := range next[nextKey].Items {
				rest = append(rest, e.EventType)
			}
			require.Equal(t, []string{"rare", "old", "old", "old"}, rest, "%v", types)
		}
	}
}
