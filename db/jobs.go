package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"fleetgraph/fault"
)

// JobStatus is where a job is in its lifecycle:
// QUEUED -> CLAIMED -> RUNNING -> COMPLETED | FAILED | CANCELLED.
type JobStatus string

// Job states.
const (
	JobQueued    JobStatus = "QUEUED"
	JobClaimed   JobStatus = "CLAIMED"
	JobRunning   JobStatus = "RUNNING"
	JobCompleted JobStatus = "COMPLETED"
	JobFailed    JobStatus = "FAILED"
	JobCancelled JobStatus = "CANCELLED"
)

// liveJobStatuses are the states in which a robot holds a job.
var liveJobStatuses = []JobStatus{JobClaimed, JobRunning}

// JobQueuedChannel is the NOTIFY channel told (with the tenant id) whenever
// jobs become claimable, so waiting claims wake at once.
const JobQueuedChannel = "fleetgraph_job_queued"

// Reasons given in extensions.reason of a robot's refused job call.
const (
	ReasonJobCancelled      = "JOB_CANCELLED"
	ReasonLeaseLost         = "LEASE_LOST"
	ReasonIllegalTransition = "ILLEGAL_TRANSITION"
)

// Job is one run of a workflow version.
type Job struct {
	bun.BaseModel `bun:"table:jobs,alias:j"`

	ID                   uuid.UUID      `bun:"id,pk,type:uuid,default:gen_random_uuid()"`
	TenantID             uuid.UUID      `bun:"tenant_id,type:uuid"`
	WorkflowID           uuid.UUID      `bun:"workflow_id,type:uuid"`
	WorkflowVersion      int            `bun:"workflow_version"`
	Status               JobStatus      `bun:"status"`
	Priority             int            `bun:"priority"`
	Input                map[string]any `bun:"input,type:jsonb"`
	Result               map[string]any `bun:"result,type:jsonb,nullzero"`
	Error                *string        `bun:"error"`
	Progress             int            `bun:"progress"`
	CurrentNode          *string        `bun:"current_node"`
	RobotID              *uuid.UUID     `bun:"robot_id,type:uuid"`
	TargetRobotID        *uuid.UUID     `bun:"target_robot_id,type:uuid"`
	Attempt              int            `bun:"attempt"`
	MaxAttempts          int            `bun:"max_attempts"`
	LeaseToken           *uuid.UUID     `bun:"lease_token,type:uuid"`
	LeaseExpiresAt       *time.Time     `bun:"lease_expires_at"`
	RunAfter             time.Time      `bun:"run_after,nullzero,default:now()"`
	RequiredCapabilities []string       `bun:"required_capabilities,array"`
	CreatedBy            string         `bun:"created_by"`
	CreatedAt            time.Time      `bun:"created_at,nullzero,default:clock_timestamp()"`
	ClaimedAt            *time.Time     `bun:"claimed_at"`
	StartedAt            *time.Time     `bun:"started_at"`
	ProgressAt           *time.Time     `bun:"progress_at"`
	FinishedAt           *time.Time     `bun:"finished_at"`
	UpdatedAt            time.Time      `bun:"updated_at,nullzero,default:now()"`
	Revision             int64          `bun:"revision,default:1"`

	// ScheduleID and ScheduledFor are the schedule that enqueued the job and
	// the tick it is for (see Schedules): one job per (schedule, tick).
	ScheduleID   *uuid.UUID `bun:"schedule_id,type:uuid"`
	ScheduledFor *time.Time `bun:"scheduled_for"`
}

// Cursor is the job's position in `jobs`, newest first.
func (j *Job) Cursor() string { return encodeTimeID("job", j.CreatedAt, j.ID) }

// JobLease is a claimed job and the token that fences later calls about it.
type JobLease struct {
	Job            *Job
	LeaseToken     uuid.UUID
	LeaseExpiresAt time.Time
}

