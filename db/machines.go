package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"fleetgraph/fault"
)

// MachineStatus is a machine's lifecycle state.
type MachineStatus string

// Machine states.
const (
	MachineStopped MachineStatus = "STOPPED"
	MachineRunning MachineStatus = "RUNNING"
	MachineError   MachineStatus = "ERROR"
)

// Machine is a machine owned by one user of a tenant.
type Machine struct {
	bun.BaseModel `bun:"table:machines,alias:m"`

	ID            uuid.UUID     `bun:"id,pk,type:uuid,default:gen_random_uuid()"`
	TenantID      uuid.UUID     `bun:"tenant_id,type:uuid"`
	OwnerID       uuid.UUID     `bun:"owner_id,type:uuid"`
	Name          string        `bun:"name"`
	Status        MachineStatus `bun:"status"`
	Configuration RawJSON       `bun:"configuration,type:jsonb"`
	LastStartedAt *time.Time    `bun:"last_started_at"`
	LastStoppedAt *time.Time    `bun:"last_stopped_at"`
	CreatedAt     time.Time     `bun:"created_at,nullzero,default:clock_timestamp()"`
	UpdatedAt     time.Time     `bun:"updated_at,nullzero,default:now()"`
	Version       int64         `bun:"version,default:1"`
}

// Cursor is the machine's position in `machines`, newest first.
func (m *Machine) Cursor() string { return encodeTimeID("machine", m.CreatedAt, m.ID) }

// MachineEvent is one entry of a machine's log.
type MachineEvent struct {
	bun.BaseModel `bun:"table:machine_events,alias:e"`

	ID        int64     `bun:"id,pk,autoincrement"`
	MachineID uuid.UUID `bun:"machine_id,type:uuid"`
	TenantID  uuid.UUID `bun:"tenant_id,type:uuid"`
	EventType string    `bun:"event_type"`
	Details   RawJSON   `bun:"details,type:jsonb"`
	// DetailsText is the details as logged when a client sent a string
	// (Details then reads {"text": DetailsText}); nil for an object.
	DetailsText *string   `bun:"details_text"`
	Actor       string    `bun:"actor"`
	CreatedAt   time.Time `bun:"created_at,nullzero,default:now()"`
	// OwnerID is the machine's owner, read only by the live path's loads
	// (EventsByID, EventsSince), which check it against each subscriber.
	OwnerID uuid.UUID `bun:"owner_id,scanonly"`
	// Xact is the top-level transaction that wrote the event (0: before
	// migration 0012), read only by EventsSince: a resync offers an event
	// to the subscribers it was committed after (Snapshot.Committed).
	Xact uint64 `bun:"xact,scanonly"`
}

// Cursor is the event's position in a machine's log, newest first.
func (e *MachineEvent) Cursor() string {
	return encodeCursor("event", strconv.FormatInt(e.ID, 10))
}

// DeploymentStatus is where a deployment is in its lifecycle.
type DeploymentStatus string

// Deployment states.
const (
	DeploymentPending    DeploymentStatus = "PENDING"
	DeploymentActive     DeploymentStatus = "ACTIVE"
	DeploymentSuperseded DeploymentStatus = "SUPERSEDED"
)

// Deployment is a protocol deployed to a machine.
type Deployment struct {
	bun.BaseModel `bun:"table:deployments,alias:d"`

	ID           uuid.UUID        `bun:"id,pk,type:uuid,default:gen_random_uuid()"`
	MachineID    uuid.UUID        `bun:"machine_id,type:uuid"`
	TenantID     uuid.UUID        `bun:"tenant_id,type:uuid"`
	Name         string           `bun:"name"`
	Version      string           `bun:"version"`
	Settings     RawJSON          `bun:"settings,type:jsonb"`
	Status       DeploymentStatus `bun:"status"`
	DeployedBy   string           `bun:"deployed_by"`
	CreatedAt    time.Time        `bun:"created_at,nullzero,default:clock_timestamp()"`
	ActivatedAt  *time.Time       `bun:"activated_at"`
	SupersededAt *time.Time       `bun:"superseded_at"`
}

