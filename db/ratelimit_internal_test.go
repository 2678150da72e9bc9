package db

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/fault"
)

// The token buckets on a clock the test moves (as the key lookup limiter
// uses them, a key is an address): an address is allowed
// lookups until its refused keys have spent its tokens, then refused until
// they refill at its rate; lookups allowed at once may run it into debt;
// only charged addresses have buckets, forgotten once full, and at most
// maxBucketKeys in a window.
func TestTokenBuckets(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	k := newKeyLookups(RateLimit{PerSecond: 1, Burst: 2}, func() time.Time { return now })

	for range 5 {
		require.NoError(t, k.allow("a"), "allowed, never charged: valid keys, failed reads")
	}
	require.Empty(t, k.cur, "nothing charged, nothing held")
	k.spend("a")
	require.NoError(t, k.allow("a"))
	k.spend("a")
	err := k.allow("a")
	require.True(t, fault.Has(err, fault.RateLimited), "%v", err)
	var f *fault.Error
	require.ErrorAs(t, err, &f)
	require.Equal(t, 1, f.Extra["retryAfter"])
	require.NoError(t, k.allow("b"), "another address")

	now = now.Add(time.Second)
	require.NoError(t, k.allow("a"), "a token earned back")
	// Two refusals in flight at once run the address into debt.
	k.spend("a")
	k.spend("a")
	now = now.Add(time.Second)
	require.Error(t, k.allow("a"), "still in debt")
	now = now.Add(time.Second)
	require.NoError(t, k.allow("a"))

	// Buckets untouched for two windows (full by then) are forgotten.
	now = now.Add(2 * k.fill)
	k.spend("d")
	now = now.Add(k.fill)
	k.spend("d")
	require.NotContains(t, k.cur, "a")
	require.NotContains(t, k.prev, "a")

	// Past maxBucketKeys, new addresses share one bucket.
	for i := len(k.cur); i < maxBucketKeys; i++ {
		k.spend(strconv.Itoa(i))
	}
	require.Len(t, k.cur, maxBucketKeys)
	k.spend("new-1")
	require.NoError(t, k.allow("new-2"))
	k.spend("new-2")
	require.True(t, fault.Has(k.allow("new-3"), fault.RateLimited), "the shared bucket is spent")
	require.Len(t, k.cur, maxBucketKeys)
}
