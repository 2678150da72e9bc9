package graph

import (
	"context"
	"net/http"
	"sync"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/errcode"
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
	"github.com/vektah/gqlparser/v2/parser"

	"fleetgraph/fault"
	"fleetgraph/graph/scalar"
)

// documentLimit bounds the work that validating a document can cost, before
// gqlgen validates it. The token limit already bounds the document's size;
// what it does not bound is what validation makes of it:
//
//   - fragments expand: a 1 KB document whose fragments each spread the
//     next one twice selects 2^24 fields, so documentLimit counts the
//     fields each fragment expands to once (memoised) and refuses a
//     document whose operations and fragments expand to more than fields;
//   - the rule that fields with one response name must be mergeable
//     compares them pairwise (and every pair of fragment spreads in a
//     selection set), so documentLimit counts those comparisons over the
//     merged selection sets, as validation and execution merge them, and
//     refuses more than overlaps.
//
// A document with a fragment on a cycle of spreads is refused at once, as
// validation would refuse it (NoFragmentCycles) after walking the cycle
// from every operation and fragment (seconds for a few hundred); neither
// count expands such a fragment. The comparisons walk each fragment where
// it is used, so they stop past stepsPerField selections per field of the
// limit (FIELD_LIMIT_EXCEEDED: a fragment of a thousand nested inline
// fragments, spread in a hundred places, selects no field but costs its
// size at each place, in validation too); and they stop as
// soon as they pass overlaps, counting each pair as they meet it: every
// spread met in a merged group pairs with those met before it, so a chain
// of fragments that each spread the next twice, which selects no field
// (it ends in an undefined fragment) and so passes the field count, is
// cut off after a few hundred spreads rather than walked 2^n times. So
// both cost time bounded by the document and the limits, and nothing
// recurses without end. Documents gqlgen has validated before
// (its query cache) are not measured again: they passed here on their way in.
type documentLimit struct {
	tokens, fields, overlaps int
	validated                graphql.Cache[*ast.QueryDocument]
}

var _ interface {
	graphql.HandlerExtension
	graphql.OperationParameterMutator
} = documentLimit{}

func (documentLimit) ExtensionName() string                   { return "DocumentLimit" }
func (documentLimit) Validate(graphql.ExecutableSchema) error { return nil }

func (l documentLimit) MutateOperationParameters(ctx context.Context, params *graphql.RawParams) *gqlerror.Error {
	if ctx.Err() != nil {
		return clientGone()
	}
	if params.Query == "" {
		return nil
	}
	if _, ok := l.validated.Get(ctx, params.Query); ok {
		return nil
	}
	doc, err := parser.ParseQueryWithTokenLimit(&ast.Source{Input: params.Query}, l.tokens)
	if err != nil {
		return nil // gqlgen parses it again and reports the error
	}
	m := newDocumentMeasure(doc, l.fields)
	if name := m.firstCyclic(); name != "" {
		// Validation refuses it too (NoFragmentCycles), but only after
		// walking the cycle from every operation and fragment: seconds
		// for a few hundred fragments.
		return limitError(errcode.ValidationFailed, "Cannot spread fragment %q within itself.", fault.Excerpt(name, 64))
	}
	if n := m.expanded(); n > l.fields {
		return limitError("FIELD_LIMIT_EXCEEDED", "the document selects over %d fields once its fragments are expanded; the limit is %d", l.fields, l.fields)
	}
	n := m.comparisons(l.overlaps)
	if m.steps > m.maxSteps {
		return limitError("FIELD_LIMIT_EXCEEDED", "the document's selections (fields, fragments and spreads) number over %d once its fragments are expanded where they are used; the limit is %d", m.maxSteps, m.maxSteps)
	}
	if n > l.overlaps {
		return limitError("OVERLAP_LIMIT_EXCEEDED", "the document repeats fields under one response name (or fragment spreads in one selection set) too often: validating it would take over %d comparisons; the limit is %d", l.overlaps, l.overlaps)
	}
	return nil
}

// documentMeasure measures one parsed, unvalidated document: fragments may
// be undefined, duplicated or cyclic (validation refuses those later).
type documentMeasure struct {
	doc     *ast.QueryDocument
	frags   map[string]*ast.FragmentDefinition
	size    map[string]int // expanded fields of a fragment
	ceiling int
	// cyclic names the fragments on a cycle of spreads (through fields
	// or not): never expanded, since their expansion has no end.
	cyclic map[string]bool
	// steps counts the selections the comparisons walked, which stop past
	// maxSteps: a fragment of many nested inline fragments (no field)
	// spread in many places costs its size at each.
	steps, maxSteps int
}

// stepsPerField is how many selections (fields, inline fragments, spreads)
// a document may expand to per field of the field limit.
const stepsPerField = 50

// firstCyclic names a fragment on a cycle of spreads, the first in the
// document, or is "" when there is none.
func (m *documentMeasure) firstCyclic() string {
	for _, f := range m.doc.Fragments {
		if m.cyclic[f.Name] {
			return f.Name
		}
	}
	return ""
}

