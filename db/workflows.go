package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"fleetgraph/fault"
)

// Workflow is a named, versioned automation of a tenant.
type Workflow struct {
	bun.BaseModel `bun:"table:workflows,alias:w"`

	ID             uuid.UUID `bun:"id,pk,type:uuid,default:gen_random_uuid()"`
	TenantID       uuid.UUID `bun:"tenant_id,type:uuid"`
	Name           string    `bun:"name"`
	Description    string    `bun:"description"`
	CurrentVersion int       `bun:"current_version"`
	CreatedAt      time.Time `bun:"created_at,nullzero,default:clock_timestamp()"`
	UpdatedAt      time.Time `bun:"updated_at,nullzero,default:now()"`
}

// Cursor is the workflow's position in `workflows`, newest first.
func (w *Workflow) Cursor() string { return encodeTimeID("workflow", w.CreatedAt, w.ID) }

// WorkflowVersion is an immutable published definition.
type WorkflowVersion struct {
	bun.BaseModel `bun:"table:workflow_versions,alias:v"`

	WorkflowID uuid.UUID `bun:"workflow_id,pk,type:uuid"`
	Version    int       `bun:"version,pk"`
	TenantID   uuid.UUID `bun:"tenant_id,type:uuid"`
	Definition RawJSON   `bun:"definition,type:jsonb"`
	CreatedBy  string    `bun:"created_by"`
	CreatedAt  time.Time `bun:"created_at,nullzero,default:now()"`
}

// WorkflowAssignment lets a robot run a workflow.
type WorkflowAssignment struct {
	bun.BaseModel `bun:"table:workflow_assignments,alias:wa"`

	WorkflowID uuid.UUID `bun:"workflow_id,pk,type:uuid"`
	RobotID    uuid.UUID `bun:"robot_id,pk,type:uuid"`
	TenantID   uuid.UUID `bun:"tenant_id,type:uuid"`
	IsDefault  bool      `bun:"is_default"`
	Priority   int       `bun:"priority"`
	CreatedAt  time.Time `bun:"created_at,nullzero,default:now()"`
}

// NodeRobotOverride routes one node of a workflow to a robot or a capability.
type NodeRobotOverride struct {
	bun.BaseModel `bun:"table:node_robot_overrides,alias:o"`

	WorkflowID uuid.UUID  `bun:"workflow_id,pk,type:uuid"`
	NodeID     string     `bun:"node_id,pk"`
	TenantID   uuid.UUID  `bun:"tenant_id,type:uuid"`
	RobotID    *uuid.UUID `bun:"robot_id,type:uuid"`
	Capability *string    `bun:"capability"`
	CreatedAt  time.Time  `bun:"created_at,nullzero,default:now()"`
}

// CreateWorkflowInput is what a new workflow is made of.
type CreateWorkflowInput struct {
	Name        string
	Description *string
	Definition  map[string]any
}

// Workflows is the store of workflows, their versions, assignments and overrides.
type Workflows struct{}

// NewWorkflows returns the workflow store.
func NewWorkflows() *Workflows { return &Workflows{} }

var workflowConstraints = map[string]*fault.Error{
	"workflows_tenant_name_key": {Code: fault.Conflict, Field: "name", Message: "the tenant already has a workflow with this name"},
}

func checkDefinition(field string, def map[string]any) (RawJSON, error) {
	if def == nil {
		return nil, fault.Invalid(field, "%s is required", field)
	}
	return checkRawJSONObject(field, def)
}

// Get returns one workflow of the caller's tenant, or NOT_FOUND.
func (s *Workflows) Get(ctx context.Context, idb bun.IDB, id uuid.UUID) (*Workflow, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	return s.get(ctx, idb, sc, id, false)
}

func (s *Workflows) get(ctx context.Context, idb bun.IDB, sc scope, id uuid.UUID, forUpdate bool) (*Workflow, error) {
	w := new(Workflow)
	q := inTenant(sc, idb.NewSelect().Model(w).Where("w.id = ?", id), "w")
	if forUpdate {
		q = q.For(parentChange)
	}
	if err := q.Scan(ctx); err != nil {
		return nil, notFoundIfNoRows(err, "workflow")
	}
	return w, nil
}

// FindMany returns the visible workflows among ids, keyed by id.
//
// cols, when given, narrow the read to them and the keys (id, tenant_id,
// created_at).
func (s *Workflows) FindMany(ctx context.Context, idb bun.IDB, ids []uuid.UUID, cols ...string) (map[uuid.UUID]*Workflow, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var p Params
	var rows []*Workflow
	if err := scanBound(ctx, inTenant(sc.binding(&p), narrowed(idb.NewSelect().Model(&rows), workflowKeyColumns, cols).Where("w.id = ANY(?::uuid[])", p.Bind(pgUUIDs(ids))), "w"), &p); err != nil {
		return nil, fmt.Errorf("loading workflows: %w", err)
	}
	return keyed(rows, func(x *Workflow) uuid.UUID { return x.ID }), nil
}

