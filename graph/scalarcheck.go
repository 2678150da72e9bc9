package graph

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/errcode"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/fault"
	"fleetgraph/graph/scalar"
)

// scalarCheck refuses, before anything runs, every Int and Time of an
// operation (literal or variable, at any depth of lists and input objects)
// that the scalars in graph/scalar refuse: an Int beyond the 32 bits GraphQL
// gives it (gqlparser's validation only refuses literals beyond 64 bits), a
// Time PostgreSQL cannot store. The scalars alone refuse such a value only
// when a field reads its arguments, after the mutation fields before it have
// run.
type scalarCheck struct{ schema *ast.Schema }

// checkedScalars are the scalars checked before execution, by name; each
// takes a literal's or variable's value as gqlgen would pass it.
var checkedScalars = map[string]func(v any) error{
	"Int":  func(v any) error { _, err := scalar.UnmarshalInt(v); return err },
	"Time": func(v any) error { _, err := scalar.UnmarshalTime(v); return err },
}

var (
	_ graphql.HandlerExtension        = (*scalarCheck)(nil)
	_ graphql.OperationContextMutator = (*scalarCheck)(nil)
)

// ExtensionName implements graphql.HandlerExtension.
func (*scalarCheck) ExtensionName() string { return "ScalarCheck" }

// Validate implements graphql.HandlerExtension; it keeps the schema, whose
// input types tell which variable members are checked scalars.
func (r *scalarCheck) Validate(es graphql.ExecutableSchema) error {
	r.schema = es.Schema()
	return nil
}

// MutateOperationContext implements graphql.OperationContextMutator.
func (r *scalarCheck) MutateOperationContext(_ context.Context, oc *graphql.OperationContext) *gqlerror.Error {
	if oc.Doc == nil || oc.Operation == nil {
		return nil
	}
	for _, v := range oc.Operation.VariableDefinitions {
		if val, ok := oc.Variables[v.Variable]; ok {
			if err := r.variable(val, v.Type, ast.Path{ast.PathName("variable"), ast.PathName(v.Variable)}); err != nil {
				return err
			}
		}
		if err := literal(v.DefaultValue, "$"+v.Variable); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	return selections(oc.Doc, oc.Operation.SelectionSet, seen)
}

// selections checks the literal arguments of a selection set and of the
// fragments it spreads (each fragment once).
func selections(doc *ast.QueryDocument, set ast.SelectionSet, seen map[string]bool) *gqlerror.Error {
	for _, sel := range set {
		switch sel := sel.(type) {
		case *ast.Field:
			if err := arguments(sel.Arguments, sel.Directives); err != nil {
				return err
			}
			if err := selections(doc, sel.SelectionSet, seen); err != nil {
				return err
			}
		case *ast.InlineFragment:
			if err := arguments(nil, sel.Directives); err != nil {
				return err
			}
			if err := selections(doc, sel.SelectionSet, seen); err != nil {
				return err
			}
		case *ast.FragmentSpread:
			if err := arguments(nil, sel.Directives); err != nil {
				return err
			}
			if seen[sel.Name] {
				continue
			}
			seen[sel.Name] = true
			if f := doc.Fragments.ForName(sel.Name); f != nil {
				if err := selections(doc, f.SelectionSet, seen); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func arguments(args ast.ArgumentList, dirs ast.DirectiveList) *gqlerror.Error {
	for _, d := range dirs {
		args = append(args[:len(args):len(args)], d.Arguments...)
	}
	for _, a := range args {
		if err := literal(a.Value, a.Name); err != nil {
			return err
		}
	}
	return nil
}

// literal checks a literal of a checked scalar, and those inside a list or
// object literal; field names the argument path for the message.
func literal(v *ast.Value, field string) *gqlerror.Error {
	if v == nil {
		return nil
	}
	at := func(e *gqlerror.Error) *gqlerror.Error {
		if v.Position != nil {
			e.Locations = []gqlerror.Location{{Line: v.Position.Line, Column: v.Position.Column}}
		}
		return e
	}
	switch v.Kind {
	case ast.FloatValue:
		// gqlparser turns every number literal into a Go value when a field
		// reads its arguments, and panics on one it cannot: its validation
		// checks Int and Float positions, not custom scalars (Time, JSON)
		// nor the numbers inside a JSON object literal.
		if _, err := strconv.ParseFloat(v.Raw, 64); err != nil {
			return at(refusal(field, errors.New("a number literal must be a finite 64-bit float; pass larger or more precise numbers in a variable")))
		}
	case ast.IntValue, ast.StringValue, ast.BlockValue:
		var val any = v.Raw
		if v.Kind == ast.IntValue {
			n, err := strconv.ParseInt(v.Raw, 10, 64)
			if err != nil {
				return at(refusal(field, errors.New("a whole number literal must fit in 64 bits; pass larger numbers in a variable")))
			}
			val = n
		}
		if v.Definition == nil || checkedScalars[v.Definition.Name] == nil {
			return nil
		}
		if err := checkedScalars[v.Definition.Name](val); err != nil {
			return at(refusal(field, err))
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

// variable checks a coerced variable value of type typ.
func (r *scalarCheck) variable(val any, typ *ast.Type, path ast.Path) *gqlerror.Error {
	if val == nil || typ == nil {
		return nil
	}
	if typ.Elem != nil {
		list, ok := val.([]any)
		if !ok {
			return r.variable(val, typ.Elem, path) // a single value for a list
		}
		for i, e := range list {
			if err := r.variable(e, typ.Elem, append(path[:len(path):len(path)], ast.PathIndex(i))); err != nil {
				return err
			}
		}
		return nil
	}
	if check := checkedScalars[typ.NamedType]; check != nil {
		if err := check(val); err != nil {
			e := refusal("variable "+variableName(path), err)
			e.Err.(*fault.Error).Field = ""
			e.Path = path
			return e
		}
		return nil
	}
	def := r.schema.Types[typ.NamedType]
	obj, ok := val.(map[string]any)
	if def == nil || def.Kind != ast.InputObject || !ok {
		return nil
	}
	for _, f := range def.Fields {
		if err := r.variable(obj[f.Name], f.Type, append(path[:len(path):len(path)], ast.PathName(f.Name))); err != nil {
			return err
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
