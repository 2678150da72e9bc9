package main

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMain runs the -floor writer when the test binary is started as one:
// runFloor starts its writer as os.Executable, which in a test is this
// binary.
func TestMain(m *testing.M) {
	if slices.Contains(os.Args[1:], "-floor-writer") {
		main()
		return
	}
	os.Exit(m.Run())
}

// TestFloor runs a small -floor: every frame the writer wrote is read, and
// the report adds up.
func TestFloor(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	o := options{subscribers: 40, rate: 20, duration: 300 * time.Millisecond, dialers: 8, jsonOut: true}
	require.NoError(t, runFloor(t.Context(), o, 250, &out))
	var res floorResult
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	require.Equal(t, 40, res.Subscribers)
	require.Equal(t, 250, res.FrameBytes)
	require.Positive(t, res.Rounds)
	require.Equal(t, res.Rounds*40, res.Writes)
	require.EqualValues(t, res.Writes, res.Received)
	require.Positive(t, res.CPUPerWriteMicros)
	require.LessOrEqual(t, res.RoundP50Millis, res.RoundMaxMillis)
}

// TestFloorFrame: a frame is one unmasked text frame of the size asked
// for, holding JSON.
func TestFloorFrame(t *testing.T) {
	t.Parallel()
	for _, n := range []int{200, 256, 1000, 60000} {
		f := floorFrame(n)
		require.Len(t, f, n)
		require.Equal(t, byte(0x81), f[0])
		require.Equal(t, byte(126), f[1])
		require.Equal(t, n-4, int(f[2])<<8|int(f[3]))
		require.True(t, json.Valid(f[4:]))
	}
}

// TestFloorRefusesFrameSizes: a frame size outside 200..60000 bytes is
// refused with the flag's range before anything starts.
func TestFloorRefusesFrameSizes(t *testing.T) {
	t.Parallel()
	for _, n := range []string{"199", "60001", "-1"} {
		var out, errOut bytes.Buffer
		err := run(t.Context(), []string{"-floor", "-floor-frame", n, "-subscribers", "10"}, &out, &errOut)
		require.EqualError(t, err, "-floor-frame is 200 to 60000 bytes", n)
		require.Empty(t, out.String())
	}
}
