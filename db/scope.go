package db

import (
	"context"

	"github.com/google/uuid"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

// scope is what the caller in a context may see. It is derived from the
// Principal and applied to every query a store runs for a caller; stores never
// build tenant or owner conditions themselves.
type scope struct {
	tenant uuid.UUID
	user   uuid.UUID
	// wholeTenant is true for service_role, which sees every user's machines
	// in its tenant (and never another tenant's).
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
		wholeTenant: p.Role == auth.RoleService,
		actor:       p.Actor(),
	}, nil
}

// wherer is any bun query with a Where clause (select, update, delete).
type wherer[Q any] interface {
	Where(query string, args ...any) Q
}

// ownedBy restricts q to rows of a user-owned table (alias names it: "m" for
// machines) that the scope may see.
func ownedBy[Q wherer[Q]](s scope, q Q, alias string) Q {
	q = q.Where(alias+".tenant_id = ?", s.tenant)
	if !s.wholeTenant {
		q = q.Where(alias+".owner_id = ?", s.user)
	}
	return q
}