// MachineFilter narrows a machine list.
type MachineFilter struct {
	Status       *MachineStatus
	NameContains *string
}

// CreateMachineInput is what a new machine is made of.
type CreateMachineInput struct {
	Name          string
	Configuration map[string]any
}

// UpdateMachineInput changes the fields that are non-nil.
type UpdateMachineInput struct {
	Name          *string
	Configuration map[string]any
}

// ProtocolInput describes a protocol to deploy.
type ProtocolInput struct {
	Name     string
	Version  string
	Settings map[string]any
}

// Machines is the store of machines, their events and their deployments.
type Machines struct{}

// NewMachines returns the machine store.
func NewMachines() *Machines { return &Machines{} }

var machineConstraints = map[string]*fault.Error{
	"machines_owner_name_key": {Code: fault.Conflict, Field: "name", Message: "you already have a machine with this name"},
}

// Get returns one machine the caller may see, or NOT_FOUND.
func (s *Machines) Get(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Machine, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	return s.get(ctx, idb, sc, id, "")
}

// get reads one visible machine, NOT_FOUND when there is none; lock, when
// not empty, is the row lock it takes (UPDATE, KEY SHARE): a machine read
// in order to write a row of its own (an event, a deployment) must be
// locked, at least FOR KEY SHARE, or its deletion meanwhile fails that
// write on the foreign key instead of waiting for it.
func (s *Machines) get(ctx context.Context, idb bun.IDB, sc scope, id uuid.UUID, lock string) (*Machine, error) {
	m := new(Machine)
	q := ownedBy(sc, idb.NewSelect().Model(m).Where("m.id = ?", id), "m")
	if lock != "" {
		q = q.For(lock)
	}
	if err := q.Scan(ctx); err != nil {
		return nil, notFoundIfNoRows(err, "machine")
	}
	return m, nil
}

// FindMany returns the visible machines among ids, keyed by id; invisible or
// absent ids are missing from the map.
func (s *Machines) FindMany(ctx context.Context, idb bun.IDB, ids []uuid.UUID) (map[uuid.UUID]*Machine, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*Machine
	if err := ownedBy(sc, idb.NewSelect().Model(&rows).Where("m.id = ANY(?::uuid[])", pgUUIDs(ids)), "m").Scan(ctx); err != nil {
		return nil, fmt.Errorf("loading machines: %w", err)
	}
	return keyed(rows, func(x *Machine) uuid.UUID { return x.ID }), nil
}

func (s *Machines) filtered(ctx context.Context, idb bun.IDB, f MachineFilter, par *Params) (*bun.SelectQuery, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	q := ownedBy(sc.binding(par), idb.NewSelect().Model((*Machine)(nil)), "m")
	if f.Status != nil {
		q = q.Where("m.status = ?", par.Arg(*f.Status))
	}
	if f.NameContains != nil && *f.NameContains != "" {
		needle, err := checkFilterText("filter.nameContains", *f.NameContains)
		if err != nil {
			return nil, err
		}
		q = q.Where(`m.name ILIKE ? ESCAPE '\'`, par.Arg(likePattern(needle)))
	}
	return q, nil
}

// List returns a page of the caller's machines, newest first.
func (s *Machines) List(ctx context.Context, idb bun.IDB, f MachineFilter, p PageArgs) (Page[Machine], error) {
	var par Params
	q, err := s.filtered(ctx, idb, f, &par)
	if err != nil {
		return Page[Machine]{}, err
	}
	return newestFirst[Machine](ctx, q, &par, "machine", "m", p)
}

// Count returns how many of the caller's machines match f.
func (s *Machines) Count(ctx context.Context, idb bun.IDB, f MachineFilter) (int, error) {
	q, err := s.filtered(ctx, idb, f, nil)
	return countOf(ctx, q, err, "machines")
}

