package graph

import (
	"reflect"
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

// boundedCounts are the counts a resolver computes that need no scan price,
// each with why: a count of rows that are made one at a time as entities,
// not a log that grows with every action, or of a capped set.
var boundedCounts = map[string]string{
	"MachineConnection.totalCount":  "the caller's own machines, each made by a createMachine",
	"RobotConnection.totalCount":    "the tenant's robots, each made by a createRobot",
	"WorkflowConnection.totalCount": "the tenant's workflows, each made by a createWorkflow",
	"ScheduleConnection.totalCount": "the tenant's schedules, at most db.MaxSchedules",
}

// Every Int a resolver of an object computes (outside mutations, whose
// counts are of what they wrote) is a count the database makes: it is in
// scans, paid for as a scan, or in boundedCounts with why it is cheap. The
// count of a machine's events was neither: one count of a million events
// took 0.84 s, and 50 of them in 6.7 KB took 24.5 s at complexity 150.
func TestCountsArePriced(t *testing.T) {
	schema := NewExecutableSchema(Config{Resolvers: &Resolver{}}).Schema()
	root := reflect.TypeFor[ResolverRoot]()
	seen := map[string]bool{}
	for i := range root.NumMethod() {
		typeName := root.Method(i).Name
		if typeName == "Mutation" || typeName == "Subscription" {
			continue
		}
		def := schema.Types[typeName]
		require.NotNil(t, def, typeName)
		resolvers := root.Method(i).Type.Out(0)
		for j := range resolvers.NumMethod() {
			name := resolvers.Method(j).Name
			var field *ast.FieldDefinition
			for _, f := range def.Fields {
				if strings.EqualFold(f.Name, name) { // apiKeyAudit is APIKeyAudit
					field = f
				}
			}
			require.NotNil(t, field, "%s.%s", typeName, name)
			if field.Type.Elem != nil || field.Type.Name() != "Int" {
				continue
			}
			key := typeName + "." + field.Name
			seen[key] = true
			_, scans := scans[key]
			_, bounded := boundedCounts[key]
			require.True(t, scans != bounded, "%s is a count a resolver makes: price it in scans (graph/cost.go) if it scans, or say why it is cheap in boundedCounts (exactly one of them)", key)
		}
	}
	for key := range boundedCounts {
		require.True(t, seen[key], "boundedCounts has %s, which is not a count a resolver makes", key)
	}
	for key := range scans {
		typeName, field, _ := strings.Cut(key, ".")
		require.NotNil(t, schema.Types[typeName].Fields.ForName(field), "scans has %s, which is not a field", key)
	}
}
