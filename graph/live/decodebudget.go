package live

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"fleetgraph/fault"
)

// MaxDocumentElements bounds the JSON elements (objects, arrays and the
// elements between their commas) of one request body or websocket message.
// A body's size alone bounds its bytes, not what decoding it costs: 1 MiB
// of `[{},{},...]` decoded into 47 MB of Go values (21 MB live), where a
// flat 1 MiB string costs its bytes. No request of this API needs as many
// (a thousand jobs with a hundred numbers each in their input are
// 100,000).
const MaxDocumentElements = 200_000

// elementBytes is about what one element costs once decoded into Go
// values (a map or slice header, an interface, an entry).
const elementBytes = 128

// freeDocumentBytes is the weight under which a document takes nothing
// from the budget: its decoded values are no more than a small request's,
// and the hot path (a robot's 300-byte mutation) costs no lock.
const freeDocumentBytes = 64 << 10

// DefaultDecodeBudget is the memory the documents being decoded and run
// may take at once, by their weight (bytes plus elementBytes per
// element): 256 MiB is about 18 of the largest at once.
const DefaultDecodeBudget = 256 << 20

// decodeWait bounds the wait for the budget; past it the document is
// refused as the server being busy.
const decodeWait = 10 * time.Second

// JSONElements counts the elements of a JSON text, about the values it
// decodes into: its objects and arrays, and the commas between their
// members, outside strings. It does not validate the text (the callers
// have, or will refuse it).
func JSONElements(doc []byte) int {
	n, inString, escaped := 0, false, false
	for _, c := range doc {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[' || c == ',':
			n++
		}
	}
	return n
}

// DecodeBudget bounds the memory that request bodies and websocket
// messages take once decoded, while they are decoded and run: each takes
// its weight (bytes plus elementBytes per element) from one budget of the
// process, waiting at most decodeWait for it, and one address holds at
// most a quarter of it (more is refused at once, RATE_LIMITED). Before,
// nothing bounded how many large bodies were decoded at once: 100
// anonymous 1 MiB bodies held 3.4 GB.
type DecodeBudget struct {
	sem     *semaphore.Weighted
	perAddr int64
	mu      sync.Mutex
	held    map[string]int64
}

// NewDecodeBudget returns a budget of total bytes (≤ 0: DefaultDecodeBudget).
func NewDecodeBudget(total int64) *DecodeBudget {
	if total <= 0 {
		total = DefaultDecodeBudget
	}
	return &DecodeBudget{sem: semaphore.NewWeighted(total), perAddr: total / 4, held: map[string]int64{}}
}

// Take checks doc's elements (BAD_USER_INPUT past MaxDocumentElements)
// and reserves its weight for the address addr names (an auth.AddressKey,
// worked out only for a document that weighs enough to take a share). The caller calls
// release, which may be called again, once the document is decoded and
// its operation started; it is nil when nothing was reserved (a small
// document, a nil budget, which only checks the elements).
func (b *DecodeBudget) Take(ctx context.Context, addrOf func() string, doc []byte) (release func(), err error) {
	n := JSONElements(doc)
	if n > MaxDocumentElements {
		e := fault.New(fault.BadUserInput, "the document has over %d JSON elements (objects, arrays and their members); send fewer", MaxDocumentElements)
		e.Extra = map[string]any{"reason": "TOO_MANY_JSON_ELEMENTS", "max": MaxDocumentElements}
		return nil, e
	}
	weight := int64(len(doc)) + int64(n)*elementBytes
	if b == nil || weight < freeDocumentBytes {
		return nil, nil
	}
	addr := addrOf()
	b.mu.Lock()
	if b.held[addr]+weight > b.perAddr {
		b.mu.Unlock()
		e := fault.New(fault.RateLimited, "too many large requests from your address at once; send this one again when they are answered")
		e.Extra = map[string]any{"limit": "LARGE_REQUESTS", "retryAfter": 1}
		return nil, e
	}
	b.held[addr] += weight
	b.mu.Unlock()
	wait, cancel := context.WithTimeout(ctx, decodeWait)
	defer cancel()
	if err := b.sem.Acquire(wait, weight); err != nil {
		b.forget(addr, weight)
		e := fault.New(fault.RateLimited, "the server is decoding too many large requests; send this one again shortly")
		e.Extra = map[string]any{"limit": "DECODE_BUDGET", "retryAfter": 1}
		return nil, e
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			b.sem.Release(weight)
			b.forget(addr, weight)
		})
	}, nil
}

func (b *DecodeBudget) forget(addr string, weight int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held[addr] -= weight; b.held[addr] <= 0 {
		delete(b.held, addr)
	}
}

type decodeReleaseKey struct{}

// WithDecodeRelease gives the request of ctx the release of its decode
// budget (DecodeBudget.Take), for DecodeDone.
func WithDecodeRelease(ctx context.Context, release func()) context.Context {
	return context.WithValue(ctx, decodeReleaseKey{}, release)
}

// DecodeDone gives back the decode budget the request of ctx took, if
// any: a streaming transport calls it once its request has become a
// stream (decoded, its operation started), so that streams, which live
// for hours, do not hold the budget that bounds decoding.
func DecodeDone(ctx context.Context) {
	if release, ok := ctx.Value(decodeReleaseKey{}).(func()); ok {
		release()
	}
}
