package graph

import (
	"regexp"
	"strings"

	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
)

// With introspection off the schema is not public, but gqlparser's
// validation and variable coercion messages name it: "Did you mean ...?"
// suggestions (gqlgen's SetDisableSuggestion only silences those of fields),
// and phrases such as `on type "Machine"`, `expecting type "MachineFilter"`
// or `is not a valid MachineStatus` that name types, fields and arguments
// the request never wrote. hideSchemaNames rewrites such messages so that
// they name only what the request itself named, plus the built-in scalars
// and directives every GraphQL schema has.

// suggestion is the clause gqlparser appends to a message to suggest names.
var suggestion = regexp.MustCompile(` Did you mean .*\?$`)

// schemaPhrases rewrite the parts of gqlparser's messages that name a schema
// element. The groups named s hold such names; a phrase is rewritten only
// when the request did not name one of them.
var schemaPhrases = []struct {
	re   *regexp.Regexp
	with string
}{
	// Field "f" argument "a" of type "T" is required, but it was not provided.
	{regexp.MustCompile(`^((?:Field|Directive) "[^"]*") argument "(?P<s>[^"]*)" of type "(?P<s>[^"]*)" is required, but it was not provided\.$`), "$1 is missing a required argument."},
	// Field "T.f" of required type "X" was not provided.
	{regexp.MustCompile(`^Field "(?P<s>[^"]*)" of required type "(?P<s>[^"]*)" was not provided\.$`), "A required input field was not provided."},
	// Cannot query field "f" on type "T".
	{regexp.MustCompile(` on type "(?P<s>[^"]*)"`), " here"},
	// Field "f" must not have a selection since type "T" has no subfields.
	{regexp.MustCompile(` since type "(?P<s>[^"]*)" has no subfields`), ""},
	// Field "f" of type "T" must have a selection of subfields.
	{regexp.MustCompile(`^(Field "[^"]*") of type "(?P<s>[^"]*)" must have`), "$1 must have"},
	// Expected value of type "T", found V.
	{regexp.MustCompile(`^Expected value of type "(?P<s>[^"]*)"`), "Expected a value of another type"},
	// Enum "E" cannot represent non-enum value: V.
	{regexp.MustCompile(`^Enum "(?P<s>[^"]*)" cannot`), "This enum cannot"},
	// Value "V" does not exist in "E" enum.
	{regexp.MustCompile(` in "(?P<s>[^"]*)" enum\.$`), " in this enum."},
	// OneOf Input Object "T" must specify exactly one key.
	{regexp.MustCompile(`^OneOf Input Object "(?P<s>[^"]*)"`), "This OneOf input object"},
	// ... but must be non-nullable to be used for OneOf Input Object "T".
	{regexp.MustCompile(` for OneOf Input Object "(?P<s>[^"]*)"`), " for a OneOf input object"},
	// Field "f" is not defined by type "T".
	{regexp.MustCompile(` by type "(?P<s>[^"]*)"`), " by this input type"},
	// ... as objects of type "A" can never be of type "B".
	{regexp.MustCompile(` as objects of type "(?P<s>[^"]*)"`), " as objects here"},
	// Variable "$v" of type "T" used in position expecting type "U".
	{regexp.MustCompile(` expecting type "(?P<s>[^"]*)"`), " expecting another type"},
	// Fields "a" conflict because they return conflicting types "X" and "Y".
	{regexp.MustCompile(`conflicting types "(?P<s>[^"]*)" and "(?P<s>[^"]*)"`), "conflicting types"},
	// Variables: "X is not a valid E", "cannot use K as T", "must be a T, not a K".
	{regexp.MustCompile(`^((?s:.*)) is not a valid (?P<s>\w+)$`), "$1 is not a value of this enum"},
	{regexp.MustCompile(`^cannot use (\w+) as (?P<s>\w+)$`), "cannot use $1 here"},
	{regexp.MustCompile(`^must be a (?P<s>\w+), not a (\w+)$`), "must be an input object, not a $2"},
}