// EnqueueJobInput describes a job to queue.
type EnqueueJobInput struct {
	WorkflowID           uuid.UUID
	Version              *int
	Input                map[string]any
	Priority             *int
	RunAt                *time.Time
	MaxAttempts          *int
	RequiredCapabilities []string
	RobotID              *uuid.UUID
	// ScheduleID and ScheduledFor are set by the scheduler only (the API's
	// input has no such fields): a second job for the same schedule and
	// tick violates jobs_schedule_tick_key and is not inserted.
	ScheduleID   *uuid.UUID
	ScheduledFor *time.Time
}

// JobFilter narrows a job list.
type JobFilter struct {
	Status        *JobStatus
	RobotID       *uuid.UUID
	WorkflowID    *uuid.UUID
	CreatedAfter  *time.Time
	CreatedBefore *time.Time
}

// MaxEnqueueBatch caps enqueueJobs.
const MaxEnqueueBatch = 1000

// Jobs is the store of the job queue.
type Jobs struct {
	cfg       QueueConfig
	workflows *Workflows
}

// NewJobs returns the job store.
func NewJobs(cfg QueueConfig, workflows *Workflows) *Jobs {
	return &Jobs{cfg: cfg, workflows: workflows}
}

// Get returns one job the caller may see, or NOT_FOUND.
func (s *Jobs) Get(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Job, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	j := new(Job)
	if err := jobsVisible(sc, idb.NewSelect().Model(j).Where("j.id = ?", id), "j").Scan(ctx); err != nil {
		return nil, notFoundIfNoRows(err, "job")
	}
	return j, nil
}

func (s *Jobs) filtered(ctx context.Context, idb bun.IDB, f JobFilter) (*bun.SelectQuery, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	q := jobsVisible(sc, idb.NewSelect().Model((*Job)(nil)), "j")
	if f.Status != nil {
		q = q.Where("j.status = ?", *f.Status)
	}
	if f.RobotID != nil {
		q = q.Where("j.robot_id = ?", *f.RobotID)
	}
	if f.WorkflowID != nil {
		q = q.Where("j.workflow_id = ?", *f.WorkflowID)
	}
	if f.CreatedAfter != nil {
		q = q.Where("j.created_at > ?", *f.CreatedAfter)
	}
	if f.CreatedBefore != nil {
		q = q.Where("j.created_at < ?", *f.CreatedBefore)
	}
	return q, nil
}

// List returns a page of jobs, newest first.
func (s *Jobs) List(ctx context.Context, idb bun.IDB, f JobFilter, p PageArgs) (Page[Job], error) {
	q, err := s.filtered(ctx, idb, f)
	if err != nil {
		return Page[Job]{}, err
	}
	return newestFirst[Job](ctx, q, "job", "j", p)
}

// Count returns how many jobs match f.
func (s *Jobs) Count(ctx context.Context, idb bun.IDB, f JobFilter) (int, error) {
	q, err := s.filtered(ctx, idb, f)
	return countOf(ctx, q, err, "jobs")
}

// Enqueue queues one job.
func (s *Jobs) Enqueue(ctx context.Context, idb bun.IDB, in EnqueueJobInput) (*Job, error) {
	jobs, err := s.enqueue(ctx, idb, []EnqueueJobInput{in}, "")
	if err != nil {
		return nil, err
	}
	return jobs[0], nil
}

// EnqueueMany queues up to MaxEnqueueBatch jobs in one transaction: all or
// none. Errors name the offending element, e.g. input[3].priority.
func (s *Jobs) EnqueueMany(ctx context.Context, idb bun.IDB, ins []EnqueueJobInput) ([]*Job, error) {
	if len(ins) == 0 {
		return nil, fault.Invalid("input", "give at least one job")
	}
	if len(ins) > MaxEnqueueBatch {
		return nil, fault.Invalid("input", "at most %d jobs per call (got %d)", MaxEnqueueBatch, len(ins))
	}
	return s.enqueue(ctx, idb, ins, "input")
}

