package realtime

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/lib/pq"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/metrics"
)

// ChangeChannel is the NOTIFY channel of the change feed (migration 0003).
const ChangeChannel = "fleetgraph_change"

// Kinds of change on the feed.
const (
	KindMachine      = "machine"
	KindMachineEvent = "machine_event"
	KindRobot        = "robot"
	KindJob          = "job"
	// KindLog is a batch of log lines shipped by one robot: one
	// notification per batch (db.insertLinesSQL), keyed by the batch's
	// robot, id range and time range.
	KindLog = "log"
)

// Change is one change-feed notification: routing fields only, never the row.
type Change struct {
	Kind       string     `json:"k"`
	Op         string     `json:"op"` // INSERT, UPDATE or DELETE
	Tenant     uuid.UUID  `json:"t"`
	ID         string     `json:"id"`
	Version    int64      `json:"v"`
	Owner      *uuid.UUID `json:"o"`  // machines and their events
	Machine    *uuid.UUID `json:"m"`  // machine events
	Status     string     `json:"s"`  // robots and jobs
	PrevStatus string     `json:"ps"` // robots, on UPDATE
	Robot      *uuid.UUID `json:"r"`  // jobs, log batches
	Workflow   *uuid.UUID `json:"w"`  // jobs
	Count      int        `json:"n"`  // log batches: lines
	Level      int        `json:"lv"` // log batches: the highest severity
}

// loadKind is the kind of row a topic's updates carry: presence is fed by
// robot rows.
func loadKind(kind string) string {
	if kind == KindPresence {
		return KindRobot
	}
	return kind
}

// visible is the one check every update passes before a subscriber gets
// it: the row as loaded (not the notification's routing fields, which may
// be older) against the subscriber's Principal, by the rules the query
// path's scope applies (db.CanSeeRow). A deletion carries no row; its
// routing fields were checked by the subscriber's filter, or the subscriber
// already had the row. An unknown kind is visible to no one.
func visible(p *auth.Principal, kind string, u Update) bool {
	if u.Op == "DELETED" {
		return u.Value == nil
	}
	return db.CanSeeRow(p, kind, u.Value)
}

// Update is what a subscriber receives: an entity's current row, or its deletion.
type Update struct {
	Kind    string
	Op      string // CREATED, UPDATED, DELETED or CURRENT (resync and first state)
	Key     string
	Version int64
	// Value is the row as the scoped stores read it (e.g. *db.Machine); nil when deleted.
	Value any
	// Change is the notification that caused the update (zero for resyncs).
	Change Change
}

// Source reads rows for the hub, through the same scoped stores the queries use.
type Source interface {
	// Load returns the current rows of kind with these keys in tenant, keyed
	// by key, each with its version. Missing keys are gone; a key with a
	// nil Value exists but was not read (a log batch past db.MaxTailLines).
	Load(ctx context.Context, kind string, tenant uuid.UUID, keys []string) (map[string]Versioned, error)
	// ChangedSince returns the rows of kind in tenant changed at or after
	// since; rows of append-only kinds carry the transaction that wrote them.
	ChangedSince(ctx context.Context, kind string, tenant uuid.UUID, since time.Time) ([]Versioned, error)
	// Snapshot returns which transactions have committed now
	// (pg_current_snapshot), for SubscribeAppend.
	Snapshot(ctx context.Context) (db.Snapshot, error)
}

// Versioned is a row with its key and version.
type Versioned struct {
	Key     string
	Version int64
	Value   any
	// Xact is the top-level transaction that wrote an append-only row
	// (machine events, log batches; 0 for other kinds), which a resync
	// compares with each append-only subscriber's SubscribeOptions.Committed.
	Xact uint64
}

// Errors that end a subscription.
var (
	// ErrTooSlow ends a subscriber that lets too many updates pile up.
	ErrTooSlow = errors.New("the subscriber is not reading fast enough; updates were piling up, so the subscription was closed: resubscribe and re-query")
	// ErrResyncFailed ends subscribers whose updates could not be read: a
	// resync that failed, or a batch's rows that failed to load twice.
	ErrResyncFailed = errors.New("updates were lost and could not be re-read; resubscribe and re-query")
)

