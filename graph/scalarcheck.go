package graph

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/errcode"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/fault"
	"fleetgraph/graph/scalar"
)

// scalarCheck refuses, before anything runs, every argument value of an
// operation (literal or variable, at any depth of lists and input objects)
// that a field would refuse when it reads its arguments, after the mutation
// fields before it have run and committed:
//   - an Int beyond the 32 bits GraphQL gives it (gqlparser's validation
//     only refuses literals beyond 64 bits), a Time PostgreSQL cannot store,
//     an ID that is not a UUID, a JSON that is not an object (a string too
//     where the argument has @acceptsText): the scalars of graph/scalar;
//   - an enum value in a variable written in another case: gqlparser's
//     validation takes "offline" for OFFLINE in a variable (not in a
//     literal), and the stores would compare it as given.
//
// Each value is checked at the place it is used, with that place's type:
// a variable once per place (however often it is used there), after
// operationLimit has bounded the arguments' size. Fields @skip or
// @include leave out are not checked: nothing reads their arguments.
type scalarCheck struct {
	schema *ast.Schema
	// checked names the types that hold something to check: a checked
	// scalar, an enum, or an input object with a field of such a type.
	checked map[string]bool
}

// checkedScalars are the scalars checked before execution, by name; each
// takes a literal's or variable's value as gqlgen would pass it, and
// refuses what the field's own unmarshalling would. Every ID a client sends
// is a UUID (TestEveryIDArgumentIsAUUID keeps it so).
var checkedScalars = map[string]func(v any) error{
	"Int":  func(v any) error { _, err := scalar.UnmarshalInt(v); return err },
	"Time": func(v any) error { _, err := scalar.UnmarshalTime(v); return err },
	"ID":   func(v any) error { _, err := scalar.UnmarshalID(v); return err },
	"JSON": func(v any) error { _, err := scalar.UnmarshalJSON(v); return err },
}

var (
	_ graphql.HandlerExtension        = (*scalarCheck)(nil)
	_ graphql.OperationContextMutator = (*scalarCheck)(nil)
)

// ExtensionName implements graphql.HandlerExtension.
func (*scalarCheck) ExtensionName() string { return "ScalarCheck" }

// Validate implements graphql.HandlerExtension; it keeps the schema, whose
// input types tell the type of each position in an argument.
func (r *scalarCheck) Validate(es graphql.ExecutableSchema) error {
	r.schema = es.Schema()
	r.checked = map[string]bool{}
	for name, def := range r.schema.Types {
		r.checked[name] = checkedScalars[name] != nil || def.Kind == ast.Enum
	}
	// Input objects hold what their fields hold, to any depth.
	for changed := true; changed; {
		changed = false
		for name, def := range r.schema.Types {
			if def.Kind != ast.InputObject || r.checked[name] {
				continue
			}
			for _, f := range def.Fields {
				if r.checked[f.Type.Name()] {
					r.checked[name], changed = true, true
					break
				}
			}
		}
	}
	return nil
}

// needsCheck reports whether a value of typ may hold something to check.
func (r *scalarCheck) needsCheck(typ *ast.Type) bool { return r.checked[typ.Name()] }

// MutateOperationContext implements graphql.OperationContextMutator. It
// runs after operationLimit, which bounds the arguments' size with each
// variable counted wherever it is used, and so bounds this walk too.
func (r *scalarCheck) MutateOperationContext(_ context.Context, oc *graphql.OperationContext) *gqlerror.Error {
	if oc.Doc == nil || oc.Operation == nil {
		return nil
	}
	w := checkWalk{r: r, doc: oc.Doc, vars: oc.Variables, seen: map[string]bool{}, used: map[variableUse]bool{}}
	return w.selections(oc.Operation.SelectionSet)
}

// literalCheck refuses, before anything reads an argument (the operation
// limit's page sizes included), the number literals gqlparser cannot turn
// into Go values (see literal), in every argument of the operation and in
// its variables' defaults.
type literalCheck struct{}

var (
	_ graphql.HandlerExtension        = literalCheck{}
	_ graphql.OperationContextMutator = literalCheck{}
)

// ExtensionName implements graphql.HandlerExtension.
func (literalCheck) ExtensionName() string { return "LiteralCheck" }

// Validate implements graphql.HandlerExtension.
func (literalCheck) Validate(graphql.ExecutableSchema) error { return nil }

// MutateOperationContext implements graphql.OperationContextMutator.
func (literalCheck) MutateOperationContext(_ context.Context, oc *graphql.OperationContext) *gqlerror.Error {
	if oc.Doc == nil || oc.Operation == nil {
		return nil
	}
	for _, v := range oc.Operation.VariableDefinitions {
		if err := literal(v.DefaultValue, "$"+v.Variable); err != nil {
			return err
		}
	}
	w := checkWalk{doc: oc.Doc, vars: oc.Variables, seen: map[string]bool{}, literalsOnly: true}
	return w.selections(oc.Operation.SelectionSet)
}

