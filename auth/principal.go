// Package auth turns credentials into a Principal: who is calling, in which
// tenant, with which role. It verifies Supabase-compatible JWTs (HS256 only),
// mints them for development, and carries the Principal in a request's context.
// What a Principal may see is decided in the data layer (package db), not here.
package auth

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// Role is what kind of caller a Principal is.
type Role string

// Roles accepted in tokens. Anything else (Supabase's `anon` included) is refused.
const (
	// RoleUser is an ordinary signed-in user: sees only what it owns.
	RoleUser Role = "authenticated"
	// RoleService is a trusted backend: sees everything in its tenant.
	RoleService Role = "service_role"
)

// DefaultTenant is the tenant of tokens that carry no tenant_id claim.
var DefaultTenant = uuid.MustParse("00000000-0000-0000-0000-000000000001")

// Principal is an authenticated caller.
type Principal struct {
	UserID   uuid.UUID
	TenantID uuid.UUID
	Role     Role
	// ExpiresAt is when the credential stops being valid.
	ExpiresAt time.Time
}

// Actor names the principal in audit trails, e.g. "user:<uuid>".
func (p *Principal) Actor() string { return "user:" + p.UserID.String() }

type principalKey struct{}

// WithPrincipal returns a context carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the caller, or nil for an anonymous request.
func FromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}
