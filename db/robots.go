package db

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/lib/pq"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"fleetgraph/fault"
)

// RobotStatus is what a robot reports itself as.
type RobotStatus string

// Robot states.
const (
	RobotOnline      RobotStatus = "ONLINE"
	RobotBusy        RobotStatus = "BUSY"
	RobotMaintenance RobotStatus = "MAINTENANCE"
	RobotOffline     RobotStatus = "OFFLINE"
)

func (s RobotStatus) valid() bool {
	switch s {
	case RobotOnline, RobotBusy, RobotMaintenance, RobotOffline:
		return true
	}
	return false
}

// Robot is an RPA robot of a tenant.
type Robot struct {
	bun.BaseModel `bun:"table:robots,alias:r"`

	ID                uuid.UUID   `bun:"id,pk,type:uuid,default:gen_random_uuid()"`
	TenantID          uuid.UUID   `bun:"tenant_id,type:uuid"`
	Name              string      `bun:"name"`
	Hostname          string      `bun:"hostname"`
	Status            RobotStatus `bun:"status"`
	Capabilities      []string    `bun:"capabilities,array"`
	MaxConcurrentJobs int         `bun:"max_concurrent_jobs"`
	Environment       string      `bun:"environment"`
	AgentVersion      string      `bun:"agent_version"`
	Metadata          RawJSON     `bun:"metadata,type:jsonb"`
	LastHeartbeatAt   *time.Time  `bun:"last_heartbeat_at"`
	CreatedAt         time.Time   `bun:"created_at,nullzero,default:clock_timestamp()"`
	UpdatedAt         time.Time   `bun:"updated_at,nullzero,default:now()"`
	Revision          int64       `bun:"revision,default:1"`
}

// Cursor is the robot's position in `robots`, newest first.
func (r *Robot) Cursor() string { return encodeTimeID("robot", r.CreatedAt, r.ID) }

// RobotFilter narrows a robot list.
type RobotFilter struct {
	Status       *RobotStatus
	Capability   *string
	NameContains *string
}

// CreateRobotInput is what a new robot is made of.
type CreateRobotInput struct {
	Name              string
	Hostname          *string
	Capabilities      []string
	MaxConcurrentJobs *int
	Environment       *string
	Metadata          map[string]any
}

// UpdateRobotInput changes the fields that are non-nil.
type UpdateRobotInput struct {
	Name              *string
	Hostname          *string
	Capabilities      []string
	MaxConcurrentJobs *int
	Environment       *string
	Metadata          map[string]any
	Status            *RobotStatus
}

// HeartbeatInput is what a robot reports in a heartbeat.
type HeartbeatInput struct {
	Status       RobotStatus
	Metrics      map[string]any
	AgentVersion *string
}

// QueueConfig holds the timings of the job queue.
type QueueConfig struct {
	// Lease is how long a claim (and each extension) lasts.
	Lease time.Duration
	// ProgressTimeout is how long heartbeats may keep a RUNNING job leased
	// after its last progress report (or its start); 0 means
	// DefaultProgressTimeout. It is never shorter than Lease.
	ProgressTimeout time.Duration
	// RetryBackoff is the delay before the first retry; it doubles with each
	// attempt, up to MaxRetryBackoff.
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// OfflineAfter is how long a robot may stay silent before it is OFFLINE.
	OfflineAfter time.Duration
	// HeartbeatSample is the least time between two stored heartbeats of a
	// robot with an unchanged status.
	HeartbeatSample time.Duration
	// TakeoverGrace is how long after a replica takes over the maintenance
	// (at its start, when the database comes back, when the leader before
	// it stops) it waits before it marks silent robots OFFLINE and rescues
	// expired leases. While no replica led, robots could not be heard
	// from: after an outage longer than a lease, every robot would
	// otherwise go OFFLINE and every running job be queued again while its
	// robot still works on it. 0: no grace.
	TakeoverGrace time.Duration
}

// DefaultProgressTimeout is ProgressTimeout when none is configured.
const DefaultProgressTimeout = 10 * time.Minute

// progressTimeout is ProgressTimeout with its default, at least Lease.
func (c QueueConfig) progressTimeout() time.Duration {
	t := c.ProgressTimeout
	if t == 0 {
		t = DefaultProgressTimeout
	}
	return max(t, c.Lease)
}

