// Package dispatch hands jobs to robots that ask for work. A claim that
// finds nothing can wait: it sleeps until a job is queued in the robot's
// tenant (a NOTIFY, delivered through the realtime listener) or a polling
// fallback fires (for jobs whose run-after passes, or notifications lost in
// a reconnect), and tries again, until the robot's wait is over.
package dispatch

import (
	"context"
	"sync"
	"time"

	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/fault"
	"fleetgraph/realtime"
)

// MaxWait is the longest a claim may wait.
const MaxWait = 60 * time.Second

// wakeBuffer is how many notifications a waiting claim's subscription holds.
// Every tenant's notifications reach every waiting claim, and the listener
// drops what a full buffer cannot take, the claim's own tenant's included;
// a claim whose subscription overflowed therefore re-claims as if woken.
const wakeBuffer = 16

// Dispatcher serves claims.
type Dispatcher struct {
	db       bun.IDB
	jobs     *db.Jobs
	listener *realtime.Listener
	poll     time.Duration

	drainOnce sync.Once
	draining  chan struct{} // closed by Drain
}

// New returns a dispatcher that polls every poll while waiting.
func New(bdb bun.IDB, jobs *db.Jobs, listener *realtime.Listener, poll time.Duration) *Dispatcher {
	return &Dispatcher{db: bdb, jobs: jobs, listener: listener, poll: poll, draining: make(chan struct{})}
}

// Drain ends every waiting claim with no job and makes later claims try
// once without waiting, so that a shutting-down server is not held by
// robots waiting for work (they ask again, of another replica).
func (d *Dispatcher) Drain() { d.drainOnce.Do(func() { close(d.draining) }) }

// Claim returns the best job for the calling robot, waiting up to wait for
// one to be queued; nil when none came.
func (d *Dispatcher) Claim(ctx context.Context, wait time.Duration) (*db.JobLease, error) {
	if wait < 0 || wait > MaxWait {
		return nil, fault.Invalid("waitSeconds", "waitSeconds must be between 0 and %d", int(MaxWait.Seconds()))
	}
	lease, err := d.jobs.Claim(ctx, d.db)
	if lease != nil || err != nil || wait == 0 {
		return lease, err
	}
	sub := d.listener.Subscribe(db.JobQueuedChannel, wakeBuffer)
	defer sub.Close()
	tenant := auth.FromContext(ctx).TenantID.String()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	poll := time.NewTicker(d.poll)
	defer poll.Stop()
	// Subscribing after the first attempt leaves a gap in which a job could
	// have been queued unnoticed: the loop's first round closes it.
	for {
		lease, err := d.jobs.Claim(ctx, d.db)
		if lease != nil || err != nil {
			return lease, err
		}
	wake:
		for {
			select {
			case <-ctx.Done():
				return nil, nil
			case <-d.draining:
				return nil, nil
			case <-deadline.C:
				return nil, nil
			case <-poll.C:
				break wake
			case n := <-sub.C:
				// An overflow may have dropped the tenant's notification.
				if sub.TakeOverflow() || n.Reconnected || n.Payload == tenant {
					break wake
				}
			}
		}
	}
}
