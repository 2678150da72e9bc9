package live

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"fleetgraph/auth"
	"fleetgraph/fault"
	"fleetgraph/metrics"
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
	// SocketsPerCaller caps the websockets one caller holds open at once on
	// this process: by its credential once it has one (from the upgrade
	// request or connection_init), by its address when connection_init
	// named none. An idle socket costs a file descriptor and some 15 KiB,
	// and without it one client could hold them until the process ran out
	// of files. Sockets waiting for their connection_init (each at most
	// the init timeout) count by address too, up to PendingPerAddress
	// times as many: behind a load balancer every browser's upgrade comes
	// from the balancer's address.
	SocketsPerCaller int
	// Sockets caps the websockets and SSE and multipart streams this
	// process holds open at once, all callers together (0: half the
	// process's open-file limit), so that HTTP requests, health checks and
	// the database always have files.
	Sockets int
	// AnonymousLifetime is how long a websocket whose connection_init
	// named no credential stays open (0: a minute). No subscription
	// serves an anonymous caller, so such a socket is useful for little
	// more than its first answers; without an end, a few addresses could
	// hold open every socket the process allows, at no cost.
	AnonymousLifetime time.Duration
}

// PendingPerAddress is how many times SocketsPerCaller one address may
// hold sockets waiting for their connection_init: one client cannot fill
// the process's Sockets with them, and a balancer's address has room for
// that many browsers' handshakes at once.
const PendingPerAddress = 4

// pendingKey is the quota key of an address's sockets waiting for
// their connection_init (by auth.AddressKey: an IPv6 client's /64).
func pendingKey(ip string) string { return "pending@" + auth.AddressKey(ip) }

// DefaultLimits fit any dashboard or robot with room to spare.
var DefaultLimits = Limits{PerConnection: 100, PerPrincipal: 500, SocketsPerCaller: 500, AnonymousLifetime: time.Minute}

// Quota counts each caller's subscriptions and SSE and multipart streams
// in this process against Limits.PerPrincipal. The websocket, SSE and
// multipart transports of one handler share one Quota. A nil *Quota limits
// nothing.
type Quota struct {
	limits Limits

	mu   sync.Mutex
	held map[string]int
	// sockets counts each caller's open websockets, open all of them.
	sockets map[string]int
	open    int
	// waiting counts the bytes of each caller's results rendered and not
	// yet written (Hold).
	waiting map[string]int
	// rooms holds, per caller key, the channel AwaitRoom's waiters of that
	// caller's sockets wait on: closed (and forgotten) when bytes of that
	// caller are given back. Room depends only on the socket's and its
	// caller's counts, so no other caller's release wakes them.
	rooms map[string]*roomWaiters
}

// roomWaiters is the wake-up channel of one caller's waiters, and how many
// wait on it.
type roomWaiters struct {
	ch chan struct{}
	n  int
}

// NewQuota returns a quota enforcing l; zero fields take DefaultLimits'
// (Sockets: half the open-file limit).
func NewQuota(l Limits) *Quota {
	if l.PerConnection <= 0 {
		l.PerConnection = DefaultLimits.PerConnection
	}
	if l.PerPrincipal <= 0 {
		l.PerPrincipal = DefaultLimits.PerPrincipal
	}
	if l.SocketsPerCaller <= 0 {
		l.SocketsPerCaller = DefaultLimits.SocketsPerCaller
	}
	if l.Sockets <= 0 {
		l.Sockets = DefaultSockets()
	}
	if l.AnonymousLifetime <= 0 {
		l.AnonymousLifetime = DefaultLimits.AnonymousLifetime
	}
	return &Quota{limits: l, held: map[string]int{}, sockets: map[string]int{}, waiting: map[string]int{}, rooms: map[string]*roomWaiters{}}
}

// DefaultSockets is Limits.Sockets' default: half the process's limit on
// open files (which Go raises to the hard limit at start), at least 100.
func DefaultSockets() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 1 << 20
	}
	return max(int(rl.Cur/2), 100)
}

// SocketPlace is one open websocket's place in the quota: in the count of
// the process's sockets and of its caller's. A nil place limits nothing.
type SocketPlace struct {
	q      *Quota
	key    string
	closed bool
	// waiting is the bytes of the socket's results held (Hold).
	waiting int
}

