package dbtest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { Main(m) }

// TestTemplateIsRemadeOnANewDay checks that a test database made on a new
// UTC day is cloned from a template migrated that day, with the day's log
// partitions, and that the old template is dropped.
func TestTemplateIsRemadeOnANewDay(t *testing.T) {
	New(t) // the binary's first template
	server.create.Lock()
	old := server.template
	server.templateDay = "2000-01-01" // as if it were made before midnight
	server.create.Unlock()

	before := time.Now().UTC().Format(time.DateOnly)
	d := New(t)
	after := time.Now().UTC().Format(time.DateOnly)
	server.create.Lock()
	remade, day := server.template, server.templateDay
	server.create.Unlock()
	require.NotEqual(t, old, remade, "a new template")
	require.Contains(t, []string{before, after}, day, "made today")

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var exists bool
	require.NoError(t, server.admin.NewRaw("SELECT EXISTS (SELECT FROM pg_database WHERE datname = ?)", old).Scan(ctx, &exists))
	require.False(t, exists, "the old template is dropped")
	madeOn, err := time.Parse(time.DateOnly, day)
	require.NoError(t, err)
	ahead := "robot_logs_p" + madeOn.AddDate(0, 0, 3).Format("20060102")
	require.NoError(t, d.DB.NewRaw("SELECT to_regclass(?) IS NOT NULL", ahead).Scan(ctx, &exists))
	require.True(t, exists, "the database has %s", ahead)
}
