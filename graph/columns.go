package graph

import (
	"context"
	"slices"
	"strings"
	"sync"
	"unicode"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
)

// jobColumns names the jobs columns the operation in ctx can read (see
// columnsOf).
func jobColumns(ctx context.Context) []string {
	return columnsOf(ctx, "Job", "nextLease", "workflow", "robot", "logs")
}

// loaderColumns is columnsOf for the loaders' fetches (dataloaders.Stores):
// the types whose fetches narrow, with their relation fields.
func loaderColumns(ctx context.Context, typ string) []string {
	switch typ {
	case "Job":
		return jobColumns(ctx)
	case "Robot":
		return robotColumns(ctx)
	case "Workflow":
		return columnsOf(ctx, "Workflow", "versions", "assignments", "nodeOverrides")
	}
	return nil
}

// robotColumns names the robots columns the operation in ctx can read.
func robotColumns(ctx context.Context) []string {
	return columnsOf(ctx, "Robot", "currentJobs", "heartbeats")
}

// columnsOf names the columns the operation in ctx can read of objects of
// GraphQL type typ: the column behind every field of typ it selects
// anywhere (fragments included, so that every object of the type the
// operation shows is covered, whichever field read it first). relations
// are typ's fields that are not columns (resolvers of relations, whose
// keys the store always reads). The store adds its keys. nil (every
// column) when ctx holds no operation.
func columnsOf(ctx context.Context, typ string, relations ...string) []string {
	if !graphql.HasOperationContext(ctx) {
		return nil
	}
	op := graphql.GetOperationContext(ctx).Operation
	if op == nil {
		return nil
	}
	fields := map[string]bool{}
	selectedOn(op.SelectionSet, typ, fields, map[*ast.FragmentDefinition]bool{})
	cols := make([]string, 0, len(fields))
	for f := range fields {
		if f != "__typename" && !slices.Contains(relations, f) {
			cols = append(cols, snakeCase(f))
		}
	}
	return cols
}

// selectedOn adds to fields the names of the fields selected on objects
// of type typ in set and below.
func selectedOn(set ast.SelectionSet, typ string, fields map[string]bool, seen map[*ast.FragmentDefinition]bool) {
	for _, sel := range set {
		switch s := sel.(type) {
		case *ast.Field:
			if s.ObjectDefinition != nil && s.ObjectDefinition.Name == typ {
				fields[s.Name] = true
			}
			selectedOn(s.SelectionSet, typ, fields, seen)
		case *ast.InlineFragment:
			selectedOn(s.SelectionSet, typ, fields, seen)
		case *ast.FragmentSpread:
			if s.Definition != nil && !seen[s.Definition] {
				seen[s.Definition] = true
				selectedOn(s.Definition.SelectionSet, typ, fields, seen)
			}
		}
	}
}

// snakeCase is a GraphQL field's column name: leaseExpiresAt is
// lease_expires_at. Names come from the schema (validation refuses any
// other), so the cache of those computed stays as small as the schema.
func snakeCase(name string) string {
	if c, ok := snakeCases.Load(name); ok {
		return c.(string)
	}
	var b strings.Builder
	for i, r := range name {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	c := b.String()
	snakeCases.Store(name, c)
	return c
}

// snakeCases are the column names snakeCase computed, by field name.
var snakeCases sync.Map
