// Command sequential rewrites graph/generated.go after gqlgen, for speed,
// where gqlgen v0.17.95 offers no option. `go generate ./...` runs it
// right after gqlgen (server.go).
//
//   - Lists marshal their elements one after another (graph.marshalList)
//     instead of in a goroutine each (graphql.MarshalSliceConcurrently,
//     which gqlgen always generates; its worker_limit option only caps how
//     many run at once).
//   - A plain field (a struct field of a scalar type, no resolver, no
//     directive) is marshalled straight from the struct (Strings and
//     enums, IDs and Times by a pointer into it, scalar.StringAt and
//     friends, so that no value is boxed either): gqlgen resolves
//     it like any other, through a field context, a context value, three
//     closures and the value boxed in an interface, some six allocations
//     for every scalar of every response. Only fields that cannot error
//     qualify: those of a type (or, nullable, pointing to a type) that
//     has no nil and whose marshaller reports nothing (an error would need
//     the field's own context for its path; see noNil). This
//     skips field interceptors, which the server registers none of
//     (graph.NewHandler says so where it adds extensions).
//   - Any other scalar field's context is graph.scalarFieldContext, one
//     allocation, instead of graphql.NewScalarFieldContext with an error
//     and a closure allocated per field for a child lookup that validation
//     makes unreachable.
//   - An object makes its set of deferred fields, and computes its response
//     path for them, only when it has some (graph.deferring): gqlgen made
//     the set and a map for every object of every response, and computed
//     the path before ProcessDeferredGroup returned at once for none.
//   - An object is returned as graph.object, which marshals its fields
//     without graphql.FieldSet's map per object and allocation per field.
//     Its FieldSet, its values and the object returned are one allocation
//     (graph.objectSet) instead of three.
//   - An operation does not build gqlgen's map of input unmarshallers (a
//     map and a method value per input type, some two dozen allocations
//     per request), which only graphql.UnmarshalInputFromContext reads.
//     Nothing here calls it, and the rewrite fails if anything in the
//     module starts to.
//
// It fails when a rewrite finds nothing to rewrite, so a gqlgen upgrade
// that changes the generated code is noticed rather than silently undone.
package main

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

const file = "graph/generated.go"

// rewrite is one replacement: each match of from becomes what to makes of
// it (m: the match's submatch indexes in src); done recognises a file
// already rewritten.
type rewrite struct {
	from *regexp.Regexp
	to   func(src []byte, m []int) []byte
	done string
}

// literally replaces each match with repl (regexp's $n expansion).
func literally(from *regexp.Regexp, repl string) func([]byte, []int) []byte {
	return func(src []byte, m []int) []byte { return from.Expand(nil, []byte(repl), src, m) }
}

// replaceAll is regexp's ReplaceAllFunc with the submatches at hand.
func replaceAll(re *regexp.Regexp, src []byte, to func([]byte, []int) []byte) []byte {
	var out []byte
	last := 0
	for _, m := range re.FindAllSubmatchIndex(src, -1) {
		out = append(out, src[last:m[0]]...)
		out = append(out, to(src, m)...)
		last = m[1]
	}
	return append(out, src[last:]...)
}

// plainField matches a field resolved as `return obj.Field, nil`, with
// no middleware, its marshaller and whether it is non-null.
var plainField = regexp.MustCompile(`func \(ec \*executionContext\) (_\w+)\(ctx context\.Context, field graphql\.CollectedField, obj (\*[\w.]+)\) \(ret graphql\.Marshaler\) \{
	return graphql\.ResolveField\(
		ctx,
		ec\.OperationContext,
		field,
		func\(ctx context\.Context, field graphql\.CollectedField\) \(\*graphql\.FieldContext, error\) \{
			return ec\.fieldContext_\w+\(ctx, field\)
		\},
		func\(ctx context\.Context\) \(any, error\) \{
			return obj\.(\w+), nil
		\},
		nil,
		func\(ctx context\.Context, selections ast\.SelectionSet, v ([^)]+)\) graphql\.Marshaler \{
			return ec\.(marshal([NO])[^(]+)\(ctx, selections, v\)
		\},
		true,
		(?:true|false),
	\)
\}`)

