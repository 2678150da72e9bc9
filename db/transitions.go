package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/lib/pq"
	"github.com/uptrace/bun"

	"fleetgraph/fault"
)

// This file is the one place where jobs change state: claim, start,
// progress, complete, fail, cancel, retry, rescue, and the release of a
// deleted robot's jobs. Each is a single conditional UPDATE ... RETURNING
// run through transition, which writes the webhook events of the change to
// the outbox in the same transaction. The revision and updated_at that feed
// subscribers are bumped by the jobs_revision trigger, never by a statement.

// jobStatement is an UPDATE of jobs (alias j) returning the changed rows:
// a bun update or raw query.
type jobStatement interface {
	Scan(ctx context.Context, dest ...any) error
}

// jobEventOf names the webhook event of a job that a transition left in
// status, or "" when there is none. No transition moves a job from one
// final state to another, so a final state returned by a transition was
// just entered.
func jobEventOf(status JobStatus) string {
	switch status {
	case JobCompleted:
		return EventJobCompleted
	case JobFailed:
		return EventJobFailed
	case JobCancelled:
		return EventJobCancelled
	}
	return ""
}

// transition runs stmt, one job state change, in tx and returns the jobs it
// changed (none when its conditions matched no row), after writing to the
// outbox an event for each job it finished.
func transition(ctx context.Context, tx bun.Tx, stmt jobStatement) ([]*Job, error) {
	var rows []*Job
	if err := stmt.Scan(ctx, &rows); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	var events []outboxEvent
	for _, j := range rows {
		if typ := jobEventOf(j.Status); typ != "" {
			events = append(events, outboxEvent{j.TenantID, typ, j.ID, j.UpdatedAt, jobViewOf(j)})
		}
	}
	if err := recordEvents(ctx, tx, events); err != nil {
		return nil, err
	}
	return rows, nil
}

// transitionOne is transition for a statement that changes at most one
// job; it returns nil when it changed none.
func transitionOne(ctx context.Context, tx bun.Tx, stmt jobStatement) (*Job, error) {
	rows, err := transition(ctx, tx, stmt)
	if err != nil || len(rows) == 0 {
		return nil, err
	}
	return rows[0], nil
}

// Cancel cancels a QUEUED, CLAIMED or RUNNING job. The robot holding it
// learns on its next fenced call (CONFLICT, reason JOB_CANCELLED).
func (s *Jobs) Cancel(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Job, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var j *Job
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		j, err = transitionOne(ctx, tx, inTenant(sc, tx.NewUpdate().Model((*Job)(nil)).Where("j.id = ?", id), "j").
			Where("j.status IN (?)", bun.List([]JobStatus{JobQueued, JobClaimed, JobRunning})).
			Set("status = ?", JobCancelled).Set("finished_at = now()").Set("lease_expires_at = NULL").
			Returning("*"))
		if err != nil {
			return fmt.Errorf("cancelling the job: %w", err)
		}
		if j == nil {
			return s.stateConflict(ctx, tx, sc, id, "cancel")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return j, nil
}

// Retry queues a FAILED or CANCELLED job again with its attempts reset,
// unless it was aimed at a robot since deleted (CONFLICT).
func (s *Jobs) Retry(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Job, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var j *Job
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		j, err = transitionOne(ctx, tx, inTenant(sc, tx.NewUpdate().Model((*Job)(nil)).Where("j.id = ?", id), "j").
			Where("j.status IN (?)", bun.List([]JobStatus{JobFailed, JobCancelled})).Where("NOT j.target_lost").
			// Its target robot held (KEY SHARE) until the retry commits:
			// a deletion of it waits, then cancels the job queued again.
			// Unheld, a retry committed between the deletion's cancelling
			// of the live jobs aimed at it and its marking of the others
			// left the job QUEUED without a target, for any robot to run.
			Where("(j.target_robot_id IS NULL OR EXISTS (SELECT 1 FROM robots AS t WHERE t.id = j.target_robot_id FOR KEY SHARE))").
			Set("status = ?", JobQueued).Set("attempt = 0").Set("error = NULL").Set("result = NULL").
			Set("progress = 0").Set("current_node = NULL").Set("robot_id = NULL").
			Set("lease_expires_at = NULL").Set("run_after = now()"). // the last lease token stays (see explainFence)
			Set("claimed_at = NULL").Set("started_at = NULL").Set("finished_at = NULL").
			Returning("*"))
		if err != nil {
			return fmt.Errorf("retrying the job: %w", err)
		}
		if j == nil {
			var lost bool
			err := inTenant(sc, tx.NewSelect().Model((*Job)(nil)).Column("j.target_lost").Where("j.id = ?", id), "j").Scan(ctx, &lost)
			if err == nil && lost {
				return &fault.Error{Code: fault.Conflict, Message: "the job was aimed at a robot that has been deleted: no other robot may run it; enqueue a new job",
					Extra: map[string]any{"reason": ReasonIllegalTransition}}
			}
			return s.stateConflict(ctx, tx, sc, id, "retry")
		}
		return notifyQueued(ctx, tx, j.TenantID)
	})
	if err != nil {
		return nil, err
	}
	return j, nil
}

