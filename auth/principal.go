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
	// RoleRobot is a robot authenticated by an API key: acts only as itself.
	// Tokens cannot carry it.
	RoleRobot Role = "robot"
)

// DefaultTenant is the tenant of tokens that carry no tenant_id claim.
var DefaultTenant = uuid.MustParse("00000000-0000-0000-0000-000000000001")

// Principal is an authenticated caller.
type Principal struct {
	// UserID is the user of a JWT; uuid.Nil for robots.
	UserID uuid.UUID
	// RobotID is the robot of an API key; uuid.Nil for users.
	RobotID uuid.UUID
	// APIKeyID is the key a robot authenticated with.
	APIKeyID uuid.UUID
	TenantID uuid.UUID
	Role     Role
	// ExpiresAt is when the credential stops being valid.
	ExpiresAt time.Time
	// System names the server's own task acting (a schedule firing, a
	// rescue); empty for every caller from outside.
	System string
}

// SystemPrincipal is the server's own task acting: the actor
// system:<task>, with a service role in tenant (uuid.Nil for work across
// tenants, which the task does through store functions made for it).
// Stores apply the same scope to it as to any service role.
func SystemPrincipal(task string, tenant ...uuid.UUID) *Principal {
	p := &Principal{System: task, Role: RoleService}
	if len(tenant) > 0 {
		p.TenantID = tenant[0]
	}
	return p
}

// Actor names the principal in audit trails: "user:<uuid>", "robot:<uuid>"
// or "system:<task>".
func (p *Principal) Actor() string {
	if p.System != "" {
		return "system:" + p.System
	}
	if p.RobotID != uuid.Nil {
		return "robot:" + p.RobotID.String()
	}
	return "user:" + p.UserID.String()
}

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

type ipKey struct{}

// WithClientIP returns a context carrying the caller's address.
func WithClientIP(ctx context.Context, ip string) context.Context {
	return context.WithValue(ctx, ipKey{}, ip)
}

// ClientIPFrom returns the caller's address carried by ctx, or "".
func ClientIPFrom(ctx context.Context) string {
	ip, _ := ctx.Value(ipKey{}).(string)
	return ip
}
