package scheduletests

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// The schedule API's attack suite: another tenant (user or service role)
// sees and touches none of a tenant's schedules or their jobs; robots, even
// the tenant's own, can call none of the schedule operations; the scheduler
// enqueues each schedule's jobs in its own tenant only. Every refused attack
// is followed by a check, straight from the database, that nothing changed.
func TestScheduleIsolation(t *testing.T) {
	t.Parallel()
	b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
	victim := b.user
	robot, key := b.s.RobotWithKey(t, victim.Token, "victim-bot")
	sch := b.create(t, map[string]any{"name": "victim-nightly", "cronExpression": "*/10 * * * *", "robotId": robot,
		"input": map[string]any{"secret": "victim"}})
	b.advance(t, 10*time.Minute)
	var trig struct{ TriggerSchedule schJob }
	b.s.Do(t, victim.Token, `mutation($id: ID!) { triggerSchedule(id: $id) { id } }`, map[string]any{"id": sch.ID}).OK(t, &trig)
	paused := b.create(t, map[string]any{"name": "victim-paused", "cronExpression": "@hourly", "paused": true, "pauseNote": "secret note"})
	before := schSnapshot(t, b)
	secrets := []string{sch.ID, paused.ID, trig.TriggerSchedule.ID, "victim-nightly", "secret note", `"secret"`}

	noLeak := func(t *testing.T, raw []byte) {
		t.Helper()
		for _, s := range secrets {
			require.NotContains(t, string(raw), s)
		}
	}
	mutations := []string{
		`mutation($id: ID!) { updateSchedule(id: $id, input: {cronExpression: "* * * * *"}) { id } }`,
		`mutation($id: ID!) { pauseSchedule(id: $id, note: "x") { id } }`,
		`mutation($id: ID!) { resumeSchedule(id: $id) { id } }`,
		`mutation($id: ID!) { deleteSchedule(id: $id) }`,
		`mutation($id: ID!) { triggerSchedule(id: $id) { id } }`,
	}

	for _, who := range []struct {
		name  string
		token string
	}{{"OtherTenantsUser", b.s.NewUser(t, uuid.New()).Token}, {"OtherTenantsService", b.s.NewService(t, uuid.New()).Token}} {
		t.Run(who.name, func(t *testing.T) {
			for _, id := range []string{sch.ID, paused.ID} {
				for _, m := range mutations {
					res := b.s.Do(t, who.token, m, map[string]any{"id": id})
					res.Code(t, "NOT_FOUND")
					noLeak(t, res.Raw)
				}
				res := b.s.Do(t, who.token, `query($id: ID!) { schedule(id: $id) { id name } }`, map[string]any{"id": id})
				var one struct{ Schedule *struct{ ID string } }
				res.OK(t, &one)
				require.Nil(t, one.Schedule)
			}
			var list struct {
				Schedules struct {
					TotalCount int
					Edges      []any
				}
			}
			res := b.s.Do(t, who.token, `{ schedules(first: 500, filter: {nameContains: "victim"}) { totalCount edges { node { id } } } }`, nil)
			res.OK(t, &list)
			require.Zero(t, list.Schedules.TotalCount)
			require.Empty(t, list.Schedules.Edges)
			res = b.s.Do(t, who.token, `{ schedules { totalCount } jobs { totalCount edges { node { id scheduleId } } } }`, nil)
			noLeak(t, res.Raw)
			// The victim's workflow and robot cannot be scheduled from outside.
			res = b.s.Do(t, who.token, `mutation($w: ID!) { createSchedule(input: {name: "x", workflowId: $w, cronExpression: "@daily"}) { id } }`,
				map[string]any{"w": b.workflow})
			require.Equal(t, "workflowId", res.Code(t, "NOT_FOUND").Extensions["field"])
			require.Equal(t, before, schSnapshot(t, b))
		})
	}

	t.Run("RobotsCanCallNone", func(t *testing.T) {
		ops := append([]string{
			`mutation($id: ID!) { createSchedule(input: {name: "bot", workflowId: $id, cronExpression: "@daily"}) { id } }`,
			`query($id: ID!) { schedule(id: $id) { id } }`,
			`query { schedules { totalCount } }`,
		}, mutations...)
		for _, op := range ops {
			id := sch.ID
			if strings.Contains(op, "createSchedule") {
				id = b.workflow
			}
			res := b.s.Do(t, key, op, map[string]any{"id": id})
			res.Code(t, "FORBIDDEN")
			noLeak(t, res.Raw)
		}
		require.Equal(t, before, schSnapshot(t, b))
	})
	t.Run("Anonymous", func(t *testing.T) {
		for _, m := range append(mutations, `query($id: ID!) { schedule(id: $id) { id } }`) {
			b.s.Do(t, "", m, map[string]any{"id": sch.ID}).Code(t, "UNAUTHENTICATED")
		}
		require.Equal(t, before, schSnapshot(t, b))
	})
	t.Run("TheSchedulerStaysInTheTenant", func(t *testing.T) {
		other := b.s.NewUser(t, uuid.New())
		otherWF := b.s.CreateWorkflow(t, other.Token, "other-wf")
		b.s.Do(t, other.Token, `mutation($w: ID!) { createSchedule(input: {name: "victim-nightly", workflowId: $w, cronExpression: "*/10 * * * *"}) { id } }`, map[string]any{"w": otherWF}).OK(t, nil) // the same name in another tenant is fine
		b.advance(t, 10*time.Minute)
		var wrong int
		require.NoError(t, b.s.DB.NewRaw(`SELECT count(*) FROM jobs j JOIN schedules s ON s.id = j.schedule_id
			WHERE j.tenant_id <> s.tenant_id OR j.workflow_id <> s.workflow_id`).Scan(t.Context(), &wrong))
		require.Zero(t, wrong)
		var perTenant []int
		require.NoError(t, b.s.DB.NewRaw(`SELECT count(*) FROM jobs WHERE scheduled_for = '2026-06-01T10:20:00Z' GROUP BY tenant_id`).Scan(t.Context(), &perTenant))
		require.Equal(t, []int{1, 1}, perTenant)
		var job struct{ Job *struct{ ID string } }
		b.s.Do(t, other.Token, `query($id: ID!) { job(id: $id) { id } }`, map[string]any{"id": trig.TriggerSchedule.ID}).OK(t, &job)
		require.Nil(t, job.Job)
	})
}
