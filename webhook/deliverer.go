package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"fleetgraph/db"
)

// Config shapes a Deliverer.
type Config struct {
	DB    *bun.DB
	Store *db.Webhooks
	// Client sends the deliveries (default NewClient with Timeout).
	Client *http.Client
	// Workers is how many deliveries are in flight at most (default 16).
	Workers int
	// Timeout bounds one attempt (default 10 s).
	Timeout time.Duration
	// Now is the clock the attempts' times come from (default time.Now);
	// the maintenance runner's clock.
	Now func() time.Time
	Log *slog.Logger
}

// Deliverer sends due deliveries on a bounded pool of workers. Its Run is
// a maintenance task: each round claims as many due deliveries as there
// are free workers and starts them, without waiting for them, so that a
// slow receiver holds one worker (for at most Timeout) and never the task
// or the other workers. A worker that finishes claims the next due
// delivery itself, until none is due, so a burst drains at full
// concurrency rather than one batch per maintenance tick.
//
// Workers are shared fairly between tenants: a tenant holds at most a
// share of them (a quarter, at least one) while another tenant has a
// delivery due, and more only while a share of the workers stays free
// beside it. So a tenant whose receivers hang, or who queues thousands of
// deliveries, leaves the others a share of the workers: the oldest due
// delivery of a tenant under its share goes first. Whether another tenant
// has a delivery due is asked again at each round (Run) and otherwise at
// most once a second (soloFor) while one tenant is at its share.
type Deliverer struct {
	cfg   Config
	slots chan struct{}
	wg    sync.WaitGroup
	// running serialises Run: the runner's rounds and wake-ups by NOTIFY
	// share the free slots.
	running sync.Mutex

	share    int
	mu       sync.Mutex
	inflight map[uuid.UUID]int // deliveries in flight per tenant
	// looking counts claimFair's claims under way; settled is signalled
	// (on mu) when one ends or a delivery does.
	looking int
	settled *sync.Cond
	// soloUntil: until then, no tenant under its share had a delivery due.
	soloUntil time.Time
}

// soloFor is how long a claim that found no tenant under its share with a
// delivery due trusts that before asking again.
const soloFor = time.Second

