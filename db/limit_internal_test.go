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

// TestSelectsAreCappedThroughLimitRows keeps every row cap of the package
// in limitRows: bun's Limit(0) writes no LIMIT at all, so a list asked for
// zero rows would read them all. The test reads the package's source.
func TestSelectsAreCappedThroughLimitRows(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	var bare []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		require.NoError(t, err)
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
