package realtime_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/apitest"
	"fleetgraph/realtime/faulttest"
)

// TestLogTailReplaysLinesLostWithTheFeed: lines shipped while the
// notification listener is away reach a live tail once it reconnects (the
// hub's resync re-reads recent lines), each once, in order.
func TestLogTailReplaysLinesLostWithTheFeed(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	ctx := t.Context()
	user := s.NewUser(t, uuid.New())
	api := faulttest.API{URL: s.URL, Token: user.Token}
	var robot struct{ CreateRobot struct{ ID string } }
	api.Must(t, `mutation { createRobot(input: {name: "r"}) { id } }`, nil, &robot)
	var key struct{ CreateApiKey struct{ Key string } }
	api.Must(t, `mutation($r: ID!) { createApiKey(robotId: $r, name: "k") { key } }`, map[string]any{"r": robot.CreateRobot.ID}, &key)
	robotAPI := faulttest.API{URL: s.URL, Token: key.CreateApiKey.Key}
	ship := func(messages ...string) {
		t.Helper()
		var entries []map[string]any
		for _, m := range messages {
			entries = append(entries, map[string]any{"level": "INFO", "message": m})
		}
		robotAPI.Must(t, `mutation($e: [RobotLogInput!]!) { shipLogs(entries: $e) }`, map[string]any{"e": entries}, nil)
	}
	lines := func(m outageMsg) []string {
		t.Helper()
		require.Equal(t, "next", m.Type, "%+v %s", m, m.Payload)
		var p struct {
			Data struct {
				RobotLogAdded struct{ Lines []struct{ Message string } }
			}
		}
		require.NoError(t, json.Unmarshal(m.Payload, &p))
		var out []string
		for _, l := range p.Data.RobotLogAdded.Lines {
			out = append(out, l.Message)
		}
		return out
	}

	ws := dialRobot(t, s, "graphql-transport-ws", key.CreateApiKey.Key)
	require.Equal(t, "connection_ack", ws.next().Type)
	ws.send(map[string]any{"id": "tail", "type": "subscribe", "payload": map[string]any{
		"query": `subscription { robotLogAdded { lines { message } } }`}})
	// Live once a probe arrives; probes made before the hub registered the
	// subscription are not sent, so each wait is short and the probe repeated.
	live := false
	for i := 0; i < 40 && !live; i++ {
		ship(fmt.Sprintf("probe %d", i))
		select {
		case m := <-ws.msgs:
			require.Contains(t, lines(m)[0], "probe")
			live = true
		case <-timeAfter(250):
		}
	}
	require.True(t, live, "the tail never saw a probe")

	// Warm the pool so the writes below need no new connection.
	var held []bun.Conn
	for range 8 {
		c, err := s.DB.Conn(ctx)
		require.NoError(t, err)
		_, err = c.ExecContext(ctx, "SELECT 1")
		require.NoError(t, err)
		held = append(held, c)
	}
	for _, c := range held {
		require.NoError(t, c.Close())
	}
	admin := adminDatabase(t, s.DB.DSN)
	allow := func(ok bool) error {
		_, err := admin.ExecContext(context.Background(), fmt.Sprintf("ALTER DATABASE %s ALLOW_CONNECTIONS %t", s.DB.Name, ok))
		return err
	}
	t.Cleanup(func() { _ = allow(true) })
	pids := listenerBackends(t, admin, s.DB.Name)
	require.Len(t, pids, 1)
	require.NoError(t, allow(false))
	var terminated bool
	require.NoError(t, admin.QueryRowContext(ctx, "SELECT pg_terminate_backend(?, 10000)", pids[0]).Scan(&terminated))
	require.True(t, terminated)

	ship("lost 1", "lost 2")
	ship("lost 3")
	require.Empty(t, listenerBackends(t, admin, s.DB.Name), "the listener stayed away during the writes")
	require.NoError(t, allow(true))

	var got []string
	for len(got) < 3 {
		for _, l := range lines(ws.next()) {
			if !strings.HasPrefix(l, "probe") { // probes may be replayed; the tail skips only what it sent
				got = append(got, l)
			}
		}
	}
	require.Equal(t, []string{"lost 1", "lost 2", "lost 3"}, got)
	ship("after")
	require.Equal(t, []string{"after"}, lines(ws.next()), "the feed works again, and nothing came twice")
}

// timeAfter is time.After in milliseconds.
func timeAfter(ms int) <-chan time.Time { return time.After(time.Duration(ms) * time.Millisecond) }
