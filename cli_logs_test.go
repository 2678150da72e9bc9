package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/dbtest"
)

// logs cleanup drops exactly the days past the retention, a dry run drops
// nothing, and both are recorded in the cleanup history as system:cli.
func TestLogsCleanupCommand(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	// Lines 40 days and 2 days old, each in its day's partition.
	old, recent := time.Now().UTC().AddDate(0, 0, -40), time.Now().UTC().AddDate(0, 0, -2)
	for _, at := range []time.Time{old, recent} {
		_, err := d.ExecContext(ctx, "SELECT fleetgraph_ensure_log_partition(?::date)", at.Format("2006-01-02"))
		require.NoError(t, err)
		_, err = d.ExecContext(ctx, "INSERT INTO robot_logs (tenant_id, robot_id, level, message, at) VALUES (?, ?, 20, 'line', ?)", uuid.New(), uuid.New(), at)
		require.NoError(t, err)
	}
	lines := func() int {
		var n int
		require.NoError(t, d.NewRaw("SELECT count(*) FROM robot_logs").Scan(ctx, &n))
		return n
	}

	code, stdout, stderr := runCLI(t, e, "logs", "cleanup", "--retention-days", "30", "--dry-run", "--json")
	require.Equal(t, 0, code, stderr)
	var run struct {
		DryRun     bool
		Partitions []string
		Rows       int64
		Actor      string
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &run), stdout)
	require.True(t, run.DryRun)
	require.Equal(t, []string{old.Format("2006-01-02")}, run.Partitions)
	require.EqualValues(t, 1, run.Rows)
	require.Equal(t, "system:cli", run.Actor)
	require.Equal(t, 2, lines(), "a dry run drops nothing")

	code, stdout, stderr = runCLI(t, e, "logs", "cleanup", "--retention-days", "30")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "dropped 1 day(s) of logs")
	require.Equal(t, 1, lines(), "only the day past the retention is gone")
	var runs int
	require.NoError(t, d.NewRaw("SELECT count(*) FROM robot_log_cleanups WHERE actor = 'system:cli'").Scan(ctx, &runs))
	require.Equal(t, 2, runs, "both runs are in the history")

	code, _, stderr = runCLI(t, e, "logs", "cleanup", "--retention-days", "0")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "retention-days")
	code, stdout, _ = runCLI(t, e, "logs", "cleanup", "--help")
	require.Equal(t, 0, code)
	require.Empty(t, stdout)
}
