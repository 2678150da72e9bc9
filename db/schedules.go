package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/lib/pq"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/cronspec"
	"fleetgraph/fault"
	"fleetgraph/locks"
)

// OverlapPolicy says what a schedule does at a tick while a job it enqueued
// earlier is still QUEUED, CLAIMED or RUNNING.
type OverlapPolicy string

// Overlap policies.
const (
	// OverlapAllow enqueues a job at every tick, whatever is still live.
	OverlapAllow OverlapPolicy = "ALLOW"
	// OverlapSkip enqueues nothing at a tick while a previous job is live;
	// the tick counts as skipped. After downtime it fires once in all, for
	// the latest tick within the catch-up window.
	OverlapSkip OverlapPolicy = "SKIP"
	// OverlapBufferOne holds back one tick while a previous job is live and
	// enqueues it when that job finishes (COMPLETED, FAILED or CANCELLED);
	// further ticks while one is held back are skipped.
	OverlapBufferOne OverlapPolicy = "BUFFER_ONE"
)

func (p OverlapPolicy) valid() bool {
	return p == OverlapAllow || p == OverlapSkip || p == OverlapBufferOne
}

// Limits of a schedule's settings.
const (
	DefaultCatchupWindow = time.Hour
	MinCatchupWindow     = 10 * time.Second
	MaxCatchupWindow     = 30 * 24 * time.Hour
	MaxJitter            = time.Hour
	// MaxTicksPerRound caps the ticks one schedule enqueues (or holds
	// back, for BUFFER_ONE) in one scheduler round; the rest fire in the
	// next rounds. Ticks counted as missed or skipped are counted, not
	// visited (cronspec.Spec.Count), and cost the same however many.
	MaxTicksPerRound = 1000
	// TenantTicksPerRound caps the ticks one tenant's schedules enqueue (or
	// hold back) in one round, so that one tenant's catch-up does not take
	// the round from the others; its remaining due schedules go on at the
	// next rounds. A round takes tenants in turn: every tenant's most
	// overdue schedule, then every tenant's second, and so on.
	TenantTicksPerRound = 1000
	// MaxSchedules caps a tenant's schedules: the scheduler is one task on
	// one leader, and each schedule costs it a transaction at each tick.
	MaxSchedules = 200
	// MaxNextRuns caps Schedule.nextRuns.
	MaxNextRuns = 100
)

// SchedulerTask is the maintenance task that fires schedules; the jobs it
// enqueues are created by system:scheduler.
const SchedulerTask = "scheduler"

// Schedule enqueues jobs of a workflow at the ticks of a cron expression.
type Schedule struct {
	bun.BaseModel `bun:"table:schedules,alias:s"`

	ID                   uuid.UUID     `bun:"id,pk,type:uuid,default:gen_random_uuid()"`
	TenantID             uuid.UUID     `bun:"tenant_id,type:uuid"`
	Name                 string        `bun:"name"`
	WorkflowID           uuid.UUID     `bun:"workflow_id,type:uuid"`
	WorkflowVersion      *int          `bun:"workflow_version"`
	CronExpression       string        `bun:"cron_expression"`
	TimeZone             string        `bun:"time_zone"`
	Input                RawJSON       `bun:"input,type:jsonb"`
	Priority             int           `bun:"priority"`
	RequiredCapabilities []string      `bun:"required_capabilities,array"`
	TargetRobotID        *uuid.UUID    `bun:"target_robot_id,type:uuid"`
	MaxAttempts          int           `bun:"max_attempts"`
	OverlapPolicy        OverlapPolicy `bun:"overlap_policy"`
	CatchupWindowSeconds int           `bun:"catchup_window_seconds"`
	JitterSeconds        int           `bun:"jitter_seconds"`
	StartAt              *time.Time    `bun:"start_at"`
	EndAt                *time.Time    `bun:"end_at"`
	Paused               bool          `bun:"paused"`
	PauseNote            *string       `bun:"pause_note"`
	PausedBy             *string       `bun:"paused_by"`
	PausedAt             *time.Time    `bun:"paused_at"`
	NextTickAt           *time.Time    `bun:"next_tick_at"`
	BufferedTickAt       *time.Time    `bun:"buffered_tick_at"`
	LastFiredAt          *time.Time    `bun:"last_fired_at"`
	MissedTicks          int           `bun:"missed_ticks"`
	LastMissedAt         *time.Time    `bun:"last_missed_at"`
	SkippedTicks         int           `bun:"skipped_ticks"`
	LastSkippedAt        *time.Time    `bun:"last_skipped_at"`
	LastError            *string       `bun:"last_error"`
	LastErrorAt          *time.Time    `bun:"last_error_at"`
	CreatedBy            string        `bun:"created_by"`
	CreatedAt            time.Time     `bun:"created_at,nullzero,default:clock_timestamp()"`
	UpdatedAt            time.Time     `bun:"updated_at,nullzero,default:now()"`
	Revision             int64         `bun:"revision,default:1"`
}

// Cursor is the schedule's position in `schedules`, newest first.
func (s *Schedule) Cursor() string { return encodeTimeID("schedule", s.CreatedAt, s.ID) }

// CreateScheduleInput describes a new schedule; nil fields take defaults.
type CreateScheduleInput struct {
	Name                 string
	WorkflowID           uuid.UUID
	Version              *int
	CronExpression       string
	TimeZone             *string
	Input                map[string]any
	Priority             *int
	RequiredCapabilities []string
	RobotID              *uuid.UUID
	MaxAttempts          *int
	OverlapPolicy        *OverlapPolicy
	CatchupWindowSeconds *int
	JitterSeconds        *int
	StartAt              *time.Time
	EndAt                *time.Time
	Paused               *bool
	PauseNote            *string
}

