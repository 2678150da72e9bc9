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
	"fleetgraph/fault"
)

// oneConnection opens dsn with a pool of one connection, so that the
// session's pg_prepared_statements shows what every call prepared.
func oneConnection(t *testing.T, dsn string) *bun.DB {
	t.Helper()
	bdb, err := db.Open(t.Context(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bdb.Close() })
	bdb.SetMaxOpenConns(1)
	return bdb
}

// preparedJobReads counts the connection's prepared statements that read
// jobs by id.
func preparedJobReads(t *testing.T, bdb *bun.DB) int {
	t.Helper()
	var n int
	require.NoError(t, bdb.NewRaw(`SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%FROM "jobs" AS "j" WHERE (j.id = $1)%'`).Scan(t.Context(), &n))
	return n
}

// TestHotReadsArePreparedOncePerShape checks that a point read is prepared
// once per connection and reused, whoever asks within a kind of principal:
// the tenant is bound, not written into the text (else every tenant would
// prepare its own). A robot's scope adds a condition, so a second shape.
func TestHotReadsArePreparedOncePerShape(t *testing.T) {
	t.Parallel()
	bdb := oneConnection(t, dbtest.New(t).DSN)
	jobs := &db.Jobs{}
	read := func(p *auth.Principal) {
		_, err := jobs.Get(auth.WithPrincipal(t.Context(), p), bdb, uuid.New())
		require.True(t, fault.Has(err, fault.NotFound), "reading a job that is not there: %v", err)
	}
	for range 3 {
		read(&auth.Principal{TenantID: uuid.New(), Role: auth.RoleService})
		read(&auth.Principal{TenantID: uuid.New(), UserID: uuid.New(), Role: auth.RoleUser})
	}
	require.Equal(t, 1, preparedJobReads(t, bdb), "six reads by six tenants prepare one statement")
	read(&auth.Principal{TenantID: uuid.New(), RobotID: uuid.New(), Role: auth.RoleRobot})
	require.Equal(t, 2, preparedJobReads(t, bdb), "a robot's read is a second shape")
}

// TestPreparedStatementSurvivesAMigration checks that a kept statement whose
// table changed under it (PostgreSQL refuses it: "cached plan must not
// change result type") is prepared again and answers, outside a transaction
// at once, and inside one from the next transaction on.
func TestPreparedStatementSurvivesAMigration(t *testing.T) {
	t.Parallel()
	bdb := oneConnection(t, dbtest.New(t).DSN)
	tenant := uuid.New()
	ctx := auth.WithPrincipal(t.Context(), &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	robots := &db.Robots{}
	id := uuid.New()
	_, err := bdb.ExecContext(ctx, `INSERT INTO robots (id, tenant_id, name) VALUES (?, ?, 'r1')`, id, tenant)
	require.NoError(t, err)
	find := func(idb bun.IDB) error {
		got, err := robots.FindMany(ctx, idb, []uuid.UUID{id})
		if err == nil {
			require.Equal(t, "r1", got[id].Name)
		}
		return err
	}
	require.NoError(t, find(bdb))

	migrate := func(typ string) {
		_, err := bdb.ExecContext(ctx, `ALTER TABLE robots ALTER COLUMN hostname TYPE `+typ)
		require.NoError(t, err)
	}
	migrate("varchar(300)")
	require.NoError(t, find(bdb), "outside a transaction the stale statement is prepared again at once")

	migrate("text")
	err = bdb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error { return find(tx) })
	require.Error(t, err, "inside a transaction the failure aborts it; it cannot be retried there")
	require.NoError(t, bdb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error { return find(tx) }),
		"the next transaction prepares it again")
}

// TestTransactionPoolerModeSendsBoundStatementsUnprepared checks that with
// binary_parameters=yes in the DSN (lib/pq's mode for PgBouncer and
// Supavisor in transaction mode, where a named statement cannot outlive a
// transaction) the hot reads still answer, and nothing is prepared.
func TestTransactionPoolerModeSendsBoundStatementsUnprepared(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	dsn := d.DSN + "&binary_parameters=yes"
	if !strings.Contains(d.DSN, "?") {
		dsn = d.DSN + " binary_parameters=yes"
	}
	bdb := oneConnection(t, dsn)
	tenant, id := uuid.New(), uuid.New()
	ctx := auth.WithPrincipal(t.Context(), &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	_, err := bdb.ExecContext(ctx, `INSERT INTO robots (id, tenant_id, name) VALUES (?, ?, 'r1')`, id, tenant)
	require.NoError(t, err)
	for range 3 {
		got, err := (&db.Robots{}).FindMany(ctx, bdb, []uuid.UUID{id})
		require.NoError(t, err)
		require.Equal(t, "r1", got[id].Name)
	}
	var n int
	require.NoError(t, bdb.NewRaw(`SELECT count(*) FROM pg_prepared_statements`).Scan(t.Context(), &n))
	require.Zero(t, n, "nothing is prepared behind a transaction pooler")
}

// TestSessionsEndWhenTheirClientVanishes: every session of the pool ends
// a transaction left idle for a minute (a leader cut off in the middle of
// a round kept its rows locked for the two hours TCP takes by default),
// unless the server, the role or the connection string said otherwise.
func TestSessionsEndWhenTheirClientVanishes(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	setting := func(bdb *bun.DB) string {
		var v string
		require.NoError(t, bdb.NewRaw(`SELECT current_setting('idle_in_transaction_session_timeout')`).Scan(t.Context(), &v))
		return v
	}
	require.Equal(t, "1min", setting(oneConnection(t, d.DSN)))
	// dbtest's DSN is of the key=value form.
	require.Equal(t, "5min", setting(oneConnection(t, d.DSN+" options='-c idle_in_transaction_session_timeout=300000'")), "the DSN's own")
	pooled := oneConnection(t, d.DSN+" binary_parameters=yes")
	require.Equal(t, "0", setting(pooled), "behind a transaction pooler, the pooler's")
}