// stateConflict explains why a user's transition changed no row.
func (s *Jobs) stateConflict(ctx context.Context, idb bun.IDB, sc scope, id uuid.UUID, action string) error {
	j := new(Job)
	if err := inTenant(sc, idb.NewSelect().Model(j).Where("j.id = ?", id), "j").Scan(ctx); err != nil {
		return notFoundIfNoRows(err, "job")
	}
	return &fault.Error{Code: fault.Conflict, Message: fmt.Sprintf("cannot %s a %s job", action, j.Status),
		Extra: map[string]any{"reason": ReasonIllegalTransition, "currentStatus": string(j.Status)}}
}

// claimSQL picks the best jobs the robot may take and leases them, in one
// statement, each under a lease token of its own. SKIP LOCKED lets
// concurrent claims pass each other instead of queueing on the same rows.
// The count of the robot's jobs runs in this statement, after the robot's
// row was locked, so it sees every claim of the robot committed before.
// Parameters: robot id (×5), tenant, robot capabilities, max slots, lease
// seconds, how many jobs at most.
//
// That last is a constant (see claimLocked), not an expression of the
// robot's free slots: PostgreSQL costs a LIMIT it cannot evaluate as a
// tenth of the rows, which on a queue of 100,000 jobs crossed
// jit_above_cost and spent some 25 ms compiling each claim.
//
// A new attempt starts clean: the last attempt's progress, node and start
// (another robot's, after a retry or a rescue) are not the new holder's.
const claimSQL = `
WITH candidate AS (
	SELECT j.id FROM jobs j
	WHERE j.tenant_id = ?1 AND j.status = 'QUEUED' AND j.run_after <= now()
	  AND j.required_capabilities <@ ?2::text[]
	  AND (j.target_robot_id IS NULL OR j.target_robot_id = ?0) AND NOT j.target_lost
	  AND (j.target_robot_id = ?0
	       OR NOT EXISTS (SELECT 1 FROM workflow_assignments a WHERE a.workflow_id = j.workflow_id)
	       OR EXISTS (SELECT 1 FROM workflow_assignments a WHERE a.workflow_id = j.workflow_id AND a.robot_id = ?0))
	  AND (SELECT count(*) FROM jobs l WHERE l.robot_id = ?0 AND l.status IN ('CLAIMED', 'RUNNING')) < ?3
	ORDER BY j.priority DESC, j.created_at, j.id
	LIMIT ?5
	FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs j SET status = 'CLAIMED', robot_id = ?0, lease_token = gen_random_uuid(),
	lease_expires_at = now() + make_interval(secs => ?4), claimed_at = now(), progress_at = NULL,
	attempt = j.attempt + 1, error = NULL, progress = 0, current_node = NULL, started_at = NULL
FROM candidate WHERE j.id = candidate.id
RETURNING j.*`

// GiveBack returns to the queue leases the calling robot never received
// (the answer that carried them was not delivered): QUEUED as if they had
// not been claimed, their attempt uncounted, their slots free at once,
// and waiting claims told.
// A lease the robot has since used (the job is no longer CLAIMED under it)
// is left alone. Jobs are locked in id order, as every path locking
// several jobs does.
func (s *Jobs) GiveBack(ctx context.Context, idb bun.IDB, leases []*JobLease) error {
	sc, err := robotScope(ctx)
	if err != nil || len(leases) == 0 {
		return err
	}
	var ids, tokens []uuid.UUID
	for _, l := range leases {
		if l != nil && l.Job != nil {
			ids, tokens = append(ids, l.Job.ID), append(tokens, l.LeaseToken)
		}
	}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		q := tx.NewUpdate().Model((*Job)(nil)).
			Where("j.id IN (SELECT id FROM jobs WHERE id = ANY(?::uuid[]) AND robot_id = ? ORDER BY id FOR UPDATE)", pgUUIDs(ids), sc.robot).
			Where("(j.id, j.lease_token) IN (SELECT * FROM unnest(?::uuid[], ?::uuid[]))", pgUUIDs(ids), pgUUIDs(tokens)).
			Where("j.status = ?", JobClaimed)
		res, err := jobsVisible(sc, q, "j").
			Set("status = ?", JobQueued).Set("robot_id = NULL").Set("lease_expires_at = NULL").Set("claimed_at = NULL").
			Set("attempt = j.attempt - 1").Exec(ctx)
		if err != nil {
			return err
		}
		// Waiting claims learn of them at once, as of any job queued.
		if n, _ := res.RowsAffected(); n > 0 {
			return notifyQueued(ctx, tx, sc.tenant)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("giving back undelivered leases: %w", err)
	}
	return nil
}

// MaxClaimBatch is the most jobs one claimJobs may lease: as many as a
// robot may hold (maxConcurrentJobs is at most 100).
const MaxClaimBatch = 100

