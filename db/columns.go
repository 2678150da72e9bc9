package db

import (
	"slices"

	"github.com/uptrace/bun"
)

// narrowed makes q, a select of its model's table, read only keys and cols
// when cols is not nil and names columns of that table only; otherwise it
// reads every column, as bun does by default. Callers pass the columns a
// GraphQL selection will read (see graph's columnsOf), so that a list does
// not fetch and decode what no one asked for.
func narrowed(q *bun.SelectQuery, keys, cols []string) *bun.SelectQuery {
	if cols == nil {
		return q
	}
	table := q.GetModel().(bun.TableModel).Table()
	for _, c := range cols {
		if f, ok := table.FieldMap[c]; !ok || f.Name != c {
			return q // not a column: read them all rather than guess
		}
	}
	want := slices.Concat(keys, cols)
	slices.Sort(want)
	return q.Column(slices.Compact(want)...)
}