// Hub routes change-feed notifications to subscribers. One hub per process
// reads the process's Listener; every process fans out the same feed, so any
// number of replicas serve subscribers.
type Hub struct {
	// Metrics counts subscribers, deliveries, coalesced updates and slow
	// consumers (nil: off). Set it before Run and Subscribe.
	Metrics *metrics.Metrics

	source Source
	feed   *Subscription
	log    *slog.Logger
	// QueueLimit bounds each subscriber's undelivered updates.
	queueLimit int
	// resyncSlack widens a resync's window to cover transactions that
	// committed after they stamped updated_at.
	resyncSlack time.Duration

	mu     sync.RWMutex
	topics map[topic]map[*Sub]struct{}

	// lastFeed is when the newest notification the hub has taken was
	// received: the feed was healthy then, so what a later loss cost is
	// what changed after it (hub goroutine only).
	lastFeed time.Time
}

type topic struct {
	kind   string
	tenant uuid.UUID
}

// NewHub returns a hub reading the change feed from l.
func NewHub(l *Listener, source Source, log *slog.Logger) *Hub {
	return newHub(l.Subscribe(ChangeChannel, 65536), source, log)
}

func newHub(feed *Subscription, source Source, log *slog.Logger) *Hub {
	return &Hub{
		source:      source,
		feed:        feed,
		log:         log,
		queueLimit:  1000,
		resyncSlack: time.Minute,
		topics:      map[topic]map[*Sub]struct{}{},
		lastFeed:    time.Now(),
	}
}

// Run routes notifications until ctx ends. Notifications are taken in
// batches: each batch costs one read per kind and tenant, shared by all the
// batch's subscribers.
func (h *Hub) Run(ctx context.Context) {
	defer h.feed.Close()
	for {
		var first Notification
		select {
		case <-ctx.Done():
			h.closeAll(ctx.Err())
			return
		case first = <-h.feed.C:
		}
		batch := []Notification{first}
	drain:
		for len(batch) < 1000 {
			select {
			case n := <-h.feed.C:
				batch = append(batch, n)
			default:
				break drain
			}
		}
		h.process(ctx, batch)
	}
}

// process handles one batch. The window a resync re-reads starts at the
// receipt of the newest notification taken before the batch, not at the
// end of an earlier batch's processing: a slow resync or load, or a
// backlog in the feed's buffer, must not move it past notifications that
// were lost meanwhile.
func (h *Hub) process(ctx context.Context, batch []Notification) {
	since := h.lastFeed.Add(-h.resyncSlack)
	h.lastFeed = batch[len(batch)-1].At
	resync := h.feed.TakeOverflow()
	var changes []Change
	for _, n := range batch {
		if n.Reconnected {
			resync = true
			continue
		}
		var c Change
		if err := json.Unmarshal([]byte(n.Payload), &c); err != nil {
			h.log.Error("undecodable change notification", "payload", n.Payload, "error", err)
			continue
		}
		changes = append(changes, c)
	}
	if resync {
		h.resync(ctx, since)
	}
	h.deliver(ctx, changes)
}

