package db

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/fault"
)

// The key lookup limiter on a clock the test moves: a bucket empties,
// refills at its rate, takes back the token of a key that verified, and
// the table forgets full buckets and holds at most maxLookupAddresses.
func TestKeyLookupsLimiter(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	k := newKeyLookups(KeyLookupLimit{PerSecond: 1, Burst: 2}, func() time.Time { return now })

	_, err := k.take("a")
	require.NoError(t, err)
	b, err := k.take("a")
	require.NoError(t, err)
	_, err = k.take("a")
	require.True(t, fault.Has(err, fault.RateLimited), "%v", err)
	var f *fault.Error
	require.ErrorAs(t, err, &f)
	require.Equal(t, 1, f.Extra["retryAfter"])
	_, err = k.take("b")
	require.NoError(t, err, "another address")

	k.give(b) // a key that verified
	_, err = k.take("a")
	require.NoError(t, err)
	now = now.Add(time.Second)
	_, err = k.take("a")
	require.NoError(t, err, "a token earned back")

	// A bucket full again is forgotten.
	c, err := k.take("c")
	require.NoError(t, err)
	k.give(c)
	require.NotContains(t, k.cur, "c")

	// Buckets untouched for two windows (full by then) are forgotten.
	now = now.Add(2 * k.fill)
	_, _ = k.take("d")
	now = now.Add(k.fill)
	_, _ = k.take("d")
	require.NotContains(t, k.cur, "a")
	require.NotContains(t, k.prev, "a")

	// Past maxLookupAddresses, new addresses share one bucket.
	for i := len(k.cur); i < maxLookupAddresses; i++ {
		_, err := k.take(strconv.Itoa(i))
		require.NoError(t, err)
	}
	require.Len(t, k.cur, maxLookupAddresses)
	_, err = k.take("new-1")
	require.NoError(t, err)
	_, err = k.take("new-2")
	require.NoError(t, err)
	_, err = k.take("new-3")
	require.True(t, fault.Has(err, fault.RateLimited), "the shared bucket is empty: %v", err)
	require.Len(t, k.cur, maxLookupAddresses)
}