// checkWalk is one operation's walk: its document, its coerced variables,
// the fragments already walked and, for scalarCheck (r), the variables
// already checked at a type. literalCheck's (literalsOnly) checks the
// number literals of every field and directive; scalarCheck's, the
// arguments of the fields that run (not those @skip or @include leave
// out, whose arguments no one reads).
type checkWalk struct {
	r            *scalarCheck
	doc          *ast.QueryDocument
	vars         map[string]any
	seen         map[string]bool
	used         map[variableUse]bool
	literalsOnly bool
}

// variableUse is a variable checked where a value of a type goes (the
// schema's type of that place: the same pointer at every use of the
// place).
type variableUse struct {
	name string
	typ  *ast.Type
	text bool
}

// excluded reports whether directives leave their selection out:
// @skip(if: true) or @include(if: false), literal or variable.
func (w *checkWalk) excluded(dirs ast.DirectiveList) bool {
	cond := func(name string) (bool, bool) {
		d := dirs.ForName(name)
		if d == nil {
			return false, false
		}
		a := d.Arguments.ForName("if")
		if a == nil || a.Value == nil {
			return false, false
		}
		v, err := a.Value.Value(w.vars)
		b, ok := v.(bool)
		return b, err == nil && ok
	}
	if skip, ok := cond("skip"); ok && skip {
		return true
	}
	include, ok := cond("include")
	return ok && !include
}

