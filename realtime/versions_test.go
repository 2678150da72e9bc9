package realtime

import (
	"strconv"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
)

// A subscriber keeps no state that grows with what it was sent: once it
// has taken its updates it holds no per-key map, and the topic's table of
// versions sent stays within its bound.
func TestSubscriberStateDoesNotGrow(t *testing.T) {
	t.Parallel()
	tenant := uuid.New()
	h := &Hub{queueLimit: 1000, topics: map[topic]*topicState{}}
	p := &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser}
	sub := h.Subscribe(SubscribeOptions{Kind: KindJob, Tenant: tenant, Principal: p})
	defer sub.Close()
	for round := range 3 {
		for range 500 {
			id := uuid.New()
			sub.offer(Update{Kind: KindJob, Op: "CREATED", Key: id.String(), Version: int64(round + 1), Value: &db.Job{ID: id, TenantID: tenant}})
		}
		require.Len(t, sub.Take(), 500)
		sub.mu.Lock()
		require.Nil(t, sub.pending, "no coalescing index once the queue is empty")
		sub.mu.Unlock()
	}

	st := h.topics[topic{KindJob, tenant}]
	for i := range sentLimit + 10 {
		require.True(t, st.markSent(strconv.Itoa(i), 1, Change{}))
	}
	require.LessOrEqual(t, len(st.sent), sentLimit)
	require.False(t, st.markSent(strconv.Itoa(sentLimit+9), 1, Change{}), "a version sent is not sent again")
	require.True(t, st.markSent(strconv.Itoa(sentLimit+9), 2, Change{}), "a newer one is")
}

// A one-entity subscriber does not get its first state's entity again at
// that version or an older one, whether offered before or after Seed, and
// a later creation of it is news of a later state.
func TestSeedDropsOlderVersions(t *testing.T) {
	t.Parallel()
	tenant := uuid.New()
	h := &Hub{queueLimit: 1000, topics: map[topic]*topicState{}}
	p := &auth.Principal{TenantID: tenant, UserID: uuid.New(), Role: auth.RoleUser}
	sub := h.Subscribe(SubscribeOptions{Kind: KindJob, Tenant: tenant, Principal: p})
	defer sub.Close()
	id := uuid.New()
	job := func(op string, v int64) Update {
		return Update{Kind: KindJob, Op: op, Key: id.String(), Version: v, Value: &db.Job{ID: id, TenantID: tenant}}
	}
	sub.offer(job("CREATED", 1)) // before the first state was read
	sub.Seed(id.String(), 2)
	sub.offer(job("UPDATED", 2))
	require.Empty(t, sub.Take())
	sub.offer(job("CREATED", 3))
	got := sub.Take()
	require.Len(t, got, 1)
	require.Equal(t, "UPDATED", got[0].Op)
	require.EqualValues(t, 3, got[0].Version)
}