// ScheduleField names an optional setting that UpdateScheduleInput.Unset clears.
type ScheduleField string

// Settings Unset can clear.
const (
	ScheduleFieldVersion ScheduleField = "VERSION"
	ScheduleFieldRobotID ScheduleField = "ROBOT_ID"
	ScheduleFieldStartAt ScheduleField = "START_AT"
	ScheduleFieldEndAt   ScheduleField = "END_AT"
)

// UpdateScheduleInput changes the given settings; Unset clears optional ones.
type UpdateScheduleInput struct {
	Name                 *string
	Version              *int
	CronExpression       *string
	TimeZone             *string
	Input                map[string]any
	Priority             *int
	RequiredCapabilities []string
	RobotID              *uuid.UUID
	MaxAttempts          *int
	OverlapPolicy        *OverlapPolicy
	CatchupWindowSeconds *int
	JitterSeconds        *int
	StartAt              *time.Time
	EndAt                *time.Time
	Unset                []ScheduleField
}

// ScheduleFilter narrows a schedule list.
type ScheduleFilter struct {
	Paused       *bool
	WorkflowID   *uuid.UUID
	NameContains *string
}

var scheduleConstraints = map[string]*fault.Error{
	"schedules_tenant_name_key": {Code: fault.Conflict, Field: "name", Message: "the tenant already has a schedule with this name"},
}

// Schedules is the store of cron schedules and the scheduler that fires them.
type Schedules struct {
	jobs      *Jobs
	workflows *Workflows
	now       func() time.Time

	mu    sync.Mutex
	specs map[[2]string]*cronspec.Spec // parsed (expression, zone), for the scheduler's rounds
}

// NewSchedules returns the schedule store. now is the scheduler's clock,
// which also decides the next runs the API shows (nil: the system clock).
func NewSchedules(jobs *Jobs, workflows *Workflows, now func() time.Time) *Schedules {
	if now == nil {
		now = time.Now
	}
	return &Schedules{jobs: jobs, workflows: workflows, now: now, specs: map[[2]string]*cronspec.Spec{}}
}

// spec parses a schedule's expression in its zone, reporting bad input in
// the fields cronExpression and timeZone.
func (s *Schedules) spec(expr, zone string) (*cronspec.Spec, error) {
	key := [2]string{expr, zone}
	s.mu.Lock()
	sp, ok := s.specs[key]
	s.mu.Unlock()
	if ok {
		return sp, nil
	}
	loc, err := cronspec.LoadZone(zone)
	if err != nil {
		return nil, fault.Invalid("timeZone", "timeZone: %v", err)
	}
	if sp, err = cronspec.Parse(expr, loc); err != nil {
		return nil, fault.Invalid("cronExpression", "cronExpression: %v", err)
	}
	s.mu.Lock()
	if len(s.specs) > 10_000 {
		clear(s.specs) // a cache, not a record: rebuilt as rounds need it
	}
	s.specs[key] = sp
	s.mu.Unlock()
	return sp, nil
}

// firstTick is the schedule's first tick after now (at or after its start),
// or nil when it has none before its end: it can never fire again.
func firstTick(sp *cronspec.Spec, sch *Schedule, now time.Time) *time.Time {
	from := now
	if sch.StartAt != nil && sch.StartAt.After(now) {
		from = sch.StartAt.Add(-time.Nanosecond) // a tick at the start itself fires
	}
	return tickBefore(sp.Next(from), sch.EndAt)
}

// tickBefore returns t unless it is zero (no tick), past end, or past the
// times Fleetgraph can store and write (TimeRange).
func tickBefore(t time.Time, end *time.Time) *time.Time {
	if t.IsZero() || (end != nil && t.After(*end)) || !TimeInRange(t) {
		return nil
	}
	return &t
}

