// Package db owns Fleetgraph's data: the bun models, one store per domain,
// and the rules that keep callers inside their own data. Every query a store
// runs on behalf of a caller is scoped by the Principal in its context through
// scope (scope.go), the only place where tenant and owner filters are built.
// State transitions are single conditional statements; store methods take a
// bun.IDB so callers can compose them in one transaction.
package db

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lib/pq"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"fleetgraph/fault"
)

// PoolSize is the connections of the pool Open opens: the one requests,
// the hub and maintenance share.
const PoolSize = 25

// ControlPoolSize is the connections of the control pool
// (OpenPool(ctx, dsn, ControlPoolSize)): credential checks and readiness
// probes run there, so that operations holding every connection of the
// main pool (a tenant's slow queries) neither turn a robot's key check
// into an error nor make /readyz report the database unreachable.
const ControlPoolSize = 4

// Open connects to PostgreSQL at dsn (a URL or key=value DSN) through lib/pq and
// checks the connection, with a pool of PoolSize connections.
func Open(ctx context.Context, dsn string) (*bun.DB, error) {
	return OpenPool(ctx, dsn, PoolSize)
}

// OpenPool is Open with a pool of size connections.
func OpenPool(ctx context.Context, dsn string, size int) (*bun.DB, error) {
	cfg, err := pq.NewConfig(dsn)
	if err != nil {
		// The parser's error quotes the DSN, password and all; it is
		// written to logs and terminals, so it is not passed on.
		return nil, errors.New("connecting to the database: DATABASE_URL is neither a postgres:// URL nor a key=value connection string (in a URL, write %, #, / and @ of the password percent-encoded)")
	}
	// Prepared statements' results come as text, as the simple protocol's
	// do: lib/pq's binary UUIDs cost an allocation each to turn back into
	// the text every scanner parses (see fastUUIDScans), and its other
	// binary types (integers, bytea) decode from text as cheaply.
	cfg.DisablePreparedBinaryResult = true
	pqc, err := pq.NewConnectorConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the database (check DATABASE_URL): %w", err)
	}
	// binary_parameters=yes is lib/pq's mode for transaction poolers
	// (PgBouncer, Supavisor), where a named statement cannot outlive a
	// transaction: bound statements are then sent unprepared.
	sqldb := sql.OpenDB(connector{Connector: pqc, prepare: !cfg.BinaryParameters})
	sqldb.SetMaxOpenConns(size)
	sqldb.SetMaxIdleConns(size)
	sqldb.SetConnMaxIdleTime(5 * time.Minute)
	bdb := bun.NewDB(sqldb, pgdialect.New())
	fastUUIDScans(bdb.Dialect())
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := bdb.PingContext(pingCtx); err != nil {
		_ = bdb.Close()
		return nil, fmt.Errorf("connecting to the database (check DATABASE_URL): %w", err)
	}
	return bdb, nil
}

// jsonText renders an already validated JSON value for a ?::jsonb parameter.
func jsonText(v any) string {
	b, _ := json.Marshal(v) // validated by checkJSONObjectText, which marshalled it already
	return string(b)
}

// constraintError translates a violated constraint into a client error using
// messages keyed by constraint name; other errors pass through unchanged.
func constraintError(err error, messages map[string]*fault.Error) error {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		if fe, ok := messages[pqErr.Constraint]; ok {
			return fe
		}
	}
	return err
}

// notFoundIfNoRows turns sql.ErrNoRows into a NOT_FOUND fault for what.
func notFoundIfNoRows(err error, what string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fault.Missing(what)
	}
	return err
}

// parentChange is the lock on a row that other rows reference (a robot,
// a workflow, a schedule) held while it changes, not its key, or while
// it serialises changes under it: FOR NO KEY UPDATE, as an UPDATE of it
// takes anyway. FOR UPDATE would also hold off every foreign-key check
// of its children (KEY SHARE), and a child changed twice in a
// transaction is checked again, so two transactions locking a parent
// and a child in opposite orders deadlocked: a schedule firing for a
// robot (its row, then the robot's) with the robot's deletion (the
// robot's, then the schedule's: lockRobotsJobs), and assignWorkflow
// (the workflow's, then the robot's) with the deletion (the robot's,
// then through its jobs the workflow's). Only a deletion (deleteRobot,
// deleteSchedule) takes FOR UPDATE.
const parentChange = "NO KEY UPDATE"

// quietly runs fn, in tx, with the change feed quiet for the finished
// jobs it updates that stay finished (fleetgraph.detach, migration 0020):
// a deletion detaching the history that names what it deletes, which
// would otherwise notify every dashboard of the tenant once per job. A
// live job fn changes, or one it finishes, notifies as ever.
func quietly(ctx context.Context, tx bun.Tx, fn func() error) error {
	if _, err := tx.ExecContext(ctx, "SET LOCAL fleetgraph.detach = 'on'"); err != nil {
		return fmt.Errorf("quieting the change feed: %w", err)
	}
	if err := fn(); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "SET LOCAL fleetgraph.detach = 'off'"); err != nil {
		return fmt.Errorf("restoring the change feed: %w", err)
	}
	return nil
}
