package db

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/lib/pq"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"fleetgraph/fault"
	"fleetgraph/locks"
)

// Webhook event types an endpoint may subscribe to, and the test event
// sendTestWebhook sends.
const (
	EventJobCompleted = "job.completed"
	EventJobFailed    = "job.failed"
	EventJobCancelled = "job.cancelled"
	EventRobotOffline = "robot.offline"
	EventRobotOnline  = "robot.online"
	EventWebhookTest  = "webhook.test"
)

// WebhookEventTypes are the event types an endpoint may subscribe to.
var WebhookEventTypes = []string{EventJobCompleted, EventJobFailed, EventJobCancelled, EventRobotOffline, EventRobotOnline}

// WebhookDueChannel is the NOTIFY channel told whenever deliveries are
// queued, so that the leader's deliverer sends them at once rather than at
// its next maintenance tick.
const WebhookDueChannel = "fleetgraph_webhook_due"

// notifyDue wakes the deliverer when the transaction commits.
func notifyDue(ctx context.Context, idb bun.IDB) error {
	if _, err := idb.ExecContext(ctx, "SELECT pg_notify(?, '')", WebhookDueChannel); err != nil {
		return fmt.Errorf("announcing a webhook delivery: %w", err)
	}
	return nil
}

// MaxWebhookEndpoints caps a tenant's endpoints (and webhookEndpoints).
const MaxWebhookEndpoints = 50

// WebhookSecretOverlap is how long a rotated-out secret keeps signing
// alongside the new one.
const WebhookSecretOverlap = 24 * time.Hour

// DefaultWebhookRetries is the wait before each retry of a failed delivery
// (about a day and a half in all); after the last, the delivery is FAILED.
var DefaultWebhookRetries = []time.Duration{
	5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour,
}

// WebhookJitter is the most a retry's wait is lengthened by, as a fraction
// of it, so that endpoints failing together do not retry in lockstep.
const WebhookJitter = 0.1

// WebhookConfig holds the rules and timings of webhook delivery.
type WebhookConfig struct {
	// AllowHTTP accepts http:// endpoint URLs (development); else https only.
	AllowHTTP bool
	// AllowPrivate accepts endpoints on loopback, private, link-local and
	// metadata addresses (development and tests). The delivery's dialer
	// checks every address it connects to; this store refuses URLs whose
	// host is such an address literally, at once.
	AllowPrivate bool
	// Retries are the waits before each retry (default DefaultWebhookRetries).
	Retries []time.Duration
	// DisableAfter disables an endpoint whose every delivery failed for
	// this long (default 3 days).
	DisableAfter time.Duration
	// Now is the maintenance clock (default time.Now): the times of
	// attempts, retries, leases and secret expiry are read from it.
	Now func() time.Time
}