// SocketResultBytes is how many bytes of results may wait for a
// websocket's writer before the socket's operations wait for room, and
// CallerResultBytes how many of all a caller's sockets' together. Each
// operation of a socket renders its result and then waits for the writer:
// a client that stopped reading held one result of each, up to 100
// subscriptions' and 100 queries' results of 16 MiB for one socket, until
// the write timeout, and a caller's 500 sockets as many.
//
// The bound is back-pressure, not a refusal: an operation of a socket
// past a bound takes no turn (no query runs, no subscription renders its
// next result) until the writer has taken enough (AwaitRoom). Refusing
// ended the subscriptions of a client that read as fast as loopback
// allows, whose 30 subscriptions of 3 MB results rendered faster than one
// socket writes. Besides what waits, a socket holds the results rendering
// in its caller's turns and the one it is writing (until its write
// timeout, for a client that stopped reading). Shared groups' results
// count too (their members' queues); a member whose results would take its
// socket past twice the bounds ends SLOW_CONSUMER, since its group renders
// for every member and cannot wait for one.
const (
	SocketResultBytes = 8 << 20
	CallerResultBytes = 64 << 20
)

// placeKey holds the SocketPlace of the websocket an operation runs on.
type placeKey struct{}

// WithPlace gives the operations of ctx the socket's place to wait for
// room in (AwaitRoom). The websocket transport gives it to each operation
// of a socket.
func WithPlace(ctx context.Context, p *SocketPlace) context.Context {
	return context.WithValue(ctx, placeKey{}, p)
}

// AwaitRoom waits until the websocket the operation of ctx runs on (none:
// at once) has room for another result: less than SocketResultBytes of
// its results, and less than CallerResultBytes of its caller's sockets',
// wait for their writers. It reports false if ctx ended first. A turn is
// taken only with room (graph's turns), so a socket whose client reads
// slowly or not at all runs nothing more until its results are written.
func AwaitRoom(ctx context.Context) bool {
	p, _ := ctx.Value(placeKey{}).(*SocketPlace)
	if p == nil {
		return true
	}
	q := p.q
	for counted := false; ; counted = true {
		q.mu.Lock()
		if p.roomFor(0, 1) {
			q.mu.Unlock()
			return true
		}
		key := p.key
		w := q.rooms[key]
		if w == nil {
			w = &roomWaiters{ch: make(chan struct{})}
			q.rooms[key] = w
		}
		w.n++
		q.mu.Unlock()
		if !counted {
			defer metrics.RequestOf(ctx).Metrics().WaitingForClient()()
		}
		var ended bool
		select {
		case <-w.ch:
		case <-ctx.Done():
			ended = true
		}
		q.mu.Lock()
		if w.n--; w.n == 0 && q.rooms[key] == w {
			delete(q.rooms, key)
		}
		q.mu.Unlock()
		if ended {
			return false
		}
	}
}

// HasRoom reports whether AwaitRoom would return at once.
func HasRoom(ctx context.Context) bool {
	p, _ := ctx.Value(placeKey{}).(*SocketPlace)
	if p == nil {
		return true
	}
	p.q.mu.Lock()
	defer p.q.mu.Unlock()
	return p.roomFor(0, 1)
}

// roomFor reports whether n more bytes keep the socket below times its
// bound and its caller below times theirs (under q.mu).
func (p *SocketPlace) roomFor(n, times int) bool {
	return p.waiting+n < times*SocketResultBytes && p.q.waiting[p.key]+n < times*CallerResultBytes
}

// Hold counts n bytes of a result waiting for the socket's writer; Release
// gives them back once the writer took them. A nil place counts nothing.
func (p *SocketPlace) Hold(n int) {
	if p == nil {
		return
	}
	p.q.mu.Lock()
	defer p.q.mu.Unlock()
	p.add(n)
}

// holdShared is Hold for a shared group's member, which is refused (false)
// past twice the bounds: unless n is not more (a result that replaces a
// larger one), or the socket holds nothing and its caller is within twice
// its bound (one result, however large, goes out alone).
func (p *SocketPlace) holdShared(n int) bool {
	if p == nil {
		return true
	}
	p.q.mu.Lock()
	defer p.q.mu.Unlock()
	alone := p.waiting == 0 && p.q.waiting[p.key] < 2*CallerResultBytes
	if n > 0 && !alone && !p.roomFor(n-1, 2) {
		return false
	}
	p.add(n)
	return true
}

// Release gives back n bytes Hold counted.
func (p *SocketPlace) Release(n int) {
	if p == nil {
		return
	}
	p.q.mu.Lock()
	defer p.q.mu.Unlock()
	p.add(-n)
}

// add counts n bytes (less when negative) for the socket and its caller,
// waking AwaitRoom's waiters when bytes go (under q.mu).
func (p *SocketPlace) add(n int) {
	q := p.q
	p.waiting += n
	if !p.closed { // a closed socket's bytes left its caller's count
		if q.waiting[p.key] += n; q.waiting[p.key] <= 0 {
			delete(q.waiting, p.key)
		}
	}
	if n < 0 {
		q.wake(p.key)
	}
}