// Claim leases the best job the calling robot may take, or returns nil when
// there is none.
func (s *Jobs) Claim(ctx context.Context, idb bun.IDB) (*JobLease, error) {
	leases, err := s.ClaimMany(ctx, idb, 1)
	if err != nil || len(leases) == 0 {
		return nil, err
	}
	return leases[0], nil
}

// ClaimMany leases up to limit (1 to MaxClaimBatch) of the best jobs the
// calling robot may take, within its free slots, best first; none when
// there is none. The robot's row is locked first so that its own concurrent
// claims see each other's slots; the leasing itself is one statement.
func (s *Jobs) ClaimMany(ctx context.Context, idb bun.IDB, limit int) ([]*JobLease, error) {
	if err := CheckClaimLimit(limit); err != nil {
		return nil, err
	}
	sc, err := robotScope(ctx)
	if err != nil {
		return nil, err
	}
	var jobs []*Job
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		r, keyLive, err := lockClaimingRobot(ctx, tx, sc)
		if err != nil {
			return err
		}
		if !keyLive {
			return errKeyNoLongerValid
		}
		jobs, err = s.claimLocked(ctx, tx, r, limit)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("claiming jobs: %w", err)
	}
	return leasesOf(jobs), nil
}

// CheckClaimLimit refuses a claimJobs limit outside 1 to MaxClaimBatch.
func CheckClaimLimit(limit int) error {
	if limit < 1 || limit > MaxClaimBatch {
		return fault.Invalid("limit", "limit must be between 1 and %d (got %d); a robot gets at most its free slots", MaxClaimBatch, limit)
	}
	return nil
}

// lockClaimingRobot locks the calling robot's row for a claim in tx. Every
// claim of a robot takes this lock before it counts the robot's jobs, and
// every path that locks both takes the robot's row before its jobs'
// (heartbeats, claims, a completion that claims the next job), so they
// cannot deadlock.
//
// keyLive reports whether the API key the robot called with is still live
// (not revoked, not expired) as the lock is taken: the key was checked when
// the request came, but a claim may have waited up to
// dispatch.MaxWaitSeconds since (or passed on the key cache, up to its
// TTL), and a key revoked meanwhile must lease nothing. A claim is then
// refused (errKeyNoLongerValid); a completion still completes, and leases
// no next job. A robot of no key (an internal task's) is always live.
func lockClaimingRobot(ctx context.Context, tx bun.Tx, sc scope) (r *Robot, keyLive bool, err error) {
	var p Params
	cr := new(claimingRobot)
	q := robotsVisible(sc.binding(&p), tx.NewSelect().Model(cr).ColumnExpr("r.*").Where("r.id = ?", p.Bind(sc.robot)), "r")
	if sc.key != uuid.Nil {
		q = q.ColumnExpr("EXISTS (SELECT 1 FROM api_keys AS k WHERE k.id = ? AND k.robot_id = r.id AND k.tenant_id = r.tenant_id"+
			" AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())) AS key_live", p.Bind(sc.key))
	} else {
		q = q.ColumnExpr("true AS key_live")
	}
	if err := scanBound(ctx, q.For(parentChange+" OF r"), &p); err != nil {
		return nil, false, notFoundIfNoRows(err, "robot")
	}
	return &cr.Robot, cr.KeyLive, nil
}

// claimingRobot is a robot's row as lockClaimingRobot reads it.
type claimingRobot struct {
	Robot   `bun:",extend"`
	KeyLive bool `bun:"key_live,scanonly"`
}

// errKeyNoLongerValid refuses a claim whose API key was revoked, or
// expired, after the request's credential was checked.
var errKeyNoLongerValid = fault.New(fault.Unauthenticated, "this API key was revoked or has expired")

// claimLocked leases up to limit jobs to robot r, whose row tx has locked
// (lockClaimingRobot), best first, within its free slots. A robot in
// MAINTENANCE gets none. A single claim is one statement; a batch counts
// the robot's jobs first, so that the claim's LIMIT is a constant.
func (s *Jobs) claimLocked(ctx context.Context, tx bun.Tx, r *Robot, limit int) ([]*Job, error) {
	if r.Status == RobotMaintenance {
		return nil, nil
	}
	if limit > 1 {
		// A batch takes at most the free slots, counted now that the
		// robot's row is locked: its other claims wait for the lock, so
		// the count can only fall before the claim runs.
		// The same statement turns JIT compilation off for the rest of the
		// transaction: on a long queue the planner overestimates the rows
		// the claim's filter keeps, costs a batch above jit_above_cost, and
		// compiling it (about 25 ms) would cost more than the claim itself.
		var held int
		var jit string
		var p Params
		if err := scanBound(ctx, tx.NewRaw("SELECT count(*), set_config('jit', 'off', true) FROM jobs WHERE robot_id = ? AND status IN (?)",
			p.Bind(r.ID), bun.List(liveJobStatuses)), &p, &held, &jit); err != nil {
			return nil, fmt.Errorf("counting the robot's jobs: %w", err)
		}
		if limit = min(limit, r.MaxConcurrentJobs-held); limit <= 0 {
			return nil, nil
		}
	}
	// The claim is prepared (see Params), its LIMIT written in: a generic
	// plan cannot read a bound LIMIT and would cost the claim as a tenth of
	// the queue (see the batch's count above).
	var p Params
	jobs, err := transition(ctx, tx, boundStatement{tx.NewRaw(claimSQL, p.Bind(r.ID), p.Bind(r.TenantID), p.Bind(pq.StringArray(r.Capabilities)),
		p.Bind(r.MaxConcurrentJobs), seconds(s.cfg.Lease), limit), &p})
	if err != nil {
		return nil, err
	}
	// UPDATE ... RETURNING keeps no order: put the best job first again.
	slices.SortFunc(jobs, func(a, b *Job) int {
		if a.Priority != b.Priority {
			return b.Priority - a.Priority
		}
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID.String(), b.ID.String())
	})
	return jobs, nil
}

