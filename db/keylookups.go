package db

import (
	"math"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

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

// keyLookups is a token bucket per address, charged for the lookups whose
// key was refused (unknown, revoked, expired): a lookup is allowed while
// its address has a token, and charged once its key is refused, so a key
// that verifies, or a lookup that fails (an outage), costs nothing, and
// valid keys in flight never use up their address's tokens. Lookups
// allowed at once may run an address into debt, by at most as many as it
// has in flight; it then waits for the debt to refill. An address without
// a token is refused at once (RATE_LIMITED), without a read.
//
// Memory is bounded as the audit throttle's is: buckets live in the map of
// this window or of the one before, windows last as long as an empty
// bucket takes to fill, and a bucket untouched for a whole window is full,
// so forgetting it changes nothing. Only charged addresses have buckets,
// at most maxLookupAddresses in a window.
type keyLookups struct {
	limit KeyLookupLimit
	// refusal is the error of a key with no token; wait is in seconds.
	refusal func(wait float64) error
	fill    time.Duration // an empty bucket's time to fill: the window
	now     func() time.Time
	mu      sync.Mutex
	cur     map[string]*lookupBucket
	prev    map[string]*lookupBucket
	window  time.Time    // when cur began
	shared  lookupBucket // addresses past maxLookupAddresses
}

// lookupBucket is one address's tokens as of at.
type lookupBucket struct {
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
		shared: lookupBucket{tokens: float64(l.Burst), at: now()},
		refusal: func(wait float64) error {
			e := fault.New(fault.RateLimited, "too many API keys from your address were refused; try again in %.0f s", wait)
			e.Extra = map[string]any{"limit": "API_KEY_LOOKUPS", "max": l.PerSecond, "retryAfter": int(wait)}
			return e
		}}
}

// bucket returns addr's bucket brought up to now, or nil when addr has
// none and create is false (under mu).
func (k *keyLookups) bucket(addr string, create bool) *lookupBucket {
	now := k.now()
	if now.Sub(k.window) >= k.fill {
		k.prev, k.cur, k.window = k.cur, make(map[string]*lookupBucket, len(k.cur)), now
	}
	b, ok := k.cur[addr]
	if !ok {
		if b, ok = k.prev[addr]; ok {
			delete(k.prev, addr)
			k.cur[addr] = b
		} else if !create {
			if len(k.cur) < maxLookupAddresses {
				return nil
			}
			b = &k.shared
		} else if len(k.cur) < maxLookupAddresses {
			b = &lookupBucket{tokens: float64(k.limit.Burst), at: now}
			k.cur[addr] = b
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

// allow refuses with RATE_LIMITED when addr has no token for a lookup.
func (k *keyLookups) allow(addr string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	b := k.bucket(addr, false)
	if b == nil || b.tokens >= 1 {
		return nil
	}
	return k.refusal(math.Ceil((1 - b.tokens) / k.limit.PerSecond))
}

// spend charges addr one lookup whose key was refused.
func (k *keyLookups) spend(addr string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.bucket(addr, true).tokens--
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
