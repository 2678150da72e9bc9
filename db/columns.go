package db

import (
	"slices"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/schema"
)

// narrowed makes q, a select of its model's table, read only keys and cols
// when cols is not nil and names columns of that table only; otherwise it
// reads every column, as bun does by default. Callers pass the columns a
// GraphQL selection will read (see graph's columnsOf), so that a list does
// not fetch and decode what no one asked for.
func narrowed(q *bun.SelectQuery, keys, cols []string) *bun.SelectQuery {
	if want := columnsToRead(q.GetModel().(bun.TableModel).Table(), keys, cols); want != nil {
		return q.Column(want...)
	}
	return q
}

// columnsToRead is what narrowed reads of table: keys and cols, or nil
// (every column) when cols is nil or names anything that is not a column
// of the table (read them all rather than guess).
func columnsToRead(table *schema.Table, keys, cols []string) []string {
	if cols == nil {
		return nil
	}
	for _, c := range cols {
		if f, ok := table.FieldMap[c]; !ok || f.Name != c {
			return nil
		}
	}
	want := slices.Concat(keys, cols)
	slices.Sort(want)
	return slices.Compact(want)
}
