package db

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"fleetgraph/fault"
)

// Page sizes for Relay connections.
const (
	DefaultPageSize = 50
	MaxPageSize     = 500
)

// PageArgs are a connection's `first` and `after` arguments.
type PageArgs struct {
	First *int
	After *string
	// Columns, when not nil, are the only columns the caller reads (a
	// GraphQL selection); the list adds its keys. Lists that support it
	// say so; the others read every column.
	Columns []string
}

// limit returns the page size: DefaultPageSize when absent, capped at MaxPageSize.
func (p PageArgs) limit() (int, error) {
	return pageSize(p.First, DefaultPageSize)
}

func pageSize(first *int, def int) (int, error) {
	if first == nil {
		return def, nil
	}
	if *first < 0 {
		return 0, fault.Invalid("first", "first must not be negative")
	}
	return min(*first, MaxPageSize), nil
}

// limitRows caps a select at n rows (q.Apply(limitRows(n))). bun writes
// no LIMIT clause for Limit(0), which would read every row: a page of zero
// rows reads none. Every select of package db is capped through it, never
// with Limit itself (TestSelectsAreCappedThroughLimitRows).
func limitRows(n int) func(*bun.SelectQuery) *bun.SelectQuery {
	return func(q *bun.SelectQuery) *bun.SelectQuery {
		if n <= 0 {
			return q.Where("false")
		}
		return q.Limit(n)
	}
}

// Page is one page of a keyset-paginated list.
type Page[T any] struct {
	Items   []*T
	HasNext bool
}

// trim drops the look-ahead row fetched to learn whether another page follows.
func trim[T any](rows []*T, limit int) Page[T] {
	if len(rows) > limit {
		return Page[T]{Items: rows[:limit], HasNext: true}
	}
	return Page[T]{Items: rows}
}

// Cursors are opaque to clients: base64url of "<kind>:<position>". The kind
// makes a cursor of one list unusable with another.
func encodeCursor(kind, position string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(kind + ":" + position))
}

func decodeCursor(kind, cursor string) (string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return "", badCursor()
	}
	position, ok := strings.CutPrefix(string(raw), kind+":")
	if !ok {
		return "", badCursor()
	}
	return position, nil
}

func badCursor() error {
	return fault.Invalid("after", "after is not a cursor of this list; pass a pageInfo.endCursor from a previous page")
}

// timeIDCursor orders by (created_at, id), newest first.
type timeIDCursor struct {
	at time.Time
	id uuid.UUID
}

func encodeTimeID(kind string, at time.Time, id uuid.UUID) string {
	return encodeCursor(kind, at.UTC().Format(time.RFC3339Nano)+"|"+id.String())
}

func decodeTimeID(kind string, after *string) (*timeIDCursor, error) {
	if after == nil {
		return nil, nil
	}
	pos, err := decodeCursor(kind, *after)
	if err != nil {
		return nil, err
	}
	ts, id, ok := strings.Cut(pos, "|")
	if !ok {
		return nil, badCursor()
	}
	at, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil || !TimeInRange(at) {
		// A forged cursor may hold a time PostgreSQL cannot compare (year 0).
		return nil, badCursor()
	}
	uid, err := uuid.Parse(id)
	if err != nil {
		return nil, badCursor()
	}
	return &timeIDCursor{at: at.UTC(), id: uid}, nil
}

// decodeSeq decodes a cursor over a bigint identity ordered newest first; 0 means none.
func decodeSeq(kind string, after *string) (int64, error) {
	if after == nil {
		return 0, nil
	}
	pos, err := decodeCursor(kind, *after)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(pos, 10, 64)
	if err != nil || n <= 0 {
		return 0, badCursor()
	}
	return n, nil
}

// newestFirst runs one keyset page of q, whose rows (alias) are ordered
// newest first by (created_at, id), with cursors of the given kind.
//
// par, when not nil, holds the values q bound; the page then runs as a
// prepared statement, its cursor bound too.
func newestFirst[T any](ctx context.Context, q *bun.SelectQuery, par *Params, kind, alias string, p PageArgs) (Page[T], error) {
	limit, err := p.limit()
	if err != nil {
		return Page[T]{}, err
	}
	after, err := decodeTimeID(kind, p.After)
	if err != nil {
		return Page[T]{}, err
	}
	if after != nil {
		q = q.Where("(?.created_at, ?.id) < (?::timestamptz, ?::uuid)", bun.Ident(alias), bun.Ident(alias), par.Arg(after.at), par.Arg(after.id))
	}
	var rows []*T
	q = q.Model(&rows).OrderExpr("?.created_at DESC, ?.id DESC", bun.Ident(alias), bun.Ident(alias)).Apply(limitRows(limit + 1))
	if par != nil {
		err = scanBound(ctx, q, par)
	} else {
		err = q.Scan(ctx)
	}
	if err != nil {
		return Page[T]{}, fmt.Errorf("listing %ss: %w", kind, err)
	}
	return trim(rows, limit), nil
}

// countOf counts the rows of q (built, or failed with err, by a filter).
func countOf(ctx context.Context, q *bun.SelectQuery, err error, what string) (int, error) {
	if err != nil {
		return 0, err
	}
	n, err := q.Count(ctx)
	if err != nil {
		return 0, fmt.Errorf("counting %s: %w", what, err)
	}
	return n, nil
}
