package graph_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// refMarker is written into every refused request; no answer may repeat it.
const refMarker = "ZQXJ0ECHO"

// graphQLResponse asks for application/graphql-response+json, in which a
// request refused before execution is a 400 (in application/json, a 200).
var graphQLResponse = http.Header{"Accept": {"application/graphql-response+json"}}

// refAnswer is one HTTP answer of the endpoint.
type refAnswer struct {
	status int
	header http.Header
	body   []byte
}

func refSend(t *testing.T, s *apitest.Server, method, rawQuery, contentType string, header http.Header, body []byte) refAnswer {
	t.Helper()
	u := s.URL + "/graphql"
	if rawQuery != "" {
		u += "?" + rawQuery
	}
	req, err := http.NewRequestWithContext(t.Context(), method, u, bytes.NewReader(body))
	require.NoError(t, err)
	if body == nil {
		req.Body = http.NoBody
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return refAnswer{status: res.StatusCode, header: res.Header, body: raw}
}

// refRequireCodedRefusal checks that an answer is a 4xx GraphQL error body
// whose every error has a message and one of the stable codes, that repeats
// nothing of the request, and returns the first error's code.
func refRequireCodedRefusal(t *testing.T, a refAnswer) string {
	t.Helper()
	require.GreaterOrEqual(t, a.status, 400, "%s", a.body)
	require.Less(t, a.status, 500, "%s", a.body)
	ct := a.header.Get("Content-Type")
	require.True(t, strings.HasPrefix(ct, "application/json") || strings.HasPrefix(ct, "application/graphql-response+json"), "content type %q: %s", ct, a.body)
	var resp struct {
		Errors []struct {
			Message    string         `json:"message"`
			Extensions map[string]any `json:"extensions"`
		} `json:"errors"`
	}
	require.NoError(t, json.Unmarshal(a.body, &resp), "not a GraphQL error body: %s", a.body)
	require.NotEmpty(t, resp.Errors, "%s", a.body)
	var members map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(a.body, &members))
	_, hasData := members["data"]
	require.False(t, hasData, "a refusal is a request error, with no data entry: %s", a.body)
	codes := map[string]bool{"BAD_USER_INPUT": true, "NOT_FOUND": true, "FORBIDDEN": true, "UNAUTHENTICATED": true, "RATE_LIMITED": true, "CONFLICT": true}
	for _, e := range resp.Errors {
		require.NotEmpty(t, e.Message, "%s", a.body)
		code, _ := e.Extensions["code"].(string)
		require.True(t, codes[code], "error without a client code: %s", a.body)
	}
	require.NotContains(t, string(a.body), refMarker, "the answer echoes the request")
	require.NotContains(t, string(a.body), "body:", "the answer echoes the request body")
	require.NotContains(t, string(a.body), "RawParams", "the answer names Go internals")
	return resp.Errors[0].Extensions["code"].(string)
}

func TestTransportRefusalsAreCodedAndEchoNothing(t *testing.T) {
	t.Parallel()
	// With introspection on, messages are not rewritten to hide the schema,
	// so what a transport says reaches the client as it is.
	for _, introspection := range []bool{false, true} {
		t.Run("Introspection"+strconv.FormatBool(introspection), func(t *testing.T) {
			t.Parallel()
			refTransportRefusals(t, apitest.New(t, apitest.Options{Introspection: introspection}))
		})
	}
}

