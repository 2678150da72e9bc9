package graph

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
)

// Anonymous callers take fair turns by auth.AddressKey: an IPv6 /64 is one
// caller, as an IPv4 address and its IPv4-mapped form are.
func TestTurnCallerKeysIPv6ByItsSlash64(t *testing.T) {
	from := func(ip string) turnOwner { return turnCaller(auth.WithClientIP(context.Background(), ip)) }
	require.Equal(t, from("2001:db8:1:2::1"), from("2001:db8:1:2:ffff::9"))
	require.NotEqual(t, from("2001:db8:1:2::1"), from("2001:db8:1:3::1"))
	require.Equal(t, from("203.0.113.5"), from("::ffff:203.0.113.5"))
}
