package graph_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// TestRevokedKeyEndsItsStreams checks that a robot's SSE and multipart
// subscriptions end, as its websockets do, once its API key is revoked: the
// key is checked again while a stream lasts (here every 20 ms), and a
// revoked one ends the stream with UNAUTHENTICATED and its final message. A
// stream of a key still valid stays open through the same checks.
func TestRevokedKeyEndsItsStreams(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{KeyRecheck: 20 * time.Millisecond})
	u := s.NewUser(t, uuid.Nil)
	const sub = `subscription { jobUpdated { id } }`
	keyID := func(robot string) string {
		var out struct{ ApiKeys []struct{ ID string } }
		s.Do(t, u.Token, `query($r: ID!) { apiKeys(robotId: $r) { id } }`, map[string]any{"r": robot}).OK(t, &out)
		require.Len(t, out.ApiKeys, 1)
		return out.ApiKeys[0].ID
	}
	revoke := func(robot string) {
		s.Do(t, u.Token, `mutation($id: ID!) { revokeApiKey(id: $id) { id } }`, map[string]any{"id": keyID(robot)}).OK(t, nil)
	}

	t.Run("SSE", func(t *testing.T) {
		robot, key := s.RobotWithKey(t, u.Token, "sse")
		_, kept := s.RobotWithKey(t, u.Token, "sse-kept")
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		stays := streamRequest(t, ctx, s, kept, "text/event-stream", sub, nil)
		res := streamRequest(t, ctx, s, key, "text/event-stream", sub, nil)
		require.Equal(t, 200, res.StatusCode)
		revoke(robot)
		rest, err := io.ReadAll(res.Body) // the stream ends
		require.NoError(t, err)
		text := string(rest)
		require.Contains(t, text, "event: next\ndata: ")
		require.Contains(t, text, `"UNAUTHENTICATED"`)
		require.True(t, strings.HasSuffix(text, "event: complete\ndata: \n\n") || strings.HasSuffix(text, "event: complete\n\n"), "%q", text)
		require.NotContains(t, text, "pq:")

		// The other robot's stream went through the same checks and is
		// open: it sees the job that robot claims.
		wf := s.CreateWorkflow(t, u.Token, "wf")
		s.Do(t, u.Token, `mutation($w: ID!) { enqueueJob(input: {workflowId: $w}) { id } }`, map[string]any{"w": wf}).OK(t, nil)
		var claimed struct {
			ClaimJob struct{ Job struct{ ID string } }
		}
		s.Do(t, kept, `mutation { claimJob { leaseToken job { id } } }`, nil).OK(t, &claimed)
		r := bufio.NewReader(stays.Body)
		for {
			line, err := r.ReadString('\n')
			require.NoError(t, err)
			if strings.HasPrefix(line, "data: ") && strings.Contains(line, claimed.ClaimJob.Job.ID) {
				break
			}
		}
	})

	t.Run("Multipart", func(t *testing.T) {
		robot, key := s.RobotWithKey(t, u.Token, "multipart")
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		m := openMultipart(t, streamRequest(t, ctx, s, key, apolloAccept, sub, nil))
		revoke(robot)
		var last map[string]any
		for {
			v, err := m.next(false)
			if err != nil {
				require.ErrorIs(t, err, io.EOF, "the stream ends with its closing boundary")
				break
			}
			last = v
		}
		raw, _ := json.Marshal(last)
		require.Contains(t, string(raw), `"UNAUTHENTICATED"`, "the last part is the error")
	})
}
