package live_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph/live"
)

// TestIdleSocketHoldsOneGoroutine opens websockets that each hold a shared
// subscription and then wait, and counts the server's goroutines: one per
// idle socket (its reader). The upgrade's handler has returned (the socket
// is served past it, so net/http's state for the connection is gone), and
// a group's members hold none. The test's own clients do not read, so they
// hold none either. Not parallel: other tests' goroutines would blur the
// count.
//
// The server's background work (maintenance sweeps, their queries, the
// hub) starts and ends goroutines of its own meanwhile, and so does the
// test's polling: many sockets are counted against a bound of one each with
// half as many again to spare, which no such noise reaches, while a second
// goroutine per socket passes it by a margin as large.
func TestIdleSocketHoldsOneGoroutine(t *testing.T) {
	s := apitest.New(t)
	f := newFixture(t, s)
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	open := func() *websocket.Conn {
		ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.URL, "http")+"/graphql",
			&websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = ws.CloseNow() })
		require.NoError(t, wsjson.Write(ctx, ws, map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + f.user.Token}}))
		var ack msg
		require.NoError(t, wsjson.Read(ctx, ws, &ack))
		require.Equal(t, "connection_ack", ack.Type)
		require.NoError(t, wsjson.Write(ctx, ws, map[string]any{"id": "1", "type": "subscribe",
			"payload": map[string]any{"query": allMachinesSub}}))
		return ws
	}
	members := func(n int) {
		t.Helper()
		require.Eventually(t, func() bool { return s.Handler.Fanout.Stats().Members == n }, wait, 5*time.Millisecond)
	}
	// The first socket starts the group (its execution, its hub
	// subscription); the baseline is taken with it.
	open()
	members(1)
	base := runtime.NumGoroutine()

	const n = 100
	for range n {
		open()
	}
	members(n + 1)
	// Goroutines that end on their own (the handlers' returns, the
	// short-lived ones that acted on each message) are given time to.
	var got int
	require.Eventually(t, func() bool {
		got = runtime.NumGoroutine() - base
		return got <= n+n/2
	}, wait, 10*time.Millisecond, "%d idle sockets hold %d goroutines: at most one each", n, got)
}

// TestSocketKeepsBytesSentWithTheUpgrade sends the upgrade request and the
// first websocket message in one write, before the server has answered:
// the message, already in the server's read buffer when the connection is
// handed over, is still read, and answered.
func TestSocketKeepsBytesSentWithTheUpgrade(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	f := newFixture(t, s)
	nc, err := net.DialTimeout("tcp", strings.TrimPrefix(s.URL, "http://"), wait)
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(wait)))
	init, err := json.Marshal(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + f.user.Token}})
	require.NoError(t, err)
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	upgrade := fmt.Sprintf("GET /graphql HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n",
		strings.TrimPrefix(s.URL, "http://"), base64.StdEncoding.EncodeToString(key))
	_, err = nc.Write(append([]byte(upgrade), maskedTextFrame(init)...))
	require.NoError(t, err)

	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	payload := live.ReadServerFrame(t, br)
	var ack msg
	require.NoError(t, json.Unmarshal(payload, &ack), "frame %q", payload)
	require.Equal(t, "connection_ack", ack.Type)
}

