package playground_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"fleetgraph/playground"
)

// newPlaygroundMux mounts the playground exactly as the package documentation
// tells the server to.
func newPlaygroundMux(title, endpoint string) *http.ServeMux {
	mux := http.NewServeMux()
	h := playground.Handler(title, endpoint)
	mux.Handle("GET /{$}", h)
	mux.Handle("GET /playground/", h)
	return mux
}

// get fetches url with optional request headers and returns the response with
// its body read.
func get(t *testing.T, url string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	// Setting Accept-Encoding by hand stops the transport from decompressing
	// behind the test's back, so the test sees exactly what was sent.
	if _, ok := header["Accept-Encoding"]; !ok {
		req.Header.Set("Accept-Encoding", "identity")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

var (
	// tagAttr finds the URLs that the page's <script> and <link> tags load.
	tagAttr = regexp.MustCompile(`<(script|link)\b[^>]*?\b(src|href)="([^"]*)"`)
	// externalURL matches a URL that leaves the server the page came from.
	externalURL = regexp.MustCompile(`^(?i)([a-z][a-z0-9+.-]*:)?//`)
)

// pageAssets returns the URLs the page's <script> and <link> tags load.
func pageAssets(page string) []string {
	var urls []string
	for _, m := range tagAttr.FindAllStringSubmatch(page, -1) {
		urls = append(urls, m[3])
	}
	return urls
}

func TestHandler(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		server *httptest.Server
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		server := httptest.NewServer(newPlaygroundMux(`Fleet <graph> & "co"`, "/graphql"))
		t.Cleanup(server.Close)
		return &testBundle{server: server}
	}

	t.Run("ServesPageAndEveryAssetItLoads", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		resp, body := get(t, bundle.server.URL+"/", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
		page := string(body)

		assets := pageAssets(page)
		require.Len(t, assets, 8, "an icon, two style sheets and five scripts, found %q", assets)
		wantTypes := map[string]string{
			".js":  "text/javascript; charset=utf-8",
			".css": "text/css; charset=utf-8",
		}
		for _, asset := range assets {
			if asset == "data:," {
				continue // the empty favicon that stops a request for /favicon.ico
			}
			u, err := url.Parse(asset)
			require.NoError(t, err)
			require.False(t, u.IsAbs(), "asset %s must be relative", asset)
			require.True(t, strings.HasPrefix(u.Path, "playground/assets/"), "asset %s", asset)

			resp, body := get(t, bundle.server.URL+"/"+asset, nil)
			require.Equal(t, http.StatusOK, resp.StatusCode, asset)
			ext := u.Path[strings.LastIndex(u.Path, "."):]
			require.Equal(t, wantTypes[ext], resp.Header.Get("Content-Type"), asset)
			require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), asset)
			require.NotEmpty(t, body, asset)
		}
	})

	t.Run("LoadsNothingFromOtherOrigins", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		_, body := get(t, bundle.server.URL+"/", nil)
		page := string(body)
		require.Contains(t, page, "<script", "the tag pattern must see the page's tags")
		for _, asset := range pageAssets(page) {
			require.False(t, externalURL.MatchString(asset), "the page loads %s from another origin", asset)
		}
		// Our own files name no origin at all, and the style sheets pull in
		// nothing (GraphiQL's fonts and images are data: URLs).
		for _, name := range []string{"playground.js", "playground.css", "graphiql.min.css"} {
			_, body := get(t, bundle.server.URL+playground.AssetPrefix+name, nil)
			text := string(body)
			require.NotContains(t, text, "@import", name)
			require.NotRegexp(t, `url\(\s*['"]?(?i:https?:)?//`, text, name)
			if !strings.HasPrefix(name, "graphiql") {
				require.NotRegexp(t, `(?i)https?://`, text, name)
			}
		}
	})

	t.Run("EscapesTitleAndEndpoint", func(t *testing.T) {
		t.Parallel()
		server := httptest.NewServer(newPlaygroundMux(`Fleet <graph>`, `/graphql?a="b"&c=<d>`))
		t.Cleanup(server.Close)

		_, body := get(t, server.URL+"/", nil)
		page := string(body)
		require.Contains(t, page, "<title>Fleet &lt;graph&gt;</title>")
		require.Contains(t, page, `data-endpoint="/graphql?a=&#34;b&#34;&amp;c=&lt;d&gt;"`)
	})

	t.Run("PageHasStrictContentSecurityPolicy", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		resp, _ := get(t, bundle.server.URL+"/", nil)
		host := strings.TrimPrefix(bundle.server.URL, "http://")
		csp := resp.Header.Get("Content-Security-Policy")
		require.Contains(t, csp, "default-src 'none'")
		require.Contains(t, csp, "script-src 'self';")
		require.Contains(t, csp, "connect-src 'self' ws://"+host+" wss://"+host+";")
		require.Contains(t, csp, "frame-ancestors 'none'")
		require.Equal(t, "no-cache", resp.Header.Get("Cache-Control"))
	})

	t.Run("LeavesOddHostOutOfPolicy", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		req, err := http.NewRequest(http.MethodGet, bundle.server.URL+"/", nil)
		require.NoError(t, err)
		req.Host = "evil; script-src *"
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, http.StatusOK, resp.StatusCode)
		csp := resp.Header.Get("Content-Security-Policy")
		require.Contains(t, csp, "connect-src 'self';")
		require.NotContains(t, csp, "evil")
	})

	t.Run("AllowsAbsoluteEndpointOrigin", func(t *testing.T) {
		t.Parallel()
		server := httptest.NewServer(newPlaygroundMux("fleetgraph", "https://api.example.com:8443/graphql"))
		t.Cleanup(server.Close)

		resp, _ := get(t, server.URL+"/", nil)
		csp := resp.Header.Get("Content-Security-Policy")
		require.Contains(t, csp, " https://api.example.com:8443 wss://api.example.com:8443;")
	})

	t.Run("CachesVersionedAssetsAsImmutable", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		_, body := get(t, bundle.server.URL+"/", nil)
		var versioned string
		for _, asset := range pageAssets(string(body)) {
			if strings.Contains(asset, "graphiql.min.js?v=") {
				versioned = asset
			}
		}
		require.NotEmpty(t, versioned)

		resp, _ := get(t, bundle.server.URL+"/"+versioned, nil)
		require.Equal(t, "public, max-age=31536000, immutable", resp.Header.Get("Cache-Control"))
		etag := resp.Header.Get("ETag")
		require.NotEmpty(t, etag)

		resp, body = get(t, bundle.server.URL+"/"+versioned, map[string]string{"If-None-Match": etag})
		require.Equal(t, http.StatusNotModified, resp.StatusCode)
		require.Empty(t, body)

		// Without the current version the URL may name stale content.
		resp, _ = get(t, bundle.server.URL+playground.AssetPrefix+"graphiql.min.js?v=old", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "no-cache", resp.Header.Get("Cache-Control"))
	})

	t.Run("CompressesForClientsThatAcceptGzip", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		assetURL := bundle.server.URL + playground.AssetPrefix + "graphiql.min.css"

		plainResp, plain := get(t, assetURL, nil)
		require.Empty(t, plainResp.Header.Get("Content-Encoding"))

		resp, compressed := get(t, assetURL, map[string]string{"Accept-Encoding": "br, gzip;q=0.8"})
		require.Equal(t, "gzip", resp.Header.Get("Content-Encoding"))
		require.Contains(t, resp.Header.Values("Vary"), "Accept-Encoding")
		require.NotEqual(t, plainResp.Header.Get("ETag"), resp.Header.Get("ETag"))
		require.Less(t, len(compressed), len(plain))
		zr, err := gzip.NewReader(bytes.NewReader(compressed))
		require.NoError(t, err)
		unzipped, err := io.ReadAll(zr)
		require.NoError(t, err)
		require.Equal(t, plain, unzipped)

		resp, _ = get(t, assetURL, map[string]string{"Accept-Encoding": "gzip;q=0, deflate"})
		require.Empty(t, resp.Header.Get("Content-Encoding"))
	})

	t.Run("RejectsUnknownPathsAndMethods", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		for _, p := range []string{"/playground/assets/nope.js", "/playground/assets/update.sh", "/playground/assets/VERSIONS", "/playground/", "/other"} {
			resp, _ := get(t, bundle.server.URL+p, nil)
			require.Equal(t, http.StatusNotFound, resp.StatusCode, p)
		}

		// The handler itself refuses methods a mux pattern might let through.
		rec := httptest.NewRecorder()
		playground.Handler("fleetgraph", "/graphql").ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
		require.Equal(t, http.StatusMethodNotAllowed, rec.Code)
		require.Equal(t, "GET, HEAD", rec.Header().Get("Allow"))
	})

	t.Run("EmbedsTheFilesVersionsNames", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		// VERSIONS is written by assets/update.sh; a mismatch means a vendored
		// file was edited by hand or the script was not rerun.
		versions, err := os.ReadFile("assets/VERSIONS")
		require.NoError(t, err)
		sums := regexp.MustCompile(`(?m)^([0-9a-f]{64})  (\S+)$`).FindAllStringSubmatch(string(versions), -1)
		require.Len(t, sums, 5)
		for _, m := range sums {
			_, body := get(t, bundle.server.URL+playground.AssetPrefix+m[2], nil)
			sum := sha256.Sum256(body)
			require.Equal(t, m[1], hex.EncodeToString(sum[:]), "served %s differs from VERSIONS: rerun playground/assets/update.sh", m[2])
		}
	})
}