// NewDeliverer returns a deliverer.
func NewDeliverer(cfg Config) *Deliverer {
	if cfg.Workers <= 0 {
		cfg.Workers = 16
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = NewClient(ClientConfig{Timeout: cfg.Timeout})
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	d := &Deliverer{cfg: cfg, slots: make(chan struct{}, cfg.Workers), share: max(1, cfg.Workers/4), inflight: map[uuid.UUID]int{}}
	d.settled = sync.NewCond(&d.mu)
	return d
}

// lease is how long a claimed delivery stays its sender's: well past an
// attempt's timeout, so that only a sender that died loses it.
func (d *Deliverer) lease() time.Duration { return 3*d.cfg.Timeout + time.Minute }

// Run claims the deliveries due at now, up to the free workers, and
// starts sending them. It returns once they are started.
func (d *Deliverer) Run(ctx context.Context, now time.Time) error {
	d.running.Lock()
	defer d.running.Unlock()
	// A round comes with new deliveries (a notification) or a tick: ask
	// again whether a tenant under its share has one due.
	d.mu.Lock()
	d.soloUntil = time.Time{}
	d.mu.Unlock()
	for free := cap(d.slots) - len(d.slots); free > 0; free-- {
		dd, err := d.claim(ctx, now, free-1)
		if err != nil || dd == nil {
			return err
		}
		d.slots <- struct{}{} // never blocks: only Run takes slots, one Run at a time, and no more than were free
		d.wg.Go(func() {
			defer func() { <-d.slots }()
			for claimedAt := now; dd != nil; {
				d.deliver(ctx, dd, claimedAt)
				d.done(dd)
				if dd, claimedAt = d.next(ctx); dd == nil {
					return
				}
			}
		})
	}
	return nil
}

// next claims one more due delivery for a worker that is done with its
// last, or returns nil when none is due (or ctx ended).
func (d *Deliverer) next(ctx context.Context) (*db.DueDelivery, time.Time) {
	if ctx.Err() != nil {
		return nil, time.Time{}
	}
	now := d.cfg.Now()
	dd, err := d.claim(ctx, now, cap(d.slots)-len(d.slots))
	if err != nil {
		if ctx.Err() == nil {
			d.cfg.Log.Error("claiming the next webhook delivery", "error", err)
		}
		return nil, time.Time{}
	}
	return dd, now
}

// claim leases the next delivery a worker should send, or nil: the oldest
// due one of a tenant under its share, else (when spare workers would
// stay free beside it, at least a share) the oldest due one of any tenant.
func (d *Deliverer) claim(ctx context.Context, now time.Time, spare int) (*db.DueDelivery, error) {
	dd, anyFull, err := d.claimFair(ctx, now)
	if err != nil || dd != nil || !anyFull || spare < d.share {
		return dd, err
	}
	// Every tenant with a delivery due is at its share (or was, within
	// soloFor): the oldest of any tenant's. These claims run side by
	// side; spare counts the workers' slots, which they do not change.
	due, err := d.cfg.Store.ClaimDue(ctx, d.cfg.DB, now, 1, d.lease())
	if err != nil || len(due) == 0 {
		return nil, err
	}
	d.count(due[0])
	return due[0], nil
}

// claimFair claims the oldest due delivery of a tenant under its share,
// and reports whether some tenant is at its share. Such claims run side
// by side only as far as no tenant could pass its share if they all went
// to it (the most a tenant under its share holds, plus the claims under
// way, stays within the share); beyond that a claim waits for one to end,
// or, when some tenant is at its share, goes on to claim's second step.
func (d *Deliverer) claimFair(ctx context.Context, now time.Time) (*db.DueDelivery, bool, error) {
	d.mu.Lock()
	var full []uuid.UUID
	for {
		full = full[:0]
		most := 0 // held by a tenant under its share
		for tenant, n := range d.inflight {
			if n >= d.share {
				full = append(full, tenant)
			} else {
				most = max(most, n)
			}
		}
		if len(full) > 0 && now.Before(d.soloUntil) {
			d.mu.Unlock()
			return nil, true, nil
		}
		if most+d.looking < d.share {
			break
		}
		if len(full) > 0 {
			d.mu.Unlock()
			return nil, true, nil
		}
		d.settled.Wait()
	}
	d.looking++
	d.mu.Unlock()

	due, err := d.cfg.Store.ClaimDue(ctx, d.cfg.DB, now, 1, d.lease(), full...)

	d.mu.Lock()
	defer d.mu.Unlock()
	d.looking--
	d.settled.Broadcast()
	if err != nil {
		return nil, false, err
	}
	if len(due) == 0 {
		if len(full) > 0 {
			d.soloUntil = now.Add(soloFor)
		}
		return nil, len(full) > 0, nil
	}
	d.inflight[due[0].TenantID]++
	return due[0], len(full) > 0, nil
}

// count counts dd's delivery as in flight.
func (d *Deliverer) count(dd *db.DueDelivery) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inflight[dd.TenantID]++
}

// done counts dd's delivery as no longer in flight.
func (d *Deliverer) done(dd *db.DueDelivery) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.inflight[dd.TenantID]--; d.inflight[dd.TenantID] <= 0 {
		delete(d.inflight, dd.TenantID)
	}
	d.settled.Broadcast()
}

// Wait waits for the deliveries in flight.
func (d *Deliverer) Wait() { d.wg.Wait() }

// recordTimeout bounds the recording of an attempt, or the giving back of
// a claim, once the deliverer's context has ended (shutdown).
const recordTimeout = 5 * time.Second

// answeredRecordTimeout bounds the recording of an answered attempt while
// the deliverer runs: past it the record is lost and the delivery is sent
// again once its lease runs out.
const answeredRecordTimeout = 30 * time.Second

