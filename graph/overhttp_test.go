package graph_test

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph"
)

// The GraphQL-over-HTTP status rules: a request error is a 200 in
// application/json (Apollo Client hides the errors of a 4xx behind a
// network error) and a 400 without a data entry in
// application/graphql-response+json; once execution started it is 200 in
// both; the media type follows the Accept header's q-values and order.
func TestStatusByMediaType(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)

	post := func(t *testing.T, accept, contentType, body string) *apitest.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, s.URL+"/graphql", strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+u.Token)
		req.Header.Set("Content-Type", contentType)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		return s.Send(t, req)
	}
	hasData := func(raw []byte) bool {
		var m map[string]json.RawMessage
		_ = json.Unmarshal(raw, &m)
		_, ok := m["data"]
		return ok
	}

	requestErrors := map[string]string{
		"parse":      `{"query": "{ machines("}`,
		"validation": `{"query": "{ noSuchField }"}`,
		"variable":   `{"query": "query($n: Int!) { machines(first: $n) { totalCount } }", "variables": {"n": "three"}}`,
		"missingVar": `{"query": "query($id: ID!) { machine(id: $id) { id } }"}`,
		"unknown op": `{"query": "query A { me { id } }", "operationName": "B"}`,
	}
	// A limit refused before execution: more aliases than Limits.Aliases.
	var aliases strings.Builder
	for i := range graph.DefaultLimits.Aliases + 1 {
		fmt.Fprintf(&aliases, " a%d: __typename", i)
	}
	requestErrors["alias limit"] = `{"query": "{` + aliases.String() + ` }"}`
	for name, body := range requestErrors {
		t.Run("RequestError/"+name, func(t *testing.T) {
			for accept, want := range map[string]struct {
				status int
				typ    string
			}{
				"":                                  {200, "application/json"},
				"application/json":                  {200, "application/json"},
				"*/*":                               {200, "application/json"},
				"application/graphql-response+json": {400, "application/graphql-response+json"},
				// urql's default
				"application/graphql-response+json, application/graphql+json, application/json, text/event-stream, multipart/mixed": {400, "application/graphql-response+json"},
				"application/graphql-response+json;q=0.5, application/json":                                                         {200, "application/json"},
				"application/json;q=0.9, application/graphql-response+json":                                                         {400, "application/graphql-response+json"},
			} {
				res := post(t, accept, "application/json", body)
				require.Equal(t, want.status, res.Status, "Accept %q: %s", accept, res.Raw)
				require.True(t, strings.HasPrefix(res.Header.Get("Content-Type"), want.typ), "Accept %q: content type %q", accept, res.Header.Get("Content-Type"))
				res.Code(t, "BAD_USER_INPUT")
				require.False(t, hasData(res.Raw), "a request error has no data entry: %s", res.Raw)
			}
		})
	}

	t.Run("ExecutionStarted", func(t *testing.T) {
		// A field error after execution started: 200 in both types, data
		// present.
		body := `{"query": "{ machine(id: \"` + uuid.NewString() + `\") { id } }"}`
		for _, accept := range []string{"application/json", "application/graphql-response+json"} {
			res := post(t, accept, "application/json", body)
			require.Equal(t, http.StatusOK, res.Status, "Accept %q: %s", accept, res.Raw)
			require.True(t, hasData(res.Raw), "Accept %q: %s", accept, res.Raw)
		}
		res := post(t, "application/graphql-response+json", "application/json", `{"query": "{ machines { totalCount } }"}`)
		require.Equal(t, http.StatusOK, res.Status)
		require.JSONEq(t, `{"data":{"machines":{"totalCount":0}}}`, string(res.Raw))
	})

	t.Run("NotAGraphQLRequest", func(t *testing.T) {
		// 400 in either type: the body is JSON but not a GraphQL request.
		for _, body := range []string{`{}`, `{"query": 1}`, `{"query": "{ me { id } }", "variables": "x"}`, `{"query": "{ me { id } }", "operationName": false}`, `{"query": "{ me { id } }", "extensions": []}`, `{"qeury": "{ me { id } }"}`} {
			for _, accept := range []string{"application/json", "application/graphql-response+json", "text/event-stream", `multipart/mixed;subscriptionSpec="1.0"`} {
				res := post(t, accept, "application/json", body)
				require.Equal(t, http.StatusBadRequest, res.Status, "%s, Accept %q: %s", body, accept, res.Raw)
				require.Equal(t, "NOT_A_GRAPHQL_REQUEST", res.Code(t, "BAD_USER_INPUT").Extensions["reason"], "%s, Accept %q", body, accept)
				require.NotContains(t, string(res.Raw), "RawParams", "no decoder internals")
			}
		}
	})

	t.Run("NotAcceptable", func(t *testing.T) {
		for _, accept := range []string{"text/html", "application/xml", "application/json;q=0, application/graphql-response+json;q=0", "text/event-stream;q=0"} {
			res := post(t, accept, "application/json", `{"query": "{ me { id } }"}`)
			require.Equal(t, http.StatusNotAcceptable, res.Status, "Accept %q: %s", accept, res.Raw)
			require.Equal(t, "NOT_ACCEPTABLE", res.Code(t, "BAD_USER_INPUT").Extensions["reason"])
		}
	})

	t.Run("UnsupportedMediaType", func(t *testing.T) {
		for _, ct := range []string{"text/plain", "application/graphql-response+json", "application/json; charset=latin1", "application/x-www-form-urlencoded", ""} {
			res := post(t, "application/json", ct, `{"query": "{ me { id } }"}`)
			require.Equal(t, http.StatusUnsupportedMediaType, res.Status, "Content-Type %q: %s", ct, res.Raw)
			res.Code(t, "BAD_USER_INPUT")
		}
		res := post(t, "application/json", "application/json; charset=UTF-8", `{"query": "{ me { id } }"}`)
		require.Equal(t, http.StatusOK, res.Status, "%s", res.Raw)
	})

	t.Run("GET", func(t *testing.T) {
		get := func(q url.Values, accept string) *apitest.Response {
			req, err := http.NewRequest(http.MethodGet, s.URL+"/graphql?"+q.Encode(), nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+u.Token)
			req.Header.Set("Accept", accept)
			return s.Send(t, req)
		}
		bad := url.Values{"query": {"{ noSuchField }"}}
		require.Equal(t, http.StatusOK, get(bad, "application/json").Status)
		res := get(bad, "application/graphql-response+json")
		require.Equal(t, http.StatusBadRequest, res.Status)
		require.False(t, hasData(res.Raw), "%s", res.Raw)
		// A subscription needs a stream: 405, Allow: POST.
		res = get(url.Values{"query": {"subscription { machineUpdated { id } }"}}, "application/json")
		require.Equal(t, http.StatusMethodNotAllowed, res.Status, "%s", res.Raw)
		require.Equal(t, "POST", res.Header.Get("Allow"))
		res.Code(t, "BAD_USER_INPUT")
	})
}