// check validates a schedule's settings as a whole, resolving its workflow,
// version and robot in the caller's tenant. It is shared by create and
// update, so both refuse the same things; robotNamed says whether the
// input named the target robot (see requireTarget). It sets the schedule's next tick
// to its first after now, unless prev (the schedule before an update)
// ticks alike: a change of name, priority, input or jitter keeps the ticks
// that are due and not yet fired (after a leader's downtime, say).
func (s *Schedules) check(ctx context.Context, tx bun.Tx, sc scope, sch, prev *Schedule, now time.Time, robotNamed bool) error {
	var err error
	if sch.Name, err = checkName("name", sch.Name); err != nil {
		return err
	}
	if sch.TimeZone == "" {
		sch.TimeZone = "UTC"
	}
	// Stored as parsed and measured: without the spaces around it.
	sch.CronExpression = strings.TrimSpace(sch.CronExpression)
	sp, err := s.spec(sch.CronExpression, sch.TimeZone)
	if err != nil {
		return err
	}
	if sch.Priority < -1000 || sch.Priority > 1000 {
		return fault.Invalid("priority", "priority must be between -1000 and 1000")
	}
	if sch.MaxAttempts < 1 || sch.MaxAttempts > 100 {
		return fault.Invalid("maxAttempts", "maxAttempts must be between 1 and 100")
	}
	if sch.RequiredCapabilities, err = checkCapabilities("requiredCapabilities", sch.RequiredCapabilities); err != nil {
		return err
	}
	if !sch.OverlapPolicy.valid() {
		return fault.Invalid("overlapPolicy", "overlapPolicy must be ALLOW, SKIP or BUFFER_ONE")
	}
	if w := time.Duration(sch.CatchupWindowSeconds) * time.Second; w < MinCatchupWindow || w > MaxCatchupWindow {
		return fault.Invalid("catchupWindowSeconds", "catchupWindowSeconds must be between %d and %d", int(MinCatchupWindow.Seconds()), int(MaxCatchupWindow.Seconds()))
	}
	if sch.JitterSeconds < 0 || time.Duration(sch.JitterSeconds)*time.Second > MaxJitter {
		return fault.Invalid("jitterSeconds", "jitterSeconds must be between 0 and %d", int(MaxJitter.Seconds()))
	}
	for field, t := range map[string]*time.Time{"startAt": sch.StartAt, "endAt": sch.EndAt} {
		if t != nil && !TimeInRange(*t) {
			return fault.Invalid(field, "%s must be %s", field, TimeRange)
		}
	}
	if sch.StartAt != nil && sch.EndAt != nil && !sch.EndAt.After(*sch.StartAt) {
		return fault.Invalid("endAt", "endAt (%s) must be after startAt (%s)", sch.EndAt.UTC().Format(time.RFC3339), sch.StartAt.UTC().Format(time.RFC3339))
	}
	if prev == nil || !sameTiming(sch, prev) {
		if sch.NextTickAt = firstTick(sp, sch, now); sch.NextTickAt == nil {
			if sch.EndAt != nil && !sp.Next(now).IsZero() {
				return fault.Invalid("endAt", "the schedule can never fire again: its next tick after now is after endAt (%s)", sch.EndAt.UTC().Format(time.RFC3339))
			}
			return fault.Invalid("cronExpression", "the schedule can never fire: cronExpression %q matches no time in the next five years", fault.Excerpt(sch.CronExpression, 100))
		}
	}
	w, err := s.workflows.get(ctx, tx, sc, sch.WorkflowID, false)
	if err != nil {
		return &fault.Error{Code: fault.NotFound, Field: "workflowId", Message: "workflow not found"}
	}
	if sch.WorkflowVersion != nil {
		if _, err := s.workflows.version(ctx, tx, w, *sch.WorkflowVersion, "version"); err != nil {
			return err
		}
	}
	return requireTarget(ctx, tx, sc, sch, robotNamed)
}

// requireTarget checks that the schedule's target robot, if it has one, is
// a robot of the caller's tenant, and holds it (KEY SHARE) until the
// transaction ends, so that the jobs enqueued meanwhile find it. A robot the
// input named (named) that is not found is NOT_FOUND in field robotId; the
// stored one, deleted since, is CONFLICT (targetRobotDeleted), naming no
// field: the caller sent none.
func requireTarget(ctx context.Context, tx bun.Tx, sc scope, sch *Schedule, named bool) error {
	if sch.TargetRobotID == nil {
		return nil
	}
	err := requireRobot(ctx, tx, sc, *sch.TargetRobotID, "robotId")
	var fe *fault.Error
	if !named && errors.As(err, &fe) && fe.Code == fault.NotFound {
		return targetRobotDeleted()
	}
	return err
}

// targetRobotDeleted refuses to run or change a schedule whose target robot
// was deleted, saying how to fix it; the scheduler records its message as
// each tick's lastError.
func targetRobotDeleted() *fault.Error {
	return &fault.Error{Code: fault.Conflict, Extra: map[string]any{"reason": ReasonTargetRobotDeleted},
		Message: "the schedule's target robot was deleted: unset it (unset: [ROBOT_ID]) or set another robotId"}
}

// sameTiming reports whether a and b tick alike: same expression, zone,
// start and end.
func sameTiming(a, b *Schedule) bool {
	same := func(x, y *time.Time) bool { return x == nil && y == nil || x != nil && y != nil && x.Equal(*y) }
	return a.CronExpression == b.CronExpression && a.TimeZone == b.TimeZone && same(a.StartAt, b.StartAt) && same(a.EndAt, b.EndAt)
}