// noNil are the Go types a plain field may have, or point to when it is
// nullable: no value of them is nil, and their marshallers (graph/scalar's
// and gqlgen's) neither report a null nor an error. Float is not one:
// gqlgen reports NaN and infinities as errors on the field's path.
var noNil = map[string]bool{
	"string": true, "int": true, "int32": true, "int64": true, "bool": true,
	"uuid.UUID": true, "time.Time": true,
}

// plain rewrites a plain field's function to marshal the struct field
// directly when it qualifies, and leaves it as it is otherwise.
func plain(src []byte, m []int) []byte {
	sub := func(i int) []byte { return src[m[2*i]:m[2*i+1]] }
	name, obj, structField, typ, marshal, nullness := sub(1), sub(2), sub(3), string(sub(4)), sub(5), string(sub(6))
	if nullness == "O" {
		typ = strings.TrimPrefix(typ, "*")
	}
	if !noNil[typ] {
		return sub(0)
	}
	if at, ok := inPlace[string(marshal)]; ok {
		ptr := "&obj." + string(structField)
		if nullness == "O" {
			ptr = "obj." + string(structField)
		}
		if at == "StringAt" && typ != "string" {
			ptr = "(*string)(" + ptr + ")" // an enum: a string type of package db
		}
		null := ""
		if nullness == "O" {
			null = fmt.Sprintf("if obj.%s == nil {\n\t\treturn graphql.Null\n\t}\n\t", structField)
		}
		return fmt.Appendf(nil, `func (ec *executionContext) %s(ctx context.Context, field graphql.CollectedField, obj %s) (ret graphql.Marshaler) {
	%sreturn scalar.%s(%s) // a plain field, read in place (graph/internal/sequential)
}`, name, obj, null, at, ptr)
	}
	return fmt.Appendf(nil, `func (ec *executionContext) %s(ctx context.Context, field graphql.CollectedField, obj %s) (ret graphql.Marshaler) {
	return ec.%s(ctx, field.Selections, obj.%s) // a plain field (graph/internal/sequential)
}`, name, obj, marshal, structField)
}

// inPlace maps the marshallers whose whole work is scalar.MarshalString,
// MarshalID or MarshalTime of the value to the function that marshals it
// where it is (scalar.StringAt, IDAt, TimeAt), for the plain fields they
// marshal: a value boxed into an interface is an allocation, a pointer is
// not. findInPlace fills it from the generated marshallers' bodies.
var inPlace = map[string]string{}

// marshaller matches a generated marshaller of a value and its body.
var marshaller = regexp.MustCompile(`(?s)func \(ec \*executionContext\) (marshal[NO][^(\s]+)\(ctx context\.Context, sel ast\.SelectionSet, v [^)]+\) graphql\.Marshaler \{\n(.*?)\n\}\n`)

// inPlaceBodies are the bodies of marshallers that only call one of the
// scalars' functions (null and error checks included, which these never
// trigger: MarshalString, MarshalID and MarshalTime return neither).
var inPlaceBodies = map[string]string{}

func init() {
	for fn, at := range map[string]string{"MarshalString": "StringAt", "MarshalID": "IDAt", "MarshalTime": "TimeAt"} {
		for _, arg := range []string{"v", "string(v)"} {
			inPlaceBodies["\t_ = sel\n\tres := scalar."+fn+"("+arg+")\n\tif res == graphql.Null {\n\t\tif !graphql.HasFieldError(ctx, graphql.GetFieldContext(ctx)) {\n\t\t\tgraphql.AddErrorf(ctx, \"the requested element is null which the schema does not allow\")\n\t\t}\n\t}\n\treturn res"] = at
			deref := strings.Replace(arg, "v", "*v", 1)
			inPlaceBodies["\tif v == nil {\n\t\treturn graphql.Null\n\t}\n\t_ = sel\n\t_ = ctx\n\tres := scalar."+fn+"("+deref+")\n\treturn res"] = at
		}
	}
}

