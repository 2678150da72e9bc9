package db

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

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
	// ReasonScheduleEnded refuses to resume a schedule whose end is past.
	ReasonScheduleEnded = "SCHEDULE_ENDED"
	// ReasonTargetRobotDeleted refuses to run or change a schedule whose
	// target robot was deleted, until the schedule is given another.
	ReasonTargetRobotDeleted = "TARGET_ROBOT_DELETED"
)

// Job is one run of a workflow version.
type Job struct {
	bun.BaseModel `bun:"table:jobs,alias:j"`

	ID              uuid.UUID  `bun:"id,pk,type:uuid,default:gen_random_uuid()"`
	TenantID        uuid.UUID  `bun:"tenant_id,type:uuid"`
	WorkflowID      uuid.UUID  `bun:"workflow_id,type:uuid"`
	WorkflowVersion int        `bun:"workflow_version"`
	Status          JobStatus  `bun:"status"`
	Priority        int        `bun:"priority"`
	Input           RawJSON    `bun:"input,type:jsonb"`
	Result          RawJSON    `bun:"result,type:jsonb,nullzero"`
	Error           *string    `bun:"error"`
	Progress        int        `bun:"progress"`
	CurrentNode     *string    `bun:"current_node"`
	RobotID         *uuid.UUID `bun:"robot_id,type:uuid"`
	TargetRobotID   *uuid.UUID `bun:"target_robot_id,type:uuid"`
	// TargetLost says the job was aimed at a robot since deleted
	// (TargetRobotID then reads nil): it may not be retried.
	TargetLost           bool       `bun:"target_lost"`
	Attempt              int        `bun:"attempt"`
	MaxAttempts          int        `bun:"max_attempts"`
	LeaseToken           *uuid.UUID `bun:"lease_token,type:uuid"`
	LeaseExpiresAt       *time.Time `bun:"lease_expires_at"`
	RunAfter             time.Time  `bun:"run_after,nullzero,default:now()"`
	RequiredCapabilities []string   `bun:"required_capabilities,array"`
	CreatedBy            string     `bun:"created_by"`
	CreatedAt            time.Time  `bun:"created_at,nullzero,default:clock_timestamp()"`
	ClaimedAt            *time.Time `bun:"claimed_at"`
	StartedAt            *time.Time `bun:"started_at"`
	ProgressAt           *time.Time `bun:"progress_at"`
	FinishedAt           *time.Time `bun:"finished_at"`
	UpdatedAt            time.Time  `bun:"updated_at,nullzero,default:now()"`
	Revision             int64      `bun:"revision,default:1"`

	// ScheduleID and ScheduledFor are the schedule that enqueued the job and
	// the tick it is for (see Schedules): one job per (schedule, tick).
	ScheduleID   *uuid.UUID `bun:"schedule_id,type:uuid"`
	ScheduledFor *time.Time `bun:"scheduled_for"`

	// Robot is the job's robot when a read joined it (GetWithRobot, for a
	// selection that asks for it), with RobotRead set: nil then means the
	// job has no robot the caller may see.
	Robot     *Robot `bun:"rel:belongs-to,join:robot_id=id"`
	RobotRead bool   `bun:"-"`

	// NextLease is the robot's next job, leased in the transaction that
	// completed or failed this one when the robot asked for it (claimNext):
	// the answer carries it, no table does.
	NextLease *JobLease `bun:"-"`
}

// Cursor is the job's position in `jobs`, newest first.
func (j *Job) Cursor() string { return encodeTimeID("job", j.CreatedAt, j.ID) }

// JobLease is a claimed job and the token that fences later calls about it.
type JobLease struct {
	Job            *Job
	LeaseToken     uuid.UUID
	LeaseExpiresAt time.Time
}

// JobCompletionInput is one job's completion in a batch (CompleteMany).
type JobCompletionInput struct {
	JobID      uuid.UUID
	LeaseToken uuid.UUID
	Result     map[string]any
}

// JobCompletions is what a batch of completions did: the jobs completed, in
// the order given, and the robot's next leases when it asked for them.
type JobCompletions struct {
	Jobs       []*Job
	NextLeases []*JobLease
}

