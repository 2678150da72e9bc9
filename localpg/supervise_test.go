package localpg

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// waitDeadline bounds every wait for a postmaster to die or come back; a
// loaded machine may need crash recovery and a few backoff rounds.
const waitDeadline = 2 * time.Minute

// killSettings keep a commit durable across a killed postmaster, as the
// default synchronous_commit does in production: a process kill loses no
// file the kernel has, but loses WAL that was still in PostgreSQL's buffers.
var killSettings = map[string]string{"fsync": "off", "full_page_writes": "off"}

func TestSupervise(t *testing.T) {
	t.Parallel()

	binDir, err := FindBinaries()
	require.NoError(t, err)

	type testBundle struct {
		dir     string
		log     *logRecorder
		cluster *Cluster
	}

	// start starts (or attaches to) a supervised cluster in dir whose log is
	// recorded, and stops it when the test ends.
	start := func(t *testing.T, dir string) (*Cluster, *logRecorder) {
		t.Helper()
		log := newLogRecorder()
		c, err := Start(ctxWithTimeout(t), Options{Dir: dir, Settings: killSettings, Logger: slog.New(log), Supervise: true})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, c.Stop(ctxWithTimeout(t))) })
		return c, log
	}

	setup := func(t *testing.T) *testBundle {
		t.Helper()
		dir := tempDir(t)
		c, log := start(t, dir)
		require.True(t, c.Owned())
		return &testBundle{dir: dir, log: log, cluster: c}
	}

	t.Run("RestartsPostmasterKilledHard", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		psql(t, binDir, bundle.cluster, "create table kept (v text); insert into kept values ('still here')")

		for round := 1; round <= 2; round++ {
			old := bundle.cluster.PID()
			killHard(t, old) // leaves postmaster.pid and the shared memory of its backends behind
			bundle.log.wait(t, "PostgreSQL is back", round)

			require.NotEqual(t, old, bundle.cluster.PID())
			require.True(t, bundle.cluster.Owned())
			require.Equal(t, "still here", psql(t, binDir, bundle.cluster, "select v from kept"), "round %d", round)
		}
		require.Equal(t, 2, bundle.log.count("PostgreSQL exited unexpectedly; restarting it"))
	})

	t.Run("AttachedStopLeavesOwnerRunning", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		attached, _ := start(t, bundle.dir)
		require.False(t, attached.Owned())
		require.NoError(t, attached.Stop(ctxWithTimeout(t)))

		require.NoError(t, syscall.Kill(bundle.cluster.PID(), 0), "postmaster still running")
		require.Equal(t, "1", psql(t, binDir, bundle.cluster, "select 1"))
		require.Zero(t, bundle.log.count("PostgreSQL exited unexpectedly; restarting it"))
	})

	t.Run("AttachedTakesOverWhenOwnerStops", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		psql(t, binDir, bundle.cluster, "create table kept (v text); insert into kept values ('still here')")
		attached, attachedLog := start(t, bundle.dir)
		require.False(t, attached.Owned())
		dsn := attached.DSN("postgres")

		old := bundle.cluster.PID()
		require.NoError(t, bundle.cluster.Stop(ctxWithTimeout(t)))
		attachedLog.wait(t, "PostgreSQL is back", 1)

		require.NotEqual(t, old, attached.PID())
		require.True(t, attached.Owned(), "the attached process owns the replacement")
		require.Equal(t, dsn, attached.DSN("postgres"), "connections find it where they did")
		require.Equal(t, "still here", psql(t, binDir, attached, "select v from kept"))

		// Now the owner, its Stop shuts the replacement down.
		pid := attached.PID()
		require.NoError(t, attached.Stop(ctxWithTimeout(t)))
		requireGone(t, bundle.dir, pid)
	})

	t.Run("StopWhileRestartWaitsForLock", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		// Another process launching the cluster holds the lock, so the
		// restart blocks there until Stop abandons it.
		unlock, err := lockFile(ctxWithTimeout(t), bundle.dir+".lock")
		require.NoError(t, err)
		defer unlock()
		old := bundle.cluster.PID()
		killHard(t, old)
		bundle.log.wait(t, "restarting PostgreSQL", 1)

		require.NoError(t, bundle.cluster.Stop(ctxWithTimeout(t)))
		unlock()
		requireGone(t, bundle.dir, old)
		require.Zero(t, bundle.log.count("PostgreSQL is back"))
		c := startCluster(t, bundle.dir) // the lock is free, the stale pid file is no obstacle
		require.True(t, c.Owned())
	})

	t.Run("StopDuringRestartLeavesNothingRunning", func(t *testing.T) {
		t.Parallel()
		dir := tempDir(t)

		// Stop lands at a different point of the restart each round; it must
		// leave no postmaster behind in any case.
		points := []struct {
			name    string
			reached func(t *testing.T, log *logRecorder, dir string, old int)
		}{
			{"BeforeLaunch", func(t *testing.T, log *logRecorder, _ string, _ int) { log.wait(t, "restarting PostgreSQL", 1) }},
			{"BeforeSpawn", func(t *testing.T, log *logRecorder, _ string, _ int) { log.wait(t, "starting PostgreSQL", 2) }}, // the first was Start's
			{"WhileStarting", func(t *testing.T, _ *logRecorder, dir string, old int) {
				require.Eventually(t, func() bool { _, ok := pidFileOf(t, dir, old); return ok }, waitDeadline, time.Millisecond, "postgres wrote its pid file")
			}},
			{"OnceBack", func(t *testing.T, log *logRecorder, _ string, _ int) { log.wait(t, "PostgreSQL is back", 1) }},
		}
		for _, point := range points {
			c, log := start(t, dir)
			require.True(t, c.Owned(), point.name)
			old := c.PID()
			killHard(t, old)
			point.reached(t, log, dir, old)

			require.NoError(t, c.Stop(ctxWithTimeout(t)), point.name)
			requireGone(t, dir, c.PID())
			if pid, ok := pidFileOf(t, dir, 0); ok {
				require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "%s: postmaster %d in the pid file still runs", point.name, pid)
			}
		}
	})

	t.Run("RestartRefusesAVanishedFolder", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		// The lock keeps the restart from looking before the folder is gone.
		unlock, err := lockFile(ctxWithTimeout(t), bundle.dir+".lock")
		require.NoError(t, err)
		killHard(t, bundle.cluster.PID())
		require.NoError(t, os.Remove(filepath.Join(bundle.dir, "PG_VERSION")))
		unlock()
		bundle.log.wait(t, "PostgreSQL keeps failing to restart: the API answers 503 until it is back; fix the cause in its log, it is retried meanwhile", 1)

		require.Equal(t, 1, bundle.log.count("creating PostgreSQL cluster"), "no empty cluster replaces the lost one")
		require.Contains(t, bundle.log.errorText(), "no longer holds a cluster")
	})
}

