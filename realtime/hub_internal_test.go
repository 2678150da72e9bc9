package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// faultySource is the hub's real source over a test database, with faults
// injected: its next failLoads calls of Load fail as a reset connection
// would. It records the windows ChangedSince re-reads.
type faultySource struct {
	Source
	failLoads int
	loads     int
	windows   []time.Time
}

var errConnectionReset = errors.New("read tcp: connection reset by peer")

func (s *faultySource) Load(ctx context.Context, kind string, tenant uuid.UUID, keys []string) (map[string]Versioned, error) {
	s.loads++
	if s.failLoads > 0 {
		s.failLoads--
		return nil, errConnectionReset
	}
	return s.Source.Load(ctx, kind, tenant, keys)
}

func (s *faultySource) ChangedSince(ctx context.Context, kind string, tenant uuid.UUID, since time.Time) ([]Versioned, error) {
	s.windows = append(s.windows, since)
	return s.Source.ChangedSince(ctx, kind, tenant, since)
}

func TestHubDelivery(t *testing.T) {
	t.Parallel()

	// hubBundle is a hub (not running: the test hands it changes) over a
	// test database holding one machine, whose owner subscribes to it.
	type hubBundle struct {
		hub     *Hub
		source  *faultySource
		machine *db.Machine
		change  Change
		sub     *Sub
	}
	setup := func(t *testing.T) *hubBundle {
		t.Helper()
		d := dbtest.New(t)
		machines := db.NewMachines()
		owner := &auth.Principal{TenantID: uuid.New(), UserID: uuid.New(), Role: auth.RoleUser}
		m, err := machines.Create(auth.WithPrincipal(t.Context(), owner), d.DB, db.CreateMachineInput{Name: "m"})
		require.NoError(t, err)
		source := &faultySource{Source: &StoreSource{DB: d.DB, Machines: machines}}
		h := newHub(&Subscription{}, source, slog.New(slog.DiscardHandler))
		sub := h.Subscribe(SubscribeOptions{Kind: KindMachine, Tenant: owner.TenantID, Principal: owner, Filter: func(Change) bool { return true }})
		t.Cleanup(sub.Close)
		c := Change{Kind: KindMachine, Op: "UPDATE", Tenant: owner.TenantID, ID: m.ID.String(), Version: m.Version, Owner: &owner.UserID}
		return &hubBundle{hub: h, source: source, machine: m, change: c, sub: sub}
	}
	requireLive := func(t *testing.T, sub *Sub) {
		t.Helper()
		select {
		case <-sub.Done():
			require.FailNow(t, "the subscriber was ended", "%v", sub.Err())
		default:
		}
	}

	t.Run("ALoadThatFailsOnceIsRetried", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.source.failLoads = 1
		b.hub.deliver(t.Context(), []Change{b.change})
		require.Equal(t, 2, b.source.loads)
		got := b.sub.Take()
		require.Len(t, got, 1, "the update is delivered, not dropped")
		require.Equal(t, b.machine.ID.String(), got[0].Key)
		require.Equal(t, b.machine.Version, got[0].Version)
		requireLive(t, b.sub)
	})

	t.Run("ALoadThatFailsOnEveryDeadConnectionIsRetried", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// After a restart, each of the pool's idle connections fails once.
		b.source.failLoads = staleConnections - 1
		b.hub.deliver(t.Context(), []Change{b.change})
		require.Equal(t, staleConnections, b.source.loads)
		require.Len(t, b.sub.Take(), 1, "the update is delivered, not dropped")
		requireLive(t, b.sub)
	})

	t.Run("ALoadThatKeepsFailingEndsItsSubscribers", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// A subscriber of the same topic that did not want the change lost
		// nothing, and goes on.
		bystander := b.hub.Subscribe(SubscribeOptions{Kind: KindMachine, Tenant: b.change.Tenant, Principal: b.sub.principal, Filter: func(Change) bool { return false }})
		t.Cleanup(bystander.Close)
		b.source.failLoads = staleConnections
		b.hub.deliver(t.Context(), []Change{b.change})
		select {
		case <-b.sub.Done():
		default:
			require.FailNow(t, "the subscriber whose update was lost was not told")
		}
		require.ErrorIs(t, b.sub.Err(), ErrResyncFailed, "the failed resync's error: the client resubscribes and re-queries")
		requireLive(t, bystander)
	})

	// A resync that re-reads the topic but cannot read which of the rows a
	// subscriber holds are gone ends their holders: each may have missed a
	// deletion it would never hear of again.
	t.Run("AResyncThatCannotCheckDeletionsEndsTheirHolders", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.hub.deliver(t.Context(), []Change{b.change})
		require.Len(t, b.sub.Take(), 1)
		b.source.failLoads = staleConnections
		b.hub.process(t.Context(), []Notification{{Channel: ChangeChannel, Reconnected: true, At: time.Now()}})
		select {
		case <-b.sub.Done():
		default:
			require.FailNow(t, "the holder of a row whose deletion could not be checked was not told")
		}
		require.ErrorIs(t, b.sub.Err(), ErrResyncFailed)
	})

	// The hub is an hour behind: the batch it takes now holds a
	// notification received an hour ago. When the feed then loses
	// notifications, the resync re-reads from that receipt (less the
	// slack), not from when the hub got round to the batch, which would
	// miss what changed in that hour after the feed broke.
	t.Run("AResyncReReadsFromTheNewestNotificationReceived", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		payload, err := json.Marshal(b.change)
		require.NoError(t, err)
		received := time.Now().Add(-time.Hour)
		b.hub.process(t.Context(), []Notification{{Channel: ChangeChannel, Payload: string(payload), At: received}})
		require.Len(t, b.sub.Take(), 1)
		b.hub.process(t.Context(), []Notification{{Channel: ChangeChannel, Reconnected: true, At: time.Now()}})
		require.Len(t, b.source.windows, 1, "the reconnect resyncs the subscriber's topic")
		require.True(t, b.source.windows[0].Equal(received.Add(-b.hub.resyncSlack)),
			"the resync re-reads from %s, not from the notification's receipt %s less the slack", b.source.windows[0], received)
	})
}

