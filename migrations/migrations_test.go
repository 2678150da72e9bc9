package migrations_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/migrate"

	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/migrations"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// migrationFiles lists the migrations in this folder, in order, read from
// the files rather than from the package under test.
func migrationFiles(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(".")
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".up.sql") {
			name, _, _ := strings.Cut(e.Name(), "_")
			names = append(names, name)
		}
	}
	require.NotEmpty(t, names)
	slices.Sort(names)
	return names
}

// tables are some of the tables the first migration creates.
var tables = []string{"machines", "machine_events", "deployments"}

// emptyDatabase creates a database with no tables at all (dbtest's are
// already migrated) and returns its DSN and a connection to it; both go away
// when t ends.
func emptyDatabase(t *testing.T) (string, *bun.DB) {
	t.Helper()
	ctx := context.Background()
	host := dbtest.New(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "fgm_" + hex.EncodeToString(b[:])
	_, err := host.ExecContext(ctx, "CREATE DATABASE "+name)
	require.NoError(t, err)
	t.Cleanup(func() {
		// Runs before dbtest's own cleanup closes host.
		_, err := host.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		require.NoError(t, err)
	})
	dsn := withDatabase(host.DSN, name)
	bdb, err := db.Open(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bdb.Close() })
	return dsn, bdb
}

// withDatabase points a URL or key=value DSN at another database (a later
// dbname= wins in a key=value DSN).
func withDatabase(dsn, database string) string {
	if !strings.Contains(dsn, "://") {
		return dsn + " dbname=" + database
	}
	base, query, _ := strings.Cut(dsn, "?")
	if i := strings.LastIndex(base, "/"); i > strings.Index(base, "://")+2 {
		base = base[:i]
	}
	if query != "" {
		return base + "/" + database + "?" + query
	}
	return base + "/" + database
}

func tableExists(t *testing.T, bdb *bun.DB, table string) bool {
	t.Helper()
	var exists bool
	require.NoError(t, bdb.NewRaw("SELECT to_regclass(?) IS NOT NULL", table).Scan(context.Background(), &exists))
	return exists
}

func requireTables(t *testing.T, bdb *bun.DB, want bool) {
	t.Helper()
	for _, table := range tables {
		require.Equal(t, want, tableExists(t, bdb, table), "table %s exists", table)
	}
}

