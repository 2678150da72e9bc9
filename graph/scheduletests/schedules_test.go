package scheduletests

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/app"
	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/maintenance"
)

// The scheduler's tests step the maintenance runner through simulated days
// with a manual clock: no test waits for a tick.

// schBundle is a server whose maintenance runner the test steps, a user of
// its tenant, and a workflow to schedule.
type schBundle struct {
	s        *apitest.Server
	clock    *maintenance.ManualClock
	user     apitest.User
	workflow string
}

func schSetup(t *testing.T, start time.Time) *schBundle {
	t.Helper()
	clock := maintenance.NewManualClock(start)
	s := apitest.New(t, apitest.Options{Clock: clock})
	user := s.NewUser(t, uuid.New())
	return &schBundle{s: s, clock: clock, user: user, workflow: s.CreateWorkflow(t, user.Token, "nightly")}
}

// schSchedule is a schedule as the API shows it.
type schSchedule struct {
	ID, Name, CronExpression, TimeZone, OverlapPolicy, CreatedBy string
	Paused                                                       bool
	PauseNote, PausedBy                                          *string
	NextRuns                                                     []time.Time
	LastFiredAt, BufferedTickAt, LastMissedAt, LastSkippedAt     *time.Time
	MissedTicks, SkippedTicks                                    int
	LastError                                                    *string
	RecentJobs                                                   []schJob
}

type schJob struct {
	ID, Status, CreatedBy string
	ScheduleID            *string
	ScheduledFor          *time.Time
	RunAfter              time.Time
}

const schFields = `id name cronExpression timeZone overlapPolicy createdBy paused pauseNote pausedBy nextRuns(count: 3)
	lastFiredAt bufferedTickAt lastMissedAt lastSkippedAt missedTicks skippedTicks lastError
	recentJobs(first: 100) { id status createdBy scheduleId scheduledFor runAfter }`

// create makes a schedule of the bundle's workflow from input's fields.
func (b *schBundle) create(t *testing.T, input map[string]any) schSchedule {
	t.Helper()
	in := map[string]any{"name": "s-" + uuid.NewString()[:8], "workflowId": b.workflow}
	for k, v := range input {
		in[k] = v
	}
	var out struct{ CreateSchedule schSchedule }
	b.s.Do(t, b.user.Token, `mutation($in: CreateScheduleInput!) { createSchedule(input: $in) { `+schFields+` } }`, map[string]any{"in": in}).OK(t, &out)
	return out.CreateSchedule
}

func (b *schBundle) get(t *testing.T, id string) schSchedule {
	t.Helper()
	var out struct{ Schedule *schSchedule }
	b.s.Do(t, b.user.Token, `query($id: ID!) { schedule(id: $id) { `+schFields+` } }`, map[string]any{"id": id}).OK(t, &out)
	require.NotNil(t, out.Schedule)
	return *out.Schedule
}

// step runs the maintenance runner once, at the clock's time.
func (b *schBundle) step(t *testing.T) {
	t.Helper()
	leading, err := b.s.App.Maintenance.Step(t.Context())
	require.NoError(t, err)
	require.True(t, leading)
}

// advance moves the clock by d and steps the runner.
func (b *schBundle) advance(t *testing.T, d time.Duration) {
	t.Helper()
	b.clock.Advance(d)
	b.step(t)
}

// schRun claims the job want as the robot with key and starts it, and
// returns the variables ($j, $l) its fenced mutations take.
func schRun(t *testing.T, s *apitest.Server, key, want string) map[string]any {
	t.Helper()
	var claimed struct {
		ClaimJob *struct {
			LeaseToken string
			Job        struct{ ID string }
		}
	}
	s.Do(t, key, `mutation { claimJob { leaseToken job { id } } }`, nil).OK(t, &claimed)
	require.NotNil(t, claimed.ClaimJob, "the robot found no job to claim")
	require.Equal(t, want, claimed.ClaimJob.Job.ID)
	lease := map[string]any{"j": want, "l": claimed.ClaimJob.LeaseToken}
	var started struct{ StartJob struct{ Status string } }
	s.Do(t, key, `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { status } }`, lease).OK(t, &started)
	require.Equal(t, "RUNNING", started.StartJob.Status)
	return lease
}

