package graph_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph"
)

func TestListCostsTheSameStatementsForAnyLength(t *testing.T) {
	t.Parallel()
	const q = `query($n: Int) { machines(first: $n) { totalCount edges { node { id name
		events(first: 5) { totalCount edges { node { id eventType } } }
		deployments { id status } currentDeployment { id version } } } } }`
	statements := func(n int) int64 {
		s := apitest.New(t)
		c := newClient(t, s)
		for i := range n {
			m := c.create(fmt.Sprintf("m-%d", i))
			c.mutate("startMachine", m.ID)
			c.deploy(m.ID, "1.0.0")
			c.logEvent(m.ID, "telemetry")
		}
		var out machinePage
		before := s.Statements.Load()
		s.Do(t, c.token, q, map[string]any{"n": n}).OK(t, &out)
		require.Len(t, out.Machines.Edges, n)
		return s.Statements.Load() - before
	}
	five, fifty := statements(5), statements(50)
	require.Equal(t, five, fifty, "a page of 50 machines must cost the same statements as a page of 5")
	// list, count, events page, events count, deployments, active deployment.
	require.LessOrEqual(t, five, int64(6))
}

func wsURL(s *apitest.Server) string { return "ws" + strings.TrimPrefix(s.URL, "http") + "/graphql" }

// wsDial opens a graphql-transport-ws connection and completes the handshake
// with payload as connection_init.
func wsDial(t *testing.T, s *apitest.Server, payload map[string]any, header http.Header) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL(s), &websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}, HTTPHeader: header})
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.CloseNow() })
	require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"type": "connection_init", "payload": payload}))
	var ack map[string]any
	require.NoError(t, wsjson.Read(ctx, conn, &ack))
	require.Equal(t, "connection_ack", ack["type"], "got %v", ack)
	return conn
}

// wsRead reads the next protocol message that is not a ping/pong.
func wsRead(t *testing.T, conn *websocket.Conn) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
	defer cancel()
	for {
		var msg map[string]any
		require.NoError(t, wsjson.Read(ctx, conn, &msg))
		if msg["type"] != "ping" && msg["type"] != "pong" && msg["type"] != "ka" {
			return msg
		}
	}
}

