package scheduletests

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestNextRunsShowWhatFiresNext: nextRuns lists what the scheduler's next
// rounds fire, from the schedule's stored ticks, not from the clock alone.
func TestNextRunsShowWhatFiresNext(t *testing.T) {
	t.Parallel()

	// The leader was down at 11:00 (the clock moved, nothing stepped): that
	// tick, within the catch-up window, fires at the next round, so it is
	// listed first.
	t.Run("ADueTickNotYetFired", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:30:00Z"))
		sch := b.create(t, map[string]any{"cronExpression": "0 * * * *", "catchupWindowSeconds": 7200})
		b.clock.Set(utcTime("2026-06-01T11:20:00Z"))
		require.Equal(t, []time.Time{utcTime("2026-06-01T11:00:00Z"), utcTime("2026-06-01T12:00:00Z"), utcTime("2026-06-01T13:00:00Z")},
			b.get(t, sch.ID).NextRuns)
		b.step(t)
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{utcTime("2026-06-01T11:00:00Z")}, ticks, "the listed tick fired")
		require.Equal(t, utcTime("2026-06-01T12:00:00Z"), b.get(t, sch.ID).NextRuns[0])
	})

	// The leader's clock stepped ahead to 12:30 (11:00 and 12:00 fired),
	// then back to 11:20: those two never fire again, so they are not listed.
	t.Run("AfterTheClockSteppedBack", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:30:00Z"))
		sch := b.create(t, map[string]any{"cronExpression": "0 * * * *", "catchupWindowSeconds": 7200})
		b.clock.Set(utcTime("2026-06-01T12:30:00Z"))
		b.step(t)
		b.clock.Set(utcTime("2026-06-01T11:20:00Z"))
		require.Equal(t, []time.Time{utcTime("2026-06-01T13:00:00Z"), utcTime("2026-06-01T14:00:00Z"), utcTime("2026-06-01T15:00:00Z")},
			b.get(t, sch.ID).NextRuns)
	})

	// BUFFER_ONE holds 10:20 back while the 10:10 job is queued: that tick
	// is what fires next, when the job finishes, though its time has passed.
	t.Run("TheTickBufferOneHoldsBack", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
		sch := b.create(t, map[string]any{"cronExpression": "*/10 * * * *", "overlapPolicy": "BUFFER_ONE"})
		b.advance(t, 10*time.Minute)
		b.advance(t, 10*time.Minute)
		got := b.get(t, sch.ID)
		require.Equal(t, utcTime("2026-06-01T10:20:00Z"), got.BufferedTickAt.UTC())
		require.Equal(t, []time.Time{utcTime("2026-06-01T10:20:00Z"), utcTime("2026-06-01T10:30:00Z"), utcTime("2026-06-01T10:40:00Z")}, got.NextRuns)
		b.s.Do(t, b.user.Token, `mutation($id: ID!) { cancelJob(id: $id) { id } }`, map[string]any{"id": got.RecentJobs[0].ID}).OK(t, nil)
		b.advance(t, time.Second)
		ticks, _ := schTicks(t, b.s, sch.ID)
		require.Equal(t, []time.Time{utcTime("2026-06-01T10:10:00Z"), utcTime("2026-06-01T10:20:00Z")}, ticks, "the held-back tick fired")
		require.Equal(t, utcTime("2026-06-01T10:30:00Z"), b.get(t, sch.ID).NextRuns[0])
	})

	// Three hours down with a one-hour window: the ticks before the window
	// will be counted as missed, not fired, so the list starts within it;
	// SKIP fires only the latest due tick.
	t.Run("AfterALongOutage", func(t *testing.T) {
		t.Parallel()
		for policy, want := range map[string][]time.Time{
			"ALLOW": {utcTime("2026-06-01T12:20:00Z"), utcTime("2026-06-01T12:30:00Z"), utcTime("2026-06-01T12:40:00Z")},
			"SKIP":  {utcTime("2026-06-01T13:10:00Z"), utcTime("2026-06-01T13:20:00Z"), utcTime("2026-06-01T13:30:00Z")},
		} {
			t.Run(policy, func(t *testing.T) {
				t.Parallel()
				b := schSetup(t, utcTime("2026-06-01T10:00:05Z"))
				sch := b.create(t, map[string]any{"cronExpression": "*/10 * * * *", "overlapPolicy": policy, "catchupWindowSeconds": 3600})
				b.clock.Set(utcTime("2026-06-01T13:10:05Z"))
				require.Equal(t, want, b.get(t, sch.ID).NextRuns)
				b.step(t)
				ticks, _ := schTicks(t, b.s, sch.ID)
				require.Equal(t, want[0], ticks[0], "the first listed tick is the first fired")
			})
		}
	})

	t.Run("NothingWhilePaused", func(t *testing.T) {
		t.Parallel()
		b := schSetup(t, utcTime("2026-06-01T10:30:00Z"))
		sch := b.create(t, map[string]any{"cronExpression": "0 * * * *", "paused": true})
		b.clock.Set(utcTime("2026-06-01T11:20:00Z"))
		require.Empty(t, b.get(t, sch.ID).NextRuns)
	})
}