func (s *Jobs) enqueue(ctx context.Context, idb bun.IDB, ins []EnqueueJobInput, listField string) ([]*Job, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	field := func(i int, name string) string {
		if listField == "" {
			return "input." + name
		}
		return fmt.Sprintf("%s[%d].%s", listField, i, name)
	}
	jobs := make([]*Job, len(ins))
	for i, in := range ins {
		j := &Job{TenantID: sc.tenant, WorkflowID: in.WorkflowID, Status: JobQueued, MaxAttempts: 3, CreatedBy: sc.actor, TargetRobotID: in.RobotID,
			ScheduleID: in.ScheduleID, ScheduledFor: in.ScheduledFor}
		if j.Input, err = checkJSONObject(field(i, "input"), in.Input); err != nil {
			return nil, err
		}
		if in.Priority != nil {
			if *in.Priority < -1000 || *in.Priority > 1000 {
				return nil, fault.Invalid(field(i, "priority"), "%s must be between -1000 and 1000", field(i, "priority"))
			}
			j.Priority = *in.Priority
		}
		if in.MaxAttempts != nil {
			if *in.MaxAttempts < 1 || *in.MaxAttempts > 100 {
				return nil, fault.Invalid(field(i, "maxAttempts"), "%s must be between 1 and 100", field(i, "maxAttempts"))
			}
			j.MaxAttempts = *in.MaxAttempts
		}
		if j.RequiredCapabilities, err = checkCapabilities(field(i, "requiredCapabilities"), in.RequiredCapabilities); err != nil {
			return nil, err
		}
		if in.RunAt != nil {
			j.RunAfter = *in.RunAt
		}
		jobs[i] = j
	}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		workflows := map[uuid.UUID]*Workflow{}
		robots := map[uuid.UUID]bool{}
		for i, j := range jobs {
			w, ok := workflows[j.WorkflowID]
			if !ok {
				if w, err = s.workflows.get(ctx, tx, sc, j.WorkflowID, false); err != nil {
					return &fault.Error{Code: fault.NotFound, Field: field(i, "workflowId"), Message: "workflow not found"}
				}
				workflows[w.ID] = w
			}
			j.WorkflowVersion = w.CurrentVersion
			if v := ins[i].Version; v != nil && *v != w.CurrentVersion {
				if _, err := s.workflows.version(ctx, tx, w, *v, field(i, "version")); err != nil {
					return err
				}
				j.WorkflowVersion = *v
			}
			if j.TargetRobotID != nil && !robots[*j.TargetRobotID] {
				if err := requireRobot(ctx, tx, sc, *j.TargetRobotID, field(i, "robotId")); err != nil {
					return err
				}
				robots[*j.TargetRobotID] = true
			}
		}
		q := tx.NewInsert().Model(&jobs)
		if ins[0].RunAt == nil {
			// Let the database's clock decide "now" for jobs without runAt.
			for _, j := range jobs {
				if j.RunAfter.IsZero() {
					j.RunAfter = time.Time{}
				}
			}
		}
		if _, err := q.Returning("*").Exec(ctx); err != nil {
			return fmt.Errorf("queueing jobs: %w", err)
		}
		return notifyQueued(ctx, tx, sc.tenant)
	})
	if err != nil {
		return nil, err
	}
	return jobs, nil
}

// notifyQueued wakes waiting claims of the tenant when the transaction commits.
func notifyQueued(ctx context.Context, idb bun.IDB, tenant uuid.UUID) error {
	if _, err := idb.ExecContext(ctx, "SELECT pg_notify(?, ?)", JobQueuedChannel, tenant.String()); err != nil {
		return fmt.Errorf("announcing queued jobs: %w", err)
	}
	return nil
}