// deliver loads what the changes' subscribers need, once per (kind, tenant),
// and offers each subscriber its updates.
func (h *Hub) deliver(ctx context.Context, changes []Change) {
	type wanted struct {
		change Change
		subs   []*Sub
	}
	// Topics are offered in the order of their first change in the batch,
	// not a map's: a robot's log lines shipped before its deletion reach
	// a tail before the deletion that ends it (deletionOf) does.
	byTopic := map[topic][]wanted{}
	var order []topic
	for _, c := range changes {
		for _, k := range topicsOf(c) {
			subs := h.matching(k, c)
			if len(subs) > 0 {
				if _, ok := byTopic[k]; !ok {
					order = append(order, k)
				}
				byTopic[k] = append(byTopic[k], wanted{c, subs})
			}
		}
	}
	for _, k := range order {
		ws := byTopic[k]
		loadKind := loadKind(k.kind)
		var keys []string
		// Log batches are read up to db.MaxTailLines lines a topic, in
		// the batch's order: one statement of bounded size, however many
		// batches a tenant's robots shipped. The lines of the batches
		// past it are not read; their tails are told they missed them.
		unread := map[string]bool{}
		budget := db.MaxTailLines
		for _, w := range ws {
			switch {
			case w.change.Op == "DELETE":
			case k.kind == KindLog && (len(unread) > 0 || w.change.Count > budget):
				unread[w.change.ID] = true
			default:
				budget -= w.change.Count
				keys = append(keys, w.change.ID)
			}
		}
		rows := map[string]Versioned{}
		if len(keys) > 0 {
			var err error
			if rows, err = h.load(ctx, loadKind, k.tenant, keys); err != nil {
				if ctx.Err() != nil {
					return // shutting down: Run ends every subscriber
				}
				// The updates are lost, as in a failed resync: end their
				// subscribers, who resubscribe and re-query, rather than
				// leave them silently behind.
				h.log.Error("loading changed rows; ending their subscribers", "kind", loadKind, "error", err)
				for _, w := range ws {
					for _, s := range w.subs {
						s.end(ErrResyncFailed)
					}
				}
				continue
			}
		}
		for _, w := range ws {
			u := Update{Kind: k.kind, Key: w.change.ID, Version: w.change.Version, Change: w.change, Op: opName(w.change.Op)}
			if w.change.Op != "DELETE" {
				row, ok := rows[w.change.ID]
				if unread[w.change.ID] || ok && row.Value == nil {
					for _, s := range w.subs {
						s.skip(u)
					}
					continue
				}
				if !ok {
					continue // deleted since; its DELETE notification follows
				}
				u.Value, u.Version = row.Value, row.Version
			}
			for _, s := range w.subs {
				s.offer(u)
			}
		}
	}
}

// load reads a batch's changed rows, again while that fails (retrying): a
// reset connection or a pool timeout is often gone at the next attempt.
func (h *Hub) load(ctx context.Context, kind string, tenant uuid.UUID, keys []string) (rows map[string]Versioned, err error) {
	err = h.retrying(ctx, "loading changed rows", kind, func() error {
		rows, err = h.source.Load(ctx, kind, tenant, keys)
		return err
	})
	return rows, err
}

// staleConnections is how many attempts a read of the hub's may make while
// each fails on its connection: after PostgreSQL restarts, every idle
// connection of the pool (db.Open keeps up to 25) fails the first
// statement sent on it, and is then discarded.
const staleConnections = 26

// retrying runs read, what of kind, again when it fails: once after any
// error, and up to staleConnections times while it fails on its connection
// (not with an error PostgreSQL answered), so that a resync right after a
// restart does not end every subscriber on the pool's dead connections.
func (h *Hub) retrying(ctx context.Context, what, kind string, read func() error) error {
	err := read()
	for attempt := 1; err != nil && ctx.Err() == nil; attempt++ {
		var pqErr *pq.Error
		if attempt > 1 && (errors.As(err, &pqErr) || attempt >= staleConnections) {
			break
		}
		h.log.Warn(what+"; trying again", "kind", kind, "error", err)
		err = read()
	}
	return err
}

func opName(op string) string {
	switch op {
	case "INSERT":
		return "CREATED"
	case "DELETE":
		return "DELETED"
	}
	return "UPDATED"
}

// KindPresence is the topic of robots going online or offline; it is fed by
// robot changes whose status crosses OFFLINE.
const KindPresence = "presence"

// topicsOf lists the topics a change is published on.
func topicsOf(c Change) []topic {
	ts := []topic{{c.Kind, c.Tenant}}
	if c.Kind == KindRobot && c.Op == "UPDATE" && (c.Status == "OFFLINE") != (c.PrevStatus == "OFFLINE") {
		ts = append(ts, topic{KindPresence, c.Tenant})
	}
	return ts
}