// EnqueueJobInput describes a job to queue.
type EnqueueJobInput struct {
	WorkflowID uuid.UUID
	Version    *int
	Input      map[string]any
	// CheckedInput, when set, is the input as stored and checked already
	// (a schedule's): it is used as is, in place of Input, so its numbers
	// keep every digit.
	CheckedInput         RawJSON
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

// Get returns one job the caller may see, or NOT_FOUND. cols, when given,
// narrow the read as List's PageArgs.Columns do.
func (s *Jobs) Get(ctx context.Context, idb bun.IDB, id uuid.UUID, cols ...string) (*Job, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var p Params
	j := new(Job)
	q := narrowed(idb.NewSelect().Model(j), jobKeyColumns, cols).Where("j.id = ?", p.Bind(id))
	if err := scanBound(ctx, jobsVisible(sc.binding(&p), q, "j"), &p); err != nil {
		return nil, notFoundIfNoRows(err, "job")
	}
	return j, nil
}

// jobKeyColumns are the columns a narrowed read of jobs always reads: its
// keys, its relations' keys, the scope's and the cursor's.
var jobKeyColumns = []string{"id", "tenant_id", "robot_id", "workflow_id", "status", "created_at", "claimed_at", "revision"}

// GetWithRobot is Get with the job's robot read in the same statement (a
// LEFT JOIN under the robots' scope rule), for a caller that will show it:
// one round trip instead of two. cols and robotCols, when given, narrow
// the read of the job and of its robot as List's PageArgs.Columns do.
func (s *Jobs) GetWithRobot(ctx context.Context, idb bun.IDB, id uuid.UUID, cols, robotCols []string) (*Job, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var p Params
	sc = sc.binding(&p)
	j := new(Job)
	var narrowRobot func(*bun.SelectQuery) *bun.SelectQuery
	if want := columnsToRead(idb.Dialect().Tables().Get(reflect.TypeFor[Robot]()), robotKeyColumns, robotCols); want != nil {
		narrowRobot = func(q *bun.SelectQuery) *bun.SelectQuery { return q.Column(want...) }
	}
	q := narrowed(idb.NewSelect().Model(j), jobKeyColumns, cols).RelationWithOpts("Robot", bun.RelationOpts{
		Apply:                      narrowRobot,
		AdditionalJoinOnConditions: robotsVisible(sc, joinOn(nil), "robot"),
	}).Where("j.id = ?", p.Bind(id))
	if err := scanBound(ctx, jobsVisible(sc, q, "j"), &p); err != nil {
		return nil, notFoundIfNoRows(err, "job")
	}
	if j.Robot != nil && j.Robot.ID == uuid.Nil { // the LEFT JOIN matched nothing
		j.Robot = nil
	}
	j.RobotRead = true
	return j, nil
}

func (s *Jobs) filtered(ctx context.Context, idb bun.IDB, f JobFilter, par *Params) (*bun.SelectQuery, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	q := jobsVisible(sc.binding(par), idb.NewSelect().Model((*Job)(nil)), "j")
	if f.Status != nil {
		q = q.Where("j.status = ?", par.Arg(*f.Status))
	}
	if f.RobotID != nil {
		q = q.Where("j.robot_id = ?", par.Arg(*f.RobotID))
	}
	if f.WorkflowID != nil {
		q = q.Where("j.workflow_id = ?", par.Arg(*f.WorkflowID))
	}
	if f.CreatedAfter != nil {
		q = q.Where("j.created_at > ?", par.Arg(*f.CreatedAfter))
	}
	if f.CreatedBefore != nil {
		q = q.Where("j.created_at < ?", par.Arg(*f.CreatedBefore))
	}
	return q, nil
}

// List returns a page of jobs, newest first, narrowed to p.Columns.
func (s *Jobs) List(ctx context.Context, idb bun.IDB, f JobFilter, p PageArgs) (Page[Job], error) {
	var par Params
	q, err := s.filtered(ctx, idb, f, &par)
	if err != nil {
		return Page[Job]{}, err
	}
	return newestFirst[Job](ctx, narrowed(q, jobKeyColumns, p.Columns), &par, "job", "j", p)
}

// Count returns how many jobs match f.
func (s *Jobs) Count(ctx context.Context, idb bun.IDB, f JobFilter) (int, error) {
	q, err := s.filtered(ctx, idb, f, nil)
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
		if in.CheckedInput != nil {
			j.Input = in.CheckedInput
		} else if j.Input, err = checkRawJSONObject(field(i, "input"), in.Input); err != nil {
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

// extendRunningLeases is a heartbeat's extension of the leases of robot's
// RUNNING jobs: a lease from now, but never past ProgressTimeout after the
// job's last progress, so a job that makes no progress loses its lease
// however alive its robot is. CLAIMED jobs are not extended: a claim must
// be started within its lease. Rows are locked in id order, as the
// sweeper's rescue does, so the two can never deadlock.
//
// A lease is written only when it moves by a quarter of a lease or more
// (less than three quarters of it left), or up to the progress cap:
// lease_expires_at is indexed, so each extension writes a new version of
// the job and of its index entries, and a robot heartbeating in a loop
// (50 heartbeats in a 2 KB request, 100 running jobs) wrote 9 MB of WAL.
// A robot heartbeating every quarter of a lease keeps as much margin as
// one heartbeating twice as often did.
func extendRunningLeases(ctx context.Context, tx bun.Tx, cfg QueueConfig, robot uuid.UUID) error {
	const extended = "least(now() + make_interval(secs => ?), progress_at + make_interval(secs => ?))"
	lease, progress := seconds(cfg.Lease), seconds(cfg.progressTimeout())
	_, err := tx.NewUpdate().Model((*Job)(nil)).
		Where("j.id IN (SELECT id FROM jobs WHERE robot_id = ? AND status = ? AND "+extended+" > lease_expires_at"+
			" AND ("+extended+" >= lease_expires_at + make_interval(secs => ?) OR "+extended+" = progress_at + make_interval(secs => ?))"+
			" ORDER BY id FOR UPDATE)",
			robot, JobRunning, lease, progress, lease, progress, lease/4, lease, progress, progress).
		Set("lease_expires_at = "+extended, lease, progress).
		Exec(ctx)
	if err != nil {
		return fmt.Errorf("extending leases: %w", err)
	}
	return nil
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
//
// cols, when not nil, are the only columns the caller will read (the
// selection of a GraphQL operation): the statement then reads those and the
// keys, not the other columns (JSON among them) of every job. Other fields of
// the jobs are zero. A name that is not a column reads every column.
func (s *Jobs) CurrentJobsOf(ctx context.Context, idb bun.IDB, robotIDs []uuid.UUID, cols []string) (map[uuid.UUID][]*Job, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var p Params
	var rows []*Job
	err = scanBound(ctx, jobsVisible(sc.binding(&p), narrowed(idb.NewSelect().Model(&rows), jobKeyColumns, cols).
		Where("j.robot_id = ANY(?::uuid[]) AND j.status IN (?)", p.Bind(pgUUIDs(robotIDs)), bun.List(liveJobStatuses)), "j").
		OrderExpr("j.claimed_at"), &p)
	if err != nil {
		return nil, fmt.Errorf("loading current jobs: %w", err)
	}
	return groupBy(robotIDs, rows, func(j *Job) uuid.UUID { return *j.RobotID }), nil
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