// Cancel cancels a QUEUED, CLAIMED or RUNNING job. The robot holding it
// learns on its next fenced call (CONFLICT, reason JOB_CANCELLED).
func (s *Jobs) Cancel(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Job, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	j := new(Job)
	err = inTenant(sc, idb.NewUpdate().Model(j).Where("j.id = ?", id), "j").
		Where("j.status IN (?)", bun.List([]JobStatus{JobQueued, JobClaimed, JobRunning})).
		Set("status = ?", JobCancelled).Set("finished_at = now()").Set("lease_expires_at = NULL").
		Set("updated_at = now()").Set("revision = j.revision + 1").
		Returning("*").Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, s.stateConflict(ctx, idb, sc, id, "cancel")
	}
	if err != nil {
		return nil, fmt.Errorf("cancelling the job: %w", err)
	}
	return j, nil
}

// Retry queues a FAILED or CANCELLED job again with its attempts reset.
func (s *Jobs) Retry(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Job, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	j := new(Job)
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		err := inTenant(sc, tx.NewUpdate().Model(j).Where("j.id = ?", id), "j").
			Where("j.status IN (?)", bun.List([]JobStatus{JobFailed, JobCancelled})).
			Set("status = ?", JobQueued).Set("attempt = 0").Set("error = NULL").Set("result = NULL").
			Set("progress = 0").Set("current_node = NULL").Set("robot_id = NULL").
			Set("lease_expires_at = NULL").Set("run_after = now()"). // the last lease token stays (see explainFence)
			Set("claimed_at = NULL").Set("started_at = NULL").Set("finished_at = NULL").
			Set("updated_at = now()").Set("revision = j.revision + 1").
			Returning("*").Scan(ctx)
		if errors.Is(err, sql.ErrNoRows) {
			return s.stateConflict(ctx, tx, sc, id, "retry")
		}
		if err != nil {
			return fmt.Errorf("retrying the job: %w", err)
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

// claimSQL picks the best job the robot may take and leases it, in one
// statement. SKIP LOCKED lets concurrent claims pass each other instead of
// queueing on the same row. Parameters: robot id (×5), tenant, robot
// capabilities, max slots, lease seconds.
const claimSQL = `
WITH candidate AS (
	SELECT j.id FROM jobs j
	WHERE j.tenant_id = ?1 AND j.status = 'QUEUED' AND j.run_after <= now()
	  AND j.required_capabilities <@ ?2::text[]
	  AND (j.target_robot_id IS NULL OR j.target_robot_id = ?0)
	  AND (j.target_robot_id = ?0
	       OR NOT EXISTS (SELECT 1 FROM workflow_assignments a WHERE a.workflow_id = j.workflow_id)
	       OR EXISTS (SELECT 1 FROM workflow_assignments a WHERE a.workflow_id = j.workflow_id AND a.robot_id = ?0))
	  AND (SELECT count(*) FROM jobs l WHERE l.robot_id = ?0 AND l.status IN ('CLAIMED', 'RUNNING')) < ?3
	ORDER BY j.priority DESC, j.created_at, j.id
	LIMIT 1
	FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs j SET status = 'CLAIMED', robot_id = ?0, lease_token = gen_random_uuid(),
	lease_expires_at = now() + make_interval(secs => ?4), claimed_at = now(), progress_at = NULL,
	attempt = j.attempt + 1, error = NULL, updated_at = now(), revision = j.revision + 1
FROM candidate WHERE j.id = candidate.id
RETURNING j.*`

// Claim leases the best job the calling robot may take, or returns nil when
// there is none. The robot's row is locked first so that its own concurrent
// claims see each other's slots; the claim itself is one statement.
func (s *Jobs) Claim(ctx context.Context, idb bun.IDB) (*JobLease, error) {
	sc, err := robotScope(ctx)
	if err != nil {
		return nil, err
	}
	var claimed []*Job
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		r := new(Robot)
		if err := robotsVisible(sc, tx.NewSelect().Model(r).Where("r.id = ?", sc.robot), "r").For("UPDATE").Scan(ctx); err != nil {
			return notFoundIfNoRows(err, "robot")
		}
		if r.Status == RobotMaintenance {
			return nil
		}
		return tx.NewRaw(claimSQL, r.ID, r.TenantID, pgdialect.Array(r.Capabilities), r.MaxConcurrentJobs, seconds(s.cfg.Lease)).
			Scan(ctx, &claimed)
	})
	if err != nil {
		return nil, fmt.Errorf("claiming a job: %w", err)
	}
	if len(claimed) == 0 {
		return nil, nil
	}
	j := claimed[0]
	return &JobLease{Job: j, LeaseToken: *j.LeaseToken, LeaseExpiresAt: *j.LeaseExpiresAt}, nil
}

