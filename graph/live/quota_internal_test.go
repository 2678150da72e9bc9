package live

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

// Every per-address quota of the live transports counts an IPv6 /64 as one
// client: an anonymous caller's subscriptions and streams, its sockets
// waiting for connection_init and its sockets initialised without a
// credential. Keyed by the full address, one host with a /64 had no limit.
func TestQuotasKeyIPv6ByItsSlash64(t *testing.T) {
	q := NewQuota(Limits{PerPrincipal: 1, SocketsPerCaller: 1, Sockets: 100})
	from := func(ip string) context.Context { return auth.WithClientIP(context.Background(), ip) }

	release, err := q.Hold(from("2001:db8:1:2::1"))
	require.NoError(t, err)
	defer release()
	_, err = q.Hold(from("2001:db8:1:2::2"))
	require.True(t, fault.Has(err, fault.RateLimited), "another address of the /64: %v", err)
	other, err := q.Hold(from("2001:db8:1:3::1"))
	require.NoError(t, err, "another /64")
	other()

	for i := range PendingPerAddress {
		_, _, err := q.OpenSocket(pendingKey(fmt.Sprintf("2001:db8:1:2::%x", i+1)))
		require.NoError(t, err)
	}
	_, perCaller, err := q.OpenSocket(pendingKey("2001:db8:1:2::ffff"))
	require.True(t, fault.Has(err, fault.RateLimited), "pending sockets of the /64: %v", err)
	require.True(t, perCaller)

	first, _, err := q.OpenSocket(pendingKey("2001:db8:9:9::1"))
	require.NoError(t, err)
	require.NoError(t, first.Move(callerKey(nil, "2001:db8:9:9::1")))
	second, _, err := q.OpenSocket(pendingKey("2001:db8:9:9::2"))
	require.NoError(t, err)
	err = second.Move(callerKey(nil, "2001:db8:9:9::2"))
	require.True(t, fault.Has(err, fault.RateLimited), "anonymous sockets of the /64: %v", err)
}

// A socket has room for another result while less than SocketResultBytes
// of its results, and less than CallerResultBytes of its caller's
// sockets', wait for their writers; an operation without room waits
// (AwaitRoom) until the writer takes enough. A shared group's member is
// refused past twice the bounds, unless its socket holds nothing. Held
// bytes move with the socket to its caller.
func TestResultsWaitingForASocketAreBounded(t *testing.T) {
	q := NewQuota(Limits{Sockets: 1000})
	open := func(key string) *SocketPlace {
		t.Helper()
		p, _, err := q.OpenSocket(key)
		require.NoError(t, err)
		return p
	}
	room := func(p *SocketPlace) bool { return HasRoom(WithPlace(context.Background(), p)) }
	const mib = 1 << 20
	a := open("user/a")
	require.True(t, room(a))
	a.Hold(20 * mib)
	require.False(t, room(a), "a result larger than the bound waits; nothing more runs")

	// A waiter gets room once the writer takes the result, not before.
	got := make(chan bool, 1)
	go func() { got <- AwaitRoom(WithPlace(context.Background(), a)) }()
	select {
	case <-got:
		require.FailNow(t, "room while 20 MiB wait")
	case <-time.After(10 * time.Millisecond):
	}
	a.Release(20 * mib)
	require.True(t, <-got)
	for range 7 {
		a.Hold(mib)
		require.True(t, room(a))
	}
	a.Hold(mib)
	require.False(t, room(a), "the socket's 8 MiB")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.False(t, AwaitRoom(WithPlace(ctx, a)), "a waiter whose operation ended")
	for range 8 {
		a.Release(mib)
	}
	require.Empty(t, q.waiting, "given back, nothing is counted")
	require.True(t, a.holdShared(20*mib), "a member's result alone on its socket")
	require.False(t, a.holdShared(1), "nothing more past twice the bound")
	require.True(t, a.holdShared(-mib), "a smaller result replacing a larger one")
	a.Release(19 * mib)

	// The caller's sockets together: 64 MiB, whatever each holds.
	var socks []*SocketPlace
	for range 8 {
		p := open("user/b")
		p.Hold(8 * mib)
		socks = append(socks, p)
	}
	late := open("user/b")
	require.False(t, room(late), "the caller's 64 MiB")
	require.True(t, room(open("user/c")), "another caller's sockets are not counted")
	socks[0].Release(8 * mib)
	require.True(t, room(late))

	// A pending socket's held bytes move to the caller it becomes.
	p := open(pendingKey("192.0.2.1"))
	p.Hold(mib)
	require.NoError(t, p.Move("user/d"))
	require.Equal(t, map[string]int{"user/b": 7 * 8 * mib, "user/d": mib}, q.waiting)

	// A closed socket's bytes leave its caller's count at once, and come
	// back from its operations as they end without counting twice.
	p.Close()
	require.Equal(t, map[string]int{"user/b": 7 * 8 * mib}, q.waiting)
	p.Release(mib)
	require.Equal(t, map[string]int{"user/b": 7 * 8 * mib}, q.waiting)
}

// A caller's waiters for room are woken by its own releases, not by every
// release of every caller: the fan-out releases on each delivery, and each
// woke every parked operation of the process, which took the quota's lock
// to find nothing changed.
func TestAnotherCallersReleaseWakesNoWaiter(t *testing.T) {
	q := NewQuota(Limits{Sockets: 1000})
	x, _, err := q.OpenSocket("tenant/x")
	require.NoError(t, err)
	y, _, err := q.OpenSocket("tenant/y")
	require.NoError(t, err)
	x.Hold(SocketResultBytes) // x's client reads nothing: its operations wait
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const waiters = 20
	done := make(chan bool, waiters)
	for range waiters {
		go func() { done <- AwaitRoom(WithPlace(ctx, x)) }()
	}
	parked := func() *roomWaiters {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.rooms["tenant/x"]
	}
	require.Eventually(t, func() bool { w := parked(); return w != nil && w.n == waiters }, time.Minute, time.Millisecond)
	w := parked()
	for range 20 { // y's deliveries
		y.Hold(1000)
		y.Release(1000)
	}
	select {
	case <-w.ch:
		require.FailNow(t, "another caller's release woke x's waiters")
	default:
	}
	require.Same(t, w, parked())
	x.Release(SocketResultBytes)
	for range waiters {
		require.True(t, <-done, "x's own release gives its waiters room")
	}
}