func (h *Hub) matching(k topic, c Change) []*Sub {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []*Sub
	for s := range h.topics[k] {
		if s.filter(c) {
			out = append(out, s)
		}
	}
	return out
}

// resync re-reads, after the feed lost notifications (a reconnect, or an
// overflow), what every live topic may have missed, and offers it as
// CURRENT updates; subscribers drop what they already have. Append-only
// rows go only to the subscribers that registered before they were
// committed (SubscribeAppend): the window re-read starts well before the
// loss, and the rows in it older than a subscriber are its history.
func (h *Hub) resync(ctx context.Context, since time.Time) {
	h.mu.RLock()
	live := make(map[topic][]*Sub, len(h.topics))
	for k, subs := range h.topics {
		for s := range subs {
			live[k] = append(live[k], s)
		}
	}
	h.mu.RUnlock()
	h.log.Info("resynchronising subscriptions after lost notifications", "topics", len(live), "since", since)
	h.Metrics.Resynced()
	for k, subs := range live {
		kind := loadKind(k.kind)
		var rows []Versioned
		err := h.retrying(ctx, "resynchronising", kind, func() (err error) {
			rows, err = h.source.ChangedSince(ctx, kind, k.tenant, since)
			return err
		})
		if err != nil {
			h.log.Error("resynchronising", "kind", kind, "error", err)
			for _, s := range subs {
				s.end(ErrResyncFailed)
			}
			continue
		}
		for _, row := range rows {
			u := Update{Kind: k.kind, Op: "CURRENT", Key: row.Key, Version: row.Version, Value: row.Value}
			for _, s := range subs {
				if s.append && s.committed.Committed(row.Xact) {
					// Committed before the subscriber registered: not
					// news to it, and not something it could have missed.
					continue
				}
				if s.matchRow == nil || s.matchRow(row.Value) {
					s.offer(u)
				}
			}
		}
		// Rows a subscriber has seen that are gone now: deleted meanwhile.
		if kind == KindMachine || kind == KindRobot {
			h.resyncDeletions(ctx, kind, k, subs)
		}
	}
}

// resyncDeletions tells each subscriber about the rows it has (or has
// queued) that are gone now, and only those: a subscriber to one machine
// must not hear of another's deletion, nor a user of another user's machine.
func (h *Hub) resyncDeletions(ctx context.Context, kind string, k topic, subs []*Sub) {
	holders := map[string][]*Sub{}
	for _, s := range subs {
		for _, key := range s.seenKeys() {
			holders[key] = append(holders[key], s)
		}
	}
	if len(holders) == 0 {
		return
	}
	keys := make([]string, 0, len(holders))
	for key := range holders {
		keys = append(keys, key)
	}
	rows, err := h.load(ctx, kind, k.tenant, keys)
	if err != nil {
		// A holder may have missed a deletion it would never hear of
		// again (a one-entity subscription would not complete): it ends,
		// as the resync's other failures end theirs, and resubscribes.
		h.log.Error("resynchronising deletions", "kind", kind, "error", err)
		for _, hs := range holders {
			for _, s := range hs {
				s.end(ErrResyncFailed)
			}
		}
		return
	}
	for _, key := range keys {
		if _, ok := rows[key]; !ok {
			for _, s := range holders[key] {
				s.offerDeleted(k.kind, key)
			}
		}
	}
}