// fakeSchema is an introspection result for
//
//	type Query { hello: String }
//	type Subscription { tick: Int }
//
// so that GraphiQL loads a schema as it would from fleetgraph.
const fakeSchema = `{"data":{"__schema":{
  "description":null,
  "queryType":{"name":"Query"},
  "mutationType":null,
  "subscriptionType":{"name":"Subscription"},
  "types":[
    {"kind":"OBJECT","name":"Query","description":null,"specifiedByURL":null,
     "fields":[{"name":"hello","description":null,"args":[],"type":{"kind":"SCALAR","name":"String","ofType":null},"isDeprecated":false,"deprecationReason":null}],
     "inputFields":null,"interfaces":[],"enumValues":null,"possibleTypes":null},
    {"kind":"OBJECT","name":"Subscription","description":null,"specifiedByURL":null,
     "fields":[{"name":"tick","description":null,"args":[],"type":{"kind":"SCALAR","name":"Int","ofType":null},"isDeprecated":false,"deprecationReason":null}],
     "inputFields":null,"interfaces":[],"enumValues":null,"possibleTypes":null},
    {"kind":"SCALAR","name":"String","description":null,"specifiedByURL":null,"fields":null,"inputFields":null,"interfaces":null,"enumValues":null,"possibleTypes":null},
    {"kind":"SCALAR","name":"Int","description":null,"specifiedByURL":null,"fields":null,"inputFields":null,"interfaces":null,"enumValues":null,"possibleTypes":null},
    {"kind":"SCALAR","name":"Boolean","description":null,"specifiedByURL":null,"fields":null,"inputFields":null,"interfaces":null,"enumValues":null,"possibleTypes":null}
  ],
  "directives":[]
}}}`

