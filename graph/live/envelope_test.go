package live

import (
	"encoding/json"
	"testing"

	"github.com/99designs/gqlgen/graphql"
	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2/gqlerror"
)

// nextMessage frames a result without encoding it twice, and its bytes are
// exactly json.Marshal's, whatever the id and the result hold.
func TestNextMessageMatchesMarshal(t *testing.T) {
	t.Parallel()
	yes := true
	for _, tc := range []struct {
		name string
		id   string
		resp *graphql.Response
	}{
		{"Data", "1", &graphql.Response{Data: json.RawMessage(`{"jobUpdated":{"op":"UPDATED","revision":3}}`)}},
		{"OddID", "a\"b\\c<d>\u2028é", &graphql.Response{Data: json.RawMessage(`{"x":1}`)}},
		{"NoID", "", &graphql.Response{Data: json.RawMessage(`{"x":1}`)}},
		{"HTMLInData", "7", &graphql.Response{Data: json.RawMessage(`{"name":"<b>&"}`)}},
		{"NullData", "7", &graphql.Response{Data: json.RawMessage(`null`)}},
		{"EmptyData", "7", &graphql.Response{}},
		{"Errors", "7", &graphql.Response{Data: json.RawMessage(`null`), Errors: gqlerror.List{{Message: "no"}}}},
		{"HasNext", "7", &graphql.Response{Data: json.RawMessage(`{}`), HasNext: &yes}},
		{"Extensions", "7", &graphql.Response{Data: json.RawMessage(`{}`), Extensions: map[string]any{"k": 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, typ := range []string{transportWS.next, legacyWS.next} {
				want, err := json.Marshal(wsMessage{ID: tc.id, Type: typ, Payload: mustJSON(tc.resp)})
				require.NoError(t, err)
				require.Equal(t, string(want), string(nextMessage(tc.id, typ, tc.resp)))
			}
		})
	}
}

// resultJSON, which SSE and multipart send, is json.Marshal's bytes too.
func TestResultJSONMatchesMarshal(t *testing.T) {
	t.Parallel()
	for _, resp := range []*graphql.Response{
		{Data: json.RawMessage(`{"x":{"y":[1,2]}}`)},
		{Data: json.RawMessage(`{"name":"<b>&"}`)},
		{Data: json.RawMessage(`null`), Errors: gqlerror.List{{Message: "no"}}},
		{},
	} {
		want, err := json.Marshal(resp)
		require.NoError(t, err)
		require.Equal(t, string(want), string(resultJSON(resp)))
	}
}
