package playground_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/dbtest"
	"fleetgraph/playground"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// TestPlaygroundAgainstServer runs a subscription from the playground in a
// real browser against the real API, mounted as server.go mounts them, and
// watches the result pane follow the machine.
func TestPlaygroundAgainstServer(t *testing.T) {
	t.Parallel()

	b := startBrowser(t)
	// Introspection is on, as it is whenever the server serves the playground
	// by default, so GraphiQL loads the schema.
	api := apitest.New(t, apitest.Options{Introspection: true})
	ctx, cancel := context.WithTimeout(context.Background(), browserTestTimeout)
	t.Cleanup(cancel)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", api.Log.String())
		}
	})
	mux := http.NewServeMux()
	pg := playground.Handler("Fleetgraph", "/graphql")
	mux.Handle("GET /{$}", pg)
	mux.Handle("GET /playground/", pg)
	mux.Handle("/graphql", api.Handler)
	server := httptest.NewServer(mux)
	// Websockets are hijacked: close them (with 1001) before the server,
	// whose Close would otherwise wait for them.
	t.Cleanup(func() {
		closeCtx, closeCancel := context.WithTimeout(context.Background(), browserTestTimeout)
		defer closeCancel()
		_ = api.Handler.CloseWebsockets(closeCtx)
		server.Close()
	})

	user := api.NewUser(t, uuid.Nil)
	var created struct{ CreateMachine struct{ ID string } }
	api.Do(t, user.Token, `mutation { createMachine(input: {name: "playground-live"}) { id } }`, nil).OK(t, &created)
	id := created.CreateMachine.ID

	query := `subscription { machineUpdated(id: "` + id + `") { op version machine { name status } } }`
	tb := b.openTab(ctx, t)
	require.NoError(t, tb.navigate(ctx, server.URL+"/?"+url.Values{
		"query":   {query},
		"headers": {`{"Authorization":"Bearer ` + user.Token + `"}`},
	}.Encode()))
	// GraphiQL parses the query after a debounce; the fetcher needs the
	// parsed document to route the operation to the websocket.
	err := tb.waitFor(ctx, queryEditorJS+`.documentAST !== null && document.querySelector('.graphiql-execute-button') !== null`, nil)
	require.NoError(t, err, tb.describe())
	require.NoError(t, tb.evaluate(ctx, executeJS, nil))
	var text string
	err = tb.waitFor(ctx, `(`+responseJS+`.includes('"CURRENT"')) && `+responseJS, &text)
	require.NoError(t, err, tb.describe())
	require.Contains(t, text, `"status": "STOPPED"`)
	require.Contains(t, text, `"name": "playground-live"`)
	require.NotContains(t, text, `"errors"`)

	// The subscription is live: a change from elsewhere reaches the pane.
	api.Do(t, user.Token, `mutation($id: ID!) { startMachine(id: $id) { status } }`, map[string]any{"id": id}).OK(t, nil)
	err = tb.waitFor(ctx, `(`+responseJS+`.includes('"RUNNING"')) && `+responseJS, &text)
	require.NoError(t, err, tb.describe())
	require.Contains(t, text, `"op": "UPDATED"`)

	shot, err := tb.screenshot(ctx)
	require.NoError(t, err)
	requireRendered(t, shot)
	if path := os.Getenv("PLAYGROUND_LIVE_SCREENSHOT"); path != "" {
		require.NoError(t, os.WriteFile(path, shot, 0o644))
	}
	var problems []string
	require.NoError(t, tb.evaluate(ctx, `window.__problems`, &problems))
	require.Empty(t, problems)
}

// TestPlaygroundKnowsTheSchema opens the playground of the real API as the
// development server serves it (default headers in place, introspection on)
// and uses it as a developer would: the schema loads (GraphiQL's 15-level
// introspection query passes the server's limits), the Docs pane lists the
// root types, autocompletion offers the schema's fields, and a query runs
// with the headers the page came with.
func TestPlaygroundKnowsTheSchema(t *testing.T) {
	t.Parallel()

	b := startBrowser(t)
	api := apitest.New(t, apitest.Options{Introspection: true})
	ctx, cancel := context.WithTimeout(context.Background(), browserTestTimeout)
	t.Cleanup(cancel)
	user := api.NewUser(t, uuid.Nil)
	api.Do(t, user.Token, `mutation { createMachine(input: {name: "docs-pane"}) { id } }`, nil).OK(t, nil)

	mux := http.NewServeMux()
	pg := playground.Handler("Fleetgraph", "/graphql", playground.WithDefaultHeaders(`{"Authorization": "Bearer `+user.Token+`"}`))
	mux.Handle("GET /{$}", pg)
	mux.Handle("GET /playground/", pg)
	mux.Handle("/graphql", api.Handler)
	server := httptest.NewServer(mux)
	t.Cleanup(server.Close)

	tb := b.openTab(ctx, t)
	require.NoError(t, tb.navigate(ctx, server.URL+"/"))
	require.NoError(t, tb.waitFor(ctx, `document.querySelector('.graphiql-execute-button') !== null`, nil), tb.describe())

	// The Docs pane: open it and wait for the schema's root types.
	require.NoError(t, tb.evaluate(ctx, `document.querySelector('.graphiql-sidebar-section button[data-index="0"]').click()`, nil))
	var docs string
	err := tb.waitFor(ctx, `(() => { const d = document.querySelector('.graphiql-doc-explorer'); return d && d.innerText.includes('Query') && d.innerText.includes('Mutation') && d.innerText; })()`, &docs)
	require.NoError(t, err, tb.describe())
	require.NotContains(t, docs, "Error fetching schema")

	// Autocompletion offers the schema's fields at the cursor.
	require.NoError(t, tb.evaluate(ctx, queryEditorJS+`.setValue('{ mach')`, nil))
	require.NoError(t, tb.evaluate(ctx, `(() => { const cm = `+queryEditorJS+`; cm.focus(); cm.setCursor({line: 0, ch: 6}); cm.showHint({completeSingle: false}); return true; })()`, nil))
	var hints []string
	err = tb.waitFor(ctx, `(() => { const h = [...document.querySelectorAll('.CodeMirror-hint')].map((e) => e.innerText.trim()); return h.includes('machines') && h; })()`, &hints)
	require.NoError(t, err, tb.describe())
	require.Contains(t, hints, "machineEvents")

	// A query runs with the default headers: the user's own machine.
	require.NoError(t, tb.evaluate(ctx, queryEditorJS+`.setValue('{ machines { totalCount edges { node { name } } } }')`, nil))
	err = tb.waitFor(ctx, queryEditorJS+`.documentAST !== null && `+queryEditorJS+`.documentAST.loc.source.body.includes('totalCount')`, nil)
	require.NoError(t, err, tb.describe())
	require.NoError(t, tb.waitFor(ctx, `document.querySelector('.graphiql-execute-button').getAttribute('aria-label').startsWith('Execute')`, nil))
	require.NoError(t, tb.evaluate(ctx, executeJS, nil))
	var text string
	err = tb.waitFor(ctx, `(`+responseJS+`.includes('"docs-pane"')) && `+responseJS, &text)
	require.NoError(t, err, tb.describe())
	require.Contains(t, text, `"totalCount": 1`)
	require.NotContains(t, text, `"errors"`)
}