// An Upgrade other than websocket is a plain request: curl --http2 on an
// http:// URL offers h2c, which a server may ignore (RFC 9110, section
// 7.8), and this one upgrades to nothing else. A request that offers a
// websocket, in any case, is never answered as a plain query.
func TestOtherUpgradesArePlainRequests(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	send := func(t *testing.T, method, upgrade string, accept ...string) *apitest.Response {
		t.Helper()
		var req *http.Request
		var err error
		if method == http.MethodGet {
			req, err = http.NewRequest(method, s.URL+"/graphql?"+url.Values{"query": {"{ me { id } }"}}.Encode(), nil)
		} else {
			req, err = http.NewRequest(method, s.URL+"/graphql", strings.NewReader(`{"query": "{ me { id } }"}`))
			req.Header.Set("Content-Type", "application/json")
		}
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+u.Token)
		req.Header.Set("Connection", "Upgrade, HTTP2-Settings")
		req.Header.Set("Upgrade", upgrade)
		req.Header.Set("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA")
		for _, a := range accept {
			req.Header.Set("Accept", a)
		}
		return s.Send(t, req)
	}
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		for _, upgrade := range []string{"h2c", "HTTP/2.0, h2c", "foo/1"} {
			res := send(t, method, upgrade)
			require.Equal(t, http.StatusOK, res.Status, "%s with Upgrade %q: %s", method, upgrade, res.Raw)
			res.OK(t, nil)
			require.Contains(t, string(res.Data), u.ID.String())
		}
		for _, upgrade := range []string{"websocket", "WebSocket", "h2c, websocket"} {
			res := send(t, method, upgrade, "application/json")
			require.NotEqual(t, http.StatusOK, res.Status, "%s with Upgrade %q answered as a plain request: %s", method, upgrade, res.Raw)
			res.Code(t, "BAD_USER_INPUT")
		}
	}
	// Nor as a stream: a POST that offers a websocket is refused whatever
	// it accepts, saying that only a GET upgrades.
	for _, accept := range []string{"application/json", "text/event-stream", `multipart/mixed;subscriptionSpec="1.0"`} {
		res := send(t, http.MethodPost, "websocket", accept)
		require.Equal(t, http.StatusBadRequest, res.Status, "Accept %q: %s", accept, res.Raw)
		require.Contains(t, res.Code(t, "BAD_USER_INPUT").Message, "GET")
	}
}