// workflowKeyColumns are the columns a narrowed read of workflows always reads.
var workflowKeyColumns = []string{"id", "tenant_id", "created_at"}

func (s *Workflows) filtered(ctx context.Context, idb bun.IDB, nameContains *string, par *Params) (*bun.SelectQuery, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	q := inTenant(sc.binding(par), idb.NewSelect().Model((*Workflow)(nil)), "w")
	if nameContains != nil && *nameContains != "" {
		needle, err := checkFilterText("nameContains", *nameContains)
		if err != nil {
			return nil, err
		}
		q = q.Where(`w.name ILIKE ? ESCAPE '\'`, par.Arg(likePattern(needle)))
	}
	return q, nil
}

// List returns a page of the tenant's workflows, newest first.
func (s *Workflows) List(ctx context.Context, idb bun.IDB, nameContains *string, p PageArgs) (Page[Workflow], error) {
	var par Params
	q, err := s.filtered(ctx, idb, nameContains, &par)
	if err != nil {
		return Page[Workflow]{}, err
	}
	return newestFirst[Workflow](ctx, q, &par, "workflow", "w", p)
}

// Count returns how many workflows match.
func (s *Workflows) Count(ctx context.Context, idb bun.IDB, nameContains *string) (int, error) {
	q, err := s.filtered(ctx, idb, nameContains, nil)
	return countOf(ctx, q, err, "workflows")
}

