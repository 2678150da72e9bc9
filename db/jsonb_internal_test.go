package db

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestJSONBColumnsAreRawJSON keeps every jsonb column of the package's
// models that holds a client's JSON a RawJSON (the server's own typed
// values, such as a delivery's attempts, may be structs): decoded into Go
// maps, a stored number past float64's
// range failed the read-back of the very row just written (INTERNAL), and
// one past its precision lost digits. The test reads the package's source.
func TestJSONBColumnsAreRawJSON(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	var decoded []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		require.NoError(t, err)
		ast.Inspect(f, func(n ast.Node) bool {
			field, ok := n.(*ast.Field)
			if !ok || field.Tag == nil || !strings.Contains(field.Tag.Value, "type:jsonb") {
				return true
			}
			if holdsClientJSON(field.Type) {
				decoded = append(decoded, fset.Position(field.Pos()).String())
			}
			return true
		})
	}
	require.Empty(t, decoded, "jsonb columns are RawJSON, kept as PostgreSQL sends them")
}

// holdsClientJSON reports whether a column's Go type decodes arbitrary
// JSON: a map, any, or a slice of either.
func holdsClientJSON(t ast.Expr) bool {
	switch t := t.(type) {
	case *ast.MapType, *ast.InterfaceType:
		return true
	case *ast.Ident:
		return t.Name == "any"
	case *ast.ArrayType:
		return holdsClientJSON(t.Elt)
	}
	return false
}
