package graph_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// FuzzRequest throws documents and variables at the real HTTP endpoint, as
// an anonymous client and as a signed-in user: whatever arrives, the server
// must not panic, must not answer INTERNAL or a 5xx (a malformed request is
// the client's error), and must not allocate more than a bound per request.
// `go test` runs the seeds; .ci/run fuzzes it for a short fixed time.
func FuzzRequest(f *testing.F) {
	s := apitest.New(f)
	user := s.NewUser(f, uuid.Nil)
	for _, seed := range []struct{ query, vars string }{
		{`{ me { id } }`, ``},
		{`query($n: Int) { machines(first: $n) { totalCount edges { node { id name } } } }`, `{"n": 5}`},
		{`query($n: Int) { machines(first: $n) { totalCount } }`, `{"n": 2147483648}`},
		{`query($a: String) { machines(after: $a) { totalCount } }`, `{"a": "bm90IGEgY3Vyc29y"}`},
		{`mutation($i: CreateMachineInput!) { createMachine(input: $i) { id } }`, `{"i": {"name": "x", "configuration": {"a": [1, 2, {"b": null}]}}}`},
		{`query($f: JobFilter) { jobs(filter: $f) { totalCount } }`, `{"f": {"status": "QUEUED"}}`},
		{`{ jobs(first: 500) { edges { node { workflow { versions { definition } } } } } }`, ``},
		{`query { ...F } fragment F on Query { ...G ...G } fragment G on Query { me { id } }`, ``},
		{`{ a: me { id } a: robots { totalCount } }`, ``},
		{`subscription { machineChanged { op } }`, ``},
		{`{ __schema { types { name } } }`, ``},
		{`{ machine(id: "not-a-uuid") { id } }`, ``},
		{`query($t: Time) { machineEvents(machineId: "00000000-0000-0000-0000-000000000000", after: $t) { totalCount } }`, `{"t": "0000-01-01T00:00:00Z"}`},
		{`{ me { id `, `{`},
		{"{ me { id } }\x00", `[]`},
	} {
		f.Add(seed.query, seed.vars)
	}
	f.Fuzz(func(t *testing.T, query, vars string) {
		params := map[string]any{"query": query}
		if json.Valid([]byte(vars)) {
			params["variables"] = json.RawMessage(vars)
		}
		body, err := json.Marshal(params)
		if err != nil {
			return // not valid UTF-8 JSON text; the body check has its own tests
		}
		for _, token := range []string{"", user.Token} {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			status, raw := fuzzPost(t, s.URL, token, body)
			runtime.ReadMemStats(&after)
			require.Less(t, status, 500, "query %q variables %q: %s", query, vars, raw)
			require.NotContains(t, string(raw), `"INTERNAL"`, "query %q variables %q: %s", query, vars, raw)
			require.False(t, strings.Contains(s.Log.String(), "panic"), "a request panicked: query %q variables %q", query, vars)
			require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<20), "query %q variables %q allocated too much", query, vars)
		}
	})
}

func fuzzPost(t *testing.T, url, token string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/graphql", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, raw
}
