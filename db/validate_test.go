package db_test

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/fault"
)

// TestTextMustBeUTF8 checks that free text which is not UTF-8 is refused
// as bad input naming its field, on every kind of path: a filter (bound as
// a parameter, which the driver used to fail with its own message), a
// column written by an insert (stored as U+FFFD before), a JSON object and
// a log line. Nothing is written.
func TestTextMustBeUTF8(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	tenant := uuid.New()
	svc := auth.WithPrincipal(t.Context(), &auth.Principal{TenantID: tenant, Role: auth.RoleService})
	robots := db.NewRobots(db.DefaultQueueConfig)
	jobs := db.NewJobs(db.DefaultQueueConfig, db.NewWorkflows())
	bad := "h\xff"

	requireRefused := func(t *testing.T, err error, field string) {
		t.Helper()
		var fe *fault.Error
		require.ErrorAs(t, err, &fe)
		require.Equal(t, fault.BadUserInput, fe.Code, "%v", err)
		require.Equal(t, field, fe.Field)
		require.Contains(t, fe.Message, "valid UTF-8")
		require.NotContains(t, err.Error(), "pq:")
	}

	_, err := robots.List(svc, d.DB, db.RobotFilter{NameContains: &bad}, db.PageArgs{})
	requireRefused(t, err, "filter.nameContains")
	_, err = db.NewWorkflows().List(svc, d.DB, &bad, db.PageArgs{})
	requireRefused(t, err, "nameContains")
	_, err = db.NewLogs(db.DefaultLogConfig, jobs).List(svc, d.DB, db.LogFilter{Contains: &bad}, db.PageArgs{})
	requireRefused(t, err, "contains")

	_, err = robots.Create(svc, d.DB, db.CreateRobotInput{Name: "r", Hostname: &bad})
	requireRefused(t, err, "hostname")
	_, err = robots.Create(svc, d.DB, db.CreateRobotInput{Name: "r", Environment: &bad})
	requireRefused(t, err, "environment")
	_, err = robots.Create(svc, d.DB, db.CreateRobotInput{Name: "r", Metadata: map[string]any{"site": bad}})
	requireRefused(t, err, "metadata")
	_, err = robots.Create(svc, d.DB, db.CreateRobotInput{Name: "r", Metadata: map[string]any{bad: "lyon"}})
	requireRefused(t, err, "metadata")
	_, err = robots.Create(svc, d.DB, db.CreateRobotInput{Name: bad})
	requireRefused(t, err, "name")

	r, err := robots.Create(svc, d.DB, db.CreateRobotInput{Name: "r"})
	require.NoError(t, err)
	_, err = robots.Update(svc, d.DB, r.ID, db.UpdateRobotInput{Hostname: &bad})
	requireRefused(t, err, "hostname")
	asRobot := auth.WithPrincipal(t.Context(), &auth.Principal{RobotID: r.ID, TenantID: tenant, Role: auth.RoleRobot})
	_, err = db.NewLogs(db.DefaultLogConfig, jobs).Ship(asRobot, d.DB, []db.RobotLogInput{{Level: db.LogInfo, Message: bad}})
	requireRefused(t, err, "entries[0].message")
	_, err = db.NewLogs(db.DefaultLogConfig, jobs).Ship(asRobot, d.DB, []db.RobotLogInput{{Level: db.LogInfo, Message: "ok", Fields: map[string]any{"k": bad}}})
	requireRefused(t, err, "entries[0].fields")

	var stored int
	require.NoError(t, d.NewRaw("SELECT (SELECT count(*) FROM robots WHERE hostname <> '' OR environment <> '' OR metadata <> '{}') + (SELECT count(*) FROM robot_logs)").
		Scan(t.Context(), &stored))
	require.Zero(t, stored, "nothing was written")
}
