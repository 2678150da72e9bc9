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

	// parked waits until a claim sent now has made its first attempt and
	// waits: it read the key, tried, counted its slots, subscribed and
	// tried again (as TestJobRunAtIsHonoured counts them).
	claimCost := func(t *testing.T, s *apitest.Server, r *apitest.Robot) (auth, attempt int64) {
		before := s.Statements.Load()
		s.Do(t, r.Key, `{ me { role } }`, nil).OK(t, nil)
		auth = s.Statements.Load() - before
		before = s.Statements.Load()
		require.Nil(t, r.Claim(t, 0))
		return auth, s.Statements.Load() - before - auth
	}

	t.Run("Revoked", func(t *testing.T) {
		t.Parallel()
		// A server of its own: the wait below counts s.Statements, which
		// any other request on s (Expired's polling) would also grow,
		// letting the revocation overtake the claim's key check.
		s := apitest.New(t)
		tn := apitest.NewTenant(t, s)
		r := tn.CreateRobot(t, "r", apitest.RobotOpts{})
		var keys struct{ ApiKeys []struct{ ID string } }
		tn.Do(t, `query($r: ID!) { apiKeys(robotId: $r) { id } }`, map[string]any{"r": r.ID}, &keys)
		require.Len(t, keys.ApiKeys, 1)
		auth, attempt := claimCost(t, s, r)

		before := s.Statements.Load()
		claim := r.ClaimAsync(t, jqWakeWait)
		apitest.Eventually(t, apitest.Patience, "the claim to wait", func() bool { return s.Statements.Load()-before >= auth+2*attempt+1 })
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
		s := apitest.New(t)
		// The key must outlive the claim's key check, which a stalled
		// machine can push past any fixed life: a claim refused there
		// ("this API key has expired", authentication's refusal) never
		// waited, so the round proves nothing and is run again, in a
		// tenant of its own (its job stays behind), with a key living
		// twice as long, while that is still shorter than the claim's
		// wait.
		for life := 3 * time.Second; ; life *= 2 {
			require.Less(t, life, jqWakeWait*time.Second, "no claim reached its key check before its key expired")
			if claimOutlivesExpiry(t, s, life) {
				return
			}
		}
	})
}

// claimOutlivesExpiry sends a waiting claim with a key that expires in
// life, and reports false when the claim was refused at authentication
// (its key had expired by then), true when it ended with no job.
func claimOutlivesExpiry(t *testing.T, s *apitest.Server, life time.Duration) bool {
	t.Helper()
	tn := apitest.NewTenant(t, s)
	r := tn.CreateRobot(t, "r", apitest.RobotOpts{})
	var k struct{ CreateApiKey struct{ Key string } }
	expires := time.Now().Add(life)
	tn.Do(t, `mutation($r: ID!, $e: Time) { createApiKey(robotId: $r, name: "short", expiresAt: $e) { key } }`,
		map[string]any{"r": r.ID, "e": expires.UTC().Format(time.RFC3339Nano)}, &k)
	r.Key = k.CreateApiKey.Key

	claim := r.ClaimAsync(t, jqWakeWait)
	apitest.Eventually(t, 2*time.Minute, "the key to expire", func() bool {
		return s.Do(t, r.Key, `{ me { role } }`, nil).Errors != nil
	})
	job := tn.Enqueue(t, nil)
	select {
	case c := <-claim:
		require.Nil(t, c.Lease, "a claim whose key expired while it waited leased %+v", c.Lease)
		if c.Err != nil && strings.HasPrefix(c.Err.Error(), "UNAUTHENTICATED: this API key has expired") {
			t.Logf("the claim reached its key check after the key's %s life; again with a longer one", life)
			return false
		}
		// It ends with no job at the key's expiry; or, woken just then
		// (its timer late on a busy machine), its attempt is refused.
		if c.Err != nil {
			require.True(t, strings.HasPrefix(c.Err.Error(), "UNAUTHENTICATED: this API key was revoked or has expired"), "%v", c.Err)
		}
	case <-time.After(jqWakeWithin):
		require.FailNow(t, "the claim did not return")
	}
	require.Equal(t, "QUEUED", tn.Job(t, job.ID).Status)
	return true
}
