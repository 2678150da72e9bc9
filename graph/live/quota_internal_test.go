package live

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

// Every per-address quota of the live transports counts an IPv6 /64 as one
// client: an anonymous caller's subscriptions and streams, its sockets
// waiting for connection_init and its sockets initialised without a
// credential. Keyed by the full address, one host with a /64 had no limit.
func TestQuotasKeyIPv6ByItsSlash64(t *testing.T) {
	q := NewQuota(Limits{PerPrincipal: 1, SocketsPerCaller: 1, Sockets: 100})
	from := func(ip string) context.Context { return auth.WithClientIP(context.Background(), ip) }

	release, err := q.Hold(from("2001:db8:1:2::1"))
	require.NoError(t, err)
	defer release()
	_, err = q.Hold(from("2001:db8:1:2::2"))
	require.True(t, fault.Has(err, fault.RateLimited), "another address of the /64: %v", err)
	other, err := q.Hold(from("2001:db8:1:3::1"))
	require.NoError(t, err, "another /64")
	other()

	for i := range PendingPerAddress {
		_, _, err := q.OpenSocket(pendingKey(fmt.Sprintf("2001:db8:1:2::%x", i+1)))
		require.NoError(t, err)
	}
	_, perCaller, err := q.OpenSocket(pendingKey("2001:db8:1:2::ffff"))
	require.True(t, fault.Has(err, fault.RateLimited), "pending sockets of the /64: %v", err)
	require.True(t, perCaller)

	first, _, err := q.OpenSocket(pendingKey("2001:db8:9:9::1"))
	require.NoError(t, err)
	require.NoError(t, first.Move(callerKey(nil, "2001:db8:9:9::1")))
	second, _, err := q.OpenSocket(pendingKey("2001:db8:9:9::2"))
	require.NoError(t, err)
	err = second.Move(callerKey(nil, "2001:db8:9:9::2"))
	require.True(t, fault.Has(err, fault.RateLimited), "anonymous sockets of the /64: %v", err)
}

// A socket's own results wait for its writer within SocketResultBytes,
// and all of a caller's sockets' within CallerResultBytes: past a bound a
// result is refused unless nothing else waits, so one large result always
// goes out on its own. Held bytes move with the socket to its caller.
func TestResultsWaitingForASocketAreBounded(t *testing.T) {
	q := NewQuota(Limits{Sockets: 1000})
	open := func(key string) *SocketPlace {
		t.Helper()
		p, _, err := q.OpenSocket(key)
		require.NoError(t, err)
		return p
	}
	const mib = 1 << 20
	a := open("user/a")
	require.True(t, a.HoldResult(20*mib), "alone, a result larger than the bound waits")
	require.False(t, a.HoldResult(1), "nothing more while it waits")
	a.ReleaseResult(20 * mib)
	for range 8 {
		require.True(t, a.HoldResult(mib))
	}
	require.False(t, a.HoldResult(1), "the socket's 8 MiB")
	for range 8 {
		a.ReleaseResult(mib)
	}
	require.Empty(t, q.waiting, "given back, nothing is counted")

	// The caller's sockets together: 64 MiB, whatever each holds.
	var socks []*SocketPlace
	for range 8 {
		p := open("user/b")
		require.True(t, p.HoldResult(8*mib))
		socks = append(socks, p)
	}
	late := open("user/b")
	require.False(t, late.HoldResult(1), "the caller's 64 MiB")
	require.True(t, open("user/c").HoldResult(8*mib), "another caller's sockets are not counted")
	socks[0].ReleaseResult(8 * mib)
	require.True(t, late.HoldResult(mib))

	// A pending socket's held bytes move to the caller it becomes.
	p := open(pendingKey("192.0.2.1"))
	require.True(t, p.HoldResult(mib))
	require.NoError(t, p.Move("user/d"))
	require.Equal(t, map[string]int{"user/b": 7*8*mib + mib, "user/c": 8 * mib, "user/d": mib}, q.waiting)
}
