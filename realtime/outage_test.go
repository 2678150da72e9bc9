package realtime_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/realtime/faulttest"
)

// outageWS is a websocket client for TestRobotWebsocketsOutliveADatabaseOutage.
type outageWS struct {
	t      *testing.T
	ws     *websocket.Conn
	msgs   chan outageMsg
	closed chan struct{}
	err    error // why reading stopped; set before closed is closed
}

type outageMsg struct {
	ID      string          `json:"id,omitempty"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// dialRobot opens a websocket in protocol and sends connection_init with key.
func dialRobot(t *testing.T, s *apitest.Server, protocol, key string) *outageWS {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), faulttest.Deadline)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, faulttest.WSURL(s.URL), &websocket.DialOptions{Subprotocols: []string{protocol}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ws.CloseNow() })
	c := &outageWS{t: t, ws: ws, msgs: make(chan outageMsg, 64), closed: make(chan struct{})}
	go func() {
		defer close(c.closed)
		for {
			var m outageMsg
			if err := wsjson.Read(context.Background(), ws, &m); err != nil {
				c.err = err
				return
			}
			c.msgs <- m
		}
	}()
	c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"apiKey": key}})
	return c
}

func (c *outageWS) send(v any) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), faulttest.Deadline)
	defer cancel()
	require.NoError(c.t, wsjson.Write(ctx, c.ws, v))
}

// next returns the next message that is not a keep-alive.
func (c *outageWS) next() outageMsg {
	c.t.Helper()
	timeout := time.NewTimer(faulttest.Deadline)
	defer timeout.Stop()
	for {
		select {
		case m := <-c.msgs:
			if m.Type == "ping" || m.Type == "ka" {
				continue
			}
			return m
		case <-c.closed:
			select {
			case m := <-c.msgs:
				return m
			default:
			}
			require.FailNow(c.t, "the server closed the socket", "%v", c.err)
		case <-timeout.C:
			require.FailNow(c.t, "no message within the deadline")
		}
	}
}

// closeError waits for the server's close frame.
func (c *outageWS) closeError() websocket.CloseError {
	c.t.Helper()
	select {
	case <-c.closed:
	case <-time.After(faulttest.Deadline):
		require.FailNow(c.t, "the server did not close the socket")
	}
	var ce websocket.CloseError
	require.ErrorAs(c.t, c.err, &ce, "the socket ended without a close frame: %v", c.err)
	return ce
}

// requireNoInternals fails when text shows anything of the database: driver
// prefixes, dial errors, socket paths, the database's name.
func requireNoInternals(t *testing.T, text, database string) {
	t.Helper()
	for _, leak := range []string{"pq:", "dial", ".s.PGSQL", "/tmp", "connection refused", "accepting connections", database} {
		require.NotContains(t, strings.ToLower(text), strings.ToLower(leak), "a client sees the server's internals: %q", text)
	}
}

// TestRobotWebsocketsOutliveADatabaseOutage: while the database refuses
// connections, a robot's API key cannot be re-checked. That is not a
// revocation: the robot's open websocket stays (its periodic re-checks are
// retried; a new operation is refused for its id alone), a new connection
// is closed with 1013 (try again later) rather than 4403, and nothing a
// client reads (close reasons, errors) carries the driver's text. Once the
// database is back, the same socket works.
func TestRobotWebsocketsOutliveADatabaseOutage(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{KeyRecheck: 20 * time.Millisecond})
	user := s.NewUser(t, uuid.Nil)
	api := faulttest.API{URL: s.URL, Token: user.Token}
	var robot struct{ CreateRobot struct{ ID string } }
	api.Must(t, `mutation { createRobot(input: {name: "r"}) { id } }`, nil, &robot)
	var key struct{ CreateApiKey struct{ Key string } }
	api.Must(t, `mutation($r: ID!) { createApiKey(robotId: $r, name: "k") { key } }`, map[string]any{"r": robot.CreateRobot.ID}, &key)
	const sub = `subscription($id: ID) { robotUpdated(id: $id) { op id } }`
	vars := map[string]any{"id": robot.CreateRobot.ID}
	subscribe := func(c *outageWS, id string) outageMsg {
		t.Helper()
		c.send(map[string]any{"id": id, "type": "subscribe", "payload": map[string]any{"query": sub, "variables": vars}})
		m := c.next()
		require.Equal(t, id, m.ID, "%+v %s", m, m.Payload)
		return m
	}

	ws := dialRobot(t, s, "graphql-transport-ws", key.CreateApiKey.Key)
	require.Equal(t, "connection_ack", ws.next().Type)
	require.Equal(t, "next", subscribe(ws, "before").Type)

	// The outage: the database refuses new connections and loses its current ones.
	admin := adminDatabase(t, s.DB.DSN)
	allow := func(ok bool) error {
		_, err := admin.ExecContext(context.Background(), fmt.Sprintf("ALTER DATABASE %s ALLOW_CONNECTIONS %t", s.DB.Name, ok))
		return err
	}
	t.Cleanup(func() { _ = allow(true) })
	require.NoError(t, allow(false))
	_, err := admin.ExecContext(t.Context(), "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = ?", s.DB.Name)
	require.NoError(t, err)

	// An operation whose key cannot be checked is refused alone, without internals.
	m := subscribe(ws, "during")
	require.Equal(t, "error", m.Type, "%s", m.Payload)
	var errs []struct {
		Message    string
		Extensions map[string]any
	}
	require.NoError(t, json.Unmarshal(m.Payload, &errs))
	require.Len(t, errs, 1)
	require.Equal(t, "INTERNAL", errs[0].Extensions["code"])
	require.NotEmpty(t, errs[0].Extensions["requestId"], "a live INTERNAL error carries the request id, as over HTTP")
	requireNoInternals(t, string(m.Payload), s.DB.Name)

	// The periodic re-check fails again and again without closing the socket.
	const warning = "could not re-check a robot's API key"
	deadline := time.Now().Add(faulttest.Deadline)
	for strings.Count(s.Log.String(), warning) < 4 {
		require.True(t, time.Now().Before(deadline), "the re-checks never ran")
		ws.send(map[string]any{"type": "ping"})
		require.Equal(t, "pong", ws.next().Type, "the socket stays open")
	}

	// New connections, in both protocols, are told to try again later.
	for _, protocol := range []string{"graphql-transport-ws", "graphql-ws"} {
		c := dialRobot(t, s, protocol, key.CreateApiKey.Key)
		if protocol == "graphql-ws" {
			m := c.next()
			require.Equal(t, "connection_error", m.Type, "%s", m.Payload)
			var e struct{ Extensions map[string]any }
			require.NoError(t, json.Unmarshal(m.Payload, &e))
			require.Equal(t, "INTERNAL", e.Extensions["code"])
			require.NotEmpty(t, e.Extensions["requestId"], "%s", m.Payload)
			requireNoInternals(t, string(m.Payload), s.DB.Name)
		}
		ce := c.closeError()
		require.Equal(t, websocket.StatusCode(1013), ce.Code, "%s: %q", protocol, ce.Reason)
		require.Contains(t, strings.ToLower(ce.Reason), "try again")
		requireNoInternals(t, ce.Reason, s.DB.Name)
	}

	// The database is back: the socket that lived through the outage works.
	require.NoError(t, allow(true))
	m = subscribe(ws, "after")
	require.Equal(t, "next", m.Type, "%s", m.Payload)
	requireNoInternals(t, string(m.Payload), s.DB.Name)
}