// SubscribeOptions describe a subscription.
type SubscribeOptions struct {
	Kind   string
	Tenant uuid.UUID
	// Principal is the subscriber: every row is checked against it before
	// it is sent (nil sees nothing).
	Principal *auth.Principal
	// Filter decides from a change's routing fields, in Go, whether the
	// subscriber may see and wants it; no database read per subscriber.
	Filter func(Change) bool
	// MatchRow decides for rows re-read by a resync (nil: all of the topic's rows).
	MatchRow func(value any) bool
	// Append marks append-only feeds (events): updates are never coalesced.
	// Subscribe them with SubscribeAppend, which sets Committed.
	Append bool
	// Committed is which transactions had committed when an append-only
	// subscriber registered (taken just before). A resync, which re-reads
	// rows by time with a margin, offers such a subscriber only rows of
	// other transactions: those it could have missed. The zero Snapshot
	// counts every row as new.
	Committed db.Snapshot
	// Lossy subscribers (log tails) are not ended when they fall behind:
	// updates past the queue limit are dropped and counted, and the next
	// Take ends with an Op "MISSED" update whose Version is how many.
	Lossy bool
	// Weight counts what a dropped update held (default 1), for Lossy.
	Weight func(Update) int
	// Limit bounds the subscriber's undelivered updates (0: the hub's).
	Limit int
	// Expires, when non-zero, ends the subscription then (the credential's expiry).
	Expires time.Time
}

// SubscribeAppend registers an append-only subscriber (o.Append is set)
// after one statement that takes a snapshot (o.Committed) of the
// transactions committed by then.
//
// A resync re-reads the rows created since shortly before the feed was
// last healthy, and only the rows committed after the subscriber
// registered are ones it could have missed; the others it found, if it
// wants them, by query. Neither ids nor times tell them apart (a sequence
// value and created_at are taken before their transaction commits, in any
// order, and the database's clock is not the hub's); the snapshot does,
// from the xact column each row records (migration 0012), which names
// the top-level transaction even when a savepoint wrote the row (xmin
// would name the subtransaction, which a snapshot does not list). It is
// taken before the registration, so no row committed after the
// registration counts as committed: a row committed between the two may
// be offered although the client found it by query, but none the
// subscriber could have missed is withheld.
func (h *Hub) SubscribeAppend(ctx context.Context, o SubscribeOptions) (*Sub, error) {
	snap, err := h.source.Snapshot(ctx)
	if err != nil {
		return nil, fmt.Errorf("subscribing to %s: %w", o.Kind, err)
	}
	o.Append, o.Committed = true, snap
	return h.Subscribe(o), nil
}