func refTransportRefusals(t *testing.T, s *apitest.Server) {
	u := s.NewUser(t, uuid.Nil)
	auth := http.Header{"Authorization": {"Bearer " + u.Token}}
	query := `{ me { id } } # ` + refMarker
	q := func(kv ...string) string {
		v := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v.Encode()
	}
	body := func(members string) []byte { return []byte(`{"query": "` + query + `"` + members + `}`) }

	cases := []struct {
		name, method, rawQuery, contentType string
		header                              http.Header
		body                                []byte
		status                              int // 0: any 4xx
	}{
		// No transport takes these.
		{name: "PUT", method: http.MethodPut, contentType: "application/json", body: body(""), status: http.StatusMethodNotAllowed},
		{name: "DELETE", method: http.MethodDelete, rawQuery: q("query", query), status: http.StatusMethodNotAllowed},
		{name: "PATCH", method: http.MethodPatch, contentType: "application/json", body: body(""), status: http.StatusMethodNotAllowed},
		{name: "GETWithoutQuery", method: http.MethodGet},
		{name: "POSTWebsocketUpgrade", method: http.MethodPost, contentType: "application/json", body: body(""), header: http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}},
		{name: "POSTTextPlain", method: http.MethodPost, contentType: "text/plain", body: body(""), status: http.StatusUnsupportedMediaType},
		{name: "POSTWithoutContentType", method: http.MethodPost, body: body(""), status: http.StatusUnsupportedMediaType},
		{name: "POSTForm", method: http.MethodPost, contentType: "application/x-www-form-urlencoded", body: []byte(q("query", query))},
		// GET may not run a mutation (GraphQL over HTTP: 405).
		{name: "GETMutation", method: http.MethodGet, rawQuery: q("query", `mutation { deleteMachine(id: "`+uuid.NewString()+`") } # `+refMarker), status: http.StatusMethodNotAllowed},
		{name: "GETMutationByOperationName", method: http.MethodGet, rawQuery: q("query", `query A { me { id } } mutation B { deleteMachine(id: "`+uuid.NewString()+`") } # `+refMarker, "operationName", "B"), status: http.StatusMethodNotAllowed},
		// GET parameters that do not decode.
		{name: "GETVariablesNotJSON", method: http.MethodGet, rawQuery: q("query", query, "variables", "{"+refMarker)},
		{name: "GETVariablesAnArray", method: http.MethodGet, rawQuery: q("query", query, "variables", `["`+refMarker+`"]`)},
		{name: "GETExtensionsNotJSON", method: http.MethodGet, rawQuery: q("query", query, "extensions", refMarker)},
		{name: "GETBadURLEscape", method: http.MethodGet, rawQuery: "query=%zz" + refMarker},
		{name: "GETInvalidUTF8", method: http.MethodGet, rawQuery: "query=%7B%20me%20%7B%20id%20%7D%20%7D%20%23" + refMarker + "%FF%FE"},
		{name: "GETVariablesInvalidUTF8", method: http.MethodGet, rawQuery: q("query", `query($n: String) { me { id } }`) + "&variables=" + url.QueryEscape(`{"n": "`+refMarker) + "%FF" + url.QueryEscape(`"}`)},
		// POST bodies that do not decode.
		{name: "BodyInvalidUTF8InVariable", method: http.MethodPost, contentType: "application/json", body: body(`, "variables": {"n": "` + refMarker + "\xff\xfe" + `"}`), status: http.StatusBadRequest},
		{name: "BodyInvalidUTF8InQuery", method: http.MethodPost, contentType: "application/json", body: []byte("{\"query\": \"{ me { id } } # " + refMarker + "\xc3\x28\"}"), status: http.StatusBadRequest},
		{name: "BodyVariablesAnArray", method: http.MethodPost, contentType: "application/json", body: body(`, "variables": ["` + refMarker + `"]`), status: http.StatusBadRequest},
		{name: "BodyVariablesAString", method: http.MethodPost, contentType: "application/json", body: body(`, "variables": "` + refMarker + `"`), status: http.StatusBadRequest},
		{name: "BodyVariablesANumber", method: http.MethodPost, contentType: "application/json", body: body(`, "variables": 5, "x": "` + refMarker + `"`), status: http.StatusBadRequest},
		{name: "BodyQueryANumber", method: http.MethodPost, contentType: "application/json", body: []byte(`{"query": 5, "x": "` + refMarker + `"}`), status: http.StatusBadRequest},
		{name: "BodyQueryAnObject", method: http.MethodPost, contentType: "application/json", body: []byte(`{"query": {"q": "` + refMarker + `"}}`), status: http.StatusBadRequest},
		{name: "BodyOperationNameANumber", method: http.MethodPost, contentType: "application/json", body: body(`, "operationName": 7, "x": "` + refMarker + `"`), status: http.StatusBadRequest},
		{name: "BodyExtensionsAList", method: http.MethodPost, contentType: "application/json", body: body(`, "extensions": ["` + refMarker + `"]`), status: http.StatusBadRequest},
		{name: "BodyTrailingData", method: http.MethodPost, contentType: "application/json", body: append(body(""), []byte(` {"x": "`+refMarker+`"}`)...), status: http.StatusBadRequest},
		{name: "BodyHugeExponent", method: http.MethodPost, contentType: "application/json", header: graphQLResponse,
			body: []byte(`{"query": "query($f: Int) { machines(first: $f) { totalCount } } # ` + refMarker + `", "variables": {"f": 1e999999}}`)},
		{name: "BodyHugeInteger", method: http.MethodPost, contentType: "application/json", header: graphQLResponse,
			body: []byte(`{"query": "query($f: Int) { machines(first: $f) { totalCount } } # ` + refMarker + `", "variables": {"f": 1` + strings.Repeat("0", 5000) + `}}`)},
		{name: "BodyHugeNestedInteger", method: http.MethodPost, contentType: "application/json", header: graphQLResponse,
			body: []byte(`{"query": "query($f: [Int!]) { machines(first: 1) { totalCount } } # ` + refMarker + `", "variables": {"f": [1` + strings.Repeat("0", 5000) + `]}}`)},
		// Websocket handshakes the websocket library refuses (as text/plain).
		{name: "WebsocketWithoutKey", method: http.MethodGet, header: http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}, "Sec-Websocket-Version": {"13"}, "Sec-Websocket-Protocol": {"graphql-transport-ws"}}},
		{name: "WebsocketWrongVersion", method: http.MethodGet, header: http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}, "Sec-Websocket-Version": {"7" + refMarker},
			"Sec-Websocket-Key": {base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))}, "Sec-Websocket-Protocol": {"graphql-transport-ws"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			for k, v := range auth {
				h[k] = v
			}
			for k, v := range c.header {
				h[k] = v
			}
			a := refSend(t, s, c.method, c.rawQuery, c.contentType, h, c.body)
			require.Equal(t, "BAD_USER_INPUT", refRequireCodedRefusal(t, a))
			if c.status != 0 {
				require.Equal(t, c.status, a.status, "%s", a.body)
			}
			if a.status == http.StatusMethodNotAllowed {
				require.NotEmpty(t, a.header.Get("Allow"))
			}
		})
	}

	// A body that is not one request object (a batch, a bare value, two
	// objects) is refused as not a GraphQL request, as a body whose members
	// are of the wrong types is.
	t.Run("NotARequestObject", func(t *testing.T) {
		t.Parallel()
		for _, b := range []string{`[` + string(body("")) + `]`, `"` + refMarker + `"`, `5`, string(body("")) + ` {"x": "` + refMarker + `"}`, `{"query": 5, "x": "` + refMarker + `"}`} {
			a := refSend(t, s, http.MethodPost, "", "application/json", auth, []byte(b))
			require.Equal(t, http.StatusBadRequest, a.status, "%s", b)
			var out struct{ Errors []apitest.Error }
			require.NoError(t, json.Unmarshal(a.body, &out), "%s", a.body)
			require.Len(t, out.Errors, 1)
			require.Equal(t, "NOT_A_GRAPHQL_REQUEST", out.Errors[0].Extensions["reason"], "%s: %s", b, a.body)
		}
	})

	// OPTIONS is allowed, so it is answered (not 405) with what is
	// allowed, whatever credentials it carries; HEAD is refused like PUT,
	// and the Allow header of a 405 names no method that is itself refused.
	t.Run("OPTIONSWithoutPreflight", func(t *testing.T) {
		t.Parallel()
		for _, h := range []http.Header{auth, {"Authorization": {"Bearer not-a-token"}}, {}} {
			a := refSend(t, s, http.MethodOptions, q("query", query), "", h, nil)
			require.Equal(t, http.StatusNoContent, a.status, "%s", a.body)
			require.Equal(t, "GET, POST, OPTIONS", a.header.Get("Allow"))
			require.Empty(t, a.body)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		t.Parallel()
		a := refSend(t, s, http.MethodHead, q("query", query), "", auth, nil)
		require.Equal(t, http.StatusMethodNotAllowed, a.status)
		require.Equal(t, "GET, POST, OPTIONS", a.header.Get("Allow"))
		require.Empty(t, a.body)
		put := refSend(t, s, http.MethodPut, "", "application/json", auth, body(""))
		require.Equal(t, a.header.Get("Allow"), put.header.Get("Allow"))
	})

	t.Run("ControlGETQueryRuns", func(t *testing.T) {
		t.Parallel()
		a := refSend(t, s, http.MethodGet, q("query", query), "", auth, nil)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		require.Contains(t, string(a.body), u.ID.String())
	})

	t.Run("ControlGETWithAnotherUpgradeRuns", func(t *testing.T) {
		// An Upgrade other than websocket is ignored (TestOtherUpgradesArePlainRequests).
		h := http.Header{"Upgrade": {"h2c-" + refMarker}, "Connection": {"Upgrade"}}
		for k, v := range auth {
			h[k] = v
		}
		a := refSend(t, s, http.MethodGet, q("query", query), "", h, nil)
		require.Equal(t, http.StatusOK, a.status, "%s", a.body)
		require.Contains(t, string(a.body), u.ID.String())
	})

	t.Run("ControlWebsocketUpgrades", func(t *testing.T) {
		t.Parallel()
		conn := wsDial(t, s, map[string]any{"authorization": "Bearer " + u.Token}, nil)
		require.NotNil(t, conn)
	})
}

