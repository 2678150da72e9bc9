// Command sequential rewrites graph/generated.go after gqlgen, for speed,
// in two places that gqlgen v0.17.95 offers no option for. `go generate
// ./...` runs it right after gqlgen (server.go).
//
//   - Lists marshal their elements one after another (graph.marshalList)
//     instead of in a goroutine each (graphql.MarshalSliceConcurrently,
//     which gqlgen always generates; its worker_limit option only caps how
//     many run at once).
//   - A scalar field's context is graph.scalarFieldContext, one allocation,
//     instead of graphql.NewScalarFieldContext with an error and a closure
//     allocated per field for a child lookup that validation makes
//     unreachable.
//   - Every object computes its response path (an allocation per path
//     element) for its @defer fragments only when it has some:
//     ProcessDeferredGroup returns at once for none, but gqlgen computes
//     the path before calling it, for every object of every response.
//
// It fails when it finds nothing to rewrite, so a gqlgen upgrade that
// changes the generated code is noticed rather than silently undone.
package main

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
)

const file = "graph/generated.go"

// rewrite is one replacement: from (a pattern) becomes to; done recognises
// a file already rewritten.
type rewrite struct {
	from *regexp.Regexp
	to   string
	done string
}

var rewrites = []rewrite{
	{regexp.MustCompile(regexp.QuoteMeta("graphql.MarshalSliceConcurrently(ctx, len(v), 0, false, func(")),
		"marshalList(ctx, len(v), func(", "marshalList(ctx, len(v), func("},
	{regexp.MustCompile(`graphql\.NewScalarFieldContext\(("[A-Za-z_]+"), field, (true|false), (true|false), errors\.New\("field of type [A-Za-z_]+ does not have child fields"\)\)`),
		"scalarFieldContext($1, field, $2, $3)", "scalarFieldContext("},
	{regexp.MustCompile(`\n\tec\.ProcessDeferredGroup\(graphql\.DeferredGroup\{\n\t\tDefers:   deferLabelToView,\n\t\tPath:     graphql\.GetPath\(ctx\),\n\t\tFieldSet: deferredFieldSet,\n\t\tContext:  ctx,\n\t\}\)\n`),
		"\n\tif len(deferLabelToView) > 0 {\n\t\tec.ProcessDeferredGroup(graphql.DeferredGroup{\n\t\t\tDefers:   deferLabelToView,\n\t\t\tPath:     graphql.GetPath(ctx),\n\t\t\tFieldSet: deferredFieldSet,\n\t\t\tContext:  ctx,\n\t\t})\n\t}\n",
		"\tif len(deferLabelToView) > 0 {\n"},
}

func main() {
	src, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sequential:", err)
		os.Exit(1)
	}
	for _, r := range rewrites {
		if !r.from.Match(src) && !bytes.Contains(src, []byte(r.done)) {
			fmt.Fprintf(os.Stderr, "sequential: %s has nothing matching %s to rewrite: did gqlgen change its generated code?\n", file, r.from)
			os.Exit(1)
		}
		src = r.from.ReplaceAll(src, []byte(r.to))
	}
	if err := os.WriteFile(file, src, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "sequential:", err)
		os.Exit(1)
	}
}
