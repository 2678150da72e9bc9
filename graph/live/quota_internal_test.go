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
