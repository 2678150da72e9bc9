package db

import (
	"math"
	"sync"
	"time"

	"fleetgraph/fault"
)

// KeyLookupLimit bounds, per client address, the API key lookups that do
// not end in a verified key. Anyone can send well-formed random keys, and
// each costs a read of api_keys: without a bound, 64 anonymous workers
// held the whole pool. A key that verifies costs nothing against it, and a
// key the cache answers is never looked up, so never limited.
type KeyLookupLimit struct {
	// PerSecond is the rate at which an address earns lookups back.
	PerSecond float64
	// Burst is how many lookups an address may have refused in a row
	// before it must wait.
	Burst int
}

// DefaultKeyLookupLimit lets one address have 100 keys refused at once,
// then 20 a second. A robot fleet behind one NAT whose shared key was just
// revoked (or that was deployed with a typo) fits in the burst, and a
// misconfigured client retrying in a loop in the rate; a flood of random
// keys costs each process at most 20 lookups a second per address (about
// 20 ms of one pooled connection's time, where the flood took 2,150 a
// second and all 25 connections).
var DefaultKeyLookupLimit = KeyLookupLimit{PerSecond: 20, Burst: 100}

// maxLookupAddresses caps the addresses the lookup limiter remembers in
// one window: past it, addresses it does not hold share one bucket, so a
// flood from more addresses than that still costs at most one address's
// rate, rather than memory or lookups.
const maxLookupAddresses = 50_000

// keyLookups is a token bucket per address: a lookup takes a token before
// it reads the database, and a key that verifies gives it back. An address
// without a token is refused at once (RATE_LIMITED), without a read.
//
// Memory is bounded as the audit throttle's is: buckets live in the map of
// this window or of the one before, windows last as long as an empty
// bucket takes to fill, and a bucket untouched for a whole window is full,
// so forgetting it changes nothing. Each window holds at most
// maxLookupAddresses buckets.
type keyLookups struct {
	limit  KeyLookupLimit
	fill   time.Duration // an empty bucket's time to fill: the window
	now    func() time.Time
	mu     sync.Mutex
	cur    map[string]*lookupBucket
	prev   map[string]*lookupBucket
	window time.Time    // when cur began
	shared lookupBucket // addresses past maxLookupAddresses
}

// lookupBucket is one address's tokens as of at.
type lookupBucket struct {
	key    string
	tokens float64
	at     time.Time
}

func newKeyLookups(l KeyLookupLimit, now func() time.Time) *keyLookups {
	if l.PerSecond <= 0 {
		l.PerSecond = DefaultKeyLookupLimit.PerSecond
	}
	if l.Burst <= 0 {
		l.Burst = DefaultKeyLookupLimit.Burst
	}
	fill := max(time.Duration(float64(l.Burst)/l.PerSecond*float64(time.Second)), time.Second)
	return &keyLookups{limit: l, fill: fill, now: now, cur: map[string]*lookupBucket{},
		shared: lookupBucket{tokens: float64(l.Burst), at: now()}}
}

// refill brings b's tokens up to now (under mu).
func (k *keyLookups) refill(b *lookupBucket, now time.Time) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(float64(k.limit.Burst), b.tokens+d.Seconds()*k.limit.PerSecond)
		b.at = now
	}
}

// take takes a token for a lookup from addr, or refuses with
// RATE_LIMITED when addr has none. The bucket it returns is for give.
func (k *keyLookups) take(addr string) (*lookupBucket, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	if now.Sub(k.window) >= k.fill {
		k.prev, k.cur, k.window = k.cur, make(map[string]*lookupBucket, len(k.cur)), now
	}
	b, ok := k.cur[addr]
	if !ok {
		if b, ok = k.prev[addr]; ok {
			delete(k.prev, addr)
		} else {
			b = &lookupBucket{key: addr, tokens: float64(k.limit.Burst), at: now}
		}
		if len(k.cur) < maxLookupAddresses {
			k.cur[addr] = b
		} else if !ok {
			b = &k.shared
		}
	}
	k.refill(b, now)
	if b.tokens < 1 {
		wait := math.Ceil((1 - b.tokens) / k.limit.PerSecond)
		e := fault.New(fault.RateLimited,
			"too many API keys from your address were refused; try again in %.0f s", wait)
		e.Extra = map[string]any{"limit": "API_KEY_LOOKUPS", "max": k.limit.PerSecond, "retryAfter": int(wait)}
		return nil, e
	}
	b.tokens--
	return b, nil
}

// give returns the token of a lookup whose key verified; a bucket full
// again is forgotten, so the table holds only addresses in debt.
func (k *keyLookups) give(b *lookupBucket) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b.tokens = min(float64(k.limit.Burst), b.tokens+1)
	if b.tokens >= float64(k.limit.Burst) && k.cur[b.key] == b {
		delete(k.cur, b.key)
	}
}
