package db

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/schema"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

// scope is what the caller in a context may see. It is derived from the
// Principal and applied to every query a store runs for a caller; stores never
// build tenant, owner or robot conditions themselves.
//
//   - A user sees the machines it owns, and its tenant's robots, keys,
//     workflows and jobs.
//   - service_role sees everything in its tenant, machines of every user included.
//   - A robot sees itself, the jobs it holds or held, and its tenant's
//     workflows (to run them), with only the assignments and node
//     overrides that name itself or no robot; it owns no machines.
//
// Nobody ever sees another tenant's rows.
type scope struct {
	tenant uuid.UUID
	user   uuid.UUID
	robot  uuid.UUID
	// key is the API key a robot called with (none for a robot of an
	// internal task): what checks it again, a claim that waited, reads it.
	key uuid.UUID
	// wholeTenant is true for service_role.
	wholeTenant bool
	// installation is true for a system task of no tenant (the operator
	// CLI, the leader's log cleanup): where a rule says so, it acts on
	// every tenant. Nothing a client sends makes one.
	installation bool
	actor        string
	// params, when set, bind the rules' values (see binding).
	params *Params
}

// scopeOf returns the caller's scope, or UNAUTHENTICATED for an anonymous context.
func scopeOf(ctx context.Context) (scope, error) {
	p := auth.FromContext(ctx)
	if p == nil {
		return scope{}, fault.New(fault.Unauthenticated, "sign in first: send `Authorization: Bearer <token>`")
	}
	return scope{
		tenant:       p.TenantID,
		user:         p.UserID,
		robot:        p.RobotID,
		key:          p.APIKeyID,
		wholeTenant:  p.Role == auth.RoleService,
		installation: p.System != "" && p.TenantID == uuid.Nil,
		actor:        p.Actor(),
	}, nil
}

// userScope is scopeOf for operations only people (and services) may perform.
func userScope(ctx context.Context) (scope, error) {
	sc, err := scopeOf(ctx)
	if err == nil && sc.isRobot() {
		return scope{}, fault.New(fault.Forbidden, "robots cannot do this; use a user's token")
	}
	return sc, err
}

// robotScope is scopeOf for operations only robots perform.
func robotScope(ctx context.Context) (scope, error) {
	sc, err := scopeOf(ctx)
	if err == nil && !sc.isRobot() {
		return scope{}, fault.New(fault.Forbidden, "only robots can do this; authenticate with the robot's API key")
	}
	return sc, err
}

func (s scope) isRobot() bool { return s.robot != uuid.Nil }

// binding is the scope with its rules binding their values to p, for a
// prepared statement (see Params): the statement's text then depends on
// the kind of principal only, never on who it is.
func (s scope) binding(p *Params) scope {
	s.params = p
	return s
}

// arg is v as the scope's rules pass it to a query: bound to the scope's
// Params when it has them, else written into the text by bun.
func (s scope) arg(v any) any {
	return s.params.Arg(v)
}

// wherer is any bun query with a Where clause (select, update, delete).
type wherer[Q any] interface {
	Where(query string, args ...any) Q
}

// joinOn collects a scope rule's conditions for a JOIN's ON clause, so a
// joined table is restricted by the same rule as a queried one (for
// example robotsVisible(sc, joinOn(nil), "robot")).
type joinOn []schema.QueryWithArgs

// Where adds a condition.
func (o joinOn) Where(query string, args ...any) joinOn {
	return append(o, schema.SafeQuery(query, args))
}

// ownedBy restricts q to machines (alias names the table) the scope may see.
func ownedBy[Q wherer[Q]](s scope, q Q, alias string) Q {
	q = q.Where(alias+".tenant_id = ?", s.arg(s.tenant))
	if !s.wholeTenant {
		q = q.Where(alias+".owner_id = ?", s.arg(s.user))
	}
	return q
}

// inTenant restricts q to rows of the scope's tenant.
func inTenant[Q wherer[Q]](s scope, q Q, alias string) Q {
	return q.Where(alias+".tenant_id = ?", s.arg(s.tenant))
}