// FreeSlots returns how many more jobs the calling robot may hold now: its
// maxConcurrentJobs less the jobs it holds (never below zero).
func (s *Jobs) FreeSlots(ctx context.Context, idb bun.IDB) (int, error) {
	sc, err := robotScope(ctx)
	if err != nil {
		return 0, err
	}
	var free int
	err = robotsVisible(sc, idb.NewSelect().Model((*Robot)(nil)).Where("r.id = ?", sc.robot), "r").
		ColumnExpr("greatest(r.max_concurrent_jobs - (SELECT count(*) FROM jobs l WHERE l.robot_id = r.id AND l.status IN (?)), 0)", bun.List(liveJobStatuses)).
		Scan(ctx, &free)
	if err != nil {
		return 0, notFoundIfNoRows(err, "robot")
	}
	return free, nil
}

// fenced runs a robot's transition of one of its jobs: an UPDATE that
// changes the row only while the robot holds the job under token in one of
// the from states. A refusal explains itself (see explainFence).
func (s *Jobs) fenced(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID, from []JobStatus, action string, set func(*bun.UpdateQuery) *bun.UpdateQuery) (*Job, error) {
	sc, err := robotScope(ctx)
	if err != nil {
		return nil, err
	}
	j := new(Job)
	q := inTenant(sc, idb.NewUpdate().Model(j).Where("j.id = ?", jobID), "j").
		Where("j.robot_id = ? AND j.lease_token = ? AND j.status IN (?)", sc.robot, token, bun.List(from)).
		Set("updated_at = now()").Set("revision = j.revision + 1")
	err = set(q).Returning("*").Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, s.explainFence(ctx, idb, sc, jobID, token, action)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", action, err)
	}
	return j, nil
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
	return s.fenced(ctx, idb, jobID, token, []JobStatus{JobClaimed}, "start", func(q *bun.UpdateQuery) *bun.UpdateQuery {
		return q.Set("status = ?", JobRunning).Set("started_at = now()").Set("progress_at = now()").
			Set("lease_expires_at = now() + make_interval(secs => ?)", seconds(s.cfg.Lease))
	})
}

// extendRunningLeases is a heartbeat's extension of the leases of robot's
// RUNNING jobs: a lease from now, but never past ProgressTimeout after the
// job's last progress, so a job that makes no progress loses its lease
// however alive its robot is. CLAIMED jobs are not extended: a claim must
// be started within its lease. Rows are locked in id order, as the
// sweeper's rescue does, so the two can never deadlock.
func extendRunningLeases(ctx context.Context, tx bun.Tx, cfg QueueConfig, robot uuid.UUID) error {
	_, err := tx.NewUpdate().Model((*Job)(nil)).
		Where("j.id IN (SELECT id FROM jobs WHERE robot_id = ? AND status = ? ORDER BY id FOR UPDATE)", robot, JobRunning).
		Set("lease_expires_at = least(now() + make_interval(secs => ?), j.progress_at + make_interval(secs => ?))",
			seconds(cfg.Lease), seconds(cfg.progressTimeout())).
		Exec(ctx)
	if err != nil {
		return fmt.Errorf("extending leases: %w", err)
	}
	return nil
}