// selections checks the arguments of a selection set and of the fragments
// it spreads (each fragment once).
func (w *checkWalk) selections(set ast.SelectionSet) *gqlerror.Error {
	for _, sel := range set {
		switch sel := sel.(type) {
		case *ast.Field:
			if !w.literalsOnly && w.excluded(sel.Directives) {
				continue
			}
			if err := w.field(sel); err != nil {
				return err
			}
			if err := w.selections(sel.SelectionSet); err != nil {
				return err
			}
		case *ast.InlineFragment:
			if w.literalsOnly {
				if err := directives(sel.Directives); err != nil {
					return err
				}
			} else if w.excluded(sel.Directives) {
				continue
			}
			if err := w.selections(sel.SelectionSet); err != nil {
				return err
			}
		case *ast.FragmentSpread:
			if w.literalsOnly {
				if err := directives(sel.Directives); err != nil {
					return err
				}
			} else if w.excluded(sel.Directives) {
				continue // walked again if spread elsewhere
			}
			if w.seen[sel.Name] {
				continue
			}
			w.seen[sel.Name] = true
			if f := w.doc.Fragments.ForName(sel.Name); f != nil {
				if err := w.selections(f.SelectionSet); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// field checks a field's arguments: their number literals, or each at its
// definition's type.
func (w *checkWalk) field(f *ast.Field) *gqlerror.Error {
	if w.literalsOnly {
		if err := directives(f.Directives); err != nil {
			return err
		}
		for _, a := range f.Arguments {
			if err := literal(a.Value, a.Name); err != nil {
				return err
			}
		}
		return nil
	}
	for _, a := range f.Arguments {
		if f.Definition == nil {
			continue
		}
		def := f.Definition.Arguments.ForName(a.Name)
		if def == nil {
			continue // validation refused it
		}
		text := def.Directives.ForName("acceptsText") != nil
		if err := w.value(a.Value, def.Type, text, a.Name); err != nil {
			return err
		}
	}
	return nil
}

// directives checks the number literals of directives' arguments (the
// operation's directives are the built-in ones, of Boolean arguments).
func directives(dirs ast.DirectiveList) *gqlerror.Error {
	for _, d := range dirs {
		for _, a := range d.Arguments {
			if err := literal(a.Value, a.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// value checks v, written where a value of typ goes (a string is also
// taken for a JSON if text); name is the argument path for the message.
func (w *checkWalk) value(v *ast.Value, typ *ast.Type, text bool, name string) *gqlerror.Error {
	if v == nil || typ == nil {
		return nil
	}
	switch {
	case v.Kind == ast.Variable:
		val, ok := w.vars[v.Raw]
		use := variableUse{name: v.Raw, typ: typ, text: text}
		if !ok || w.used[use] || !w.r.needsCheck(typ) {
			return nil
		}
		w.used[use] = true // a variable used a thousand times is checked once
		return w.r.variable(val, typ, text, ast.Path{ast.PathName("variable"), ast.PathName(v.Raw)}, name)
	case typ.Elem != nil && v.Kind == ast.ListValue:
		for i, c := range v.Children {
			if err := w.value(c.Value, typ.Elem, false, fmt.Sprintf("%s[%d]", name, i)); err != nil {
				return err
			}
		}
		return nil
	case typ.Elem != nil:
		return w.value(v, typ.Elem, text, name) // a single value for a list
	}
	def := w.r.schema.Types[typ.NamedType]
	if def != nil && def.Kind == ast.InputObject && v.Kind == ast.ObjectValue {
		for _, c := range v.Children {
			if f := def.Fields.ForName(c.Name); f != nil {
				if err := w.value(c.Value, f.Type, false, name+"."+c.Name); err != nil {
					return err
				}
			}
		}
		return nil
	}
	check := checkedScalars[typ.NamedType]
	if check == nil || v.Kind == ast.NullValue || text && typ.NamedType == "JSON" && (v.Kind == ast.StringValue || v.Kind == ast.BlockValue) {
		return nil // enum literals are matched exactly by validation
	}
	val, err := v.Value(w.vars)
	if err == nil {
		err = check(val)
	}
	if err != nil {
		return at(v, refusal(name, err))
	}
	return nil
}

// at gives e the location of the literal v it refuses.
func at(v *ast.Value, e *gqlerror.Error) *gqlerror.Error {
	if v.Position != nil {
		e.Locations = []gqlerror.Location{{Line: v.Position.Line, Column: v.Position.Column}}
	}
	return e
}

// literal refuses a number literal, in v or inside a list or object literal
// in it, that gqlparser cannot turn into a Go value; field names the
// argument path for the message.
func literal(v *ast.Value, field string) *gqlerror.Error {
	if v == nil {
		return nil
	}
	switch v.Kind {
	case ast.FloatValue:
		// gqlparser turns every number literal into a Go value when a field
		// reads its arguments, and panics on one it cannot: its validation
		// checks Int and Float positions, not custom scalars (Time, JSON)
		// nor the numbers inside a JSON object literal.
		if _, err := strconv.ParseFloat(v.Raw, 64); err != nil {
			return at(v, refusal(field, errors.New("a number literal must be a finite 64-bit float; pass larger or more precise numbers in a variable")))
		}
	case ast.IntValue:
		if _, err := strconv.ParseInt(v.Raw, 10, 64); err != nil {
			return at(v, refusal(field, errors.New("a whole number literal must fit in 64 bits; pass larger numbers in a variable")))
		}
	case ast.ListValue:
		for i, c := range v.Children {
			if err := literal(c.Value, fmt.Sprintf("%s[%d]", field, i)); err != nil {
				return err
			}
		}
	case ast.ObjectValue:
		for _, c := range v.Children {
			if err := literal(c.Value, field+"."+c.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// variable checks a coerced variable value used where a value of typ goes
// (a string is also taken for a JSON if text); path is where the value is
// in the variables, field where it is in the arguments.
func (r *scalarCheck) variable(val any, typ *ast.Type, text bool, path ast.Path, field string) *gqlerror.Error {
	if val == nil || typ == nil {
		return nil
	}
	if typ.Elem != nil {
		list, ok := val.([]any)
		if !ok {
			return r.variable(val, typ.Elem, text, path, field) // a single value for a list
		}
		for i, e := range list {
			if err := r.variable(e, typ.Elem, false, append(path[:len(path):len(path)], ast.PathIndex(i)), fmt.Sprintf("%s[%d]", field, i)); err != nil {
				return err
			}
		}
		return nil
	}
	refuse := func(err error) *gqlerror.Error {
		e := refusal("variable "+variableName(path), err)
		e.Err.(*fault.Error).Field = field
		e.Path = path
		return e
	}
	if check := checkedScalars[typ.NamedType]; check != nil {
		if _, isText := val.(string); text && isText && typ.NamedType == "JSON" {
			return nil
		}
		if err := check(val); err != nil {
			return refuse(err)
		}
		return nil
	}
	def := r.schema.Types[typ.NamedType]
	if def == nil {
		return nil
	}
	switch def.Kind {
	case ast.Enum:
		if s, ok := val.(string); ok && def.EnumValues.ForName(s) == nil {
			names := make([]string, len(def.EnumValues))
			for i, ev := range def.EnumValues {
				names[i] = ev.Name
			}
			return refuse(fmt.Errorf("%q is not a %s value: enum values are case-sensitive, one of %s", fault.Excerpt(s, 64), def.Name, strings.Join(names, ", ")))
		}
	case ast.InputObject:
		obj, ok := val.(map[string]any)
		if !ok {
			return nil
		}
		for _, f := range def.Fields {
			if !r.needsCheck(f.Type) {
				continue
			}
			if err := r.variable(obj[f.Name], f.Type, false, append(path[:len(path):len(path)], ast.PathName(f.Name)), field+"."+f.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// refusal is a validation error for a refused scalar value, carrying it as a
// fault so that the presenter passes the message as it is; field, when
// known, prefixes the message and goes to extensions.field.
func refusal(field string, err error) *gqlerror.Error {
	msg := err.Error()
	if field != "" {
		msg = field + ": " + msg
	}
	e := &gqlerror.Error{Message: msg, Err: fault.Invalid(field, "%s", msg)}
	errcode.Set(e, errcode.ValidationFailed) // extensions.reason, by the presenter
	return e
}

// variableName writes a variable path ["variable", "in", 2, "priority"] as
// $in[2].priority.
func variableName(path ast.Path) string {
	name := ""
	for _, el := range path[1:] {
		switch el := el.(type) {
		case ast.PathIndex:
			name += fmt.Sprintf("[%d]", int(el))
		case ast.PathName:
			if name == "" {
				name = "$" + string(el)
			} else {
				name += "." + string(el)
			}
		}
	}
	return name
}
