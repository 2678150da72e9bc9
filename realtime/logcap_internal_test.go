package realtime

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// statementCounter counts the statements a database runs.
type statementCounter struct{ n atomic.Int64 }

func (c *statementCounter) BeforeQuery(ctx context.Context, _ *bun.QueryEvent) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *statementCounter) AfterQuery(context.Context, *bun.QueryEvent) {}

// TestAHubBatchReadsBoundedLogLines: a robot shipped more lines than the
// hub reads a batch (15 batches of 1,000) and its tail wants them all. The
// hub read them with one statement per shipped batch, on its one goroutine
// that serves every tenant, and held every line of up to 1,000
// notifications at once: another tenant's updates waited ever longer. Now
// the batch costs one statement, reads at most db.MaxTailLines lines, and
// the tail is told how many it missed past them, after what it got.
func TestAHubBatchReadsBoundedLogLines(t *testing.T) {
	t.Parallel()
	const batches, perBatch = 15, db.MaxShipBatch
	d := dbtest.New(t)
	tenant := uuid.New()
	robots := db.NewRobots(db.DefaultQueueConfig)
	r, err := robots.Create(auth.WithPrincipal(t.Context(), &auth.Principal{TenantID: tenant, Role: auth.RoleService}), d.DB, db.CreateRobotInput{Name: "r"})
	require.NoError(t, err)
	logs := db.NewLogs(db.DefaultLogConfig, db.NewJobs(db.DefaultQueueConfig, db.NewWorkflows()))
	robot := auth.WithPrincipal(t.Context(), &auth.Principal{TenantID: tenant, RobotID: r.ID, Role: auth.RoleRobot})
	for b := range batches {
		in := make([]db.RobotLogInput, perBatch)
		for i := range in {
			in[i] = db.RobotLogInput{Level: db.LogInfo, Message: strconv.Itoa(b*perBatch + i)}
		}
		_, err := logs.Ship(robot, d.DB, in)
		require.NoError(t, err)
	}
	// The batches' notifications, as insertLinesSQL makes them.
	var changes []Change
	rows, err := d.QueryContext(t.Context(), `SELECT count(*), max(level), concat_ws(':', robot_id, min(id), max(id),
		floor(extract(epoch FROM min(at)) * 1000000)::bigint, ceil(extract(epoch FROM max(at)) * 1000000)::bigint)
		FROM robot_logs GROUP BY robot_id, xact ORDER BY min(id)`)
	require.NoError(t, err)
	for rows.Next() {
		c := Change{Kind: KindLog, Op: "INSERT", Tenant: tenant, Robot: &r.ID}
		require.NoError(t, rows.Scan(&c.Count, &c.Level, &c.ID))
		changes = append(changes, c)
	}
	require.NoError(t, rows.Err())
	require.Len(t, changes, batches)

	h := newHub(&Subscription{}, &StoreSource{DB: d.DB, Logs: logs}, slog.New(slog.DiscardHandler))
	user := &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser}
	tail, err := h.TailLogs(t.Context(), user, &r.ID, 0)
	require.NoError(t, err)
	t.Cleanup(tail.Close)

	statements := &statementCounter{}
	d.AddQueryHook(statements)
	h.deliver(t.Context(), changes)
	require.EqualValues(t, 1, statements.n.Load(), "one statement reads the batch's log lines")

	items := tail.Take()
	var got []string
	for _, item := range items[:len(items)-1] {
		require.Zero(t, item.Missed)
		for _, l := range item.Lines {
			got = append(got, l.Message)
		}
	}
	require.Len(t, got, db.MaxTailLines, "at most db.MaxTailLines lines are read")
	for i, m := range got {
		require.Equal(t, strconv.Itoa(i), m, "the first lines, in order, each once")
	}
	require.Equal(t, LogTailItem{Missed: batches*perBatch - db.MaxTailLines}, items[len(items)-1],
		"the tail is told, last, how many lines it missed")
}