// Create adds a schedule; its first tick is the first after now (or at or
// after startAt).
func (s *Schedules) Create(ctx context.Context, idb bun.IDB, in CreateScheduleInput) (*Schedule, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	input, err := checkRawJSONObject("input", in.Input)
	if err != nil {
		return nil, err
	}
	sch := &Schedule{
		TenantID: sc.tenant, Name: in.Name, WorkflowID: in.WorkflowID, WorkflowVersion: in.Version,
		CronExpression: in.CronExpression, TimeZone: "UTC", Input: input, MaxAttempts: 3,
		RequiredCapabilities: in.RequiredCapabilities, TargetRobotID: in.RobotID,
		OverlapPolicy: OverlapAllow, CatchupWindowSeconds: int(DefaultCatchupWindow.Seconds()),
		StartAt: in.StartAt, EndAt: in.EndAt, CreatedBy: sc.actor,
	}
	if in.TimeZone != nil {
		sch.TimeZone = *in.TimeZone
	}
	setIf(&sch.Priority, in.Priority)
	setIf(&sch.MaxAttempts, in.MaxAttempts)
	setIf(&sch.OverlapPolicy, in.OverlapPolicy)
	setIf(&sch.CatchupWindowSeconds, in.CatchupWindowSeconds)
	setIf(&sch.JitterSeconds, in.JitterSeconds)
	if in.Paused != nil && *in.Paused {
		note, err := checkPauseNote("pauseNote", in.PauseNote)
		if err != nil {
			return nil, err
		}
		now := s.now()
		sch.Paused, sch.PauseNote, sch.PausedBy, sch.PausedAt = true, note, &sc.actor, &now
	} else if in.PauseNote != nil {
		return nil, fault.Invalid("pauseNote", "pauseNote goes with paused: true")
	}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := s.check(ctx, tx, sc, sch, nil, s.now(), true); err != nil {
			return err
		}
		if err := underTenantCap(ctx, tx, sc, locks.Schedules, (*Schedule)(nil), "s", MaxSchedules, "schedules"); err != nil {
			return err
		}
		if _, err := tx.NewInsert().Model(sch).Returning("*").Exec(ctx); err != nil {
			return constraintError(err, scheduleConstraints)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sch, nil
}

func setIf[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// checkPauseNote validates a pause note sent as field: createSchedule's
// pauseNote, pauseSchedule's note.
func checkPauseNote(field string, note *string) (*string, error) {
	if note == nil {
		return nil, nil
	}
	if len([]rune(*note)) > 500 {
		return nil, fault.Invalid(field, "%s must be at most 500 characters", field)
	}
	return note, checkText(field, *note)
}

// Update changes a schedule's settings. A change of expression, zone, start
// or end restarts its ticks from now; other changes keep its ticks, those
// due but not yet fired too. A tick BUFFER_ONE held back is kept.
func (s *Schedules) Update(ctx context.Context, idb bun.IDB, id uuid.UUID, in UpdateScheduleInput) (*Schedule, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	sch := new(Schedule)
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := inTenant(sc, tx.NewSelect().Model(sch).Where("s.id = ?", id), "s").For(parentChange).Scan(ctx); err != nil {
			return notFoundIfNoRows(err, "schedule")
		}
		prev := *sch
		setIf(&sch.Name, in.Name)
		setIf(&sch.CronExpression, in.CronExpression)
		setIf(&sch.TimeZone, in.TimeZone)
		setIf(&sch.Priority, in.Priority)
		setIf(&sch.MaxAttempts, in.MaxAttempts)
		setIf(&sch.OverlapPolicy, in.OverlapPolicy)
		setIf(&sch.CatchupWindowSeconds, in.CatchupWindowSeconds)
		setIf(&sch.JitterSeconds, in.JitterSeconds)
		if in.Input != nil {
			if sch.Input, err = checkRawJSONObject("input", in.Input); err != nil {
				return err
			}
		}
		if in.RequiredCapabilities != nil {
			sch.RequiredCapabilities = in.RequiredCapabilities
		}
		if in.Version != nil {
			sch.WorkflowVersion = in.Version
		}
		if in.RobotID != nil {
			sch.TargetRobotID = in.RobotID
		}
		if in.StartAt != nil {
			sch.StartAt = in.StartAt
		}
		if in.EndAt != nil {
			sch.EndAt = in.EndAt
		}
		for _, f := range in.Unset {
			switch f {
			case ScheduleFieldVersion:
				sch.WorkflowVersion = nil
			case ScheduleFieldRobotID:
				sch.TargetRobotID = nil
			case ScheduleFieldStartAt:
				sch.StartAt = nil
			case ScheduleFieldEndAt:
				sch.EndAt = nil
			default:
				return fault.Invalid("unset", "unset lists VERSION, ROBOT_ID, START_AT or END_AT")
			}
		}
		if err := s.check(ctx, tx, sc, sch, &prev, s.now(), in.RobotID != nil); err != nil {
			return err
		}
		_, err := tx.NewUpdate().Model(sch).WherePK().
			Column("name", "workflow_version", "cron_expression", "time_zone", "input", "priority", "required_capabilities",
				"target_robot_id", "max_attempts", "overlap_policy", "catchup_window_seconds", "jitter_seconds",
				"start_at", "end_at", "next_tick_at").
			Set("updated_at = now()").Set("revision = s.revision + 1").
			Returning("*").Exec(ctx)
		return constraintError(err, scheduleConstraints)
	})
	if err != nil {
		return nil, err
	}
	return sch, nil
}

// Pause stops a schedule's ticks until Resume, with an optional note. Its
// ticks while paused are not fired, not even on resume.
func (s *Schedules) Pause(ctx context.Context, idb bun.IDB, id uuid.UUID, note *string) (*Schedule, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	if note, err = checkPauseNote("note", note); err != nil {
		return nil, err
	}
	sch := new(Schedule)
	err = inTenant(sc, idb.NewUpdate().Model(sch).Where("s.id = ?", id), "s").Where("NOT s.paused").
		Set("paused = true").Set("pause_note = ?", note).Set("paused_by = ?", sc.actor).Set("paused_at = ?", s.now()).
		Set("updated_at = now()").Set("revision = s.revision + 1").
		Returning("*").Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, s.pauseConflict(ctx, idb, sc, id, "pause", "the schedule is already paused")
	}
	if err != nil {
		return nil, fmt.Errorf("pausing the schedule: %w", err)
	}
	return sch, nil
}