// leasesOf is the lease of each claimed job, never nil.
func leasesOf(jobs []*Job) []*JobLease {
	leases := make([]*JobLease, 0, len(jobs))
	for _, j := range jobs {
		leases = append(leases, &JobLease{Job: j, LeaseToken: *j.LeaseToken, LeaseExpiresAt: *j.LeaseExpiresAt})
	}
	return leases
}

// fenced runs a robot's transition of one of its jobs in tx: an UPDATE that
// changes the row only while the robot holds the job under token in one of
// the from states. A refusal explains itself (see explainFence).
//
// The statement is prepared (see Params): set binds the values it writes
// through p, so its text stays the same from call to call.
func (s *Jobs) fenced(ctx context.Context, tx bun.Tx, jobID, token uuid.UUID, from []JobStatus, action string, set fencedSet) (*Job, error) {
	sc, err := robotScope(ctx)
	if err != nil {
		return nil, err
	}
	var p Params
	q := inTenant(sc.binding(&p), tx.NewUpdate().Model((*Job)(nil)).Where("j.id = ?", p.Bind(jobID)), "j").
		Where("j.robot_id = ? AND j.lease_token = ? AND j.status IN (?)", p.Bind(sc.robot), p.Bind(token), bun.List(from))
	j, err := transitionOne(ctx, tx, boundStatement{set(q, &p).Returning("*"), &p})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", action, err)
	}
	if j == nil {
		return nil, s.explainFence(ctx, tx, sc, jobID, token, action)
	}
	return j, nil
}

// fencedSet adds a fenced transition's changes to its UPDATE, binding the
// values that vary from call to call through p.
type fencedSet func(q *bun.UpdateQuery, p *Params) *bun.UpdateQuery

// fencedTx is fenced in a transaction of its own. With claimNext it also
// leases the robot's next job in that transaction, once the change is made,
// and attaches it to the returned job as NextLease (nil when none is
// available: the change commits all the same). The robot's row is locked
// before the job's, in the order every claim and heartbeat takes them.
func (s *Jobs) fencedTx(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID, from []JobStatus, action string, claimNext bool, set fencedSet) (*Job, error) {
	return s.fencedThen(ctx, idb, jobID, token, from, action, claimNext, set, nil)
}

