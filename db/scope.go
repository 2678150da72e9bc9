package db

import (
	"context"

	"github.com/google/uuid"

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
//     workflows (to run them); it owns no machines.
//
// Nobody ever sees another tenant's rows.
type scope struct {
	tenant uuid.UUID
	user   uuid.UUID
	robot  uuid.UUID
	// wholeTenant is true for service_role.
	wholeTenant bool
	actor       string
}

// scopeOf returns the caller's scope, or UNAUTHENTICATED for an anonymous context.
func scopeOf(ctx context.Context) (scope, error) {
	p := auth.FromContext(ctx)
	if p == nil {
		return scope{}, fault.New(fault.Unauthenticated, "sign in first: send `Authorization: Bearer <token>`")
	}
	return scope{
		tenant:      p.TenantID,
		user:        p.UserID,
		robot:       p.RobotID,
		wholeTenant: p.Role == auth.RoleService,
		actor:       p.Actor(),
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

// wherer is any bun query with a Where clause (select, update, delete).
type wherer[Q any] interface {
	Where(query string, args ...any) Q
}

// ownedBy restricts q to machines (alias names the table) the scope may see.
func ownedBy[Q wherer[Q]](s scope, q Q, alias string) Q {
	q = q.Where(alias+".tenant_id = ?", s.tenant)
	if !s.wholeTenant {
		q = q.Where(alias+".owner_id = ?", s.user)
	}
	return q
}

// inTenant restricts q to rows of the scope's tenant.
func inTenant[Q wherer[Q]](s scope, q Q, alias string) Q {
	return q.Where(alias+".tenant_id = ?", s.tenant)
}

// robotsVisible restricts q to robots the scope may see: the tenant's, or a
// robot itself.
func robotsVisible[Q wherer[Q]](s scope, q Q, alias string) Q {
	q = inTenant(s, q, alias)
	if s.isRobot() {
		q = q.Where(alias+".id = ?", s.robot)
	}
	return q
}

// jobsVisible restricts q to jobs the scope may see: the tenant's, or for a
// robot the jobs it holds or held.
func jobsVisible[Q wherer[Q]](s scope, q Q, alias string) Q {
	q = inTenant(s, q, alias)
	if s.isRobot() {
		q = q.Where(alias+".robot_id = ?", s.robot)
	}
	return q
}

// CanSee decides in Go, without a database read, whether p may see a row
// described by routing fields: the same rules the SQL scope applies, for the
// subscription hub. kind is "machine" (owner set), "robot" (robot = the
// robot's id) or "job" (robot = the holding robot, if any); every other
// kind follows the tenant rule.
func CanSee(p *auth.Principal, kind string, tenant uuid.UUID, owner, robot *uuid.UUID) bool {
	if p == nil || p.TenantID != tenant {
		return false
	}
	isRobot := p.RobotID != uuid.Nil
	switch kind {
	case "machine":
		if isRobot {
			return false
		}
		return p.Role == auth.RoleService || (owner != nil && *owner == p.UserID)
	case "robot", "job":
		return !isRobot || (robot != nil && *robot == p.RobotID)
	}
	return !isRobot
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