// DefaultQueueConfig is the production default.
var DefaultQueueConfig = QueueConfig{
	Lease:           60 * time.Second,
	ProgressTimeout: DefaultProgressTimeout,
	RetryBackoff:    5 * time.Second,
	MaxRetryBackoff: 10 * time.Minute,
	OfflineAfter:    90 * time.Second,
	HeartbeatSample: time.Minute,
	TakeoverGrace:   60 * time.Second,
}

// Robots is the store of robots and their heartbeats.
type Robots struct {
	cfg QueueConfig
	// Keys, when set, is the process's API key cache: deleting a robot
	// evicts its keys here before answering, as a revoke does (other
	// replicas evict when the delete's notification arrives).
	Keys *KeyCache
	// comings limits each robot's changes that take it OFFLINE or back.
	comings *tokenBuckets
}

// MaxOfflinePerSweep bounds the robots one MarkSilentOffline marks.
const MaxOfflinePerSweep = 1000

// StatusChangeLimit bounds, per robot and process, the changes that take
// a robot OFFLINE or back, by its heartbeats or by updateRobot: each
// writes a robot.online or robot.offline event, a delivery to each of the
// tenant's endpoints (up to 50) and a history sample, and notifies the
// tenant's dashboards. A robot flapping its status in a loop made 2,200
// deliveries a second, and one updateRobot request of 50 aliases 2,500. A
// robot that comes and goes as it should (a restart, a network blip) fits
// in the burst of 5; past it, one such change each 10 s.
var StatusChangeLimit = RateLimit{PerSecond: 0.1, Burst: 5}

// NewRobots returns the robot store.
func NewRobots(cfg QueueConfig) *Robots {
	comings := newTokenBuckets(StatusChangeLimit, time.Now, func(wait float64) error {
		e := fault.New(fault.RateLimited, "this robot went OFFLINE or came back too often; try again in %.0f s", wait)
		e.Extra = map[string]any{"limit": "ROBOT_STATUS_CHANGES", "max": StatusChangeLimit.PerSecond, "retryAfter": int(wait)}
		return e
	})
	return &Robots{cfg: cfg, comings: comings}
}

var robotConstraints = map[string]*fault.Error{
	"robots_tenant_name_key": {Code: fault.Conflict, Field: "name", Message: "the tenant already has a robot with this name"},
}

var capabilityRE = regexp.MustCompile(`^[A-Za-z0-9_.:\-]{1,64}$`)

