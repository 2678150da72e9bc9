package db_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// One sweep marks at most MaxOfflinePerSweep silent robots, so a tenant's
// thousands of robots going silent at once cost the leader a bounded step
// (10,000 once took one 20 s transaction, every other leader task waiting);
// the rest go at the next sweeps.
func TestMarkSilentOfflineIsBounded(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	n := db.MaxOfflinePerSweep + db.MaxOfflinePerSweep/2
	_, err := d.ExecContext(ctx, `INSERT INTO robots (tenant_id, name, status, last_heartbeat_at)
		SELECT ?, 'r' || g, 'ONLINE', now() - interval '1 day' FROM generate_series(1, ?) g`, uuid.New(), n)
	require.NoError(t, err)
	robots := db.NewRobots(db.DefaultQueueConfig)
	for _, want := range []int{db.MaxOfflinePerSweep, n - db.MaxOfflinePerSweep, 0} {
		marked, err := robots.MarkSilentOffline(ctx, d.DB)
		require.NoError(t, err)
		require.Len(t, marked, want)
		for _, r := range marked {
			require.Equal(t, db.RobotOffline, r.Status)
		}
	}
	var online int
	require.NoError(t, d.NewRaw(`SELECT count(*) FROM robots WHERE status <> 'OFFLINE'`).Scan(ctx, &online))
	require.Zero(t, online)
}
