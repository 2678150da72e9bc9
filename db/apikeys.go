package db

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

// keyLength is the length of a raw key: the prefix and 32 random bytes in
// unpadded base64url.
var keyLength = len(auth.KeyPrefix) + base64.RawURLEncoding.EncodedLen(32)

// APIKey is a robot's API key. Only the SHA-256 of the raw key is stored.
type APIKey struct {
	bun.BaseModel `bun:"table:api_keys,alias:k"`

	ID         uuid.UUID  `bun:"id,pk,type:uuid,default:gen_random_uuid()"`
	TenantID   uuid.UUID  `bun:"tenant_id,type:uuid"`
	RobotID    uuid.UUID  `bun:"robot_id,type:uuid"`
	Name       string     `bun:"name"`
	Prefix     string     `bun:"prefix"`
	KeyHash    []byte     `bun:"key_hash"`
	CreatedBy  string     `bun:"created_by"`
	CreatedAt  time.Time  `bun:"created_at,nullzero,default:clock_timestamp()"`
	ExpiresAt  *time.Time `bun:"expires_at"`
	RevokedBy  *string    `bun:"revoked_by"`
	RevokedAt  *time.Time `bun:"revoked_at"`
	LastUsedAt *time.Time `bun:"last_used_at"`
	LastUsedIP *string    `bun:"last_used_ip"`
}

// CreatedAPIKey is a new key with its raw value, shown once.
type CreatedAPIKey struct {
	Key    string
	APIKey *APIKey
}

// APIKeyAuditEntry records something done with (or attempted with) a key.
type APIKeyAuditEntry struct {
	bun.BaseModel `bun:"table:api_key_audit,alias:a"`

	ID       int64      `bun:"id,pk,autoincrement"`
	TenantID *uuid.UUID `bun:"tenant_id,type:uuid"`
	APIKeyID *uuid.UUID `bun:"api_key_id,type:uuid"`
	RobotID  *uuid.UUID `bun:"robot_id,type:uuid"`
	Event    string     `bun:"event"`
	Actor    *string    `bun:"actor"`
	IP       *string    `bun:"ip"`
	Detail   *string    `bun:"detail"`
	At       time.Time  `bun:"at,nullzero,default:now()"`
}

// Audit events.
const (
	AuditCreated         = "CREATED"
	AuditRevoked         = "REVOKED"
	AuditUsedAfterRevoke = "USED_AFTER_REVOKE"
	AuditExpired         = "EXPIRED"
	AuditUnknownKey      = "UNKNOWN_KEY"
)

// auditEvery bounds how often one key (or, for unknown keys, one address)
// writes the same refusal to the audit log, and how often a key's last use
// is written: a flood of requests costs no flood of writes.
const auditEvery = time.Minute

// APIKeys is the store of robot API keys and their audit trail.
type APIKeys struct {
	// Cache, when set, spares Verify the read of keys verified in the last
	// seconds (see KeyCache). Set it before use.
	Cache *KeyCache
	// Log receives what the store cannot report to the caller (a refusal's
	// audit that failed); nil logs to slog.Default. Set it before use.
	Log *slog.Logger

	mu sync.Mutex
	// written holds the writes of this window and of the one before it
	// ("<event>:<key or ip>" -> when): a write is due when neither holds
	// it within auditEvery. Windows last auditEvery, so both maps hold
	// at most two minutes of writes, and at most maxDueEntries each.
	written, before map[string]time.Time
	window          time.Time // when written began
	// anonymous counts the refusals of unknown keys written this window.
	anonymous int
	now       func() time.Time
	// lookups limits the reads of keys that do not verify, per address;
	// known keys are never limited.
	lookups *tokenBuckets
	known   *knownKeys
}

// maxDueEntries caps the writes one window remembers: a flood of refusals
// from more distinct addresses than that in a minute is not audited past
// it (nor are last uses recorded) until the next window, rather than
// growing the map or writing a row per address.
const maxDueEntries = 50_000

// maxAnonymousAudits caps the refusals of unknown keys a window writes, one
// per address: anyone can send them, from as many addresses as they hold,
// and each is a row of the audit kept for AUDIT_RETENTION_DAYS;
// keys a tenant made are bounded by the tenant's keys instead.
const maxAnonymousAudits = 1_000

// NewAPIKeys returns the API key store.
func NewAPIKeys() *APIKeys { return NewAPIKeysAt(time.Now) }

