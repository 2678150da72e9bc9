package localpg

import (
	"context"
	"path/filepath"
	"time"
)

const (
	// firstRestartDelay is the wait before the first attempt to bring a
	// dead postmaster back; it doubles after every attempt up to
	// maxRestartDelay. The short first wait lets the backends of a killed
	// postmaster exit: PostgreSQL refuses to start while they still hold its
	// shared memory, and the next attempt then succeeds.
	firstRestartDelay = 100 * time.Millisecond
	maxRestartDelay   = 5 * time.Second
	// stableAfter is how long a postmaster must have run for its death to
	// count as a new incident, restarting the backoff from firstRestartDelay;
	// one that keeps dying sooner waits longer each time.
	stableAfter = time.Minute
	// loudAfter is the number of failed attempts after which every further
	// failure is logged as an error saying the cluster keeps failing.
	loudAfter = 5
	// watchInterval is how often a process that attached to another's
	// postmaster checks that it is still alive.
	watchInterval = 250 * time.Millisecond
)

// supervise keeps the cluster running until ctx ends (Stop cancels it). It
// waits for the current postmaster to go away, then launches the cluster
// again, with backoff, until a postmaster (started here, or by another
// process that got there first) accepts connections.
//
// Only supervise replaces c.pm after Start, and Stop reads it only once
// supervise has returned, so a restart cannot race with shutdown: a start in
// progress when ctx ends is abandoned and shut down by startPostmaster, and
// one that completed is in c.pm for Stop to shut down.
func (c *Cluster) supervise(ctx context.Context) {
	defer close(c.supervised)
	logPath := filepath.Join(c.dir, "postgres.log")
	// delay is the wait before the next attempt. Every attempt doubles it,
	// a successful one included, so that a postmaster that dies again soon
	// after each restart is restarted less and less often; a minute of
	// service resets it.
	delay := firstRestartDelay
	for {
		pm := c.current()
		upSince := time.Now()
		if !c.waitGone(ctx, pm) {
			return
		}
		if time.Since(upSince) >= stableAfter {
			delay = firstRestartDelay
		}
		if pm.proc != nil {
			c.logger.Error("PostgreSQL exited unexpectedly; restarting it", "dir", c.dir, "pid", pm.pid, "status", exitStatus(pm.waitErr), "log", logPath)
		} else {
			c.logger.Warn("the PostgreSQL this process attached to has stopped (its server exited or it crashed); starting it here", "dir", c.dir, "pid", pm.pid)
		}
		for attempt := 1; ; attempt++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, maxRestartDelay)
			c.logger.Info("restarting PostgreSQL", "dir", c.dir, "attempt", attempt)
			next, err := c.launch(ctx, false)
			if err == nil {
				c.mu.Lock()
				c.pm = next
				c.mu.Unlock()
				c.logger.Info("PostgreSQL is back", "dir", c.dir, "pid", next.pid, "owned", next.proc != nil, "attempts", attempt)
				break
			}
			if ctx.Err() != nil {
				return
			}
			if attempt < loudAfter {
				c.logger.Warn("restarting PostgreSQL failed; retrying", "dir", c.dir, "attempt", attempt, "retry_in", delay, "error", err)
			} else {
				c.logger.Error("PostgreSQL keeps failing to restart: the API answers 503 until it is back; fix the cause in its log, it is retried meanwhile",
					"dir", c.dir, "attempt", attempt, "retry_in", delay, "log", logPath, "error", err)
			}
		}
	}
}

// waitGone waits until pm has exited and reports true, or false once ctx
// ends. A postmaster this process started is reaped by its own goroutine;
// one it attached to is watched by its pid.
func (c *Cluster) waitGone(ctx context.Context, pm *postmaster) bool {
	if pm.proc != nil {
		select {
		case <-pm.exited:
			return true
		case <-ctx.Done():
			return false
		}
	}
	ticker := time.NewTicker(watchInterval)
	defer ticker.Stop()
	for {
		if postmasterState(pm.pid, c.dir) != pidRunning {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-ticker.C:
		}
	}
}

// exitStatus describes how a postmaster this process started ended.
func exitStatus(waitErr error) string {
	if waitErr == nil {
		return "exit status 0"
	}
	return waitErr.Error()
}
