package graph

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2/ast"
)

// Every list of objects, every connection and every list of scalars that
// takes arguments in the schema has a size in listSizes, and every entry names a field that exists: a new list field
// cannot be forgotten by the cost estimate.
func TestListSizesCoverTheSchema(t *testing.T) {
	schema := NewExecutableSchema(Config{Resolvers: &Resolver{}}).Schema()
	need := map[string]bool{}
	for name, def := range schema.Types {
		if strings.HasPrefix(name, "__") || def.Kind != ast.Object {
			continue
		}
		for _, f := range def.Fields {
			if strings.HasPrefix(f.Name, "__") {
				continue
			}
			elem := schema.Types[f.Type.Name()]
			composite := elem != nil && (elem.Kind == ast.Object || elem.Kind == ast.Interface || elem.Kind == ast.Union)
			if isConnection(f.Type) || (f.Type.Elem != nil && (composite || len(f.Arguments) > 0)) {
				need[name+"."+f.Name] = true
			}
		}
	}
	for key := range need {
		_, ok := listSizes[key]
		require.True(t, ok, "%s is a list or connection without an entry in listSizes", key)
	}
	for key, size := range listSizes {
		require.True(t, need[key], "listSizes has %s, which is not a list of objects, a connection or a list with arguments", key)
		if !strings.HasSuffix(key, ".edges") {
			require.Positive(t, size.max, "%s needs a maximum", key)
		}
	}
}