// checkCapabilities validates, de-duplicates and sorts a capability list.
func checkCapabilities(field string, caps []string) ([]string, error) {
	if len(caps) > 50 {
		return nil, fault.Invalid(field, "%s may list at most 50 capabilities", field)
	}
	out := make([]string, 0, len(caps))
	for _, c := range caps {
		if !capabilityRE.MatchString(c) {
			return nil, fault.Invalid(field, "capability %q must be 1-64 characters of letters, digits, _ . : -", fault.Excerpt(c, 70))
		}
		out = append(out, c)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// seconds passes a duration to make_interval(secs => ?).
func seconds(d time.Duration) float64 { return d.Seconds() }

func checkShortText(field, v string, max int) (string, error) {
	if len(v) > max {
		return "", fault.Invalid(field, "%s must be at most %d bytes", field, max)
	}
	return v, checkText(field, v)
}

func checkSlots(field string, n int) error {
	if n < 1 || n > 100 {
		return fault.Invalid(field, "%s must be between 1 and 100", field)
	}
	return nil
}

// Get returns one robot the caller may see, or NOT_FOUND. cols, when
// given, narrow the read as List's PageArgs.Columns do.
func (s *Robots) Get(ctx context.Context, idb bun.IDB, id uuid.UUID, cols ...string) (*Robot, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var p Params
	r := new(Robot)
	q := narrowed(idb.NewSelect().Model(r), robotKeyColumns, cols).Where("r.id = ?", p.Bind(id))
	if err := scanBound(ctx, robotsVisible(sc.binding(&p), q, "r"), &p); err != nil {
		return nil, notFoundIfNoRows(err, "robot")
	}
	return r, nil
}

// GetByName returns the robot the caller may see with exactly this name
// (names are unique in a tenant), or NOT_FOUND.
func (s *Robots) GetByName(ctx context.Context, idb bun.IDB, name string) (*Robot, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	r := new(Robot)
	if err := robotsVisible(sc, idb.NewSelect().Model(r).Where("r.name = ?", name), "r").Scan(ctx); err != nil {
		return nil, notFoundIfNoRows(err, "robot")
	}
	return r, nil
}

// Current returns the calling robot.
func (s *Robots) Current(ctx context.Context, idb bun.IDB) (*Robot, error) {
	sc, err := robotScope(ctx)
	if err != nil {
		return nil, err
	}
	return s.Get(ctx, idb, sc.robot)
}

// FindMany returns the visible robots among ids, keyed by id.
//
// cols, when given, narrow the read as List's PageArgs.Columns do.
func (s *Robots) FindMany(ctx context.Context, idb bun.IDB, ids []uuid.UUID, cols ...string) (map[uuid.UUID]*Robot, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var p Params
	var rows []*Robot
	if err := scanBound(ctx, robotsVisible(sc.binding(&p), narrowed(idb.NewSelect().Model(&rows), robotKeyColumns, cols).Where("r.id = ANY(?::uuid[])", p.Bind(pgUUIDs(ids))), "r"), &p); err != nil {
		return nil, fmt.Errorf("loading robots: %w", err)
	}
	return keyed(rows, func(x *Robot) uuid.UUID { return x.ID }), nil
}

func (s *Robots) filtered(ctx context.Context, idb bun.IDB, f RobotFilter, par *Params) (*bun.SelectQuery, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	q := robotsVisible(sc.binding(par), idb.NewSelect().Model((*Robot)(nil)), "r")
	if f.Status != nil {
		q = q.Where("r.status = ?", par.Arg(*f.Status))
	}
	if f.Capability != nil {
		if !capabilityRE.MatchString(*f.Capability) {
			return nil, fault.Invalid("filter.capability", "filter.capability must be 1-64 characters of letters, digits, _ . : -")
		}
		q = q.Where("r.capabilities @> ?::text[]", par.Arg(pq.StringArray{*f.Capability}))
	}
	if f.NameContains != nil && *f.NameContains != "" {
		needle, err := checkFilterText("filter.nameContains", *f.NameContains)
		if err != nil {
			return nil, err
		}
		q = q.Where(`r.name ILIKE ? ESCAPE '\'`, par.Arg(likePattern(needle)))
	}
	return q, nil
}

// robotKeyColumns are the columns a narrowed read of robots always reads.
var robotKeyColumns = []string{"id", "tenant_id", "created_at", "revision"}

// List returns a page of the tenant's robots, newest first, narrowed to
// p.Columns.
func (s *Robots) List(ctx context.Context, idb bun.IDB, f RobotFilter, p PageArgs) (Page[Robot], error) {
	var par Params
	q, err := s.filtered(ctx, idb, f, &par)
	if err != nil {
		return Page[Robot]{}, err
	}
	return newestFirst[Robot](ctx, narrowed(q, robotKeyColumns, p.Columns), &par, "robot", "r", p)
}

// Count returns how many robots match f.
func (s *Robots) Count(ctx context.Context, idb bun.IDB, f RobotFilter) (int, error) {
	q, err := s.filtered(ctx, idb, f, nil)
	return countOf(ctx, q, err, "robots")
}

// Create registers a robot, OFFLINE until its first heartbeat.
func (s *Robots) Create(ctx context.Context, idb bun.IDB, in CreateRobotInput) (*Robot, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	r := &Robot{TenantID: sc.tenant, Status: RobotOffline, MaxConcurrentJobs: 1}
	if r.Name, err = checkName("name", in.Name); err != nil {
		return nil, err
	}
	if in.Hostname != nil {
		if r.Hostname, err = checkShortText("hostname", *in.Hostname, 255); err != nil {
			return nil, err
		}
	}
	if in.Environment != nil {
		if r.Environment, err = checkShortText("environment", *in.Environment, 100); err != nil {
			return nil, err
		}
	}
	if r.Capabilities, err = checkCapabilities("capabilities", in.Capabilities); err != nil {
		return nil, err
	}
	if in.MaxConcurrentJobs != nil {
		if err := checkSlots("maxConcurrentJobs", *in.MaxConcurrentJobs); err != nil {
			return nil, err
		}
		r.MaxConcurrentJobs = *in.MaxConcurrentJobs
	}
	if r.Metadata, err = checkRawJSONObject("metadata", in.Metadata); err != nil {
		return nil, err
	}
	if _, err := idb.NewInsert().Model(r).Returning("*").Exec(ctx); err != nil {
		return nil, constraintError(err, robotConstraints)
	}
	return r, nil
}

// Update changes the given fields of a robot.
func (s *Robots) Update(ctx context.Context, idb bun.IDB, id uuid.UUID, in UpdateRobotInput) (*Robot, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	q := inTenant(sc, idb.NewUpdate().Model((*Robot)(nil)).Where("r.id = ?", id), "r").
		Set("updated_at = now()").Set("revision = r.revision + 1")
	changed := false
	set := func(col string, v any) {
		q = q.Set("? = ?", bun.Ident(col), v)
		changed = true
	}
	if in.Name != nil {
		name, err := checkName("name", *in.Name)
		if err != nil {
			return nil, err
		}
		set("name", name)
	}
	if in.Hostname != nil {
		v, err := checkShortText("hostname", *in.Hostname, 255)
		if err != nil {
			return nil, err
		}
		set("hostname", v)
	}
	if in.Environment != nil {
		v, err := checkShortText("environment", *in.Environment, 100)
		if err != nil {
			return nil, err
		}
		set("environment", v)
	}
	if in.Capabilities != nil {
		caps, err := checkCapabilities("capabilities", in.Capabilities)
		if err != nil {
			return nil, err
		}
		set("capabilities", pgdialect.Array(caps))
	}
	if in.MaxConcurrentJobs != nil {
		if err := checkSlots("maxConcurrentJobs", *in.MaxConcurrentJobs); err != nil {
			return nil, err
		}
		set("max_concurrent_jobs", *in.MaxConcurrentJobs)
	}
	if in.Metadata != nil {
		md, err := checkRawJSONObject("metadata", in.Metadata)
		if err != nil {
			return nil, err
		}
		q = q.Set("metadata = ?::jsonb", string(md))
		changed = true
	}
	if in.Status != nil {
		if !in.Status.valid() {
			return nil, fault.Invalid("status", "status is not a robot status")
		}
		set("status", *in.Status)
	}
	if !changed {
		return s.Get(ctx, idb, id)
	}
	r := new(Robot)
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		// The status before the change tells whether it is a robot.online
		// or robot.offline event for webhooks.
		var was RobotStatus
		if err := inTenant(sc, tx.NewSelect().Model((*Robot)(nil)).Column("status").Where("r.id = ?", id), "r").For(parentChange).Scan(ctx, &was); err != nil {
			return notFoundIfNoRows(err, "robot")
		}
		coming := in.Status != nil && (was == RobotOffline) != (*in.Status == RobotOffline)
		if coming {
			if err := s.comings.allow(id.String()); err != nil {
				return err
			}
		}
		if err := q.Conn(tx).Returning("*").Scan(ctx, r); err != nil {
			return notFoundIfNoRows(constraintError(err, robotConstraints), "robot")
		}
		if coming { // charged once written: a refused name costs no change
			s.comings.spend(id.String())
		}
		return recordRobotChange(ctx, tx, was, r)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Delete removes a robot with its keys, assignments and heartbeats, and
// lets its jobs go (see releaseDeletedRobotsJobs): jobs aimed at it are
// cancelled, its other live jobs go back to the queue.
//
// Under the robot's row lock it first locks what the deletion will change
// or check (lockRobotsJobs): the schedules of the robot's jobs, then the
// jobs themselves in id order, as heartbeats, the rescue, CompleteMany
// and deleteSchedule (its schedule, then its jobs) lock them. Unlocked,
// the release's batches and the foreign keys' ON DELETE SET NULL
// (jobs.robot_id and jobs.target_robot_id, finished jobs included)
// locked the jobs in an index's order, and the second change of a job in
// the transaction checked its schedule_id again (KEY SHARE on the
// schedule): a deleteSchedule of the same jobs deadlocked with it both
// ways.
func (s *Robots) Delete(ctx context.Context, idb bun.IDB, id uuid.UUID) (uuid.UUID, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return uuid.Nil, err
	}
	var deleted uuid.UUID
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		r := new(Robot)
		if err := inTenant(sc, tx.NewSelect().Model(r).Where("r.id = ?", id), "r").For("UPDATE").Scan(ctx); err != nil {
			return notFoundIfNoRows(err, "robot")
		}
		if err := lockRobotsJobs(ctx, tx, r.ID); err != nil {
			return err
		}
		// Its live jobs are released (or cancelled) with their events; its
		// history, marked target_lost and detached by the foreign keys'
		// SET NULL, quietly.
		return quietly(ctx, tx, func() error {
			if err := releaseDeletedRobotsJobs(ctx, tx, r); err != nil {
				return err
			}
			if _, err := tx.NewDelete().Model(r).WherePK().Returning("id").Exec(ctx, &deleted); err != nil {
				return fmt.Errorf("deleting the robot: %w", err)
			}
			return nil
		})
	})
	if err == nil {
		s.Keys.Invalidate("robot:"+deleted.String(), false)
	}
	return deleted, err
}