// Subscribe registers a subscriber; call Sub.Close when done.
func (h *Hub) Subscribe(o SubscribeOptions) *Sub {
	s := &Sub{
		hub: h, topic: topic{o.Kind, o.Tenant}, principal: o.Principal, filter: o.Filter, matchRow: o.MatchRow, append: o.Append, committed: o.Committed,
		lossy: o.Lossy, weight: o.Weight, limit: cmp.Or(o.Limit, h.queueLimit), pending: map[string]int{},
		ready: make(chan struct{}, 1), done: make(chan struct{}),
	}
	if !o.Expires.IsZero() {
		s.expiry = time.AfterFunc(time.Until(o.Expires), func() { s.end(ErrExpired) })
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.topics[s.topic] == nil {
		h.topics[s.topic] = map[*Sub]struct{}{}
	}
	h.topics[s.topic][s] = struct{}{}
	h.Metrics.Subscribers(s.topic.kind, 1)
	return s
}

// ErrExpired ends subscriptions whose credential expired.
var ErrExpired = errors.New("the credential behind this subscription has expired; reconnect with a fresh one")

func (h *Hub) remove(s *Sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.topics[s.topic][s]; ok {
		h.Metrics.Subscribers(s.topic.kind, -1)
	}
	delete(h.topics[s.topic], s)
	if len(h.topics[s.topic]) == 0 {
		delete(h.topics, s.topic)
	}
}

func (h *Hub) closeAll(err error) {
	h.mu.RLock()
	var all []*Sub
	for _, subs := range h.topics {
		for s := range subs {
			all = append(all, s)
		}
	}
	h.mu.RUnlock()
	for _, s := range all {
		s.end(err)
	}
}

// Sub is one subscriber. The hub offers it updates without ever blocking:
// a newer update of an entity replaces an undelivered older one (except on
// append-only feeds), and a subscriber whose queue passes the limit is ended
// with ErrTooSlow.
type Sub struct {
	hub       *Hub
	topic     topic
	principal *auth.Principal
	filter    func(Change) bool
	matchRow  func(any) bool
	append    bool
	committed db.Snapshot
	lossy     bool
	weight    func(Update) int
	limit     int
	expiry    *time.Timer

	mu      sync.Mutex
	queue   []Update
	pending map[string]int        // key -> index in queue (coalescing)
	sent    recent[string, int64] // key -> version last delivered
	missed  int                   // what was dropped since the last Take (Lossy)
	err     error
	ready   chan struct{}
	done    chan struct{}
}

// Ready is signalled when updates are waiting; Done is closed when the
// subscription ended (Err says why).
func (s *Sub) Ready() <-chan struct{} { return s.ready }

// Done is closed when the hub ended the subscription.
func (s *Sub) Done() <-chan struct{} { return s.done }

// Err is why the subscription ended, once Done is closed.
func (s *Sub) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Seed records that the subscriber already has key at version (its first
// state), so older updates are not sent again.
func (s *Sub) Seed(key string, version int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent.set(key, version)
}

func (s *Sub) offer(u Update) {
	if !visible(s.principal, s.topic.kind, u) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if u.Op != "DELETED" && u.Version <= s.sent.at(u.Key) {
		return // the subscriber has this version (or event) already
	}
	if u.Op == "CREATED" && s.sent.at(u.Key) > 0 {
		// The subscriber holds an older state of the entity (its first
		// state, read after the creation): the news is a later state.
		u.Op = "UPDATED"
	}
	if i, ok := s.pending[u.Key]; ok && !s.append {
		if u.Version >= s.queue[i].Version {
			s.queue[i] = u
		}
		s.hub.Metrics.Coalesced(s.topic.kind)
		return
	}
	if len(s.queue) >= s.limit {
		if s.lossy {
			n := 1
			if s.weight != nil {
				n = s.weight(u)
			}
			s.missed += n
			return
		}
		s.endLocked(ErrTooSlow)
		s.hub.Metrics.SlowConsumer(s.topic.kind)
		return
	}
	s.pending[u.Key] = len(s.queue)
	s.queue = append(s.queue, u)
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// skip tells the subscriber of u that the hub did not read u's row (a log
// batch past db.MaxTailLines): a Lossy subscriber gets, where the row
// would have been, a MISSED notice of what its Weight counts for u (a
// notice right before it grows instead); any other is ended, as when a
// load fails.
func (s *Sub) skip(u Update) {
	if !s.lossy {
		s.end(ErrResyncFailed)
		return
	}
	n := 1
	if s.weight != nil {
		n = s.weight(u)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || n <= 0 {
		return
	}
	if len(s.queue) >= s.limit {
		s.missed += n
		return
	}
	if last := len(s.queue) - 1; last >= 0 && s.queue[last].Op == OpMissed {
		s.queue[last].Version += int64(n)
		return
	}
	s.queue = append(s.queue, Update{Kind: s.topic.kind, Op: OpMissed, Version: int64(n)})
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// offerDeleted queues the deletion of key that a resync found: the row is
// gone, so its last version is unknown; the deletion carries the last one
// the subscriber has or has queued (a client-visible GraphQL Int), and
// replaces a queued update.
func (s *Sub) offerDeleted(kind, key string) {
	s.mu.Lock()
	v := s.sent.at(key)
	if i, ok := s.pending[key]; ok && s.queue[i].Version > v {
		v = s.queue[i].Version
	}
	s.mu.Unlock()
	s.offer(Update{Kind: kind, Op: "DELETED", Key: key, Version: v})
}

// maxSentKeys bounds what a subscriber remembers of the entities it was
// sent (Sub.sent): the newest maxSentKeys keys at least, twice as many at
// most (recent), about 50 bytes each. An append-only feed (events) or a
// tenant-wide one (jobUpdated) meets a new key with almost every update;
// distinct documents do not share a hub subscriber, and at 10,000 (up to
// 20,000 keys, about 1 MB) a user's 500 subscriptions could hold 0.5 GB.
//
// What is forgotten is only de-duplication of old keys, which nothing
// else depends on: the updates of one entity reach a subscriber in the
// order their rows were read, and a one-entity subscription (whose first
// state Seed records) meets only its own key. A resync (which re-reads
// every row changed since shortly before the loss) may send again, as
// CURRENT, a row the subscriber already had at the same version when more
// than maxSentKeys other entities reached it since (a tenant-wide feed of
// a busy tenant; an append-only subscriber may then get an event twice),
// and does not report the deletion of an entity it saw that long ago.
const maxSentKeys = 1_000

// maxSentLines bounds what a log tail remembers of the lines it was sent
// (LogTail.sent; 8-byte ids): a resync replays up to db.MaxResyncLines
// lines, and a tail must not show one twice.
const maxSentLines = 10_000

// recent remembers values by key in two generations: past its limit in
// the current one, the previous one is dropped and the current one takes
// its place, so the newest keys up to the limit are always remembered, and
// at most twice as many. The zero value is empty and ready, with
// maxSentKeys as its limit.
type recent[K comparable, V any] struct {
	cur, prev map[K]V
	limit     int // 0: maxSentKeys
}

func (r *recent[K, V]) get(k K) (V, bool) {
	if v, ok := r.cur[k]; ok {
		return v, true
	}
	v, ok := r.prev[k]
	return v, ok
}

// at is k's value, or the zero value.
func (r *recent[K, V]) at(k K) V { v, _ := r.get(k); return v }

func (r *recent[K, V]) set(k K, v V) {
	if r.cur == nil {
		r.cur = map[K]V{}
	}
	r.cur[k] = v
	if len(r.cur) > cmp.Or(r.limit, maxSentKeys) {
		r.prev, r.cur = r.cur, map[K]V{}
	}
}

func (r *recent[K, V]) delete(k K) {
	delete(r.cur, k)
	delete(r.prev, k)
}

func (r *recent[K, V]) len() int { return len(r.cur) + len(r.prev) }

// keys lists the keys remembered, each once.
func (r *recent[K, V]) keys() []K {
	keys := make([]K, 0, r.len())
	for k := range r.cur {
		keys = append(keys, k)
	}
	for k := range r.prev {
		if _, ok := r.cur[k]; !ok {
			keys = append(keys, k)
		}
	}
	return keys
}

// Take returns the waiting updates, oldest first, and marks them delivered.
func (s *Sub) Take() []Update {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queue
	s.queue = nil
	clear(s.pending)
	out := q[:0]
	for _, u := range q {
		if u.Op == OpMissed { // a notice Sub.skip queued: no entity
			out = append(out, u)
			continue
		}
		if u.Op == "DELETED" {
			s.sent.delete(u.Key)
		} else if u.Version <= s.sent.at(u.Key) {
			// Offered before Seed recorded the subscriber's first state,
			// which is as new or newer: sending it would go backwards.
			continue
		} else {
			s.sent.set(u.Key, u.Version)
		}
		out = append(out, u)
	}
	q = out
	if s.missed > 0 {
		// Everything dropped came after what was queued, and nothing was
		// queued after it (the queue was full): the notice goes last.
		q = append(q, Update{Kind: s.topic.kind, Op: OpMissed, Version: int64(s.missed)})
		s.missed = 0
	}
	s.hub.Metrics.Delivered(s.topic.kind, len(q))
	return q
}

// seenKeys lists the keys the subscriber has received or has queued.
func (s *Sub) seenKeys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := s.sent.keys()
	for k := range s.pending {
		if _, ok := s.sent.get(k); !ok {
			keys = append(keys, k)
		}
	}
	return keys
}

func (s *Sub) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endLocked(err)
}

func (s *Sub) endLocked(err error) {
	if s.err != nil {
		return
	}
	s.err = err
	close(s.done)
}

// Close unregisters the subscriber.
func (s *Sub) Close() {
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.end(errClosed)
	s.hub.remove(s)
}

var errClosed = errors.New("subscription closed")

// OpMissed is the Op of the notice a Lossy subscriber gets after updates
// were dropped; its Version is how many (by the subscription's Weight).
const OpMissed = "MISSED"