func TestWebsocket(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{AllowedOrigins: []string{"app.example.com"}})
	c := newClient(t, s)
	m := c.create("ws-machine")

	t.Run("QueryWithTokenInConnectionInit", func(t *testing.T) {
		conn := wsDial(t, s, map[string]any{"Authorization": "Bearer " + c.token}, nil)
		ctx := t.Context()
		require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"id": "1", "type": "subscribe",
			"payload": map[string]any{"query": `query($id: ID!) { machine(id: $id) { name } }`, "variables": map[string]any{"id": m.ID}}}))
		next := wsRead(t, conn)
		require.Equal(t, "next", next["type"])
		require.Equal(t, map[string]any{"data": map[string]any{"machine": map[string]any{"name": "ws-machine"}}}, next["payload"])
		require.Equal(t, "complete", wsRead(t, conn)["type"])
	})

	t.Run("AuthTokenKey", func(t *testing.T) {
		conn := wsDial(t, s, map[string]any{"authToken": c.token}, nil)
		require.NoError(t, wsjson.Write(t.Context(), conn, map[string]any{"id": "1", "type": "subscribe",
			"payload": map[string]any{"query": `{ me { id } }`}}))
		next := wsRead(t, conn)
		require.Equal(t, c.user.ID.String(), next["payload"].(map[string]any)["data"].(map[string]any)["me"].(map[string]any)["id"])
	})

	t.Run("AnonymousConnectionGetsUnauthenticated", func(t *testing.T) {
		conn := wsDial(t, s, nil, nil)
		require.NoError(t, wsjson.Write(t.Context(), conn, map[string]any{"id": "1", "type": "subscribe",
			"payload": map[string]any{"query": `{ machines { totalCount } }`}}))
		next := wsRead(t, conn)
		raw, _ := json.Marshal(next)
		require.Contains(t, string(raw), "UNAUTHENTICATED")
	})

	t.Run("ForeignOriginRefused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		_, res, err := websocket.Dial(ctx, wsURL(s), &websocket.DialOptions{
			Subprotocols: []string{"graphql-transport-ws"},
			HTTPHeader:   http.Header{"Origin": {"https://evil.example/" + refMarker}},
		})
		require.Error(t, err)
		require.Equal(t, http.StatusForbidden, res.StatusCode)
		body, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		var refusal apitest.Response
		require.NoError(t, json.Unmarshal(body, &refusal), "%s", body)
		require.Contains(t, refusal.Code(t, "FORBIDDEN").Message, "ALLOWED_ORIGINS")
		require.NotContains(t, string(body), refMarker, "the refusal repeats the Origin header")
		require.NotContains(t, string(body), "evil.example", "the refusal repeats the Origin header")
	})

	t.Run("AllowedOriginAccepted", func(t *testing.T) {
		wsDial(t, s, map[string]any{"Authorization": "Bearer " + c.token}, http.Header{"Origin": {"https://app.example.com"}})
	})

	// An upgrade refused at shutdown is to be retried elsewhere, as an SSE
	// stream refused then is: RATE_LIMITED with Retry-After, not a
	// credential problem.
	t.Run("UpgradeRefusedAtShutdown", func(t *testing.T) {
		s := apitest.New(t)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		require.NoError(t, s.Handler.CloseStreams(ctx))
		_, res, err := websocket.Dial(ctx, wsURL(s), &websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
		require.Error(t, err)
		require.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
		require.Equal(t, "1", res.Header.Get("Retry-After"))
		body, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		var refusal apitest.Response
		require.NoError(t, json.Unmarshal(body, &refusal), "%s", body)
		require.Contains(t, refusal.Code(t, "RATE_LIMITED").Message, "shutting down")
	})

	t.Run("ShutdownClosesWith1001", func(t *testing.T) {
		s := apitest.New(t)
		conn := wsDial(t, s, nil, nil)
		ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
		go func() { _ = s.Handler.CloseWebsockets(ctx) }()
		defer cancel()
		var msg map[string]any
		for {
			if err := wsjson.Read(ctx, conn, &msg); err != nil {
				require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(err), "got %v", err)
				return
			}
		}
	})
}

