package graph_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/apitest"
	"fleetgraph/db"
	"fleetgraph/realtime"
)

// kcLookups counts the statements that read api_keys.
type kcLookups struct{ n *atomic.Int64 }

func (h kcLookups) BeforeQuery(ctx context.Context, _ *bun.QueryEvent) context.Context { return ctx }

func (h kcLookups) AfterQuery(_ context.Context, e *bun.QueryEvent) {
	if strings.HasPrefix(e.Query, "SELECT") && strings.Contains(e.Query, `"api_keys"`) {
		h.n.Add(1)
	}
}

// kcReplicas is two replicas (A and B) of one database, each with its own
// pool, listener and key cache (an hour's TTL: only invalidations can make
// them forget), a robot and its key.
type kcReplicas struct {
	a, b     *apitest.Server
	svc      apitest.User
	robotID  string
	key, id  string
	bLookups atomic.Int64
}

func kcSetup(t *testing.T) *kcReplicas {
	t.Helper()
	r := &kcReplicas{}
	r.a = apitest.New(t, apitest.Options{KeyCacheTTL: time.Hour})
	r.b = apitest.New(t, apitest.Options{KeyCacheTTL: time.Hour, ReplicaOf: r.a})
	r.b.Control.AddQueryHook(kcLookups{&r.bLookups}) // where key checks read
	r.svc = r.a.NewService(t, uuid.New())
	var robot struct{ CreateRobot struct{ ID string } }
	r.a.Do(t, r.svc.Token, `mutation { createRobot(input: {name: "cached", hostname: "h1"}) { id } }`, nil).OK(t, &robot)
	r.robotID = robot.CreateRobot.ID
	var key struct {
		CreateApiKey struct {
			Key    string
			ApiKey struct{ ID string }
		}
	}
	r.a.Do(t, r.svc.Token, `mutation($r: ID!) { createApiKey(robotId: $r, name: "k") { key apiKey { id } } }`,
		map[string]any{"r": r.robotID}).OK(t, &key)
	r.key, r.id = key.CreateApiKey.Key, key.CreateApiKey.ApiKey.ID
	return r
}

func kcAccepted(t *testing.T, s *apitest.Server, key string) {
	t.Helper()
	s.Do(t, key, `{ __typename }`, nil).OK(t, nil)
}

func kcRefused(t *testing.T, s *apitest.Server, key string) {
	t.Helper()
	s.Do(t, key, `{ __typename }`, nil).Code(t, "UNAUTHENTICATED")
}

// kcWait waits, with a deadline, for ch to close.
func kcWait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// kcListenerLive waits until s's listener delivers again.
func kcListenerLive(t *testing.T, s *apitest.Server) {
	t.Helper()
	for {
		changed := s.App.Listener.Changed()
		if _, ok := s.App.Listener.Trusted(); ok {
			return
		}
		kcWait(t, changed, "the listener to come back")
	}
}