// TestWhatASubscriberRemembersIsBounded: a subscriber that meets a new
// entity with every update (a tenant's jobs, an append-only feed) keeps at
// most 2,001 of them (about 100 KB), and always the newest maxSentKeys. It
// kept up to 20,000 (about 1 MB a subscription, 0.5 GB for a user's 500).
// A log tail remembers the newest db.MaxResyncLines lines at least (a
// resync replays that many, which it must not show twice).
func TestWhatASubscriberRemembersIsBounded(t *testing.T) {
	t.Parallel()
	const atMost = 2_001 // the newest 1,000 keys and up to 1,001 older ones
	owner := &auth.Principal{TenantID: uuid.New(), UserID: uuid.New(), Role: auth.RoleUser}
	h := newHub(&Subscription{}, nil, slog.New(slog.DiscardHandler))
	sub := h.Subscribe(SubscribeOptions{Kind: KindMachine, Tenant: owner.TenantID, Principal: owner, Filter: func(Change) bool { return true }})
	t.Cleanup(sub.Close)
	var keys []string
	most := 0
	for i := range 30_000 {
		m := &db.Machine{ID: uuid.New(), TenantID: owner.TenantID, OwnerID: owner.UserID, Version: 1}
		keys = append(keys, m.ID.String())
		sub.offer(Update{Kind: KindMachine, Op: "UPDATED", Key: m.ID.String(), Version: 1, Value: m})
		require.Len(t, sub.Take(), 1)
		most = max(most, sub.sent.len())
		if i%997 == 0 && i >= maxSentKeys {
			for _, k := range keys[i-maxSentKeys+1 : i+1] {
				_, ok := sub.sent.get(k)
				require.True(t, ok, "a key among the newest was forgotten")
			}
		}
	}
	t.Logf("sent 30,000 keys; remembered at most %d", most)
	require.LessOrEqual(t, most, atMost)
	// What it remembers it does not send again.
	m := &db.Machine{ID: uuid.MustParse(keys[len(keys)-1]), TenantID: owner.TenantID, OwnerID: owner.UserID, Version: 1}
	sub.offer(Update{Kind: KindMachine, Op: "UPDATED", Key: m.ID.String(), Version: 1, Value: m})
	require.Empty(t, sub.Take())

	tail := newLogTail(0)
	for i := range 5 * db.MaxResyncLines {
		_, ok := tail.Item(Update{Value: &db.LogBatch{Lines: []*db.RobotLog{{ID: int64(i + 1), Level: db.LogInfo}}}})
		require.True(t, ok)
		require.LessOrEqual(t, tail.sent.len(), 2*maxSentLines+1)
	}
	for _, id := range []int64{5 * db.MaxResyncLines, 4*db.MaxResyncLines + 1} { // the newest and the oldest of the newest MaxResyncLines
		_, ok := tail.Item(Update{Value: &db.LogBatch{Lines: []*db.RobotLog{{ID: id, Level: db.LogInfo}}}})
		require.False(t, ok, "a recent line is not delivered twice")
	}
}

// resyncSource re-reads rows for a resync: ChangedSince returns rows, and
// Load finds every key (nothing was deleted).
type resyncSource struct{ rows []Versioned }

func (s *resyncSource) Load(_ context.Context, _ string, _ uuid.UUID, keys []string) (map[string]Versioned, error) {
	out := map[string]Versioned{}
	for _, k := range keys {
		out[k] = Versioned{Key: k, Version: 1}
	}
	return out, nil
}

