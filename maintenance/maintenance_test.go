package maintenance_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

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

	// A daily task that fails (its table was busy) is due again a minute
	// later, not a day later, and not at every step either; once it
	// succeeds it keeps its interval.
	t.Run("AFailedTaskIsRetriedSoonWithoutHammering", func(t *testing.T) {
		b := setup(t)
		r := newRunner(t, b, b.db.DB)
		daily := &recorder{}
		fail := 2
		r.Register(maintenance.Task{Name: "daily", Every: 24 * time.Hour, Run: func(ctx context.Context, now time.Time) error {
			_ = daily.run(ctx, now)
			if fail > 0 {
				fail--
				return errors.New("the table is busy")
			}
			return nil
		}})
		start := b.clock.Now()
		// Ten minutes in 20-second steps.
		for range 30 {
			leading, err := r.Step(t.Context())
			require.NoError(t, err)
			require.True(t, leading)
			b.clock.Advance(20 * time.Second)
		}
		require.Equal(t, []time.Time{start, start.Add(time.Minute), start.Add(2 * time.Minute)}, daily.times,
			"two failures, each retried a minute later; the success waits its day")
		b.clock.Set(start.Add(2*time.Minute + 24*time.Hour))
		_, err := r.Step(t.Context())
		require.NoError(t, err)
		require.Equal(t, 4, daily.count())
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
		endLeadersSession(t, other)
		require.Eventually(t, func() bool {
			leading, err := second.Step(ctx)
			return err == nil && leading
		}, 30*time.Second, 10*time.Millisecond)
		require.Equal(t, 1, ran2.count())
		leading, err = first.Step(ctx)
		require.NoError(t, err)
		require.False(t, leading, "the old leader notices it lost the lock and follows")
	})

	// A task with a grace first runs that long after its replica took the
	// leadership, at its start and at a takeover alike; the others at once.
	t.Run("ATaskWithAGraceWaitsAfterATakeover", func(t *testing.T) {
		b := setup(t)
		other, err := db.Open(t.Context(), b.db.DSN)
		require.NoError(t, err)
		t.Cleanup(func() { _ = other.Close() })
		first, second := newRunner(t, b, b.db.DB), newRunner(t, b, other)
		patient1, patient2, eager := &recorder{}, &recorder{}, &recorder{}
		first.Register(maintenance.Task{Name: "patient", Every: time.Second, Grace: time.Minute, Run: patient1.run})
		first.Register(maintenance.Task{Name: "eager", Every: time.Second, Run: eager.run})
		second.Register(maintenance.Task{Name: "patient", Every: time.Second, Grace: time.Minute, Run: patient2.run})
		ctx := t.Context()
		start := b.clock.Now()
		for range 61 {
			leading, err := first.Step(ctx)
			require.NoError(t, err)
			require.True(t, leading)
			b.clock.Advance(time.Second)
		}
		require.Equal(t, 61, eager.count())
		require.Equal(t, []time.Time{start.Add(time.Minute)}, patient1.times, "a minute after the first step took the lead")

		// The leader's session dies; the other replica takes over and
		// waits its own minute.
		endLeadersSession(t, other)
		took := b.clock.Now()
		require.Eventually(t, func() bool {
			leading, err := second.Step(ctx)
			return err == nil && leading
		}, 30*time.Second, 10*time.Millisecond)
		for range 60 {
			b.clock.Advance(time.Second)
			_, err := second.Step(ctx)
			require.NoError(t, err)
		}
		require.Equal(t, []time.Time{took.Add(time.Minute)}, patient2.times)
	})

	// A leader that stops stepping (stuck, or its host gone) goes idle:
	// PostgreSQL ends its session after the idle timeout, and with it the
	// lock, so another replica leads.
	t.Run("AnIdleLeaderLosesTheLock", func(t *testing.T) {
		b := setup(t)
		other, err := db.Open(t.Context(), b.db.DSN)
		require.NoError(t, err)
		t.Cleanup(func() { _ = other.Close() })
		stuck := maintenance.New(maintenance.Config{DB: b.db.DB, Clock: b.clock, IdleSessionTimeout: time.Second})
		second := newRunner(t, b, other)
		ctx := t.Context()
		leading, err := stuck.Step(ctx)
		require.NoError(t, err)
		require.True(t, leading)
		require.Eventually(t, func() bool {
			leading, err := second.Step(ctx)
			return err == nil && leading
		}, 30*time.Second, 10*time.Millisecond, "another replica leads once the idle leader's session is ended")
		leading, err = stuck.Step(ctx)
		require.NoError(t, err)
		require.False(t, leading, "the old leader follows")
	})

	// A step whose tasks take longer than the idle timeout keeps the lock:
	// the leader's session is pinged while they run.
	t.Run("ALongStepKeepsTheLock", func(t *testing.T) {
		b := setup(t)
		other, err := db.Open(t.Context(), b.db.DSN)
		require.NoError(t, err)
		t.Cleanup(func() { _ = other.Close() })
		// 5 s, not 1 s: the pings come from this process, and a stall of
		// it longer than the timeout (a busy machine; 1 s was seen) lets
		// PostgreSQL end the leader's session, which is what the timeout is
		// for. The length of the task is not a time the test picks (below).
		const idle = 5 * time.Second
		leader := maintenance.New(maintenance.Config{DB: b.db.DB, Clock: b.clock, IdleSessionTimeout: idle})
		second := newRunner(t, b, other)
		started, release := make(chan struct{}), make(chan struct{})
		leader.Register(maintenance.Task{Name: "long", Every: time.Second, Run: func(ctx context.Context, _ time.Time) error {
			close(started)
			<-release
			return nil
		}})
		ctx := t.Context()
		stepped := make(chan bool, 1)
		go func() {
			leading, err := leader.Step(ctx)
			stepped <- err == nil && leading
		}()
		<-started
		// The task runs until PostgreSQL has ended a session of the test's,
		// idle with the same timeout since after the leader's last
		// statement of its own: by then an unpinged leader's session would
		// have been ended first. Meanwhile, and after, no one else leads.
		witness, err := db.Open(ctx, b.db.DSN)
		require.NoError(t, err)
		t.Cleanup(func() { _ = witness.Close() })
		wconn, err := witness.Conn(ctx)
		require.NoError(t, err)
		var pid int
		require.NoError(t, wconn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid))
		_, err = wconn.ExecContext(ctx, "SELECT set_config('idle_session_timeout', ?, false)", fmt.Sprint(idle.Milliseconds()))
		require.NoError(t, err)
		witnessEnded := func() bool {
			var n int
			require.NoError(t, b.db.NewRaw("SELECT count(*) FROM pg_stat_activity WHERE pid = ?", pid).Scan(ctx, &n))
			return n == 0
		}
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for deadline := time.Now().Add(time.Minute); !witnessEnded(); {
			require.True(t, time.Now().Before(deadline), "PostgreSQL never ended the idle witness session")
			<-tick.C
			leading, err := second.Step(ctx)
			require.NoError(t, err)
			require.False(t, leading, "another replica took the lock while the leader's task ran")
		}
		leading, err := second.Step(ctx)
		require.NoError(t, err)
		require.False(t, leading, "another replica took the lock while the leader's task ran")
		close(release)
		require.True(t, <-stepped)
		leading, err = leader.Step(ctx)
		require.NoError(t, err)
		require.True(t, leading, "the leader still leads after its long step")
	})

	// The graph's tests step their runner with long pauses: a leader whose
	// session was ended meanwhile simply takes the lock again.
	t.Run("ALeaderWhoseSessionEndedLeadsAgain", func(t *testing.T) {
		b := setup(t)
		r := maintenance.New(maintenance.Config{DB: b.db.DB, Clock: b.clock, IdleSessionTimeout: time.Second})
		ctx := t.Context()
		leading, err := r.Step(ctx)
		require.NoError(t, err)
		require.True(t, leading)
		require.Eventually(t, func() bool { return advisoryLocks(t, b.db.DB) == 0 }, 30*time.Second, 10*time.Millisecond,
			"PostgreSQL ends the idle leader's session")
		// Stepped again, it leads and holds the lock. On a busy machine the
		// count may come a second after the step, when PostgreSQL has ended
		// the idle session once more: then the next step takes it again.
		require.Eventually(t, func() bool {
			leading, err := r.Step(ctx)
			return err == nil && leading && advisoryLocks(t, b.db.DB) == 1
		}, 30*time.Second, 10*time.Millisecond, "the leader takes the lock again")
	})

	// The leader's host is cut off without a word: its connection neither
	// answers nor closes. Its next step gives up on the ping rather than
	// wait for TCP, and another replica leads once PostgreSQL ended the
	// silent session.
	t.Run("AVanishedLeaderIsReplaced", func(t *testing.T) {
		b := setup(t)
		dialer := &vanishingDialer{gone: make(chan struct{})}
		connector, err := pq.NewConnector(b.db.DSN)
		require.NoError(t, err)
		connector.Dialer(dialer)
		vanishing := bun.NewDB(sql.OpenDB(connector), pgdialect.New())
		t.Cleanup(func() { _ = vanishing.Close() })
		t.Cleanup(dialer.closeAll) // before the pool: ends the reads left hanging
		first := maintenance.New(maintenance.Config{DB: vanishing, Clock: b.clock, IdleSessionTimeout: time.Second})
		second := newRunner(t, b, b.db.DB)
		ctx := t.Context()
		leading, err := first.Step(ctx)
		require.NoError(t, err)
		require.True(t, leading)

		close(dialer.gone)
		type result struct {
			leading bool
			err     error
		}
		stepped := make(chan result, 1)
		go func() {
			leading, err := first.Step(ctx)
			stepped <- result{leading, err}
		}()
		require.Eventually(t, func() bool {
			leading, err := second.Step(ctx)
			return err == nil && leading
		}, 30*time.Second, 10*time.Millisecond, "another replica leads once the silent session is ended")
		select {
		case res := <-stepped:
			require.Error(t, res.err, "it cannot reach the database to compete again")
			require.False(t, res.leading)
			require.False(t, first.Leading())
		case <-time.After(30 * time.Second):
			require.FailNow(t, "the cut-off leader's step waits for its ping forever")
		}
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

// endLeadersSession ends, from pool, the session that holds the test
// database's advisory lock (the leader's): a crash, a network cut.
func endLeadersSession(t *testing.T, pool *bun.DB) {
	t.Helper()
	var pid int
	require.NoError(t, pool.NewRaw(`SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(t.Context(), &pid))
	_, err := pool.ExecContext(t.Context(), "SELECT pg_terminate_backend(?)", pid)
	require.NoError(t, err)
}

// advisoryLocks counts the advisory locks held in the test's database.
func advisoryLocks(t *testing.T, pool *bun.DB) int {
	t.Helper()
	var n int
	require.NoError(t, pool.NewRaw(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(context.Background(), &n))
	return n
}

// vanishingDialer connects to the database until gone is closed. From then
// on its connections are those of a host cut off without a word: what
// they write goes nowhere, their reads never end, nothing is closed; and
// new connections fail.
type vanishingDialer struct {
	gone  chan struct{}
	mu    sync.Mutex
	conns []*vanishingConn
}

func (d *vanishingDialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

func (d *vanishingDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.DialContext(ctx, network, address)
}

func (d *vanishingDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	select {
	case <-d.gone:
		return nil, errors.New("connect: no route to host")
	default:
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	vc := &vanishingConn{Conn: c, gone: d.gone, closed: make(chan struct{})}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.conns = append(d.conns, vc)
	return vc, nil
}

// closeAll closes every connection, ending the reads left hanging.
func (d *vanishingDialer) closeAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		_ = c.Close()
	}
}

type vanishingConn struct {
	net.Conn
	gone   <-chan struct{}
	closed chan struct{}
	once   sync.Once
}

func (c *vanishingConn) Read(p []byte) (int, error) {
	select {
	case <-c.gone:
		<-c.closed
		return 0, net.ErrClosed
	default:
		return c.Conn.Read(p)
	}
}

func (c *vanishingConn) Write(p []byte) (int, error) {
	select {
	case <-c.gone:
		return len(p), nil
	default:
		return c.Conn.Write(p)
	}
}

func (c *vanishingConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
