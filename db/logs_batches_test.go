package db_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// The live hub re-reads shipped batches by key (robot, id range, time
// range), on its one goroutine for every tenant, so a key must cost about
// its own lines, not its robot's history:
//   - many small batches in one statement read every line the tenant kept
//     (flattened into a hash join: 40 keys of 2 lines touched 4,430
//     buffers of a 300,000-line history, and delayed another tenant's tail
//     by seconds);
//   - a batch of two lines stamped eight days apart read every line the
//     robot shipped in those days (the index walks the robot's lines by
//     time): it is not re-read, and its tails are told they missed it.
func TestBatchesReadTheirOwnLines(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant, robot := uuid.New(), uuid.New()
	now := time.Now().UTC()
	for i := range 10 {
		_, err := d.ExecContext(ctx, "SELECT fleetgraph_ensure_log_partition(?::date)", now.AddDate(0, 0, -i).Format(time.DateOnly))
		require.NoError(t, err)
	}
	const history = 300_000
	_, err := d.ExecContext(ctx, `INSERT INTO robot_logs (tenant_id, robot_id, level, message, at)
		SELECT ?, ?, 20, 'old line ' || g, now() - make_interval(secs => g * (8 * 86400.0 / ?)) FROM generate_series(1, ?) g`,
		tenant, robot, history, history)
	require.NoError(t, err)
	_, err = d.ExecContext(ctx, "ANALYZE robot_logs")
	require.NoError(t, err)

	logs := db.NewLogs(db.DefaultLogConfig, nil)
	robotCtx := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, RobotID: robot, Role: auth.RoleRobot})
	svc := auth.WithPrincipal(ctx, &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	ship := func(ats ...time.Time) db.LogBatchKey {
		t.Helper()
		in := make([]db.RobotLogInput, len(ats))
		for i := range ats {
			in[i] = db.RobotLogInput{Level: db.LogInfo, Message: "new", At: &ats[i]}
		}
		var before int64
		require.NoError(t, d.NewRaw("SELECT coalesce(max(id), 0) FROM robot_logs").Scan(ctx, &before))
		n, err := logs.Ship(robotCtx, d.DB, in)
		require.NoError(t, err)
		require.Equal(t, len(ats), n)
		k := db.LogBatchKey{Robot: robot, From: ats[0], To: ats[0]}
		require.NoError(t, d.NewRaw("SELECT min(id), max(id) FROM robot_logs WHERE id > ?", before).Scan(ctx, &k.Lo, &k.Hi))
		for _, at := range ats {
			if at.Before(k.From) {
				k.From = at
			}
			if at.After(k.To) {
				k.To = at
			}
		}
		return k
	}
	rec := &stmtLog{}
	d.DB.AddQueryHook(rec)
	statements := func() []string {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return append([]string(nil), rec.texts...)
	}
	buffers := func(stmt string) int {
		t.Helper()
		var plan string
		require.NoError(t, d.NewRaw("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+stmt).Scan(context.Background(), &plan))
		var top []struct {
			Plan struct {
				Hit  int `json:"Shared Hit Blocks"`
				Read int `json:"Shared Read Blocks"`
			}
		}
		require.NoError(t, json.Unmarshal([]byte(plan), &top))
		return top[0].Plan.Hit + top[0].Plan.Read
	}

	var keys []db.LogBatchKey
	for range 40 {
		at := time.Now().UTC().Truncate(time.Microsecond)
		keys = append(keys, ship(at, at))
	}
	before := len(statements())
	read, unread, err := logs.Batches(svc, d.DB, keys)
	require.NoError(t, err)
	require.Empty(t, unread)
	require.Len(t, read, 40)
	stmts := statements()[before:]
	require.Len(t, stmts, 1)
	require.Less(t, buffers(stmts[0]), 40*20, "buffers for 40 batches of 2 lines")

	fresh := time.Now().UTC().Truncate(time.Microsecond)
	wide := ship(fresh.AddDate(0, 0, -8).Add(time.Hour), fresh)
	narrow := ship(fresh.Add(-time.Minute), fresh)
	before = len(statements())
	read, unread, err = logs.Batches(svc, d.DB, []db.LogBatchKey{wide, narrow})
	require.NoError(t, err)
	require.Equal(t, []db.LogBatchKey{wide}, unread, "a batch spanning 8 days is not re-read")
	require.Len(t, read[narrow].Lines, 2)
	stmts = statements()[before:]
	require.Len(t, stmts, 1)
	require.Less(t, buffers(stmts[0]), 50, "buffers for a batch of 2 lines a minute apart")
	before = len(statements())
	_, unread, err = logs.Batches(svc, d.DB, []db.LogBatchKey{wide})
	require.NoError(t, err)
	require.Equal(t, []db.LogBatchKey{wide}, unread)
	require.Empty(t, statements()[before:], "no statement for wide batches alone")
}
