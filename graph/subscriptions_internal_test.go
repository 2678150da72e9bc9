package graph

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/dbtest"
	"fleetgraph/realtime"
)

// TestAFeedEndsWithItsDeletionWatch checks that a feed guarded by a
// deletion watch (a machine's events, a robot's log lines) ends when the
// hub ends the watch first (with the watch's reason, which live.End
// sends), rather than staying open with nothing left to complete it on
// the deletion it promises.
func TestAFeedEndsWithItsDeletionWatch(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	log := slog.New(slog.DiscardHandler)
	l, err := realtime.NewListener(d.DSN, []string{realtime.ChangeChannel}, log)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { l.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	hub := realtime.NewHub(l, nil, log)

	p := &auth.Principal{TenantID: uuid.New(), UserID: uuid.New(), Role: auth.RoleUser}
	robot := uuid.New()
	feed := hub.Subscribe(realtime.SubscribeOptions{Kind: realtime.KindLog, Tenant: p.TenantID, Principal: p, Filter: func(realtime.Change) bool { return true }})
	// The watch ends first: its credential expires (the hub's own reason,
	// as a failed resync would be), the feed's does not.
	watch := deletionWatch{key: robot.String(), sub: hub.Subscribe(realtime.SubscribeOptions{
		Kind: realtime.KindRobot, Tenant: p.TenantID, Principal: p, Expires: time.Now().Add(20 * time.Millisecond),
		Filter: func(realtime.Change) bool { return false },
	})}
	out := streamUntil(ctx, feed, (*int)(nil), watch.until(ctx, 1), func(realtime.Update) *int { return nil })
	select {
	case _, open := <-out:
		require.False(t, open, "nothing was sent")
	case <-time.After(30 * time.Second):
		require.FailNow(t, "the feed stayed open after its deletion watch ended")
	}
	select {
	case <-feed.Done():
	case <-time.After(30 * time.Second):
		require.FailNow(t, "the feed's hub subscription was not closed")
	}
}