// Resume restarts a paused schedule's ticks from now.
func (s *Schedules) Resume(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Schedule, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	sch := new(Schedule)
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := inTenant(sc, tx.NewSelect().Model(sch).Where("s.id = ?", id), "s").For(parentChange).Scan(ctx); err != nil {
			return notFoundIfNoRows(err, "schedule")
		}
		if !sch.Paused {
			return &fault.Error{Code: fault.Conflict, Message: "the schedule is not paused", Extra: map[string]any{"reason": ReasonIllegalTransition}}
		}
		sp, err := s.spec(sch.CronExpression, sch.TimeZone)
		if err != nil {
			return err
		}
		next := firstTick(sp, sch, s.now())
		if next == nil {
			// Creation and update refuse a schedule that never fires again;
			// resuming one would leave it unpaused and dead.
			return &fault.Error{Code: fault.Conflict, Field: "endAt", Extra: map[string]any{"reason": ReasonScheduleEnded},
				Message: "the schedule can never fire again: its next tick after now is past its endAt; move or unset endAt with updateSchedule first"}
		}
		id := sch.ID
		sch = new(Schedule) // bun leaves a pointer set when it scans NULL into it
		err = tx.NewUpdate().Model(sch).Where("s.id = ?", id).Where("s.paused").
			Set("paused = false").Set("pause_note = NULL").Set("paused_by = NULL").Set("paused_at = NULL").
			Set("next_tick_at = ?", next).
			Set("updated_at = now()").Set("revision = s.revision + 1").
			Returning("*").Scan(ctx)
		if err != nil {
			return fmt.Errorf("resuming the schedule: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sch, nil
}

// pauseConflict explains why a pause or resume changed no row.
func (s *Schedules) pauseConflict(ctx context.Context, idb bun.IDB, sc scope, id uuid.UUID, action, msg string) error {
	if _, err := s.get(ctx, idb, sc, id); err != nil {
		return err
	}
	return &fault.Error{Code: fault.Conflict, Message: msg, Extra: map[string]any{"reason": ReasonIllegalTransition}}
}

// Delete removes a schedule. The jobs it enqueued stay, without their
// scheduleId.
//
// Its jobs lose their scheduleId here, locked in id order as heartbeats,
// the rescue and batched completions lock jobs, before the row goes. The
// foreign key's ON DELETE SET NULL locked them in the order of the tick
// index instead, and deadlocked with the heartbeat of a robot running
// several of them. The schedule's row is locked first: the scheduler and
// triggerSchedule enqueue under it, so no job of it appears meanwhile.
// Its finished jobs are detached quietly (no change-feed notification
// each, db.quietly: a schedule with 20,000 jobs of history notified every
// dashboard 20,000 times); its live ones notify as before.
func (s *Schedules) Delete(ctx context.Context, idb bun.IDB, id uuid.UUID) (uuid.UUID, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return uuid.Nil, err
	}
	var deleted uuid.UUID
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := inTenant(sc, tx.NewSelect().Model((*Schedule)(nil)).Column("s.id").Where("s.id = ?", id), "s").
			For("UPDATE").Scan(ctx, &deleted); err != nil {
			return notFoundIfNoRows(err, "schedule")
		}
		// In one statement, in id order; its history quietly.
		if err := quietly(ctx, tx, func() error {
			_, err := tx.NewUpdate().Model((*Job)(nil)).
				Where("j.id IN (SELECT id FROM jobs WHERE schedule_id = ? ORDER BY id FOR UPDATE)", deleted).
				Set("schedule_id = NULL").Exec(ctx)
			return err
		}); err != nil {
			return fmt.Errorf("detaching the schedule's jobs: %w", err)
		}
		if _, err := tx.NewDelete().Model((*Schedule)(nil)).Where("s.id = ?", deleted).Exec(ctx); err != nil {
			return fmt.Errorf("deleting the schedule: %w", err)
		}
		return nil
	})
	if err != nil {
		return uuid.Nil, err
	}
	return deleted, nil
}