// Progress records a running job's progress and extends its lease; a message
// goes to the job's log. A report (even of unchanged progress) is what lets
// heartbeats keep extending the lease for another ProgressTimeout.
func (s *Jobs) Progress(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID, progress int, currentNode, message *string) (*Job, error) {
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
	var j *Job
	err := idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var err error
		j, err = s.fenced(ctx, tx, jobID, token, []JobStatus{JobRunning}, "report progress on", func(q *bun.UpdateQuery) *bun.UpdateQuery {
			q = q.Set("progress = ?", progress).Set("progress_at = now()").
				Set("lease_expires_at = now() + make_interval(secs => ?)", seconds(s.cfg.Lease))
			if currentNode != nil {
				q = q.Set("current_node = ?", *currentNode)
			}
			return q
		})
		if err != nil || message == nil {
			return err
		}
		return insertLines(ctx, tx, j.TenantID, *j.RobotID, []logLine{{job: &j.ID, level: LogInfo, message: *message, fields: map[string]any{"progress": progress}, at: time.Now()}})
	})
	return j, err
}

// Complete finishes a running job with its result.
func (s *Jobs) Complete(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID, result map[string]any) (*Job, error) {
	result, err := checkJSONObject("result", result)
	if err != nil {
		return nil, err
	}
	return s.fenced(ctx, idb, jobID, token, []JobStatus{JobRunning}, "complete", func(q *bun.UpdateQuery) *bun.UpdateQuery {
		return q.Set("status = ?", JobCompleted).Set("result = ?::jsonb", jsonText(result)).Set("progress = 100").
			Set("finished_at = now()").Set("lease_expires_at = NULL")
	})
}

// backoffSQL is the delay before retry number attempt (1-based), doubling
// from RetryBackoff up to MaxRetryBackoff. Parameters: base and max seconds.
const backoffSQL = "make_interval(secs => least(? * power(2, greatest(j.attempt - 1, 0)), ?))"

// Fail ends a claimed or running job: back to QUEUED (after a backoff) when
// retryable and attempts remain, else FAILED.
func (s *Jobs) Fail(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID, reason string, retryable bool) (*Job, error) {
	if err := checkLogMessage("error", reason); err != nil {
		return nil, err
	}
	if reason == "" {
		return nil, fault.Invalid("error", "say why the job failed")
	}
	var j *Job
	err := idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var err error
		retry := "(? AND j.attempt < j.max_attempts)"
		base, max := seconds(s.cfg.RetryBackoff), seconds(s.cfg.MaxRetryBackoff)
		j, err = s.fenced(ctx, tx, jobID, token, liveJobStatuses, "fail", func(q *bun.UpdateQuery) *bun.UpdateQuery {
			return q.Set("error = ?", reason).Set("lease_expires_at = NULL").
				Set("status = CASE WHEN "+retry+" THEN 'QUEUED' ELSE 'FAILED' END", retryable).
				Set("run_after = CASE WHEN "+retry+" THEN now() + "+backoffSQL+" ELSE j.run_after END", retryable, base, max).
				Set("robot_id = CASE WHEN "+retry+" THEN NULL ELSE j.robot_id END", retryable).
				Set("finished_at = CASE WHEN "+retry+" THEN NULL ELSE now() END", retryable)
		})
		if err != nil || j.Status != JobQueued {
			return err
		}
		return notifyQueued(ctx, tx, j.TenantID)
	})
	return j, err
}

// FindMany returns the visible jobs among ids, keyed by id.
func (s *Jobs) FindMany(ctx context.Context, idb bun.IDB, ids []uuid.UUID) (map[uuid.UUID]*Job, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*Job
	if err := jobsVisible(sc, idb.NewSelect().Model(&rows).Where("j.id = ANY(?::uuid[])", pgUUIDs(ids)), "j").Scan(ctx); err != nil {
		return nil, fmt.Errorf("loading jobs: %w", err)
	}
	return keyed(rows, func(x *Job) uuid.UUID { return x.ID }), nil
}

// CurrentJobsOf returns the jobs each visible robot holds now.
func (s *Jobs) CurrentJobsOf(ctx context.Context, idb bun.IDB, robotIDs []uuid.UUID) (map[uuid.UUID][]*Job, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*Job
	err = jobsVisible(sc, idb.NewSelect().Model(&rows).
		Where("j.robot_id = ANY(?::uuid[]) AND j.status IN (?)", pgUUIDs(robotIDs), bun.List(liveJobStatuses)), "j").
		OrderExpr("j.claimed_at").Scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading current jobs: %w", err)
	}
	return groupBy(robotIDs, rows, func(j *Job) uuid.UUID { return *j.RobotID }), nil
}