// maskedTextFrame is a client's text frame (RFC 6455 5.2) of payload.
func maskedTextFrame(payload []byte) []byte {
	frame := []byte{0x81}
	switch n := len(payload); {
	case n < 126:
		frame = append(frame, 0x80|byte(n))
	default:
		frame = append(frame, 0x80|126, byte(n>>8), byte(n))
	}
	mask := []byte{0x12, 0x34, 0x56, 0x78}
	frame = append(frame, mask...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	return frame
}

// TestSubscriptionKeepsNoExtensions subscribes with a message padded to
// about a megabyte in its extensions (within MaxDocumentElements), which
// decode to megabytes of maps, and measures the heap the subscription keeps once it runs: less
// than the message itself (a persisted query's hash is read as the
// subscription is created; nothing needs its extensions after). Not
// parallel: other tests would blur the heap.
func TestSubscriptionKeepsNoExtensions(t *testing.T) {
	s := apitest.New(t)
	f := newFixture(t, s)
	c := connect(t, s, f.user.Token)
	c.subscribe("first", machineSub, map[string]any{"id": f.machine})
	require.Equal(t, "CURRENT", machineChange(t, c.readFor("first")).Op)

	query, err := json.Marshal(machineSub)
	require.NoError(t, err)
	message := []byte(`{"id":"padded","type":"subscribe","payload":{"query":` + string(query) + `,"variables":{"id":"` + f.machine +
		`"},"extensions":{"pad":[` + strings.Repeat(`{"k":"0123456789"},`, 50_000) + `{}]}}}`)
	before := liveHeap()
	c.sendRaw(websocket.MessageText, message)
	require.Equal(t, "CURRENT", machineChange(t, c.readFor("padded")).Op)
	kept := liveHeap() - before
	runtime.KeepAlive(message)
	require.Less(t, kept, int64(len(message)), "a subscription sent in %d bytes keeps %d", len(message), kept)
}

// TestIdleSubscriptionsHoldNoResult: twenty subscriptions, each of whose
// current states (3.6 MB) the client read, hold next to nothing between
// changes. gqlgen's executor kept one buffer per subscription, as large
// as its largest result, for the subscription's life: they held 79 MiB.
// Not parallel: other tests would blur the heap.
func TestIdleSubscriptionsHoldNoResult(t *testing.T) {
	s := apitest.New(t)
	u := s.NewUser(t, uuid.New())
	m := bigMachine(t, s, u.Token, 60)
	_, br, send := rawSocket(t, s, map[string]any{"Authorization": "Bearer " + u.Token})
	before := liveHeap()
	const subs = 20
	for i := range subs { // one at a time: each current state read before the next
		send(map[string]any{"id": fmt.Sprint(i), "type": "subscribe", "payload": map[string]any{
			"query":     `subscription($m: ID!) { machineUpdated(id: $m) { version machine { events(first: 60) { edges { node { details } } } } } }`,
			"variables": map[string]any{"m": m}}})
		for {
			var got msg
			require.NoError(t, json.Unmarshal(live.ReadServerFrame(t, br), &got))
			require.NotEqual(t, "error", got.Type, "%s", got.Payload)
			if got.Type == "next" {
				break
			}
		}
	}
	held := settledHeap(t, func() bool { return true }) - before
	require.Less(t, held, int64(16<<20), "%d idle subscriptions, every result read, hold %d MiB", subs, held>>20)
}

// TestASubscribeWhileTheSocketShutsHoldsNothing: a robot's subscribe is
// still being handled (its key re-check waits on the database) when the
// socket is shut by another path, here a keep-alive write failing after
// the client reset the connection. The subscription used to be added after
// shut had ended every operation, and so held the robot's only place of
// MAX_SUBSCRIPTIONS_PER_PRINCIPAL, a hub subscriber and a fan-out member
// until an event's write failed: for robotUpdated, maybe never.
func TestASubscribeWhileTheSocketShutsHoldsNothing(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Metrics: true, KeepAlive: 100 * time.Millisecond, LiveLimits: live.Limits{PerPrincipal: 1}})
	robot := apitest.NewTenant(t, s).CreateRobot(t, "r", apitest.RobotOpts{})
	const sub = `subscription { robotUpdated { op id } }`
	gauge := func(name string) float64 {
		mfs, err := s.Metrics.Registry().Gather()
		require.NoError(t, err)
		var v float64
		for _, mf := range mfs {
			if mf.GetName() == name {
				for _, m := range mf.GetMetric() {
					v += m.GetGauge().GetValue()
				}
			}
		}
		return v
	}

	// A socket on a bare connection, so that it can end with an RST.
	nc, _, send := rawSocket(t, s, map[string]any{"apiKey": robot.Key})

	release := s.LockTable(t, "api_keys")
	send(map[string]any{"id": "held", "type": "subscribe", "payload": map[string]any{"query": sub}})
	apitest.Eventually(t, wait, "the subscribe's key re-check waits for the lock", func() bool { return s.LockWaiters(t, "%api_keys%") > 0 })
	require.NoError(t, nc.(*net.TCPConn).SetLinger(0))
	require.NoError(t, nc.Close()) // an RST: the next keep-alive's write fails
	apitest.Eventually(t, wait, "the socket shuts", func() bool { return strings.Contains(s.Log.String(), "websocket keep-alive failed") })
	release()
	// The subscribe ends: dropped (now), or registered on the closed
	// socket (before).
	apitest.Eventually(t, wait, "the held subscribe ends", func() bool {
		return strings.Contains(s.Log.String(), "websocket operation dropped") || gauge("fleetgraph_hub_subscribers") > 0
	})

	// The robot's one place comes back: a new socket's subscription is
	// taken (answered by the pong after it, not by a refusal).
	c := dial(t, s, "graphql-transport-ws")
	c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"apiKey": robot.Key}})
	require.Equal(t, "connection_ack", c.read().Type)
	reply := func() msg { // the next message that is not the server's keep-alive, within one deadline
		deadline := time.Now().Add(wait)
		m := c.readUntil(deadline)
		for m.Type == "ping" {
			m = c.readUntil(deadline)
		}
		return m
	}
	deadline := time.Now().Add(wait)
	for i := 0; ; i++ {
		id := fmt.Sprint("next-", i)
		c.subscribe(id, sub, nil)
		c.send(map[string]any{"type": "ping"})
		m := reply()
		if m.Type == "pong" {
			break
		}
		require.Equal(t, id, m.ID, "%+v %s", m, m.Payload)
		require.Equal(t, "RATE_LIMITED", m.errors(t)[0].code(), "%s", m.Payload)
		require.True(t, time.Now().Before(deadline), "the shut socket's subscription still holds the robot's place")
		require.Equal(t, "pong", reply().Type)
	}
	require.Equal(t, 1.0, gauge("fleetgraph_hub_subscribers"), "one subscriber: the new socket's")
}