// Create makes a workflow with its first version.
func (s *Workflows) Create(ctx context.Context, idb bun.IDB, in CreateWorkflowInput) (*Workflow, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	w := &Workflow{TenantID: sc.tenant, CurrentVersion: 1}
	if w.Name, err = checkName("name", in.Name); err != nil {
		return nil, err
	}
	if in.Description != nil {
		if w.Description, err = checkShortText("description", *in.Description, 2000); err != nil {
			return nil, err
		}
	}
	def, err := checkDefinition("definition", in.Definition)
	if err != nil {
		return nil, err
	}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.NewInsert().Model(w).Returning("*").Exec(ctx); err != nil {
			return constraintError(err, workflowConstraints)
		}
		v := &WorkflowVersion{WorkflowID: w.ID, Version: 1, TenantID: w.TenantID, Definition: def, CreatedBy: sc.actor}
		if _, err := tx.NewInsert().Model(v).Exec(ctx); err != nil {
			return fmt.Errorf("storing version 1: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}

// Publish stores the next version of a workflow and makes it current.
func (s *Workflows) Publish(ctx context.Context, idb bun.IDB, workflowID uuid.UUID, definition map[string]any) (*WorkflowVersion, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	def, err := checkDefinition("definition", definition)
	if err != nil {
		return nil, err
	}
	v := &WorkflowVersion{Definition: def, CreatedBy: sc.actor}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		w, err := s.get(ctx, tx, sc, workflowID, true)
		if err != nil {
			return err
		}
		v.WorkflowID, v.TenantID, v.Version = w.ID, w.TenantID, w.CurrentVersion+1
		if _, err := tx.NewInsert().Model(v).Returning("*").Exec(ctx); err != nil {
			return fmt.Errorf("storing version %d: %w", v.Version, err)
		}
		_, err = tx.NewUpdate().Model(w).WherePK().Set("current_version = ?", v.Version).Set("updated_at = now()").Exec(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// requireRobot checks that robotID is a robot of the scope's tenant, and
// holds it (FOR KEY SHARE) until tx ends, as the foreign key of the row tx
// then writes would: a robot being deleted is waited for and then not
// found. Unlocked, the check passed during the deletion and the insert's
// foreign key failed after it, an INTERNAL for a client's race.
func requireRobot(ctx context.Context, tx bun.Tx, sc scope, robotID uuid.UUID, field string) error {
	var id uuid.UUID
	err := inTenant(sc, tx.NewSelect().Model((*Robot)(nil)).Column("r.id").Where("r.id = ?", robotID), "r").
		For("KEY SHARE").Scan(ctx, &id)
	if errors.Is(err, sql.ErrNoRows) {
		return &fault.Error{Code: fault.NotFound, Field: field, Message: "robot not found"}
	}
	if err != nil {
		return fmt.Errorf("finding the robot: %w", err)
	}
	return nil
}

// MaxWorkflowAssignments caps a workflow's assignments, and
// MaxNodeOverrides its node overrides: Workflow.assignments and
// Workflow.nodeOverrides are unpaged lists, which the cost estimate counts
// at these sizes.
const (
	MaxWorkflowAssignments = 50
	MaxNodeOverrides       = 50
)

// atMost refuses with CONFLICT a new child row (another robot assigned,
// another node overridden) of a workflow that has limit already; the
// workflow's row is locked, so the count stands until the insert. Rows
// where other holds (key = other) are the one being replaced, not added.
func atMost(ctx context.Context, tx bun.Tx, model any, alias string, workflowID uuid.UUID, key string, other any, limit int, what string) error {
	n, err := tx.NewSelect().Model(model).Where(alias+".workflow_id = ? AND "+alias+"."+key+" <> ?", workflowID, other).Count(ctx)
	if err != nil {
		return fmt.Errorf("counting the workflow's %s: %w", what, err)
	}
	if n >= limit {
		return &fault.Error{Code: fault.Conflict, Message: fmt.Sprintf("a workflow has at most %d %s; remove one first", limit, what)}
	}
	return nil
}

// Assign lets a robot run a workflow (or updates the assignment).
func (s *Workflows) Assign(ctx context.Context, idb bun.IDB, workflowID, robotID uuid.UUID, isDefault bool, priority int) (*WorkflowAssignment, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	if priority < -1000 || priority > 1000 {
		return nil, fault.Invalid("priority", "priority must be between -1000 and 1000")
	}
	a := &WorkflowAssignment{WorkflowID: workflowID, RobotID: robotID, TenantID: sc.tenant, IsDefault: isDefault, Priority: priority}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := s.get(ctx, tx, sc, workflowID, true); err != nil {
			return err
		}
		if err := requireRobot(ctx, tx, sc, robotID, "robotId"); err != nil {
			return err
		}
		if err := atMost(ctx, tx, (*WorkflowAssignment)(nil), "wa", workflowID, "robot_id", robotID, MaxWorkflowAssignments, "assigned robots"); err != nil {
			return err
		}
		if isDefault {
			if _, err := tx.NewUpdate().Model((*WorkflowAssignment)(nil)).
				Where("wa.workflow_id = ? AND wa.robot_id <> ? AND wa.is_default", workflowID, robotID).
				Set("is_default = false").Exec(ctx); err != nil {
				return fmt.Errorf("unsetting the previous default: %w", err)
			}
		}
		_, err := tx.NewInsert().Model(a).
			On("CONFLICT (workflow_id, robot_id) DO UPDATE").
			Set("is_default = EXCLUDED.is_default").Set("priority = EXCLUDED.priority").
			Returning("*").Exec(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Unassign removes an assignment and reports whether there was one.
func (s *Workflows) Unassign(ctx context.Context, idb bun.IDB, workflowID, robotID uuid.UUID) (bool, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return false, err
	}
	if _, err := s.get(ctx, idb, sc, workflowID, false); err != nil {
		return false, err
	}
	res, err := inTenant(sc, idb.NewDelete().Model((*WorkflowAssignment)(nil)).
		Where("wa.workflow_id = ? AND wa.robot_id = ?", workflowID, robotID), "wa").Exec(ctx)
	if err != nil {
		return false, fmt.Errorf("removing the assignment: %w", err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// SetOverride routes a node to a robot or to a capability (exactly one).
func (s *Workflows) SetOverride(ctx context.Context, idb bun.IDB, workflowID uuid.UUID, nodeID string, robotID *uuid.UUID, capability *string) (*NodeRobotOverride, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	if nodeID, err = checkName("nodeId", nodeID); err != nil {
		return nil, err
	}
	if (robotID == nil) == (capability == nil) {
		return nil, fault.Invalid("robotId", "give exactly one of robotId and capability")
	}
	if capability != nil && !capabilityRE.MatchString(*capability) {
		return nil, fault.Invalid("capability", "capability must be 1-64 characters of letters, digits, _ . : -")
	}
	o := &NodeRobotOverride{WorkflowID: workflowID, NodeID: nodeID, TenantID: sc.tenant, RobotID: robotID, Capability: capability}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := s.get(ctx, tx, sc, workflowID, true); err != nil {
			return err
		}
		if robotID != nil {
			if err := requireRobot(ctx, tx, sc, *robotID, "robotId"); err != nil {
				return err
			}
		}
		if err := atMost(ctx, tx, (*NodeRobotOverride)(nil), "o", workflowID, "node_id", nodeID, MaxNodeOverrides, "node overrides"); err != nil {
			return err
		}
		_, err := tx.NewInsert().Model(o).
			On("CONFLICT (workflow_id, node_id) DO UPDATE").
			Set("robot_id = EXCLUDED.robot_id").Set("capability = EXCLUDED.capability").
			Returning("*").Exec(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return o, nil
}

// RemoveOverride removes a node's override and reports whether there was one.
func (s *Workflows) RemoveOverride(ctx context.Context, idb bun.IDB, workflowID uuid.UUID, nodeID string) (bool, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return false, err
	}
	if _, err := s.get(ctx, idb, sc, workflowID, false); err != nil {
		return false, err
	}
	nodeID = strings.TrimSpace(nodeID) // as SetOverride stored it (checkName)
	res, err := inTenant(sc, idb.NewDelete().Model((*NodeRobotOverride)(nil)).
		Where("o.workflow_id = ? AND o.node_id = ?", workflowID, nodeID), "o").Exec(ctx)
	if err != nil {
		return false, fmt.Errorf("removing the override: %w", err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// VersionsOf returns each visible workflow's versions, newest first.
func (s *Workflows) VersionsOf(ctx context.Context, idb bun.IDB, ids []uuid.UUID, limit int) (map[uuid.UUID][]*WorkflowVersion, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	// A LATERAL join reads at most limit versions of each workflow, newest
	// first, however many it has.
	inner := idb.NewSelect().Model((*WorkflowVersion)(nil)).Where("v.workflow_id = k.id").OrderExpr("v.version DESC").Apply(limitRows(limit))
	var rows []*WorkflowVersion
	err = inTenant(sc, idb.NewSelect().
		TableExpr("unnest(?::uuid[]) AS k(id)", pgUUIDs(ids)).
		Join("JOIN workflows AS w ON w.id = k.id").
		Join("CROSS JOIN LATERAL (?) AS v", inner).
		ColumnExpr("v.*"), "w").
		OrderExpr("v.workflow_id, v.version DESC").Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("loading workflow versions: %w", err)
	}
	return groupBy(ids, rows, func(v *WorkflowVersion) uuid.UUID { return v.WorkflowID }), nil
}

// AssignmentsOf returns each visible workflow's assignments, default first.
func (s *Workflows) AssignmentsOf(ctx context.Context, idb bun.IDB, ids []uuid.UUID) (map[uuid.UUID][]*WorkflowAssignment, error) {
	var rows []*WorkflowAssignment
	if err := s.childrenOf(ctx, idb, ids, &rows, "wa", "wa.is_default DESC, wa.priority DESC, wa.created_at"); err != nil {
		return nil, fmt.Errorf("loading workflow assignments: %w", err)
	}
	return groupBy(ids, rows, func(a *WorkflowAssignment) uuid.UUID { return a.WorkflowID }), nil
}

// OverridesOf returns each visible workflow's node overrides, by node id.
func (s *Workflows) OverridesOf(ctx context.Context, idb bun.IDB, ids []uuid.UUID) (map[uuid.UUID][]*NodeRobotOverride, error) {
	var rows []*NodeRobotOverride
	if err := s.childrenOf(ctx, idb, ids, &rows, "o", "o.node_id"); err != nil {
		return nil, fmt.Errorf("loading node overrides: %w", err)
	}
	return groupBy(ids, rows, func(o *NodeRobotOverride) uuid.UUID { return o.WorkflowID }), nil
}

// childrenOf loads rows of a workflow child table (alias a) for the visible
// workflows among ids.
func (s *Workflows) childrenOf(ctx context.Context, idb bun.IDB, ids []uuid.UUID, into any, alias, order string) error {
	sc, err := scopeOf(ctx)
	if err != nil {
		return err
	}
	q := idb.NewSelect().Model(into).Where(alias+".workflow_id = ANY(?::uuid[])", pgUUIDs(ids))
	return namingRobots(sc, inTenant(sc, q, alias), alias).OrderExpr(order).Scan(ctx)
}

// groupBy groups rows by key, with an empty (non-nil) slice for every id.
func groupBy[T any](ids []uuid.UUID, rows []*T, key func(*T) uuid.UUID) map[uuid.UUID][]*T {
	out := make(map[uuid.UUID][]*T, len(ids))
	for _, id := range ids {
		out[id] = []*T{}
	}
	for _, r := range rows {
		k := key(r)
		out[k] = append(out[k], r)
	}
	return out
}

// version returns one published version, or BAD_USER_INPUT naming field.
func (s *Workflows) version(ctx context.Context, idb bun.IDB, w *Workflow, version int, field string) (*WorkflowVersion, error) {
	v := new(WorkflowVersion)
	err := idb.NewSelect().Model(v).Where("v.workflow_id = ? AND v.version = ?", w.ID, version).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fault.Invalid(field, "workflow %q has no version %d (current: %d)", w.Name, version, w.CurrentVersion)
	}
	return v, err
}