func (c *WebhookConfig) defaults() {
	if c.Retries == nil {
		c.Retries = DefaultWebhookRetries
	}
	if c.DisableAfter == 0 {
		c.DisableAfter = 72 * time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// WebhookEndpoint is a URL of a tenant that receives signed events.
type WebhookEndpoint struct {
	bun.BaseModel `bun:"table:webhook_endpoints,alias:w"`

	ID                      uuid.UUID  `bun:"id,pk,type:uuid,default:gen_random_uuid()"`
	TenantID                uuid.UUID  `bun:"tenant_id,type:uuid"`
	URL                     string     `bun:"url"`
	Description             string     `bun:"description"`
	Events                  []string   `bun:"events,array"`
	Enabled                 bool       `bun:"enabled"`
	DisabledReason          *string    `bun:"disabled_reason"`
	Secret                  string     `bun:"secret" json:"-"`
	PreviousSecret          *string    `bun:"previous_secret" json:"-"`
	PreviousSecretExpiresAt *time.Time `bun:"previous_secret_expires_at"`
	FailingSince            *time.Time `bun:"failing_since"`
	CreatedBy               string     `bun:"created_by"`
	CreatedAt               time.Time  `bun:"created_at,nullzero,default:clock_timestamp()"`
	UpdatedAt               time.Time  `bun:"updated_at,nullzero,default:now()"`
}

// CreatedWebhookEndpoint is an endpoint with its signing secret, which is
// shown only here: on creation and on rotation.
type CreatedWebhookEndpoint struct {
	Endpoint *WebhookEndpoint
	Secret   string
}

// WebhookDeliveryStatus is where a delivery is.
type WebhookDeliveryStatus string

// Delivery states.
const (
	DeliveryPending   WebhookDeliveryStatus = "PENDING"
	DeliverySucceeded WebhookDeliveryStatus = "SUCCEEDED"
	DeliveryFailed    WebhookDeliveryStatus = "FAILED"
)

// WebhookAttempt is one try at a delivery.
type WebhookAttempt struct {
	At time.Time `json:"at"`
	// StatusCode is the receiver's answer; nil when there was none.
	StatusCode *int `json:"statusCode,omitempty"`
	DurationMs int  `json:"durationMs"`
	// ResponseBody is the first MaxAttemptBody bytes of the answer.
	ResponseBody *string `json:"responseBody,omitempty"`
	Error        *string `json:"error,omitempty"`
}

// MaxAttemptBody is how much of a receiver's answer an attempt keeps.
const MaxAttemptBody = 1024

// WebhookDelivery is one event sent (or to be sent) to one endpoint.
type WebhookDelivery struct {
	bun.BaseModel `bun:"table:webhook_deliveries,alias:d"`

	ID            uuid.UUID             `bun:"id,pk,type:uuid,default:gen_random_uuid()"`
	Seq           int64                 `bun:"seq,scanonly"`
	TenantID      uuid.UUID             `bun:"tenant_id,type:uuid"`
	EndpointID    uuid.UUID             `bun:"endpoint_id,type:uuid"`
	EventID       uuid.UUID             `bun:"event_id,type:uuid"`
	SubjectID     uuid.UUID             `bun:"subject_id,type:uuid"`
	EventType     string                `bun:"event_type"`
	Status        WebhookDeliveryStatus `bun:"status"`
	AttemptCount  int                   `bun:"attempt_count"`
	NextAttemptAt *time.Time            `bun:"next_attempt_at"`
	LeaseUntil    *time.Time            `bun:"lease_until"`
	Attempts      []WebhookAttempt      `bun:"attempts,type:jsonb"`
	CreatedAt     time.Time             `bun:"created_at,nullzero,default:clock_timestamp()"`
	FinishedAt    *time.Time            `bun:"finished_at"`
	// Waiting is true while an earlier delivery of the subject to the
	// endpoint is pending; the database sets it (migration 0018).
	Waiting bool `bun:"waiting,scanonly"`
}

// Cursor is the delivery's position in webhookDeliveries, newest first.
func (d *WebhookDelivery) Cursor() string { return encodeTimeID("delivery", d.CreatedAt, d.ID) }

// CreateWebhookEndpointInput describes a new endpoint.
type CreateWebhookEndpointInput struct {
	URL         string
	Events      []string
	Description *string
	Enabled     *bool
}

// UpdateWebhookEndpointInput changes the fields that are non-nil.
// Enabling an endpoint clears its disabled reason and failure streak.
type UpdateWebhookEndpointInput struct {
	URL         *string
	Events      []string
	Description *string
	Enabled     *bool
}

// Webhooks is the store of webhook endpoints, the outbox and deliveries.
type Webhooks struct {
	cfg WebhookConfig
	// sends limits each tenant's test sends and redeliveries.
	sends *tokenBuckets
}

// ManualSendLimit bounds, per tenant and process, the deliveries a
// tenant queues by hand (sendTestWebhook, redeliverWebhook):
// each is an outbound request to the endpoint's address, which may be a
// third party's, and one request of 50 aliases queued 50 of them, as often
// as it was sent. A person testing an endpoint fits in the burst of 10;
// past it, one a second.
var ManualSendLimit = RateLimit{PerSecond: 1, Burst: 10}

// NewWebhooks returns the webhook store.
func NewWebhooks(cfg WebhookConfig) *Webhooks {
	cfg.defaults()
	sends := newTokenBuckets(ManualSendLimit, time.Now, func(wait float64) error {
		e := fault.New(fault.RateLimited, "too many webhook deliveries were queued by hand (sendTestWebhook, redeliverWebhook); try again in %.0f s", wait)
		e.Extra = map[string]any{"limit": "WEBHOOK_MANUAL_SENDS", "max": ManualSendLimit.PerSecond, "retryAfter": int(wait)}
		return e
	})
	return &Webhooks{cfg: cfg, sends: sends}
}

// sendByHand charges the tenant of endpoint w one delivery queued by hand,
// or refuses (ManualSendLimit). The bucket is the tenant's, not the
// endpoint's or its host's: a tenant mints endpoint ids at will (50 at a
// time, and again after deleting them), and host names too (any wildcard
// DNS zone names one address under endless names), but not tenants.
func (s *Webhooks) sendByHand(w *WebhookEndpoint) error {
	key := w.TenantID.String()
	if err := s.sends.allow(key); err != nil {
		return err
	}
	s.sends.spend(key)
	return nil
}

// newWebhookSecret returns a Standard Webhooks secret: whsec_ and the
// base64 of 24 random bytes.
func newWebhookSecret() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// checkWebhookURL validates an endpoint URL: absolute, https (or http when
// allowed), a port (if any) between 1 and 65535, no credentials, and no literal address that delivery would
// refuse anyway.
func (s *Webhooks) checkWebhookURL(field, raw string) (string, error) {
	raw = strings.TrimSpace(raw)
	if len(raw) > 2000 {
		return "", fault.Invalid(field, "%s must be at most 2000 bytes", field)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Hostname() == "" {
		return "", fault.Invalid(field, "%s must be an absolute URL such as https://hooks.example.com/fleetgraph", field)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && s.cfg.AllowHTTP:
	case u.Scheme == "http":
		return "", fault.Invalid(field, "%s must use https (http is allowed only in development, with WEBHOOK_ALLOW_HTTP=true)", field)
	default:
		return "", fault.Invalid(field, "%s must be an https URL", field)
	}
	if p := u.Port(); p != "" {
		// url.Parse takes any digits; a port outside 1-65535 cannot be
		// dialled, and every delivery to it would fail for days.
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", fault.Invalid(field, "%s must have a port between 1 and 65535 (got %.12s)", field, p)
		}
	}
	if u.User != nil {
		return "", fault.Invalid(field, "%s must not carry credentials; verify deliveries by their signature instead", field)
	}
	if u.Fragment != "" {
		return "", fault.Invalid(field, "%s must not have a #fragment", field)
	}
	if ip, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err == nil && !s.cfg.AllowPrivate {
		if reason := ForbiddenAddress(ip); reason != "" {
			return "", fault.Invalid(field, "%s points at a %s address, where webhooks are not delivered", field, reason)
		}
	}
	// The URL is stored as Go writes it back, which escapes what the input
	// left raw (a space becomes %20, a non-ASCII letter up to six bytes):
	// the limit holds for what is stored.
	out := u.String()
	if len(out) > 2000 {
		return "", fault.Invalid(field, "%s must be at most 2000 bytes once escaped (it is %d)", field, len(out))
	}
	return out, nil
}

// forbiddenPrefixes are the ranges no webhook goes to unless private
// addresses are allowed, besides what netip's predicates cover.
var forbiddenPrefixes = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "reserved"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared (carrier-grade NAT)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "reserved"},
	{netip.MustParsePrefix("198.18.0.0/15"), "reserved"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	// Azure's host endpoint (WireServer), its metadata's sibling.
	{netip.MustParsePrefix("168.63.129.16/32"), "cloud metadata"},
	// IPv6 that carries an IPv4 address to a relay or translator, which
	// may lead anywhere inside: Teredo, 6to4. (64:ff9b::/96, the
	// well-known NAT64 prefix, is judged by its IPv4 address instead; the
	// local-use one, 64:ff9b:1::/48, is outside 2000::/3 and refused.)
	{netip.MustParsePrefix("2001::/32"), "tunnel (Teredo)"},
	{netip.MustParsePrefix("2002::/16"), "tunnel (6to4)"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
}

// globalUnicast6 is IPv6's global unicast space: webhooks go to nothing
// else over IPv6 (no IPv4-compatible, IPv4-translated, site-local or
// local-use NAT64 address, nor any range assigned later).
var globalUnicast6 = netip.MustParsePrefix("2000::/3")

// ForbiddenAddress says why ip is no place for a webhook (loopback,
// private, link-local (metadata services live there), ...), or "" when it
// is a public address. IPv4 inside IPv6 (mapped or NAT64) is judged as
// IPv4; other IPv6 must be global unicast, and not a tunnel's.
func ForbiddenAddress(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is6() && netip.MustParsePrefix("64:ff9b::/96").Contains(ip) {
		b := ip.As16()
		ip = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	switch {
	case !ip.IsValid():
		return "invalid"
	case ip.IsLoopback():
		return "loopback"
	case ip.IsPrivate():
		return "private"
	case ip.IsLinkLocalUnicast():
		return "link-local (metadata)"
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsMulticast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return "multicast"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "broadcast"
	}
	for _, p := range forbiddenPrefixes {
		if p.prefix.Contains(ip) {
			return p.what
		}
	}
	if ip.Is6() && !globalUnicast6.Contains(ip) {
		return "reserved (not global unicast)"
	}
	return ""
}

// checkEvents validates an endpoint's event list: known types, at least one.
func checkEvents(field string, events []string) ([]string, error) {
	if len(events) == 0 {
		return nil, fault.Invalid(field, "%s must list at least one event type (%s)", field, strings.Join(WebhookEventTypes, ", "))
	}
	out := make([]string, 0, len(events))
	for _, e := range events {
		if !slices.Contains(WebhookEventTypes, e) {
			return nil, fault.Invalid(field, "%q is not an event type; use %s", fault.Excerpt(e, 40), strings.Join(WebhookEventTypes, ", "))
		}
		out = append(out, e)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func checkDescription(field, v string) (string, error) {
	if len([]rune(v)) > 500 {
		return "", fault.Invalid(field, "%s must be at most 500 characters", field)
	}
	return v, checkText(field, v)
}

// CreateEndpoint adds an endpoint to the caller's tenant and returns it
// with its secret, shown this once.
func (s *Webhooks) CreateEndpoint(ctx context.Context, idb bun.IDB, in CreateWebhookEndpointInput) (*CreatedWebhookEndpoint, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	w := &WebhookEndpoint{TenantID: sc.tenant, Enabled: true, Secret: newWebhookSecret(), CreatedBy: sc.actor}
	if w.URL, err = s.checkWebhookURL("input.url", in.URL); err != nil {
		return nil, err
	}
	if w.Events, err = checkEvents("input.events", in.Events); err != nil {
		return nil, err
	}
	if in.Description != nil {
		if w.Description, err = checkDescription("input.description", *in.Description); err != nil {
			return nil, err
		}
	}
	if in.Enabled != nil {
		w.Enabled = *in.Enabled
	}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := underTenantCap(ctx, tx, sc, locks.WebhookEndpoints, (*WebhookEndpoint)(nil), "w", MaxWebhookEndpoints, "webhook endpoints"); err != nil {
			return err
		}
		if _, err := tx.NewInsert().Model(w).Returning("*").Exec(ctx); err != nil {
			return fmt.Errorf("creating the endpoint: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &CreatedWebhookEndpoint{Endpoint: w, Secret: w.Secret}, nil
}

// UpdateEndpoint changes an endpoint of the caller's tenant.
func (s *Webhooks) UpdateEndpoint(ctx context.Context, idb bun.IDB, id uuid.UUID, in UpdateWebhookEndpointInput) (*WebhookEndpoint, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	q := inTenant(sc, idb.NewUpdate().Model((*WebhookEndpoint)(nil)).Where("w.id = ?", id), "w").Set("updated_at = now()")
	if in.URL != nil {
		u, err := s.checkWebhookURL("input.url", *in.URL)
		if err != nil {
			return nil, err
		}
		q = q.Set("url = ?", u)
	}
	if in.Events != nil {
		events, err := checkEvents("input.events", in.Events)
		if err != nil {
			return nil, err
		}
		q = q.Set("events = ?", pgdialect.Array(events))
	}
	if in.Description != nil {
		d, err := checkDescription("input.description", *in.Description)
		if err != nil {
			return nil, err
		}
		q = q.Set("description = ?", d)
	}
	if in.Enabled != nil {
		q = q.Set("enabled = ?", *in.Enabled)
		if *in.Enabled {
			q = q.Set("disabled_reason = NULL").Set("failing_since = NULL")
		} else {
			q = q.Set("disabled_reason = ?", "disabled by "+sc.actor)
		}
	}
	w := new(WebhookEndpoint)
	if err := q.Returning("*").Scan(ctx, w); err != nil {
		return nil, notFoundIfNoRows(err, "webhook endpoint")
	}
	return w, nil
}

// deleteEventsWithoutDeliveries deletes those of events (whose deliveries
// tx has just deleted, at most a prune's batch) that no delivery refers to
// any more. It locks them first, in id order, and checks in a statement of
// its own: two transactions that each delete all of an event's deliveries
// but the other's (a prune and an endpoint's deletion, or two deletions,
// which lock the same way) would each see the other's still there and keep
// the event, which nothing could then find. Locked, the second waits for
// the first to commit, and its check then sees the first's deletions.
func deleteEventsWithoutDeliveries(ctx context.Context, tx bun.Tx, events []uuid.UUID) (int64, error) {
	if len(events) == 0 {
		return 0, nil
	}
	if _, err := tx.NewRaw(`SELECT 1 FROM webhook_events WHERE id IN (?) ORDER BY id FOR UPDATE`, bun.List(events)).Exec(ctx); err != nil {
		return 0, fmt.Errorf("locking webhook events: %w", err)
	}
	res, err := tx.NewRaw(`DELETE FROM webhook_events AS e WHERE e.id IN (?)
		AND NOT EXISTS (SELECT 1 FROM webhook_deliveries AS d WHERE d.event_id = e.id)`, bun.List(events)).Exec(ctx)
	if err != nil {
		return 0, fmt.Errorf("deleting webhook events without deliveries: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// DeleteEndpoint removes an endpoint with its deliveries, and the events no
// other endpoint's delivery refers to.
func (s *Webhooks) DeleteEndpoint(ctx context.Context, idb bun.IDB, id uuid.UUID) (uuid.UUID, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return uuid.Nil, err
	}
	var deleted uuid.UUID
	// A deadlock with a delivery being attempted meanwhile (the deliverer
	// records its attempt on a delivery queued after the first lock below,
	// whose event this then locks) rolls the deletion back whole: it is
	// tried again, as PostgreSQL advises.
	err = retryDeadlocks(func() error {
		return idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			// Locks in the order every other writer of these rows takes them,
			// so that none deadlocks with this: deliveries first (the prune,
			// redeliverWebhook and a recorded attempt start there), then the
			// endpoint, then events.
			if _, err := tx.NewRaw(`SELECT 1 FROM webhook_deliveries WHERE endpoint_id = ? AND tenant_id = ? ORDER BY seq FOR UPDATE`,
				id, sc.tenant).Exec(ctx); err != nil {
				return fmt.Errorf("locking the endpoint's deliveries: %w", err)
			}
			if err := inTenant(sc, tx.NewSelect().Model((*WebhookEndpoint)(nil)).Column("w.id").Where("w.id = ?", id), "w").
				For("UPDATE").Scan(ctx, &deleted); err != nil {
				return notFoundIfNoRows(err, "webhook endpoint")
			}
			// Its deliveries go, then the events only they referred to (which
			// retention, finding events through deliveries, could never find),
			// in SQL: a busy endpoint's deliveries are millions. The events
			// are locked first, as deleteEventsWithoutDeliveries does and for
			// the same reason; the statement after it sees, in its snapshot,
			// the deletions of a transaction that held them before.
			if _, err := tx.NewRaw(`SELECT 1 FROM webhook_events WHERE id IN (
				SELECT event_id FROM webhook_deliveries WHERE endpoint_id = ?) ORDER BY id FOR UPDATE`, id).Exec(ctx); err != nil {
				return fmt.Errorf("locking the endpoint's events: %w", err)
			}
			if _, err := tx.NewRaw(`WITH d AS (DELETE FROM webhook_deliveries WHERE endpoint_id = ? RETURNING event_id)
			DELETE FROM webhook_events AS e WHERE e.id IN (SELECT event_id FROM d)
			AND NOT EXISTS (SELECT 1 FROM webhook_deliveries AS x WHERE x.event_id = e.id AND x.endpoint_id <> ?)`, id, id).Exec(ctx); err != nil {
				return fmt.Errorf("deleting the endpoint's deliveries and events: %w", err)
			}
			if _, err := tx.NewDelete().Model((*WebhookEndpoint)(nil)).Where("w.id = ?", id).Exec(ctx); err != nil {
				return fmt.Errorf("deleting the webhook endpoint: %w", err)
			}
			return nil
		})
	})
	if err != nil {
		return uuid.Nil, err
	}
	return deleted, nil
}

// retryDeadlocks runs a transaction, again (up to three times in all) when
// PostgreSQL ended it as a deadlock's victim (40P01): nothing of it
// committed, and the other transaction has gone on.
func retryDeadlocks(run func() error) error {
	for attempt := 1; ; attempt++ {
		err := run()
		var pqErr *pq.Error
		if attempt == 3 || !errors.As(err, &pqErr) || pqErr.Code != "40P01" {
			return err
		}
	}
}

// RotateSecret gives an endpoint a new secret, returned this once; the
// previous one keeps signing alongside it for WebhookSecretOverlap, so
// that receivers can switch without losing a delivery. A second rotation
// within that overlap is CONFLICT: it would drop at once the secret
// receivers may still verify with (one previous secret is kept), and the
// refusal says when it becomes possible. With dropPrevious the rotation
// goes ahead at any time and only the new secret signs: for one that
// leaked.
func (s *Webhooks) RotateSecret(ctx context.Context, idb bun.IDB, id uuid.UUID, dropPrevious bool) (*CreatedWebhookEndpoint, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	secret := newWebhookSecret()
	now := s.cfg.Now()
	w := new(WebhookEndpoint)
	q := inTenant(sc, idb.NewUpdate().Model(w).Where("w.id = ?", id), "w").Set("secret = ?", secret)
	if dropPrevious {
		q = q.Set("previous_secret = NULL").Set("previous_secret_expires_at = NULL")
	} else {
		q = q.Where("w.previous_secret_expires_at IS NULL OR w.previous_secret_expires_at <= ?", now).
			Set("previous_secret = w.secret").Set("previous_secret_expires_at = ?", now.Add(WebhookSecretOverlap))
	}
	err = q.Set("updated_at = now()").Returning("*").Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		var until time.Time
		err := inTenant(sc, idb.NewSelect().Model((*WebhookEndpoint)(nil)).Column("w.previous_secret_expires_at").Where("w.id = ?", id), "w").
			Scan(ctx, &until)
		if err != nil {
			return nil, notFoundIfNoRows(err, "webhook endpoint")
		}
		return nil, fault.New(fault.Conflict, "the secret was rotated less than %d hours ago, and the previous one signs alongside it until %s: "+
			"rotating again now would drop it at once; rotate again after then, or with dropPrevious: true if a secret leaked", int(WebhookSecretOverlap.Hours()), until.UTC().Format(time.RFC3339))
	}
	if err != nil {
		return nil, fmt.Errorf("rotating the endpoint's secret: %w", err)
	}
	return &CreatedWebhookEndpoint{Endpoint: w, Secret: secret}, nil
}

// Endpoints lists the caller's tenant's endpoints, newest first.
func (s *Webhooks) Endpoints(ctx context.Context, idb bun.IDB) ([]*WebhookEndpoint, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*WebhookEndpoint
	if err := inTenant(sc, idb.NewSelect().Model(&rows), "w").OrderExpr("w.created_at DESC, w.id DESC").
		Apply(limitRows(MaxWebhookEndpoints)).Scan(ctx); err != nil {
		return nil, fmt.Errorf("listing webhook endpoints: %w", err)
	}
	return rows, nil
}

// Deliveries returns a page of an endpoint's deliveries, newest first,
// optionally of one status.
func (s *Webhooks) Deliveries(ctx context.Context, idb bun.IDB, endpointID uuid.UUID, status *WebhookDeliveryStatus, p PageArgs) (Page[WebhookDelivery], error) {
	sc, err := userScope(ctx)
	if err != nil {
		return Page[WebhookDelivery]{}, err
	}
	if err := s.requireEndpoint(ctx, idb, sc, endpointID, "endpointId"); err != nil {
		return Page[WebhookDelivery]{}, err
	}
	q := inTenant(sc, idb.NewSelect().Model((*WebhookDelivery)(nil)).Where("d.endpoint_id = ?", endpointID), "d")
	if status != nil {
		q = q.Where("d.status = ?", *status)
	}
	return newestFirst[WebhookDelivery](ctx, q, nil, "delivery", "d", p)
}

// requireEndpoint answers NOT_FOUND (naming field) unless the tenant has the endpoint.
func (s *Webhooks) requireEndpoint(ctx context.Context, idb bun.IDB, sc scope, id uuid.UUID, field string) error {
	ok, err := inTenant(sc, idb.NewSelect().Model((*WebhookEndpoint)(nil)).Where("w.id = ?", id), "w").Exists(ctx)
	if err != nil {
		return fmt.Errorf("finding the endpoint: %w", err)
	}
	if !ok {
		return &fault.Error{Code: fault.NotFound, Field: field, Message: "webhook endpoint not found"}
	}
	return nil
}

// Redeliver sends a delivery's event to its endpoint again, as a new
// delivery (with the same webhook-id, so receivers can de-duplicate).
func (s *Webhooks) Redeliver(ctx context.Context, idb bun.IDB, deliveryID uuid.UUID) (*WebhookDelivery, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var out *WebhookDelivery
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		d := new(WebhookDelivery)
		// FOR SHARE: the retention prune deletes old deliveries, then their
		// events once no delivery refers to them. Holding the delivery
		// makes a prune that took it first finish (and this answer
		// NOT_FOUND), or a prune that comes second wait and then see the
		// new delivery, which keeps the event: without it, a prune could
		// delete the event, and by cascade the committed redelivery.
		if err := inTenant(sc, tx.NewSelect().Model(d).Where("d.id = ?", deliveryID), "d").For("SHARE").Scan(ctx); err != nil {
			return notFoundIfNoRows(err, "webhook delivery")
		}
		if d.Status == DeliveryPending {
			return &fault.Error{Code: fault.Conflict, Message: "the delivery is still pending: it is retried on its own",
				Extra: map[string]any{"currentStatus": string(d.Status)}}
		}
		w, err := s.requireEnabled(ctx, tx, sc, d.EndpointID)
		if err != nil {
			return err
		}
		if err := s.sendByHand(w); err != nil {
			return err
		}
		out = &WebhookDelivery{TenantID: d.TenantID, EndpointID: d.EndpointID, EventID: d.EventID, SubjectID: d.SubjectID,
			EventType: d.EventType, Status: DeliveryPending, Attempts: []WebhookAttempt{}}
		if _, err := tx.NewInsert().Model(out).Returning("*").Exec(ctx); err != nil {
			return fmt.Errorf("queueing the redelivery: %w", err)
		}
		return notifyDue(ctx, tx)
	})
	return out, err
}

// requireEnabled refuses (CONFLICT) to queue a delivery to a disabled endpoint.
func (s *Webhooks) requireEnabled(ctx context.Context, tx bun.Tx, sc scope, endpointID uuid.UUID) (*WebhookEndpoint, error) {
	w := new(WebhookEndpoint)
	// Held (KEY SHARE) until the delivery is stored: a deletion of the
	// endpoint meanwhile would fail its insert on the foreign key.
	if err := inTenant(sc, tx.NewSelect().Model(w).Where("w.id = ?", endpointID), "w").For("KEY SHARE").Scan(ctx); err != nil {
		return nil, notFoundIfNoRows(err, "webhook endpoint")
	}
	if !w.Enabled {
		return nil, &fault.Error{Code: fault.Conflict, Message: "the endpoint is disabled: enable it first (updateWebhookEndpoint)"}
	}
	return w, nil
}

// SendTest queues a webhook.test event to one endpoint, whatever events it
// subscribed to.
func (s *Webhooks) SendTest(ctx context.Context, idb bun.IDB, endpointID uuid.UUID) (*WebhookDelivery, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	var out *WebhookDelivery
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		w, err := s.requireEnabled(ctx, tx, sc, endpointID)
		if err != nil {
			return err
		}
		if err := s.sendByHand(w); err != nil {
			return err
		}
		data := map[string]any{"endpointId": endpointID, "message": "a test event sent by " + sc.actor}
		ev, err := insertEvent(ctx, tx, sc.tenant, EventWebhookTest, endpointID, s.cfg.Now(), data)
		if err != nil {
			return err
		}
		out = &WebhookDelivery{TenantID: sc.tenant, EndpointID: endpointID, EventID: ev, SubjectID: endpointID,
			EventType: EventWebhookTest, Status: DeliveryPending, Attempts: []WebhookAttempt{}}
		if _, err := tx.NewInsert().Model(out).Returning("*").Exec(ctx); err != nil {
			return fmt.Errorf("queueing the test delivery: %w", err)
		}
		return notifyDue(ctx, tx)
	})
	return out, err
}

// insertEvent writes one event to the outbox and returns its id.
func insertEvent(ctx context.Context, tx bun.IDB, tenant uuid.UUID, typ string, subject uuid.UUID, at time.Time, data any) (uuid.UUID, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return uuid.Nil, fmt.Errorf("encoding the %s event: %w", typ, err)
	}
	var id uuid.UUID
	if err := tx.NewRaw("INSERT INTO webhook_events (tenant_id, type, subject_id, data, created_at) VALUES (?, ?, ?, ?::jsonb, ?) RETURNING id",
		tenant, typ, subject, string(raw), at).Scan(ctx, &id); err != nil {
		return uuid.Nil, fmt.Errorf("recording the %s event: %w", typ, err)
	}
	return id, nil
}

// recordEventsSQL writes events to the outbox, each with one delivery per
// enabled endpoint of its tenant that wants its type, or not at all when
// none does; when it wrote deliveries, it wakes the deliverer (on commit).
// It is one prepared statement however many events a transition finished.
// Parameters (arrays, one element per event): tenants, types, subjects,
// data, times; then the channel.
//
// The endpoints are read once (w, materialized) and locked FOR KEY SHARE,
// as the deliveries' foreign key would lock them, but before anything is
// written: an endpoint being deleted (deleteWebhookEndpoint holds it FOR
// UPDATE from early in its transaction) is waited for, and once deleted
// it drops out of w (READ COMMITTED re-checks a locked row), so neither
// the event nor a delivery refers to it. Checked by the foreign key
// instead, after the insert, the delivery failed (23503) and took the job
// change with it. The event and its deliveries read the same w, so no
// event is written without a delivery. A key share conflicts with no
// other writer of endpoints (updates do not change the key), and the
// statement takes it before the delivery trigger's advisory lock
// (migration 0018), which deleteWebhookEndpoint never takes.
const recordEventsSQL = `
WITH e AS (
	SELECT * FROM unnest(?::uuid[], ?::text[], ?::uuid[], ?::text[]::jsonb[], ?::text[]::timestamptz[])
		WITH ORDINALITY AS e(tenant_id, type, subject_id, data, created_at, n)
), w AS MATERIALIZED (
	SELECT w.id, w.tenant_id, w.events FROM webhook_endpoints w
	WHERE w.tenant_id = ANY(?::uuid[]) AND w.enabled AND EXISTS (SELECT 1 FROM e WHERE e.tenant_id = w.tenant_id AND e.type = ANY(w.events))
	ORDER BY w.id
	FOR KEY SHARE OF w
), event AS (
	INSERT INTO webhook_events (tenant_id, type, subject_id, data, created_at)
	SELECT e.tenant_id, e.type, e.subject_id, e.data, e.created_at FROM e
	WHERE EXISTS (SELECT 1 FROM w WHERE w.tenant_id = e.tenant_id AND e.type = ANY(w.events))
	ORDER BY e.n
	RETURNING id, tenant_id, type, subject_id
), delivery AS (
	INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id, subject_id, event_type)
	SELECT event.tenant_id, w.id, event.id, event.subject_id, event.type
	FROM event JOIN w ON w.tenant_id = event.tenant_id AND event.type = ANY(w.events)
	ORDER BY event.id, w.id
	RETURNING 1
)
SELECT pg_notify(?, '') FROM (SELECT 1 FROM delivery LIMIT 1) AS any_delivery`

// outboxEvent is an event about subject (a job or robot) of tenant, at
// the time of the change; data is the subject as the API shows it.
type outboxEvent struct {
	tenant  uuid.UUID
	typ     string
	subject uuid.UUID
	at      time.Time
	data    any
}

// recordEvents writes events to the webhook outbox in tx, the transaction
// of the change that causes them, so that no event is lost or sent for a
// change that rolled back. An event's subject appears at most once.
func recordEvents(ctx context.Context, tx bun.IDB, events []outboxEvent) error {
	if len(events) == 0 {
		return nil
	}
	tenants, subjects := make([]uuid.UUID, len(events)), make([]uuid.UUID, len(events))
	types, data, times := make([]string, len(events)), make([]string, len(events)), make([]string, len(events))
	for i, ev := range events {
		raw, err := json.Marshal(ev.data)
		if err != nil {
			return fmt.Errorf("encoding the %s event: %w", ev.typ, err)
		}
		tenants[i], types[i], subjects[i], data[i], times[i] = ev.tenant, ev.typ, ev.subject, string(raw), ev.at.Format(time.RFC3339Nano)
	}
	var p Params
	var none any
	err := scanBound(ctx, tx.NewRaw(recordEventsSQL, p.Bind(pgUUIDs(tenants)), p.Bind(pq.StringArray(types)), p.Bind(pgUUIDs(subjects)),
		p.Bind(pq.StringArray(data)), p.Bind(pq.StringArray(times)), p.Bind(pgUUIDs(tenants)), p.Bind(WebhookDueChannel)), &p, &none)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("recording the %s event: %w", events[0].typ, err)
	}
	return nil
}