func newDocumentMeasure(doc *ast.QueryDocument, limit int) *documentMeasure {
	m := &documentMeasure{doc: doc, frags: map[string]*ast.FragmentDefinition{}, size: map[string]int{}, ceiling: limit + 1, maxSteps: limit * stepsPerField}
	for _, f := range doc.Fragments {
		if _, dup := m.frags[f.Name]; !dup {
			m.frags[f.Name] = f
		}
	}
	m.cyclic = cyclicFragments(m.frags)
	return m
}

// cyclicFragments returns the fragments that spread themselves, directly
// or through others, anywhere in their selections: the members of the
// spread graph's cycles (Tarjan's strongly connected components).
func cyclicFragments(frags map[string]*ast.FragmentDefinition) map[string]bool {
	spreads := make(map[string][]string, len(frags))
	for name, f := range frags {
		var walk func(ast.SelectionSet)
		walk = func(set ast.SelectionSet) {
			for _, sel := range set {
				switch s := sel.(type) {
				case *ast.Field:
					walk(s.SelectionSet)
				case *ast.InlineFragment:
					walk(s.SelectionSet)
				case *ast.FragmentSpread:
					if frags[s.Name] != nil {
						spreads[name] = append(spreads[name], s.Name)
					}
				}
			}
		}
		walk(f.SelectionSet)
	}
	cyclic := map[string]bool{}
	index, low := map[string]int{}, map[string]int{}
	onStack := map[string]bool{}
	var stack []string
	var visit func(string)
	visit = func(v string) {
		index[v], low[v] = len(index), len(index)
		stack = append(stack, v)
		onStack[v] = true
		for _, w := range spreads[v] {
			if _, seen := index[w]; !seen {
				visit(w)
				low[v] = min(low[v], low[w])
			} else if onStack[w] {
				low[v] = min(low[v], index[w])
			}
			if w == v {
				cyclic[v] = true // spreads itself
			}
		}
		if low[v] != index[v] {
			return
		}
		var component []string
		for {
			w := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			onStack[w] = false
			component = append(component, w)
			if w == v {
				break
			}
		}
		if len(component) > 1 {
			for _, w := range component {
				cyclic[w] = true
			}
		}
	}
	for name := range frags {
		if _, seen := index[name]; !seen {
			visit(name)
		}
	}
	return cyclic
}

// expanded returns the fields of every operation and every fragment
// definition with their spreads expanded (validation visits each), capped
// just above the limit.
func (m *documentMeasure) expanded() int {
	n := 0
	for _, op := range m.doc.Operations {
		n = min(n+m.setSize(op.SelectionSet), m.ceiling)
	}
	for _, f := range m.doc.Fragments {
		n = min(n+m.setSize(f.SelectionSet), m.ceiling)
	}
	return n
}

func (m *documentMeasure) setSize(set ast.SelectionSet) int {
	n := 0
	for _, sel := range set {
		switch s := sel.(type) {
		case *ast.Field:
			n += 1 + m.setSize(s.SelectionSet)
		case *ast.InlineFragment:
			n += m.setSize(s.SelectionSet)
		case *ast.FragmentSpread:
			n += m.fragmentSize(s.Name)
		}
		if n >= m.ceiling {
			return m.ceiling
		}
	}
	return n
}

func (m *documentMeasure) fragmentSize(name string) int {
	if n, ok := m.size[name]; ok {
		return n
	}
	f := m.frags[name]
	if f == nil || m.cyclic[name] {
		return 0 // validation refuses the document
	}
	n := m.setSize(f.SelectionSet)
	m.size[name] = n
	return n
}

// comparisons counts the pairs the overlapping-fields rule may compare in
// every operation and fragment definition, stopping once over limit. Call
// it only once expanded is within bounds: it walks the expansion.
func (m *documentMeasure) comparisons(limit int) int {
	n := 0
	for _, op := range m.doc.Operations {
		if n = m.merged([]ast.SelectionSet{op.SelectionSet}, n, limit); n > limit || m.steps > m.maxSteps {
			return n
		}
	}
	for _, f := range m.doc.Fragments {
		if n = m.merged([]ast.SelectionSet{f.SelectionSet}, n, limit); n > limit || m.steps > m.maxSteps {
			return n
		}
	}
	return n
}