// Trigger runs a schedule now: one job at once, enqueued by the caller,
// whatever its overlap policy and even while paused. Its ticks go on as
// before, and the job is the schedule's live job for its overlap policy
// (SKIP skips the ticks while it is live, BUFFER_ONE holds one back). A
// schedule whose target robot was deleted is CONFLICT (targetRobotDeleted).
func (s *Schedules) Trigger(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Job, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var job *Job
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		sch := new(Schedule)
		if err := inTenant(sc, tx.NewSelect().Model(sch).Where("s.id = ?", id), "s").For(parentChange).Scan(ctx); err != nil {
			return notFoundIfNoRows(err, "schedule")
		}
		if err := requireTarget(ctx, tx, sc, sch, false); err != nil {
			return err
		}
		now := s.now()
		if job, err = s.jobs.Enqueue(ctx, tx, s.jobOf(sch, now, now)); err != nil {
			if isTickTaken(err) {
				return &fault.Error{Code: fault.Conflict, Message: "the schedule already ran at this instant; try again"}
			}
			return err
		}
		_, err := tx.NewUpdate().Model(sch).WherePK().Set("last_fired_at = ?", now).Exec(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return job, nil
}

// jobOf is the job a schedule enqueues for tick, not before runAfter.
func (s *Schedules) jobOf(sch *Schedule, tick, runAfter time.Time) EnqueueJobInput {
	return EnqueueJobInput{
		WorkflowID: sch.WorkflowID, Version: sch.WorkflowVersion, CheckedInput: sch.Input,
		Priority: &sch.Priority, MaxAttempts: &sch.MaxAttempts, RequiredCapabilities: sch.RequiredCapabilities,
		RobotID: sch.TargetRobotID, RunAt: &runAfter, ScheduleID: &sch.ID, ScheduledFor: &tick,
	}
}

// Get returns one schedule of the caller's tenant, or NOT_FOUND.
func (s *Schedules) Get(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Schedule, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	return s.get(ctx, idb, sc, id)
}

func (s *Schedules) get(ctx context.Context, idb bun.IDB, sc scope, id uuid.UUID) (*Schedule, error) {
	sch := new(Schedule)
	if err := inTenant(sc, idb.NewSelect().Model(sch).Where("s.id = ?", id), "s").Scan(ctx); err != nil {
		return nil, notFoundIfNoRows(err, "schedule")
	}
	return sch, nil
}

func (s *Schedules) filtered(ctx context.Context, idb bun.IDB, f ScheduleFilter) (*bun.SelectQuery, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	q := inTenant(sc, idb.NewSelect().Model((*Schedule)(nil)), "s")
	if f.Paused != nil {
		q = q.Where("s.paused = ?", *f.Paused)
	}
	if f.WorkflowID != nil {
		q = q.Where("s.workflow_id = ?", *f.WorkflowID)
	}
	if f.NameContains != nil {
		v, err := checkFilterText("filter.nameContains", *f.NameContains)
		if err != nil {
			return nil, err
		}
		q = q.Where("s.name ILIKE ?", likePattern(v))
	}
	return q, nil
}

// List returns a page of the tenant's schedules, newest first.
func (s *Schedules) List(ctx context.Context, idb bun.IDB, f ScheduleFilter, p PageArgs) (Page[Schedule], error) {
	q, err := s.filtered(ctx, idb, f)
	if err != nil {
		return Page[Schedule]{}, err
	}
	return newestFirst[Schedule](ctx, q, nil, "schedule", "s", p)
}

// Count returns how many schedules match f.
func (s *Schedules) Count(ctx context.Context, idb bun.IDB, f ScheduleFilter) (int, error) {
	q, err := s.filtered(ctx, idb, f)
	return countOf(ctx, q, err, "schedules")
}

// NextRuns returns up to count of the ticks the scheduler fires next (none
// while the schedule is paused), from its stored state as the scheduler
// reads it: first a tick BUFFER_ONE holds back (its job is the next one
// enqueued, when the live job finishes, though its time has passed), then
// the stored next tick and its successors within the end. That next tick
// may be due and not yet fired (the leader down or behind), or later than
// the clock's next tick (after a leader's clock stepped back: the ticks it
// enqueued do not fire again). As the scheduler's next round would at now,
// ticks already older than the catch-up window are left out (they will be
// counted as missed) and SKIP's due ticks collapse into the latest. Whether
// a live job then skips or holds back a later tick is not foreseen. A
// schedule without a stored next tick falls back to the clock's.
func (s *Schedules) NextRuns(sch *Schedule, count int) ([]*time.Time, error) {
	if count < 0 || count > MaxNextRuns {
		return nil, fault.Invalid("count", "count must be between 0 and %d", MaxNextRuns)
	}
	runs := []*time.Time{}
	if sch.Paused || count == 0 {
		return runs, nil
	}
	sp, err := s.spec(sch.CronExpression, sch.TimeZone)
	if err != nil {
		return nil, err
	}
	now := s.now()
	if sch.BufferedTickAt != nil {
		runs = append(runs, sch.BufferedTickAt)
	}
	// A copy the scheduler's own helpers consume, as its next round would.
	next := *sch
	if next.NextTickAt == nil {
		next.NextTickAt = firstTick(sp, sch, now)
	} else {
		missTicks(sp, &next, now, &FireStats{})
		if next.OverlapPolicy == OverlapSkip {
			if latest, n := latestTick(sp, &next, now); n > 0 && len(runs) < count {
				runs = append(runs, &latest)
			}
		}
	}
	for t := next.NextTickAt; t != nil && len(runs) < count; t = tickBefore(sp.Next(*t), sch.EndAt) {
		runs = append(runs, t)
	}
	return runs, nil
}

// MaxRecentJobs caps Schedule.recentJobs.
const MaxRecentJobs = 100

// RecentJobs returns the newest jobs the schedule enqueued, by tick: first
// of them (default 10, at most MaxRecentJobs).
func (s *Schedules) RecentJobs(ctx context.Context, idb bun.IDB, scheduleID uuid.UUID, first *int) ([]*Job, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	limit, err := pageSize(first, 10)
	if err != nil {
		return nil, err
	}
	limit = min(limit, MaxRecentJobs)
	var rows []*Job
	err = jobsVisible(sc, idb.NewSelect().Model(&rows).Where("j.schedule_id = ?", scheduleID), "j").
		OrderExpr("j.scheduled_for DESC").Apply(limitRows(limit)).Scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading a schedule's jobs: %w", err)
	}
	return rows, nil
}

// FireStats counts what one scheduler round did.
type FireStats struct {
	Fired, Skipped, Missed, Buffered int
}