// lockRobotsJobs locks, for a deletion of robot in tx, every job that the
// robot holds, held or is aimed at, finished or not, in id order, and
// before them the schedules those jobs came from (FOR KEY SHARE, in id
// order). Once the robot's row is locked no job can come to name it (a
// claim locks the row first; an insert naming it waits on the row's key),
// so these are all the jobs the deletion changes after it. A job changed
// twice in one transaction has its foreign keys checked again, and the
// deletion changes a job aimed at the robot twice (cancelled or marked
// target_lost, then the ON DELETE SET NULL): its schedule's KEY SHARE is
// taken here, before the jobs, where deleteSchedule takes its schedule's
// row, rather than after them. A schedule that fires for this robot, or
// is triggered or changed, holds its row and then the robot's KEY SHARE:
// it holds its row FOR NO KEY UPDATE (parentChange), which lets the
// KEY SHARE taken here through.
//
// One statement orders all the jobs: two, each in id order, would not be
// in id order together. jobs_robot_created_idx serves robot_id and
// jobs_target_robot_idx target_robot_id (migration 0019; the foreign
// key's ON DELETE SET NULL used to read the whole table for it).
func lockRobotsJobs(ctx context.Context, tx bun.Tx, robot uuid.UUID) error {
	var n int
	if err := tx.NewRaw(`SELECT count(*) FROM (
			SELECT 1 FROM schedules WHERE id IN (
				SELECT schedule_id FROM jobs WHERE (robot_id = ? OR target_robot_id = ?) AND schedule_id IS NOT NULL)
			ORDER BY id FOR KEY SHARE) AS s`,
		robot, robot).Scan(ctx, &n); err != nil {
		return fmt.Errorf("locking the schedules of the robot's jobs: %w", err)
	}
	if err := tx.NewRaw(`SELECT count(*) FROM (
			SELECT 1 FROM jobs WHERE robot_id = ? OR target_robot_id = ? ORDER BY id FOR UPDATE) AS j`,
		robot, robot).Scan(ctx, &n); err != nil {
		return fmt.Errorf("locking the robot's jobs: %w", err)
	}
	return nil
}

