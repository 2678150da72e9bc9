package db

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// TestModelsListsEveryTable checks that models names every struct of
// package db that is a table (`bun:"table:..."`), so that none is left
// with the slower UUID scan.
func TestModelsListsEveryTable(t *testing.T) {
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	var tables []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.SkipObjectResolution)
		require.NoError(t, err)
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			if st, ok := ts.Type.(*ast.StructType); ok {
				for _, fl := range st.Fields.List {
					if fl.Tag != nil && strings.Contains(fl.Tag.Value, `bun:"table:`) {
						tables = append(tables, ts.Name.Name)
					}
				}
			}
			return true
		})
	}
	var listed []string
	for _, m := range models {
		listed = append(listed, reflect.TypeOf(m).Elem().Name())
	}
	require.NotEmpty(t, tables)
	require.ElementsMatch(t, tables, listed)
}

// TestUUIDScan checks the UUID columns' scanner: text parses without an
// allocation into a UUID and into a pointer to one, NULL leaves a pointer
// nil, and anything else gets bun's scanner and its error.
func TestUUIDScan(t *testing.T) {
	d := pgdialect.New()
	fastUUIDScans(d)
	table := d.Tables().Get(reflect.TypeFor[Job]())
	id, robot := table.FieldMap["id"], table.FieldMap["robot_id"]
	want := uuid.New()
	text := []byte(want.String())

	var j Job
	strct := reflect.ValueOf(&j).Elem()
	require.NoError(t, id.ScanValue(strct, text))
	require.Equal(t, want, j.ID)
	require.NoError(t, robot.ScanValue(strct, text))
	require.Equal(t, want, *j.RobotID)
	var fresh Job
	require.NoError(t, robot.ScanValue(reflect.ValueOf(&fresh).Elem(), nil))
	require.Nil(t, fresh.RobotID, "NULL leaves no robot")

	j.ID = uuid.Nil
	require.NoError(t, id.ScanValue(strct, want[:]), "16 bytes are bun's as before")
	require.Equal(t, want, j.ID)
	require.Error(t, id.ScanValue(strct, []byte(strings.Repeat("x", 36))))
	require.Error(t, id.ScanValue(strct, 42))

	var src any = text // as the driver hands it over, boxed
	require.Zero(t, testing.AllocsPerRun(100, func() {
		if err := id.ScanValue(strct, src); err != nil {
			t.Fatal(err)
		}
	}), "a UUID's text scans without an allocation")
}