// Fire is one round of the scheduler at now, for every tenant: each due
// schedule enqueues its jobs for the ticks up to now, as system:scheduler
// through the job store. Each schedule is handled in its own transaction
// holding its row (schedules another replica holds are left to it), and
// every job carries its (schedule, tick) key, so a tick fires at most one
// job however many replicas run rounds at once or however often the
// leader changes. A schedule whose job cannot be enqueued (its target robot
// was deleted, say) records the error and moves on to its next tick. One
// that fails otherwise (a database error) is rolled back, to be tried
// again at the next round, and the round goes on with the others: a
// schedule that keeps failing must not starve those due after it. Their
// errors are returned together, after the round, unless ctx ends it.
func (s *Schedules) Fire(ctx context.Context, idb bun.IDB, now time.Time) (FireStats, error) {
	var stats FireStats
	var due []struct {
		ID     uuid.UUID `bun:"id"`
		Tenant uuid.UUID `bun:"tenant_id"`
	}
	// Tenants in turn: each one's most overdue schedule first, then each
	// one's second, and so on.
	err := idb.NewRaw(`SELECT id, tenant_id FROM (
			SELECT s.id, s.tenant_id, s.next_tick_at,
			       row_number() OVER (PARTITION BY s.tenant_id ORDER BY s.next_tick_at) AS turn
			FROM schedules AS s
			WHERE NOT s.paused AND (s.next_tick_at <= ? OR s.buffered_tick_at IS NOT NULL)) AS d
		ORDER BY turn, next_tick_at LIMIT 10000`, now).Scan(ctx, &due)
	if err != nil {
		return stats, fmt.Errorf("finding due schedules: %w", err)
	}
	var errs []error
	failed := 0
	used := map[uuid.UUID]int{} // ticks enqueued or held back, per tenant
	for _, d := range due {
		left := TenantTicksPerRound - used[d.Tenant]
		if left <= 0 {
			continue // the tenant's share of the round is spent
		}
		var one FireStats
		err := idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			return s.fireOne(ctx, tx, d.ID, now, min(left, MaxTicksPerRound), &one)
		})
		if err == nil {
			used[d.Tenant] += one.Fired + one.Buffered
			stats.Fired, stats.Skipped, stats.Missed, stats.Buffered = stats.Fired+one.Fired, stats.Skipped+one.Skipped, stats.Missed+one.Missed, stats.Buffered+one.Buffered
			continue
		}
		id := d.ID
		if ctx.Err() != nil {
			return stats, fmt.Errorf("firing schedule %s: %w", id, err)
		}
		if failed++; len(errs) < 10 {
			errs = append(errs, fmt.Errorf("firing schedule %s: %w", id, err))
		}
	}
	if failed > len(errs) {
		errs = append(errs, fmt.Errorf("and %d more schedules failed", failed-len(errs)))
	}
	return stats, errors.Join(errs...)
}

// fireOne fires one schedule's due ticks, as Fire describes, enqueueing
// (or holding back) at most limit of them.
func (s *Schedules) fireOne(ctx context.Context, tx bun.Tx, id uuid.UUID, now time.Time, limit int, stats *FireStats) error {
	sch := new(Schedule)
	err := tx.NewSelect().Model(sch).Where("s.id = ?", id).
		Where("NOT s.paused AND (s.next_tick_at <= ? OR s.buffered_tick_at IS NOT NULL)", now).
		For(parentChange + " SKIP LOCKED").Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // another replica has it, or it changed since the list
	}
	if err != nil {
		return fmt.Errorf("locking the schedule: %w", err)
	}
	ctx = auth.WithPrincipal(ctx, auth.SystemPrincipal(SchedulerTask, sch.TenantID))
	sc, err := userScope(ctx)
	if err != nil {
		return err
	}
	before := sch.tickState()
	live := false
	if sch.OverlapPolicy != OverlapAllow {
		if live, err = tx.NewSelect().Model((*Job)(nil)).
			Where("j.schedule_id = ? AND j.status IN (?)", sch.ID, bun.List([]JobStatus{JobQueued, JobClaimed, JobRunning})).
			Exists(ctx); err != nil {
			return fmt.Errorf("looking for the schedule's live job: %w", err)
		}
	}
	// A target robot deleted since fails every tick alike, checked once at
	// the first tick to fire: each is recorded in lastError (what to do
	// included) and passes unfired.
	var target error
	checked := false
	fire := func(tick time.Time) error {
		if !checked {
			target, checked = requireTarget(ctx, tx, sc, sch, false), true
		}
		err := target
		if err == nil {
			err = s.enqueueTick(ctx, tx, sch, tick)
		}
		var fe *fault.Error
		switch {
		case errors.Is(err, errTickTaken):
			sch.LastFiredAt, live = &tick, true
			return nil
		case errors.As(err, &fe):
			msg := fmt.Sprintf("the job for %s was not enqueued: %s", tick.UTC().Format(time.RFC3339), fe.Message)
			sch.LastError, sch.LastErrorAt = &msg, &now
			return nil
		case err != nil:
			return err
		}
		sch.LastFiredAt, live = &tick, true
		stats.Fired++
		return nil
	}
	skip := func(n int, last time.Time) {
		sch.SkippedTicks += n
		sch.LastSkippedAt = &last
		stats.Skipped += n
	}
	if sch.BufferedTickAt != nil && !live {
		tick := *sch.BufferedTickAt
		sch.BufferedTickAt = nil
		if err := fire(tick); err != nil {
			return err
		}
	}
	if sch.NextTickAt != nil && !sch.NextTickAt.After(now) {
		sp, err := s.spec(sch.CronExpression, sch.TimeZone)
		if err != nil {
			msg := "the schedule stopped: " + err.Error()
			sch.LastError, sch.LastErrorAt, sch.NextTickAt = &msg, &now, nil
		} else {
			missTicks(sp, sch, now, stats)
			switch sch.OverlapPolicy {
			case OverlapSkip:
				// Catching up, SKIP fires only the latest tick, however
				// many are due: all are consumed at once.
				first := sch.NextTickAt
				latest, n := latestTick(sp, sch, now)
				switch {
				case n == 0:
				case live:
					skip(n, latest)
				default:
					if n > 1 {
						skip(n-1, maxTime(sp.Prev(latest.Add(-time.Nanosecond)), *first))
					}
					if err := fire(latest); err != nil {
						return err
					}
				}
			case OverlapBufferOne:
				for _, tick := range dueTicks(sp, sch, now, limit) {
					switch {
					case !live && sch.BufferedTickAt == nil:
						if err := fire(tick); err != nil {
							return err
						}
					case sch.BufferedTickAt == nil:
						t := tick
						sch.BufferedTickAt = &t
						stats.Buffered++
					default:
						skip(1, tick)
					}
				}
			default:
				for _, tick := range dueTicks(sp, sch, now, limit) {
					if err := fire(tick); err != nil {
						return err
					}
				}
			}
		}
	}
	if sch.tickState() == before {
		return nil // a held-back tick still waiting: nothing to record
	}
	_, err = tx.NewUpdate().Model(sch).WherePK().
		Column("next_tick_at", "buffered_tick_at", "last_fired_at", "missed_ticks", "last_missed_at",
			"skipped_ticks", "last_skipped_at", "last_error", "last_error_at").
		Set("updated_at = now()").Set("revision = s.revision + 1").
		Exec(ctx)
	if err != nil {
		return fmt.Errorf("recording the schedule's ticks: %w", err)
	}
	return nil
}

