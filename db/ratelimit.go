package db

import (
	"math"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"fleetgraph/fault"
)

// RateLimit is a token bucket's shape: how many refusable events a key
// (an address, a robot) may have at once, and how fast it earns them back.
type RateLimit struct {
	// PerSecond is the rate at which a key earns events back.
	PerSecond float64
	// Burst is how many events a key may have in a row before it must
	// wait.
	Burst int
}

// or returns l with its zero (or negative) fields taken from d.
func (l RateLimit) or(d RateLimit) RateLimit {
	if l.PerSecond <= 0 {
		l.PerSecond = d.PerSecond
	}
	if l.Burst <= 0 {
		l.Burst = d.Burst
	}
	return l
}

// DefaultKeyLookupLimit bounds, per client address, the API key lookups
// that do not end in a verified key. Anyone can send well-formed random
// keys, and each costs a read of api_keys: without a bound, 64 anonymous
// workers held the whole pool. A key that verifies costs nothing against
// it, and a key the cache answers is never looked up, so never limited.
//
// It lets one address have 100 keys refused at once, then 20 a second. A
// robot fleet behind one NAT whose shared key was just revoked (or that
// was deployed with a typo) fits in the burst, and a misconfigured client
// retrying in a loop in the rate; a flood of random keys costs each
// process at most 20 lookups a second per address (about 20 ms of one
// pooled connection's time, where the flood took 2,150 a second and all
// 25 connections).
var DefaultKeyLookupLimit = RateLimit{PerSecond: 20, Burst: 100}

// maxBucketKeys caps the keys a tokenBuckets remembers in one window: past
// it, keys it does not hold share one bucket, so a flood from more
// addresses (or robots) than that still costs at most one key's rate,
// rather than memory or work.
const maxBucketKeys = 50_000

// tokenBuckets is a token bucket per key (a client address for key
// lookups, a robot for its status changes), charged for the events the
// limit is about: an event is allowed while its key has a token, and
// charged once it turns out to count (spend), so that the key lookups'
// limiter charges only refused keys, and a key that verifies, or a lookup
// that fails (an outage), costs nothing. Events allowed at once may run a
// key into debt, by at most as many as it has in flight; it then waits for
// the debt to refill. A key without a token is refused at once (the
// refusal error, RATE_LIMITED), before any work.
//
// Memory is bounded as the audit throttle's is: buckets live in the map of
// this window or of the one before, windows last as long as an empty
// bucket takes to fill, and a bucket untouched for a whole window is full,
// so forgetting it changes nothing. Only charged keys have buckets, at
// most maxBucketKeys in a window.
type tokenBuckets struct {
	limit RateLimit
	// refusal is the error of a key with no token; wait is in seconds.
	refusal func(wait float64) error
	fill    time.Duration // an empty bucket's time to fill: the window
	now     func() time.Time
	mu      sync.Mutex
	cur     map[string]*tokenBucket
	prev    map[string]*tokenBucket
	window  time.Time   // when cur began
	shared  tokenBucket // keys past maxBucketKeys
}

// tokenBucket is one key's tokens as of at.
type tokenBucket struct {
	tokens float64
	at     time.Time
}

// newTokenBuckets returns buckets of limit l (both fields positive) on the
// clock now, refusing with refusal(seconds to wait).
func newTokenBuckets(l RateLimit, now func() time.Time, refusal func(wait float64) error) *tokenBuckets {
	fill := max(time.Duration(float64(l.Burst)/l.PerSecond*float64(time.Second)), time.Second)
	return &tokenBuckets{limit: l, fill: fill, now: now, cur: map[string]*tokenBucket{},
		shared: tokenBucket{tokens: float64(l.Burst), at: now()}, refusal: refusal}
}

// newKeyLookups returns the key lookups' limiter: l with zero fields from
// DefaultKeyLookupLimit, refusing RATE_LIMITED API_KEY_LOOKUPS.
func newKeyLookups(l RateLimit, now func() time.Time) *tokenBuckets {
	l = l.or(DefaultKeyLookupLimit)
	return newTokenBuckets(l, now, func(wait float64) error {
		e := fault.New(fault.RateLimited, "too many API keys from your address were refused; try again in %.0f s", wait)
		e.Extra = map[string]any{"limit": "API_KEY_LOOKUPS", "max": l.PerSecond, "retryAfter": int(wait)}
		return e
	})
}

// bucket returns key's bucket brought up to now, or nil when key has
// none and create is false (under mu).
func (k *tokenBuckets) bucket(key string, create bool) *tokenBucket {
	now := k.now()
	if now.Sub(k.window) >= k.fill {
		k.prev, k.cur, k.window = k.cur, make(map[string]*tokenBucket, len(k.cur)), now
	}
	b, ok := k.cur[key]
	if !ok {
		if b, ok = k.prev[key]; ok {
			delete(k.prev, key)
			k.cur[key] = b
		} else if !create {
			if len(k.cur) < maxBucketKeys {
				return nil
			}
			b = &k.shared
		} else if len(k.cur) < maxBucketKeys {
			b = &tokenBucket{tokens: float64(k.limit.Burst), at: now}
			k.cur[key] = b
		} else {
			b = &k.shared
		}
	}
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(float64(k.limit.Burst), b.tokens+d.Seconds()*k.limit.PerSecond)
		b.at = now
	}
	return b
}

// allow refuses with the refusal error when key has no token.
func (k *tokenBuckets) allow(key string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	b := k.bucket(key, false)
	if b == nil || b.tokens >= 1 {
		return nil
	}
	return k.refusal(math.Ceil((1 - b.tokens) / k.limit.PerSecond))
}

// spend charges key one event.
func (k *tokenBuckets) spend(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.bucket(key, true).tokens--
}

// maxKnownKeys bounds the keys knownKeys remembers (32 bytes each).
const maxKnownKeys = 100_000

// knownKeys remembers the hashes of keys that verified (the newest
// maxKnownKeys), so that the lookup limit never refuses a key in use:
// behind a load balancer every client shares one address, and a client
// sending bad keys there would otherwise have every robot's key refused
// whenever the cache misses it. A key is forgotten as soon as a lookup
// refuses it (revoked, expired), so a key once valid buys no unlimited
// lookups. Only keys that verified get in: a flood cannot fill it.
type knownKeys struct {
	mu  sync.Mutex
	lru *simplelru.LRU[[32]byte, struct{}]
}

func newKnownKeys() *knownKeys {
	l, _ := simplelru.NewLRU[[32]byte, struct{}](maxKnownKeys, nil)
	return &knownKeys{lru: l}
}

func (k *knownKeys) has(h [32]byte) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lru.Contains(h)
}

func (k *knownKeys) add(h [32]byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lru.Add(h, struct{}{})
}

func (k *knownKeys) remove(h [32]byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lru.Remove(h)
}