func status(t *testing.T, bdb *bun.DB) migrations.Status {
	t.Helper()
	st, err := migrations.CurrentStatus(context.Background(), bdb)
	require.NoError(t, err)
	return st
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	all := migrationFiles(t)

	t.Run("Lifecycle", func(t *testing.T) {
		t.Parallel()
		_, bdb := emptyDatabase(t)

		st := status(t, bdb)
		require.Empty(t, st.Applied)
		require.Equal(t, all, st.Pending)
		require.Empty(t, st.Unknown)
		require.False(t, st.Current())
		require.Contains(t, st.Problem(), "migrate up")
		require.Contains(t, st.Problem(), strings.Join(all, ", "))
		require.False(t, tableExists(t, bdb, "bun_migrations"), "status must not create bun's tables")
		requireTables(t, bdb, false)

		applied, err := migrations.Up(ctx, bdb)
		require.NoError(t, err)
		require.Equal(t, all, applied)
		requireTables(t, bdb, true)

		st = status(t, bdb)
		require.Equal(t, all, st.Applied)
		require.Empty(t, st.Pending)
		require.Empty(t, st.Unknown)
		require.True(t, st.Current())
		require.Empty(t, st.Problem())

		applied, err = migrations.Up(ctx, bdb)
		require.NoError(t, err)
		require.Empty(t, applied, "a second Up has nothing to apply")

		rolled, err := migrations.Down(ctx, bdb, nil)
		require.NoError(t, err)
		require.Equal(t, all, rolled)
		requireTables(t, bdb, false)
		st = status(t, bdb)
		require.Empty(t, st.Applied)
		require.Equal(t, all, st.Pending)
		require.False(t, st.Current())

		rolled, err = migrations.Down(ctx, bdb, nil)
		require.NoError(t, err)
		require.Empty(t, rolled, "Down with nothing applied rolls nothing back")

		applied, err = migrations.Up(ctx, bdb)
		require.NoError(t, err)
		require.Equal(t, all, applied)
		requireTables(t, bdb, true)
		require.True(t, status(t, bdb).Current())
	})

	// A migration that fails is not recorded: it stays pending, and the
	// next Up applies it once what stood in its way is gone.
	t.Run("FailedUpStaysPending", func(t *testing.T) {
		t.Parallel()
		_, bdb := emptyDatabase(t)
		_, err := bdb.ExecContext(ctx, "CREATE TABLE schedules (x int)")
		require.NoError(t, err)

		applied, err := migrations.Up(ctx, bdb)
		require.ErrorContains(t, err, "0005")
		require.Equal(t, all[:4], applied, "Up names the migrations it applied before the failure")
		st := status(t, bdb)
		require.Equal(t, all[:4], st.Applied, "the migrations before the failed one are applied")
		require.Equal(t, all[4:], st.Pending, "the failed one and those after it are pending")
		require.False(t, tableExists(t, bdb, "webhook_endpoints"), "nothing after the failed one ran")

		_, err = bdb.ExecContext(ctx, "DROP TABLE schedules")
		require.NoError(t, err)
		applied, err = migrations.Up(ctx, bdb)
		require.NoError(t, err)
		require.Equal(t, all[4:], applied, "the next Up applies the failed one")
		require.True(t, status(t, bdb).Current())
		var cols int
		require.NoError(t, bdb.NewRaw("SELECT count(*) FROM information_schema.columns WHERE table_name = 'schedules' AND column_name = 'cron_expression'").Scan(ctx, &cols))
		require.Equal(t, 1, cols, "schedules is the migration's table")
	})

	// A rollback that fails leaves its migration applied, as its schema is.
	t.Run("FailedDownStaysApplied", func(t *testing.T) {
		t.Parallel()
		d := dbtest.New(t)
		// 0012's down drops machine_events.xact, which this view depends on.
		_, err := d.ExecContext(ctx, "CREATE VIEW event_xacts AS SELECT xact FROM machine_events")
		require.NoError(t, err)

		// The migrations after 0012 roll back; 0012 fails and stays applied.
		i := slices.Index(all, "0012")
		require.Positive(t, i)
		rolled, err := migrations.Down(ctx, d.DB, nil)
		require.ErrorContains(t, err, "0012")
		require.Empty(t, rolled, "Down reports nothing rolled back when it fails")
		require.Equal(t, all[:i+1], status(t, d.DB).Applied, "0012 and those before it are still applied")

		_, err = d.ExecContext(ctx, "DROP VIEW event_xacts")
		require.NoError(t, err)
		rolled, err = migrations.Down(ctx, d.DB, nil)
		require.NoError(t, err)
		require.Equal(t, all[:i+1], rolled)
		require.Equal(t, all, status(t, d.DB).Pending)
	})

	// Down shows approve the group it would roll back before it changes
	// anything, and a refusal rolls nothing back.
	t.Run("DownAsksFirst", func(t *testing.T) {
		t.Parallel()
		d := dbtest.New(t)
		refused := errors.New("not now")
		var asked []string
		rolled, err := migrations.Down(ctx, d.DB, func(names []string) error {
			asked = names
			return refused
		})
		require.ErrorIs(t, err, refused)
		require.Empty(t, rolled)
		require.Equal(t, all, asked, "the first Up applied every migration as one group")
		require.True(t, status(t, d.DB).Current(), "a refusal rolls nothing back")

		rolled, err = migrations.Down(ctx, d.DB, func(names []string) error { asked = names; return nil })
		require.NoError(t, err)
		require.Equal(t, all, asked)
		require.Equal(t, all, rolled)

		rolled, err = migrations.Down(ctx, d.DB, func(names []string) error { asked = names; return nil })
		require.NoError(t, err)
		require.Empty(t, asked, "with nothing applied there is nothing to approve")
		require.Empty(t, rolled)
	})

	t.Run("UnknownAppliedMigration", func(t *testing.T) {
		t.Parallel()
		d := dbtest.New(t)
		require.True(t, status(t, d.DB).Current())

		_, err := d.ExecContext(ctx, "INSERT INTO bun_migrations (name, group_id, migrated_at) VALUES ('9999', 1, now())")
		require.NoError(t, err)

		st := status(t, d.DB)
		require.Equal(t, all, st.Applied)
		require.Empty(t, st.Pending)
		require.Equal(t, []string{"9999"}, st.Unknown)
		require.False(t, st.Current())
		require.Contains(t, st.Problem(), "9999")
		require.Contains(t, st.Problem(), "newer")

		// This binary neither migrates nor rolls back such a database.
		_, err = migrations.Up(ctx, d.DB)
		require.ErrorContains(t, err, "9999")
		rolled, err := migrations.Down(ctx, d.DB, nil)
		require.ErrorContains(t, err, "newer release")
		require.Empty(t, rolled)
		require.Equal(t, st, status(t, d.DB), "nothing changed")
	})

	t.Run("ConcurrentUpAppliesOnce", func(t *testing.T) {
		t.Parallel()
		dsn, bdb := emptyDatabase(t)

		const migrators = 4
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			applied []string
			errs    []error
		)
		start := make(chan struct{})
		for range migrators {
			// Each migrator has its own pool, as separate processes would.
			own, err := db.Open(ctx, dsn)
			require.NoError(t, err)
			t.Cleanup(func() { _ = own.Close() })
			wg.Go(func() {
				<-start
				ctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				names, err := migrations.Up(ctx, own)
				mu.Lock()
				defer mu.Unlock()
				applied = append(applied, names...)
				errs = append(errs, err)
			})
		}
		close(start)
		wg.Wait()

		require.Len(t, errs, migrators)
		for _, err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, all, applied, "each migration is applied by exactly one migrator")
		require.True(t, status(t, bdb).Current())
		requireTables(t, bdb, true)

		var rows int
		require.NoError(t, bdb.NewRaw("SELECT count(*) FROM bun_migrations").Scan(ctx, &rows))
		require.Equal(t, len(all), rows)
	})

	t.Run("StaleLockDoesNotBlock", func(t *testing.T) {
		t.Parallel()
		d := dbtest.New(t)

		// leaveLock leaves the row a migrator that died mid-migration would,
		// and checks that bun's own lock is indeed blocked by it.
		leaveLock := func(t *testing.T) {
			t.Helper()
			_, err := d.ExecContext(ctx, "INSERT INTO bun_migration_locks (table_name) VALUES ('bun_migrations')")
			require.NoError(t, err)
			require.Error(t, migrate.NewMigrator(d.DB, migrate.NewMigrations()).Lock(ctx), "the stale row must block bun's lock")
		}

		leaveLock(t)
		rolled, err := migrations.Down(ctx, d.DB, nil)
		require.NoError(t, err)
		require.Equal(t, all, rolled)

		leaveLock(t)
		applied, err := migrations.Up(ctx, d.DB)
		require.NoError(t, err)
		require.Equal(t, all, applied)
		require.True(t, status(t, d.DB).Current())

		var locks int
		require.NoError(t, d.NewRaw("SELECT count(*) FROM bun_migration_locks").Scan(ctx, &locks))
		require.Zero(t, locks, "Up releases its lock")
	})
}
