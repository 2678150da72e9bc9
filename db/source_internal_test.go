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

// These tests read the package's own source, for rules the compiler does
// not keep: where a bun call may be made, what type a column may have.

// packageSource parses the package's non-test files.
func packageSource(t *testing.T) (*token.FileSet, []*ast.File) {
	t.Helper()
	names, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	var files []*ast.File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		require.NoError(t, err)
		files = append(files, f)
	}
	return fset, files
}

// TestSelectsAreCappedThroughLimitRows keeps every row cap of the package
// in limitRows: bun's Limit(0) writes no LIMIT at all, so a list asked for
// zero rows would read them all.
func TestSelectsAreCappedThroughLimitRows(t *testing.T) {
	t.Parallel()
	fset, files := packageSource(t)
	var bare []string
	for _, f := range files {
		for _, decl := range f.Decls {
			if fn, ok := decl.(*ast.FuncDecl); ok && fn.Name.Name == "limitRows" {
				continue
			}
			ast.Inspect(decl, func(n ast.Node) bool {
				if call, ok := n.(*ast.CallExpr); ok {
					if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Limit" {
						bare = append(bare, fset.Position(call.Pos()).String())
					}
				}
				return true
			})
		}
	}
	require.Empty(t, bare, "cap selects with q.Apply(limitRows(n)), not Limit")
}

// TestJSONBColumnsAreRawJSON keeps every jsonb column of the package's
// models that holds a client's JSON a RawJSON (the server's own typed
// values, such as a delivery's attempts, may be structs): decoded into Go
// maps, a stored number past float64's range failed the read-back of the
// very row just written (INTERNAL), and one past its precision lost digits.
func TestJSONBColumnsAreRawJSON(t *testing.T) {
	t.Parallel()
	fset, files := packageSource(t)
	var decoded []string
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			field, ok := n.(*ast.Field)
			if ok && field.Tag != nil && strings.Contains(field.Tag.Value, "type:jsonb") && holdsClientJSON(field.Type) {
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