// releaseDeletedRobotsJobs lets go of the jobs of robot r, which is being
// deleted in tx. A job aimed at r (enqueued with its robotId) can run on no
// other robot, so it is CANCELLED, queued or live, with the reason. The
// other jobs r holds go back to the queue like a rescue: QUEUED while
// attempts remain, else FAILED; waiting claims are woken for them.
func releaseDeletedRobotsJobs(ctx context.Context, tx bun.Tx, r *Robot) error {
	if _, err := tx.NewUpdate().Model((*Job)(nil)).
		Where("j.target_robot_id = ? AND j.status IN (?)", r.ID, bun.List([]JobStatus{JobQueued, JobClaimed, JobRunning})).
		Set("status = ?", JobCancelled).
		Set("error = 'its target robot was deleted: no other robot may run it'").
		Set("finished_at = now()").Set("lease_expires_at = NULL").
		Set("updated_at = now()").Set("revision = j.revision + 1").
		Exec(ctx); err != nil {
		return fmt.Errorf("cancelling jobs aimed at the robot: %w", err)
	}
	const retry = "(j.attempt < j.max_attempts)"
	var requeued []JobStatus
	err := tx.NewUpdate().Model((*Job)(nil)).
		Where("j.robot_id = ? AND j.status IN (?)", r.ID, bun.List(liveJobStatuses)).
		Set("status = CASE WHEN "+retry+" THEN 'QUEUED' ELSE 'FAILED' END").
		Set("error = CASE WHEN "+retry+" THEN j.error ELSE 'its robot was deleted (attempt ' || j.attempt || ' of ' || j.max_attempts || ')' END").
		Set("finished_at = CASE WHEN "+retry+" THEN NULL ELSE now() END").
		Set("robot_id = NULL").Set("lease_token = NULL").Set("lease_expires_at = NULL").
		Set("updated_at = now()").Set("revision = j.revision + 1").
		Returning("j.status").Scan(ctx, &requeued)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("requeueing the robot's jobs: %w", err)
	}
	if slices.Contains(requeued, JobQueued) {
		return notifyQueued(ctx, tx, r.TenantID)
	}
	return nil
}

// RescueExpired takes back every job, of any tenant, whose lease has
// expired (the robot went silent, did not start its claim within the lease,
// or reported no progress for ProgressTimeout): QUEUED again after a backoff while attempts remain, else FAILED
// with the reason. It is maintenance work, run by the maintenance runner.
func (s *Jobs) RescueExpired(ctx context.Context, idb bun.IDB) ([]*Job, error) {
	var rows []*Job
	const retry = "(j.attempt < j.max_attempts)"
	err := idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		err := tx.NewUpdate().Model(&rows).
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
			Set("finished_at = CASE WHEN " + retry + " THEN NULL ELSE now() END").
			// A requeued job keeps its last lease token (see explainFence;
			// the next claim replaces it); a failed one, which keeps its
			// robot, drops it, so its robot learns that its lease was lost.
			Set("lease_token = CASE WHEN " + retry + " THEN j.lease_token END").
			Set("lease_expires_at = NULL").
			Set("updated_at = now()").Set("revision = j.revision + 1").
			Returning("*").Scan(ctx)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
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

// ChangedSince returns the visible jobs changed at or after since.
func (s *Jobs) ChangedSince(ctx context.Context, idb bun.IDB, since time.Time) ([]*Job, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*Job
	if err := jobsVisible(sc, idb.NewSelect().Model(&rows).Where("j.updated_at >= ?", since), "j").Scan(ctx); err != nil {
		return nil, fmt.Errorf("re-reading jobs: %w", err)
	}
	return rows, nil
}
