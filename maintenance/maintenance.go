// Package maintenance runs the work the server does by itself — marking
// silent robots offline, rescuing expired leases, firing schedules,
// delivering webhooks — on one leader per database.
//
// Every replica runs a Runner. The one holding the maintenance advisory lock
// (locks.Maintenance, on a connection it keeps) is the leader and runs the
// registered tasks, each at its own interval; the others try to take the
// lock at every tick, so when the leader dies (its session ends and with it
// the lock) another takes over within a tick. A leader cut off without its
// connection closing, or stuck, stops pinging: PostgreSQL ends its idle
// session after Config.IdleSessionTimeout (30 s). Time comes from a Clock, so
// tests can step through hours of ticks without waiting, and each task runs
// with a system principal (system:<task>) in its context, so that what it
// does through the stores is attributed to it.
package maintenance

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/locks"
)

// Clock tells the time. Production uses the system clock; tests use a Clock
// they advance by hand.
type Clock interface {
	Now() time.Time
}

// SystemClock is the machine's clock.
type SystemClock struct{}

// Now implements Clock.
func (SystemClock) Now() time.Time { return time.Now() }

// ManualClock is a Clock that moves only when told to, for tests.
type ManualClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewManualClock returns a clock stopped at now.
func NewManualClock(now time.Time) *ManualClock { return &ManualClock{now: now} }