// Create makes a STOPPED machine owned by the caller and logs `created`.
func (s *Machines) Create(ctx context.Context, idb bun.IDB, in CreateMachineInput) (*Machine, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	name, err := checkName("name", in.Name)
	if err != nil {
		return nil, err
	}
	cfg, err := checkRawJSONObject("configuration", in.Configuration)
	if err != nil {
		return nil, err
	}
	m := &Machine{TenantID: sc.tenant, OwnerID: sc.user, Name: name, Status: MachineStopped, Configuration: cfg}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.NewInsert().Model(m).Returning("*").Exec(ctx); err != nil {
			return constraintError(err, machineConstraints)
		}
		return s.logEvent(ctx, tx, sc, m, "created", objectJSON(map[string]any{"name": m.Name}), nil)
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Update renames a machine or replaces its configuration, and logs `updated`
// with the names of the changed fields.
func (s *Machines) Update(ctx context.Context, idb bun.IDB, id uuid.UUID, in UpdateMachineInput) (*Machine, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	q := ownedBy(sc, idb.NewUpdate().Model((*Machine)(nil)).Where("m.id = ?", id), "m").
		Set("updated_at = now()").Set("version = m.version + 1")
	var changed []any
	if in.Name != nil {
		name, err := checkName("name", *in.Name)
		if err != nil {
			return nil, err
		}
		q = q.Set("name = ?", name)
		changed = append(changed, "name")
	}
	if in.Configuration != nil {
		cfg, err := checkRawJSONObject("configuration", in.Configuration)
		if err != nil {
			return nil, err
		}
		q = q.Set("configuration = ?::jsonb", string(cfg))
		changed = append(changed, "configuration")
	}
	if len(changed) == 0 {
		return s.get(ctx, idb, sc, id, "")
	}
	m := new(Machine)
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := q.Conn(tx).Returning("*").Scan(ctx, m); err != nil {
			return notFoundIfNoRows(constraintError(err, machineConstraints), "machine")
		}
		return s.logEvent(ctx, tx, sc, m, "updated", objectJSON(map[string]any{"fields": changed}), nil)
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Delete removes a machine with its events and deployments.
func (s *Machines) Delete(ctx context.Context, idb bun.IDB, id uuid.UUID) (uuid.UUID, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return uuid.Nil, err
	}
	var deleted uuid.UUID
	err = ownedBy(sc, idb.NewDelete().Model((*Machine)(nil)).Where("m.id = ?", id), "m").
		Returning("m.id").Scan(ctx, &deleted)
	if err != nil {
		return uuid.Nil, notFoundIfNoRows(err, "machine")
	}
	return deleted, nil
}

// Start sets a STOPPED or ERROR machine RUNNING, logs `started` and activates a
// pending deployment. Starting a RUNNING machine returns it unchanged.
func (s *Machines) Start(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Machine, error) {
	return s.transition(ctx, idb, id, MachineRunning, "last_started_at", "started")
}

// Stop sets a RUNNING or ERROR machine STOPPED and logs `stopped`. Stopping a
// STOPPED machine returns it unchanged.
func (s *Machines) Stop(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Machine, error) {
	return s.transition(ctx, idb, id, MachineStopped, "last_stopped_at", "stopped")
}

// transition moves a machine to status in one conditional UPDATE; when no row
// changes the machine either is not visible (NOT_FOUND) or already has the
// status, which is returned as is with no event: retries are harmless.
func (s *Machines) transition(ctx context.Context, idb bun.IDB, id uuid.UUID, to MachineStatus, stampColumn, eventType string) (*Machine, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	m := new(Machine)
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		err := ownedBy(sc, tx.NewUpdate().Model((*Machine)(nil)).Where("m.id = ?", id), "m").
			Where("m.status <> ?", to).
			Set("status = ?", to).
			Set("? = now()", bun.Ident(stampColumn)).
			Set("updated_at = now()").
			Set("version = m.version + 1").
			Returning("*").Scan(ctx, m)
		if errors.Is(err, sql.ErrNoRows) {
			m, err = s.get(ctx, tx, sc, id, "")
			return err
		}
		if err != nil {
			return fmt.Errorf("changing machine status: %w", err)
		}
		activated, err := s.activatePending(ctx, tx, m, to)
		if err != nil {
			return err
		}
		details := map[string]any{}
		if activated != nil {
			details["deploymentId"] = activated.ID.String()
		}
		if err := s.logEvent(ctx, tx, sc, m, eventType, objectJSON(details), nil); err != nil {
			return err
		}
		if activated != nil {
			return s.logEvent(ctx, tx, sc, m, "deployment_activated", objectJSON(map[string]any{
				"deploymentId": activated.ID.String(), "name": activated.Name, "version": activated.Version,
			}), nil)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// activatePending makes a machine's PENDING deployment ACTIVE when it has just
// started, superseding the previous ACTIVE one.
func (s *Machines) activatePending(ctx context.Context, tx bun.Tx, m *Machine, to MachineStatus) (*Deployment, error) {
	if to != MachineRunning {
		return nil, nil
	}
	var pending Deployment
	err := tx.NewSelect().Model(&pending).Where("d.machine_id = ? AND d.status = ?", m.ID, DeploymentPending).For("UPDATE").Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("finding a pending deployment: %w", err)
	}
	if err := supersede(ctx, tx, m.ID, DeploymentActive); err != nil {
		return nil, err
	}
	err = tx.NewUpdate().Model(&pending).WherePK().
		Set("status = ?", DeploymentActive).Set("activated_at = now()").
		Returning("*").Scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("activating deployment: %w", err)
	}
	return &pending, nil
}

func supersede(ctx context.Context, tx bun.Tx, machineID uuid.UUID, status DeploymentStatus) error {
	_, err := tx.NewUpdate().Model((*Deployment)(nil)).
		Where("d.machine_id = ? AND d.status = ?", machineID, status).
		Set("status = ?", DeploymentSuperseded).Set("superseded_at = now()").
		Exec(ctx)
	if err != nil {
		return fmt.Errorf("superseding the %s deployment: %w", status, err)
	}
	return nil
}

// Deploy records a protocol deployment: ACTIVE at once on a RUNNING machine
// (superseding the ACTIVE one), otherwise PENDING until the next start
// (superseding an older PENDING one). It logs `deployed`.
func (s *Machines) Deploy(ctx context.Context, idb bun.IDB, machineID uuid.UUID, in ProtocolInput) (*Deployment, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	name, err := checkName("protocol.name", in.Name)
	if err != nil {
		return nil, err
	}
	if err := checkSemver("protocol.version", in.Version); err != nil {
		return nil, err
	}
	settings, err := checkRawJSONObject("protocol.settings", in.Settings)
	if err != nil {
		return nil, err
	}
	d := &Deployment{Name: name, Version: in.Version, Settings: settings, DeployedBy: sc.actor}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		// Locking the machine orders this deployment against concurrent
		// starts, stops and deployments of the same machine.
		m, err := s.get(ctx, tx, sc, machineID, "UPDATE")
		if err != nil {
			return err
		}
		d.MachineID, d.TenantID = m.ID, m.TenantID
		d.Status = DeploymentPending
		if m.Status == MachineRunning {
			d.Status = DeploymentActive
		}
		if err := supersede(ctx, tx, m.ID, d.Status); err != nil {
			return err
		}
		q := tx.NewInsert().Model(d)
		if d.Status == DeploymentActive {
			q = q.Value("activated_at", "now()")
		}
		if _, err := q.Returning("*").Exec(ctx); err != nil {
			return fmt.Errorf("recording deployment: %w", err)
		}
		if _, err := tx.NewUpdate().Model(m).WherePK().Set("updated_at = now()").Set("version = version + 1").Returning("*").Exec(ctx); err != nil {
			return fmt.Errorf("bumping machine version: %w", err)
		}
		return s.logEvent(ctx, tx, sc, m, "deployed", objectJSON(map[string]any{
			"deploymentId": d.ID.String(), "name": d.Name, "version": d.Version, "status": string(d.Status),
		}), nil)
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// systemEventTypes are the events the server writes; clients may not log
// them, so the log's lifecycle entries can be trusted.
var systemEventTypes = map[string]bool{
	"created": true, "updated": true, "started": true, "stopped": true, "deployed": true, "deployment_activated": true,
}

// EventDetails is what a client logs with an event: a JSON object, or
// (as the API Fleetgraph replaces took it) a text, kept as given.
type EventDetails struct {
	Object map[string]any
	// Text, when set, is the details as a string; Object is then ignored.
	Text *string
}

// LogEvent appends a client's event to a machine's log. An `error` event sets
// the machine to ERROR.
func (s *Machines) LogEvent(ctx context.Context, idb bun.IDB, machineID uuid.UUID, eventType string, in EventDetails) (*MachineEvent, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkEventType("eventType", eventType); err != nil {
		return nil, err
	}
	if systemEventTypes[eventType] {
		return nil, fault.Invalid("eventType", "%q is written by the server itself; choose another event type", eventType)
	}
	details, err := checkEventDetails(in)
	if err != nil {
		return nil, err
	}
	ev := new(MachineEvent)
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		// The machine is locked so that its deletion waits for the event,
		// or the event finds it gone (NOT_FOUND): read without a lock, it
		// could be deleted before the insert, which then failed on the
		// foreign key. An error changes its status, so it takes the
		// lock a deployment takes; any other event only keeps it there.
		lock := "KEY SHARE"
		if eventType == "error" {
			lock = "UPDATE"
		}
		m, err := s.get(ctx, tx, sc, machineID, lock)
		if err != nil {
			return err
		}
		if eventType == "error" && m.Status != MachineError {
			if _, err := tx.NewUpdate().Model(m).WherePK().
				Set("status = ?", MachineError).Set("updated_at = now()").Set("version = version + 1").
				Returning("*").Exec(ctx); err != nil {
				return fmt.Errorf("marking machine as failed: %w", err)
			}
		}
		ev.DetailsText = in.Text
		return s.logEvent(ctx, tx, sc, m, eventType, details, ev)
	})
	if err != nil {
		return nil, err
	}
	return ev, nil
}