// A key check the database cannot answer (here: its table locked) ends
// after the authenticator's bound, as an outage does: a request gets its
// 500, a connection_init its close with "try again later", instead of
// holding the socket, its place and its reader while the database stays
// blocked.
func TestAKeyCheckTheDatabaseCannotAnswerEnds(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{KeyCheckTimeout: 300 * time.Millisecond})
	robot := apitest.NewTenant(t, s).CreateRobot(t, "r", apitest.RobotOpts{})
	release := s.LockTable(t, "api_keys")
	defer release()

	resp := s.Do(t, robot.Key, `{ me { role } }`, nil)
	require.Equal(t, http.StatusInternalServerError, resp.Status, "%s", resp.Raw)
	resp.Code(t, "INTERNAL")

	c := dial(t, s, "graphql-transport-ws")
	c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"apiKey": robot.Key}})
	reason := c.requireClosed(live.CloseTryAgainLater)
	require.Contains(t, reason, "Try again later")

	release()
	// The key check keeps its 300 ms bound after the release, and a
	// stalled machine can still run it out (INTERNAL, as an outage):
	// retry until the database answers in time. A failed read costs
	// nothing against the key lookup limit (only refused keys are
	// charged), so the retries cannot make it RATE_LIMITED.
	apitest.Eventually(t, time.Minute, "the key check passes again", func() bool {
		resp := s.Do(t, robot.Key, `{ me { role } }`, nil)
		if len(resp.Errors) > 0 && resp.Errors[0].Code() == "INTERNAL" {
			return false
		}
		resp.OK(t, nil)
		return true
	})
}

// A subscription's resolver (it subscribes and reads the machine's first
// state) runs in a turn, as a query does: with one turn, held by a query
// waiting on a lock, the subscribe waits for it, and its first state comes
// once the query is done. Subscribes once ran outside the turns, and one
// caller's sockets subscribing in a loop held all of the pool.
func TestASubscribeTakesATurn(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Metrics: true, Running: 1})
	u := s.NewUser(t, uuid.New())
	var m struct{ CreateMachine struct{ ID string } }
	s.Do(t, u.Token, `mutation { createMachine(input: {name: "m"}) { id } }`, nil).OK(t, &m)
	waiting := func() float64 {
		mfs, err := s.Metrics.Registry().Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() == "fleetgraph_graphql_operations_waiting" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return 0
	}

	release := s.LockTable(t, "robots")
	query := make(chan *apitest.Response, 1)
	go func() { query <- s.Do(t, u.Token, `{ robots { totalCount } }`, nil) }()
	// The query's own statement: the maintenance runner's offline sweep
	// (WITH "silent" AS (SELECT ... FROM "robots" ...) UPDATE ...) waits on
	// the locked table too, and "%robots%" counted it before the query
	// held the turn.
	apitest.Eventually(t, wait, "the query holds the turn, waiting on the lock", func() bool { return s.LockWaiters(t, `SELECT%FROM "robots"%`) > 0 })

	c := connect(t, s, u.Token)
	c.subscribe("m", `subscription($id: ID!) { machineUpdated(id: $id) { op id } }`, map[string]any{"id": m.CreateMachine.ID})
	apitest.Eventually(t, wait, "the subscribe waits for a turn", func() bool { return waiting() == 1 })
	release()
	first := c.read()
	require.Equal(t, "next", first.Type, "%s", first.Payload)
	require.Contains(t, string(first.Payload), `"op":"CURRENT"`)
	(<-query).OK(t, nil)
}