func TestHTTPTransports(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{AllowedOrigins: []string{"app.example.com"}})
	c := newClient(t, s)
	c.create("http-machine")

	get := func(t *testing.T, query string) *apitest.Response {
		req, err := http.NewRequest(http.MethodGet, s.URL+"/graphql?query="+url.QueryEscape(query), nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+c.token)
		return s.Send(t, req)
	}

	t.Run("GETRunsQueries", func(t *testing.T) {
		var out struct{ Machines struct{ TotalCount int } }
		get(t, `{ machines { totalCount } }`).OK(t, &out)
		require.Equal(t, 1, out.Machines.TotalCount)
	})

	t.Run("GETRefusesMutations", func(t *testing.T) {
		r := get(t, `mutation { createMachine(input: {name: "via-get"}) { id } }`)
		require.GreaterOrEqual(t, r.Status, 400)
		require.Less(t, r.Status, 500)
		var out struct{ Machines struct{ TotalCount int } }
		get(t, `{ machines { totalCount } }`).OK(t, &out)
		require.Equal(t, 1, out.Machines.TotalCount, "nothing was created")
	})

	t.Run("SSEStreamsTheResult", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, s.URL+"/graphql", strings.NewReader(`{"query":"{ machines { totalCount } }"}`))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+c.token)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "text/event-stream")
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		require.Contains(t, res.Header.Get("Content-Type"), "text/event-stream")
		var events []string
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				events = append(events, line)
			}
		}
		require.NotEmpty(t, events)
		require.JSONEq(t, `{"data":{"machines":{"totalCount":1}}}`, events[0])
	})

	t.Run("AutomaticPersistedQueries", func(t *testing.T) {
		persisted := func(query string) func(withQuery bool) *apitest.Response {
			sum := sha256.Sum256([]byte(query))
			ext := map[string]any{"persistedQuery": map[string]any{"version": 1, "sha256Hash": hex.EncodeToString(sum[:])}}
			return func(withQuery bool) *apitest.Response {
				body := map[string]any{"extensions": ext}
				if withQuery {
					body["query"] = query
				}
				b, _ := json.Marshal(body)
				return s.Post(t, c.token, "application/json", b)
			}
		}
		post := persisted(`{ machines { totalCount } }`)
		require.Equal(t, "PERSISTED_QUERY_NOT_FOUND", post(false).Errors[0].Code())
		post(true).OK(t, nil)
		var out struct{ Machines struct{ TotalCount int } }
		post(false).OK(t, &out)
		require.Equal(t, 1, out.Machines.TotalCount)

		// A large query is answered but not remembered: 1,000 remembered
		// 1 MiB documents would pin a gigabyte.
		large := persisted("{ machines { totalCount } }\n#" + strings.Repeat("x", 70<<10))
		large(true).OK(t, &out)
		require.Equal(t, "PERSISTED_QUERY_NOT_FOUND", large(false).Errors[0].Code())
	})

	t.Run("RequestIDEchoed", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, s.URL+"/graphql", strings.NewReader(`{"query":"{ me { id } }"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-Id", "client-chosen-id-1")
		require.Equal(t, "client-chosen-id-1", s.Send(t, req).Header.Get("X-Request-Id"))
		req, _ = http.NewRequest(http.MethodPost, s.URL+"/graphql", strings.NewReader(`{"query":"{ me { id } }"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-Id", "bad id with spaces")
		got := s.Send(t, req).Header.Get("X-Request-Id")
		require.NotEqual(t, "bad id with spaces", got)
		require.Len(t, got, 24)
	})

	t.Run("CORSPreflight", func(t *testing.T) {
		preflight := func(origin string) http.Header {
			req, _ := http.NewRequest(http.MethodOptions, s.URL+"/graphql", nil)
			req.Header.Set("Origin", origin)
			req.Header.Set("Access-Control-Request-Method", "POST")
			res, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			res.Body.Close()
			return res.Header
		}
		h := preflight("https://app.example.com")
		require.Equal(t, "https://app.example.com", h.Get("Access-Control-Allow-Origin"))
		require.Contains(t, h.Get("Access-Control-Allow-Headers"), "Authorization")
		require.Empty(t, preflight("https://evil.example").Get("Access-Control-Allow-Origin"))
	})
}

func TestLimits(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Limits: graph.Limits{Complexity: 20_000, Depth: 6, Aliases: 5, Tokens: 500, BodyBytes: 1 << 20}})
	c := newClient(t, s)

	limited := func(t *testing.T, query, reason string) {
		t.Helper()
		e := s.Do(t, c.token, query, nil).Code(t, "BAD_USER_INPUT")
		require.Equal(t, reason, e.Extensions["reason"], "error: %+v", e)
	}
	t.Run("Depth", func(t *testing.T) {
		limited(t, `{ machines { edges { node { events { edges { node { id } } } } } } }`, "DEPTH_LIMIT_EXCEEDED")
		s.Do(t, c.token, `{ machines { edges { node { events { totalCount } } } } }`, nil).OK(t, nil)
	})
	t.Run("DepthThroughFragments", func(t *testing.T) {
		limited(t, `{ machines { ...M } } fragment M on MachineConnection { edges { node { events { edges { node { id } } } } } }`, "DEPTH_LIMIT_EXCEEDED")
	})
	t.Run("Aliases", func(t *testing.T) {
		limited(t, `{ a: me { id } b: me { id } c: me { id } d: me { id } e: me { id } f: me { id } }`, "ALIAS_LIMIT_EXCEEDED")
	})
	t.Run("Complexity", func(t *testing.T) {
		limited(t, `{ machines(first: 500) { edges { node { deployments(first: 50) { id } } } } }`, "COMPLEXITY_LIMIT_EXCEEDED")
		// A connection costs its page only where its edges are read.
		s.Do(t, c.token, `{ machines(first: 500) { edges { node { events(first: 50) { totalCount } } } } }`, nil).OK(t, nil)
		s.Do(t, c.token, `{ machines(first: 10) { edges { node { id name status } } } }`, nil).OK(t, nil)
	})
	t.Run("Tokens", func(t *testing.T) {
		r := s.Do(t, c.token, "{ me { "+strings.Repeat("id ", 600)+"} }", nil)
		e := r.Code(t, "BAD_USER_INPUT")
		require.Contains(t, e.Message, "token limit")
	})
}

