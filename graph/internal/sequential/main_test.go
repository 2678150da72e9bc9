package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// field is a field's function as gqlgen v0.17.95 generates it.
func field(name, resolve, typ, marshal string) string {
	return `func (ec *executionContext) _Job_` + name + `(ctx context.Context, field graphql.CollectedField, obj *db.Job) (ret graphql.Marshaler) {
	return graphql.ResolveField(
		ctx,
		ec.OperationContext,
		field,
		func(ctx context.Context, field graphql.CollectedField) (*graphql.FieldContext, error) {
			return ec.fieldContext_Job_` + name + `(ctx, field)
		},
		func(ctx context.Context) (any, error) {
			return ` + resolve + `, nil
		},
		nil,
		func(ctx context.Context, selections ast.SelectionSet, v ` + typ + `) graphql.Marshaler {
			return ec.` + marshal + `(ctx, selections, v)
		},
		true,
		true,
	)
}`
}

// Only the plain fields that cannot report a null or an error are
// marshalled straight from the struct; the others keep gqlgen's path.
func TestPlainFields(t *testing.T) {
	noNil["db.JobStatus"] = true // as stringTypes finds it in package db
	for _, c := range []struct {
		name, resolve, typ, marshal string
		plain                       bool
	}{
		{"name", "obj.Name", "string", "marshalNString2string", true},
		{"status", "obj.Status", "db.JobStatus", "marshalNJobStatus2fleetgraphᚋdbᚐJobStatus", true},
		{"claimedAt", "obj.ClaimedAt", "*time.Time", "marshalOTime2ᚖtimeᚐTime", true},
		{"robotId", "obj.RobotID", "*uuid.UUID", "marshalOID2ᚖgithubᚗcomᚋgoogleᚋuuidᚐUUID", true},
		// Non-null of a type with a nil: the null is reported on the field's path.
		{"input", "obj.Input", "db.RawJSON", "marshalNJSON2fleetgraphᚋdbᚐRawJSON", false},
		{"capabilities", "obj.Capabilities", "[]string", "marshalNString2ᚕstringᚄ", false},
		// Floats report NaN and infinities on the field's path.
		{"rate", "obj.Rate", "*float64", "marshalOFloat2ᚖfloat64", false},
		{"bytes", "obj.Bytes", "float64", "marshalNFloat2float64", false},
		// A method or a resolver is not a plain field.
		{"age", "obj.Age()", "int", "marshalNInt2int", false},
		{"robot", "ec.resolvers.Job().Robot(ctx, obj)", "string", "marshalNString2string", false},
	} {
		src := field(c.name, c.resolve, c.typ, c.marshal)
		got := string(replaceAll(plainField, []byte(src), plain))
		want := src
		if c.plain {
			want = `func (ec *executionContext) _Job_` + c.name + `(ctx context.Context, field graphql.CollectedField, obj *db.Job) (ret graphql.Marshaler) {
	return ec.` + c.marshal + `(ctx, field.Selections, ` + c.resolve + `) // a plain field (graph/internal/sequential)
}`
		}
		if got != want {
			t.Errorf("%s:\ngot\n%s\nwant\n%s", c.name, got, want)
		}
	}
}

// The other rewrites expand their matches as they should.
func TestLiteralRewrites(t *testing.T) {
	src := `return graphql.NewScalarFieldContext("Job", field, true, false, errors.New("field of type ID does not have child fields"))`
	got := string(replaceAll(scalarContext, []byte(src), literally(scalarContext, "scalarFieldContext($1, field, $2, $3)")))
	if want := `return scalarFieldContext("Job", field, true, false)`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if !strings.Contains(string(replaceAll(deferredGroup, []byte("x\n\tec.ProcessDeferredGroup(graphql.DeferredGroup{\n\t\tDefers:   deferLabelToView,\n\t\tPath:     graphql.GetPath(ctx),\n\t\tFieldSet: deferredFieldSet,\n\t\tContext:  ctx,\n\t})\n"),
		literally(deferredGroup, "\n\tif len(deferLabelToView) > 0 {}\n"))), "if len(deferLabelToView) > 0") {
		t.Error("the deferred group was not guarded")
	}
}

// The map of input unmarshallers is dropped only while nothing reads it:
// a file that calls graphql.UnmarshalInputFromContext is found.
func TestUnmarshalerMap(t *testing.T) {
	src := "\tec := newExecutionContext(opCtx, e, make(chan graphql.DeferredResult))\n\tinputUnmarshalMap := graphql.BuildUnmarshalerMap(\n\t\tec.unmarshalInputA,\n\t\tec.unmarshalInputB,\n\t)\n\tfirst := true\n"
	got := string(replaceAll(unmarshalerMap, []byte(src), literally(unmarshalerMap, noUnmarshalerMap)))
	if want := "\tec := newExecutionContext(opCtx, e, make(chan graphql.DeferredResult))\n" + noUnmarshalerMap + "\tfirst := true\n"; got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if got := string(replaceAll(withUnmarshalerMap, []byte("\t\t\t\tctx = graphql.WithUnmarshalerMap(ctx, inputUnmarshalMap)\n\t\t\t\tdata = x\n"), literally(withUnmarshalerMap, ""))); got != "\t\t\t\tdata = x\n" {
		t.Errorf("got %q", got)
	}

	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "graph"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, src string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("graph/scalars.go", "package graph\n")
	if found, err := unmarshalsFromContext(dir); err != nil || len(found) != 0 {
		t.Fatalf("found %v, %v in a module that does not call it", found, err)
	}
	write("graph/input.go", "package graph\n\nvar _ = graphql.UnmarshalInputFromContext\n")
	if found, err := unmarshalsFromContext(dir); err != nil || len(found) != 1 {
		t.Fatalf("found %v, %v; want graph/input.go", found, err)
	}
}

