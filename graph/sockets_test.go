package graph_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph/live"
)

// sockDial opens a graphql-transport-ws socket and sends nothing on it.
// On a refused upgrade it returns the response's status and error.
func sockDial(t *testing.T, s *apitest.Server) (*websocket.Conn, int, apitest.Error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, wsURL(s), &websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
	if err == nil {
		t.Cleanup(func() { _ = conn.CloseNow() })
		return conn, http.StatusSwitchingProtocols, apitest.Error{}
	}
	require.NotNil(t, resp, "%v", err)
	body, _ := io.ReadAll(resp.Body)
	var out struct{ Errors []apitest.Error }
	require.NoError(t, json.Unmarshal(body, &out), "%s", body)
	require.Len(t, out.Errors, 1)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	return nil, resp.StatusCode, out.Errors[0]
}

// TestWebsocketsAreCapped checks that one caller holds at most
// MAX_WEBSOCKETS_PER_CALLER open websockets (by its credential, by address
// when connection_init names none), and the process at most MAX_WEBSOCKETS:
// idle sockets, which hold no subscription, used to be unlimited, and
// one anonymous client could take every file the process may open.
func TestWebsocketsAreCapped(t *testing.T) {
	t.Parallel()

	t.Run("AnAddressWithoutCredentials", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t, apitest.Options{LiveLimits: live.Limits{SocketsPerCaller: 3}})
		// Sockets still waiting for connection_init count by address, up to
		// PendingPerAddress times more (behind a load balancer every
		// browser's handshake has the balancer's address).
		var pending []*websocket.Conn
		for range 3 * live.PendingPerAddress {
			c, status, _ := sockDial(t, s)
			require.Equal(t, http.StatusSwitchingProtocols, status)
			pending = append(pending, c)
		}
		_, status, e := sockDial(t, s)
		require.Equal(t, http.StatusTooManyRequests, status)
		require.Equal(t, "MAX_WEBSOCKETS_PER_CALLER", e.Extensions["limit"])
		require.EqualValues(t, 3*live.PendingPerAddress, e.Extensions["max"])
		for _, c := range pending {
			_ = c.CloseNow()
		}
		// Closed, they give their places back: half of them at once (the
		// sockets below need a few).
		apitest.Eventually(t, apitest.Patience, "the pending places back", func() bool {
			var got []*websocket.Conn
			defer func() {
				for _, c := range got {
					_ = c.CloseNow()
				}
			}()
			for range 3 * live.PendingPerAddress / 2 {
				c, status, _ := sockDial(t, s)
				if status != http.StatusSwitchingProtocols {
					return false
				}
				got = append(got, c)
			}
			return true
		})
		// Initialised without a credential, sockets count as the address's.
		var open []*websocket.Conn
		for range 3 {
			open = append(open, wsDial(t, s, map[string]any{}, nil))
		}
		initAndExpectClose := func() error {
			conn, status, _ := sockDial(t, s)
			require.Equal(t, http.StatusSwitchingProtocols, status)
			ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
			defer cancel()
			require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"type": "connection_init", "payload": map[string]any{}}))
			_, _, err := conn.Read(ctx)
			return err
		}
		err := initAndExpectClose()
		require.Equal(t, websocket.StatusCode(live.CloseTryAgainLater), websocket.CloseStatus(err), "%v", err)
		require.Contains(t, err.Error(), "MAX_WEBSOCKETS_PER_CALLER")
		// A caller with a credential, from the same address, is not held
		// back by them.
		wsDial(t, s, map[string]any{"Authorization": "Bearer " + s.NewUser(t, uuid.New()).Token}, nil)

		// A closed socket gives its place back.
		require.NoError(t, open[0].Close(websocket.StatusNormalClosure, ""))
		apitest.Eventually(t, apitest.Patience, "a place once a socket closed", func() bool {
			conn, status, _ := sockDial(t, s)
			if status != http.StatusSwitchingProtocols {
				return false
			}
			ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
			defer cancel()
			require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"type": "connection_init", "payload": map[string]any{}}))
			var ack map[string]any
			return wsjson.Read(ctx, conn, &ack) == nil && ack["type"] == "connection_ack"
		})
	})

	t.Run("ACredentialCountsItsOwn", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t, apitest.Options{LiveLimits: live.Limits{SocketsPerCaller: 3}})
		a, b := s.NewUser(t, uuid.New()), s.NewUser(t, uuid.New())
		// Initialised, a's sockets are a's: the address's places are free.
		for range 3 {
			wsDial(t, s, map[string]any{"Authorization": "Bearer " + a.Token}, nil)
		}
		conn, status, _ := sockDial(t, s)
		require.Equal(t, http.StatusSwitchingProtocols, status)
		ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
		defer cancel()
		require.NoError(t, wsjson.Write(ctx, conn, map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + a.Token}}))
		_, _, err := conn.Read(ctx)
		require.Equal(t, websocket.StatusCode(live.CloseTryAgainLater), websocket.CloseStatus(err), "%v", err)
		require.Contains(t, err.Error(), "MAX_WEBSOCKETS_PER_CALLER")

		// Another caller from the same address is not held back by a.
		wsDial(t, s, map[string]any{"Authorization": "Bearer " + b.Token}, nil)
		// Nor is a credential given with the upgrade request counted as the
		// address's: a's fourth is refused at the upgrade.
		_, resp, err := websocket.Dial(ctx, wsURL(s), &websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"},
			HTTPHeader: http.Header{"Authorization": {"Bearer " + a.Token}}})
		require.Error(t, err)
		require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	})

	// A socket without a credential closes after AnonymousLifetime (4401):
	// no subscription serves it, and left open, sockets from a few
	// addresses could hold every place the process has. A socket with a
	// credential, older than it, stays.
	t.Run("AnAnonymousSocketEnds", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t, apitest.Options{LiveLimits: live.Limits{AnonymousLifetime: 200 * time.Millisecond}})
		u := s.NewUser(t, uuid.New())
		signedIn := wsDial(t, s, map[string]any{"Authorization": "Bearer " + u.Token}, nil)
		anonymous := wsDial(t, s, map[string]any{}, nil)
		ctx, cancel := context.WithTimeout(t.Context(), apitest.Patience)
		defer cancel()
		var err error
		for err == nil {
			_, _, err = anonymous.Read(ctx) // pings until the close
		}
		require.Equal(t, websocket.StatusCode(live.CloseUnauthorized), websocket.CloseStatus(err), "%v", err)
		require.Contains(t, err.Error(), "without a credential")

		require.NoError(t, wsjson.Write(ctx, signedIn, map[string]any{"id": "1", "type": "subscribe", "payload": map[string]any{"query": "{ me { id } }"}}))
		next := wsRead(t, signedIn)
		require.Equal(t, "next", next["type"], "%v", next)
	})

	t.Run("TheProcess", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t, apitest.Options{LiveLimits: live.Limits{Sockets: 4}})
		for range 4 {
			wsDial(t, s, map[string]any{"Authorization": "Bearer " + s.NewUser(t, uuid.New()).Token}, nil)
		}
		_, status, e := sockDial(t, s)
		require.Equal(t, http.StatusServiceUnavailable, status)
		require.Equal(t, "RATE_LIMITED", e.Code())
		require.Equal(t, "MAX_WEBSOCKETS", e.Extensions["limit"])
	})
}