// NewAPIKeysAt returns the API key store on the clock now, which decides
// expiry (tests of expiry move it).
func NewAPIKeysAt(now func() time.Time) *APIKeys {
	return &APIKeys{written: map[string]time.Time{}, now: now, lookups: newKeyLookups(DefaultKeyLookupLimit, now), known: newKnownKeys()}
}

// LimitLookups replaces DefaultKeyLookupLimit (zero fields keep its
// values). Call it before use.
func (s *APIKeys) LimitLookups(l RateLimit) { s.lookups = newKeyLookups(l, s.now) }

// due reports whether the write named by key may happen now, and if so
// records it; anonymous writes (refusals of unknown keys) are also capped
// at maxAnonymousAudits a window. It takes constant time: old writes leave
// with their window.
func (s *APIKeys) due(key string, anonymous bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Sub(s.window) >= auditEvery {
		s.before, s.written, s.window = s.written, make(map[string]time.Time, len(s.written)), now
		s.anonymous = 0
	}
	if anonymous && s.anonymous >= maxAnonymousAudits {
		return false
	}
	for _, m := range []map[string]time.Time{s.written, s.before} {
		if t, ok := m[key]; ok && now.Sub(t) < auditEvery {
			return false
		}
	}
	if len(s.written) >= maxDueEntries {
		return false
	}
	s.written[key] = now
	if anonymous {
		s.anonymous++
	}
	return true
}

func hashKey(raw string) []byte {
	sum := sha256.Sum256([]byte(raw))
	return sum[:]
}

// recordUse writes a key's last use, at most once a minute per key and
// process (and, across replicas, at most once a minute per key: the
// statement skips rows written less than a minute ago). A cached
// verification records it as a read one does, so last_used_at stays true
// to within a minute whatever the cache does.
func (s *APIKeys) recordUse(ctx context.Context, idb bun.IDB, keyID uuid.UUID, ip string) error {
	if !s.due("used:"+keyID.String(), false) {
		return nil
	}
	if _, err := idb.NewUpdate().Model((*APIKey)(nil)).Where("k.id = ?", keyID).
		Where("k.last_used_at IS NULL OR k.last_used_at < now() - make_interval(secs => ?)", seconds(auditEvery)).
		Set("last_used_at = now()").Set("last_used_ip = ?", nilIfEmpty(ip)).Exec(ctx); err != nil {
		return fmt.Errorf("recording the key's use: %w", err)
	}
	return nil
}

// Create makes a key for a robot of the caller's tenant and returns the raw
// key, which is not stored.
func (s *APIKeys) Create(ctx context.Context, idb bun.IDB, robotID uuid.UUID, name string, expiresAt *time.Time) (*CreatedAPIKey, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	if name, err = checkName("name", name); err != nil {
		return nil, err
	}
	if expiresAt != nil && !expiresAt.After(s.now()) {
		return nil, fault.Invalid("expiresAt", "expiresAt must be in the future")
	}
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, fmt.Errorf("generating a key: %w", err)
	}
	raw := auth.KeyPrefix + base64.RawURLEncoding.EncodeToString(secret[:])
	k := &APIKey{TenantID: sc.tenant, RobotID: robotID, Name: name, Prefix: raw[:len(auth.KeyPrefix)+8],
		KeyHash: hashKey(raw), CreatedBy: sc.actor, ExpiresAt: expiresAt}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		// Held (KEY SHARE) until the key is stored: a deletion of the robot
		// meanwhile would fail the insert on its foreign key.
		if err := requireRobot(ctx, tx, sc, robotID, "robotId"); err != nil {
			return err
		}
		if _, err := tx.NewInsert().Model(k).Returning("*").Exec(ctx); err != nil {
			return fmt.Errorf("storing the key: %w", err)
		}
		return s.audit(ctx, tx, k, AuditCreated, sc.actor, "", "")
	})
	if err != nil {
		return nil, err
	}
	return &CreatedAPIKey{Key: raw, APIKey: k}, nil
}

