package main

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/validator"
)

// readmeBlock is one fenced code block of README.md.
var readmeBlock = regexp.MustCompile("(?ms)^```(graphql|json)\n(.*?)^```")

// Every GraphQL example in the README is valid against the schema, and one
// that declares $variables is followed by a Variables JSON block (shared by
// the examples just before it) that gives each of them a value of its type,
// and nothing else.
func TestReadmeExamples(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	schema, err := gqlparser.LoadSchema(&ast.Source{Name: "schema.graphqls", Input: schemaSDL})
	require.NoError(t, err)

	var pending []*ast.OperationDefinition // examples waiting for their variables
	operations, withVariables := 0, 0
	for _, m := range readmeBlock.FindAllStringSubmatch(string(readme), -1) {
		kind, body := m[1], m[2]
		if kind == "json" {
			require.NotEmpty(t, pending, "a JSON block with no example before it:\n%s", body)
			var vars map[string]any
			require.NoError(t, json.Unmarshal([]byte(body), &vars), "Variables must be a JSON object:\n%s", body)
			used := map[string]bool{}
			for _, op := range pending {
				subset := map[string]any{}
				for _, v := range op.VariableDefinitions {
					used[v.Variable] = true
					if val, ok := vars[v.Variable]; ok {
						subset[v.Variable] = val
					}
				}
				_, gqlErr := validator.VariableValues(schema, op, subset)
				if gqlErr != nil {
					t.Fatalf("variables %s do not fit (%s):\n%s", body, gqlErr, op.Position.Src.Input)
				}
			}
			for name := range vars {
				require.True(t, used[name], "variable %q is not declared by the examples before:\n%s", name, body)
			}
			pending = nil
			continue
		}
		if len(pending) > 0 && !declaresVariables(t, schema, body) {
			t.Fatalf("these examples declare $variables but no Variables JSON follows them:\n%s", pending[0].Position.Src.Input)
		}
		doc, errs := gqlparser.LoadQueryWithRules(schema, body, nil)
		if errs != nil {
			t.Fatalf("README example is not valid (%s):\n%s", errs, body)
		}
		for _, op := range doc.Operations {
			operations++
			if len(op.VariableDefinitions) > 0 {
				withVariables++
				pending = append(pending, op)
			}
		}
	}
	require.Empty(t, pending, "the last examples declare $variables but no Variables JSON follows them")
	require.Greater(t, operations, 20)
	require.Greater(t, withVariables, 8)
}

func declaresVariables(t *testing.T, schema *ast.Schema, query string) bool {
	t.Helper()
	doc, errs := gqlparser.LoadQueryWithRules(schema, query, nil)
	if errs != nil {
		t.Fatalf("README example is not valid (%s):\n%s", errs, query)
	}
	for _, op := range doc.Operations {
		if len(op.VariableDefinitions) > 0 {
			return true
		}
	}
	return false
}