func TestAPIKeyCache(t *testing.T) {
	t.Parallel()

	t.Run("RepeatedRequestDoesNoLookup", func(t *testing.T) {
		t.Parallel()
		r := kcSetup(t)
		kcListenerLive(t, r.b)
		kcAccepted(t, r.b, r.key)
		require.Equal(t, int64(1), r.bLookups.Load())
		for range 5 {
			kcAccepted(t, r.b, r.key)
		}
		require.Equal(t, int64(1), r.bLookups.Load(), "a cached key is not read again")
	})

	t.Run("RevokeOnARefusesOnB", func(t *testing.T) {
		t.Parallel()
		r := kcSetup(t)
		kcListenerLive(t, r.b)
		kcAccepted(t, r.b, r.key)
		kcAccepted(t, r.a, r.key)
		evicted := r.b.App.Resolver.APIKeyStore.Cache.Invalidated()
		r.a.Do(t, r.svc.Token, `mutation($id: ID!) { revokeApiKey(id: $id) { id } }`, map[string]any{"id": r.id}).OK(t, nil)
		kcRefused(t, r.a, r.key) // A forgot it in the revoking request
		kcWait(t, evicted, "B's cache to hear of the revocation")
		kcRefused(t, r.b, r.key)
	})

	t.Run("RobotDeletedOnARefusesOnB", func(t *testing.T) {
		t.Parallel()
		r := kcSetup(t)
		kcListenerLive(t, r.b)
		kcAccepted(t, r.b, r.key)
		evicted := r.b.App.Resolver.APIKeyStore.Cache.Invalidated()
		_, err := r.a.DB.ExecContext(t.Context(), `DELETE FROM robots WHERE id = ?`, r.robotID)
		require.NoError(t, err)
		kcWait(t, evicted, "B's cache to hear of the deletion")
		kcRefused(t, r.b, r.key)
	})

	t.Run("ExpiryChangeOnARefusesOnB", func(t *testing.T) {
		t.Parallel()
		r := kcSetup(t)
		kcListenerLive(t, r.b)
		kcAccepted(t, r.b, r.key)
		evicted := r.b.App.Resolver.APIKeyStore.Cache.Invalidated()
		_, err := r.a.DB.ExecContext(t.Context(), `UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = ?`, r.id)
		require.NoError(t, err)
		kcWait(t, evicted, "B's cache to hear of the expiry")
		kcRefused(t, r.b, r.key)
	})

	t.Run("ListenerDownIsNotTrusted", func(t *testing.T) {
		t.Parallel()
		r := kcSetup(t)
		kcListenerLive(t, r.b)
		kcAccepted(t, r.b, r.key)
		// B's pool keeps a few connections open, so that its reads below
		// need no new one while the database refuses them (its background
		// work may be holding one at that moment).
		var warm []bun.Conn
		for range 4 {
			c, err := r.b.DB.DB.Conn(t.Context())
			require.NoError(t, err)
			warm = append(warm, c)
		}
		for _, c := range warm {
			require.NoError(t, c.Close())
		}
		// In one session: no new connections to the database, so that the
		// listeners cannot come back; both replicas' listeners end (the
		// call waits until they have exited); the key is revoked. B cannot
		// hear of it: nothing of it LISTENs when the revocation commits.
		conn, err := r.a.DB.Conn(t.Context())
		require.NoError(t, err)
		defer conn.Close()
		// ALTER DATABASE runs from another database of the same server.
		admin, err := db.Open(t.Context(), strings.Replace(r.a.DB.DSN, r.a.DB.Name, "postgres", 1))
		require.NoError(t, err)
		t.Cleanup(func() { _ = admin.Close() })
		allow := func(ok bool) {
			_, err := admin.ExecContext(context.WithoutCancel(t.Context()), fmt.Sprintf("ALTER DATABASE %s ALLOW_CONNECTIONS %t", r.a.DB.Name, ok))
			require.NoError(t, err)
		}
		allow(false)
		t.Cleanup(func() { allow(true) })
		var terminated bool
		require.NoError(t, conn.QueryRowContext(t.Context(), `SELECT coalesce(bool_and(pg_terminate_backend(pid, 10000)), false) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = ? AND pid <> pg_backend_pid()`,
			realtime.ListenerApplicationName).Scan(&terminated))
		require.True(t, terminated)
		_, err = conn.ExecContext(t.Context(), `UPDATE api_keys SET revoked_at = now(), revoked_by = 'test' WHERE id = ?`, r.id)
		require.NoError(t, err)
		// Once B has seen its connection drop, it reads the key (over a
		// pooled connection still open) instead of trusting its cache.
		for {
			changed := r.b.App.Listener.Changed()
			if _, ok := r.b.App.Listener.Trusted(); !ok {
				break
			}
			kcWait(t, changed, "B's listener to notice the drop")
		}
		kcRefused(t, r.b, r.key)
		allow(true)
		// Back and resubscribed, B does not trust what it cached before.
		kcListenerLive(t, r.b)
		kcRefused(t, r.b, r.key)
	})
}
