// Package dispatch hands jobs to robots that ask for work. A claim that
// finds nothing can wait: it sleeps until a job is queued in the robot's
// tenant (a NOTIFY, delivered through the realtime listener) or a polling
// fallback fires (for jobs whose run-after passes, or notifications lost in
// a reconnect), and tries again, until the robot's wait is over.
//
// Waiting is cheap by construction. A waiting claim holds no database
// connection: it sleeps on channels, and takes a connection only for the
// one short transaction of each attempt. A robot's claims take turns (its
// claim transactions would queue on its row lock in PostgreSQL anyway, each
// holding a pooled connection while it queued), so one robot's claims use at
// most one connection of a process at a time. Attempts of woken claims,
// across all robots, are bounded by Config.WakeAttempts, so a burst of
// notifications or polls cannot drain the pool. And a robot may have at
// most as many claims waiting as it has free slots: a claim beyond them is
// refused (RATE_LIMITED, reason WAIT_LIMIT) instead of waiting for a job it
// could not take.
package dispatch

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/fault"
	"fleetgraph/metrics"
	"fleetgraph/realtime"
)

// MaxWaitSeconds is the largest waitSeconds a claim may ask for. The
// dispatcher waits at most Config.MaxWait, which may be shorter.
const MaxWaitSeconds = 60

// ReasonWaitLimit is the extensions.reason of a waiting claim refused
// because the robot already waits in as many claims as it has free slots.
const ReasonWaitLimit = "WAIT_LIMIT"

// DefaultWakeAttempts is how many claim attempts of woken claims may run at
// once in a process by default: a few connections of the pool (25), so that
// every other request still finds one.
const DefaultWakeAttempts = 4

// WaitWithin is the longest a claim may wait on a server whose responses
// must be written within writeTimeout: three quarters of it (at most
// MaxWaitSeconds), leaving the rest for the attempt and the response, so a
// claim that waits its longest answers null instead of being cut off.
func WaitWithin(writeTimeout time.Duration) time.Duration {
	return min(MaxWaitSeconds*time.Second, writeTimeout*3/4)
}

// wakeBuffer is how many notifications a waiting claim's subscription holds.
// Every tenant's notifications reach every waiting claim, and the listener
// drops what a full buffer cannot take, the claim's own tenant's included;
// a claim whose subscription overflowed therefore re-claims as if woken.
const wakeBuffer = 16

// Config tunes a dispatcher; zero fields take their defaults.
type Config struct {
	// Poll is the mean interval of a waiting claim's polling fallback
	// (default: a second); each wait polls at a random interval of 0.5-1.5
	// times it, so waits that began together do not poll together.
	Poll time.Duration
	// MaxWait caps every wait (default: WaitWithin of a 60 s write timeout).
	MaxWait time.Duration
	// WakeAttempts bounds the attempts of woken claims that run at once
	// (default: DefaultWakeAttempts).
	WakeAttempts int
}

// Dispatcher serves claims.
type Dispatcher struct {
	// Metrics records how long claims that may wait took (nil: off).
	Metrics *metrics.Metrics

	db       bun.IDB
	jobs     *db.Jobs
	listener *realtime.Listener
	cfg      Config
	// wakes holds a token for each attempt of a woken claim in flight.
	wakes chan struct{}

	mu     sync.Mutex
	robots map[uuid.UUID]*robotClaims // robots with claims in flight

	// drained ends when Drain is called, and with it every wait.
	drained context.Context
	drain   context.CancelFunc
}

// robotClaims is what the dispatcher knows of one robot's claims in flight.
type robotClaims struct {
	// turn is held (a token in it) by the robot's claim attempt in flight.
	turn chan struct{}
	// waiting counts the robot's claims that wait; guarded by
	// Dispatcher.mu, and raised only by a claim that holds turn.
	waiting int
	// claims counts the robot's claims in flight, so the entry can go
	// when the last one ends; guarded by Dispatcher.mu.
	claims int
}

// New returns a dispatcher that claims through jobs on bdb and wakes
// waiting claims through listener.
func New(bdb bun.IDB, jobs *db.Jobs, listener *realtime.Listener, cfg Config) *Dispatcher {
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = WaitWithin(60 * time.Second)
	}
	if cfg.WakeAttempts <= 0 {
		cfg.WakeAttempts = DefaultWakeAttempts
	}
	drained, drain := context.WithCancel(context.Background())
	return &Dispatcher{
		db: bdb, jobs: jobs, listener: listener, cfg: cfg,
		wakes:   make(chan struct{}, cfg.WakeAttempts),
		robots:  map[uuid.UUID]*robotClaims{},
		drained: drained, drain: drain,
	}
}