// tickState is what a scheduler round may change of a schedule, comparable.
type tickState struct {
	next, buffered, fired, missedAt, skippedAt, errorAt time.Time
	missed, skipped                                     int
}

func (sch *Schedule) tickState() tickState {
	at := func(t *time.Time) time.Time {
		if t == nil {
			return time.Time{}
		}
		return *t
	}
	return tickState{next: at(sch.NextTickAt), buffered: at(sch.BufferedTickAt), fired: at(sch.LastFiredAt),
		missedAt: at(sch.LastMissedAt), skippedAt: at(sch.LastSkippedAt), errorAt: at(sch.LastErrorAt),
		missed: sch.MissedTicks, skipped: sch.SkippedTicks}
}

// missTicks consumes the schedule's ticks older than its catch-up window,
// counting them as missed without visiting them (cronspec.Spec.Count):
// the same cost after a minute's outage as after a month's.
func missTicks(sp *cronspec.Spec, sch *Schedule, now time.Time, stats *FireStats) {
	cutoff := now.Add(-time.Duration(sch.CatchupWindowSeconds) * time.Second)
	t := sch.NextTickAt
	if t == nil || !t.Before(cutoff) {
		return
	}
	last := cutoff.Add(-time.Nanosecond)
	if sch.EndAt != nil && sch.EndAt.Before(last) {
		last = *sch.EndAt
	}
	n := 1 + sp.Count(*t, last) // t is a tick, and so are the others counted
	latest := *t
	if n > 1 {
		latest = maxTime(sp.Prev(last), latest)
	}
	sch.MissedTicks += int(n)
	sch.LastMissedAt = &latest
	stats.Missed += int(n)
	sch.NextTickAt = tickBefore(sp.Next(latest), sch.EndAt)
}

// latestTick consumes every tick of the schedule due by now and returns
// the latest and how many there were, without visiting those between.
func latestTick(sp *cronspec.Spec, sch *Schedule, now time.Time) (time.Time, int) {
	t := sch.NextTickAt
	if t == nil || t.After(now) {
		return time.Time{}, 0
	}
	last := now
	if sch.EndAt != nil && sch.EndAt.Before(last) {
		last = *sch.EndAt
	}
	n := 1 + sp.Count(*t, last)
	latest := *t
	if n > 1 {
		latest = maxTime(sp.Prev(last), latest)
	}
	sch.NextTickAt = tickBefore(sp.Next(latest), sch.EndAt)
	return latest, int(n)
}

// dueTicks consumes the schedule's ticks due by now, at most limit, and
// returns them in order. NextTickAt is left at the first tick not consumed.
func dueTicks(sp *cronspec.Spec, sch *Schedule, now time.Time, limit int) []time.Time {
	t := sch.NextTickAt
	var due []time.Time
	for t != nil && !t.After(now) && len(due) < limit {
		due = append(due, *t)
		t = tickBefore(sp.Next(*t), sch.EndAt)
	}
	sch.NextTickAt = t
	return due
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// enqueueTick enqueues the schedule's job for tick through the job store,
// not before tick plus the schedule's jitter. A job already enqueued for
// the tick (by another replica, or a leader that lost the lock mid-round)
// makes it a no-op: the unique key refuses the second, and the savepoint
// the store's transaction opens inside tx rolls back alone.
func (s *Schedules) enqueueTick(ctx context.Context, tx bun.Tx, sch *Schedule, tick time.Time) error {
	_, err := s.jobs.Enqueue(ctx, tx, s.jobOf(sch, tick, tick.Add(jitter(sch, tick))))
	if isTickTaken(err) {
		return errTickTaken
	}
	return err
}

// errTickTaken says a tick's job exists already.
var errTickTaken = errors.New("the tick's job was enqueued already")

// isTickTaken reports whether err is the (schedule, tick) key refusing a
// second job for a tick.
func isTickTaken(err error) bool {
	var pqErr *pq.Error
	return errors.As(err, &pqErr) && pqErr.Constraint == "jobs_schedule_tick_key"
}

// jitter is a tick's delay, 0 to JitterSeconds seconds: the same for the
// same schedule and tick on every replica, and spread across schedules that
// share a minute.
func jitter(sch *Schedule, tick time.Time) time.Duration {
	if sch.JitterSeconds <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write(sch.ID[:])
	_, _ = fmt.Fprint(h, tick.UnixNano())
	return time.Duration(h.Sum64()%uint64(sch.JitterSeconds+1)) * time.Second
}
