// Package migrations holds Fleetgraph's schema as numbered SQL files
// (NNNN_name[.tx].up.sql / .down.sql), embedded in the binary and applied with
// bun/migrate under its lock.
package migrations

import (
	"context"
	"embed"
	"fmt"
	"slices"
	"strings"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/migrate"

	"fleetgraph/locks"
)

//go:embed *.sql
var files embed.FS

// advisoryLockKey serialises migrators across processes. bun's own lock is a
// row that fails fast instead of waiting, and survives a crash; holding this
// session lock first lets concurrent starters queue, and lets us clear a lock
// row left behind by a process that died mid-migration.
const advisoryLockKey = int64(locks.Migrations)

// Status describes how a database's schema compares with this binary's.
type Status struct {
	// Applied and Pending are migration names such as "0001".
	Applied []string
	Pending []string
	// Unknown lists applied migrations this binary does not have: the
	// database was migrated by a newer binary.
	Unknown []string
}

// Current reports whether the database has exactly this binary's migrations.
func (s Status) Current() bool { return len(s.Pending) == 0 && len(s.Unknown) == 0 }

// Problem explains, for an operator, why the schema is not current, or "" when it is.
func (s Status) Problem() string {
	switch {
	case len(s.Unknown) > 0:
		return fmt.Sprintf("the database has migrations this binary does not know (%s): it was migrated by a newer Fleetgraph; run that version "+
			"(its `migrate down` rolls back the whole group it last applied, every table if it created the database: run it without --yes to see the list first)", strings.Join(s.Unknown, ", "))
	case len(s.Pending) > 0:
		return fmt.Sprintf("the database is missing migrations %s: run `fleetgraph migrate up` (or start with --auto-migrate)", strings.Join(s.Pending, ", "))
	}
	return ""
}

// embedded returns the migrations built into the binary.
func embedded() (*migrate.Migrations, error) {
	ms := migrate.NewMigrations()
	if err := ms.Discover(files); err != nil {
		return nil, fmt.Errorf("discovering embedded migrations: %w", err)
	}
	return ms, nil
}

// Up applies every pending migration and returns the names it applied. It
// stops at the first that fails, which stays pending; the names it returns
// then are those applied before it.
func Up(ctx context.Context, db *bun.DB) ([]string, error) {
	var applied []string
	err := locked(ctx, db, func(m *migrate.Migrator) error {
		group, err := m.Migrate(ctx)
		done := group.Migrations
		if err != nil && len(done) > 0 {
			done = done[:len(done)-1] // the last one is the one that failed
		}
		for _, mig := range done {
			applied = append(applied, mig.Name)
		}
		if err != nil {
			return fmt.Errorf("applying migrations: %w", err)
		}
		return nil
	})
	return applied, err
}

// Down rolls back the last group of migrations applied together and
// returns their names. The group is what one Up applied: after a first
// install, every migration, so a rollback drops every table. approve, when
// not nil, is given the group's names (oldest first; none when nothing is
// applied) under the migration lock before anything changes, and an error
// it returns ends Down with nothing rolled back.
func Down(ctx context.Context, db *bun.DB, approve func(names []string) error) ([]string, error) {
	var rolled []string
	err := locked(ctx, db, func(m *migrate.Migrator) error {
		if approve != nil {
			ms, err := m.MigrationsWithStatus(ctx)
			if err != nil {
				return fmt.Errorf("reading applied migrations: %w", err)
			}
			var names []string
			for _, mig := range ms.LastGroup().Migrations {
				names = append(names, mig.Name)
			}
			if err := approve(names); err != nil {
				return err
			}
		}
		group, err := m.Rollback(ctx)
		if err != nil {
			return fmt.Errorf("rolling back migrations: %w", err)
		}
		for _, mig := range group.Migrations {
			rolled = append(rolled, mig.Name)
		}
		return nil
	})
	return rolled, err
}

// CurrentStatus compares the database's applied migrations with the embedded ones
// without changing anything (it does not create bun's tables either).
func CurrentStatus(ctx context.Context, db *bun.DB) (Status, error) {
	ms, err := embedded()
	if err != nil {
		return Status{}, err
	}
	var exists bool
	if err := db.NewRaw("SELECT to_regclass('bun_migrations') IS NOT NULL").Scan(ctx, &exists); err != nil {
		return Status{}, fmt.Errorf("checking for the migrations table: %w", err)
	}
	applied := map[string]bool{}
	if exists {
		done, err := migrate.NewMigrator(db, ms).AppliedMigrations(ctx)
		if err != nil {
			return Status{}, fmt.Errorf("reading applied migrations: %w", err)
		}
		for _, mig := range done {
			applied[mig.Name] = true
		}
	}
	var st Status
	for _, mig := range ms.Sorted() {
		if applied[mig.Name] {
			st.Applied = append(st.Applied, mig.Name)
			delete(applied, mig.Name)
		} else {
			st.Pending = append(st.Pending, mig.Name)
		}
	}
	for name := range applied {
		st.Unknown = append(st.Unknown, name)
	}
	slices.Sort(st.Unknown)
	return st, nil
}

// locked runs fn with bun's migration tables initialised and both locks held.
func locked(ctx context.Context, db *bun.DB, fn func(*migrate.Migrator) error) error {
	ms, err := embedded()
	if err != nil {
		return err
	}
	// A migration is marked applied only once its up has succeeded, and
	// unmarked only once its down has: bun's default marks first, so a
	// migration that failed would be recorded as applied and skipped by the
	// next run, and one whose rollback failed recorded as pending while its
	// schema is still there.
	m := migrate.NewMigrator(db, ms, migrate.WithMarkAppliedOnSuccess(true))
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("connecting for the migration lock: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(?)", advisoryLockKey); err != nil {
		return fmt.Errorf("waiting for the migration lock: %w", err)
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", advisoryLockKey)
	}()
	if err := m.Init(ctx); err != nil {
		return fmt.Errorf("creating the migration tables: %w", err)
	}
	// Holding the advisory lock, no other migrator of ours is running: a lock
	// row is a leftover from a process that died and is safe to clear.
	if _, err := db.ExecContext(ctx, "DELETE FROM bun_migration_locks"); err != nil {
		return fmt.Errorf("clearing a stale migration lock: %w", err)
	}
	if err := m.Lock(ctx); err != nil {
		return fmt.Errorf("taking the migration lock: %w", err)
	}
	defer func() { _ = m.Unlock(context.WithoutCancel(ctx)) }()
	// A database a newer release migrated is left alone: bun would see only
	// the migrations this binary knows, apply none, or roll back one under
	// the newer ones, leaving a schema no release matches.
	st, err := CurrentStatus(ctx, db)
	if err != nil {
		return err
	}
	if len(st.Unknown) > 0 {
		return fmt.Errorf("the database holds migrations this binary does not know (%s): a newer release migrated it; run that release's migrate, or that release", strings.Join(st.Unknown, ", "))
	}
	return fn(m)
}