func TestIntrospection(t *testing.T) {
	t.Parallel()
	const q = `{ __schema { queryType { name } } }`
	off := apitest.New(t)
	e := off.Do(t, "", q, nil).Code(t, "FORBIDDEN")
	require.Contains(t, e.Message, "introspection is disabled")
	off.Do(t, "", `{ me { ... on Viewer { __typename } } }`, nil).Code(t, "UNAUTHENTICATED")

	on := apitest.New(t, apitest.Options{Introspection: true})
	var out struct {
		Schema struct{ QueryType struct{ Name string } } `json:"__schema"`
	}
	on.Do(t, "", q, nil).OK(t, &out)
	require.Equal(t, "Query", out.Schema.QueryType.Name)
}

func TestInternalErrorsAreScrubbed(t *testing.T) {
	t.Parallel()
	probe := apitest.New(t)
	closed := probe.DB.DB
	s := apitest.New(t, apitest.Options{DB: closed})
	require.NoError(t, closed.Close())
	u := s.NewUser(t, uuid.Nil)

	r := s.Do(t, u.Token, `{ machines { totalCount } }`, nil)
	e := r.Code(t, "INTERNAL")
	id, _ := e.Extensions["requestId"].(string)
	require.NotEmpty(t, id)
	require.Equal(t, id, r.Header.Get("X-Request-Id"))
	require.Contains(t, e.Message, id)
	require.NotContains(t, string(r.Raw), "sql")
	require.Contains(t, s.Log.String(), id, "the log ties the real error to the request id")
	require.Contains(t, s.Log.String(), "sql: database is closed")
}

// A credential that cannot be checked is answered 500 INTERNAL by the auth
// middleware, before GraphQL: the client is told to quote a request id,
// so the cause is logged, once, under that id.
func TestInternalErrorsOfAuthenticationAreLogged(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	_, key := s.RobotWithKey(t, u.Token, "logged-robot")
	_, err := s.DB.ExecContext(t.Context(), "ALTER TABLE api_keys RENAME TO api_keys_gone")
	require.NoError(t, err)

	r := s.Post(t, key, "application/json", []byte(`{"query": "{ __typename }"}`))
	require.Equal(t, http.StatusInternalServerError, r.Status, "%s", r.Raw)
	e := r.Code(t, "INTERNAL")
	id := r.Header.Get("X-Request-Id")
	require.Equal(t, id, e.Extensions["requestId"])
	require.NotContains(t, string(r.Raw), "api_keys")
	apitest.RequireNoLeak(t, r.Raw)
	var causes []string
	for line := range strings.Lines(s.Log.String()) {
		if strings.Contains(line, "request_id="+id) && strings.Contains(line, "level=ERROR") {
			causes = append(causes, line)
		}
	}
	require.Len(t, causes, 1, "one error line under the request id; log:\n%s", s.Log.String())
	require.Contains(t, causes[0], `relation \"api_keys\" does not exist`)
}
