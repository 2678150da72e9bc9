package db

import (
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"fleetgraph/auth"
)

// KeyRevokedChannel carries the invalidations of cached API keys: the
// triggers of migration 0009 send "key:<api key id>" or "robot:<robot id>"
// in the transaction that revokes, deletes or changes a key or its robot.
const KeyRevokedChannel = "fleetgraph_key_revoked"

// KeyCacheGuard says whether notifications on KeyRevokedChannel are being
// delivered, as realtime.Listener.Trusted does: epoch changes whenever
// delivery stops or resumes, so what was cached under one epoch is not
// trusted under the next.
type KeyCacheGuard interface {
	Trusted() (epoch uint64, ok bool)
}

// DefaultKeyCacheTTL is how long a verified key is trusted without reading
// it again (API_KEY_CACHE_TTL).
const DefaultKeyCacheTTL = 5 * time.Second

// keyCacheSize bounds the cache; a full cache is emptied of expired
// entries, then, if still full, entirely.
const keyCacheSize = 10_000

// KeyCache holds API keys verified in the last TTL, by key hash, so that a
// robot's requests do not each read its key. It is only trusted while its
// guard reports delivery of KeyRevokedChannel, and only under the epoch it
// was filled in: with the listener down every lookup reads the database,
// and after a reconnect (notifications may have been missed) nothing from
// before is used. An entry lives at most TTL and never past its key's
// expiry. Invalidate is called by the listener for each notification.
type KeyCache struct {
	ttl   time.Duration
	guard KeyCacheGuard
	now   func() time.Time

	mu sync.Mutex
	// gen counts invalidations: a lookup whose read started before one
	// does not store what it read.
	gen     uint64
	entries map[[32]byte]keyCacheEntry
	// invalidated is closed (and replaced) at every Invalidate.
	invalidated chan struct{}
}

type keyCacheEntry struct {
	p     auth.Principal
	until time.Time
	epoch uint64
}

// NewKeyCache returns a cache trusting entries for ttl while guard reports
// delivery (ttl 0: no cache; a nil *KeyCache is a disabled cache too).
func NewKeyCache(ttl time.Duration, guard KeyCacheGuard, now func() time.Time) *KeyCache {
	if ttl <= 0 || guard == nil {
		return nil
	}
	if now == nil {
		now = time.Now
	}
	return &KeyCache{ttl: ttl, guard: guard, now: now, entries: map[[32]byte]keyCacheEntry{}, invalidated: make(chan struct{})}
}

// get returns the cached principal of hash, if trusted now.
func (c *KeyCache) get(hash [32]byte) (*auth.Principal, bool) {
	if c == nil {
		return nil, false
	}
	epoch, ok := c.guard.Trusted()
	if !ok {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, found := c.entries[hash]
	if !found {
		return nil, false
	}
	if e.epoch != epoch || !c.now().Before(e.until) {
		delete(c.entries, hash)
		return nil, false
	}
	p := e.p
	return &p, true
}

// ticket is taken before a lookup reads the database and is given back to
// put: what was read is stored only if no invalidation arrived and the
// guard's epoch did not change meanwhile.
type keyCacheTicket struct {
	gen, epoch uint64
	ok         bool
}

func (c *KeyCache) ticket() keyCacheTicket {
	if c == nil {
		return keyCacheTicket{}
	}
	epoch, ok := c.guard.Trusted()
	c.mu.Lock()
	defer c.mu.Unlock()
	return keyCacheTicket{gen: c.gen, epoch: epoch, ok: ok}
}

func (c *KeyCache) put(t keyCacheTicket, hash [32]byte, p *auth.Principal) {
	if c == nil || !t.ok {
		return
	}
	if epoch, ok := c.guard.Trusted(); !ok || epoch != t.epoch {
		return
	}
	now := c.now()
	until := now.Add(c.ttl)
	if !p.ExpiresAt.IsZero() && p.ExpiresAt.Before(until) {
		until = p.ExpiresAt
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != t.gen {
		return
	}
	if len(c.entries) >= keyCacheSize {
		for h, e := range c.entries {
			if !now.Before(e.until) {
				delete(c.entries, h)
			}
		}
		if len(c.entries) >= keyCacheSize {
			clear(c.entries)
		}
	}
	c.entries[hash] = keyCacheEntry{p: *p, until: until, epoch: t.epoch}
}

// Invalidate handles one notification of KeyRevokedChannel ("key:<id>" or
// "robot:<id>") by evicting the entries it names; anything else, the
// listener's reconnect marker included (reconnected true), empties the
// cache.
func (c *KeyCache) Invalidate(payload string, reconnected bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	close(c.invalidated)
	c.invalidated = make(chan struct{})
	kind, idText, _ := strings.Cut(payload, ":")
	id, err := uuid.Parse(idText)
	if reconnected || err != nil || (kind != "key" && kind != "robot") {
		clear(c.entries)
		return
	}
	for h, e := range c.entries {
		if (kind == "key" && e.p.APIKeyID == id) || (kind == "robot" && e.p.RobotID == id) {
			delete(c.entries, h)
		}
	}
}

// Len is the number of entries held, trusted or not.
func (c *KeyCache) Len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Invalidated returns a channel closed at the next Invalidate, so tests
// wait for a revocation to arrive instead of sleeping.
func (c *KeyCache) Invalidated() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.invalidated
}