// quoted finds the names a message quotes.
var quoted = regexp.MustCompile(`"([^"]*)"`)

// builtins are the names every GraphQL schema has; naming them reveals nothing.
var builtins = map[string]bool{
	"Int": true, "Float": true, "String": true, "Boolean": true, "ID": true,
	"skip": true, "include": true, "deprecated": true, "specifiedBy": true, "oneOf": true, "if": true,
}

// namedIn returns whether the request text names name: it appears in query
// as a whole GraphQL name (anywhere: a name the client wrote, even in a
// string or comment, reveals nothing when echoed).
func namedIn(query string) func(name string) bool {
	return func(name string) bool {
		if builtins[name] {
			return true
		}
		if name == "" {
			return true
		}
		for i := 0; ; {
			j := strings.Index(query[i:], name)
			if j < 0 {
				return false
			}
			start, end := i+j, i+j+len(name)
			if (start == 0 || !isNameByte(query[start-1])) && (end == len(query) || !isNameByte(query[end])) {
				return true
			}
			i = start + 1
		}
	}
}

func isNameByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// mentionNamed reports whether every name in a quoted or captured text
// ("T", "$v", "@d", "T.f", "[T!]!", `X" and "Y`) is named.
func mentionNamed(text string, named func(string) bool) bool {
	for _, part := range strings.FieldsFunc(text, func(r rune) bool { return r > 127 || !isNameByte(byte(r)) }) {
		if !named(part) {
			return false
		}
	}
	return true
}

// hideSchemaNames rewrites a validation or coercion error so that its
// message and path name nothing of the schema the request query did not.
func hideSchemaNames(e *gqlerror.Error, query string) {
	named := namedIn(query)
	msg := suggestion.ReplaceAllString(e.Message, "")
	// "T.f" where the request wrote f but not T: drop the type.
	msg = quoted.ReplaceAllStringFunc(msg, func(q string) string {
		inner := q[1 : len(q)-1]
		if i := strings.LastIndexByte(inner, '.'); i > 0 && !mentionNamed(inner, named) && mentionNamed(inner[i+1:], named) {
			return `"` + inner[i+1:] + `"`
		}
		return q
	})
	for _, p := range schemaPhrases {
		msg = replaceUnnamed(p.re, msg, p.with, named)
	}
	// A variable's missing input field is named by the path alone.
	if msg == "must be defined" && len(e.Path) > 2 {
		if last, ok := e.Path[len(e.Path)-1].(ast.PathName); ok && !named(string(last)) {
			e.Path = e.Path[:len(e.Path)-1]
			msg = "a required input field was not provided"
		}
	}
	// Whatever still quotes an unnamed name is replaced whole; its location
	// still points at the offending text.
	for _, m := range quoted.FindAllStringSubmatch(msg, -1) {
		if !mentionNamed(m[1], named) {
			msg = "The request does not match the schema here."
			break
		}
	}
	e.Message = msg
}

// replaceUnnamed replaces each match of re in msg with with (expanded from
// the match) when a name in one of its groups named s was not named.
func replaceUnnamed(re *regexp.Regexp, msg, with string, named func(string) bool) string {
	idx := re.FindAllStringSubmatchIndex(msg, -1)
	if idx == nil {
		return msg
	}
	var b strings.Builder
	last := 0
	for _, m := range idx {
		if allNamed(re, msg, m, named) {
			continue
		}
		b.WriteString(msg[last:m[0]])
		b.Write(re.ExpandString(nil, with, msg, m))
		last = m[1]
	}
	b.WriteString(msg[last:])
	return b.String()
}

// allNamed reports whether every group named s of the match m was named.
func allNamed(re *regexp.Regexp, msg string, m []int, named func(string) bool) bool {
	for i, name := range re.SubexpNames() {
		if name == "s" && m[2*i] >= 0 && !mentionNamed(msg[m[2*i]:m[2*i+1]], named) {
			return false
		}
	}
	return true
}
