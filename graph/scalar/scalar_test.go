package scalar_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/fault"
	"fleetgraph/graph/scalar"
)

func TestUnmarshalInt(t *testing.T) {
	t.Parallel()
	for _, v := range []any{int64(2147483647), int64(-2147483648), 0, int32(7), json.Number("2147483647"), json.Number("-2147483648"), 3.0, float32(-4)} {
		_, err := scalar.UnmarshalInt(v)
		require.NoError(t, err, "%#v", v)
		_, err = scalar.UnmarshalInt64(v)
		require.NoError(t, err, "%#v", v)
	}
	n, err := scalar.UnmarshalInt(json.Number("-2147483648"))
	require.NoError(t, err)
	require.Equal(t, -2147483648, n)
	for _, v := range []any{
		int64(2147483648), int64(-2147483649), 1 << 40, json.Number("2147483648"), json.Number("99999999999999999999"),
		json.Number("1e10"), json.Number("1.5"), json.Number("5.0"), 1.5, 2147483648.0, "5", true, nil, []any{1}, map[string]any{},
	} {
		_, err := scalar.UnmarshalInt(v)
		require.Error(t, err, "%#v", v)
		require.Equal(t, fault.BadUserInput, fault.CodeOf(err), "%#v", v)
		_, err = scalar.UnmarshalInt64(v)
		require.Equal(t, fault.BadUserInput, fault.CodeOf(err), "%#v", v)
	}
}

func TestUnmarshalTime(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"0001-01-01T00:00:00Z", "0001-01-01T01:00:00+01:00", "9999-12-31T23:59:59.999999Z", "9999-12-31T22:59:59-01:00", "2026-11-22T10:00:00Z"} {
		got, err := scalar.UnmarshalTime(s)
		require.NoError(t, err, s)
		want, _ := time.Parse(time.RFC3339Nano, s)
		require.True(t, got.Equal(want))
	}
	for _, s := range []any{
		"0000-01-01T00:00:00Z", "0000-12-31T23:59:59.999999Z", "0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01",
		"9999-12-31T23:59:59.9999991Z", "-0001-01-01T00:00:00Z", "10000-01-01T00:00:00Z", "yesterday", 5, nil,
	} {
		_, err := scalar.UnmarshalTime(s)
		require.Error(t, err, "%v", s)
		require.Equal(t, fault.BadUserInput, fault.CodeOf(err), "%v", s)
	}
}