// ticks returns the scheduledFor of every job of the schedule, in order,
// straight from the database, with how many jobs each tick has.
func schTicks(t *testing.T, s *apitest.Server, scheduleID string) ([]time.Time, map[time.Time]int) {
	t.Helper()
	var rows []time.Time
	require.NoError(t, s.DB.NewRaw("SELECT scheduled_for FROM jobs WHERE schedule_id = ? ORDER BY scheduled_for", scheduleID).Scan(t.Context(), &rows))
	per := map[time.Time]int{}
	for i, r := range rows {
		rows[i] = r.UTC()
		per[rows[i]]++
	}
	return rows, per
}

// everyMinute lists the minutes in (from, to].
func everyMinute(from, to time.Time) []time.Time {
	var out []time.Time
	for m := from.Truncate(time.Minute).Add(time.Minute); !m.After(to); m = m.Add(time.Minute) {
		out = append(out, m)
	}
	return out
}

func utcTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

func TestScheduler(t *testing.T) {
	t.Parallel()

	// Three days of a minutely schedule (a week once: the same claim for
	// less of the package's time under go test's ten-minute limit).
	t.Run("EveryMinuteForThreeDaysOneJobPerTick", func(t *testing.T) {
		t.Parallel()
		start := utcTime("2026-06-01T00:00:30Z")
		b := schSetup(t, start)
		sch := b.create(t, map[string]any{"cronExpression": "* * * * *"})
		require.Equal(t, []time.Time{utcTime("2026-06-01T00:01:00Z"), utcTime("2026-06-01T00:02:00Z"), utcTime("2026-06-01T00:03:00Z")}, sch.NextRuns)
		// The runner steps at uneven intervals, from a second to 45
		// minutes (within the default catch-up window of an hour).
		end := start.Add(3 * 24 * time.Hour)
		rng := rand.New(rand.NewPCG(9, 9))
		for b.clock.Now().Before(end) {
			d := time.Second + time.Duration(rng.Int64N(int64(45*time.Minute)))
			next := b.clock.Now().Add(d)
			if next.After(end) {
				next = end
			}
			b.clock.Set(next)
			b.step(t)
		}
		b.step(t) // a second round at the same time fires nothing more
		ticks, per := schTicks(t, b.s, sch.ID)
		want := everyMinute(start, end)
		require.Equal(t, 3*24*60, len(want))
		require.Equal(t, len(want), len(ticks), "one job per tick")
		require.Equal(t, want, ticks)
		require.Equal(t, len(want), len(per))
		var actors []string
		require.NoError(t, b.s.DB.NewRaw("SELECT DISTINCT created_by FROM jobs WHERE schedule_id = ?", sch.ID).Scan(t.Context(), &actors))
		require.Equal(t, []string{"system:scheduler"}, actors, "the scheduler enqueues as system:scheduler")
		got := b.get(t, sch.ID)
		require.Zero(t, got.MissedTicks)
		require.Equal(t, end.Truncate(time.Minute), got.LastFiredAt.UTC())
		require.Len(t, got.RecentJobs, 100)
		require.Equal(t, "system:scheduler", got.RecentJobs[0].CreatedBy)
		require.Equal(t, sch.ID, *got.RecentJobs[0].ScheduleID)
		require.Equal(t, end.Truncate(time.Minute), got.RecentJobs[0].ScheduledFor.UTC(), "newest tick first")
	})

	t.Run("DaylightSaving", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name, zone, expr, from, to string
			day                        string // the transition day
			want                       []string
		}{
			// 02:30 does not exist on 29 March in Paris: once, at 03:00 CEST.
			{"ParisSpring", "Europe/Paris", "30 2 * * *", "2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z", "2026-03-29",
				[]string{"2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"}},
			// 02:30 happens twice on 25 October in Paris: once, the first time.
			{"ParisFall", "Europe/Paris", "30 2 * * *", "2026-10-23T12:00:00Z", "2026-10-27T12:00:00Z", "2026-10-25",
				[]string{"2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z", "2026-10-27T01:30:00Z"}},
			// 02:15 does not exist on 8 March in New York: once, at 03:00 EDT.
			{"NewYorkSpring", "America/New_York", "15 2 * * *", "2026-03-06T12:00:00Z", "2026-03-09T12:00:00Z", "2026-03-08",
				[]string{"2026-03-07T07:15:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:15:00Z"}},
			// 01:30 happens twice on 1 November in New York: once, at 01:30 EDT.
			{"NewYorkFall", "America/New_York", "30 1 * * *", "2026-10-30T12:00:00Z", "2026-11-02T12:00:00Z", "2026-11-01",
				[]string{"2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				loc, err := time.LoadLocation(tc.zone)
				require.NoError(t, err)
				day, err := time.ParseInLocation(time.DateOnly, tc.day, loc)
				require.NoError(t, err)
				next := time.Date(day.Year(), day.Month(), day.Day()+1, 0, 0, 0, 0, loc)

				b := schSetup(t, utcTime(tc.from))
				sch := b.create(t, map[string]any{"cronExpression": tc.expr, "timeZone": tc.zone})
				// The transition day again, every minute, from an hour
				// before it starts: the count of its jobs is the count of the
				// local day's distinct instants.
				var minutely schSchedule
				for b.clock.Now().Before(utcTime(tc.to)) {
					if minutely.ID == "" && !b.clock.Now().Before(day.Add(-time.Hour)) {
						minutely = b.create(t, map[string]any{"cronExpression": "* * * * *", "timeZone": tc.zone})
					}
					b.advance(t, 20*time.Minute)
				}
				ticks, _ := schTicks(t, b.s, sch.ID)
				var want []time.Time
				for _, w := range tc.want {
					want = append(want, utcTime(w))
				}
				require.Equal(t, want, ticks)

				var n int
				require.NoError(t, b.s.DB.NewRaw("SELECT count(*) FROM jobs WHERE schedule_id = ? AND scheduled_for >= ? AND scheduled_for < ?",
					minutely.ID, day, next).Scan(t.Context(), &n))
				hours := int(next.Sub(day).Hours()) // 23 on spring days, 25 on fall days
				require.Contains(t, []int{23, 25}, hours)
				require.Equal(t, min(hours, 24)*60, n, "a skipped hour's minutes fire once at the jump; a repeated hour fires once")
			})
		}
	})

	t.Run("ResumingAScheduleThatEndedIsRefused", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
		sch := b.create(t, map[string]any{"cronExpression": "*/10 * * * *", "endAt": "2026-06-01T11:00:00Z"})
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { pauseSchedule(id: $id) { id } }`, map[string]any{"id": sch.ID}).OK(t, nil)
		b.clock.Set(utcTime("2026-06-01T12:00:00Z"))
		e := b.s.Do(t, b.user.Token, `mutation($id: ID!) { resumeSchedule(id: $id) { id } }`, map[string]any{"id": sch.ID}).Code(t, "CONFLICT")
		require.Equal(t, "SCHEDULE_ENDED", e.Extensions["reason"])
		require.Equal(t, "endAt", e.Extensions["field"])
		require.True(t, b.get(t, sch.ID).Paused, "still paused")

		// Moving its end first lets it resume.
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { updateSchedule(id: $id, input: {unset: [END_AT]}) { id } }`, map[string]any{"id": sch.ID}).OK(t, nil)
		var res struct{ ResumeSchedule schSchedule }
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { resumeSchedule(id: $id) { `+schFields+` } }`, map[string]any{"id": sch.ID}).OK(t, &res)
		require.Equal(t, utcTime("2026-06-01T12:10:00Z"), res.ResumeSchedule.NextRuns[0])
	})

	t.Run("PauseAndResume", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
		sch := b.create(t, map[string]any{"cronExpression": "*/10 * * * *"})
		b.advance(t, 10*time.Minute)
		var out struct{ PauseSchedule schSchedule }
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { pauseSchedule(id: $id, note: "month-end freeze") { `+schFields+` } }`, map[string]any{"id": sch.ID}).OK(t, &out)
		require.True(t, out.PauseSchedule.Paused)
		require.Equal(t, "month-end freeze", *out.PauseSchedule.PauseNote)
		require.Equal(t, "user:"+b.user.ID.String(), *out.PauseSchedule.PausedBy)
		require.Empty(t, out.PauseSchedule.NextRuns)
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { pauseSchedule(id: $id) { id } }`, map[string]any{"id": sch.ID}).Code(t, "CONFLICT")
		for range 12 {
			b.advance(t, 10*time.Minute)
		}
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{utcTime("2026-06-01T10:10:00Z")}, ticks, "no job while paused")

		var res struct{ ResumeSchedule schSchedule }
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { resumeSchedule(id: $id) { `+schFields+` } }`, map[string]any{"id": sch.ID}).OK(t, &res)
		require.False(t, res.ResumeSchedule.Paused)
		require.Nil(t, res.ResumeSchedule.PauseNote)
		require.Equal(t, utcTime("2026-06-01T12:20:00Z"), res.ResumeSchedule.NextRuns[0])
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { resumeSchedule(id: $id) { id } }`, map[string]any{"id": sch.ID}).Code(t, "CONFLICT")
		b.advance(t, 10*time.Minute)
		b.advance(t, 10*time.Minute)
		ticks, _ = schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{utcTime("2026-06-01T10:10:00Z"), utcTime("2026-06-01T12:20:00Z"), utcTime("2026-06-01T12:30:00Z")}, ticks,
			"the paused ticks are not caught up")
		got := b.get(t, sch.ID)
		require.Zero(t, got.MissedTicks)
		require.Zero(t, got.SkippedTicks)
	})

	t.Run("TriggerRunsNow", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
		sch := b.create(t, map[string]any{"cronExpression": "@daily", "overlapPolicy": "SKIP", "paused": true})
		var out struct{ TriggerSchedule schJob }
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { triggerSchedule(id: $id) { id status createdBy scheduleId scheduledFor runAfter } }`, map[string]any{"id": sch.ID}).OK(t, &out)
		require.Equal(t, "QUEUED", out.TriggerSchedule.Status)
		require.Equal(t, "user:"+b.user.ID.String(), out.TriggerSchedule.CreatedBy)
		require.Equal(t, sch.ID, *out.TriggerSchedule.ScheduleID)
		require.Equal(t, b.clock.Now(), out.TriggerSchedule.ScheduledFor.UTC())
		require.Equal(t, b.clock.Now(), b.get(t, sch.ID).LastFiredAt.UTC())
	})

	// A job triggerSchedule enqueued is the schedule's live job for its
	// overlap policy: SKIP skips the next tick while it is queued,
	// BUFFER_ONE holds that tick back until it finishes.
	t.Run("ATriggeredJobIsTheLiveJobOfTheOverlapPolicy", func(t *testing.T) {
		t.Parallel()
		for policy, skipped := range map[string]int{"SKIP": 1, "BUFFER_ONE": 0} {
			t.Run(policy, func(t *testing.T) {
				t.Parallel()
				b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
				sch := b.create(t, map[string]any{"cronExpression": "*/10 * * * *", "overlapPolicy": policy})
				var out struct{ TriggerSchedule schJob }
				b.s.Do(t, b.user.Token, `mutation($id: ID!) { triggerSchedule(id: $id) { id } }`, map[string]any{"id": sch.ID}).OK(t, &out)
				b.advance(t, 10*time.Minute)
				ticks, _ := schTicks(t, b.s, sch.ID)
				require.Equal(t, []time.Time{utcTime("2026-06-01T10:00:05Z")}, ticks, "10:10 did not fire while the triggered job was queued")
				got := b.get(t, sch.ID)
				require.Equal(t, skipped, got.SkippedTicks)
				if policy == "BUFFER_ONE" {
					require.Equal(t, utcTime("2026-06-01T10:10:00Z"), got.BufferedTickAt.UTC())
				}
				b.s.Do(t, b.user.Token, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": out.TriggerSchedule.ID}).OK(t, nil)
				b.advance(t, time.Second)
				ticks, _ = schTicks(t, b.s, sch.ID)
				if policy == "BUFFER_ONE" {
					require.Equal(t, []time.Time{utcTime("2026-06-01T10:00:05Z"), utcTime("2026-06-01T10:10:00Z")}, ticks, "the held-back tick fires once it finished")
				} else {
					require.Len(t, ticks, 1)
				}
			})
		}
	})

	t.Run("UpdateRestartsTicksAndDeleteKeepsTheJobs", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
		sch := b.create(t, map[string]any{"cronExpression": "*/10 * * * *"})
		b.advance(t, 10*time.Minute)
		var upd struct{ UpdateSchedule schSchedule }
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { updateSchedule(id: $id, input: {cronExpression: "0 9 * * *", timeZone: "Asia/Tokyo", name: "tokyo"}) { `+schFields+` } }`, map[string]any{"id": sch.ID}).OK(t, &upd)
		require.Equal(t, "tokyo", upd.UpdateSchedule.Name)
		require.Equal(t, []time.Time{utcTime("2026-06-02T00:00:00Z"), utcTime("2026-06-03T00:00:00Z"), utcTime("2026-06-04T00:00:00Z")},
			upd.UpdateSchedule.NextRuns, "09:00 in Tokyo is midnight UTC")
		b.advance(t, 10*time.Minute)
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Len(t, ticks, 1, "the old expression no longer fires")

		var del struct{ DeleteSchedule string }
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { deleteSchedule(id: $id) }`, map[string]any{"id": sch.ID}).OK(t, &del)
		require.Equal(t, sch.ID, del.DeleteSchedule)
		var kept []struct {
			ScheduleID   *string   `bun:"schedule_id"`
			ScheduledFor time.Time `bun:"scheduled_for"`
		}
		require.NoError(t, b.s.DB.NewRaw("SELECT schedule_id, scheduled_for FROM jobs").Scan(t.Context(), &kept))
		require.Len(t, kept, 1)
		require.Nil(t, kept[0].ScheduleID, "the job stays, without its schedule")
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { deleteSchedule(id: $id) }`, map[string]any{"id": sch.ID}).Code(t, "NOT_FOUND")
	})

	// The leader was down at 10:10 (the clock moved, nothing stepped);
	// renaming the schedule and changing its priority meanwhile keeps that
	// due tick, which the next round fires.
	t.Run("UpdateKeepsDueTicksWhenTheTimingIsUnchanged", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
		sch := b.create(t, map[string]any{"cronExpression": "*/10 * * * *"})
		b.clock.Set(utcTime("2026-06-01T10:10:05Z"))
		var upd struct{ UpdateSchedule schSchedule }
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { updateSchedule(id: $id, input: {name: "renamed", priority: 5}) { `+schFields+` } }`,
			map[string]any{"id": sch.ID}).OK(t, &upd)
		require.Equal(t, "renamed", upd.UpdateSchedule.Name)
		b.step(t)
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{utcTime("2026-06-01T10:10:00Z")}, ticks, "the tick due before the update fires")
	})

	t.Run("AJobThatCannotBeEnqueuedIsRecordedAndTheScheduleGoesOn", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
		robot, _ := b.s.RobotWithKey(t, b.user.Token, "only-this-one")
		sch := b.create(t, map[string]any{"cronExpression": "*/10 * * * *", "robotId": robot})
		b.advance(t, 10*time.Minute)
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": robot}).OK(t, nil)
		b.advance(t, 10*time.Minute)
		b.advance(t, 10*time.Minute)
		got := b.get(t, sch.ID)
		require.NotNil(t, got.LastError)
		require.Contains(t, *got.LastError, "target robot was deleted")
		require.Contains(t, *got.LastError, "2026-06-01T10:30:00Z")
		require.Equal(t, utcTime("2026-06-01T10:40:00Z"), got.NextRuns[0], "the ticks go on")
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{utcTime("2026-06-01T10:10:00Z")}, ticks)
	})

	// A schedule whose round fails on a database error (here a test-only
	// trigger refusing its jobs) is due first, at every round: the others
	// still fire, and it is tried again at the next round.
	t.Run("AFailingScheduleDoesNotStarveTheOthers", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
		failing := b.create(t, map[string]any{"cronExpression": "* * * * *"})   // due first, at 10:01
		healthy := b.create(t, map[string]any{"cronExpression": "*/2 * * * *"}) // due at 10:02
		ctx := t.Context()
		_, err := b.s.DB.ExecContext(ctx, `CREATE FUNCTION refuse_job() RETURNS trigger LANGUAGE plpgsql
			AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$`)
		require.NoError(t, err)
		_, err = b.s.DB.ExecContext(ctx, "CREATE TRIGGER refuse_job BEFORE INSERT ON jobs FOR EACH ROW WHEN (NEW.schedule_id = ?) EXECUTE FUNCTION refuse_job()", failing.ID)
		require.NoError(t, err)

		b.clock.Set(utcTime("2026-06-01T10:02:05Z"))
		round := func() error {
			ctx := auth.WithPrincipal(ctx, auth.SystemPrincipal(db.SchedulerTask))
			_, err := b.s.App.Resolver.ScheduleStore.Fire(ctx, b.s.DB.DB, b.clock.Now())
			return err
		}
		err = round()
		require.ErrorContains(t, err, failing.ID, "the round reports the failing schedule")
		require.ErrorContains(t, err, "injected failure")
		ticks, _ := schTicks(t, b.s, healthy.ID)
		require.Equal(t, []time.Time{utcTime("2026-06-01T10:02:00Z")}, ticks, "the schedule due after the failing one fired")
		ticks, _ = schTicks(t, b.s, failing.ID)
		require.Empty(t, ticks)

		_, err = b.s.DB.ExecContext(ctx, "DROP TRIGGER refuse_job ON jobs")
		require.NoError(t, err)
		require.NoError(t, round())
		ticks, _ = schTicks(t, b.s, failing.ID)
		require.Equal(t, []time.Time{utcTime("2026-06-01T10:01:00Z"), utcTime("2026-06-01T10:02:00Z")}, ticks,
			"the failed round was rolled back and its ticks fire at the next")
	})

	t.Run("JitterDelaysEachJobWithinItsBound", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
		sch := b.create(t, map[string]any{"cronExpression": "* * * * *", "jitterSeconds": 30})
		b.advance(t, 50*time.Minute)
		got := b.get(t, sch.ID)
		require.Len(t, got.RecentJobs, 50)
		delays := map[time.Duration]bool{}
		for _, j := range got.RecentJobs {
			d := j.RunAfter.Sub(*j.ScheduledFor)
			require.True(t, d >= 0 && d <= 30*time.Second, "delay %s", d)
			delays[d] = true
		}
		require.Greater(t, len(delays), 5, "the delays are spread")
	})
}