// A token the JWT checks refuse is refused over HTTP as UNAUTHENTICATED,
// naming the problem and repeating nothing of the token.
func TestStrictJWTRefusalsOverHTTP(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	future := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	claims := `{"sub":"` + uuid.NewString() + `","aud":"authenticated","role":"authenticated","exp":`
	for name, tc := range map[string]struct{ header, claims, want string }{
		"UnknownCrit": {`{"alg":"HS256","typ":"JWT","crit":["urn:` + refMarker + `"]}`, claims + future + `}`, "crit"},
		"StringExp":   {`{"alg":"HS256","typ":"JWT"}`, claims + `"` + future + `"}`, "exp"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			enc := base64.RawURLEncoding
			input := enc.EncodeToString([]byte(tc.header)) + "." + enc.EncodeToString([]byte(tc.claims))
			mac := hmac.New(sha256.New, []byte(apitest.Secret))
			mac.Write([]byte(input))
			token := input + "." + enc.EncodeToString(mac.Sum(nil))
			a := refSend(t, s, http.MethodPost, "", "application/json", http.Header{"Authorization": {"Bearer " + token}}, []byte(`{"query": "{ me { id } }"}`))
			require.Equal(t, "UNAUTHENTICATED", refRequireCodedRefusal(t, a), "%s", a.body)
			require.Contains(t, string(a.body), tc.want)
			require.NotContains(t, string(a.body), input)
		})
	}
}