// recordRobotChange writes robot.online or robot.offline when a change
// moved r between OFFLINE and any other status (was is its status before).
func recordRobotChange(ctx context.Context, tx bun.IDB, was RobotStatus, r *Robot) error {
	if (was == RobotOffline) == (r.Status == RobotOffline) {
		return nil
	}
	typ := EventRobotOnline
	if r.Status == RobotOffline {
		typ = EventRobotOffline
	}
	return recordEvents(ctx, tx, []outboxEvent{{r.TenantID, typ, r.ID, r.UpdatedAt, robotViewOf(r)}})
}

// apiTime is a time as the API shows it: RFC 3339 with nanoseconds, in UTC.
type apiTime time.Time

// MarshalJSON implements json.Marshaler.
func (t apiTime) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Time(t).UTC().Format(time.RFC3339Nano) + `"`), nil
}

func apiTimePtr(t *time.Time) *apiTime {
	if t == nil {
		return nil
	}
	v := apiTime(*t)
	return &v
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// jobView is a job as the API's Job type shows its scalar fields: the data
// of job events.
type jobView struct {
	ID                   uuid.UUID  `json:"id"`
	WorkflowID           uuid.UUID  `json:"workflowId"`
	WorkflowVersion      int        `json:"workflowVersion"`
	Status               JobStatus  `json:"status"`
	Priority             int        `json:"priority"`
	Input                RawJSON    `json:"input"`
	Result               RawJSON    `json:"result"`
	Error                *string    `json:"error"`
	Progress             int        `json:"progress"`
	CurrentNode          *string    `json:"currentNode"`
	RobotID              *uuid.UUID `json:"robotId"`
	TargetRobotID        *uuid.UUID `json:"targetRobotId"`
	Attempt              int        `json:"attempt"`
	MaxAttempts          int        `json:"maxAttempts"`
	LeaseExpiresAt       *apiTime   `json:"leaseExpiresAt"`
	RunAfter             apiTime    `json:"runAfter"`
	RequiredCapabilities []string   `json:"requiredCapabilities"`
	CreatedAt            apiTime    `json:"createdAt"`
	ClaimedAt            *apiTime   `json:"claimedAt"`
	StartedAt            *apiTime   `json:"startedAt"`
	FinishedAt           *apiTime   `json:"finishedAt"`
	UpdatedAt            apiTime    `json:"updatedAt"`
	Revision             int64      `json:"revision"`
	ScheduleID           *uuid.UUID `json:"scheduleId"`
	ScheduledFor         *apiTime   `json:"scheduledFor"`
	CreatedBy            string     `json:"createdBy"`
}

func jobViewOf(j *Job) jobView {
	return jobView{
		ID: j.ID, WorkflowID: j.WorkflowID, WorkflowVersion: j.WorkflowVersion, Status: j.Status, Priority: j.Priority,
		Input: j.Input.orEmptyObject(), Result: j.Result, Error: j.Error, Progress: j.Progress, CurrentNode: j.CurrentNode,
		RobotID: j.RobotID, TargetRobotID: j.TargetRobotID, Attempt: j.Attempt, MaxAttempts: j.MaxAttempts,
		LeaseExpiresAt: apiTimePtr(j.LeaseExpiresAt), RunAfter: apiTime(j.RunAfter),
		RequiredCapabilities: nonNilStrings(j.RequiredCapabilities), CreatedAt: apiTime(j.CreatedAt),
		ClaimedAt: apiTimePtr(j.ClaimedAt), StartedAt: apiTimePtr(j.StartedAt), FinishedAt: apiTimePtr(j.FinishedAt),
		UpdatedAt: apiTime(j.UpdatedAt), Revision: j.Revision,
		ScheduleID: j.ScheduleID, ScheduledFor: apiTimePtr(j.ScheduledFor), CreatedBy: j.CreatedBy,
	}
}

// robotView is a robot as the API's Robot type shows its scalar fields:
// the data of robot events.
type robotView struct {
	ID                uuid.UUID   `json:"id"`
	Name              string      `json:"name"`
	Hostname          string      `json:"hostname"`
	Status            RobotStatus `json:"status"`
	Capabilities      []string    `json:"capabilities"`
	MaxConcurrentJobs int         `json:"maxConcurrentJobs"`
	Environment       string      `json:"environment"`
	AgentVersion      string      `json:"agentVersion"`
	Metadata          RawJSON     `json:"metadata"`
	LastHeartbeatAt   *apiTime    `json:"lastHeartbeatAt"`
	CreatedAt         apiTime     `json:"createdAt"`
	UpdatedAt         apiTime     `json:"updatedAt"`
	Revision          int64       `json:"revision"`
}

func robotViewOf(r *Robot) robotView {
	return robotView{
		ID: r.ID, Name: r.Name, Hostname: r.Hostname, Status: r.Status, Capabilities: nonNilStrings(r.Capabilities),
		MaxConcurrentJobs: r.MaxConcurrentJobs, Environment: r.Environment, AgentVersion: r.AgentVersion,
		Metadata: r.Metadata.orEmptyObject(), LastHeartbeatAt: apiTimePtr(r.LastHeartbeatAt),
		CreatedAt: apiTime(r.CreatedAt), UpdatedAt: apiTime(r.UpdatedAt), Revision: r.Revision,
	}
}

// DueDelivery is a delivery claimed for one attempt, with what sending it
// needs.
type DueDelivery struct {
	ID           uuid.UUID       `bun:"id"`
	TenantID     uuid.UUID       `bun:"tenant_id"`
	EndpointID   uuid.UUID       `bun:"endpoint_id"`
	AttemptCount int             `bun:"attempt_count"`
	URL          string          `bun:"url"`
	Secret       string          `bun:"secret"`
	OldSecret    *string         `bun:"previous_secret"`
	OldUntil     *time.Time      `bun:"previous_secret_expires_at"`
	EventID      uuid.UUID       `bun:"event_id"`
	EventType    string          `bun:"event_type"`
	EventData    json.RawMessage `bun:"event_data"`
	EventAt      time.Time       `bun:"event_at"`
}

// Secrets are the secrets that sign the delivery at now: the endpoint's,
// and its previous one while it overlaps.
func (d *DueDelivery) Secrets(now time.Time) []string {
	out := []string{d.Secret}
	if d.OldSecret != nil && d.OldUntil != nil && now.Before(*d.OldUntil) {
		out = append(out, *d.OldSecret)
	}
	return out
}

// claimDueSQL leases up to ?2 due deliveries at ?0 for ?1 seconds, oldest
// first, of tenants other than those in ?3: pending, not leased (or the
// lease ran out: its sender died), to an enabled endpoint, and the first
// pending one of its subject to its endpoint, so that each endpoint gets a
// job's events in order. SKIP LOCKED and the lease keep two claimers from
// taking the same delivery.
//
// It reads only deliveries that are not waiting behind an earlier one of
// their subject (webhook_deliveries_ready_idx), so a subject's blocked
// backlog, however long, is never scanned. The NOT EXISTS still guards the
// order when two transactions queued a subject's first deliveries at once
// (neither saw the other's, so neither waits): the later one goes out only
// after the earlier one finished.
const claimDueSQL = `
UPDATE webhook_deliveries d SET attempt_count = d.attempt_count + 1,
	lease_until = ?0::timestamptz + make_interval(secs => ?1)
FROM webhook_endpoints w, webhook_events e
WHERE d.id IN (
	SELECT c.id FROM webhook_deliveries c JOIN webhook_endpoints ce ON ce.id = c.endpoint_id
	WHERE c.status = 'PENDING' AND NOT c.waiting AND ce.enabled %s
	  AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= ?0)
	  AND (c.lease_until IS NULL OR c.lease_until <= ?0)
	  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = c.endpoint_id
	                  AND p.subject_id = c.subject_id AND p.status = 'PENDING' AND p.seq < c.seq)
	ORDER BY c.seq
	LIMIT ?2
	FOR UPDATE OF c SKIP LOCKED
) AND w.id = d.endpoint_id AND e.id = d.event_id
RETURNING d.id, d.tenant_id, d.endpoint_id, d.attempt_count, w.url, w.secret, w.previous_secret, w.previous_secret_expires_at,
	e.id AS event_id, e.type AS event_type, e.data AS event_data, e.created_at AS event_at`

// claimDueAny and claimDueExcept are claimDueSQL for any tenant, and for
// any but those in ?3.
var (
	claimDueAny    = fmt.Sprintf(claimDueSQL, "")
	claimDueExcept = fmt.Sprintf(claimDueSQL, "AND c.tenant_id <> ALL(?3::uuid[])")
)

// ClaimDue leases up to limit deliveries due at now, of any tenant but
// those in except, for lease (longer than an attempt can take). It is
// maintenance work.
func (s *Webhooks) ClaimDue(ctx context.Context, idb bun.IDB, now time.Time, limit int, lease time.Duration, except ...uuid.UUID) ([]*DueDelivery, error) {
	var rows []*DueDelivery
	// Without tenants to leave out the statement says nothing of them:
	// an empty <> ALL(...) is true, but the planner estimates it as a
	// filter and reads the queue in a worse order.
	stmt := claimDueAny
	if len(except) > 0 {
		stmt = claimDueExcept
	}
	if err := idb.NewRaw(stmt, now, seconds(lease), limit, pgUUIDs(except)).Scan(ctx, &rows); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("claiming due webhook deliveries: %w", err)
	}
	return rows, nil
}