// robotsVisible restricts q to robots the scope may see: the tenant's, or a
// robot itself.
func robotsVisible[Q wherer[Q]](s scope, q Q, alias string) Q {
	q = inTenant(s, q, alias)
	if s.isRobot() {
		q = q.Where(alias+".id = ?", s.arg(s.robot))
	}
	return q
}

// namingRobots restricts q to rows that name a robot (alias.robot_id: a
// workflow's assignments, a node's robot override) the scope may see: for
// a robot, those naming itself or no robot, so it learns no other robot's
// id; for people, all of their tenant's (inTenant does that).
func namingRobots[Q wherer[Q]](s scope, q Q, alias string) Q {
	if s.isRobot() {
		q = q.Where("("+alias+".robot_id IS NULL OR "+alias+".robot_id = ?)", s.arg(s.robot))
	}
	return q
}

// jobsVisible restricts q to jobs the scope may see: the tenant's, or for a
// robot the jobs it holds or held.
func jobsVisible[Q wherer[Q]](s scope, q Q, alias string) Q {
	q = inTenant(s, q, alias)
	if s.isRobot() {
		q = q.Where(alias+".robot_id = ?", s.arg(s.robot))
	}
	return q
}

// The live path's visibility rules. The hub loads rows once per change as
// its tenant's service role and decides in Go, per subscriber, what each one
// may see: these functions are the same rules the SQL scope above applies
// (ownedBy, robotsVisible, jobsVisible), written once for both the routing
// fields of a notification (CanSee) and the row that is sent (CanSeeRow).
// An unknown kind, or a row of the wrong type, is visible to no one.

// canSeeMachine is ownedBy: a user sees the machines it owns, service_role
// all of its tenant's; robots own no machines.
func canSeeMachine(p *auth.Principal, tenant uuid.UUID, owner *uuid.UUID) bool {
	switch {
	case p == nil || p.TenantID != tenant || p.RobotID != uuid.Nil:
		return false
	case p.Role == auth.RoleService:
		return true
	}
	return owner != nil && *owner != uuid.Nil && *owner == p.UserID
}

// canSeeRobot is robotsVisible: people see their tenant's robots, a robot
// only itself.
func canSeeRobot(p *auth.Principal, tenant, robot uuid.UUID) bool {
	if p == nil || p.TenantID != tenant {
		return false
	}
	return p.RobotID == uuid.Nil || robot == p.RobotID
}

// canSeeJob is jobsVisible: people see their tenant's jobs, a robot the jobs
// it holds or held (robot_id is itself). A job retried or claimed by another
// robot is no longer the first robot's.
func canSeeJob(p *auth.Principal, tenant uuid.UUID, robot *uuid.UUID) bool {
	if p == nil || p.TenantID != tenant {
		return false
	}
	return p.RobotID == uuid.Nil || (robot != nil && *robot == p.RobotID)
}

// canSeePresence is who may watch a tenant's robots come and go: its people
// (fleetPresence is refused to robots).
func canSeePresence(p *auth.Principal, tenant uuid.UUID) bool {
	return p != nil && p.TenantID == tenant && p.RobotID == uuid.Nil
}

// canSeeLog is logsVisible: people see their tenant's robots' lines, a
// robot only its own.
func canSeeLog(p *auth.Principal, tenant, robot uuid.UUID) bool {
	if p == nil || p.TenantID != tenant {
		return false
	}
	return p.RobotID == uuid.Nil || robot == p.RobotID
}

// CanSee decides in Go, without a database read, whether p may see a row
// described by a notification's routing fields, for the subscription hub's
// first, cheap filter. kind is "machine" and "machine_event" (owner set),
// "robot" (robot = the robot's id), "presence", "job" (robot = the
// holding robot, if any), or "log" (robot = the robot that shipped it). Any other kind is visible to no one. Routing
// fields may be older than the row the hub then sends: CanSeeRow checks that.
func CanSee(p *auth.Principal, kind string, tenant uuid.UUID, owner, robot *uuid.UUID) bool {
	switch kind {
	case "machine", "machine_event":
		return canSeeMachine(p, tenant, owner)
	case "robot":
		return robot != nil && canSeeRobot(p, tenant, *robot)
	case "presence":
		return canSeePresence(p, tenant)
	case "job":
		return canSeeJob(p, tenant, robot)
	case "log":
		return robot != nil && canSeeLog(p, tenant, *robot)
	}
	return false
}

