package realtime

import (
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
)

// TestResyncOffersAppendOnlySubscribersOnlyWhatTheyCouldHaveMissed: after
// lost notifications the hub re-reads the append-only rows of the last
// minute or more, and offers each append-only subscriber (machineEventAdded,
// log tails) the rows committed after it subscribed, each once, and none
// committed before (the history its client loads by query). A row committed
// after the subscription counts however its id and time compare: one
// written by a transaction that began before the subscription (a lower id,
// an earlier created_at) and, inside it, by a savepoint (a subtransaction,
// whose own id a snapshot does not list) still comes.
//
// The hub here is not running: the test hands it the reconnect marker, and
// no notification of the rows written is ever processed, as when the
// listener's connection was down while they were written.
func TestResyncOffersAppendOnlySubscribersOnlyWhatTheyCouldHaveMissed(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		d   *dbtest.Database
		hub *Hub
		// owner owns the machine; robot ships lines in tenant.
		owner   *auth.Principal
		robot   *auth.Principal
		machine uuid.UUID
		events  *db.Machines
		logs    *db.Logs
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		d := dbtest.New(t)
		tenant := uuid.New()
		owner := &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser}
		machines := db.NewMachines()
		m, err := machines.Create(auth.WithPrincipal(t.Context(), owner), d.DB, db.CreateMachineInput{Name: "m"})
		require.NoError(t, err)
		robots := db.NewRobots(db.DefaultQueueConfig)
		r, err := robots.Create(auth.WithPrincipal(t.Context(), &auth.Principal{TenantID: tenant, Role: auth.RoleService}), d.DB, db.CreateRobotInput{Name: "r"})
		require.NoError(t, err)
		logs := db.NewLogs(db.DefaultLogConfig, db.NewJobs(db.DefaultQueueConfig, db.NewWorkflows()))
		source := &StoreSource{DB: d.DB, Machines: machines, Robots: robots, Logs: logs}
		// The feed was last healthy now: the resync re-reads from a minute ago.
		h := newHub(&Subscription{}, source, slog.New(slog.DiscardHandler))
		return &testBundle{d: d, hub: h, owner: owner, robot: &auth.Principal{TenantID: tenant, RobotID: r.ID, Role: auth.RoleRobot},
			machine: m.ID, events: machines, logs: logs}
	}
	// logEvent logs an event of type typ through idb (the database, or a
	// transaction, inside which the store's own transaction is a savepoint).
	logEvent := func(t *testing.T, b *testBundle, idb bun.IDB, typ string) {
		t.Helper()
		_, err := b.events.LogEvent(auth.WithPrincipal(t.Context(), b.owner), idb, b.machine, typ, db.EventDetails{})
		require.NoError(t, err)
	}
	ship := func(t *testing.T, b *testBundle, idb bun.IDB, messages ...string) {
		t.Helper()
		var in []db.RobotLogInput
		for _, m := range messages {
			in = append(in, db.RobotLogInput{Level: db.LogInfo, Message: m})
		}
		_, err := b.logs.Ship(auth.WithPrincipal(t.Context(), b.robot), idb, in)
		require.NoError(t, err)
	}
	begin := func(t *testing.T, b *testBundle) bun.Tx {
		t.Helper()
		tx, err := b.d.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = tx.Rollback() })
		return tx
	}
	reconnect := func(t *testing.T, b *testBundle) {
		t.Helper()
		b.hub.process(t.Context(), []Notification{{Channel: ChangeChannel, Reconnected: true, At: time.Now()}})
	}

	t.Run("MachineEvents", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		logEvent(t, b, b.d.DB, "before-1") // after the machine's own "created"
		logEvent(t, b, b.d.DB, "before-2")
		logEvent(t, b, b.d.DB, "before-3")
		// Begun before the subscription, committed after it.
		early := begin(t, b)
		logEvent(t, b, early, "early")

		sub, err := b.hub.SubscribeAppend(t.Context(), SubscribeOptions{
			Kind: KindMachineEvent, Tenant: b.owner.TenantID, Principal: b.owner,
			Filter:   func(Change) bool { return true },
			MatchRow: func(v any) bool { return v.(*db.MachineEvent).MachineID == b.machine },
		})
		require.NoError(t, err)
		t.Cleanup(sub.Close)
		logEvent(t, b, b.d.DB, "after")
		require.NoError(t, early.Commit())

		types := func(us []Update) []string {
			var out []string
			for _, u := range us {
				e := u.Value.(*db.MachineEvent)
				require.Equal(t, strconv.FormatInt(e.ID, 10), u.Key)
				out = append(out, e.EventType)
			}
			return out
		}
		reconnect(t, b)
		require.Equal(t, []string{"early", "after"}, types(sub.Take()),
			"the events committed after the subscription, in id order; none of the machine's history")
		reconnect(t, b)
		require.Empty(t, sub.Take(), "each event comes once")
		requireNotEnded(t, sub)

		// A subscriber from before all of them gets them all: the rule
		// keeps what a subscriber could have missed.
		all := b.hub.Subscribe(SubscribeOptions{
			Kind: KindMachineEvent, Tenant: b.owner.TenantID, Principal: b.owner, Append: true,
			MatchRow: func(v any) bool { return v.(*db.MachineEvent).MachineID == b.machine },
		})
		t.Cleanup(all.Close)
		reconnect(t, b)
		require.Equal(t, []string{"created", "before-1", "before-2", "before-3", "early", "after"}, types(all.Take()))
	})

	t.Run("LogTails", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		ship(t, b, b.d.DB, "before 1", "before 2")
		ship(t, b, b.d.DB, "before 3")
		early := begin(t, b)
		ship(t, b, early, "early")

		tail, err := b.hub.TailLogs(t.Context(), b.owner, &b.robot.RobotID, 0)
		require.NoError(t, err)
		t.Cleanup(tail.Close)
		ship(t, b, b.d.DB, "after 1", "after 2")
		require.NoError(t, early.Commit())

		messages := func(items []LogTailItem) []string {
			var out []string
			for _, item := range items {
				require.Zero(t, item.Missed)
				for _, l := range item.Lines {
					out = append(out, l.Message)
				}
			}
			return out
		}
		reconnect(t, b)
		require.Equal(t, []string{"early", "after 1", "after 2"}, messages(tail.Take()),
			"the lines committed after the tail began; none shipped before")
		reconnect(t, b)
		require.Empty(t, tail.Take(), "each line comes once")
		requireNotEnded(t, tail.Sub())
	})
}

// requireNotEnded fails when the hub ended sub.
func requireNotEnded(t *testing.T, sub *Sub) {
	t.Helper()
	select {
	case <-sub.Done():
		require.FailNow(t, "the subscriber was ended", "%v", sub.Err())
	default:
	}
}
