package graph

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/parser"
)

// The document caches are bounded by the text they hold, not only by
// entries: 1,000 parsed 1 MiB documents would pin gigabytes.
func TestDocumentCacheIsBoundedByBytes(t *testing.T) {
	ctx := context.Background()
	c := newDocumentCache(1000, 10<<10, 4<<10, func(_, q string) int { return len(q) })
	kib := strings.Repeat("x", 1<<10)
	for i := range 30 {
		c.Add(ctx, strconv.Itoa(i), kib)
		require.LessOrEqual(t, c.bytes, 10<<10)
	}
	require.Equal(t, 10, c.lru.Len(), "ten 1 KiB documents fill 10 KiB")
	_, ok := c.Get(ctx, "29")
	require.True(t, ok, "the newest is kept")
	_, ok = c.Get(ctx, "19")
	require.False(t, ok, "the oldest went first")

	// A document over the per-entry bound is not kept, nor does it evict.
	c.Add(ctx, "big", strings.Repeat("x", 5<<10))
	_, ok = c.Get(ctx, "big")
	require.False(t, ok)
	require.Equal(t, 10, c.lru.Len())

	// Replacing an entry counts its bytes once.
	for range 5 {
		c.Add(ctx, "29", kib)
	}
	require.Equal(t, 10<<10, c.bytes)
}

// The measure walks a bounded part of any document the token limit lets
// through: fragments on a cycle of spreads are not expanded (one through
// a field once recursed until the stack overflowed and took the process
// down), and a chain of fragments that each spread the next twice but
// select no field is cut off by its pairs of spreads, not walked 2^n times.
func TestDocumentMeasureIsBounded(t *testing.T) {
	chain := func(levels int, last string) string {
		var b strings.Builder
		b.WriteString("query { ...F0 }\n")
		for i := range levels {
			fmt.Fprintf(&b, "fragment F%d on Query { ...F%d ...F%d }\n", i, i+1, i+1)
		}
		fmt.Fprintf(&b, "fragment F%d on Query { %s }\n", levels, last)
		return b.String()
	}
	// nested is a fragment of depth nested inline fragments ending in an
	// undefined spread, spread 2^levels times through a doubling chain.
	nested := func(levels, depth int) string {
		var b strings.Builder
		b.WriteString(strings.Replace(chain(levels, "...G"), "query { ...F0 }\n", "query { ...F0 }\nfragment G on Query { ", 1))
		doc := b.String()
		inner := strings.Repeat("... { ", depth) + "...Nope" + strings.Repeat(" }", depth)
		return strings.Replace(doc, "fragment G on Query { ", "fragment G on Query { "+inner+" }\n", 1)
	}
	for _, tc := range []struct {
		name, doc         string
		cyclic, overLimit bool
	}{
		{"ACycleThroughAField", "query { ...F0 } fragment F0 on Query { me { ...F0 } }", true, false},
		{"ACycleThroughFields", "query { ...A } fragment A on Query { me { ...B } } fragment B on Query { robots { ...A } }", true, false},
		{"ASelfSpread", "query { ...F0 } fragment F0 on Query { ...F0 me { id } }", true, false},
		{"ADoublingChainEndingInACycle", chain(600, "...F0"), true, false},
		{"ADoublingChainEndingUndefined", chain(600, "...Nope"), false, true},
		{"ADoublingChainEndingEmpty", chain(600, "__typename"), false, true},
		{"NestedInlineFragmentsSpreadEverywhere", nested(7, 1500), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := parser.ParseQueryWithTokenLimit(&ast.Source{Input: tc.doc}, DefaultLimits.Tokens)
			require.NoError(t, err)
			m := newDocumentMeasure(doc, DefaultLimits.Fields)
			require.Equal(t, tc.cyclic, m.firstCyclic() != "")
			require.LessOrEqual(t, m.expanded(), DefaultLimits.Fields+1)
			n := m.comparisons(DefaultLimits.Overlaps)
			require.Equal(t, tc.overLimit, n > DefaultLimits.Overlaps || m.steps > m.maxSteps, "%d comparisons, %d steps", n, m.steps)
			require.LessOrEqual(t, m.steps, m.maxSteps+1, "the walk stops at its bound")
		})
	}
}