// httpRequest is what the fake GraphQL endpoint saw of one POST.
type httpRequest struct {
	Authorization string
	OperationName string
	Query         string
}

// wsEvent is what the fake GraphQL endpoint saw on a websocket: a message's
// type and payload, or "closed" when the client went away.
type wsEvent struct {
	Conn    int
	Type    string
	Payload json.RawMessage
}

// fakeGraphQL is a stand-in for fleetgraph's /graphql: POSTs answer
// introspection with fakeSchema and anything else with {"hello":"world"}, and
// a websocket speaks just enough graphql-transport-ws to answer a subscription
// with one tick, numbered after the connection (1 on the first websocket, 2 on
// the second), so a test can tell which socket an answer came through. It records what clients send so tests can assert on it.
type fakeGraphQL struct {
	ws chan wsEvent

	mu        sync.Mutex
	posts     []httpRequest
	postAdded chan struct{} // poked after each POST is recorded
	conns     int
}

func newFakeGraphQL() *fakeGraphQL {
	return &fakeGraphQL{ws: make(chan wsEvent, 100), postAdded: make(chan struct{}, 1)}
}

func (f *fakeGraphQL) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		f.serveWebsocket(w, r)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	var params struct {
		Query         string `json:"query"`
		OperationName string `json:"operationName"`
	}
	if err := json.NewDecoder(r.Body).Decode(&params); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.posts = append(f.posts, httpRequest{Authorization: r.Header.Get("Authorization"), OperationName: params.OperationName, Query: params.Query})
	f.mu.Unlock()
	select {
	case f.postAdded <- struct{}{}:
	default: // a poke is already pending; the waiter rereads all posts
	}
	w.Header().Set("Content-Type", "application/json")
	if params.OperationName == "IntrospectionQuery" {
		_, _ = io.WriteString(w, fakeSchema)
		return
	}
	_, _ = io.WriteString(w, `{"data":{"hello":"world"}}`)
}