// merged adds to n the comparisons within the selection sets of one merged
// group (the sub-selections of fields that share a response name): pairs
// of same-named fields (fragments expanded) and pairs of fragment spreads,
// which the rule compares even when undefined; then recurses into each
// group of same-named fields. Each pair is counted as it is met (a field
// pairs with the same-named ones before it, a spread with the spreads
// before it), and the walk stops once n is over limit.
func (m *documentMeasure) merged(sets []ast.SelectionSet, n, limit int) int {
	groups := map[string][]ast.SelectionSet{}
	var order []string
	counts := map[string]int{}
	spreads := 0
	var collect func(set ast.SelectionSet)
	collect = func(set ast.SelectionSet) {
		for _, sel := range set {
			if n > limit || m.steps > m.maxSteps {
				return
			}
			m.steps++
			switch s := sel.(type) {
			case *ast.Field:
				name := s.Alias
				if name == "" {
					name = s.Name
				}
				if counts[name] == 0 {
					order = append(order, name)
				}
				n += counts[name]
				counts[name]++
				if len(s.SelectionSet) > 0 {
					groups[name] = append(groups[name], s.SelectionSet)
				}
			case *ast.InlineFragment:
				collect(s.SelectionSet)
			case *ast.FragmentSpread:
				n += spreads
				spreads++
				if f := m.frags[s.Name]; f != nil && !m.cyclic[s.Name] {
					collect(f.SelectionSet)
				}
			}
		}
	}
	for _, set := range sets {
		if collect(set); n > limit || m.steps > m.maxSteps {
			return n
		}
	}
	for _, name := range order {
		if sub := groups[name]; len(sub) > 0 {
			if n = m.merged(sub, n, limit); n > limit || m.steps > m.maxSteps {
				return n
			}
		}
	}
	return n
}

// bounded keeps a response within its budgets: a response whose data grew
// past scalar.MaxResponseBytes lost values on the way (see there) and
// becomes one error, and at most maxErrors errors are listed, the last of
// them saying how many more there were.
func bounded(resp *graphql.Response, maxErrors int) *graphql.Response {
	if resp == nil {
		return nil
	}
	if len(resp.Data) > scalar.MaxResponseBytes {
		err := limitError("RESPONSE_TOO_LARGE", "the response would be over %d bytes: ask for smaller pages or fewer fields", scalar.MaxResponseBytes)
		err.Extensions = map[string]any{"code": "BAD_USER_INPUT", "reason": "RESPONSE_TOO_LARGE"}
		resp.Data = []byte("null")
		resp.Errors = gqlerror.List{err}
	}
	resp.Errors = firstOf(resp.Errors, maxErrors)
	return resp
}

// firstOf keeps at most max of errs, the last of them saying how many more
// there were. That error carries its extensions as presented, since it
// may be added after the presenter has run.
func firstOf(errs gqlerror.List, max int) gqlerror.List {
	if len(errs) <= max {
		return errs
	}
	more := limitError("TOO_MANY_ERRORS", "%d more errors were left out", len(errs)-(max-1))
	more.Extensions = map[string]any{"code": "BAD_USER_INPUT", "reason": "TOO_MANY_ERRORS"}
	return append(errs[:max-1:max-1], more)
}

// firstErrors is the executor every transport is given (errorsBounded): a
// request refused before execution has its errors presented one by one,
// and the presenter's work on each grows with the query (hideSchemaNames
// looks for names in it), so at most max are presented, the last of them
// counting the rest. A 1 MB document can carry thousands of validation
// errors; only max of them would be sent anyway (bounded).
type firstErrors struct {
	graphql.GraphExecutor
	max int
}

// DispatchError implements graphql.GraphExecutor.
func (e firstErrors) DispatchError(ctx context.Context, list gqlerror.List) *graphql.Response {
	return e.GraphExecutor.DispatchError(ctx, firstOf(list, e.max))
}

// errorsBounded gives a transport the firstErrors executor.
type errorsBounded struct {
	graphql.Transport
	max int
}

// Do implements graphql.Transport.
func (t errorsBounded) Do(w http.ResponseWriter, r *http.Request, exec graphql.GraphExecutor) {
	t.Transport.Do(w, r, firstErrors{GraphExecutor: exec, max: t.max})
}

// documentCache is an LRU cache of documents (gqlgen's validated query
// cache, keyed by the query, and the automatic persisted queries, whose
// values are queries) bounded by entries and by the bytes of query text it
// holds: a parsed document takes memory in proportion to its text, so
// 1,000 entries of 1 MiB documents would pin gigabytes. A document over
// maxEntry bytes is not remembered: it is parsed and validated again each
// time, or its client sends a persisted query whole, both of which work.
type documentCache[T any] struct {
	mu       sync.Mutex
	lru      *simplelru.LRU[string, T]
	size     func(key string, v T) int
	bytes    int
	maxBytes int
	maxEntry int
}

// newDocumentCache holds at most entries documents of at most maxBytes in
// all and maxEntry each, sized by size.
func newDocumentCache[T any](entries, maxBytes, maxEntry int, size func(key string, v T) int) *documentCache[T] {
	c := &documentCache[T]{size: size, maxBytes: maxBytes, maxEntry: maxEntry}
	c.lru, _ = simplelru.NewLRU[string, T](entries, func(key string, v T) { c.bytes -= size(key, v) }) // entries > 0
	return c
}

// Get implements graphql.Cache.
func (c *documentCache[T]) Get(_ context.Context, key string) (T, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Get(key)
}

// Add implements graphql.Cache.
func (c *documentCache[T]) Add(_ context.Context, key string, v T) {
	n := c.size(key, v)
	if n > c.maxEntry {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(key) // replaced: its bytes leave through the eviction callback
	c.lru.Add(key, v)
	c.bytes += n
	for c.bytes > c.maxBytes {
		c.lru.RemoveOldest()
	}
}