// audit writes an entry of the key audit about k (nil: an unknown key).
// The entry names the key only if it still exists, which it locks (KEY
// SHARE) for the insert: a refused key whose robot is being deleted (the
// deletion takes its keys along) is waited for, and then the entry names
// no key, as the deletion's ON DELETE SET NULL would have left it; it
// keeps the tenant and robot. Naming it regardless, the entry failed on
// its foreign key.
func (s *APIKeys) audit(ctx context.Context, idb bun.IDB, k *APIKey, event, actor, ip, detail string) error {
	var tenant, key, robot *uuid.UUID
	if k != nil {
		tenant, key, robot = &k.TenantID, &k.ID, &k.RobotID
	}
	if _, err := idb.NewRaw(`INSERT INTO api_key_audit (tenant_id, api_key_id, robot_id, event, actor, ip, detail)
		SELECT ?::uuid, (SELECT k.id FROM api_keys AS k WHERE k.id = ?::uuid FOR KEY SHARE), ?::uuid, ?, ?, ?, ?`,
		tenant, key, robot, event, nilIfEmpty(actor), nilIfEmpty(ip), nilIfEmpty(detail)).Exec(ctx); err != nil {
		return fmt.Errorf("auditing %s: %w", event, err)
	}
	return nil
}

func nilIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Revoke revokes a key at once; revoking twice is a CONFLICT.
func (s *APIKeys) Revoke(ctx context.Context, idb bun.IDB, id uuid.UUID) (*APIKey, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	k := new(APIKey)
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		err := inTenant(sc, tx.NewUpdate().Model(k).Where("k.id = ?", id), "k").
			Where("k.revoked_at IS NULL").
			Set("revoked_at = now()").Set("revoked_by = ?", sc.actor).
			Returning("*").Scan(ctx)
		if errors.Is(err, sql.ErrNoRows) {
			exists, err := inTenant(sc, tx.NewSelect().Model((*APIKey)(nil)).Where("k.id = ?", id), "k").Exists(ctx)
			if err != nil {
				return fmt.Errorf("finding the key: %w", err)
			}
			if exists {
				return fault.New(fault.Conflict, "the API key is already revoked")
			}
			return fault.Missing("API key")
		}
		if err != nil {
			return fmt.Errorf("revoking the key: %w", err)
		}
		return s.audit(ctx, tx, k, AuditRevoked, sc.actor, "", "")
	})
	if err != nil {
		return nil, err
	}
	// This replica forgets the key now, not when its own notification
	// comes back (every other replica's listener evicts it on commit).
	s.Cache.Invalidate("key:"+k.ID.String(), false)
	return k, nil
}

// List returns a robot's keys, newest first: at most MaxPageSize (the
// first page of ListPage).
func (s *APIKeys) List(ctx context.Context, idb bun.IDB, robotID uuid.UUID, includeRevoked bool) ([]*APIKey, error) {
	page, err := s.ListPage(ctx, idb, robotID, includeRevoked, PageArgs{First: new(MaxPageSize)})
	return page.Items, err
}

// ListPage returns a page of a robot's keys, newest first, so that a
// caller that needs every key (the CLI's keys list) can read past the
// first MaxPageSize.
func (s *APIKeys) ListPage(ctx context.Context, idb bun.IDB, robotID uuid.UUID, includeRevoked bool, p PageArgs) (Page[APIKey], error) {
	sc, err := userScope(ctx)
	if err != nil {
		return Page[APIKey]{}, err
	}
	q := inTenant(sc, idb.NewSelect().Model((*APIKey)(nil)).Where("k.robot_id = ?", robotID), "k")
	if !includeRevoked {
		q = q.Where("k.revoked_at IS NULL")
	}
	return newestFirst[APIKey](ctx, q, nil, "apikey", "k", p)
}

// Cursor is the key's position in ListPage's order.
func (k *APIKey) Cursor() string { return encodeTimeID("apikey", k.CreatedAt, k.ID) }

// Audit returns the tenant's newest audit entries, optionally of one robot.
func (s *APIKeys) Audit(ctx context.Context, idb bun.IDB, robotID *uuid.UUID, first *int) ([]*APIKeyAuditEntry, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	limit, err := PageLimit(first)
	if err != nil {
		return nil, err
	}
	var rows []*APIKeyAuditEntry
	q := inTenant(sc, idb.NewSelect().Model(&rows), "a").OrderExpr("a.id DESC").Apply(limitRows(limit))
	if robotID != nil {
		q = q.Where("a.robot_id = ?", *robotID)
	}
	if err := q.Scan(ctx); err != nil {
		return nil, fmt.Errorf("reading the audit log: %w", err)
	}
	return rows, nil
}