// Drain ends every waiting claim with no job and makes later claims try
// once without waiting, so that a shutting-down server is not held by
// robots waiting for work (they ask again, of another replica).
func (d *Dispatcher) Drain() { d.drain() }

// MaxWait is the longest this dispatcher lets a claim wait.
func (d *Dispatcher) MaxWait() time.Duration { return d.cfg.MaxWait }

// Claim returns the best job for the calling robot, waiting up to wait (cut
// to MaxWait) for one to be queued; nil when none came. A waiting claim
// beyond the robot's free slots is refused with RATE_LIMITED.
func (d *Dispatcher) Claim(ctx context.Context, wait time.Duration) (*db.JobLease, error) {
	leases, err := d.ClaimMany(ctx, 1, wait)
	if err != nil || len(leases) == 0 {
		return nil, err
	}
	return leases[0], nil
}

// ClaimMany leases up to limit of the best jobs for the calling robot, within
// its free slots, waiting up to wait (cut to MaxWait) until at least one can
// be leased; then it returns what that attempt leased (none when none came).
// A waiting batch counts as one waiting claim: it is refused, as Claim is,
// when the robot already waits in as many claims as it has free slots.
func (d *Dispatcher) ClaimMany(ctx context.Context, limit int, wait time.Duration) (leases []*db.JobLease, err error) {
	defer func(start time.Time) { d.Metrics.ClaimReturned(wait, start, len(leases) > 0, err) }(time.Now())
	if wait < 0 || wait > MaxWaitSeconds*time.Second {
		return nil, fault.Invalid("waitSeconds", "waitSeconds must be between 0 and %d", MaxWaitSeconds)
	}
	if err := db.CheckClaimLimit(limit); err != nil {
		return nil, err
	}
	wait = min(wait, d.cfg.MaxWait)
	p := auth.FromContext(ctx)
	if p == nil || p.RobotID == uuid.Nil {
		return d.jobs.ClaimMany(ctx, d.db, limit) // refuses the caller as the store does
	}
	if !p.ExpiresAt.IsZero() {
		// A key that expires while its claim waits leases nothing after
		// (the claim's statement checks the key too, see db.Jobs.ClaimMany):
		// the wait ends then.
		wait = min(wait, max(0, time.Until(p.ExpiresAt)))
	}
	rc := d.enter(p.RobotID)
	defer d.leave(p.RobotID, rc)

	leases, waiting, err := d.firstAttempt(ctx, rc, limit, wait > 0)
	if !waiting {
		return leases, err
	}
	defer func() {
		if len(leases) == 0 {
			d.mu.Lock()
			rc.waiting--
			d.mu.Unlock()
		}
	}()
	sub := d.listener.Subscribe(db.JobQueuedChannel, wakeBuffer)
	defer sub.Close()
	tenant := p.TenantID.String()
	// The wait ends at its deadline, at a drain, or with the request. Its
	// answer must be written by then (WaitWithin), so no attempt begins
	// after it: a job leased then could reach no robot, and would sit
	// CLAIMED until its lease expired.
	waitCtx, endWait := context.WithTimeout(ctx, wait)
	defer endWait()
	stopDrain := context.AfterFunc(d.drained, endWait)
	defer stopDrain()
	poll := time.NewTimer(d.pollInterval())
	defer poll.Stop()
	park := ParkingOf(ctx)
	// Subscribing after the first attempt leaves a gap in which a job could
	// have been queued unnoticed: the loop's first round closes it.
	for {
		leases, err = d.wokenAttempt(ctx, waitCtx, rc, limit)
		if len(leases) > 0 || err != nil || waitCtx.Err() != nil {
			return leases, err
		}
		park.Park()
	wake:
		for {
			select {
			case <-waitCtx.Done():
				park.Leave()
				return nil, nil
			case <-poll.C:
				poll.Reset(d.pollInterval())
				break wake
			case n := <-sub.C:
				// An overflow may have dropped the tenant's notification.
				if sub.TakeOverflow() || n.Reconnected || n.Payload == tenant {
					break wake
				}
			}
		}
		// Woken: a turn again, taken within the wait, which may have
		// ended while the claim queued for it behind busy turns.
		if !park.Wake(waitCtx) || waitCtx.Err() != nil {
			return nil, nil
		}
	}
}