// findInPlace fills inPlace from src's marshallers.
func findInPlace(src []byte) {
	for _, m := range marshaller.FindAllSubmatch(src, -1) {
		if at, ok := inPlaceBodies[string(m[2])]; ok {
			inPlace[string(m[1])] = at
		}
	}
}

var rewrites = []rewrite{
	{regexp.MustCompile(regexp.QuoteMeta("graphql.MarshalSliceConcurrently(ctx, len(v), 0, false, func(")),
		func([]byte, []int) []byte { return []byte("marshalList(ctx, len(v), func(") }, "marshalList(ctx, len(v), func("},
	{plainField, plain, "// a plain field (graph/internal/sequential)"},
	{scalarContext, literally(scalarContext, "scalarFieldContext($1, field, $2, $3)"), "scalarFieldContext("},
	{deferredSets, literally(deferredSets, "\tvar deferredFieldSet *graphql.FieldSet\n\tvar deferLabelToView map[string]*graphql.FieldSetView\n"),
		"\tvar deferredFieldSet *graphql.FieldSet\n"},
	{deferredAdd, unlessAfter(deferring, literally(deferredAdd, deferring+"\t\t\t\tdeferredFieldSet.AddField(field)\n")), deferring},
	{objectReturn, literally(objectReturn, "\n\treturn set.object(fields)\n}\n"), "\treturn set.object(fields)\n"},
	{objectSet, literally(objectSet, "\tset := newObjectSet(fields)\n\tout := &set.fs\n"), "\tout := &set.fs\n"},
	{deferredGroup, literally(deferredGroup, "\n\tif len(deferLabelToView) > 0 {\n\t\tec.ProcessDeferredGroup(graphql.DeferredGroup{\n\t\t\tDefers:   deferLabelToView,\n\t\t\tPath:     graphql.GetPath(ctx),\n\t\t\tFieldSet: deferredFieldSet,\n\t\t\tContext:  ctx,\n\t\t})\n\t}\n"),
		"\tif len(deferLabelToView) > 0 {\n"},
	{unmarshalerMap, literally(unmarshalerMap, noUnmarshalerMap), noUnmarshalerMap},
	{withUnmarshalerMap, literally(withUnmarshalerMap, ""), noUnmarshalerMap},
	{subscriptionBuffer, literally(subscriptionBuffer, "\t\treturn func(ctx context.Context) *graphql.Response {\n"+bufferPerResult+"\t\t\tvar buf bytes.Buffer\n"), bufferPerResult},
}

// bufferPerResult marks a subscription's buffer made for each result:
// gqlgen made one per subscription and reset it for each, so every
// subscription kept, between results and for its whole life, a buffer as
// large as its largest result (twenty idle ones of 4 MiB results held 79
// MiB). The transports copy a result's bytes out of it anyway.
const bufferPerResult = "\t\t\t// A buffer per result, not one kept for the subscription's life (graph/internal/sequential).\n"

// deferring is the line the deferredAdd rewrite puts before each
// AddField, which it leaves alone once it is there.
const deferring = "\t\t\t\tdeferredFieldSet, deferLabelToView = deferring(deferredFieldSet, deferLabelToView)\n"

// unlessAfter is to, except for a match right after before, which stays
// as it is: for a rewrite whose output holds what it matches.
func unlessAfter(before string, to func([]byte, []int) []byte) func([]byte, []int) []byte {
	return func(src []byte, m []int) []byte {
		if bytes.HasSuffix(src[:m[0]], []byte(before)) {
			return src[m[0]:m[1]]
		}
		return to(src, m)
	}
}

// noUnmarshalerMap marks where gqlgen built its map of input unmarshallers.
const noUnmarshalerMap = "\t// No map of input unmarshallers: nothing calls graphql.UnmarshalInputFromContext (graph/internal/sequential).\n"