// logEvent writes an event in the caller's transaction; into, when non-nil,
// receives the stored row (its DetailsText, when set, is stored with it).
func (s *Machines) logEvent(ctx context.Context, tx bun.Tx, sc scope, m *Machine, eventType string, details RawJSON, into *MachineEvent) error {
	if into == nil {
		into = new(MachineEvent)
	}
	*into = MachineEvent{MachineID: m.ID, TenantID: m.TenantID, EventType: eventType, Details: details, DetailsText: into.DetailsText, Actor: sc.actor}
	if _, err := tx.NewInsert().Model(into).Returning("*").Exec(ctx); err != nil {
		return fmt.Errorf("logging machine event %s: %w", eventType, err)
	}
	return nil
}

// EventsByID returns the visible events among ids.
func (s *Machines) EventsByID(ctx context.Context, idb bun.IDB, ids []int64) ([]*MachineEvent, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*MachineEvent
	err = ownedBy(sc, idb.NewSelect().Model(&rows).ColumnExpr("e.*, m.owner_id").
		Join("JOIN machines AS m ON m.id = e.machine_id").
		Where("e.id = ANY(?)", pgdialect.Array(ids)), "m").OrderExpr("e.id").Scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading machine events: %w", err)
	}
	return rows, nil
}

// EventsSince returns the visible events written at or after since, oldest first.
func (s *Machines) EventsSince(ctx context.Context, idb bun.IDB, since time.Time) ([]*MachineEvent, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*MachineEvent
	err = ownedBy(sc, idb.NewSelect().Model(&rows).ColumnExpr("e.*, m.owner_id").
		Join("JOIN machines AS m ON m.id = e.machine_id").
		Where("e.created_at >= ?", since), "m").OrderExpr("e.id").Scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("re-reading machine events: %w", err)
	}
	return rows, nil
}

// ChangedSince returns the visible machines changed at or after since.
func (s *Machines) ChangedSince(ctx context.Context, idb bun.IDB, since time.Time) ([]*Machine, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*Machine
	if err := ownedBy(sc, idb.NewSelect().Model(&rows).Where("m.updated_at >= ?", since), "m").Scan(ctx); err != nil {
		return nil, fmt.Errorf("re-reading machines: %w", err)
	}
	return rows, nil
}