// firstAttempt claims once in the robot's turn. When nothing came and the
// claim means to wait, it counts the claim as waiting (and says so) if the
// robot has a free slot for it, and refuses it otherwise.
func (d *Dispatcher) firstAttempt(ctx context.Context, rc *robotClaims, limit int, waits bool) ([]*db.JobLease, bool, error) {
	if !rc.take(ctx) {
		return nil, false, nil
	}
	defer rc.give()
	leases, err := d.jobs.ClaimMany(ctx, d.db, limit)
	if len(leases) > 0 || err != nil || !waits {
		return leases, false, err
	}
	free, err := d.jobs.FreeSlots(ctx, d.db)
	if err != nil {
		return nil, false, fmt.Errorf("counting the robot's free slots: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if rc.waiting >= free {
		return nil, false, waitLimit(rc.waiting, free)
	}
	rc.waiting++
	return nil, true, nil
}

// wokenAttempt claims once for a waiting claim, in the robot's turn and
// within the process's bound on woken attempts; it waits for those only
// until the claim's wait ends, and then claims nothing. The claim itself
// runs in ctx: cut short by the wait's end, a commit could succeed unseen.
// A claim that gets a job stops counting as waiting before the turn passes
// on, so the next claim of the robot counts the job as held and the claim
// as gone at once.
func (d *Dispatcher) wokenAttempt(ctx, wait context.Context, rc *robotClaims, limit int) ([]*db.JobLease, error) {
	if !rc.take(wait) {
		return nil, nil
	}
	defer rc.give()
	select {
	case d.wakes <- struct{}{}:
	case <-wait.Done():
		return nil, nil
	}
	defer func() { <-d.wakes }()
	if wait.Err() != nil {
		return nil, nil // both were ready, and select chose the slot
	}
	leases, err := d.jobs.ClaimMany(ctx, d.db, limit)
	if len(leases) > 0 {
		d.mu.Lock()
		rc.waiting--
		d.mu.Unlock()
	}
	return leases, err
}

// waitLimit is the refusal of a waiting claim beyond the robot's free slots.
func waitLimit(waiting, free int) error {
	msg := fmt.Sprintf("this robot already waits in %d claims, one for each of its free slots: let one return before asking again, or claim with waitSeconds: 0", waiting)
	if free == 0 {
		msg = "this robot holds as many jobs as it may (maxConcurrentJobs): finish or fail one before waiting for another, or claim with waitSeconds: 0"
	}
	return &fault.Error{Code: fault.RateLimited, Message: msg,
		Extra: map[string]any{"reason": ReasonWaitLimit, "waitingClaims": waiting, "freeSlots": free}}
}

// pollInterval is the next polling delay: Poll, give or take half.
func (d *Dispatcher) pollInterval() time.Duration {
	return d.cfg.Poll/2 + rand.N(d.cfg.Poll+1)
}

// enter registers a claim of robot and returns the robot's entry.
func (d *Dispatcher) enter(robot uuid.UUID) *robotClaims {
	d.mu.Lock()
	defer d.mu.Unlock()
	rc := d.robots[robot]
	if rc == nil {
		rc = &robotClaims{turn: make(chan struct{}, 1)}
		d.robots[robot] = rc
	}
	rc.claims++
	return rc
}

// leave ends a claim of robot, dropping the entry after its last claim.
func (d *Dispatcher) leave(robot uuid.UUID, rc *robotClaims) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rc.claims--; rc.claims == 0 {
		delete(d.robots, robot)
	}
}

// take waits for the robot's turn; false when ctx ended first.
func (rc *robotClaims) take(ctx context.Context) bool {
	select {
	case rc.turn <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// give ends the robot's turn.
func (rc *robotClaims) give() { <-rc.turn }

// Parking is how a waiting claim tells its operation when it works, so
// that the operation holds a turn (and counts as running) only then
// (WithParking). A claim calls Park when it parks, waiting for a job
// without using the CPU, and then either Wake, to try again, or Leave.
type Parking interface {
	// Park says the claim waits for a job.
	Park()
	// Wake says the parked claim was woken to try again; it returns when
	// the claim may, or false if ctx (the claim's wait) ended first.
	Wake(ctx context.Context) bool
	// Leave says the parked claim's wait is over (its deadline, a drain,
	// its client gone): it answers null at once, and needs no turn for
	// that, so at a shutdown parked claims do not queue behind busy turns.
	Leave()
}

type parkingKey struct{}

// WithParking returns ctx with the parking of its operation.
func WithParking(ctx context.Context, p Parking) context.Context {
	return context.WithValue(ctx, parkingKey{}, p)
}

// ParkingOf returns ctx's parking (WithParking), or one that does nothing.
func ParkingOf(ctx context.Context) Parking {
	if p, ok := ctx.Value(parkingKey{}).(Parking); ok {
		return p
	}
	return noParking{}
}

// noParking is the parking of a claim outside an operation.
type noParking struct{}

func (noParking) Park()                     {}
func (noParking) Wake(context.Context) bool { return true }
func (noParking) Leave()                    {}
