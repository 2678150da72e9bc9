package scalar_test

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/google/uuid"
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
	// Times are kept to the microsecond, as PostgreSQL stores them.
	got, err := scalar.UnmarshalTime("2030-01-01T00:00:00.0000004Z")
	require.NoError(t, err)
	require.Equal(t, time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), got.UTC())
	got, err = scalar.UnmarshalTime("2030-01-01T00:00:00.1234567+02:00")
	require.NoError(t, err)
	require.Equal(t, 123456000, got.Nanosecond())
	for _, s := range []any{
		"0000-01-01T00:00:00Z", "0000-12-31T23:59:59.999999Z", "0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01",
		"9999-12-31T23:59:59.9999991Z", "-0001-01-01T00:00:00Z", "10000-01-01T00:00:00Z", "yesterday", 5, nil,
	} {
		_, err := scalar.UnmarshalTime(s)
		require.Error(t, err, "%v", s)
		require.Equal(t, fault.BadUserInput, fault.CodeOf(err), "%v", s)
	}
}

// The marshallers write, into a response buffer or any other writer, byte
// for byte what gqlgen's and strconv's functions wrote before them; those
// that read their value in place (StringAt, IDAt, TimeAt) too.
func TestMarshallersWriteAsBefore(t *testing.T) {
	type pair struct {
		got  graphql.Marshaler
		want string
	}
	quoted := func(s string) string {
		var b bytes.Buffer
		graphql.MarshalString(s).MarshalGQL(&b)
		return b.String()
	}
	var cases []pair
	for _, s := range []string{"", "plain", `quote " and \ backslash`, "tab\tcr\rnl\n", "\x00\x01\x1f\x7f", "é ü 日本 🚀", "bad \xff\xfe utf-8", strings.Repeat("long ", 2000)} {
		cases = append(cases, pair{scalar.MarshalString(s), quoted(s)}, pair{scalar.StringAt(&s), quoted(s)})
	}
	for _, id := range []uuid.UUID{uuid.Nil, uuid.MustParse("0193a5b8-7c1d-7e2f-8a9b-0c1d2e3f4a5b"), uuid.Max} {
		cases = append(cases, pair{scalar.MarshalID(id), strconv.Quote(id.String())}, pair{scalar.IDAt(&id), strconv.Quote(id.String())})
	}
	for _, n := range []int64{0, 1, -1, 255, 256, math.MaxInt32, math.MinInt32, math.MaxInt64, math.MinInt64} {
		cases = append(cases, pair{scalar.MarshalInt64(n), strconv.FormatInt(n, 10)}, pair{scalar.MarshalSeqID(n), strconv.Quote(strconv.FormatInt(n, 10))})
		cases = append(cases, pair{scalar.MarshalInt(int(n)), strconv.Itoa(int(n))})
	}
	zone := time.FixedZone("X", -5*3600)
	for _, tm := range []time.Time{{}, time.Date(2026, 12, 6, 15, 4, 5, 123456789, time.UTC), time.Date(2026, 1, 2, 3, 4, 5, 0, zone), time.Date(294276, 12, 31, 23, 59, 59, 999999000, time.UTC)} {
		cases = append(cases, pair{scalar.MarshalTime(tm), strconv.Quote(tm.UTC().Format(time.RFC3339Nano))}, pair{scalar.TimeAt(&tm), strconv.Quote(tm.UTC().Format(time.RFC3339Nano))})
	}
	for _, c := range cases {
		var buf bytes.Buffer
		buf.WriteString("prefix ")
		c.got.MarshalGQL(&buf)
		if got := strings.TrimPrefix(buf.String(), "prefix "); got != c.want {
			t.Errorf("into a buffer: got %q, want %q", got, c.want)
		}
		var sb strings.Builder // not a *bytes.Buffer: the other path
		c.got.MarshalGQL(&sb)
		if sb.String() != c.want {
			t.Errorf("into a writer: got %q, want %q", sb.String(), c.want)
		}
	}
}