// A websocket offered among other protocols, or in another case, is
// upgraded as the websocket library reads it: every check of "is this an
// upgrade" reads the Upgrade header one way (live.OffersWebsocket); the
// middleware used to compare the whole header, and refused these with 400.
func TestWebsocketOfferedInAListIsUpgraded(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	for _, upgrade := range []string{"h2c, websocket", "WebSocket", "websocket"} {
		req, err := http.NewRequest(http.MethodGet, s.URL+"/graphql", nil)
		require.NoError(t, err)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", upgrade)
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		req.Header.Set("Sec-WebSocket-Protocol", "graphql-transport-ws")
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		_ = res.Body.Close()
		require.Equal(t, http.StatusSwitchingProtocols, res.StatusCode, "Upgrade %q: %s", upgrade, body)
	}
}

// A request body with a Content-Encoding other than identity is refused
// with 415 and Accept-Encoding: identity (RFC 7694), saying so: a gzip
// body used to be refused as "not a JSON object", and a plain body
// labelled br was run.
func TestEncodedBodiesAreRefused(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	const query = `{"query": "{ me { id } }"}`
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, err := zw.Write([]byte(query))
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	post := func(t *testing.T, body []byte, encodings ...string) *apitest.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, s.URL+"/graphql", bytes.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+u.Token)
		req.Header.Set("Content-Type", "application/json")
		for _, e := range encodings {
			req.Header.Add("Content-Encoding", e)
		}
		return s.Send(t, req)
	}
	for _, c := range []struct {
		name      string
		body      []byte
		encodings []string
	}{
		{"Gzip", gz.Bytes(), []string{"gzip"}},
		{"BrOnAPlainBody", []byte(query), []string{"br"}},
		{"UnknownCoding", []byte(query), []string{"x-made-up"}},
		{"GzipAmongIdentity", gz.Bytes(), []string{"identity, GZIP"}},
		{"SecondHeader", gz.Bytes(), []string{"identity", "gzip"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := post(t, c.body, c.encodings...)
			require.Equal(t, http.StatusUnsupportedMediaType, res.Status, "%s", res.Raw)
			require.Equal(t, "identity", res.Header.Get("Accept-Encoding"))
			require.Contains(t, res.Code(t, "BAD_USER_INPUT").Message, "Content-Encoding")
		})
	}
	t.Run("Identity", func(t *testing.T) {
		for _, encodings := range [][]string{nil, {"identity"}, {"Identity"}} {
			res := post(t, []byte(query), encodings...)
			require.Equal(t, http.StatusOK, res.Status, "Content-Encoding %q: %s", encodings, res.Raw)
			res.OK(t, nil)
			require.Contains(t, string(res.Data), u.ID.String())
		}
	})
}

// An Accept header split over several lines is one list (RFC 9110 §5.3):
// every transport read only its first line, so a second line's JSON was
// refused (406) and a second line's event stream went unseen.
func TestAcceptOverSeveralLines(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	send := func(t *testing.T, accepts ...string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, s.URL+"/graphql", strings.NewReader(`{"query": "{ me { id } }"}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+u.Token)
		for _, a := range accepts {
			req.Header.Add("Accept", a)
		}
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		_ = res.Body.Close()
		return res
	}
	res := send(t, "text/plain", "application/json")
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "application/json", res.Header.Get("Content-Type"))
	res = send(t, "application/json;q=0.1", "text/event-stream")
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "text/event-stream", res.Header.Get("Content-Type"))
	res = send(t, "application/json;q=0.1", `multipart/mixed;subscriptionSpec="1.0"`)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Contains(t, res.Header.Get("Content-Type"), "multipart/mixed")
}

// A persisted mutation sent by GET is 405 with Allow: POST on every
// transport, as a mutation written in the query string is: over SSE and
// multipart it was a 200 stream carrying the refusal.
func TestPersistedMutationsByGetAre405OnEveryTransport(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	const mutation = `mutation M { __typename }`
	sum := sha256.Sum256([]byte(mutation))
	ext := `{"persistedQuery":{"version":1,"sha256Hash":"` + hex.EncodeToString(sum[:]) + `"}}`
	b, err := json.Marshal(map[string]any{"query": mutation, "extensions": json.RawMessage(ext)})
	require.NoError(t, err)
	s.Post(t, u.Token, "application/json", b).OK(t, nil) // now remembered
	for _, accept := range []string{"application/json", "application/graphql-response+json", "text/event-stream", `multipart/mixed;subscriptionSpec="1.0"`} {
		req, err := http.NewRequest(http.MethodGet, s.URL+"/graphql?"+url.Values{"extensions": {ext}}.Encode(), nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+u.Token)
		req.Header.Set("Accept", accept)
		res := s.Send(t, req)
		require.Equal(t, http.StatusMethodNotAllowed, res.Status, "Accept %q: %s", accept, res.Raw)
		require.Equal(t, "POST", res.Header.Get("Allow"))
		require.Equal(t, "MUTATION_OVER_GET", res.Code(t, "BAD_USER_INPUT").Extensions["reason"])
	}
}