func (s *resyncSource) ChangedSince(context.Context, string, uuid.UUID, time.Time) ([]Versioned, error) {
	return s.rows, nil
}

func (s *resyncSource) Snapshot(context.Context) (db.Snapshot, error) { return db.Snapshot{}, nil }

// TestAResyncSkipsWhatWasRecentlySent: after lost notifications a resync
// re-reads the rows changed lately; a subscriber that was sent far more
// entities than it remembers still skips the newest maxSentKeys at the
// versions it has, and gets what is new. An entity it was sent before
// those may come again, at the version it has: the documented price of
// the bound, a duplicate.
func TestAResyncSkipsWhatWasRecentlySent(t *testing.T) {
	t.Parallel()
	owner := &auth.Principal{TenantID: uuid.New(), UserID: uuid.New(), Role: auth.RoleUser}
	src := &resyncSource{}
	h := newHub(&Subscription{}, src, slog.New(slog.DiscardHandler))
	sub := h.Subscribe(SubscribeOptions{Kind: KindMachine, Tenant: owner.TenantID, Principal: owner, Filter: func(Change) bool { return true }})
	t.Cleanup(sub.Close)
	machine := func(key string, version int64) Versioned {
		m := &db.Machine{ID: uuid.MustParse(key), TenantID: owner.TenantID, OwnerID: owner.UserID, Version: version}
		return Versioned{Key: key, Version: version, Value: m}
	}
	var keys []string
	for range 20 * maxSentKeys {
		v := machine(uuid.NewString(), 3)
		keys = append(keys, v.Key)
		sub.offer(Update{Kind: KindMachine, Op: "UPDATED", Key: v.Key, Version: v.Version, Value: v.Value})
		require.Len(t, sub.Take(), 1)
	}

	newest := keys[len(keys)-maxSentKeys:]
	for _, k := range newest {
		src.rows = append(src.rows, machine(k, 3)) // what it has
	}
	src.rows = append(src.rows, machine(newest[0], 4)) // news
	newcomer := machine(uuid.NewString(), 1)
	src.rows = append(src.rows, newcomer, machine(keys[0], 3)) // news, and one it was sent long ago
	h.resync(t.Context(), time.Now())

	var got []string
	for _, u := range sub.Take() {
		got = append(got, fmt.Sprint(u.Key, "@", u.Version))
	}
	require.Equal(t, []string{newest[0] + "@4", newcomer.Key + "@1", keys[0] + "@3"}, got,
		"the newest entities it was sent are skipped at the versions it has")
}

// orderSource records whether a deletion was offered before the log batch
// it loads: it has no rows, and looks at the deletion's subscriber.
type orderSource struct {
	del          *Sub
	deletedFirst bool
}

func (s *orderSource) Load(_ context.Context, kind string, _ uuid.UUID, _ []string) (map[string]Versioned, error) {
	if kind == KindLog {
		s.del.mu.Lock()
		s.deletedFirst = len(s.del.queue) > 0
		s.del.mu.Unlock()
	}
	return map[string]Versioned{}, nil
}

func (s *orderSource) ChangedSince(context.Context, string, uuid.UUID, time.Time) ([]Versioned, error) {
	return nil, nil
}

func (s *orderSource) Snapshot(context.Context) (db.Snapshot, error) { return db.Snapshot{}, nil }

// TestABatchIsOfferedInItsOrder: a robot ships lines, then is deleted, and
// both notifications reach the hub in one batch. The topics were offered
// in a map's order, so the deletion could come first: a robot's log tail
// (which ends at its robot's deletion) completed without its last lines.
func TestABatchIsOfferedInItsOrder(t *testing.T) {
	t.Parallel()
	tenant, robot := uuid.New(), uuid.New()
	p := &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser}
	for range 50 { // a map's order is random: the old code failed one run in ten
		src := &orderSource{}
		h := newHub(&Subscription{}, src, slog.New(slog.DiscardHandler))
		key := robot.String()
		del := h.Subscribe(SubscribeOptions{Kind: KindRobot, Tenant: tenant, Principal: p,
			Filter: func(c Change) bool { return c.Op == "DELETE" && c.ID == key }})
		src.del = del
		tail := h.Subscribe(SubscribeOptions{Kind: KindLog, Tenant: tenant, Principal: p, Append: true, Lossy: true,
			Filter: func(c Change) bool { return c.Robot != nil && *c.Robot == robot }})
		h.deliver(t.Context(), []Change{
			{Kind: KindLog, Op: "INSERT", Tenant: tenant, ID: "1-10", Robot: &robot},
			{Kind: KindRobot, Op: "DELETE", Tenant: tenant, ID: key, Version: 3},
		})
		require.False(t, src.deletedFirst, "the robot's deletion was offered before the lines shipped before it")
		del.Close()
		tail.Close()
	}
}
