package db

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/lib/pq"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/schema"
)

// Prepared statements for the hot paths.
//
// bun writes every value into a statement's text, so PostgreSQL parses and
// plans each statement as new: for a point read that is most of its cost
// (BenchmarkRequestPath: the raw point SELECT runs 4.5-6 times as fast
// prepared as with its values in the text). A hot store query binds its
// values instead (Params.Bind writes $1, $2... where bun would write the
// value) and runs through scanBound, which hands the values to the
// connection beside the query, in its context. The connection (conn, below
// lib/pq in database/sql) prepares each such text once and keeps it, so
// the text must not depend on the values: scope rules bind the tenant and
// the principal too (scope.binding). The query still goes through bun (its
// model, its scan, its query hooks); only the values travel apart.

// Params are the values a statement binds as parameters.
type Params struct {
	args []driver.NamedValue
	err  error
}

// Bind adds v as the next parameter and returns its placeholder, to pass
// to bun in place of v.
func (p *Params) Bind(v any) bun.Safe {
	if valuer, ok := v.(driver.Valuer); ok {
		var err error
		if v, err = valuer.Value(); err != nil && p.err == nil {
			p.err = fmt.Errorf("binding a parameter: %w", err)
		}
	}
	dv, err := driver.DefaultParameterConverter.ConvertValue(v)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("binding a parameter: %w", err)
	}
	if t, ok := dv.(time.Time); ok {
		// lib/pq sends a time with its offset as written, and PostgreSQL
		// refuses offsets past ±15:59 that RFC 3339 allows (+23:59): the
		// instant in UTC is the same and always accepted (bun writes the
		// times it formats in UTC too).
		dv = t.UTC()
	}
	p.args = append(p.args, driver.NamedValue{Ordinal: len(p.args) + 1, Value: dv})
	return bun.Safe("$" + strconv.Itoa(len(p.args)))
}

// Arg is v bound as the next parameter, or v itself (for bun to write into
// the text) when p is nil: code shared by bound and unbound queries passes
// its values through Arg.
func (p *Params) Arg(v any) any {
	if p == nil {
		return v
	}
	return p.Bind(v)
}

// bound is a statement's text and the values its placeholders stand for.
type bound struct {
	text string
	args []driver.NamedValue
}

type boundKey struct{}

// boundQuery is a bun query (select, update, raw) whose values may be bound.
type boundQuery interface {
	AppendQuery(gen schema.QueryGen, b []byte) ([]byte, error)
	Scan(ctx context.Context, dest ...any) error
	DB() *bun.DB
}

// boundStatement is q, whose values p bound, run prepared by Scan.
type boundStatement struct {
	q boundQuery
	p *Params
}

// Scan runs the statement (scanBound).
func (b boundStatement) Scan(ctx context.Context, dest ...any) error {
	return scanBound(ctx, b.q, b.p, dest...)
}

// scanBound runs q, whose values p bound, as a prepared statement, scanning
// into dest (q's model when dest is empty).
func scanBound(ctx context.Context, q boundQuery, p *Params, dest ...any) error {
	if p.err != nil {
		return p.err
	}
	text, err := q.AppendQuery(q.DB().QueryGen(), nil)
	if err != nil {
		return err
	}
	return q.Scan(context.WithValue(ctx, boundKey{}, &bound{text: string(text), args: p.args}), dest...)
}

// connector opens connections that run bound statements prepared, or,
// without prepare, send them with their values in one message batch
// (lib/pq's binary_parameters mode) for a transaction pooler.
type connector struct {
	driver.Connector
	prepare bool
}

// Connect implements driver.Connector. A new session gets sessionBounds
// (not behind a transaction pooler, whose server sessions are not ours).
func (c connector) Connect(ctx context.Context) (driver.Conn, error) {
	inner, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	if c.prepare {
		if _, err := inner.(driver.ExecerContext).ExecContext(ctx, sessionBounds, nil); err != nil {
			_ = inner.Close()
			return nil, fmt.Errorf("setting the session's timeouts: %w", err)
		}
	}
	return &conn{Conn: inner, stmts: map[string]driver.Stmt{}, prepare: c.prepare}, nil
}

