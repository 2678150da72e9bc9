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