// killHard kills pid with SIGKILL, as the OOM killer or `kill -9` would.
func killHard(t *testing.T, pid int) {
	t.Helper()
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
}

// requireGone checks that postmaster pid is dead and that no live postmaster
// is recorded in dir.
func requireGone(t *testing.T, dir string, pid int) {
	t.Helper()
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "postmaster %d still running", pid)
	if other, ok := pidFileOf(t, dir, 0); ok {
		require.ErrorIs(t, syscall.Kill(other, 0), syscall.ESRCH, "postmaster %d in the pid file still running", other)
	}
}

// pidFileOf returns the pid in dir/postmaster.pid when there is one other
// than except.
func pidFileOf(t *testing.T, dir string, except int) (int, bool) {
	t.Helper()
	pf, err := readPidFile(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false
	}
	require.NoError(t, err)
	return pf.pid, pf.pid != 0 && pf.pid != except
}

// logRecorder is a slog.Handler that keeps every record, so that a test can
// wait for a message instead of sleeping.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
	changed chan struct{} // closed, and replaced, on every record
}

func newLogRecorder() *logRecorder { return &logRecorder{changed: make(chan struct{})} }

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec.Clone())
	close(r.changed)
	r.changed = make(chan struct{})
	return nil
}

func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

// snapshot returns the count of msg so far and a channel closed on the next record.
func (r *logRecorder) snapshot(msg string) (int, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.records {
		if rec.Message == msg {
			n++
		}
	}
	return n, r.changed
}

// count returns how many times msg was logged.
func (r *logRecorder) count(msg string) int {
	n, _ := r.snapshot(msg)
	return n
}

// logged returns a channel closed once msg has been logged.
func (r *logRecorder) logged(msg string) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		for {
			n, changed := r.snapshot(msg)
			if n > 0 {
				return
			}
			<-changed
		}
	}()
	return ch
}

// wait waits until msg has been logged n times.
func (r *logRecorder) wait(t *testing.T, msg string, n int) {
	t.Helper()
	deadline := time.NewTimer(waitDeadline)
	defer deadline.Stop()
	for {
		got, changed := r.snapshot(msg)
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("%q was logged %d times, not %d, within %s; log:\n%s", msg, got, n, waitDeadline, r.text())
		}
	}
}

// errorText returns the error attributes of every record.
func (r *logRecorder) errorText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out string
	for _, rec := range r.records {
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "error" {
				out += a.Value.String() + "\n"
			}
			return true
		})
	}
	return out
}

// text renders every record for a failure message.
func (r *logRecorder) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	lines := make([]string, 0, len(r.records))
	for _, rec := range r.records {
		line := rec.Level.String() + " " + rec.Message
		rec.Attrs(func(a slog.Attr) bool {
			line += fmt.Sprintf(" %s=%v", a.Key, a.Value)
			return true
		})
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}
