package live_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/auth"
	"fleetgraph/dbtest"
)

// These tests drive the streaming transports of package live through the
// whole application (apitest), as clients do: graphql-transport-ws exactly as
// the graphql-ws project's PROTOCOL.md says, the legacy graphql-ws protocol,
// and server-sent events. They never sleep: every wait is for a message or a
// close, bounded by a deadline.

func TestMain(m *testing.M) { dbtest.Main(m) }

// wait bounds every wait for something the server should do: reached
// only when it never does, so as generous as apitest.Patience.
const wait = apitest.Patience

const machineSub = `subscription($id: ID) { machineUpdated(id: $id) { op id version machine { id status } } }`

// msg is one protocol message.
type msg struct {
	ID      string          `json:"id,omitempty"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// gqlError is one GraphQL error of a payload.
type gqlError struct {
	Message    string         `json:"message"`
	Extensions map[string]any `json:"extensions"`
}

func (e gqlError) code() string { c, _ := e.Extensions["code"].(string); return c }

// result is a `next` payload.
type result struct {
	Data   json.RawMessage `json:"data"`
	Errors []gqlError      `json:"errors"`
}

func (m msg) result(t *testing.T) result {
	t.Helper()
	require.Equal(t, "next", m.Type, "expected a next message, got %+v", m)
	var r result
	require.NoError(t, json.Unmarshal(m.Payload, &r), "payload %s", m.Payload)
	return r
}

// errors decodes the payload of a graphql-transport-ws `error` message: a list.
func (m msg) errors(t *testing.T) []gqlError {
	t.Helper()
	require.Equal(t, "error", m.Type, "expected an error message, got %+v %s", m, m.Payload)
	var errs []gqlError
	require.NoError(t, json.Unmarshal(m.Payload, &errs), "an error payload must be a list of errors: %s", m.Payload)
	require.NotEmpty(t, errs)
	return errs
}

// change decodes a machineUpdated result.
type change struct {
	Op      string
	ID      string
	Version int
	Machine *struct{ ID, Status string }
}

func machineChange(t *testing.T, m msg) change {
	t.Helper()
	r := m.result(t)
	require.Empty(t, r.Errors, "%s", m.Payload)
	var data struct{ MachineUpdated change }
	require.NoError(t, json.Unmarshal(r.Data, &data))
	return data.MachineUpdated
}

// conn is a websocket client whose messages a goroutine reads as they come,
// so a test can wait for one with a deadline without breaking the socket
// (an expiring read context closes a coder/websocket connection).
type conn struct {
	t      *testing.T
	ws     *websocket.Conn
	msgs   chan msg
	closed chan struct{}
	err    error // why reading stopped; set before closed is closed
}

// dial opens a websocket offering protocols and starts reading it.
func dial(t *testing.T, s *apitest.Server, protocols ...string) *conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.URL, "http")+"/graphql",
		&websocket.DialOptions{Subprotocols: protocols})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ws.CloseNow() })
	c := &conn{t: t, ws: ws, msgs: make(chan msg, 1024), closed: make(chan struct{})}
	go func() {
		defer close(c.closed)
		for {
			var m msg
			if err := wsjson.Read(context.Background(), ws, &m); err != nil {
				c.err = err
				return
			}
			c.msgs <- m
		}
	}()
	return c
}

// connect opens a graphql-transport-ws connection acknowledged for token.
func connect(t *testing.T, s *apitest.Server, token string) *conn {
	t.Helper()
	c := dial(t, s, "graphql-transport-ws")
	require.Equal(t, "graphql-transport-ws", c.ws.Subprotocol())
	c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + token}})
	require.Equal(t, "connection_ack", c.read().Type)
	return c
}

func (c *conn) send(v any) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), wait)
	defer cancel()
	require.NoError(c.t, wsjson.Write(ctx, c.ws, v))
}

func (c *conn) sendRaw(typ websocket.MessageType, data []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), wait)
	defer cancel()
	require.NoError(c.t, c.ws.Write(ctx, typ, data))
}

func (c *conn) subscribe(id, query string, vars map[string]any) {
	c.t.Helper()
	c.send(map[string]any{"id": id, "type": "subscribe", "payload": map[string]any{"query": query, "variables": vars}})
}

// readAny returns the next message, keep-alives included.
func (c *conn) readAny() msg {
	c.t.Helper()
	return c.readUntil(time.Now().Add(wait))
}

// readUntil returns the next message, keep-alives included, failing at
// deadline.
func (c *conn) readUntil(deadline time.Time) msg {
	c.t.Helper()
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	select {
	case m := <-c.msgs:
		return m
	case <-c.closed:
		select {
		case m := <-c.msgs:
			return m
		default:
		}
		require.FailNow(c.t, "the server closed the socket", "%v", c.err)
	case <-timeout.C:
		require.FailNow(c.t, "no message from the server within the deadline")
	}
	return msg{}
}

// read returns the next message that is not a keep-alive (ping, pong,
// ka), within one deadline: the server's keep-alives (every 15 s) must not
// restart it.
func (c *conn) read() msg {
	c.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		if m := c.readUntil(deadline); m.Type != "ping" && m.Type != "pong" && m.Type != "ka" {
			return m
		}
	}
}

// readFor returns the next message, which must be about operation id.
func (c *conn) readFor(id string) msg {
	c.t.Helper()
	m := c.read()
	require.Equal(c.t, id, m.ID, "expected a message for %q, got %+v %s", id, m, m.Payload)
	return m
}

// requireClosed waits for the server to close the socket, requires that no
// message other than keep-alives came first, and returns the close reason.
func (c *conn) requireClosed(code websocket.StatusCode) string {
	c.t.Helper()
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for {
		select {
		case m := <-c.msgs:
			if m.Type != "ping" && m.Type != "pong" && m.Type != "ka" {
				require.FailNow(c.t, "expected the socket to close", "got %+v %s", m, m.Payload)
			}
		case <-c.closed:
			require.Empty(c.t, c.msgs, "messages before the close")
			var ce websocket.CloseError
			require.ErrorAs(c.t, c.err, &ce, "the socket ended without a close frame: %v", c.err)
			require.Equal(c.t, code, ce.Code, "close reason %q", ce.Reason)
			return ce.Reason
		case <-timeout.C:
			require.FailNow(c.t, "the server did not close the socket within the deadline")
		}
	}
}

// requireNothingFor requires that no message but keep-alives arrives for a
// short while. It complements a barrier, never replaces one.
func (c *conn) requireNothingFor(d time.Duration) {
	c.t.Helper()
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		select {
		case m := <-c.msgs:
			if m.Type != "ping" && m.Type != "pong" && m.Type != "ka" {
				require.FailNow(c.t, "unexpected message", "%+v %s", m, m.Payload)
			}
		case <-c.closed:
			require.FailNow(c.t, "the server closed the socket", "%v", c.err)
		case <-timeout.C:
			return
		}
	}
}

// query runs a query as operation id and requires next then complete.
func (c *conn) query(id, query string) result {
	c.t.Helper()
	c.subscribe(id, query, nil)
	r := c.readFor(id).result(c.t)
	require.Equal(c.t, msg{ID: id, Type: "complete"}, c.readFor(id))
	return r
}

// fixture is a user with a machine on a server.
type fixture struct {
	s       *apitest.Server
	user    apitest.User
	machine string
}

func newFixture(t *testing.T, s *apitest.Server) fixture {
	t.Helper()
	u := s.NewUser(t, uuid.Nil)
	var out struct{ CreateMachine struct{ ID string } }
	s.Do(t, u.Token, `mutation($n: String!) { createMachine(input: {name: $n}) { id } }`,
		map[string]any{"n": "m-" + uuid.NewString()[:8]}).OK(t, &out)
	return fixture{s: s, user: u, machine: out.CreateMachine.ID}
}

// set starts or stops the machine and returns its new version.
func (f fixture) set(t *testing.T, op string) int {
	t.Helper()
	var out map[string]struct{ Version int }
	f.s.Do(t, f.user.Token, `mutation($id: ID!) { `+op+`(id: $id) { version } }`, map[string]any{"id": f.machine}).OK(t, &out)
	return out[op].Version
}

// shortLivedToken is a token for u that expires within ttl (exp has second resolution).
func shortLivedToken(t *testing.T, s *apitest.Server, u apitest.User, ttl time.Duration) string {
	t.Helper()
	tok, err := s.JWT.Mint(auth.MintOptions{UserID: u.ID, TenantID: u.Tenant, Role: auth.RoleUser, TTL: ttl})
	require.NoError(t, err)
	return tok
}

func TestLiveWSCloseCodes(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	f := newFixture(t, s)

	t.Run("4400", func(t *testing.T) {
		t.Parallel()
		subscribe := func(payload any) map[string]any {
			return map[string]any{"id": "1", "type": "subscribe", "payload": payload}
		}
		for _, tc := range []struct {
			name string
			// beforeInit sends the message as the first one, else after the ack.
			beforeInit bool
			text       string
			binary     bool
		}{
			{name: "NotJSON", text: `hello`},
			{name: "NotJSONBeforeInit", text: `hello`, beforeInit: true},
			{name: "JSONArray", text: `[{"type":"ping"}]`},
			{name: "NoType", text: `{"id":"1","payload":{}}`},
			{name: "EmptyType", text: `{"type":""}`},
			{name: "TypeNotAString", text: `{"type":1}`},
			{name: "UnknownType", text: `{"type":"hello"}`},
			{name: "UnknownTypeBeforeInit", text: `{"type":"hello"}`, beforeInit: true},
			{name: "BinaryFrame", text: `{"type":"ping"}`, binary: true},
			{name: "BinaryInit", text: `{"type":"connection_init"}`, binary: true, beforeInit: true},
			{name: "InitPayloadNotAnObject", text: `{"type":"connection_init","payload":[1]}`, beforeInit: true},
			{name: "SubscribeWithoutID", text: mustJSON(t, map[string]any{"type": "subscribe", "payload": map[string]any{"query": "{ me { id } }"}})},
			{name: "SubscribeWithEmptyID", text: mustJSON(t, map[string]any{"id": "", "type": "subscribe", "payload": map[string]any{"query": "{ me { id } }"}})},
			{name: "SubscribeWithoutPayload", text: `{"id":"1","type":"subscribe"}`},
			{name: "SubscribeWithoutQuery", text: mustJSON(t, subscribe(map[string]any{"variables": map[string]any{}}))},
			{name: "SubscribePayloadNotAnObject", text: mustJSON(t, subscribe("{ me { id } }"))},
			{name: "ServerTypeNext", text: mustJSON(t, map[string]any{"id": "1", "type": "next", "payload": map[string]any{"data": nil}})},
			{name: "ServerTypeError", text: mustJSON(t, map[string]any{"id": "1", "type": "error", "payload": []any{}})},
			{name: "ServerTypeConnectionAck", text: `{"type":"connection_ack"}`},
			{name: "LegacyTypeStart", text: mustJSON(t, map[string]any{"id": "1", "type": "start", "payload": map[string]any{"query": "{ me { id } }"}})},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				var c *conn
				if tc.beforeInit {
					c = dial(t, s, "graphql-transport-ws")
				} else {
					c = connect(t, s, f.user.Token)
				}
				typ := websocket.MessageText
				if tc.binary {
					typ = websocket.MessageBinary
				}
				c.sendRaw(typ, []byte(tc.text))
				require.Contains(t, c.requireClosed(4400), "Invalid message received")
			})
		}
	})

	// A text message that is not UTF-8 fails the connection (RFC 6455,
	// section 8.1) in both protocols: decoded, its bad bytes would become
	// U+FFFD and the mutation would store what the client never sent, where
	// HTTP refuses the same body.
	t.Run("1007NotUTF8", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		const logEvent = `mutation($id: ID!, $d: JSON) { logMachineEvent(machineId: $id, eventType: "note", details: $d) { id } }`
		msg := func(id, typ string) []byte {
			b := mustJSON(t, map[string]any{"id": id, "type": typ, "payload": map[string]any{
				"query": logEvent, "variables": map[string]any{"id": f.machine, "d": map[string]any{"k": "a@@b"}}}})
			return bytes.Replace([]byte(b), []byte("@@"), []byte{0xff, 0xfe}, 1)
		}
		c := connect(t, s, f.user.Token)
		c.sendRaw(websocket.MessageText, msg("1", "subscribe"))
		require.Contains(t, c.requireClosed(1007), "not UTF-8")

		legacy := dial(t, s, "graphql-ws")
		legacy.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + f.user.Token}})
		require.Equal(t, "connection_ack", legacy.readAny().Type)
		legacy.sendRaw(websocket.MessageText, msg("1", "start"))
		require.Contains(t, legacy.requireClosed(1007), "not UTF-8")

		var notes int
		require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM machine_events WHERE machine_id = ? AND event_type = 'note'", f.machine).Scan(t.Context(), &notes))
		require.Zero(t, notes, "nothing is stored from a message that is not UTF-8")
	})

	t.Run("4401SubscribeBeforeInit", func(t *testing.T) {
		t.Parallel()
		c := dial(t, s, "graphql-transport-ws")
		c.subscribe("1", `{ me { id } }`, nil)
		require.Equal(t, "Unauthorized", c.requireClosed(4401))
	})

	t.Run("4403BadTokenInInit", func(t *testing.T) {
		t.Parallel()
		for name, payload := range map[string]map[string]any{
			"GarbageBearer":  {"Authorization": "Bearer not-a-jwt"},
			"WrongSecret":    {"Authorization": "Bearer " + mustForeignToken(t, f.user)},
			"AuthTokenEmpty": {"authToken": ""},
			"NotAString":     {"Authorization": 42},
			"UnknownAPIKey":  {"apiKey": "crpa_" + strings.Repeat("x", 43)},
		} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				c := dial(t, s, "graphql-transport-ws")
				c.send(map[string]any{"type": "connection_init", "payload": payload})
				require.Contains(t, c.requireClosed(4403), "Forbidden")
			})
		}
	})

	t.Run("4406", func(t *testing.T) {
		t.Parallel()
		// The upgrade succeeds without a subprotocol (coder/websocket
		// accepts one the server does not list by choosing none), then the
		// server refuses the socket with 4406, as the reference server does.
		for name, protocols := range map[string][]string{
			"UnknownSubprotocol": {"graphql-foo"},
			"NoSubprotocol":      nil,
		} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				c := dial(t, s, protocols...)
				require.Empty(t, c.ws.Subprotocol(), "no subprotocol is negotiated")
				require.Contains(t, c.requireClosed(4406), "Subprotocol not acceptable")
			})
		}
	})

	t.Run("4408InitTimeout", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t, apitest.Options{InitTimeout: 100 * time.Millisecond})
		c := dial(t, s, "graphql-transport-ws")
		require.Equal(t, "Connection initialisation timeout", c.requireClosed(4408))
	})

	t.Run("4408NotForAnInitialisedSocket", func(t *testing.T) {
		t.Parallel()
		// Long enough that a busy machine still reads connection_init
		// before it; the test waits until just past it.
		const initTimeout = 10 * time.Second
		s := apitest.New(t, apitest.Options{InitTimeout: initTimeout})
		f := newFixture(t, s)
		start := time.Now() // the server's timer starts after this
		c := connect(t, s, f.user.Token)
		// The init timer fires while the socket is initialised and closes
		// nothing: the subscription goes on past it.
		c.subscribe("s", machineSub, map[string]any{"id": f.machine})
		require.Equal(t, "CURRENT", machineChange(t, c.readFor("s")).Op)
		c.requireNothingFor(time.Until(start.Add(initTimeout)) + time.Second) // past the timeout
		f.set(t, "startMachine")
		require.Equal(t, "RUNNING", machineChange(t, c.readFor("s")).Machine.Status)
	})

	t.Run("4409DuplicateActiveID", func(t *testing.T) {
		t.Parallel()
		// A user without machines: nothing reaches s1 (the fixture's
		// creation may reach the change feed after s1 subscribed).
		c := connect(t, s, s.NewUser(t, uuid.Nil).Token)
		c.subscribe("s1", machineSub, nil)
		c.query("q", `{ me { id } }`) // s1 lives on meanwhile
		c.subscribe("s1", machineSub, nil)
		require.Equal(t, "Subscriber for s1 already exists", c.requireClosed(4409))
	})

	t.Run("ReusingACompletedIDIsFine", func(t *testing.T) {
		t.Parallel()
		c := connect(t, s, f.user.Token)
		for range 3 {
			r := c.query("same", `{ me { id } }`)
			require.Empty(t, r.Errors)
			require.JSONEq(t, `{"me":{"id":"`+f.user.ID.String()+`"}}`, string(r.Data))
		}
	})

	t.Run("4429SecondInit", func(t *testing.T) {
		t.Parallel()
		c := connect(t, s, f.user.Token)
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + f.user.Token}})
		require.Equal(t, "Too many initialisation requests", c.requireClosed(4429))
	})

	t.Run("4429SecondInitWithoutPayload", func(t *testing.T) {
		t.Parallel()
		c := dial(t, s, "graphql-transport-ws")
		c.send(map[string]any{"type": "connection_init"})
		require.Equal(t, "connection_ack", c.read().Type)
		c.send(map[string]any{"type": "connection_init"})
		require.Equal(t, "Too many initialisation requests", c.requireClosed(4429))
	})
}

func TestLiveWSProtocol(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("PingIsAnsweredWithItsPayload", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.send(map[string]any{"type": "ping", "payload": map[string]any{"n": 7, "s": "x"}})
		pong := c.readAny()
		require.Equal(t, "pong", pong.Type)
		require.JSONEq(t, `{"n":7,"s":"x"}`, string(pong.Payload))
	})

	t.Run("PingWithoutPayload", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.send(map[string]any{"type": "ping"})
		require.Equal(t, msg{Type: "pong"}, c.readAny())
	})

	t.Run("PingBeforeInit", func(t *testing.T) {
		t.Parallel()
		c := dial(t, s, "graphql-transport-ws")
		c.send(map[string]any{"type": "ping", "payload": map[string]any{"early": true}})
		pong := c.readAny()
		require.Equal(t, "pong", pong.Type)
		require.JSONEq(t, `{"early":true}`, string(pong.Payload))
	})

	t.Run("PongIsAccepted", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.send(map[string]any{"type": "pong", "payload": map[string]any{"x": 1}})
		c.query("after", `{ me { id } }`) // the socket is still open and working
	})

	t.Run("QueryIsNextThenComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.subscribe("q1", `query($id: ID!) { machine(id: $id) { id status } }`, map[string]any{"id": f.machine})
		next := c.readFor("q1")
		require.Equal(t, "next", next.Type)
		require.JSONEq(t, `{"data":{"machine":{"id":"`+f.machine+`","status":"STOPPED"}}}`, string(next.Payload))
		require.Equal(t, msg{ID: "q1", Type: "complete"}, c.readFor("q1"))
	})

	t.Run("MutationIsNextThenComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.subscribe("m1", `mutation($id: ID!) { startMachine(id: $id) { status } }`, map[string]any{"id": f.machine})
		require.JSONEq(t, `{"startMachine":{"status":"RUNNING"}}`, string(c.readFor("m1").result(t).Data))
		require.Equal(t, msg{ID: "m1", Type: "complete"}, c.readFor("m1"))
	})

	t.Run("ValidationErrorIsErrorWithoutComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.subscribe("bad", `{ me { id noSuchField } }`, nil)
		errs := c.readFor("bad").errors(t)
		require.Contains(t, errs[0].Message, "noSuchField")
		// Barrier: the next message is the next operation's, not a complete for "bad".
		c.subscribe("after", `{ me { id } }`, nil)
		require.Equal(t, "next", c.readFor("after").Type)
		require.Equal(t, "complete", c.readFor("after").Type)
		// The id is free again: an error ended the operation.
		c.subscribe("bad", `{ me { id } }`, nil)
		require.Equal(t, "next", c.readFor("bad").Type)
		require.Equal(t, "complete", c.readFor("bad").Type)
	})

	t.Run("SyntaxErrorIsErrorWithoutComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.subscribe("bad", `subscription { machineUpdated(`, nil)
		c.readFor("bad").errors(t)
		c.subscribe("after", `{ me { id } }`, nil)
		require.Equal(t, "next", c.readFor("after").Type)
	})

	t.Run("BadVariablesAreErrorWithoutComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.subscribe("bad", machineSub, map[string]any{"id": []int{1}})
		c.readFor("bad").errors(t)
		c.subscribe("after", `{ me { id } }`, nil)
		require.Equal(t, "next", c.readFor("after").Type)
	})

	t.Run("InvisibleIDIsNotFoundErrorWithoutComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		other := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		for i, id := range []string{uuid.NewString(), other.machine} {
			sub := "s" + string(rune('a'+i))
			c.subscribe(sub, machineSub, map[string]any{"id": id})
			errs := c.readFor(sub).errors(t)
			require.Equal(t, "NOT_FOUND", errs[0].code(), "%+v", errs)
			c.subscribe("after"+sub, `{ me { id } }`, nil)
			require.Equal(t, "next", c.readFor("after"+sub).Type)
			require.Equal(t, "complete", c.readFor("after"+sub).Type)
		}
	})

	t.Run("AnonymousSubscriptionIsUnauthenticated", func(t *testing.T) {
		t.Parallel()
		c := dial(t, s, "graphql-transport-ws")
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{}})
		require.Equal(t, "connection_ack", c.read().Type)
		c.subscribe("s", machineSub, nil)
		require.Equal(t, "UNAUTHENTICATED", c.readFor("s").errors(t)[0].code())
	})

	t.Run("ClientCompleteStopsASubscription", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.subscribe("s1", machineSub, map[string]any{"id": f.machine})
		require.Equal(t, "CURRENT", machineChange(t, c.readFor("s1")).Op)
		c.send(map[string]any{"id": "s1", "type": "complete"})
		// s2 watches the same machine: the hub offers each change to both,
		// so a message for s1 would come with s2's. Operations are taken in
		// order, so s1 was stopped before s2 started.
		c.subscribe("s2", machineSub, map[string]any{"id": f.machine})
		require.Equal(t, "CURRENT", machineChange(t, c.readFor("s2")).Op)
		v := f.set(t, "startMachine")
		require.Equal(t, change{Op: "UPDATED", ID: f.machine, Version: v, Machine: &struct{ ID, Status string }{f.machine, "RUNNING"}},
			machineChange(t, c.readFor("s2")))
		v = f.set(t, "stopMachine")
		require.Equal(t, v, machineChange(t, c.readFor("s2")).Version)
		// The id is free again.
		c.subscribe("s1", machineSub, map[string]any{"id": f.machine})
		require.Equal(t, change{Op: "CURRENT", ID: f.machine, Version: v, Machine: &struct{ ID, Status string }{f.machine, "STOPPED"}},
			machineChange(t, c.readFor("s1")))
	})

	t.Run("CompleteForAnUnknownIDIsIgnored", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.send(map[string]any{"id": "nothing", "type": "complete"})
		c.query("q", `{ me { id } }`)
	})

	t.Run("ConcurrentSubscriptionsAreSeparate", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		c.subscribe("f", machineSub, map[string]any{"id": f.machine})
		c.subscribe("q", `{ me { id } }`, nil)
		seen := map[string][]string{}
		for range 3 { // f's CURRENT, q's next and complete, in any order
			m := c.read()
			seen[m.ID] = append(seen[m.ID], m.Type)
		}
		require.Equal(t, map[string][]string{"f": {"next"}, "q": {"next", "complete"}}, seen)
		f.set(t, "startMachine")
		require.Equal(t, "RUNNING", machineChange(t, c.readFor("f")).Machine.Status)
	})
}

func TestLiveWSKeepAlive(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{KeepAlive: 50 * time.Millisecond})
	f := newFixture(t, s)

	t.Run("ServerPings", func(t *testing.T) {
		t.Parallel()
		c := connect(t, s, f.user.Token)
		for range 2 {
			for m := c.readAny(); m.Type != "ping"; m = c.readAny() {
				require.Equal(t, "pong", m.Type, "unexpected %+v", m)
			}
			c.send(map[string]any{"type": "pong"})
		}
		c.query("q", `{ me { id } }`)
	})

	t.Run("NoPingsBeforeInit", func(t *testing.T) {
		t.Parallel()
		c := dial(t, s, "graphql-transport-ws")
		c.requireNothingFor(5 * 50 * time.Millisecond)
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + f.user.Token}})
		require.Equal(t, "connection_ack", c.readAny().Type)
	})

	t.Run("LegacyKeepAlive", func(t *testing.T) {
		t.Parallel()
		c := dial(t, s, "graphql-ws")
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + f.user.Token}})
		require.Equal(t, "connection_ack", c.readAny().Type)
		for range 3 { // the ka after the ack, then periodic ones
			require.Equal(t, msg{Type: "ka"}, c.readAny())
		}
	})

	t.Run("SSEComments", func(t *testing.T) {
		t.Parallel()
		st := openSSE(t, s, f.user.Token, machineSub, map[string]any{"id": f.machine})
		require.Equal(t, "next", st.next().event)
		for range 2 {
			require.Equal(t, sseEvent{comment: true}, st.nextAny())
		}
	})
}

func TestLiveWSCredentialExpiry(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	f := newFixture(t, s)

	t.Run("SubscriptionsEndWithUnauthenticatedThenTheSocketCloses", func(t *testing.T) {
		t.Parallel()
		// Long enough for the socket and both subscriptions on a busy
		// machine (exp has second resolution: 5 to 6 s).
		c := connect(t, s, shortLivedToken(t, s, f.user, 6*time.Second))
		c.subscribe("one", machineSub, map[string]any{"id": f.machine})
		require.Equal(t, "CURRENT", machineChange(t, c.readFor("one")).Op)
		c.subscribe("all", machineSub, nil)
		got := map[string]string{}
		for len(got) < 2 {
			m := c.read()
			if m.ID == "all" && m.Type == "next" {
				// The fixture's creation may reach the change feed after
				// "all" subscribed: its HTTP answer came first.
				ch := machineChange(t, m)
				require.Equal(t, change{Op: "CREATED", ID: f.machine, Version: 1}, change{Op: ch.Op, ID: ch.ID, Version: ch.Version}, "%s", m.Payload)
				continue
			}
			require.Contains(t, []string{"one", "all"}, m.ID, "%+v %s", m, m.Payload)
			require.NotContains(t, got, m.ID, "a second message for %s: %+v %s", m.ID, m, m.Payload)
			errs := m.errors(t)
			got[m.ID] = errs[0].code()
		}
		require.Equal(t, map[string]string{"one": "UNAUTHENTICATED", "all": "UNAUTHENTICATED"}, got)
		require.Contains(t, c.requireClosed(4403), "Forbidden")
	})

	t.Run("IdleSocketCloses", func(t *testing.T) {
		t.Parallel()
		c := connect(t, s, shortLivedToken(t, s, f.user, time.Second))
		require.Contains(t, c.requireClosed(4403), "Forbidden")
	})

	t.Run("ExpiredTokenCannotServe", func(t *testing.T) {
		t.Parallel()
		tok := shortLivedToken(t, s, f.user, time.Second)
		connect(t, s, tok).requireClosed(4403) // the token has expired now
		// The verifier's leeway may still accept the token at init, but a
		// socket never serves past the credential's expiry: it closes at
		// once, acknowledged or not.
		c := dial(t, s, "graphql-transport-ws")
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + tok}})
		select {
		case m := <-c.msgs:
			require.Equal(t, "connection_ack", m.Type, "%+v", m)
		case <-c.closed:
			select {
			case m := <-c.msgs:
				require.Equal(t, "connection_ack", m.Type, "%+v", m)
			default:
			}
		}
		require.Contains(t, c.requireClosed(4403), "Forbidden")
	})
}

func TestLiveLegacyWS(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	legacy := func(t *testing.T, token string) *conn {
		t.Helper()
		c := dial(t, s, "graphql-ws")
		require.Equal(t, "graphql-ws", c.ws.Subprotocol())
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + token}})
		require.Equal(t, msg{Type: "connection_ack"}, c.readAny())
		require.Equal(t, msg{Type: "ka"}, c.readAny())
		return c
	}
	start := func(c *conn, id, query string, vars map[string]any) {
		c.send(map[string]any{"id": id, "type": "start", "payload": map[string]any{"query": query, "variables": vars}})
	}

	t.Run("QueryIsDataThenComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := legacy(t, f.user.Token)
		start(c, "1", `query($id: ID!) { machine(id: $id) { id } }`, map[string]any{"id": f.machine})
		data := c.readFor("1")
		require.Equal(t, "data", data.Type)
		require.JSONEq(t, `{"data":{"machine":{"id":"`+f.machine+`"}}}`, string(data.Payload))
		require.Equal(t, msg{ID: "1", Type: "complete"}, c.readFor("1"))
	})

	t.Run("SubscriptionDataThenStop", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := legacy(t, f.user.Token)
		start(c, "s1", machineSub, map[string]any{"id": f.machine})
		first := c.readFor("s1")
		require.Equal(t, "data", first.Type)
		first.Type = "next" // same payload shape
		require.Equal(t, "CURRENT", machineChange(t, first).Op)
		v := f.set(t, "startMachine")
		upd := c.readFor("s1")
		require.Equal(t, "data", upd.Type)
		upd.Type = "next"
		require.Equal(t, change{Op: "UPDATED", ID: f.machine, Version: v, Machine: &struct{ ID, Status string }{f.machine, "RUNNING"}},
			machineChange(t, upd))

		c.send(map[string]any{"id": "s1", "type": "stop"})
		// Barrier: s2 watches the same machine and sees the next changes; s1 nothing.
		start(c, "s2", machineSub, map[string]any{"id": f.machine})
		require.Equal(t, "data", c.readFor("s2").Type)
		f.set(t, "stopMachine")
		require.Equal(t, "data", c.readFor("s2").Type)
		f.set(t, "startMachine")
		require.Equal(t, "data", c.readFor("s2").Type)
	})

	t.Run("OperationErrorIsOneErrorObject", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := legacy(t, f.user.Token)
		start(c, "s", machineSub, map[string]any{"id": uuid.NewString()})
		m := c.readFor("s")
		require.Equal(t, "error", m.Type)
		var e gqlError
		require.NoError(t, json.Unmarshal(m.Payload, &e), "legacy error payloads are one object: %s", m.Payload)
		require.Equal(t, "NOT_FOUND", e.code())
		start(c, "after", `{ me { id } }`, nil)
		require.Equal(t, "data", c.readFor("after").Type)
	})

	t.Run("BadTokenIsConnectionErrorThenClose", func(t *testing.T) {
		t.Parallel()
		c := dial(t, s, "graphql-ws")
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer nonsense"}})
		m := c.readAny()
		require.Equal(t, "connection_error", m.Type)
		var e gqlError
		require.NoError(t, json.Unmarshal(m.Payload, &e))
		require.Equal(t, "UNAUTHENTICATED", e.code(), "%s", m.Payload)
		require.Contains(t, c.requireClosed(4403), "Forbidden")
	})

	t.Run("StartBeforeInitIsAnErrorForThatID", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := dial(t, s, "graphql-ws")
		start(c, "early", `{ me { id } }`, nil)
		m := c.readAny()
		require.Equal(t, "error", m.Type)
		require.Equal(t, "early", m.ID)
		// The socket stays open: initialise and run the operation.
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + f.user.Token}})
		require.Equal(t, "connection_ack", c.read().Type)
		start(c, "early", `{ me { id } }`, nil)
		require.Equal(t, "data", c.readFor("early").Type)
		require.Equal(t, "complete", c.readFor("early").Type)
	})

	t.Run("ConnectionTerminateClosesNormally", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		c := legacy(t, f.user.Token)
		c.send(map[string]any{"type": "connection_terminate"})
		c.requireClosed(websocket.StatusNormalClosure)
	})
}

// sseEvent is one server-sent event, or a comment line (a keep-alive).
type sseEvent struct {
	event   string
	data    string
	comment bool
}

// sseStream reads the events of one SSE response as they come.
type sseStream struct {
	t      *testing.T
	events chan sseEvent
	done   chan struct{}
}

// openSSE posts an operation asking for text/event-stream, requires 200,
// and reads its events.
func openSSE(t *testing.T, s *apitest.Server, token, query string, vars map[string]any) *sseStream {
	t.Helper()
	res := postSSE(t, s, token, query, vars)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "text/event-stream", res.Header.Get("Content-Type"))
	st := &sseStream{t: t, events: make(chan sseEvent, 1024), done: make(chan struct{})}
	go func() {
		defer close(st.done)
		r := bufio.NewReader(res.Body)
		var ev sseEvent
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				if ev != (sseEvent{}) {
					st.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				ev.comment = true
			case strings.HasPrefix(line, "event: "):
				ev.event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return st
}

func postSSE(t *testing.T, s *apitest.Server, token, query string, vars map[string]any) *http.Response {
	t.Helper()
	body, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	require.NoError(t, err)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL+"/graphql", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { _ = res.Body.Close() })
	return res
}

// nextAny returns the next event or comment.
func (st *sseStream) nextAny() sseEvent {
	st.t.Helper()
	return st.nextUntil(time.Now().Add(wait))
}

// nextUntil returns the next event or comment, failing at deadline.
func (st *sseStream) nextUntil(deadline time.Time) sseEvent {
	st.t.Helper()
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	select {
	case ev := <-st.events:
		return ev
	case <-st.done:
		select {
		case ev := <-st.events:
			return ev
		default:
		}
		require.FailNow(st.t, "the stream ended")
	case <-timeout.C:
		require.FailNow(st.t, "no event within the deadline")
	}
	return sseEvent{}
}

// next returns the next event that is not a comment, within one deadline
// (keep-alive comments must not restart it).
func (st *sseStream) next() sseEvent {
	st.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		if ev := st.nextUntil(deadline); !ev.comment {
			return ev
		}
	}
}

func (st *sseStream) result() result {
	st.t.Helper()
	ev := st.next()
	require.Equal(st.t, "next", ev.event, "%+v", ev)
	var r result
	require.NoError(st.t, json.Unmarshal([]byte(ev.data), &r), "%s", ev.data)
	return r
}

// requireEnd requires a complete event and then the end of the stream.
func (st *sseStream) requireEnd() {
	st.t.Helper()
	require.Equal(st.t, "complete", st.next().event)
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	select {
	case <-st.done:
		select {
		case ev := <-st.events:
			require.FailNow(st.t, "an event after complete", "%+v", ev)
		default:
		}
	case ev := <-st.events:
		require.FailNow(st.t, "an event after complete", "%+v", ev)
	case <-timeout.C:
		require.FailNow(st.t, "the stream did not end after complete")
	}
}

func TestLiveSSE(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("SubscriptionSendsCurrentThenUpdates", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		st := openSSE(t, s, f.user.Token, machineSub, map[string]any{"id": f.machine})
		var data struct{ MachineUpdated change }
		r := st.result()
		require.Empty(t, r.Errors)
		require.NoError(t, json.Unmarshal(r.Data, &data))
		require.Equal(t, "CURRENT", data.MachineUpdated.Op)
		require.Equal(t, "STOPPED", data.MachineUpdated.Machine.Status)
		for _, step := range []struct{ op, status string }{{"startMachine", "RUNNING"}, {"stopMachine", "STOPPED"}} {
			v := f.set(t, step.op)
			r := st.result()
			require.Empty(t, r.Errors)
			require.NoError(t, json.Unmarshal(r.Data, &data))
			require.Equal(t, change{Op: "UPDATED", ID: f.machine, Version: v, Machine: &struct{ ID, Status string }{f.machine, step.status}},
				data.MachineUpdated)
		}
	})

	t.Run("QueryIsNextThenComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		st := openSSE(t, s, f.user.Token, `query($id: ID!) { machine(id: $id) { id } }`, map[string]any{"id": f.machine})
		r := st.result()
		require.Empty(t, r.Errors)
		require.JSONEq(t, `{"machine":{"id":"`+f.machine+`"}}`, string(r.Data))
		st.requireEnd()
	})

	t.Run("BadTokenIs401", func(t *testing.T) {
		t.Parallel()
		res := postSSE(t, s, "not-a-token", machineSub, nil)
		require.Equal(t, http.StatusUnauthorized, res.StatusCode)
		var body result
		require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
		require.NotEmpty(t, body.Errors)
		require.Equal(t, "UNAUTHENTICATED", body.Errors[0].code())
	})

	t.Run("InvisibleIDIsNotFoundThenComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		other := newFixture(t, s)
		for _, id := range []string{uuid.NewString(), other.machine} {
			st := openSSE(t, s, f.user.Token, machineSub, map[string]any{"id": id})
			r := st.result()
			require.NotEmpty(t, r.Errors)
			require.Equal(t, "NOT_FOUND", r.Errors[0].code())
			st.requireEnd()
		}
	})

	t.Run("ValidationErrorThenComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		st := openSSE(t, s, f.user.Token, `subscription { machineUpdated { nope } }`, nil)
		r := st.result()
		require.NotEmpty(t, r.Errors)
		st.requireEnd()
	})

	t.Run("ExpiryIsUnauthenticatedThenComplete", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, s)
		st := openSSE(t, s, shortLivedToken(t, s, f.user, 5*time.Second), machineSub, map[string]any{"id": f.machine})
		require.Equal(t, "CURRENT", func() string {
			var data struct{ MachineUpdated change }
			require.NoError(t, json.Unmarshal(st.result().Data, &data))
			return data.MachineUpdated.Op
		}())
		r := st.result()
		require.NotEmpty(t, r.Errors, "expected the expiry error, got %s", r.Data)
		require.Equal(t, "UNAUTHENTICATED", r.Errors[0].code())
		st.requireEnd()
	})
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// mustForeignToken is a well-formed token for u signed with another secret.
func mustForeignToken(t *testing.T, u apitest.User) string {
	t.Helper()
	j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(strings.Repeat("k", 48)), Audience: "authenticated"})
	require.NoError(t, err)
	tok, err := j.Mint(auth.MintOptions{UserID: u.ID, TenantID: u.Tenant, Role: auth.RoleUser, TTL: time.Hour})
	require.NoError(t, err)
	return tok
}

// TestLiveSubscriptionIsLiveBeforeTheNextMessage checks when a
// subscription that sends no first state starts to see changes: before
// the server reads the client's next message on the socket (so the pong
// to a ping sent after the subscribe, or any later operation's answer,
// means it is live), and over HTTP before the response's headers. A
// change made right after is delivered, every time, whether the
// subscription is shared (it starts or joins its group) or runs alone
// (machineEventAdded).
func TestLiveSubscriptionIsLiveBeforeTheNextMessage(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	ops := []string{"startMachine", "stopMachine"}
	const rounds = 5

	t.Run("shared over graphql-transport-ws", func(t *testing.T) {
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		for i := range rounds {
			id := fmt.Sprint("all-", i)
			c.subscribe(id, machineSub, nil)
			c.sync()
			v := f.set(t, ops[i%2])
			// A change committed before the subscribe (the machine's
			// creation, the last round's) may be heard after it; the
			// change made after it must come.
			for got := machineChange(t, c.readFor(id)).Version; got != v; got = machineChange(t, c.readFor(id)).Version {
				require.Less(t, got, v, "only older changes before this round's")
			}
			c.send(map[string]any{"id": id, "type": "complete"})
		}
	})

	t.Run("alone over graphql-transport-ws", func(t *testing.T) {
		f := newFixture(t, s)
		c := connect(t, s, f.user.Token)
		for i := range rounds {
			id, probe := fmt.Sprint("events-", i), fmt.Sprint("probe-", i)
			c.subscribe(id, `subscription($m: ID!) { machineEventAdded(machineId: $m) { eventType } }`, map[string]any{"m": f.machine})
			c.sync()
			s.Do(t, f.user.Token, `mutation($m: ID!, $t: String!) { logMachineEvent(machineId: $m, eventType: $t) { id } }`,
				map[string]any{"m": f.machine, "t": probe}).OK(t, nil)
			for {
				var got struct{ MachineEventAdded struct{ EventType string } }
				r := c.readFor(id).result(t)
				require.Empty(t, r.Errors)
				require.NoError(t, json.Unmarshal(r.Data, &got))
				if got.MachineEventAdded.EventType == probe {
					break
				}
				// The machine's creation, committed before the subscribe,
				// may be heard after it.
				require.Equal(t, "created", got.MachineEventAdded.EventType)
			}
			c.send(map[string]any{"id": id, "type": "complete"})
		}
	})

	t.Run("shared over SSE", func(t *testing.T) {
		f := newFixture(t, s)
		for i := range rounds {
			st := openSSE(t, s, f.user.Token, machineSub, nil) // returns with the headers
			v := f.set(t, ops[i%2])
			for {
				r := st.result()
				require.Empty(t, r.Errors)
				var got struct{ MachineUpdated change }
				require.NoError(t, json.Unmarshal(r.Data, &got))
				if got.MachineUpdated.Version == v {
					break
				}
				require.Less(t, got.MachineUpdated.Version, v, "only older changes (heard late) before this round's")
			}
		}
	})
}

// TestLiveWSNumbersKeepTheirDigits checks that a variable's numbers reach
// a JSON argument over a websocket as they do over HTTP: digit for digit,
// past float64's precision and range.
func TestLiveWSNumbersKeepTheirDigits(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.Nil)
	c := connect(t, s, u.Token)
	const big = "12345678901234567890123"
	c.sendRaw(websocket.MessageText, []byte(`{"id":"m","type":"subscribe","payload":{"query":"mutation($c: JSON) { createMachine(input: {name: \"digits\", configuration: $c}) { configuration } }","variables":{"c":{"big":`+big+`,"huge":1e400}}}}`))
	m := c.readFor("m")
	r := m.result(t)
	require.Empty(t, r.Errors, "%s", m.Payload)
	require.Contains(t, string(r.Data), big)
	require.Contains(t, string(r.Data), "1"+strings.Repeat("0", 400))
}

// Shutdown drains a websocket as http.Server's Shutdown drains a POST: its
// subscriptions stop at once, a mutation under way finishes and sends its
// result, an operation sent meanwhile is refused, and only then does the
// socket close with 1001. The old code cancelled the mutation (its
// transaction rolled back) and closed at once.
func TestLiveWSShutdownLetsAMutationFinish(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	f := newFixture(t, s)
	ctx := t.Context()
	holder, err := s.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer holder.Rollback()
	_, err = holder.ExecContext(ctx, "SELECT 1 FROM machines WHERE id = ? FOR UPDATE", f.machine)
	require.NoError(t, err)

	c := connect(t, s, f.user.Token)
	c.subscribe("sub", machineSub, map[string]any{"id": f.machine})
	require.Equal(t, "next", c.readFor("sub").Type, "CURRENT")
	c.subscribe("start", `mutation($id: ID!) { startMachine(id: $id) { status } }`, map[string]any{"id": f.machine})
	apitest.Eventually(t, wait, "the mutation waits for the machine's row", func() bool {
		return s.LockWaiters(t, "%machines%") > 0
	})

	closed := make(chan error, 1)
	go func() { closed <- s.Handler.CloseStreams(ctx) }()
	// Draining: a new operation is refused, and the socket stays open.
	var refused msg
	attempt := 0
	apitest.Eventually(t, wait, "an operation sent while the socket drains is refused", func() bool {
		attempt++
		id := fmt.Sprint("late", attempt)
		c.subscribe(id, `{ me { id } }`, nil)
		for {
			switch m := c.readFor(id); m.Type {
			case "error":
				refused = m
				return true
			case "complete":
				return false // before the drain
			}
		}
	})
	require.Contains(t, string(refused.Payload), "RATE_LIMITED")
	require.NoError(t, holder.Rollback())

	next := c.readFor("start")
	require.Equal(t, "next", next.Type)
	require.JSONEq(t, `{"data":{"startMachine":{"status":"RUNNING"}}}`, string(next.Payload))
	require.Equal(t, msg{ID: "start", Type: "complete"}, c.readFor("start"))
	require.Contains(t, c.requireClosed(websocket.StatusGoingAway), "shutting down")
	require.NoError(t, <-closed)
	var status string
	require.NoError(t, s.DB.NewRaw("SELECT status FROM machines WHERE id = ?", f.machine).Scan(ctx, &status))
	require.Equal(t, "RUNNING", status, "the mutation committed")
}