// OpenSocket takes a place for a websocket of the caller key (callerKey of
// the upgrade's credential, or pendingKey of its address until Move), or
// refuses with RATE_LIMITED: the caller holds SocketsPerCaller already
// (PendingPerAddress times that for a pending key; perCaller true), or
// the process holds Sockets. A nil quota returns a nil place.
func (q *Quota) OpenSocket(key string) (place *SocketPlace, perCaller bool, err error) {
	if q == nil {
		return nil, false, nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.open >= q.limits.Sockets {
		return nil, false, q.full()
	}
	if err := q.socketRoom(key); err != nil {
		return nil, true, err
	}
	q.open++
	q.sockets[key]++
	return &SocketPlace{q: q, key: key}, false, nil
}

// OpenStream takes a place for an SSE or multipart stream in the count of
// the process's live connections (Limits.Sockets, which websockets
// share), or refuses with RATE_LIMITED when the process holds Sockets: a
// stream holds a connection and two goroutines for as long as it lasts,
// and PerPrincipal streams from each of a few callers could otherwise
// take every file the process has. release gives the place back; it may
// be called more than once.
func (q *Quota) OpenStream() (release func(), err error) {
	if q == nil {
		return func() {}, nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.open >= q.limits.Sockets {
		return nil, q.full()
	}
	q.open++
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			defer q.mu.Unlock()
			q.open--
		})
	}, nil
}

// full is the refusal of a websocket or stream past Limits.Sockets.
func (q *Quota) full() error {
	return limitError("MAX_WEBSOCKETS", q.limits.Sockets,
		"this server holds as many websockets and streams as it may (MAX_WEBSOCKETS); try again shortly")
}

// socketRoom refuses when key holds as many sockets as it may (under q.mu).
func (q *Quota) socketRoom(key string) error {
	limit := q.limits.SocketsPerCaller
	if strings.HasPrefix(key, "pending@") {
		limit *= PendingPerAddress
	}
	if q.sockets[key] >= limit {
		return limitError("MAX_WEBSOCKETS_PER_CALLER", limit,
			"you already hold %d websockets on this server, the most one caller may (MAX_WEBSOCKETS_PER_CALLER); close one, or share one socket between subscriptions",
			limit)
	}
	return nil
}

// Move counts the socket as the caller key's from now on (when its
// connection_init named a credential), or refuses, keeping it where it
// was, when that caller holds SocketsPerCaller sockets.
func (p *SocketPlace) Move(key string) error {
	if p == nil {
		return nil
	}
	q := p.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if p.closed || key == p.key {
		return nil
	}
	if err := q.socketRoom(key); err != nil {
		return err
	}
	uncount(q.sockets, p.key)
	q.sockets[key]++
	if p.waiting > 0 { // results held under the old key move with it
		if q.waiting[p.key] -= p.waiting; q.waiting[p.key] <= 0 {
			delete(q.waiting, p.key)
		}
		q.waiting[key] += p.waiting
		q.wake(p.key) // the old key's sockets may have room now
	}
	p.key = key
	return nil
}

// Close gives the place back; it may be called more than once.
func (p *SocketPlace) Close() {
	if p == nil {
		return
	}
	q := p.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	q.open--
	uncount(q.sockets, p.key)
	// What its operations still hold goes as they end; its caller's
	// other sockets need not wait for that.
	if p.waiting > 0 {
		if q.waiting[p.key] -= p.waiting; q.waiting[p.key] <= 0 {
			delete(q.waiting, p.key)
		}
		q.wake(p.key)
	}
}

// wake has AwaitRoom's waiters on key's sockets, if any, look again
// (under q.mu).
func (q *Quota) wake(key string) {
	if w := q.rooms[key]; w != nil {
		close(w.ch)
		delete(q.rooms, key)
	}
}

// uncount takes one from key's count in m (a Quota's held or sockets,
// under its mu), forgetting the key at zero so that m holds only keys in
// use.
func uncount(m map[string]int, key string) {
	if m[key]--; m[key] <= 0 {
		delete(m, key)
	}
}

// perConnection is the per-websocket cap (DefaultLimits' for a nil quota).
func (q *Quota) anonymousLifetime() time.Duration {
	if q == nil {
		return DefaultLimits.AnonymousLifetime
	}
	return q.limits.AnonymousLifetime
}

func (q *Quota) perConnection() int {
	if q == nil {
		return DefaultLimits.PerConnection
	}
	return q.limits.PerConnection
}

// callerKey names whose budget an operation of ctx draws on: its
// principal's, else its address's (by auth.AddressKey: an IPv6 client's
// /64).
func callerKey(p *auth.Principal, ip string) string {
	if p == nil {
		return "anonymous@" + auth.AddressKey(ip)
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
			uncount(q.held, key)
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