// Verify resolves a raw key presented from ip to its robot's principal.
// Unknown, revoked and expired keys are refused with UNAUTHENTICATED and
// audited (each at most once a minute per key or address). The key's last
// use is written at most once a minute, not on every request. With a Cache,
// a key verified in the last seconds is not read again (refusals are never
// cached, so they are read and audited as before). A key the cache does not
// hold is read only while its address (auth.AddressKey: an IPv6 client's
// /64) is within its key lookup limit, which each refused key is charged to
// (a key that verifies, or a read that fails, costs nothing); past the
// limit the key is refused at once with RATE_LIMITED
// (extensions.retryAfter: seconds), without a read. Neither a key that
// verified before (until a lookup refuses it) nor a connection's re-check
// of its key (auth.Recheck) is limited.
func (s *APIKeys) Verify(ctx context.Context, idb bun.IDB, raw, ip string) (*auth.Principal, error) {
	refused := fault.New(fault.Unauthenticated, "invalid API key")
	if !strings.HasPrefix(raw, auth.KeyPrefix) || len(raw) != keyLength {
		return nil, s.refuse(ctx, idb, nil, AuditUnknownKey, ip, "malformed key", refused)
	}
	hash := sha256.Sum256([]byte(raw))
	if p, ok := s.Cache.get(hash); ok {
		if err := s.recordUse(ctx, idb, p.APIKeyID, ip); err != nil {
			return nil, err
		}
		return p, nil
	}
	// A connection's re-check of the key it opened with is bounded by the
	// connections (one each 30 s), and must see a revocation whatever
	// else comes from its address; a key that verified before is in use:
	// neither is limited.
	addr, limited := auth.AddressKey(ip), !auth.IsRecheck(ctx) && !s.known.has(hash)
	if limited {
		if err := s.lookups.allow(addr); err != nil {
			return nil, err
		}
	}
	refusal := func(k *APIKey, event string, err error) error {
		s.known.remove(hash)
		s.lookups.spend(addr)
		return s.refuse(ctx, idb, k, event, ip, "", err)
	}
	ticket := s.Cache.ticket()
	k := new(APIKey)
	err := within(ctx, func() error {
		return idb.NewSelect().Model(k).
			Join("JOIN robots AS r ON r.id = k.robot_id AND r.tenant_id = k.tenant_id").
			Where("k.key_hash = ?", hash[:]).Scan(ctx)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, refusal(nil, AuditUnknownKey, refused)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up the API key: %w", err)
	}
	switch {
	case k.RevokedAt != nil:
		return nil, refusal(k, AuditUsedAfterRevoke, fault.New(fault.Unauthenticated, "this API key was revoked"))
	case k.ExpiresAt != nil && !k.ExpiresAt.After(s.now()):
		return nil, refusal(k, AuditExpired, fault.New(fault.Unauthenticated, "this API key has expired"))
	}
	s.known.add(hash)
	if err := s.recordUse(ctx, idb, k.ID, ip); err != nil {
		return nil, err
	}
	p := &auth.Principal{RobotID: k.RobotID, APIKeyID: k.ID, TenantID: k.TenantID, Role: auth.RoleRobot}
	if k.ExpiresAt != nil {
		p.ExpiresAt = *k.ExpiresAt
	}
	s.Cache.put(ticket, hash, p)
	return p, nil
}

// refuse audits a refused key (rate-limited: once a minute per key, or for
// an unknown key per address by auth.AddressKey, an IPv6 client's /64;
// the row records the full address) and returns the refusal.
func (s *APIKeys) refuse(ctx context.Context, idb bun.IDB, k *APIKey, event, ip, detail string, refusal error) error {
	subject := auth.AddressKey(ip)
	if k != nil {
		subject = k.ID.String()
	}
	if s.due(event+":"+subject, k == nil) {
		// The refusal stands whatever becomes of its record: a client
		// whose key is refused learns that, not that the audit failed.
		if err := s.audit(ctx, idb, k, event, "", ip, detail); err != nil {
			s.logger().ErrorContext(ctx, "auditing a refused API key failed", "event", event, "subject", subject, "error", err)
		}
	}
	return refusal
}

func (s *APIKeys) logger() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

// within runs read and returns its error, or ctx's as soon as ctx ends,
// even if read goes on: lib/pq cancels a statement on ctx's end only at
// best (a cancel that reaches the server before the statement is lost,
// and the statement then waits for as long as what it waits for, a locked
// table say), and a key check must end with its deadline
// (auth.DefaultKeyCheckTimeout). read must not touch what the caller uses
// once within has returned early; its connection goes back to the pool
// when it ends.
func within(ctx context.Context, read func() error) error {
	done := make(chan error, 1)
	go func() { done <- read() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("the database did not answer in time: %w", context.Cause(ctx))
	}
}
