package live

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

// Limits bound the state the streaming transports hold for their clients.
// A subscription (a goroutine, a hub subscriber with its queue, an executor
// context) costs tens of kilobytes for as long as it runs, so a client may
// hold only so many at once.
type Limits struct {
	// PerConnection caps the subscriptions one websocket holds at once.
	PerConnection int
	// PerPrincipal caps the subscriptions (over websockets) and SSE and
	// multipart streams one caller (a user, a robot, a tenant's service
	// role; anonymous callers by address) holds at once across all its
	// connections to this process.
	PerPrincipal int
}

// DefaultLimits fit any dashboard or robot with room to spare.
var DefaultLimits = Limits{PerConnection: 100, PerPrincipal: 500}

// Quota counts each caller's subscriptions and SSE and multipart streams
// in this process against Limits.PerPrincipal. The websocket, SSE and
// multipart transports of one handler share one Quota. A nil *Quota limits
// nothing.
type Quota struct {
	limits Limits

	mu   sync.Mutex
	held map[string]int
}

// NewQuota returns a quota enforcing l; zero fields take DefaultLimits'.
func NewQuota(l Limits) *Quota {
	if l.PerConnection <= 0 {
		l.PerConnection = DefaultLimits.PerConnection
	}
	if l.PerPrincipal <= 0 {
		l.PerPrincipal = DefaultLimits.PerPrincipal
	}
	return &Quota{limits: l, held: map[string]int{}}
}

// perConnection is the per-websocket cap (DefaultLimits' for a nil quota).
func (q *Quota) perConnection() int {
	if q == nil {
		return DefaultLimits.PerConnection
	}
	return q.limits.PerConnection
}

// callerKey names whose budget an operation of ctx draws on.
func callerKey(p *auth.Principal, ip string) string {
	if p == nil {
		return "anonymous@" + ip
	}
	return p.TenantID.String() + "/" + p.Actor()
}

// Hold reserves one place for the caller of ctx (its Principal, else
// its client address), or refuses with RATE_LIMITED when the caller runs as
// many as Limits.PerPrincipal allows. release returns the reservation; it
// may be called more than once.
func (q *Quota) Hold(ctx context.Context) (release func(), err error) {
	return q.hold(callerKey(auth.FromContext(ctx), auth.ClientIPFrom(ctx)))
}

func (q *Quota) hold(key string) (func(), error) {
	if q == nil {
		return func() {}, nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.held[key] >= q.limits.PerPrincipal {
		return nil, limitError("MAX_SUBSCRIPTIONS_PER_PRINCIPAL", q.limits.PerPrincipal,
			"you already hold %d subscriptions and streams (SSE, multipart) on this server, the most one caller may (MAX_SUBSCRIPTIONS_PER_PRINCIPAL); complete one before starting another",
			q.limits.PerPrincipal)
	}
	q.held[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			defer q.mu.Unlock()
			if q.held[key]--; q.held[key] <= 0 {
				delete(q.held, key)
			}
		})
	}, nil
}

// limitError is the RATE_LIMITED refusal of an operation over a limit,
// which extensions name (limit: the setting, max: its value).
func limitError(limit string, max int, format string, args ...any) *fault.Error {
	e := fault.New(fault.RateLimited, format, args...)
	e.Extra = map[string]any{"limit": limit, "max": max}
	return e
}

// writeRefusal answers a request refused before its stream began with a
// GraphQL-shaped error body.
func writeRefusal(ctx context.Context, w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []any{present(ctx, err)}})
}