// sessionBounds sets, where the server, the role or DATABASE_URL set
// nothing, how soon PostgreSQL ends a session whose client vanished: TCP
// keepalives from 10 s idle, 3 probes 5 s apart, unacknowledged data given
// up after 25 s, as the maintenance leader's session has; and a
// transaction left idle for a minute (no transaction here waits on a
// client). A leader cut off in the middle of a round kept the rows its
// round had locked (a schedule, a thousand robots) for the two hours TCP
// takes by default, and the leader after it skipped them. As a statement,
// not startup parameters, which poolers such as PgBouncer refuse.
const sessionBounds = `SELECT
	CASE WHEN current_setting('tcp_keepalives_idle') = '0' THEN set_config('tcp_keepalives_idle', '10', false) END,
	CASE WHEN current_setting('tcp_keepalives_interval') = '0' THEN set_config('tcp_keepalives_interval', '5', false) END,
	CASE WHEN current_setting('tcp_keepalives_count') = '0' THEN set_config('tcp_keepalives_count', '3', false) END,
	CASE WHEN current_setting('tcp_user_timeout') = '0' THEN set_config('tcp_user_timeout', '25000', false) END,
	CASE WHEN current_setting('idle_in_transaction_session_timeout') = '0' THEN set_config('idle_in_transaction_session_timeout', '60000', false) END`

// maxPrepared bounds the statements a connection keeps; the hot paths have
// a few dozen texts (a shape per scope kind).
const maxPrepared = 256

// conn is a lib/pq connection that keeps the statements it prepared for
// bound queries, by text. database/sql uses a connection from one goroutine
// at a time, so stmts needs no lock.
type conn struct {
	driver.Conn
	stmts map[string]driver.Stmt
	inTx  bool // between BeginTx and the transaction's end
	// prepare is false behind a transaction pooler (see connector).
	prepare bool
}

// QueryContext runs a bound query (one whose context carries its values)
// as a prepared statement, and any other query as lib/pq would.
func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if b, ok := ctx.Value(boundKey{}).(*bound); ok && len(args) == 0 && b.text == query {
		if !c.prepare {
			return c.Conn.(driver.QueryerContext).QueryContext(ctx, query, b.args)
		}
		st, err := c.prepared(ctx, query)
		if err != nil {
			return nil, err
		}
		rows, err := st.(driver.StmtQueryContext).QueryContext(ctx, b.args)
		if c.forgetIfStale(query, err) && !c.inTx {
			// Outside a transaction the failed statement changed nothing:
			// prepare it again and run it once more.
			if st, err = c.prepared(ctx, query); err != nil {
				return nil, err
			}
			rows, err = st.(driver.StmtQueryContext).QueryContext(ctx, b.args)
		}
		return rows, err
	}
	return c.Conn.(driver.QueryerContext).QueryContext(ctx, query, args)
}

// prepared returns the connection's statement for query, preparing it the
// first time.
func (c *conn) prepared(ctx context.Context, query string) (driver.Stmt, error) {
	if st, ok := c.stmts[query]; ok {
		return st, nil
	}
	st, err := c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if len(c.stmts) >= maxPrepared {
		for text, old := range c.stmts { // any one
			_ = old.Close()
			delete(c.stmts, text)
			break
		}
	}
	c.stmts[query] = st
	return st, nil
}

// forgetIfStale drops a statement the server no longer runs as prepared,
// and reports whether it did: a migration changed a table under it (0A000,
// "cached plan must not change result type") or the server lost it
// (26000). The next call prepares it again.
func (c *conn) forgetIfStale(query string, err error) bool {
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || (pqErr.Code != "0A000" && pqErr.Code != "26000") {
		return false
	}
	if st, ok := c.stmts[query]; ok {
		_ = st.Close()
		delete(c.stmts, query)
	}
	return true
}

// Close closes the connection (its statements die with it).
func (c *conn) Close() error { return c.Conn.Close() }

// The rest is lib/pq's, passed through.

// ExecContext implements driver.ExecerContext.
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.Conn.(driver.ExecerContext).ExecContext(ctx, query, args)
}

// PrepareContext implements driver.ConnPrepareContext.
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, query)
}

// BeginTx implements driver.ConnBeginTx.
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	t, err := c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	c.inTx = true
	return tx{Tx: t, c: c}, nil
}

// tx notes the end of a connection's transaction.
type tx struct {
	driver.Tx
	c *conn
}

// Commit implements driver.Tx.
func (t tx) Commit() error {
	t.c.inTx = false
	return t.Tx.Commit()
}

// Rollback implements driver.Tx.
func (t tx) Rollback() error {
	t.c.inTx = false
	return t.Tx.Rollback()
}

// Ping implements driver.Pinger.
func (c *conn) Ping(ctx context.Context) error { return c.Conn.(driver.Pinger).Ping(ctx) }

// ResetSession implements driver.SessionResetter.
func (c *conn) ResetSession(ctx context.Context) error {
	return c.Conn.(driver.SessionResetter).ResetSession(ctx)
}

// IsValid implements driver.Validator.
func (c *conn) IsValid() bool { return c.Conn.(driver.Validator).IsValid() }

// CheckNamedValue implements driver.NamedValueChecker.
func (c *conn) CheckNamedValue(nv *driver.NamedValue) error {
	return c.Conn.(driver.NamedValueChecker).CheckNamedValue(nv)
}
