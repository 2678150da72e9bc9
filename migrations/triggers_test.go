package migrations_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/dbtest"
	"fleetgraph/migrations"
)

// TestTriggers checks the parsed list against what a migrated database
// really has: every listed trigger exists, and every trigger of ours in the
// database is listed.
func TestTriggers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	st, err := migrations.CurrentStatus(ctx, d.DB)
	require.NoError(t, err)
	require.True(t, st.Current())

	listed, err := migrations.Triggers(st.Applied)
	require.NoError(t, err)
	require.Contains(t, listed, migrations.Trigger{Migration: "0003", Table: "robots", Name: "robots_notify"})
	var want []string
	for _, tr := range listed {
		want = append(want, tr.Table+"."+tr.Name)
	}
	var have []string
	require.NoError(t, d.NewRaw(`SELECT c.relname || '.' || t.tgname FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE NOT t.tgisinternal AND n.nspname = current_schema() AND t.tgparentid = 0`).Scan(ctx, &have))
	require.ElementsMatch(t, have, want)

	before, err := migrations.Triggers([]string{"0001", "0002"})
	require.NoError(t, err)
	require.Empty(t, before, "the change feed's triggers come with 0003")
}