// TestSchedulerCatchUp takes the server down for three hours (the clock
// moves, nothing steps) and checks what each overlap policy fires when it
// is back: a schedule every 10 minutes with a one-hour catch-up window.
func TestSchedulerCatchUp(t *testing.T) {
	t.Parallel()
	start := utcTime("2026-06-01T10:00:05Z")
	// After the outage it is 13:10:05: the ticks 10:20 to 12:10 (12) are
	// older than the window, 12:20 to 13:10 (6) within it.
	within := []time.Time{}
	for m := utcTime("2026-06-01T12:20:00Z"); !m.After(utcTime("2026-06-01T13:10:00Z")); m = m.Add(10 * time.Minute) {
		within = append(within, m)
	}
	first := utcTime("2026-06-01T10:10:00Z")

	setup := func(t *testing.T, policy string, finishFirst bool) (*schBundle, schSchedule) {
		b := schSetup(t, start)
		sch := b.create(t, map[string]any{"cronExpression": "*/10 * * * *", "overlapPolicy": policy, "catchupWindowSeconds": 3600})
		b.advance(t, 10*time.Minute) // 10:10 fires before the outage
		got := b.get(t, sch.ID)
		require.Len(t, got.RecentJobs, 1)
		if finishFirst {
			b.s.Do(t, b.user.Token, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": got.RecentJobs[0].ID}).OK(t, nil)
		}
		b.advance(t, 3*time.Hour)
		return b, sch
	}

	t.Run("Allow", func(t *testing.T) {
		t.Parallel()
		b, sch := setup(t, "ALLOW", false)
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, append([]time.Time{first}, within...), ticks, "every tick within the window fires once")
		got := b.get(t, sch.ID)
		require.Equal(t, 12, got.MissedTicks)
		require.Equal(t, utcTime("2026-06-01T12:10:00Z"), got.LastMissedAt.UTC())
		require.Zero(t, got.SkippedTicks)
	})
	t.Run("SkipAfterThePreviousJobFinished", func(t *testing.T) {
		t.Parallel()
		b, sch := setup(t, "SKIP", true)
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{first, within[len(within)-1]}, ticks, "SKIP fires once in all: the latest tick")
		got := b.get(t, sch.ID)
		require.Equal(t, 12, got.MissedTicks)
		require.Equal(t, len(within)-1, got.SkippedTicks)
		// Its job is live: the next tick is skipped.
		b.advance(t, 10*time.Minute)
		ticks, _ = schTicks(t, b.s, sch.ID)
		require.Len(t, ticks, 2)
		require.Equal(t, len(within), b.get(t, sch.ID).SkippedTicks)
	})
	t.Run("SkipWhileThePreviousJobIsLive", func(t *testing.T) {
		t.Parallel()
		b, sch := setup(t, "SKIP", false)
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{first}, ticks)
		require.Equal(t, len(within), b.get(t, sch.ID).SkippedTicks)
	})
	t.Run("BufferOne", func(t *testing.T) {
		t.Parallel()
		b, sch := setup(t, "BUFFER_ONE", true)
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{first, within[0]}, ticks, "the first tick within the window fires")
		got := b.get(t, sch.ID)
		require.Equal(t, within[1], got.BufferedTickAt.UTC(), "the next is held back")
		require.Equal(t, len(within)-2, got.SkippedTicks, "the rest are skipped")
		require.Equal(t, 12, got.MissedTicks)

		// A robot runs the 12:20 job; the held-back tick waits for it.
		_, key := b.s.RobotWithKey(t, b.user.Token, "worker")
		lease := schRun(t, b.s, key, got.RecentJobs[0].ID)
		b.advance(t, time.Second)
		ticks, _ = schTicks(t, b.s, sch.ID)
		require.Len(t, ticks, 2, "nothing fires while the previous job runs")
		b.s.Do(t, key, `mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l) { id } }`, lease).OK(t, nil)
		b.advance(t, time.Second)
		ticks, _ = schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{first, within[0], within[1]}, ticks, "the held-back tick fires when the previous job finishes")
		require.Nil(t, b.get(t, sch.ID).BufferedTickAt)
	})
}

