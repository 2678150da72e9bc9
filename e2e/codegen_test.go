package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// TestCodegen runs graphql-codegen with codegen.yml (the configuration the
// README documents) from both sources it names: the SDL `fleetgraph schema`
// prints and the running server's introspection. Each must give TypeScript
// types of the whole schema with Time and JSON mapped, and the two the same.
func TestCodegen(t *testing.T) {
	t.Parallel()
	node := requireClients(t)
	dir := t.TempDir()

	// `fleetgraph schema > schema.graphql`, as the README has it. What the
	// command prints is schema.graphqls, which it embeds and prints as it
	// is (TestCommands/Schema in package main checks that): it is read here
	// rather than compiling the whole server to print it.
	sdl, err := os.ReadFile(filepath.Join("..", "schema.graphqls"))
	require.NoError(t, err)
	sdlFile := filepath.Join(dir, "schema.graphql")
	require.NoError(t, os.WriteFile(sdlFile, sdl, 0o600))

	s := apitest.New(t, apitest.Options{Introspection: true})
	codegen := func(schema, out string) string {
		t.Helper()
		// A run takes seconds, but a minute on a machine busy with test suites.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, node, filepath.Join("node_modules", ".bin", "graphql-codegen"), "--config", "codegen.yml")
		cmd.Env = append(os.Environ(), "SCHEMA="+schema, "OUT="+out)
		output, err := cmd.CombinedOutput()
		require.NoError(t, err, "graphql-codegen with SCHEMA=%s:\n%s", schema, output)
		ts, err := os.ReadFile(out)
		require.NoError(t, err)
		return string(ts)
	}
	fromSDL := codegen(sdlFile, filepath.Join(dir, "from-sdl.ts"))
	fromIntrospection := codegen(s.URL+"/graphql", filepath.Join(dir, "from-introspection.ts"))

	for source, ts := range map[string]string{"SDL": fromSDL, "introspection": fromIntrospection} {
		for _, want := range []string{
			"Time: { input: string; output: string; }",
			"JSON: { input: { [key: string]: unknown }; output: { [key: string]: unknown }; }",
			"export type Query = {",
			"export type Mutation = {",
			"export type Subscription = {",
			"export type Machine = {",
			"export type Job = {",
			"createdAt: Scalars['Time']['output'];",
			"configuration: Scalars['JSON']['output'];",
		} {
			require.Contains(t, ts, want, "the types generated from %s", source)
		}
		require.NotContains(t, ts, "Scalars['Time']['output']: any", "from %s", source)
	}
	// graphql-codegen comments the Scalars map with each scalar's
	// description from the SDL only; everything else must be the same.
	require.Equal(t, withoutScalarComments(fromSDL), withoutScalarComments(fromIntrospection), "both sources describe one schema")
}

// withoutScalarComments drops the doc comments inside the generated
// Scalars type.
func withoutScalarComments(ts string) string {
	var out []string
	inScalars := false
	for _, l := range strings.Split(ts, "\n") {
		switch {
		case strings.HasPrefix(l, "export type Scalars = {"):
			inScalars = true
		case inScalars && l == "};":
			inScalars = false
		case inScalars && strings.HasPrefix(strings.TrimSpace(l), "/**"):
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}
