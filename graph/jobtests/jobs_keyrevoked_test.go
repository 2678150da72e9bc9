package jobtests

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// TestAWaitingClaimOutlivesNoKey: a claim waits up to a minute, but the API
// key it was sent with may be revoked or expire meanwhile. Once it has, the
// claim leases nothing: a job queued after the revocation stays QUEUED
// (its input never reaches whoever holds the key); a claim whose key
// expires ends then, with no job.
func TestAWaitingClaimOutlivesNoKey(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	// parked waits until a claim sent now has made its first attempt and
	// waits: it read the key, tried, counted its slots, subscribed and
	// tried again (as TestJobRunAtIsHonoured counts them).
	claimCost := func(t *testing.T, r *apitest.Robot) (auth, attempt int64) {
		before := s.Statements.Load()
		s.Do(t, r.Key, `{ me { role } }`, nil).OK(t, nil)
		auth = s.Statements.Load() - before
		before = s.Statements.Load()
		require.Nil(t, r.Claim(t, 0))
		return auth, s.Statements.Load() - before - auth
	}

	t.Run("Revoked", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "r", apitest.RobotOpts{})
		var keys struct{ ApiKeys []struct{ ID string } }
		tn.Do(t, `query($r: ID!) { apiKeys(robotId: $r) { id } }`, map[string]any{"r": r.ID}, &keys)
		require.Len(t, keys.ApiKeys, 1)
		auth, attempt := claimCost(t, r)

		before := s.Statements.Load()
		claim := r.ClaimAsync(t, jqWakeWait)
		apitest.Eventually(t, 20*time.Second, "the claim to wait", func() bool { return s.Statements.Load()-before >= auth+2*attempt+1 })
		tn.Do(t, `mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }`, map[string]any{"id": keys.ApiKeys[0].ID}, nil)
		job := tn.Enqueue(t, map[string]any{"input": map[string]any{"secret": "s3cr3t"}})

		select {
		case c := <-claim:
			require.Nil(t, c.Lease, "a claim whose key was revoked while it waited leased %+v", c.Lease)
			require.Error(t, c.Err, "the woken claim is refused")
			require.True(t, strings.HasPrefix(c.Err.Error(), "UNAUTHENTICATED: this API key was revoked or has expired"), "%v", c.Err)
		case <-time.After(jqWakeWithin):
			require.FailNow(t, "the claim did not return")
		}
		require.Equal(t, "QUEUED", tn.Job(t, job.ID).Status, "the job waits for a robot with a live key")
	})

	t.Run("Expired", func(t *testing.T) {
		t.Parallel()
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "r", apitest.RobotOpts{})
		var k struct{ CreateApiKey struct{ Key string } }
		expires := time.Now().Add(3 * time.Second)
		tn.Do(t, `mutation($r: ID!, $e: Time) { createApiKey(robotId: $r, name: "short", expiresAt: $e) { key } }`,
			map[string]any{"r": r.ID, "e": expires.UTC().Format(time.RFC3339Nano)}, &k)
		r.Key = k.CreateApiKey.Key

		claim := r.ClaimAsync(t, jqWakeWait)
		apitest.Eventually(t, 30*time.Second, "the key to expire", func() bool {
			return s.Do(t, r.Key, `{ me { role } }`, nil).Errors != nil
		})
		job := tn.Enqueue(t, nil)
		select {
		case c := <-claim:
			// It ends with no job at the key's expiry; or, woken just then
			// (its timer late on a busy machine), its attempt is refused.
			if c.Err != nil {
				require.True(t, strings.HasPrefix(c.Err.Error(), "UNAUTHENTICATED: this API key was revoked or has expired"), "%v", c.Err)
			}
			require.Nil(t, c.Lease, "a claim whose key expired while it waited leased %+v", c.Lease)
		case <-time.After(jqWakeWithin):
			require.FailNow(t, "the claim did not return")
		}
		require.Equal(t, "QUEUED", tn.Job(t, job.ID).Status)
	})
}
