package graph

import (
	"encoding/json"
	"testing"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
)

// TestEncodeResponseMatchesJSONMarshal checks that splicing the data bytes
// in gives the bytes json.Marshal gives (whose only other change to data is
// HTML-escaping, which the cases below avoid), for every shape a response
// of this transport takes.
func TestEncodeResponseMatchesJSONMarshal(t *testing.T) {
	yes := true
	cases := map[string]*graphql.Response{
		"data":               {Data: json.RawMessage(`{"job":{"id":"1","input":{"a":[1,2.5,"x\"y"]}}}`)},
		"null data":          {Errors: gqlerror.List{{Message: "no", Path: ast.Path{ast.PathName("job")}, Extensions: map[string]any{"code": "NOT_FOUND"}}}},
		"data and errors":    {Data: json.RawMessage(`{"job":null}`), Errors: gqlerror.List{{Message: "no <job>"}}},
		"extensions":         {Data: json.RawMessage(`{}`), Extensions: map[string]any{"cost": 3, "note": "a&b"}},
		"incremental (rare)": {Data: json.RawMessage(`{"a":1}`), Label: "l", Path: ast.Path{ast.PathName("a")}, HasNext: &yes},
	}
	for name, resp := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := encodeResponse(resp)
			if err != nil {
				t.Fatal(err)
			}
			want, err := json.Marshal(resp)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Fatalf("encodeResponse:\n%s\njson.Marshal:\n%s", got, want)
			}
		})
	}
}