// Heartbeat records that the calling robot is alive: its status, a sampled
// history row, and a lease extension for every RUNNING job it holds that
// made progress lately (see extendRunningLeases).
func (s *Robots) Heartbeat(ctx context.Context, idb bun.IDB, in HeartbeatInput) (*Robot, error) {
	sc, err := robotScope(ctx)
	if err != nil {
		return nil, err
	}
	if !in.Status.valid() {
		return nil, fault.Invalid("status", "status is not a robot status")
	}
	metrics, err := checkRawJSONObject("metrics", in.Metrics)
	if err != nil {
		return nil, err
	}
	var agentVersion *string
	if in.AgentVersion != nil {
		v, err := checkShortText("agentVersion", *in.AgentVersion, 64)
		if err != nil {
			return nil, err
		}
		agentVersion = &v
	}
	r := new(Robot)
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var prev Robot
		if err := robotsVisible(sc, tx.NewSelect().Model(&prev).Where("r.id = ?", sc.robot), "r").For(parentChange).Scan(ctx); err != nil {
			return notFoundIfNoRows(err, "robot")
		}
		if (prev.Status == RobotOffline) != (in.Status == RobotOffline) {
			// Nothing is written for a refused change: the heartbeat is
			// sent again later.
			if err := s.comings.allow(prev.ID.String()); err != nil {
				return err
			}
			s.comings.spend(prev.ID.String())
		}
		changed := prev.Status != in.Status || (agentVersion != nil && *agentVersion != prev.AgentVersion)
		q := tx.NewUpdate().Model(r).Where("r.id = ?", prev.ID).
			Set("status = ?", in.Status).Set("last_heartbeat_at = now()")
		if agentVersion != nil {
			q = q.Set("agent_version = ?", *agentVersion)
		}
		if changed {
			q = q.Set("updated_at = now()").Set("revision = r.revision + 1")
		}
		if err := q.Returning("*").Scan(ctx); err != nil {
			return fmt.Errorf("recording heartbeat: %w", err)
		}
		if err := recordRobotChange(ctx, tx, prev.Status, r); err != nil {
			return err
		}
		if err := extendRunningLeases(ctx, tx, s.cfg, prev.ID); err != nil {
			return err
		}
		_, err := tx.NewRaw(`INSERT INTO robot_heartbeats (robot_id, tenant_id, status, metrics, agent_version)
			SELECT ?, ?, ?, ?::jsonb, ?
			WHERE ? OR NOT EXISTS (SELECT 1 FROM robot_heartbeats WHERE robot_id = ? AND at > now() - make_interval(secs => ?))`,
			prev.ID, prev.TenantID, in.Status, string(metrics), r.AgentVersion,
			prev.Status != in.Status, prev.ID, seconds(s.cfg.HeartbeatSample)).Exec(ctx)
		if err != nil {
			return fmt.Errorf("sampling heartbeat: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// MarkSilentOffline sets OFFLINE every robot of any tenant whose last
// heartbeat is older than OfflineAfter, and returns them. It is maintenance
// work, run by the maintenance runner, not on behalf of a caller.
//
// One call marks at most MaxOfflinePerSweep robots (those a heartbeat holds
// are skipped: it answers for them), with their robot.offline events in
// one statement, so one tenant's thousands of robots going silent at once
// cost the leader a bounded step, and the rest go at the next sweep.
func (s *Robots) MarkSilentOffline(ctx context.Context, idb bun.IDB) ([]*Robot, error) {
	var rows []*Robot
	err := idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		silent := tx.NewSelect().Model((*Robot)(nil)).Column("r.id").
			Where("r.status <> ?", RobotOffline).
			Where("r.last_heartbeat_at IS NULL OR r.last_heartbeat_at < now() - make_interval(secs => ?)", seconds(s.cfg.OfflineAfter)).
			OrderExpr("r.id").Apply(limitRows(MaxOfflinePerSweep)).For(parentChange + " SKIP LOCKED")
		err := tx.NewUpdate().With("silent", silent).Model(&rows).TableExpr("silent").
			Where("r.id = silent.id").
			Set("status = ?", RobotOffline).Set("updated_at = now()").Set("revision = r.revision + 1").
			Returning("r.*").Scan(ctx)
		if err != nil {
			return fmt.Errorf("marking silent robots offline: %w", err)
		}
		events := make([]outboxEvent, len(rows))
		for i, r := range rows {
			events[i] = outboxEvent{r.TenantID, EventRobotOffline, r.ID, r.UpdatedAt, robotViewOf(r)}
		}
		return recordEvents(ctx, tx, events)
	})
	if err != nil {
		return nil, err
	}
	return rows, nil
}

// ChangedSince returns the visible robots changed at or after since.
func (s *Robots) ChangedSince(ctx context.Context, idb bun.IDB, since time.Time) ([]*Robot, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*Robot
	if err := robotsVisible(sc, idb.NewSelect().Model(&rows).Where("r.updated_at >= ?", since), "r").Scan(ctx); err != nil {
		return nil, fmt.Errorf("re-reading robots: %w", err)
	}
	return rows, nil
}