// unmarshalsFromContext names the Go files under dir, other than the
// generated one, that call graphql.UnmarshalInputFromContext, which reads
// the map the rewrite drops.
func unmarshalsFromContext(dir string) ([]string, error) {
	var found []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != dir && (strings.HasPrefix(d.Name(), ".") || d.Name() == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || path == file || strings.HasPrefix(path, filepath.Join("graph", "internal", "sequential")) {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(src, []byte("UnmarshalInputFromContext")) {
			found = append(found, path)
		}
		return nil
	})
	return found, err
}

var (
	unmarshalerMap     = regexp.MustCompile(`\tinputUnmarshalMap := graphql\.BuildUnmarshalerMap\(\n(?:\t\tec\.\w+,\n)*\t\)\n`)
	withUnmarshalerMap = regexp.MustCompile(`\t+ctx = graphql\.WithUnmarshalerMap\(ctx, inputUnmarshalMap\)\n`)
	deferredSets       = regexp.MustCompile(`\tdeferredFieldSet := graphql\.NewFieldSet\(nil\)\n\tdeferLabelToView := make\(map\[string\]\*graphql\.FieldSetView\)\n`)
	deferredAdd        = regexp.MustCompile(`\t\t\t\tdeferredFieldSet\.AddField\(field\)\n`)
	objectReturn       = regexp.MustCompile(`\n\treturn out\n\}\n`)
	objectSet          = regexp.MustCompile(`\tout := graphql\.NewFieldSet\(fields\)\n`)
	scalarContext      = regexp.MustCompile(`graphql\.NewScalarFieldContext\(("[A-Za-z_]+"), field, (true|false), (true|false), errors\.New\("field of type [A-Za-z_]+ does not have child fields"\)\)`)
	subscriptionBuffer = regexp.MustCompile(`\t\tvar buf bytes\.Buffer\n\t\treturn func\(ctx context\.Context\) \*graphql\.Response \{\n\t\t\tbuf\.Reset\(\)\n`)
	deferredGroup      = regexp.MustCompile(`\n\tec\.ProcessDeferredGroup\(graphql\.DeferredGroup\{\n\t\tDefers:   deferLabelToView,\n\t\tPath:     graphql\.GetPath\(ctx\),\n\t\tFieldSet: deferredFieldSet,\n\t\tContext:  ctx,\n\t\}\)\n`)
)

// stringTypes adds to noNil the types package db declares over a basic
// type (its enums: `type JobStatus string`), as generated code names them.
func stringTypes(dir, pkg string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return err
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.TYPE {
				continue
			}
			for _, s := range g.Specs {
				ts := s.(*ast.TypeSpec)
				if id, ok := ts.Type.(*ast.Ident); ok && noNil[id.Name] && ts.Assign == 0 {
					noNil[pkg+"."+ts.Name.Name] = true
				}
			}
		}
	}
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sequential:", err)
		os.Exit(1)
	}
}

func run() error {
	if err := stringTypes("db", "db"); err != nil {
		return err
	}
	if found, err := unmarshalsFromContext("."); err != nil || len(found) > 0 {
		return fmt.Errorf("%v call graphql.UnmarshalInputFromContext, which needs the map of input unmarshallers this rewrite drops (err: %v)", found, err)
	}
	src, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	findInPlace(src)
	if len(inPlace) == 0 {
		return fmt.Errorf("%s has no marshaller of a String, ID or Time to read in place: did gqlgen change its generated code?", file)
	}
	if src, err = rewriteAll(src); err != nil {
		return err
	}
	return os.WriteFile(file, src, 0o644)
}

// rewriteAll applies every rewrite to src. A file it rewrote already comes
// back unchanged.
func rewriteAll(src []byte) ([]byte, error) {
	for _, r := range rewrites {
		if !r.from.Match(src) && !bytes.Contains(src, []byte(r.done)) {
			return nil, fmt.Errorf("%s has nothing matching %s to rewrite: did gqlgen change its generated code?", file, r.from)
		}
		src = replaceAll(r.from, src, r.to)
	}
	return src, nil
}
