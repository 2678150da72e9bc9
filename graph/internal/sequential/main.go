// Command sequential rewrites graph/generated.go after gqlgen so that lists
// marshal their elements one after another (graph.marshalList) instead of
// in a goroutine each (graphql.MarshalSliceConcurrently, which gqlgen
// v0.17.95 always generates; its worker_limit option only caps how many run
// at once). `go generate ./...` runs it right after gqlgen (server.go).
// It fails when it finds nothing to rewrite, so a gqlgen upgrade that
// changes the generated call is noticed rather than silently undone.
package main

import (
	"bytes"
	"fmt"
	"os"
)

const (
	file = "graph/generated.go"
	from = "graphql.MarshalSliceConcurrently(ctx, len(v), 0, false, func("
	to   = "marshalList(ctx, len(v), func("
)

func main() {
	src, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sequential:", err)
		os.Exit(1)
	}
	n := bytes.Count(src, []byte(from))
	if n == 0 && !bytes.Contains(src, []byte(to)) {
		fmt.Fprintf(os.Stderr, "sequential: %s has no %q to rewrite: did gqlgen change how it marshals lists?\n", file, from)
		os.Exit(1)
	}
	if err := os.WriteFile(file, bytes.ReplaceAll(src, []byte(from), []byte(to)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "sequential:", err)
		os.Exit(1)
	}
}