// deliver makes one attempt at dd and records it. An attempt that got an
// answer is recorded even when ctx ends meanwhile (shutdown while the
// answer is read, or after): the receiver has the event, and given back,
// the delivery would be sent again by whichever process leads next,
// though only a sender that died may send one twice. When ctx ends before
// an answer came, the attempt is not recorded: the claim is given back,
// its attempt uncounted, so that the next leader sends it again at once
// and the retry schedule loses no step. (After a crash the lease runs out
// instead, and that attempt counts.)
func (d *Deliverer) deliver(ctx context.Context, dd *db.DueDelivery, claimedAt time.Time) {
	res := d.send(ctx, dd)
	answered := res.Attempt.StatusCode != nil
	if !answered && ctx.Err() != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
		defer cancel()
		if err := d.cfg.Store.ReleaseClaim(rctx, d.cfg.DB, dd); err != nil {
			d.cfg.Log.Warn("giving back a webhook delivery cut short", "delivery", dd.ID, "error", err)
		}
		return
	}
	if answered {
		// Not cut short by a shutdown from here on: the answer is the
		// receiver's, and must not be lost. While the deliverer runs, a
		// slow database gets answeredRecordTimeout; once it is stopping
		// (now or while the record runs), recordTimeout more at most.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), answeredRecordTimeout)
		defer cancel()
		stop := context.AfterFunc(ctx, func() { time.AfterFunc(recordTimeout, cancel) })
		defer stop()
		ctx = rctx
	}
	if err := d.cfg.Store.RecordAttempt(ctx, d.cfg.DB, dd, claimedAt, res); err != nil {
		d.cfg.Log.Error("recording a webhook attempt", "delivery", dd.ID, "error", err)
	}
}

// send posts dd once, reading at most db.MaxAttemptBody bytes of the answer.
func (d *Deliverer) send(ctx context.Context, dd *db.DueDelivery) db.AttemptResult {
	now := d.cfg.Now()
	res := db.AttemptResult{Attempt: db.WebhookAttempt{At: now}}
	fail := func(err error) db.AttemptResult {
		msg := err.Error()
		res.Attempt.Error = &msg
		return res
	}
	body, err := EncodeBody(dd.EventType, dd.EventAt, dd.EventData)
	if err != nil {
		return fail(err)
	}
	id := dd.EventID.String()
	sig, err := Sign(dd.Secrets(now), id, now, body)
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, dd.URL, bytes.NewReader(body))
	if err != nil {
		return fail(fmt.Errorf("building the request: %w", err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Fleetgraph-Webhooks/1")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", fmt.Sprint(now.Unix()))
	req.Header.Set("webhook-signature", sig)
	started := time.Now()
	resp, err := d.cfg.Client.Do(req)
	if err != nil {
		res.Attempt.DurationMs = int(time.Since(started).Milliseconds())
		if errors.Is(err, context.DeadlineExceeded) {
			return fail(fmt.Errorf("no answer within %s", d.cfg.Timeout))
		}
		// The tenant reads the kind of failure; the operator, the whole
		// error but the URL, whose path or query may hold the tenant's
		// token (the delivery names the endpoint).
		logged := err
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			logged = ue.Err
		}
		d.cfg.Log.Info("webhook attempt got no answer", "delivery", dd.ID, "error", logged)
		return fail(errors.New(Describe(err)))
	}
	defer resp.Body.Close()
	// The rest of a long answer is never read: closing the body drops the
	// connection.
	head, readErr := io.ReadAll(io.LimitReader(resp.Body, db.MaxAttemptBody))
	res.Attempt.DurationMs = int(time.Since(started).Milliseconds())
	code := resp.StatusCode
	res.Attempt.StatusCode = &code
	res.Gone = code == http.StatusGone
	if len(head) > 0 {
		s := string(head)
		res.Attempt.ResponseBody = &s
	}
	if readErr != nil && !res.Succeeded() {
		d.cfg.Log.Info("webhook answer cut short", "delivery", dd.ID, "error", readErr)
		msg := "reading the answer: " + Describe(readErr)
		res.Attempt.Error = &msg
	}
	return res
}
