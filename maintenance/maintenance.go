// Package maintenance runs the work the server does by itself — marking
// silent robots offline, rescuing expired leases, firing schedules,
// delivering webhooks — on one leader per database.
//
// Every replica runs a Runner. The one holding the maintenance advisory lock
// (locks.Maintenance, on a connection it keeps) is the leader and runs the
// registered tasks, each at its own interval; the others try to take the
// lock at every tick, so when the leader dies (its session ends and with it
// the lock) another takes over within a tick. Time comes from a Clock, so
// tests can step through hours of ticks without waiting, and each task runs
// with a system principal (system:<task>) in its context, so that what it
// does through the stores is attributed to it.
package maintenance

import (
	"context"
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
	// Run does one round at now. An error is logged; the task is due again
	// at its next interval.
	Run func(ctx context.Context, now time.Time) error
}

// Config is what New needs.
type Config struct {
	DB *bun.DB
	// Clock defaults to SystemClock.
	Clock Clock
	// Tick is how often the runner checks its leadership and which tasks
	// are due (default 1 s): the longest a dead leader goes unreplaced.
	Tick time.Duration
	Log  *slog.Logger
}

// Runner elects the leader and runs the tasks on it.
type Runner struct {
	db    *bun.DB
	clock Clock
	tick  time.Duration
	log   *slog.Logger

	mu      sync.Mutex
	tasks   []*scheduled
	leading bool // read by Leading; leader is the runner goroutine's own

	leader *bun.Conn // held while this process holds the lock
}

// scheduled is a task and the start of the step it last ran in.
type scheduled struct {
	Task
	last time.Time
}

// New returns a runner with no tasks.
func New(cfg Config) *Runner {
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Runner{db: cfg.DB, clock: cfg.Clock, tick: cfg.Tick, log: cfg.Log}
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
// Each task is still given the clock's time as it starts.
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
	for _, t := range tasks {
		if !t.last.IsZero() && start.Sub(t.last) < t.Every-r.tick/2 {
			continue
		}
		t.last = start
		now := r.clock.Now()
		taskCtx := auth.WithPrincipal(ctx, auth.SystemPrincipal(t.Name))
		if err := t.Run(taskCtx, now); err != nil && ctx.Err() == nil {
			r.log.Error("maintenance task failed", "task", t.Name, "error", err)
		}
	}
	return true, nil
}

// lead reports whether this process holds the maintenance lock, trying to
// take it when it does not.
func (r *Runner) lead(ctx context.Context) (bool, error) {
	if r.leader != nil {
		if err := r.leader.PingContext(ctx); err == nil {
			return true, nil
		}
		r.log.Warn("lost the maintenance leadership: its connection is gone")
		r.resign() // the session, and with it the lock, is gone
	}
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("connecting to compete for the maintenance lock: %w", err)
	}
	var got bool
	if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock(?)", int64(locks.Maintenance)).Scan(&got); err != nil {
		_ = conn.Close()
		return false, fmt.Errorf("competing for the maintenance lock: %w", err)
	}
	if !got {
		_ = conn.Close()
		return false, nil
	}
	r.leader = &conn
	r.log.Info("leading maintenance")
	return true, nil
}

// resign gives up the lock, if held.
func (r *Runner) resign() {
	if r.leader == nil {
		return
	}
	_, _ = r.leader.ExecContext(context.Background(), "SELECT pg_advisory_unlock(?)", int64(locks.Maintenance))
	_ = r.leader.Close()
	r.leader = nil
	r.mu.Lock()
	r.leading = false
	r.mu.Unlock()
}