// Now implements Clock.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Set moves the clock to t.
func (c *ManualClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// Task is one piece of maintenance.
type Task struct {
	// Name identifies the task: in logs, and as the system principal
	// system:<Name> it runs as.
	Name string
	// Every is how often the task is due.
	Every time.Duration
	// Run does one round at now. An error is logged, and the task is due
	// again after RetryEvery (or Every, when shorter) rather than after a
	// whole interval: a daily task that met a busy table once must not
	// wait a day.
	Run func(ctx context.Context, now time.Time) error
	// Grace, if set, is how long after this replica takes the leadership
	// (at its start, when the database comes back, or when the leader
	// before it stops) the task first runs. It is for tasks that judge
	// robots by their silence: while no replica led (the database or every
	// replica down) robots could not be heard from, so each gets Grace to
	// get in touch before its silence counts.
	Grace time.Duration
}

// RetryEvery is how soon a task whose last run failed is due again, unless
// its own interval is shorter: soon enough that one failure of a daily task
// costs minutes, not a day, and seldom enough that a task that keeps
// failing does not hammer the database.
const RetryEvery = time.Minute

// Config is what New needs.
type Config struct {
	DB *bun.DB
	// Clock defaults to SystemClock.
	Clock Clock
	// Tick is how often the runner checks its leadership and which tasks
	// are due (default 1 s): the longest a leader whose session ended goes
	// unreplaced.
	Tick time.Duration
	// IdleSessionTimeout is how long PostgreSQL lets the leader's session
	// sit idle before it ends it, and with it the lock (default 30 s). The
	// leader pings at every step, a tick apart, so an idle session is a
	// leader that is stuck, or whose host vanished without closing TCP,
	// which PostgreSQL would otherwise notice only when TCP keepalive gives
	// up (about 2 h with the OS's defaults). While a step's tasks run,
	// the leader pings its session every third of it, so long tasks keep
	// the lock.
	IdleSessionTimeout time.Duration
	Log                *slog.Logger
}

// Runner elects the leader and runs the tasks on it.
type Runner struct {
	db          *bun.DB
	clock       Clock
	tick        time.Duration
	idleTimeout time.Duration
	log         *slog.Logger

	mu      sync.Mutex
	tasks   []*scheduled
	leading bool // read by Leading; leader is the runner goroutine's own

	leader *bun.Conn // held while this process holds the lock
	since  time.Time // the clock's time when it took the lock
}

// scheduled is a task, the start of the step it last ran in, and whether
// that run failed.
type scheduled struct {
	Task
	last   time.Time
	failed bool
}

// interval is how long after its last run the task is due again.
func (t *scheduled) interval() time.Duration {
	if t.failed {
		return min(t.Every, RetryEvery)
	}
	return t.Every
}

// New returns a runner with no tasks.
func New(cfg Config) *Runner {
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.IdleSessionTimeout <= 0 {
		cfg.IdleSessionTimeout = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Runner{db: cfg.DB, clock: cfg.Clock, tick: cfg.Tick, idleTimeout: cfg.IdleSessionTimeout, log: cfg.Log}
}

// Register adds a task; it first runs at the leader's next step.
func (r *Runner) Register(t Task) {
	if t.Name == "" || t.Every <= 0 || t.Run == nil {
		panic(fmt.Sprintf("maintenance: task %q needs a name, an interval and a function", t.Name))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tasks = append(r.tasks, &scheduled{Task: t})
}

// Run steps every tick until ctx ends, then gives up the leadership.
func (r *Runner) Run(ctx context.Context) {
	t := time.NewTicker(r.tick)
	defer t.Stop()
	defer r.resign()
	for {
		if _, err := r.Step(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("maintenance", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Leading reports whether this process led at its last step.
func (r *Runner) Leading() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leading
}

// Step takes or keeps the leadership and, when leading, runs every task
// that is due at the clock's time, in the order they were registered. It
// reports whether this process leads. Run calls it every tick; tests call
// it directly, from one goroutine at a time.
//
// A task is due when its interval, less half a tick for the ticker's
// jitter, has passed between the starts of the step it last ran in and of
// this one. Measuring from the step's start rather than from each task's
// own (later by the leader's ping and the earlier tasks' durations, which
// vary) keeps a task whose interval is the tick running at every tick.
// Each task is still given the clock's time as it starts. A task whose
// run failed is due again after RetryEvery, or its interval when shorter.
func (r *Runner) Step(ctx context.Context) (bool, error) {
	start := r.clock.Now()
	leading, err := r.lead(ctx)
	r.mu.Lock()
	r.leading = leading && err == nil
	tasks := append([]*scheduled(nil), r.tasks...)
	r.mu.Unlock()
	if err != nil || !leading {
		return false, err
	}
	defer r.keepAlive(*r.leader)()
	for _, t := range tasks {
		if !t.last.IsZero() && start.Sub(t.last) < t.interval()-r.tick/2 || t.Grace > 0 && start.Sub(r.since) < t.Grace {
			continue
		}
		t.last = start
		now := r.clock.Now()
		taskCtx := auth.WithPrincipal(ctx, auth.SystemPrincipal(t.Name))
		err := t.Run(taskCtx, now)
		t.failed = err != nil
		if err != nil && ctx.Err() == nil {
			r.log.Error("maintenance task failed", "task", t.Name, "error", err, "retry_in", t.interval())
		}
	}
	return true, nil
}

// keepAlive pings the leader's session every tenth of the idle timeout
// (a stalled process or database must lose nine pings in a row before
// the session ends) until the returned function is called, so that a step whose tasks take
// longer than the timeout keeps its lock: the timeout is for a leader that
// stopped (vanished, frozen), not for one at work. A ping that does not
// answer stops the pinging; the next step's finds the session gone.
func (r *Runner) keepAlive(conn bun.Conn) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(max(r.idleTimeout/10, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if ping(context.Background(), conn) != nil {
					return
				}
			}
		}
	}()
	return func() { close(done) }
}

// lead reports whether this process holds the maintenance lock, trying to
// take it when it does not: a leader whose session ended takes it again
// at its next step, unless another replica did.
func (r *Runner) lead(ctx context.Context) (bool, error) {
	if r.leader != nil {
		conn := *r.leader
		err := ping(ctx, conn)
		if err == nil {
			return true, nil
		}
		r.log.Warn("lost the maintenance leadership: its connection does not answer", "error", err)
		if errors.Is(err, errNoAnswer) {
			r.leader = nil // roundTrip discards it once the ping returns
		} else {
			r.resign() // the session, and with it the lock, is gone
		}
	}
	connCtx, cancel := context.WithTimeout(ctx, leaderTimeout)
	conn, err := r.db.Conn(connCtx)
	cancel()
	if err != nil {
		return false, fmt.Errorf("connecting to compete for the maintenance lock: %w", err)
	}
	var got bool
	err = roundTrip(ctx, conn, func(ctx context.Context) error {
		return conn.QueryRowContext(ctx, takeLeadSQL, int64(locks.Maintenance), fmt.Sprint(r.idleTimeout.Milliseconds())).Scan(&got)
	})
	if err != nil {
		// The lock may have been taken before the statement failed:
		// the session must not go back to the pool holding it.
		if !errors.Is(err, errNoAnswer) {
			discard(conn)
		}
		return false, fmt.Errorf("competing for the maintenance lock: %w", err)
	}
	if !got {
		_ = conn.Close()
		return false, nil
	}
	r.leader, r.since = &conn, r.clock.Now()
	r.log.Info("leading maintenance")
	return true, nil
}

// takeLeadSQL tries the lock and, only when it got it, sets the session
// up to be ended by PostgreSQL soon after its client vanishes (TCP
// keepalives from 10 s idle, 3 probes 5 s apart; unacknowledged data given
// up after 25 s) or stops pinging (idle_session_timeout, the second
// argument, in ms). One statement, so that no session holds the lock
// without them. The settings are the session's: the connection is
// discarded, not pooled, when it stops leading.
const takeLeadSQL = `SELECT CASE WHEN pg_try_advisory_lock(?) THEN
	(set_config('tcp_keepalives_idle', '10', false) || set_config('tcp_keepalives_interval', '5', false) ||
	 set_config('tcp_keepalives_count', '3', false) || set_config('tcp_user_timeout', '25000', false) ||
	 set_config('idle_session_timeout', ?, false)) IS NOT NULL
	ELSE false END`

// leaderTimeout bounds each round trip of the leadership (the leader's
// ping, an attempt at the lock); a healthy one takes milliseconds.
const leaderTimeout = 5 * time.Second

// errNoAnswer is a round trip that did not answer within leaderTimeout.
var errNoAnswer = errors.New("the database did not answer")

// roundTrip runs f on conn, waiting for it at most leaderTimeout. lib/pq
// does not stop a read at a context's deadline (it only asks the server to
// cancel the statement), so a statement to a vanished server would hold
// Step until TCP gives up. When f does not return in time, roundTrip
// returns errNoAnswer and conn is no longer the caller's: it is discarded
// once f returns, and its session (with any lock it holds) ends then, or
// on the server's idle timeout if the server is cut off.
func roundTrip(ctx context.Context, conn bun.Conn, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, leaderTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		go func() {
			<-done
			discard(conn)
		}()
		return fmt.Errorf("%w: %w", errNoAnswer, ctx.Err())
	}
}

// ping is the leader's round trip on its session (roundTrip).
func ping(ctx context.Context, conn bun.Conn) error {
	return roundTrip(ctx, conn, func(ctx context.Context) error { return conn.PingContext(ctx) })
}

// discard closes conn rather than return it to the pool, where the
// leader's session settings must not go.
func discard(conn bun.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// resign gives up the lock, if held.
func (r *Runner) resign() {
	if r.leader == nil {
		return
	}
	conn := *r.leader
	r.leader = nil
	err := roundTrip(context.Background(), conn, func(ctx context.Context) error {
		_, err := conn.ExecContext(ctx, "SELECT pg_advisory_unlock(?)", int64(locks.Maintenance))
		return err
	})
	if !errors.Is(err, errNoAnswer) {
		discard(conn)
	}
	r.mu.Lock()
	r.leading = false
	r.mu.Unlock()
}