// TestSchedulerLongOutages: after downtime, SKIP fires once in all, for the
// latest tick, and ticks are counted without being visited, however long
// the outage; one tenant's catch-up takes at most its share of a round.
func TestSchedulerLongOutages(t *testing.T) {
	t.Parallel()
	start := utcTime("2026-06-01T10:00:00Z")

	// 3,000 every-second ticks due, all within the window: one job, for
	// the latest; the round after fires only the tick that is new.
	t.Run("SkipFiresOnlyTheLatestOfThousandsOfTicks", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, start)
		sch := b.create(t, map[string]any{"cronExpression": "* * * * * *", "overlapPolicy": "SKIP", "catchupWindowSeconds": 3600})
		b.advance(t, 3000*time.Second)
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{utcTime("2026-06-01T10:50:00Z")}, ticks)
		got := b.get(t, sch.ID)
		require.Equal(t, 2999, got.SkippedTicks)
		require.Equal(t, utcTime("2026-06-01T10:49:59Z"), got.LastSkippedAt.UTC())
		require.Zero(t, got.MissedTicks)
		for range 3 {
			b.s.Do(t, b.user.Token, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": b.get(t, sch.ID).RecentJobs[0].ID}).OK(t, nil)
			b.advance(t, time.Second)
		}
		ticks, _ = schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{utcTime("2026-06-01T10:50:00Z"), utcTime("2026-06-01T10:50:01Z"),
			utcTime("2026-06-01T10:50:02Z"), utcTime("2026-06-01T10:50:03Z")}, ticks, "one job a second from then on")
		require.Equal(t, 2999, b.get(t, sch.ID).SkippedTicks)
	})

	// Sixty days down: every tick before the window is counted as missed,
	// exactly, and the one round that does so fires the latest tick.
	t.Run("MissedTicksOfAMonthsLongOutageAreCountedExactly", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, start)
		sch := b.create(t, map[string]any{"cronExpression": "* * * * * *", "timeZone": "Europe/Paris", "overlapPolicy": "SKIP", "catchupWindowSeconds": 3600})
		b.advance(t, 60*24*time.Hour)
		got := b.get(t, sch.ID)
		require.Equal(t, 60*24*3600-3601, got.MissedTicks, "every second before the window (10:00:01 to the window's start, excluded)")
		require.Equal(t, start.Add(60*24*time.Hour-3601*time.Second), got.LastMissedAt.UTC())
		require.Equal(t, 3600, got.SkippedTicks, "every second within the window but the last")
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{start.Add(60 * 24 * time.Hour)}, ticks)
	})

	// Tenant A has two schedules each 1,500 ticks behind; tenant B one
	// tick due. A round enqueues A's share and B's tick; A catches up
	// over the next rounds.
	t.Run("ATenantsCatchUpTakesItsShareOfARound", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, start)
		a1 := b.create(t, map[string]any{"cronExpression": "* * * * * *", "catchupWindowSeconds": 3600})
		a2 := b.create(t, map[string]any{"cronExpression": "* * * * * *", "catchupWindowSeconds": 3600})
		other := b.s.NewUser(t, uuid.New())
		var created struct{ CreateSchedule struct{ ID string } }
		b.s.Do(t, other.Token, `mutation($in: CreateScheduleInput!) { createSchedule(input: $in) { id } }`, map[string]any{"in": map[string]any{
			"name": "b", "workflowId": b.s.CreateWorkflow(t, other.Token, "other"), "cronExpression": "*/20 * * * *"}}).OK(t, &created)
		b.advance(t, 1500*time.Second)
		n1, _ := schTicks(t, b.s, a1.ID)
		n2, _ := schTicks(t, b.s, a2.ID)
		require.Equal(t, 1000, len(n1)+len(n2), "tenant A enqueued its share of the round")
		nb, _ := schTicks(t, b.s, created.CreateSchedule.ID)
		require.Len(t, nb, 1, "tenant B's tick fired in the same round")
		b.advance(t, time.Second)
		b.advance(t, time.Second)
		n1, _ = schTicks(t, b.s, a1.ID)
		n2, _ = schTicks(t, b.s, a2.ID)
		require.Equal(t, 3000, len(n1)+len(n2), "and more at each of the next rounds")
	})
}

