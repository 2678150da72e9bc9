package graph

import (
	"context"
	"fmt"
	"strconv"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/errcode"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/graph/scalar"
)

// intRange refuses, before anything runs, every Int of an operation (literal
// or variable, at any depth of lists and input objects) beyond the 32 bits
// GraphQL gives Int. gqlparser's validation only refuses literals beyond 64
// bits, and the Int scalar (graph/scalar) refuses the rest only when a field
// reads its arguments: by then the mutation fields before it have run.
type intRange struct{ schema *ast.Schema }

var (
	_ graphql.HandlerExtension        = (*intRange)(nil)
	_ graphql.OperationContextMutator = (*intRange)(nil)
)

// ExtensionName implements graphql.HandlerExtension.
func (*intRange) ExtensionName() string { return "IntRange" }

// Validate implements graphql.HandlerExtension; it keeps the schema, whose
// input types tell which variable members are Ints.
func (r *intRange) Validate(es graphql.ExecutableSchema) error {
	r.schema = es.Schema()
	return nil
}

// MutateOperationContext implements graphql.OperationContextMutator.
func (r *intRange) MutateOperationContext(_ context.Context, oc *graphql.OperationContext) *gqlerror.Error {
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

// literal checks an Int literal, and those inside a list or object literal;
// field names the argument path for the message.
func literal(v *ast.Value, field string) *gqlerror.Error {
	if v == nil {
		return nil
	}
	switch v.Kind {
	case ast.IntValue:
		if v.Definition == nil || v.Definition.Name != "Int" {
			return nil
		}
		n, err := strconv.ParseInt(v.Raw, 10, 64)
		if err != nil {
			return nil // beyond 64 bits: gqlparser has refused it
		}
		if _, err := scalar.UnmarshalInt(n); err != nil {
			e := refusal(field, err)
			if v.Position != nil {
				e.Locations = []gqlerror.Location{{Line: v.Position.Line, Column: v.Position.Column}}
			}
			return e
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
func (r *intRange) variable(val any, typ *ast.Type, path ast.Path) *gqlerror.Error {
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
	if typ.NamedType == "Int" {
		if _, err := scalar.UnmarshalInt(val); err != nil {
			e := refusal("", err)
			e.Message = "variable " + variableName(path) + ": " + e.Message
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

// refusal is a validation error for a bad Int; field, when known, prefixes
// the message and goes to extensions.field.
func refusal(field string, err error) *gqlerror.Error {
	msg := err.Error()
	e := &gqlerror.Error{Message: msg, Extensions: map[string]any{}}
	if field != "" {
		e.Message = field + ": " + msg
		e.Extensions["field"] = field
	}
	errcode.Set(e, errcode.ValidationFailed) // BAD_USER_INPUT, by the presenter
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
