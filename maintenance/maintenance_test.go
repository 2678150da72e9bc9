package maintenance_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/maintenance"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// recorder is a task that records the times and principals it ran with.
type recorder struct {
	mu     sync.Mutex
	times  []time.Time
	actors []string
}

func (r *recorder) run(ctx context.Context, now time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.times = append(r.times, now)
	r.actors = append(r.actors, auth.FromContext(ctx).Actor())
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.times)
}

func TestRunner(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		db    *dbtest.Database
		clock *maintenance.ManualClock
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		return &testBundle{db: dbtest.New(t), clock: maintenance.NewManualClock(time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC))}
	}
	newRunner := func(t *testing.T, b *testBundle, pool *bun.DB) *maintenance.Runner {
		t.Helper()
		r := maintenance.New(maintenance.Config{DB: pool, Clock: b.clock})
		return r
	}

	t.Run("TasksRunAtTheirIntervalsOnTheClock", func(t *testing.T) {
		b := setup(t)
		r := newRunner(t, b, b.db.DB)
		minutely, hourly := &recorder{}, &recorder{}
		r.Register(maintenance.Task{Name: "minutely", Every: time.Minute, Run: minutely.run})
		r.Register(maintenance.Task{Name: "hourly", Every: time.Hour, Run: hourly.run})
		ctx := t.Context()
		// Two hours in 30-second steps, without waiting for any of them.
		for range 240 {
			leading, err := r.Step(ctx)
			require.NoError(t, err)
			require.True(t, leading)
			b.clock.Advance(30 * time.Second)
		}
		require.Equal(t, 120, minutely.count())
		require.Equal(t, 2, hourly.count())
		require.Equal(t, time.Minute, minutely.times[1].Sub(minutely.times[0]))
		require.Equal(t, "system:minutely", minutely.actors[0])
		require.Equal(t, "system:hourly", hourly.actors[1])
	})

	// Steps come one tick apart (the ticker's), while an earlier task's
	// duration varies: a task due every tick still runs at every step.
	t.Run("ATaskDueEveryTickRunsAtEveryStep", func(t *testing.T) {
		b := setup(t)
		const tick = time.Second
		r := maintenance.New(maintenance.Config{DB: b.db.DB, Clock: b.clock, Tick: tick})
		slowRuns := 0
		r.Register(maintenance.Task{Name: "slow", Every: tick, Run: func(context.Context, time.Time) error {
			slowRuns++
			if slowRuns%2 == 1 {
				b.clock.Advance(20 * time.Millisecond) // it takes 20 ms every other time
			}
			return nil
		}})
		everyTick := &recorder{}
		r.Register(maintenance.Task{Name: "every-tick", Every: tick, Run: everyTick.run})
		start := b.clock.Now()
		for i := range 10 {
			b.clock.Set(start.Add(time.Duration(i) * tick))
			leading, err := r.Step(t.Context())
			require.NoError(t, err)
			require.True(t, leading)
			require.Equal(t, i+1, everyTick.count(), "the task due every tick ran at step %d", i)
		}
		require.Equal(t, 10, slowRuns)
		require.Equal(t, start.Add(20*time.Millisecond), everyTick.times[0], "a task runs at the clock's time as it starts")
	})

	t.Run("OneLeaderAndATakeoverWhenItDies", func(t *testing.T) {
		b := setup(t)
		// Two replicas: each its own pool on the same database.
		other, err := db.Open(t.Context(), b.db.DSN)
		require.NoError(t, err)
		t.Cleanup(func() { _ = other.Close() })
		first, second := newRunner(t, b, b.db.DB), newRunner(t, b, other)
		ran1, ran2 := &recorder{}, &recorder{}
		first.Register(maintenance.Task{Name: "work", Every: time.Second, Run: ran1.run})
		second.Register(maintenance.Task{Name: "work", Every: time.Second, Run: ran2.run})
		ctx := t.Context()

		leading, err := first.Step(ctx)
		require.NoError(t, err)
		require.True(t, leading)
		for range 5 {
			b.clock.Advance(time.Second)
			leading, err = second.Step(ctx)
			require.NoError(t, err)
			require.False(t, leading, "a second replica must not lead while the first does")
			leading, err = first.Step(ctx)
			require.NoError(t, err)
			require.True(t, leading)
		}
		require.Zero(t, ran2.count())
		require.Equal(t, 6, ran1.count())

		// The leader's session dies (a crash, a network cut): its lock goes
		// with it, and the other replica leads at its next step.
		var pid int
		require.NoError(t, b.db.NewRaw("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").Scan(ctx, &pid))
		_, err = other.ExecContext(ctx, "SELECT pg_terminate_backend(?)", pid)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			leading, err := second.Step(ctx)
			return err == nil && leading
		}, 30*time.Second, 10*time.Millisecond)
		require.Equal(t, 1, ran2.count())
		leading, err = first.Step(ctx)
		require.NoError(t, err)
		require.False(t, leading, "the old leader notices it lost the lock and follows")
	})

	t.Run("StoppingHandsTheLockOver", func(t *testing.T) {
		b := setup(t)
		other, err := db.Open(t.Context(), b.db.DSN)
		require.NoError(t, err)
		t.Cleanup(func() { _ = other.Close() })
		first, second := newRunner(t, b, b.db.DB), newRunner(t, b, other)
		ctx, stop := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { first.Run(ctx); close(done) }()
		require.Eventually(t, func() bool { return first.Leading() }, 30*time.Second, 5*time.Millisecond)
		stop()
		<-done
		leading, err := second.Step(t.Context())
		require.NoError(t, err)
		require.True(t, leading, "a runner that stops gives its lock up at once")
	})
}