// TestSchedulerFailover runs two replicas on one database, each with its
// maintenance runner and scheduler, through two hours of minutes: the
// leader dies in the middle, and at some ticks both replicas run the
// scheduler's round at once (a leader that lost its lock mid-round while the
// new one starts). Every schedule still has exactly one job per tick.
func TestSchedulerFailover(t *testing.T) {
	t.Parallel()
	start := utcTime("2026-06-01T10:00:05Z")
	b := schSetup(t, start)
	other, err := db.Open(t.Context(), b.s.DB.DSN)
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Close() })
	replica, err := app.New(app.Config{DB: other, DSN: b.s.DB.DSN, JWT: b.s.JWT, Logger: slog.New(slog.DiscardHandler), Clock: b.clock})
	require.NoError(t, err)

	var ids []string
	for range 5 {
		ids = append(ids, b.create(t, map[string]any{"cronExpression": "* * * * *"}).ID)
	}
	first, second := b.s.App.Maintenance, replica.Maintenance
	ctx := t.Context()
	step := func(r *maintenance.Runner) bool {
		leading, err := r.Step(ctx)
		require.NoError(t, err)
		return leading
	}
	require.True(t, step(first))
	require.False(t, step(second))
	for minute := 1; minute <= 120; minute++ {
		b.clock.Advance(time.Minute)
		switch {
		case minute == 40:
			// The leader's session dies; the other replica takes over.
			var pid int
			require.NoError(t, other.NewRaw(`SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
				AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(ctx, &pid))
			_, err := other.ExecContext(ctx, "SELECT pg_terminate_backend(?)", pid)
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				leading, err := second.Step(ctx)
				return err == nil && leading
			}, 30*time.Second, 10*time.Millisecond)
			require.False(t, step(first), "the old leader follows")
		case minute%7 == 0:
			// Two rounds at once, one per replica, for the same instant.
			var wg sync.WaitGroup
			for _, pool := range []*db.Schedules{b.s.App.Resolver.ScheduleStore, replica.Resolver.ScheduleStore} {
				bdb := b.s.DB.DB
				if pool == replica.Resolver.ScheduleStore {
					bdb = other
				}
				wg.Go(func() {
					ctx := auth.WithPrincipal(context.WithoutCancel(ctx), auth.SystemPrincipal(db.SchedulerTask))
					_, err := pool.Fire(ctx, bdb, b.clock.Now())
					require.NoError(t, err)
				})
			}
			wg.Wait()
		default:
			step(first)
			step(second)
		}
	}
	step(first)
	step(second)
	want := everyMinute(start, b.clock.Now())
	require.Len(t, want, 120)
	for _, id := range ids {
		ticks, per := schTicks(t, b.s, id)
		require.Equal(t, len(want), len(ticks), "one job per tick")
		require.Equal(t, want, ticks)
		require.Len(t, per, len(want))
	}
}
