package db_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// TestResyncBatchesHoldWhatAShipHolds checks that the lines a live tail
// re-reads after lost notifications come in batches of at most
// MaxShipBatch lines (RobotLogBatch.lines is counted at that), in order,
// each robot's apart.
func TestResyncBatchesHoldWhatAShipHolds(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant, a, b := uuid.New(), uuid.New(), uuid.New()
	const lines = 2*db.MaxShipBatch + 7
	for _, robot := range []uuid.UUID{a, b} {
		_, err := d.ExecContext(ctx, `INSERT INTO robot_logs (tenant_id, robot_id, level, message, at)
			SELECT ?, ?, 20, 'line ' || g, now() - make_interval(secs => ? - g) FROM generate_series(1, ?) g`, tenant, robot, lines, lines)
		require.NoError(t, err)
	}
	svc := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	batches, err := db.NewLogs(db.DefaultLogConfig, nil).ChangedSince(svc, d.DB, time.Now().Add(-time.Hour))
	require.NoError(t, err)
	seen := map[uuid.UUID]int{}
	for _, batch := range batches {
		require.NotEmpty(t, batch.Lines)
		require.LessOrEqual(t, len(batch.Lines), db.MaxShipBatch)
		for _, l := range batch.Lines {
			require.Equal(t, batch.RobotID, l.RobotID)
			seen[l.RobotID]++
			require.Equal(t, fmt.Sprint("line ", seen[l.RobotID]), l.Message, "in order")
		}
	}
	require.Equal(t, map[uuid.UUID]int{a: lines, b: lines}, seen)
}
