package db

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestShare64 checks a tenant's share of a dropped partition's bytes past
// where a*n overflows int64.
func TestShare64(t *testing.T) {
	t.Parallel()
	const gb100, rows = 100 << 30, int64(100_000_000)
	require.Equal(t, int64(gb100/4), share64(gb100, rows/4, rows))
	require.Equal(t, int64(gb100), share64(gb100, rows, rows))
	require.Equal(t, int64(0), share64(gb100, 0, rows))
	require.Equal(t, int64(0), share64(5, 1, 0))
	require.Equal(t, int64(3), share64(10, 1, 3))
}