// CanSeeRow decides whether p may see row, a row of kind as the hub loaded
// it (*Machine, *MachineEvent, *Robot for "robot" and "presence", *Job,
// *LogBatch for "log", each of whose lines must be the batch's robot's):
// the check every live update passes just before it is sent. Any other kind
// or row type is visible to no one.
func CanSeeRow(p *auth.Principal, kind string, row any) bool {
	switch kind {
	case "machine":
		m, ok := row.(*Machine)
		return ok && m != nil && canSeeMachine(p, m.TenantID, &m.OwnerID)
	case "machine_event":
		e, ok := row.(*MachineEvent)
		return ok && e != nil && canSeeMachine(p, e.TenantID, &e.OwnerID)
	case "robot":
		r, ok := row.(*Robot)
		return ok && r != nil && canSeeRobot(p, r.TenantID, r.ID)
	case "presence":
		r, ok := row.(*Robot)
		return ok && r != nil && canSeePresence(p, r.TenantID)
	case "job":
		j, ok := row.(*Job)
		return ok && j != nil && canSeeJob(p, j.TenantID, j.RobotID)
	case "log":
		b, ok := row.(*LogBatch)
		if !ok || b == nil || !canSeeLog(p, b.TenantID, b.RobotID) {
			return false
		}
		for _, l := range b.Lines {
			if l.TenantID != b.TenantID || l.RobotID != b.RobotID {
				return false
			}
		}
		return true
	}
	return false
}

// VisibilityClass names the principals that see exactly what p sees of
// kind, and resolve it alike (the same rows, and the same rows behind
// their fields), so that a live update rendered for one of them may be sent
// to all: people of a tenant share one class for robots, presence and jobs;
// machines are per owner; a service role is a class of its own per tenant;
// a robot sees only itself. It answers false for anything else (no
// principal, the server's own tasks, an unknown role or kind): such
// callers share nothing.
func VisibilityClass(p *auth.Principal, kind string) (string, bool) {
	if p == nil || p.System != "" || p.TenantID == uuid.Nil {
		return "", false
	}
	tenant := p.TenantID.String()
	switch kind {
	case "machine", "machine_event", "robot", "presence", "job", "log":
	default:
		return "", false
	}
	switch {
	case p.Role == auth.RoleRobot && p.RobotID != uuid.Nil:
		return "robot:" + tenant + ":" + p.RobotID.String(), true
	case p.RobotID != uuid.Nil:
		return "", false
	case p.Role == auth.RoleService:
		return "service:" + tenant, true
	case p.Role == auth.RoleUser && p.UserID != uuid.Nil:
		if kind == "machine" || kind == "machine_event" {
			return "owner:" + tenant + ":" + p.UserID.String(), true
		}
		return "people:" + tenant, true
	}
	return "", false
}

// CheckCaller refuses an anonymous caller (UNAUTHENTICATED) and, when
// usersOnly, a robot (FORBIDDEN), as the stores do: for entry points such as
// subscriptions that check the caller before reading anything.
func CheckCaller(ctx context.Context, usersOnly bool) error {
	if usersOnly {
		_, err := userScope(ctx)
		return err
	}
	_, err := scopeOf(ctx)
	return err
}

// underTenantCap refuses (CONFLICT) to add one more row of model (a table
// of tenant-scoped rows, aliased alias) when the caller's tenant already
// has max of them, named what. It takes the advisory lock key for the
// tenant until tx ends, so that two creations cannot both pass the count.
func underTenantCap(ctx context.Context, tx bun.Tx, sc scope, key int32, model any, alias string, max int, what string) error {
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(?, hashtext(?))", key, sc.tenant.String()); err != nil {
		return fmt.Errorf("locking the tenant's %s: %w", what, err)
	}
	n, err := inTenant(sc, tx.NewSelect().Model(model), alias).Count(ctx)
	if err != nil {
		return fmt.Errorf("counting %s: %w", what, err)
	}
	if n >= max {
		return &fault.Error{Code: fault.Conflict, Message: fmt.Sprintf("a tenant may have at most %d %s; delete one first", max, what)}
	}
	return nil
}
