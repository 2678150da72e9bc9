package db_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/db"
)

// ForbiddenAddress allows public addresses only: IPv4 inside IPv6 is judged
// as IPv4 where its translation is known (mapped, well-known NAT64), and
// other IPv6 must be global unicast and not a tunnel's, since a relay or a
// local translator may lead to internal IPv4 addresses.
func TestForbiddenAddress(t *testing.T) {
	t.Parallel()
	for _, a := range []string{
		"127.0.0.1", "10.0.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "255.255.255.255",
		"168.63.129.16", "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1",
		"::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b::a00:1",
		// Local-use NAT64, IPv4-translated, IPv4-compatible, site-local.
		"64:ff9b:1::a9fe:a9fe", "64:ff9b:1::a00:1", "::ffff:0:a00:1", "::7f00:1", "::a00:1", "fec0::1",
		// 6to4 and Teredo tunnels, documentation.
		"2002:7f00:1::1", "2002:a00:1::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:db8::1",
	} {
		require.NotEmpty(t, db.ForbiddenAddress(netip.MustParseAddr(a)), "%s must be refused", a)
	}
	for _, a := range []string{"93.184.215.14", "8.8.8.8", "::ffff:8.8.8.8", "64:ff9b::808:808", "2606:4700::1111", "2a00:1450:4007:80a::200e"} {
		require.Empty(t, db.ForbiddenAddress(netip.MustParseAddr(a)), "%s is public", a)
	}
}