func (f *fakeGraphQL) serveWebsocket(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"graphql-transport-ws"}})
	if err != nil {
		return
	}
	defer conn.CloseNow()
	if conn.Subprotocol() != "graphql-transport-ws" {
		_ = conn.Close(4406, "subprotocol not acceptable")
		return
	}
	f.mu.Lock()
	f.conns++
	id := f.conns
	f.mu.Unlock()

	ctx := r.Context()
	send := func(msg map[string]any) error {
		data, err := json.Marshal(msg)
		if err != nil {
			return err
		}
		return conn.Write(ctx, websocket.MessageText, data)
	}
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			f.ws <- wsEvent{Conn: id, Type: "closed"}
			return
		}
		var msg struct {
			ID      string          `json:"id"`
			Type    string          `json:"type"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(data, &msg); err != nil {
			_ = conn.Close(4400, "invalid message")
			return
		}
		f.ws <- wsEvent{Conn: id, Type: msg.Type, Payload: msg.Payload}
		switch msg.Type {
		case "connection_init":
			err = send(map[string]any{"type": "connection_ack"})
		case "ping":
			err = send(map[string]any{"type": "pong"})
		case "subscribe":
			err = send(map[string]any{"id": msg.ID, "type": "next", "payload": map[string]any{"data": map[string]any{"tick": id}}})
			if err == nil {
				err = send(map[string]any{"id": msg.ID, "type": "complete"})
			}
		}
		if err != nil {
			return
		}
	}
}

// waitPost waits for a POST whose operation name is operationName.
func (f *fakeGraphQL) waitPost(ctx context.Context, t *testing.T, operationName string) httpRequest {
	t.Helper()
	for {
		f.mu.Lock()
		for _, req := range f.posts {
			if req.OperationName == operationName {
				f.mu.Unlock()
				return req
			}
		}
		f.mu.Unlock()
		select {
		case <-f.postAdded:
		case <-ctx.Done():
			t.Fatalf("the fake endpoint got no POST of operation %q: %v", operationName, ctx.Err())
		}
	}
}

// operationPosts returns the POSTs other than schema introspection.
func (f *fakeGraphQL) operationPosts() []httpRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ops []httpRequest
	for _, req := range f.posts {
		if req.OperationName != "IntrospectionQuery" {
			ops = append(ops, req)
		}
	}
	return ops
}

// nextWS waits for a websocket message of the given type.
func (f *fakeGraphQL) nextWS(ctx context.Context, t *testing.T, msgType string) wsEvent {
	t.Helper()
	for {
		select {
		case ev := <-f.ws:
			if ev.Type == msgType {
				return ev
			}
		case <-ctx.Done():
			t.Fatalf("the fake endpoint got no %s message: %v", msgType, ctx.Err())
		}
	}
}

// browserTestTimeout bounds each browser subtest: loading 1.5 MB of scripts
// and running one operation takes well under a second on a warm machine.
const browserTestTimeout = 60 * time.Second

// Expressions that read GraphiQL's editors through CodeMirror 5, which keeps
// each editor's instance on its wrapper element.
const (
	queryEditorJS = `document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror`
	// The variables and headers editors share one section; the headers editor
	// is the one holding the Authorization header the test put there.
	headersEditorJS = `[...document.querySelectorAll('.graphiql-editor-tool .CodeMirror')].map((e) => e.CodeMirror).find((cm) => cm.getValue().includes('Authorization'))`
	responseJS      = `document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue()`
	executeJS       = `document.querySelector('.graphiql-execute-button').click()`
	executeReadyJS  = `document.querySelector('.graphiql-execute-button').getAttribute('aria-label').startsWith('Execute')`
)

func TestPlaygroundInBrowser(t *testing.T) {
	t.Parallel()

	b := startBrowser(t)

	type testBundle struct {
		fake   *fakeGraphQL
		server *httptest.Server
		tab    *tab
		ctx    context.Context
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), browserTestTimeout)
		t.Cleanup(cancel)

		fake := newFakeGraphQL()
		mux := newPlaygroundMux("fleetgraph", "/graphql")
		mux.Handle("/graphql", fake)
		server := httptest.NewServer(mux)
		t.Cleanup(server.Close)

		tb := b.openTab(ctx, t)
		return &testBundle{fake: fake, server: server, tab: tb, ctx: ctx}
	}

	// queryReady waits until the query editor holds query and GraphiQL has
	// parsed it: GraphiQL hands the parsed document to the fetcher, which
	// decides by it whether an operation is a subscription, and it parses
	// edits only after a short debounce.
	queryReady := func(t *testing.T, bundle *testBundle, query string) {
		t.Helper()
		queryJS, err := json.Marshal(query)
		require.NoError(t, err)
		err = bundle.tab.waitFor(bundle.ctx, queryEditorJS+`.documentAST !== null && `+
			queryEditorJS+`.documentAST.loc.source.body === `+string(queryJS)+
			` && document.querySelector('.graphiql-execute-button') !== null`, nil)
		require.NoError(t, err, bundle.tab.describe())
	}

	// open loads the playground with the given URL parameters and waits until
	// GraphiQL is ready to run the query.
	open := func(t *testing.T, bundle *testBundle, params url.Values) {
		t.Helper()
		require.NoError(t, bundle.tab.navigate(bundle.ctx, bundle.server.URL+"/?"+params.Encode()))
		queryReady(t, bundle, params.Get("query"))
	}

	// result clicks the execute button and waits for the response pane to
	// contain want. It waits first until the button offers to execute: while
	// GraphiQL still counts an earlier subscription as running (its completion
	// can trail the result it showed on a busy machine), the same button
	// stops that one instead.
	result := func(t *testing.T, bundle *testBundle, want string) string {
		t.Helper()
		require.NoError(t, bundle.tab.waitFor(bundle.ctx, executeReadyJS, nil), bundle.tab.describe())
		require.NoError(t, bundle.tab.evaluate(bundle.ctx, executeJS, nil))
		wantJS, err := json.Marshal(want)
		require.NoError(t, err)
		var text string
		err = bundle.tab.waitFor(bundle.ctx, `(`+responseJS+`.includes(`+string(wantJS)+`)) && `+responseJS, &text)
		require.NoError(t, err, bundle.tab.describe())
		return text
	}

	// requireNoProblems fails on script errors and CSP violations the page
	// recorded.
	requireNoProblems := func(t *testing.T, bundle *testBundle) {
		t.Helper()
		var problems []string
		require.NoError(t, bundle.tab.evaluate(bundle.ctx, `window.__problems`, &problems))
		require.Empty(t, problems)
	}

	t.Run("QuerySendsHeadersOverHTTP", func(t *testing.T) {
		bundle := setup(t)

		open(t, bundle, url.Values{
			"query":   {"{hello}"},
			"headers": {`{"Authorization":"Bearer query-token"}`},
		})
		text := result(t, bundle, `"hello": "world"`)
		require.Contains(t, text, `"data"`)

		// The schema introspection GraphiQL ran on load carries the headers
		// too, so a schema behind authentication still loads.
		introspection := bundle.fake.waitPost(bundle.ctx, t, "IntrospectionQuery")
		require.Equal(t, "Bearer query-token", introspection.Authorization)

		post := bundle.fake.waitPost(bundle.ctx, t, "")
		require.Equal(t, "Bearer query-token", post.Authorization)
		require.Equal(t, "{hello}", post.Query)
		requireNoProblems(t, bundle)
	})

	t.Run("DialogsWorkUnderThePolicy", func(t *testing.T) {
		bundle := setup(t)

		// Dialogs lock scrolling with a <style> element they insert, which
		// is why the policy allows inline styles.
		open(t, bundle, url.Values{"query": {"{hello}"}})
		require.NoError(t, bundle.tab.evaluate(bundle.ctx,
			`document.querySelector('.graphiql-sidebar button[aria-label="Open settings dialog"]').click()`, nil))
		var title string
		err := bundle.tab.waitFor(bundle.ctx, `document.querySelector('[role="dialog"]') && document.querySelector('[role="dialog"]').innerText`, &title)
		require.NoError(t, err, bundle.tab.describe())
		require.Contains(t, title, "Settings")
		requireNoProblems(t, bundle)
	})

	t.Run("SubscriptionSendsHeadersAsConnectionParams", func(t *testing.T) {
		bundle := setup(t)

		open(t, bundle, url.Values{
			"query":   {"subscription{tick}"},
			"headers": {`{"Authorization":"Bearer test"}`},
		})
		result(t, bundle, `"tick": 1`)

		init := bundle.fake.nextWS(bundle.ctx, t, "connection_init")
		require.JSONEq(t, `{"Authorization":"Bearer test"}`, string(init.Payload))
		sub := bundle.fake.nextWS(bundle.ctx, t, "subscribe")
		require.Equal(t, init.Conn, sub.Conn)
		require.Contains(t, string(sub.Payload), "subscription{tick}")

		shot, err := bundle.tab.screenshot(bundle.ctx)
		require.NoError(t, err)
		requireRendered(t, shot)
		if path := os.Getenv("PLAYGROUND_SCREENSHOT"); path != "" {
			require.NoError(t, os.WriteFile(path, shot, 0o644))
		}

		// New headers need a new websocket client: the old one's
		// connectionParams are fixed.
		require.NoError(t, bundle.tab.evaluate(bundle.ctx,
			headersEditorJS+`.setValue('{"Authorization":"Bearer second"}')`, nil))
		require.NoError(t, bundle.tab.evaluate(bundle.ctx, queryEditorJS+`.setValue('subscription Again {tick}')`, nil))
		queryReady(t, bundle, "subscription Again {tick}")
		// The tick numbers the socket: 2 comes only through the new one, so
		// the old answer still on screen cannot satisfy the wait.
		result(t, bundle, `"tick": 2`)
		init = bundle.fake.nextWS(bundle.ctx, t, "connection_init")
		require.JSONEq(t, `{"Authorization":"Bearer second"}`, string(init.Payload))
		sub = bundle.fake.nextWS(bundle.ctx, t, "subscribe")
		require.Contains(t, string(sub.Payload), "subscription Again {tick}")
		require.Empty(t, bundle.fake.operationPosts(), "subscriptions must not go over HTTP")
		requireNoProblems(t, bundle)
	})
}

// requireRendered fails unless a screenshot shows more than a blank page: a
// rendered GraphiQL has editors, a toolbar and a sidebar in several colours.
func requireRendered(t *testing.T, shot []byte) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(shot))
	require.NoError(t, err)
	colours := map[[4]uint32]bool{}
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y += 4 {
		for x := bounds.Min.X; x < bounds.Max.X; x += 4 {
			r, g, b, a := img.At(x, y).RGBA()
			colours[[4]uint32{r, g, b, a}] = true
		}
	}
	require.Greater(t, len(colours), 20, "the screenshot looks blank: %d colours in %v", len(colours), bounds.Size())
}

// A page with default headers carries them, escaped, and is never stored.
func TestHandlerDefaultHeaders(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(playground.Handler("fleetgraph", "/graphql", playground.WithDefaultHeaders(`{"Authorization": "Bearer a\"<b>"}`)))
	t.Cleanup(srv.Close)
	res, body := get(t, srv.URL+"/", nil)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "no-store", res.Header.Get("Cache-Control"))
	require.Contains(t, string(body), `data-default-headers="{&#34;Authorization&#34;: &#34;Bearer a\&#34;&lt;b&gt;&#34;}"`)

	plain := httptest.NewServer(playground.Handler("fleetgraph", "/graphql"))
	t.Cleanup(plain.Close)
	res, body = get(t, plain.URL+"/", nil)
	require.Equal(t, "no-cache", res.Header.Get("Cache-Control"))
	require.NotContains(t, string(body), "data-default-headers")
}

// The default headers carry a credential: a page gets them only when a
// browser on this machine opened it as a loopback host. A page served to
// a DNS-rebound name (whose Host is the attacker's) or to another machine
// has none, and neither is stored.
func TestHandlerDefaultHeadersOnlyForLoopback(t *testing.T) {
	t.Parallel()
	h := playground.Handler("fleetgraph", "/graphql", playground.WithDefaultHeaders(`{"Authorization": "Bearer secret-token"}`))
	page := func(host, remoteAddr string) (*httptest.ResponseRecorder, string) {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Host, req.RemoteAddr = host, remoteAddr
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, http.StatusOK, rec.Code)
		require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
		return rec, rec.Body.String()
	}
	for _, host := range []string{"localhost:8080", "LocalHost:8080", "localhost", "127.0.0.1:8080", "127.0.0.1", "[::1]:8080", "[::1]"} {
		for _, peer := range []string{"127.0.0.1:50000", "[::1]:50000"} {
			_, body := page(host, peer)
			require.Contains(t, body, "secret-token", "Host %s from %s", host, peer)
		}
	}
	for _, c := range []struct{ host, peer string }{
		{"rebind.attacker.example:8080", "127.0.0.1:50000"}, // DNS rebinding: a browser here, another site's name
		{"192.168.1.20:8080", "127.0.0.1:50000"},
		{"localhost.attacker.example:8080", "127.0.0.1:50000"},
		{"127.0.0.1.nip.io:8080", "127.0.0.1:50000"},
		{"localhost:8080:1", "127.0.0.1:50000"},
		{"", "127.0.0.1:50000"},
		{"localhost:8080", "192.168.1.30:50000"}, // another machine, Host set by hand
		{"127.0.0.1:8080", "192.168.1.30:50000"},
	} {
		_, body := page(c.host, c.peer)
		require.NotContains(t, body, "secret-token", "Host %s from %s", c.host, c.peer)
		require.NotContains(t, body, "data-default-headers", "Host %s from %s", c.host, c.peer)
		require.Contains(t, body, `id="graphiql"`, "the page is served, without the headers")
	}
}

// Headers made per page are made again for each page served (a token
// minted then never outlives a long-running server), and a page whose
// headers cannot be made is served without them.
func TestHandlerDefaultHeadersPerPage(t *testing.T) {
	t.Parallel()
	var pages int
	h := playground.Handler("fleetgraph", "/graphql", playground.WithDefaultHeadersFunc(func() (string, error) {
		pages++
		if pages == 3 {
			return "", errors.New("no token today")
		}
		return fmt.Sprintf(`{"Authorization": "Bearer token-%d"}`, pages), nil
	}))
	load := func() string {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Host, req.RemoteAddr = "localhost:8080", "127.0.0.1:50000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, http.StatusOK, rec.Code)
		return rec.Body.String()
	}
	require.Contains(t, load(), "token-1")
	require.Contains(t, load(), "token-2")
	third := load()
	require.NotContains(t, third, "data-default-headers")
	require.Contains(t, third, `id="graphiql"`)
	require.Contains(t, load(), "token-4")
}