// marshallerSrc is a value marshaller as gqlgen v0.17.95 generates it, of
// a non-null or nullable type, whose result is call.
func marshallerSrc(name, typ, call string, nullable bool) string {
	if nullable {
		return "func (ec *executionContext) " + name + "(ctx context.Context, sel ast.SelectionSet, v " + typ + ") graphql.Marshaler {\n\tif v == nil {\n\t\treturn graphql.Null\n\t}\n\t_ = sel\n\t_ = ctx\n\tres := " + call + "\n\treturn res\n}\n"
	}
	return "func (ec *executionContext) " + name + "(ctx context.Context, sel ast.SelectionSet, v " + typ + ") graphql.Marshaler {\n\t_ = sel\n\tres := " + call + "\n\tif res == graphql.Null {\n\t\tif !graphql.HasFieldError(ctx, graphql.GetFieldContext(ctx)) {\n\t\t\tgraphql.AddErrorf(ctx, \"the requested element is null which the schema does not allow\")\n\t\t}\n\t}\n\treturn res\n}\n"
}

// Plain Strings, enums, IDs and Times are read in place, through a pointer
// into their struct; other plain fields keep their marshaller, and a
// marshaller that does more than call the scalar's function is kept.
func TestPlainFieldsReadInPlace(t *testing.T) {
	noNil["db.JobStatus"] = true
	findInPlace([]byte(marshallerSrc("marshalNString2string", "string", "scalar.MarshalString(v)", false) +
		marshallerSrc("marshalNJobStatus2fleetgraphᚋdbᚐJobStatus", "db.JobStatus", "scalar.MarshalString(string(v))", false) +
		marshallerSrc("marshalOTime2ᚖtimeᚐTime", "*time.Time", "scalar.MarshalTime(*v)", true) +
		marshallerSrc("marshalNID2githubᚗcomᚋgoogleᚋuuidᚐUUID", "uuid.UUID", "scalar.MarshalID(v)", false) +
		marshallerSrc("marshalNInt2int", "int", "scalar.MarshalInt(v)", false) +
		marshallerSrc("marshalNSecret2string", "string", "scalar.MarshalString(redacted(v))", false)))
	defer clear(inPlace)
	head := func(name string) string {
		return `func (ec *executionContext) _Job_` + name + `(ctx context.Context, field graphql.CollectedField, obj *db.Job) (ret graphql.Marshaler) {` + "\n\t"
	}
	for _, c := range []struct{ name, resolve, typ, marshal, want string }{
		{"name", "obj.Name", "string", "marshalNString2string", "return scalar.StringAt(&obj.Name) // a plain field, read in place (graph/internal/sequential)"},
		{"status", "obj.Status", "db.JobStatus", "marshalNJobStatus2fleetgraphᚋdbᚐJobStatus", "return scalar.StringAt((*string)(&obj.Status)) // a plain field, read in place (graph/internal/sequential)"},
		{"claimedAt", "obj.ClaimedAt", "*time.Time", "marshalOTime2ᚖtimeᚐTime", "if obj.ClaimedAt == nil {\n\t\treturn graphql.Null\n\t}\n\treturn scalar.TimeAt(obj.ClaimedAt) // a plain field, read in place (graph/internal/sequential)"},
		{"id", "obj.ID", "uuid.UUID", "marshalNID2githubᚗcomᚋgoogleᚋuuidᚐUUID", "return scalar.IDAt(&obj.ID) // a plain field, read in place (graph/internal/sequential)"},
		{"attempt", "obj.Attempt", "int", "marshalNInt2int", "return ec.marshalNInt2int(ctx, field.Selections, obj.Attempt) // a plain field (graph/internal/sequential)"},
		{"secret", "obj.Secret", "string", "marshalNSecret2string", "return ec.marshalNSecret2string(ctx, field.Selections, obj.Secret) // a plain field (graph/internal/sequential)"},
	} {
		got := string(replaceAll(plainField, []byte(field(c.name, c.resolve, c.typ, c.marshal)), plain))
		if want := head(c.name) + c.want + "\n}"; got != want {
			t.Errorf("%s:\ngot\n%s\nwant\n%s", c.name, got, want)
		}
	}
}

// The rewrites leave a file they rewrote as it is: the deferred fields'
// rewrite matched its own output, and each run added its line again.
func TestRewritesAreIdempotent(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "..", "generated.go"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := rewriteAll(src)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(src) {
		t.Error("a second run changed graph/generated.go")
	}
	if n := strings.Count(string(src), deferring+deferring); n > 0 {
		t.Errorf("graph/generated.go makes the set of deferred fields twice in a row %d times", n)
	}
}