// fencedThen is fencedTx with then, when not nil, run in the transaction
// right after the change (before the next job is claimed).
func (s *Jobs) fencedThen(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID, from []JobStatus, action string, claimNext bool,
	set fencedSet, then func(ctx context.Context, tx bun.Tx, j *Job) error) (*Job, error) {
	sc, err := robotScope(ctx)
	if err != nil {
		return nil, err
	}
	var j *Job
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var r *Robot
		if claimNext {
			var keyLive bool
			if r, keyLive, err = lockClaimingRobot(ctx, tx, sc); err != nil {
				return err
			}
			// The completion stands; a dead key leases nothing more.
			claimNext = keyLive
		}
		if j, err = s.fenced(ctx, tx, jobID, token, from, action, set); err != nil {
			return err
		}
		if then != nil {
			if err := then(ctx, tx, j); err != nil {
				return err
			}
		}
		if !claimNext {
			return nil
		}
		next, err := s.claimLocked(ctx, tx, r, 1)
		if err != nil {
			return fmt.Errorf("claiming the next job: %w", err)
		}
		if leases := leasesOf(next); len(leases) > 0 {
			j.NextLease = leases[0]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return j, nil
}

// JobCallOptions are what a robot may ask of a progress report, completion
// or failure besides the change itself.
type JobCallOptions struct {
	// StartIfClaimed lets a progress report or completion apply to a
	// CLAIMED job, which its statement starts (startJob may be skipped).
	StartIfClaimed bool
	// ClaimNext leases the robot's next job in the completion's or
	// failure's transaction, as Job.NextLease (see fencedTx).
	ClaimNext bool
}

// optionsOf is the options of a call that takes at most one set.
func optionsOf(opts []JobCallOptions) JobCallOptions {
	if len(opts) == 0 {
		return JobCallOptions{}
	}
	return opts[0]
}

// runningOrClaimed is what a robot's call that applies to a RUNNING job
// accepts: a CLAIMED job too when the robot asks to start it with the call
// (startIfClaimed), so that it may skip startJob. The call's own statement
// then starts the job (see startedIfClaimed).
func runningOrClaimed(startIfClaimed bool) []JobStatus {
	if startIfClaimed {
		return liveJobStatuses
	}
	return []JobStatus{JobRunning}
}

// startedIfClaimed stamps started_at, as startJob would, on a job that a
// call accepted while CLAIMED (runningOrClaimed); the call sets the status.
func startedIfClaimed(startIfClaimed bool, q *bun.UpdateQuery) *bun.UpdateQuery {
	if !startIfClaimed {
		return q
	}
	return q.Set("started_at = coalesce(j.started_at, now())")
}

// explainFence says why a fenced call changed nothing: the job is not the
// robot's (NOT_FOUND, as `job(id)` answers it), was cancelled (CONFLICT,
// JOB_CANCELLED: stop working on it), is no longer this robot's under this
// token (CONFLICT, LEASE_LOST), or is in a state the call does not apply to
// (CONFLICT, ILLEGAL_TRANSITION).
//
// A job is the robot's when the robot holds or last held it (robot_id), or
// when it went back to the queue from the lease the robot presents: a
// requeue clears robot_id but keeps the last lease token, so the robot whose
// lease was rescued still learns where its job went. A job another robot
// holds, or one the robot never held, is NOT_FOUND: its state is none of
// the robot's business.
func (s *Jobs) explainFence(ctx context.Context, idb bun.IDB, sc scope, jobID, token uuid.UUID, action string) error {
	j := new(Job)
	if err := inTenant(sc, idb.NewSelect().Model(j).Where("j.id = ?", jobID), "j").Scan(ctx); err != nil {
		return notFoundIfNoRows(err, "job")
	}
	sameToken := j.LeaseToken != nil && *j.LeaseToken == token
	visible := j.RobotID != nil && *j.RobotID == sc.robot
	if !visible && !(j.RobotID == nil && sameToken) {
		return fault.Missing("job")
	}
	holds := visible && sameToken
	conflict := func(reason, msg string) error {
		return &fault.Error{Code: fault.Conflict, Message: msg, Extra: map[string]any{"reason": reason, "currentStatus": string(j.Status)}}
	}
	switch {
	case holds && j.Status == JobCancelled:
		return conflict(ReasonJobCancelled, "the job was cancelled: stop working on it")
	case !holds:
		// currentStatus tells a robot whose lease was rescued where its old
		// job went.
		return conflict(ReasonLeaseLost, "this robot no longer holds the job under this lease token (the lease expired or the job moved on): stop working on it")
	default:
		return conflict(ReasonIllegalTransition, fmt.Sprintf("cannot %s a %s job", action, j.Status))
	}
}

// Start moves a claimed job to RUNNING, which must happen within the
// claim's lease (heartbeats do not extend a CLAIMED job's lease). It counts
// as progress and renews the lease.
func (s *Jobs) Start(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID) (*Job, error) {
	return s.fencedTx(ctx, idb, jobID, token, []JobStatus{JobClaimed}, "start", false, func(q *bun.UpdateQuery, _ *Params) *bun.UpdateQuery {
		return q.Set("status = ?", JobRunning).Set("started_at = now()").Set("progress_at = now()").
			Set("lease_expires_at = now() + make_interval(secs => ?)", seconds(s.cfg.Lease))
	})
}

// Progress records a running job's progress and extends its lease; a message
// goes to the job's log. A report (even of unchanged progress) is what lets
// heartbeats keep extending the lease for another ProgressTimeout. With
// startIfClaimed, a CLAIMED job is started by the same statement.
func (s *Jobs) Progress(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID, progress int, currentNode, message *string, opts ...JobCallOptions) (*Job, error) {
	startIfClaimed := optionsOf(opts).StartIfClaimed
	if progress < 0 || progress > 100 {
		return nil, fault.Invalid("progress", "progress must be between 0 and 100")
	}
	if currentNode != nil {
		if _, err := checkShortText("currentNode", *currentNode, 100); err != nil {
			return nil, err
		}
	}
	if message != nil {
		if err := checkLogMessage("message", *message); err != nil {
			return nil, err
		}
	}
	return s.fencedThen(ctx, idb, jobID, token, runningOrClaimed(startIfClaimed), "report progress on", false, func(q *bun.UpdateQuery, p *Params) *bun.UpdateQuery {
		if startIfClaimed {
			q = startedIfClaimed(true, q).Set("status = ?", JobRunning)
		}
		q = q.Set("progress = ?", p.Bind(progress)).Set("progress_at = now()").
			Set("lease_expires_at = now() + make_interval(secs => ?)", seconds(s.cfg.Lease))
		if currentNode != nil {
			q = q.Set("current_node = ?", p.Bind(*currentNode))
		}
		return q
	}, func(ctx context.Context, tx bun.Tx, j *Job) error {
		if message == nil {
			return nil
		}
		return insertLines(ctx, tx, j.TenantID, *j.RobotID, []logLine{{job: &j.ID, level: LogInfo, message: *message, fields: map[string]any{"progress": progress}, at: time.Now()}})
	})
}

// Complete finishes a running job with its result. With startIfClaimed a
// CLAIMED job is completed too (and stamped started), so a robot may skip
// startJob; with claimNext the robot's next job is leased in the same
// transaction (see fencedTx).
func (s *Jobs) Complete(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID, result map[string]any, opts ...JobCallOptions) (*Job, error) {
	o := optionsOf(opts)
	text, err := checkRawJSONObject("result", result)
	if err != nil {
		return nil, err
	}
	return s.fencedTx(ctx, idb, jobID, token, runningOrClaimed(o.StartIfClaimed), "complete", o.ClaimNext, func(q *bun.UpdateQuery, p *Params) *bun.UpdateQuery {
		return startedIfClaimed(o.StartIfClaimed, q).Set("status = ?", JobCompleted).Set("result = ?::jsonb", p.Bind(string(text))).Set("progress = 100").
			Set("finished_at = now()").Set("lease_expires_at = NULL")
	})
}

// CompleteMany completes up to MaxClaimBatch jobs the calling robot holds,
// each as Complete would (fenced on its own lease token, StartIfClaimed
// applying to all), in one transaction and one statement. It is all or
// nothing: when any completion is refused, nothing changes and the error is
// that job's refusal (see explainFence), naming it as completions[i]. The
// robot's row is locked first, so one robot's batches take turns. With
// claimNext > 0 the robot then claims up to that many more jobs in the same
// transaction, within the slots the completions freed (see ClaimMany).
func (s *Jobs) CompleteMany(ctx context.Context, idb bun.IDB, batch []JobCompletionInput, claimNext int, opts ...JobCallOptions) (*JobCompletions, error) {
	startIfClaimed := optionsOf(opts).StartIfClaimed
	ids, tokens, results, err := checkCompletions(batch)
	if err != nil {
		return nil, err
	}
	if claimNext < 0 || claimNext > MaxClaimBatch {
		return nil, fault.Invalid("claimNext", "claimNext must be between 0 and %d (got %d)", MaxClaimBatch, claimNext)
	}
	sc, err := robotScope(ctx)
	if err != nil {
		return nil, err
	}
	out := &JobCompletions{NextLeases: []*JobLease{}}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		// The robot's row first, as every claim takes it: one robot's
		// batches (and claims) take turns, so two overlapping batches
		// cannot deadlock on their jobs' rows.
		r, keyLive, err := lockClaimingRobot(ctx, tx, sc)
		if err != nil {
			return err
		}
		if !keyLive {
			claimNext = 0 // the completions stand; a dead key leases nothing more
		}
		// c is the batch.
		var p Params
		c := tx.NewRaw("SELECT * FROM unnest(?::uuid[], ?::uuid[], ?::text[]::jsonb[]) AS c(id, token, result)",
			p.Bind(pgUUIDs(ids)), p.Bind(pgUUIDs(tokens)), p.Bind(pq.StringArray(results)))
		// The robot's jobs of the batch are locked in id order, as
		// heartbeats, the rescue and deleteSchedule lock jobs: the join
		// alone locks them in its own order.
		q := tx.NewUpdate().With("c", c).Model((*Job)(nil)).TableExpr("c").Where("j.id = c.id AND j.lease_token = c.token").
			Where("j.id IN (SELECT id FROM jobs WHERE id IN (SELECT id FROM c) AND robot_id = ? ORDER BY id FOR UPDATE)", p.Bind(sc.robot))
		q = inTenant(sc.binding(&p), q, "j").
			Where("j.robot_id = ? AND j.status IN (?)", p.Bind(sc.robot), bun.List(runningOrClaimed(startIfClaimed)))
		q = startedIfClaimed(startIfClaimed, q).Set("status = ?", JobCompleted).Set("result = c.result").Set("progress = 100").
			Set("finished_at = now()").Set("lease_expires_at = NULL")
		done, err := transition(ctx, tx, boundStatement{q.Returning("j.*"), &p})
		if err != nil {
			return fmt.Errorf("completing the jobs: %w", err)
		}
		if out.Jobs, err = s.inBatchOrder(ctx, tx, sc, batch, done); err != nil {
			return err
		}
		if claimNext == 0 {
			return nil
		}
		next, err := s.claimLocked(ctx, tx, r, claimNext)
		if err != nil {
			return fmt.Errorf("claiming the next jobs: %w", err)
		}
		out.NextLeases = leasesOf(next)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// checkCompletions validates a batch of completions (1 to MaxClaimBatch,
// each job once, each result a JSON object) and returns its columns, the
// results as JSON text.
func checkCompletions(batch []JobCompletionInput) (ids, tokens []uuid.UUID, results []string, err error) {
	if len(batch) == 0 {
		return nil, nil, nil, fault.Invalid("completions", "give at least one completion")
	}
	if len(batch) > MaxClaimBatch {
		return nil, nil, nil, fault.Invalid("completions", "at most %d completions per call (got %d)", MaxClaimBatch, len(batch))
	}
	seen := make(map[uuid.UUID]bool, len(batch))
	for i, c := range batch {
		if seen[c.JobID] {
			field := fmt.Sprintf("completions[%d].jobId", i)
			return nil, nil, nil, fault.Invalid(field, "%s: job %s is completed twice in this batch", field, c.JobID)
		}
		seen[c.JobID] = true
		text, err := checkRawJSONObject(fmt.Sprintf("completions[%d].result", i), c.Result)
		if err != nil {
			return nil, nil, nil, err
		}
		ids, tokens, results = append(ids, c.JobID), append(tokens, c.LeaseToken), append(results, string(text))
	}
	return ids, tokens, results, nil
}

// inBatchOrder puts the jobs a batch changed (done) in the batch's order.
// When the statement left a job of the batch unchanged, it returns that
// job's refusal (see explainFence), the first in the batch's order, naming
// it as completions[i] (extensions.field and index).
func (s *Jobs) inBatchOrder(ctx context.Context, tx bun.Tx, sc scope, batch []JobCompletionInput, done []*Job) ([]*Job, error) {
	byID := keyed(done, func(j *Job) uuid.UUID { return j.ID })
	jobs := make([]*Job, len(batch))
	for i, c := range batch {
		if jobs[i] = byID[c.JobID]; jobs[i] != nil {
			continue
		}
		err := s.explainFence(ctx, tx, sc, c.JobID, c.LeaseToken, "complete")
		var f *fault.Error
		if errors.As(err, &f) {
			field := fmt.Sprintf("completions[%d]", i)
			extra := maps.Clone(f.Extra)
			if extra == nil {
				extra = map[string]any{}
			}
			extra["index"] = i
			return nil, &fault.Error{Code: f.Code, Message: field + ": " + f.Message, Field: field, Extra: extra}
		}
		return nil, err
	}
	return jobs, nil
}

// backoffSQL is the delay before retry number attempt (1-based), doubling
// from RetryBackoff up to MaxRetryBackoff. Parameters: base and max seconds.
const backoffSQL = "make_interval(secs => least(? * power(2, greatest(j.attempt - 1, 0)), ?))"

// Fail ends a claimed or running job: back to QUEUED (after a backoff) when
// retryable and attempts remain, else FAILED. With claimNext the robot's
// next job is leased in the same transaction (see fencedTx); it may be this
// job again when it was requeued without a backoff.
func (s *Jobs) Fail(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID, reason string, retryable bool, opts ...JobCallOptions) (*Job, error) {
	if err := checkLogMessage("error", reason); err != nil {
		return nil, err
	}
	if reason == "" {
		return nil, fault.Invalid("error", "say why the job failed")
	}
	base, max := seconds(s.cfg.RetryBackoff), seconds(s.cfg.MaxRetryBackoff)
	return s.fencedThen(ctx, idb, jobID, token, liveJobStatuses, "fail", optionsOf(opts).ClaimNext, func(q *bun.UpdateQuery, p *Params) *bun.UpdateQuery {
		retry := "(" + string(p.Bind(retryable)) + "::boolean AND j.attempt < j.max_attempts)"
		return q.Set("error = ?", p.Bind(reason)).Set("lease_expires_at = NULL").
			Set("status = CASE WHEN "+retry+" THEN 'QUEUED' ELSE 'FAILED' END").
			Set("run_after = CASE WHEN "+retry+" THEN now() + "+backoffSQL+" ELSE j.run_after END", base, max).
			Set("robot_id = CASE WHEN " + retry + " THEN NULL ELSE j.robot_id END").
			Set("finished_at = CASE WHEN " + retry + " THEN NULL ELSE now() END")
	}, func(ctx context.Context, tx bun.Tx, j *Job) error {
		if j.Status != JobQueued {
			return nil
		}
		return notifyQueued(ctx, tx, j.TenantID)
	})
}

// releaseBatch is how many jobs aimed at a deleted robot are cancelled
// (and read back for their events) at a time.
const releaseBatch = 500

// releaseDeletedRobotsJobs lets go of the jobs of robot r, which is being
// deleted in tx. A job aimed at r (enqueued with its robotId) can run on no
// other robot, so it is CANCELLED, queued or live, with the reason. The
// other jobs r holds go back to the queue like a rescue: QUEUED while
// attempts remain, else FAILED; waiting claims are woken for them.
func releaseDeletedRobotsJobs(ctx context.Context, tx bun.Tx, r *Robot) error {
	// However many jobs were queued for r, a batch at a time: each comes
	// back whole (input and result, 64 KiB each) for its event. The outer
	// statement repeats the subquery's conditions: a job whose row lock
	// it waits for (completed, failed or cancelled meanwhile) is checked
	// again as committed, which the subquery's list of ids is not.
	live := bun.List([]JobStatus{JobQueued, JobClaimed, JobRunning})
	for {
		done, err := transition(ctx, tx, tx.NewUpdate().Model((*Job)(nil)).
			Where("j.id IN (SELECT id FROM jobs WHERE target_robot_id = ? AND status IN (?) LIMIT ?)", r.ID, live, releaseBatch).
			Where("j.target_robot_id = ? AND j.status IN (?)", r.ID, live).
			Set("status = ?", JobCancelled).
			Set("error = 'its target robot was deleted: no other robot may run it'").
			Set("finished_at = now()").Set("lease_expires_at = NULL").Set("target_lost = true").
			Returning("*"))
		if err != nil {
			return fmt.Errorf("cancelling jobs aimed at the robot: %w", err)
		}
		if len(done) == releaseBatch {
			continue
		}
		// A short batch: some of its jobs may have finished meanwhile.
		more, err := tx.NewSelect().Model((*Job)(nil)).Where("j.target_robot_id = ? AND j.status IN (?)", r.ID, live).Exists(ctx)
		if err != nil {
			return fmt.Errorf("looking for jobs aimed at the robot: %w", err)
		}
		if !more {
			break
		}
	}
	// The finished ones too: the robot's id goes with it, and a retry must
	// still know the job was aimed at a robot that is gone.
	if _, err := tx.NewUpdate().Model((*Job)(nil)).
		Where("j.target_robot_id = ? AND NOT j.target_lost", r.ID).Set("target_lost = true").Exec(ctx); err != nil {
		return fmt.Errorf("marking the finished jobs aimed at the robot: %w", err)
	}
	const retry = "(j.attempt < j.max_attempts)"
	released, err := transition(ctx, tx, tx.NewUpdate().Model((*Job)(nil)).
		Where("j.robot_id = ? AND j.status IN (?)", r.ID, bun.List(liveJobStatuses)).
		Set("status = CASE WHEN "+retry+" THEN 'QUEUED' ELSE 'FAILED' END").
		Set("error = CASE WHEN "+retry+" THEN j.error ELSE 'its robot was deleted (attempt ' || j.attempt || ' of ' || j.max_attempts || ')' END").
		Set("finished_at = CASE WHEN "+retry+" THEN NULL ELSE now() END").
		Set("robot_id = NULL").Set("lease_token = NULL").Set("lease_expires_at = NULL").
		Returning("*"))
	if err != nil {
		return fmt.Errorf("requeueing the robot's jobs: %w", err)
	}
	if slices.ContainsFunc(released, func(j *Job) bool { return j.Status == JobQueued }) {
		return notifyQueued(ctx, tx, r.TenantID)
	}
	return nil
}

// RescueExpired takes back every job, of any tenant, whose lease has
// expired (the robot went silent, did not start its claim within the
// lease, or reported no progress for ProgressTimeout): QUEUED again after a
// backoff while attempts remain, else FAILED with the reason. It is
// maintenance work, run by the maintenance runner.
func (s *Jobs) RescueExpired(ctx context.Context, idb bun.IDB) ([]*Job, error) {
	var rows []*Job
	const retry = "(j.attempt < j.max_attempts)"
	err := idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var err error
		rows, err = transition(ctx, tx, tx.NewUpdate().Model((*Job)(nil)).
			// In id order, skipping rows a heartbeat or a robot's call holds
			// right now: those are being extended or finished, and the next
			// sweep sees them again if not.
			Where("j.id IN (SELECT id FROM jobs WHERE status IN (?) AND lease_expires_at < now() ORDER BY id FOR UPDATE SKIP LOCKED)", bun.List(liveJobStatuses)).
			Where("j.lease_expires_at < now()").
			Set("status = CASE WHEN "+retry+" THEN 'QUEUED' ELSE 'FAILED' END").
			Set("run_after = CASE WHEN "+retry+" THEN now() + "+backoffSQL+" ELSE j.run_after END", seconds(s.cfg.RetryBackoff), seconds(s.cfg.MaxRetryBackoff)).
			Set("robot_id = CASE WHEN "+retry+" THEN NULL ELSE j.robot_id END").
			Set("error = CASE WHEN j.status = 'CLAIMED' THEN 'lease expired: the robot did not start the job within its lease'"+
				" WHEN j.progress_at + make_interval(secs => ?) <= now() THEN ?"+
				" ELSE 'lease expired: the robot stopped reporting' END"+
				" || ' (attempt ' || j.attempt || ' of ' || j.max_attempts || ')'",
				seconds(s.cfg.progressTimeout()), fmt.Sprintf("lease expired: no progress reported for %d seconds", int(s.cfg.progressTimeout().Seconds()))).
			Set("finished_at = CASE WHEN "+retry+" THEN NULL ELSE now() END").
			// A requeued job keeps its last lease token (see explainFence;
			// the next claim replaces it); a failed one, which keeps its
			// robot, drops it, so its robot learns that its lease was lost.
			Set("lease_token = CASE WHEN "+retry+" THEN j.lease_token END").
			Set("lease_expires_at = NULL").
			Returning("*"))
		if err != nil {
			return fmt.Errorf("rescuing expired leases: %w", err)
		}
		tenants := map[uuid.UUID]bool{}
		for _, j := range rows {
			if j.Status == JobQueued && !tenants[j.TenantID] {
				tenants[j.TenantID] = true
				if err := notifyQueued(ctx, tx, j.TenantID); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return rows, err
}
