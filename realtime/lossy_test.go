package realtime

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
)

// A lossy subscriber (a log tail) that falls behind is not ended: what does
// not fit its queue is dropped, counted by its weight, and reported once in a
// MISSED notice after the updates it did get.
func TestLossySubscriberIsToldWhatItMissed(t *testing.T) {
	t.Parallel()
	tenant, robot := uuid.New(), uuid.New()
	h := &Hub{queueLimit: 1000, topics: map[topic]map[*Sub]struct{}{}}
	p := &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser}
	batch := func(id int64, lines int) Update {
		b := &db.LogBatch{TenantID: tenant, RobotID: robot}
		for i := range lines {
			b.Lines = append(b.Lines, &db.RobotLog{ID: id*1000 + int64(i), TenantID: tenant, RobotID: robot})
		}
		return Update{Kind: KindLog, Op: "CREATED", Key: uuid.NewString(), Version: id, Value: b}
	}
	sub := h.Subscribe(SubscribeOptions{Kind: KindLog, Tenant: tenant, Principal: p, Append: true, Lossy: true, Limit: 2,
		Weight: func(u Update) int { return u.Value.(*db.LogBatch).Len() }})
	defer sub.Close()

	for i := range int64(5) {
		sub.offer(batch(i+1, int(i+1))) // 1..5 lines; batches 3, 4 and 5 do not fit
	}
	got := sub.Take()
	require.Len(t, got, 3)
	require.Equal(t, []int64{1, 2}, []int64{got[0].Version, got[1].Version})
	require.Equal(t, OpMissed, got[2].Op)
	require.EqualValues(t, 3+4+5, got[2].Version, "the lines of the dropped batches")
	select {
	case <-sub.Done():
		require.FailNow(t, "a lossy subscriber is not ended", "%v", sub.Err())
	default:
	}

	sub.offer(batch(6, 1))
	got = sub.Take()
	require.Len(t, got, 1, "the notice is given once")
	require.EqualValues(t, 6, got[0].Version)

	// A batch the subscriber may not see is neither queued nor counted.
	other := batch(7, 9)
	other.Value.(*db.LogBatch).TenantID = uuid.New()
	sub.offer(other)
	sub.offer(batch(8, 1))
	sub.offer(batch(9, 1))
	sub.offer(batch(10, 1))
	got = sub.Take()
	require.Len(t, got, 3)
	require.EqualValues(t, 1, got[2].Version)

	// A subscriber that is not lossy is ended instead.
	strict := h.Subscribe(SubscribeOptions{Kind: KindLog, Tenant: tenant, Principal: p, Append: true, Limit: 1})
	defer strict.Close()
	strict.offer(batch(11, 1))
	strict.offer(batch(12, 1))
	<-strict.Done()
	require.ErrorIs(t, strict.Err(), ErrTooSlow)
}

// A log batch is visible to its tenant's people and to its own robot only,
// and not at all when one of its lines is of another robot or tenant.
func TestLogBatchVisibility(t *testing.T) {
	t.Parallel()
	tenant, robot := uuid.New(), uuid.New()
	b := &db.LogBatch{TenantID: tenant, RobotID: robot, Lines: []*db.RobotLog{{TenantID: tenant, RobotID: robot}}}
	u := Update{Kind: KindLog, Op: "CREATED", Value: b}
	require.True(t, visible(&auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser}, KindLog, u))
	require.True(t, visible(&auth.Principal{TenantID: tenant, RobotID: robot, Role: auth.RoleRobot}, KindLog, u))
	require.False(t, visible(&auth.Principal{TenantID: tenant, RobotID: uuid.New(), Role: auth.RoleRobot}, KindLog, u))
	require.False(t, visible(&auth.Principal{TenantID: uuid.New(), Role: auth.RoleService}, KindLog, u))
	require.False(t, visible(nil, KindLog, u))
	require.False(t, visible(&auth.Principal{TenantID: tenant, Role: auth.RoleService}, "logs", u), "an unknown kind is visible to no one")
	b.Lines = append(b.Lines, &db.RobotLog{TenantID: tenant, RobotID: uuid.New()})
	require.False(t, visible(&auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser}, KindLog, u))
	require.False(t, visible(&auth.Principal{TenantID: tenant, Role: auth.RoleUser}, KindLog, Update{Kind: KindLog, Op: "CREATED", Value: &db.Robot{TenantID: tenant, ID: robot}}))
}