// SSE and multipart streams count toward MAX_WEBSOCKETS with the
// websockets: each holds a connection and two goroutines, and a few
// callers' PerPrincipal streams could otherwise take every file the
// process has.
func TestStreamsShareTheProcesssPlaces(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{LiveLimits: live.Limits{Sockets: 1}})
	u := s.NewUser(t, uuid.New())
	const sub = `subscription { machineUpdated { op } }`

	stream := postSSE(t, s, u.Token, sub, nil)
	require.Equal(t, http.StatusOK, stream.StatusCode)

	refused := postSSE(t, s, u.Token, sub, nil)
	require.Equal(t, http.StatusServiceUnavailable, refused.StatusCode)
	require.NotEmpty(t, refused.Header.Get("Retry-After"))
	body, err := io.ReadAll(refused.Body)
	require.NoError(t, err)
	require.Contains(t, string(body), "MAX_WEBSOCKETS")
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	_, res, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(s.URL, "http")+"/graphql",
		&websocket.DialOptions{Subprotocols: []string{"graphql-transport-ws"}})
	require.Error(t, err, "the stream holds the process's one place")
	require.Equal(t, http.StatusServiceUnavailable, res.StatusCode)

	require.NoError(t, stream.Body.Close())
	apitest.Eventually(t, wait, "the ended stream's place comes back", func() bool {
		res := postSSE(t, s, u.Token, sub, nil)
		defer res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
}

// TestASocketThatStopsReadingHoldsFewResults: a client that sends twenty
// subscriptions and twenty queries of one machine (3.6 MB each) and
// reads nothing makes the server hold few of their results: past the
// socket's SocketResultBytes its operations wait for the client before
// they run, and once it reads, every result arrives, none refused. Each
// rendered its result and waited for the writer: forty queries held 133
// MiB on one socket, and subscriptions past the bound were ended rather
// than made to wait. Then thirty shared subscriptions (groups of their own, by
// their selections) of the machine: past twice the bound, a member's
// result ends it SLOW_CONSUMER, as its group cannot wait for it. Not
// parallel: other tests would blur the heap.
func TestASocketThatStopsReadingHoldsFewResults(t *testing.T) {
	const turns = 4
	s := apitest.New(t, apitest.Options{Metrics: true, Running: turns})
	u := s.NewUser(t, uuid.New())
	m := bigMachine(t, s, u.Token, 60)
	metric := func(name, label string) float64 {
		mfs, err := s.Metrics.Registry().Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() == name {
				for _, m := range mf.GetMetric() {
					if label == "" || m.GetLabel()[0].GetValue() == label {
						if m.GetGauge() != nil {
							return m.GetGauge().GetValue()
						}
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return 0
	}
	// 8 MiB waiting, and the results rendering in the turns and being
	// written, each as its rows (a query's loaders keep them until it is
	// written) and as its encoding.
	const held = 2*8<<20 + (turns+2)*2*3_600_000
	read := func(br *bufio.Reader, n int) (next, errs int) {
		for next+errs < n {
			var got msg
			require.NoError(t, json.Unmarshal(live.ReadServerFrame(t, br), &got))
			switch got.Type {
			case "next":
				next++
			case "error":
				require.Contains(t, string(got.Payload), "SLOW_CONSUMER")
				errs++
			}
		}
		return next, errs
	}

	_, br, send := rawSocket(t, s, map[string]any{"Authorization": "Bearer " + u.Token})
	before := liveHeap()
	const ops = 40
	for i := range ops {
		query := `subscription($m: ID!) { machineUpdated(id: $m) { version machine { events(first: 60) { edges { node { details } } } } } }`
		if i%2 == 1 {
			query = `query($m: ID!) { machine(id: $m) { events(first: 60) { edges { node { details } } } } }`
		}
		send(map[string]any{"id": fmt.Sprint(i), "type": "subscribe", "payload": map[string]any{
			"query": query, "variables": map[string]any{"m": m}}})
	}
	require.Less(t, settledHeap(t, func() bool { return metric("fleetgraph_websocket_operations_waiting_for_client", "") >= ops-12 })-before,
		int64(held), "a socket whose client reads nothing")
	next, errs := read(br, ops)
	require.Equal(t, ops, next, "every result, once the client reads")
	require.Zero(t, errs)

	_, br, send = rawSocket(t, s, map[string]any{"Authorization": "Bearer " + u.Token})
	const shared = 30
	for i := range shared {
		send(map[string]any{"id": fmt.Sprint(i), "type": "subscribe", "payload": map[string]any{
			"query": fmt.Sprintf(`subscription { machineUpdated { version machine { events(first: %d) { edges { node { details } } } } } }`, 31+i%30)}})
	}
	send(map[string]any{"type": "ping"}) // subscribed once the pong comes
	for {
		var got msg
		require.NoError(t, json.Unmarshal(live.ReadServerFrame(t, br), &got))
		if got.Type == "pong" {
			break
		}
	}
	before = liveHeap()
	slow, renders := metric("fleetgraph_graphql_errors_total", "RATE_LIMITED"), metric("fleetgraph_live_shared_renders_total", "")
	s.Do(t, u.Token, `mutation($m: ID!) { updateMachine(id: $m, input: {name: "renamed"}) { id } }`, map[string]any{"m": m}).OK(t, nil)
	require.Less(t, settledHeap(t, func() bool {
		return metric("fleetgraph_live_shared_renders_total", "")-renders >= shared && // every group rendered
			metric("fleetgraph_graphql_errors_total", "RATE_LIMITED")-slow >= shared-12 // results of 1.9 to 3.6 MB past 16 MiB
	})-before, int64(held+8<<20), "shared results on a socket whose client reads nothing (twice the bound)")
	next, errs = read(br, shared)
	require.Equal(t, shared, next+errs)
	require.Positive(t, next)
}

// A client that reads as fast as it can gets every result, however large:
// thirty subscriptions of one machine, with results of 1.9 to 3.6 MB,
// rendered faster than one socket writes, and some of them were ended as
// slow consumers though the client read everything.
func TestAReadingClientGetsEveryResult(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	u := s.NewUser(t, uuid.New())
	m := bigMachine(t, s, u.Token, 60)
	_, br, send := rawSocket(t, s, map[string]any{"Authorization": "Bearer " + u.Token})
	const subs = 30
	for i := range subs {
		send(map[string]any{"id": fmt.Sprint(i), "type": "subscribe", "payload": map[string]any{
			"query":     fmt.Sprintf(`subscription($m: ID!) { machineUpdated(id: $m) { version machine { events(first: %d) { edges { node { details } } } } } }`, 31+i),
			"variables": map[string]any{"m": m}}})
	}
	for next := 0; next < subs; {
		frame := live.ReadServerFrame(t, br)
		head := string(frame[:min(len(frame), 64)]) // the type is near the start
		require.NotContains(t, head, `"type":"error"`, "%.300s", frame)
		if strings.Contains(head, `"type":"next"`) {
			next++
		}
	}
}

// A query's or mutation's answer waits for the socket's writer whatever
// the socket holds: it has run, and a mutation committed. Refused past the
// socket's bound (SLOW_CONSUMER), a mutation sent while a 9 MB answer was
// being written committed and told its client it had failed.
func TestAnAnswerWaitsForABusySocket(t *testing.T) {
	t.Parallel()
	s := apitest.New(t, apitest.Options{Metrics: true})
	u := s.NewUser(t, uuid.New())
	m := bigMachine(t, s, u.Token, 150)
	_, br, send := rawSocket(t, s, map[string]any{"Authorization": "Bearer " + u.Token})

	send(map[string]any{"id": "big", "type": "subscribe", "payload": map[string]any{
		"query":     `query($m: ID!) { machine(id: $m) { events(first: 150) { edges { node { details } } } } }`,
		"variables": map[string]any{"m": m},
	}})
	// Read up to the header of the big result's frame: the server is
	// writing it. Then pause reading.
	var size int
	for {
		var h [2]byte
		_, err := io.ReadFull(br, h[:])
		require.NoError(t, err)
		if n := int(h[1] & 0x7f); n < 126 {
			_, err = io.ReadFull(br, make([]byte, n)) // a ping
			require.NoError(t, err)
			continue
		} else if n == 126 {
			var l [2]byte
			_, err = io.ReadFull(br, l[:])
			require.NoError(t, err)
			size = int(l[0])<<8 | int(l[1])
		} else {
			var l [8]byte
			_, err = io.ReadFull(br, l[:])
			require.NoError(t, err)
			for _, b := range l {
				size = size<<8 | int(b)
			}
		}
		break
	}
	require.Greater(t, size, live.SocketResultBytes)

	send(map[string]any{"id": "mut", "type": "subscribe", "payload": map[string]any{
		"query": `mutation { createMachine(input: {name: "after"}) { id name } }`,
	}})
	apitest.Eventually(t, wait, "the mutation committed", func() bool {
		var n int
		require.NoError(t, s.DB.NewRaw("SELECT count(*) FROM machines WHERE name = 'after'").Scan(t.Context(), &n))
		return n == 1
	})
	// The client reads again: the big result, then the mutation's answer.
	_, err := io.ReadFull(br, make([]byte, size))
	require.NoError(t, err)
	for {
		var got msg
		require.NoError(t, json.Unmarshal(live.ReadServerFrame(t, br), &got))
		if got.ID != "mut" {
			continue
		}
		require.Equal(t, "next", got.Type, "the committed mutation's answer: %s", got.Payload)
		return
	}
}

// rawSocket opens a graphql-transport-ws socket on a bare connection, so
// that a test can stop reading it (or end it with an RST), and
// acknowledges it with init's payload: the connection, its reader (past
// the ack) and a sender of client frames.
func rawSocket(t *testing.T, s *apitest.Server, init map[string]any) (net.Conn, *bufio.Reader, func(any)) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", strings.TrimPrefix(s.URL, "http://"), wait)
	require.NoError(t, err)
	t.Cleanup(func() { _ = nc.Close() })
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	_, err = fmt.Fprintf(nc, "GET /graphql HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n",
		strings.TrimPrefix(s.URL, "http://"), base64.StdEncoding.EncodeToString(key))
	require.NoError(t, err)
	send := func(v any) {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		_, err = nc.Write(maskedTextFrame(b))
		require.NoError(t, err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	send(map[string]any{"type": "connection_init", "payload": init})
	// Keep-alive pings may come first on a busy machine.
	var ack msg
	for ack.Type == "" || ack.Type == "ping" {
		require.NoError(t, json.Unmarshal(live.ReadServerFrame(t, br), &ack))
	}
	require.Equal(t, "connection_ack", ack.Type)
	return nc, br, send
}

// bigMachine creates a machine of token's with events of 60 KB each: its
// events(first: events) { details } renders 60 KB per event.
func bigMachine(t *testing.T, s *apitest.Server, token string, events int) string {
	t.Helper()
	var m struct{ CreateMachine struct{ ID string } }
	s.Do(t, token, `mutation { createMachine(input: {name: "big"}) { id } }`, nil).OK(t, &m)
	blob := strings.Repeat("x", 60_000)
	for range events {
		s.Do(t, token, `mutation($m: ID!, $d: JSON) { logMachineEvent(machineId: $m, eventType: "note", details: $d) { id } }`,
			map[string]any{"m": m.CreateMachine.ID, "d": map[string]any{"blob": blob}}).OK(t, nil)
	}
	return m.CreateMachine.ID
}

// liveHeap is the heap's live bytes, after a collection.
func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// settledHeap waits until ready holds and the live heap has stayed within
// a MiB over five readings (20 ms apart): no result is being rendered. It
// returns the last reading.
func settledHeap(t *testing.T, ready func() bool) int64 {
	t.Helper()
	var readings []int64
	apitest.Eventually(t, wait, "the heap settles", func() bool {
		if !ready() {
			return false
		}
		readings = append(readings, liveHeap())
		if len(readings) < 5 {
			return false
		}
		last := readings[len(readings)-5:]
		return slices.Max(last)-slices.Min(last) < 1<<20
	})
	return readings[len(readings)-1]
}