// ReleaseClaim gives back d's claim, its attempt uncounted, when the
// attempt was cut short (the sender is shutting down): the delivery is
// due again at once, to any process. It changes nothing when the claim is
// stale (another attempt took over).
func (s *Webhooks) ReleaseClaim(ctx context.Context, idb bun.IDB, d *DueDelivery) error {
	if _, err := idb.NewUpdate().Model((*WebhookDelivery)(nil)).
		Where("d.id = ? AND d.status = 'PENDING' AND d.attempt_count = ? AND d.lease_until IS NOT NULL", d.ID, d.AttemptCount).
		Set("attempt_count = d.attempt_count - 1").Set("lease_until = NULL").Exec(ctx); err != nil {
		return fmt.Errorf("giving back a webhook delivery: %w", err)
	}
	return nil
}

// AttemptResult is the outcome of sending a delivery once.
type AttemptResult struct {
	Attempt WebhookAttempt
	// Gone is true when the receiver answered 410 Gone.
	Gone bool
}

// Succeeded reports whether the receiver accepted the delivery (2xx).
func (r AttemptResult) Succeeded() bool {
	return r.Attempt.StatusCode != nil && *r.Attempt.StatusCode >= 200 && *r.Attempt.StatusCode < 300
}

// RecordAttempt stores the outcome of attempt d (claimed at now) and what
// follows from it, in one transaction: the delivery SUCCEEDED, retried
// after the next wait of the schedule (with jitter), or FAILED after the
// last; the endpoint disabled on 410 Gone or when every delivery failed
// for DisableAfter. It changes nothing when the claim is stale (the lease
// ran out and another attempt took over).
func (s *Webhooks) RecordAttempt(ctx context.Context, idb bun.IDB, d *DueDelivery, now time.Time, res AttemptResult) error {
	a := res.Attempt
	for _, p := range []*string{a.ResponseBody, a.Error} {
		if p != nil {
			*p = strings.ReplaceAll(strings.ToValidUTF8(*p, "\uFFFD"), "\x00", "")
		}
	}
	raw, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encoding the attempt: %w", err)
	}
	status, next := DeliveryPending, (*time.Time)(nil)
	switch {
	case res.Succeeded():
		status = DeliverySucceeded
	case res.Gone || d.AttemptCount > len(s.cfg.Retries):
		status = DeliveryFailed
	default:
		wait := s.cfg.Retries[d.AttemptCount-1]
		t := now.Add(wait + time.Duration(mrand.Float64()*WebhookJitter*float64(wait)))
		next = &t
	}
	var finished *time.Time
	if status != DeliveryPending {
		finished = &now
	}
	return idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		res2, err := tx.NewUpdate().Model((*WebhookDelivery)(nil)).
			Where("d.id = ? AND d.status = 'PENDING' AND d.attempt_count = ?", d.ID, d.AttemptCount).
			Set("attempts = d.attempts || jsonb_build_array(?::jsonb)", string(raw)).
			Set("status = ?", status).Set("next_attempt_at = ?", next).Set("lease_until = NULL").
			Set("finished_at = ?", finished).Exec(ctx)
		if err != nil {
			return fmt.Errorf("recording the delivery attempt: %w", err)
		}
		if n, _ := res2.RowsAffected(); n == 0 {
			return nil // stale: a later claim owns the delivery now
		}
		q := tx.NewUpdate().Model((*WebhookEndpoint)(nil)).Where("w.id = ?", d.EndpointID)
		switch {
		case res.Succeeded():
			q = q.Set("failing_since = NULL").Where("w.failing_since IS NOT NULL")
		case res.Gone:
			q = q.Set("enabled = false").Set("updated_at = now()").
				Set("disabled_reason = ?", fmt.Sprintf("the endpoint answered 410 Gone at %s", now.UTC().Format(time.RFC3339)))
		default:
			q = q.Set("failing_since = coalesce(w.failing_since, ?)", now).
				Set("enabled = w.enabled AND coalesce(w.failing_since, ?) > ?", now, now.Add(-s.cfg.DisableAfter)).
				Set("disabled_reason = CASE WHEN w.enabled AND coalesce(w.failing_since, ?) <= ? THEN ? ELSE w.disabled_reason END",
					now, now.Add(-s.cfg.DisableAfter),
					fmt.Sprintf("every delivery failed for %s (the last at %s): fix the endpoint, then enable it again",
						s.cfg.DisableAfter, now.UTC().Format(time.RFC3339)))
		}
		if _, err := q.Exec(ctx); err != nil {
			return fmt.Errorf("updating the endpoint's health: %w", err)
		}
		return nil
	})
}
