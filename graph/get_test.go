package graph_test

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph/live"
)

// GET is safe: no transport runs a mutation for a GET request, whatever it
// accepts; the database shows nothing happened.
func TestGetNeverRunsAMutation(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	const mutation = `mutation { createMachine(input: {name: "via-get"}) { id } }`

	for _, accept := range []string{"", "application/json", "application/graphql-response+json", "text/event-stream", "text/event-stream, application/json;q=0.5", "*/*"} {
		t.Run("Accept="+accept, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, s.URL+"/graphql?"+url.Values{"query": {mutation}}.Encode(), nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+u.Token)
			if accept != "" {
				req.Header.Set("Accept", accept)
			}
			res, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			res.Body.Close()
			require.NotContains(t, string(body), `"createMachine":{`, "the mutation ran: %s", body)
			require.Contains(t, string(body), "BAD_USER_INPUT", "the refusal says why: %s", body)
			var n int
			require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM machines").Scan(t.Context(), &n))
			require.Zero(t, n, "a machine was created over GET")
		})
	}
	// Queries over GET still work, on both transports.
	q := url.Values{"query": {`query($n: Int) { machines(first: $n) { totalCount } }`}, "variables": {`{"n": 5}`}}
	for _, accept := range []string{"application/json", "text/event-stream"} {
		req, err := http.NewRequest(http.MethodGet, s.URL+"/graphql?"+q.Encode(), nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+u.Token)
		req.Header.Set("Accept", accept)
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		res.Body.Close()
		require.Contains(t, string(body), `"totalCount":0`, "Accept %s: %s", accept, body)
	}
}

// Content negotiation follows the Accept header's q-values and order: SSE
// only when the client prefers it to JSON (urql lists text/event-stream
// after the JSON types on every request and must get JSON).
func TestAcceptNegotiation(t *testing.T) {
	t.Parallel()
	cases := map[string]bool{
		"text/event-stream":                   true,
		"text/event-stream, application/json": true,
		"application/json, text/event-stream": false,
		"application/graphql-response+json, application/graphql+json, application/json, text/event-stream, multipart/mixed": false,
		"application/json;q=0.5, text/event-stream":       true,
		"text/event-stream;q=0.4, application/json;q=0.9": false,
		"text/event-stream;q=0":                           false,
		"*/*":                                             false,
		"text/event-stream, */*":                          true,
		"*/*, text/event-stream":                          true,
		"application/*;q=1, text/event-stream;q=0.9":      false,
		"text/event-stream;q=bad":                         false,
		"":                                                false,
		"text/html":                                       false,
	}
	for accept, want := range cases {
		require.Equal(t, want, live.PrefersEventStream(accept), "Accept: %q", accept)
	}

	// urql's defaults end to end: a GET with an Int variable answers JSON.
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	q := url.Values{"query": {`query($n: Int!) { machines(first: $n) { totalCount } }`}, "variables": {`{"n": 3}`}}
	req, err := http.NewRequest(http.MethodGet, s.URL+"/graphql?"+q.Encode(), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+u.Token)
	req.Header.Set("Accept", "application/graphql-response+json, application/graphql+json, application/json, text/event-stream, multipart/mixed")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	res.Body.Close()
	require.True(t, strings.HasPrefix(res.Header.Get("Content-Type"), "application/"), "content type %q", res.Header.Get("Content-Type"))
	require.JSONEq(t, `{"data":{"machines":{"totalCount":0}}}`, string(body))
}
