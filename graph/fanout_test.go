package graph_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/graph/live"
)

// Tests of shared rendering (live.Fanout): subscribers with the same
// operation, variables and visibility class share one execution, and each
// gets the shared bytes in its own envelope; any difference in class or
// variables means a group of its own.

// fanJobs is the all-jobs document every shared subscriber here sends.
const fanJobs = `subscription($f: JobUpdateFilter) { jobUpdated(filter: $f) { op id revision job { id status input } } }`

// fanMachines is the all-machines document.
const fanMachines = `subscription { machineUpdated { op id machine { id name } } }`

// fanStats waits, with a deadline, until the server's fanout holds groups
// groups of members members in all.
func fanStats(t *testing.T, s *apitest.Server, groups, members int) live.FanoutStats {
	t.Helper()
	var st live.FanoutStats
	require.Eventually(t, func() bool {
		st = s.Handler.Fanout.Stats()
		return st.Groups == groups && st.Members == members
	}, lvWait, 5*time.Millisecond, "expected %d groups of %d members", groups, members)
	return st
}

// fanRead reads c's messages until want has held for one message of each
// of ids, and returns those; messages want refuses (earlier changes,
// probes) are passed over, and a message of another operation fails.
func fanRead(t *testing.T, c *lvConn, want func(lvMsg) bool, ids ...string) map[string]lvMsg {
	t.Helper()
	got := map[string]lvMsg{}
	for len(got) < len(ids) {
		m, ok := c.recv(lvWait)
		require.True(t, ok, "no message for %v within %v (have %v)", ids, lvWait, got)
		require.Contains(t, ids, m.ID, "unexpected %+v %s", m, m.Payload)
		if _, done := got[m.ID]; !done && want(m) {
			got[m.ID] = m
		}
	}
	return got
}

// fanCollect reads c's messages (of any operation) up to and including
// the first that until accepts.
func fanCollect(t *testing.T, c *lvConn, until func(lvMsg) bool) []lvMsg {
	t.Helper()
	var out []lvMsg
	for {
		m, ok := c.recv(lvWait)
		require.True(t, ok, "no message within %v (after %d)", lvWait, len(out))
		out = append(out, m)
		if until(m) {
			return out
		}
	}
}

// fanJob tells the `next` messages about job id.
func fanJob(id string) func(lvMsg) bool {
	return func(m lvMsg) bool { return m.Type == "next" && m.field("id") == id }
}

// fanFence enqueues a job in tn and waits until every (connection,
// operations) listed has received it: the hub and every group take changes
// in order, so whatever was committed before has then been rendered.
func fanFence(t *testing.T, tn *lvTenant, subs map[*lvConn][]string) {
	t.Helper()
	j := tn.enqueue(tn.wf, map[string]any{"input": map[string]any{"fence": true}})
	for c, ids := range subs {
		fanRead(t, c, fanJob(j.ID), ids...)
	}
}

// fanLive makes a group live (its hub subscription registered): it
// enqueues jobs until op id on c sees one.
func fanLive(t *testing.T, tn *lvTenant, c *lvConn, id string) {
	t.Helper()
	c.sync(id, func() { tn.enqueue(tn.wf, map[string]any{"input": map[string]any{"probe": true}}) }, lvHasInput(t, "probe"))
}

func TestSharedSubscriptions(t *testing.T) {
	t.Parallel()

	t.Run("EachMemberGetsTheSharedBytesInItsEnvelope", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t)
		tn := lvNewTenant(t, s)
		other := s.NewUser(t, tn.user.Tenant) // another person of the tenant: the same class
		c1, c2 := lvConnect(t, s, tn.user.Token), lvConnect(t, s, other.Token)
		c2.subscribe("c", fanJobs, nil)
		fanStats(t, s, 1, 1)
		fanLive(t, tn, c2, "c")
		c1.subscribe("a", fanJobs, nil)
		c1.subscribe("b", fanJobs, nil)
		fanStats(t, s, 1, 3)
		// Two operations of one socket and one of another, over SSE too.
		sse := fanSSE(t, s, tn.user.Token, fanJobs)
		fanStats(t, s, 1, 4)
		fanFence(t, tn, map[*lvConn][]string{c1: {"a", "b"}, c2: {"c"}})
		before := s.Handler.Fanout.Stats().Renders

		j := tn.enqueue(tn.wf, nil)
		got := fanRead(t, c1, fanJob(j.ID), "a", "b")
		for id, m := range fanRead(t, c2, fanJob(j.ID), "c") {
			got[id] = m
		}
		payload := sse.until(t, func(data string) bool { return strings.Contains(data, j.ID) })
		for _, id := range []string{"a", "b", "c"} {
			require.Equal(t, id, got[id].ID)
			require.Equal(t, "next", got[id].Type)
			require.Equal(t, string(got["a"].Payload), string(got[id].Payload), "every member gets the same bytes")
		}
		require.Equal(t, string(got["a"].Payload), payload, "the SSE member too")
		require.Equal(t, int64(1), s.Handler.Fanout.Stats().Renders-before, "one execution for the four members")
	})

	t.Run("ClassesAndVariablesNeverShare", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t)
		a, b := lvNewTenant(t, s), lvNewTenant(t, s)
		a2 := s.NewUser(t, a.user.Tenant)
		r := a.robot("r1", 50)
		ua, ua2, ub, rc := lvConnect(t, s, a.user.Token), lvConnect(t, s, a2.Token), lvConnect(t, s, b.user.Token), lvConnect(t, s, r.Key)
		um, um2 := lvConnect(t, s, a.user.Token), lvConnect(t, s, a2.Token)

		ua.subscribe("jobs", fanJobs, nil)
		ua2.subscribe("jobs", fanJobs, nil) // the same class as ua's: one group
		ub.subscribe("jobs", fanJobs, nil)  // another tenant
		rc.subscribe("jobs", fanJobs, nil)  // a robot: only the jobs it holds
		ua.subscribe("queued", fanJobs, map[string]any{"f": map[string]any{"status": "QUEUED"}})
		um.subscribe("m", fanMachines, nil)
		um2.subscribe("m", fanMachines, nil) // machines are per owner
		fanStats(t, s, 6, 7)
		require.Equal(t, "BAD_USER_INPUT", ua2.refused("bad", fanJobs, map[string]any{"f": map[string]any{"robotId": "not-an-id"}}),
			"a variable set that cannot run fails for its subscriber alone")
		fanStats(t, s, 6, 7)

		// Every group live.
		fanLive(t, a, ua2, "jobs")
		fanLive(t, b, ub, "jobs")
		rc.sync("jobs", func() {
			p := a.enqueue(a.wf, map[string]any{"robotId": r.ID, "priority": 1000, "input": map[string]any{"probe": true}})
			r.claim(p.ID)
		}, lvHasInput(t, "probe"))
		um.sync("m", lvProbeMachines(t, s, a.user.Token), lvIsProbeMachine(t))
		um2.sync("m", lvProbeMachines(t, s, a2.Token), lvIsProbeMachine(t))

		// A job of tenant A that robot r does not hold: A's people get it,
		// in one group, then its cancellation, which the QUEUED filter's
		// group (other variables) does not get.
		j := a.enqueue(a.wf, nil)
		a.cancel(j.ID)
		fence := a.enqueue(a.wf, nil)
		// Each group's messages come in order, but two groups' messages to
		// one socket do not come in any order: the fence is awaited on both.
		fenced := map[string]bool{}
		msgs := fanCollect(t, ua, func(m lvMsg) bool {
			if m.field("id") == fence.ID {
				fenced[m.ID] = true
			}
			return fenced["queued"] && fenced["jobs"]
		})
		var jobs, queued []string
		for _, m := range msgs {
			if m.field("id") != j.ID {
				continue
			}
			if m.ID == "queued" {
				queued = append(queued, string(m.Payload))
			} else {
				jobs = append(jobs, string(m.Payload))
			}
		}
		// (Its one message may already show the job CANCELLED: the hub
		// reads the row when it delivers, and may take both changes in one
		// batch.)
		require.Len(t, queued, 1, "the QUEUED filter's group got the creation only, not the cancellation")
		require.NotEmpty(t, jobs)
		require.Contains(t, jobs[len(jobs)-1], "CANCELLED")
		fanCollect(t, ua2, func(m lvMsg) bool { return m.field("id") == fence.ID })

		// Tenant B's subscriber and the robot got nothing of it: their next
		// messages are their own.
		jb := b.enqueue(b.wf, nil)
		var bc lvJobChange
		ub.value("jobs", &bc)
		require.Equal(t, jb.ID, bc.ID, "tenant B's subscriber got nothing of tenant A")
		mine := a.enqueue(a.wf, map[string]any{"robotId": r.ID, "priority": 1000})
		r.claim(mine.ID)
		var rcChange lvJobChange
		rc.value("jobs", &rcChange)
		require.Equal(t, mine.ID, rcChange.ID, "the robot got nothing of the jobs it does not hold")
		require.Equal(t, "CLAIMED", rcChange.Job.Status)

		// Machines: each owner's group gets its own, and only its own.
		var m1, m2 struct{ CreateMachine struct{ ID string } }
		lvDo(t, s, a.user.Token, `mutation { createMachine(input: {name: "mine"}) { id } }`, nil, &m1)
		lvDo(t, s, a2.Token, `mutation { createMachine(input: {name: "theirs"}) { id } }`, nil, &m2)
		var mc lvMachineChange
		um.value("m", &mc)
		require.Equal(t, m1.CreateMachine.ID, mc.ID)
		um2.value("m", &mc)
		require.Equal(t, m2.CreateMachine.ID, mc.ID, "the other owner never got the first owner's machine")
	})

	t.Run("AMemberLeavingMidDeliveryLeavesTheOthers", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t)
		tn := lvNewTenant(t, s)
		c1, c2 := lvConnect(t, s, tn.user.Token), lvConnect(t, s, tn.user.Token)
		c1.subscribe("a", fanJobs, nil)
		c2.subscribe("b", fanJobs, nil)
		fanStats(t, s, 1, 2)
		fanLive(t, tn, c2, "b")
		fanFence(t, tn, map[*lvConn][]string{c1: {"a"}, c2: {"b"}})

		const n = 30
		ids := make(chan string, n)
		go func() {
			defer close(ids)
			for range n {
				ids <- tn.enqueue(tn.wf, nil).ID
			}
		}()
		// a leaves once its first job arrived, while the rest are sent.
		first := <-ids
		fanRead(t, c1, fanJob(first), "a")
		ctx, cancel := context.WithTimeout(t.Context(), lvWait)
		defer cancel()
		require.NoError(t, wsjson.Write(ctx, c1.ws, map[string]any{"id": "a", "type": "complete"}))
		fanRead(t, c2, fanJob(first), "b")
		for id := range ids {
			fanRead(t, c2, fanJob(id), "b")
		}
		fanStats(t, s, 1, 1)
		require.NoError(t, c2.ws.Close(1000, ""))
		fanStats(t, s, 0, 0)
		// A later subscriber starts a new group, which works.
		c3 := lvConnect(t, s, tn.user.Token)
		c3.subscribe("c", fanJobs, nil)
		fanStats(t, s, 1, 1)
		fanLive(t, tn, c3, "c")
	})
}

// TestSharedSubscriptionSlowMember: a member whose client stops reading
// falls behind alone. The group's other member gets every result in
// time, and the slow one is ended (its queue passed the limit) and leaves
// the group, without holding up the writers.
func TestSharedSubscriptionSlowMember(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	// One writer, so that only its hand-over can keep the reader served
	// while the writer is stuck on the other member; a queue long enough
	// for the reader to wait out the hand-over (slowWrite).
	s.Handler.Fanout.Writers = 1
	s.Handler.Fanout.Limit = 40 // before any subscriber: read when each one joins
	tn := lvNewTenant(t, s)
	// A client that subscribes and then never reads again.
	reader, _ := fanReaderAndSilent(t, s, tn)

	// Big results fill the stuck socket's buffers within a few dozen jobs.
	big := strings.Repeat("x", 60<<10)
	const n = 300
	ids := make([]string, 0, n)
	for i := range n {
		ids = append(ids, tn.enqueue(tn.wf, map[string]any{"input": map[string]any{"i": i, "pad": big}}).ID)
	}
	for _, id := range ids {
		fanRead(t, reader, fanJob(id), "r")
	}
	fanStats(t, s, 1, 1) // the stuck member was ended and left; the reader stays
	j := tn.enqueue(tn.wf, nil)
	fanRead(t, reader, fanJob(j.ID), "r")
}

// TestSharedSubscriptionCoalescesForASlowMember: a member that falls
// behind keeps only the newest result of each entity, as an unshared
// subscriber does: one job changing a hundred times while its client
// reads nothing never passes the member's limit (5 here), and once the
// client reads again its last message is the job's final state.
func TestSharedSubscriptionCoalescesForASlowMember(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	s.Handler.Fanout.Limit = 5 // before any subscriber: read when each one joins
	tn := lvNewTenant(t, s)
	r := tn.robot("r1", 1)
	big := strings.Repeat("x", 60<<10) // every result carries it: the socket's buffers fill fast
	j := tn.enqueue(tn.wf, map[string]any{"input": map[string]any{"pad": big}})
	l := r.claim(j.ID)
	r.start(l)

	reader, slow := fanReaderAndSilent(t, s, tn)

	// The slow client reads nothing until every update is made.
	var last lvJob
	for p := 1; p <= 100; p++ {
		last = r.progress(l, p)
	}
	require.Equal(t, 100, last.Progress)
	fanRead(t, reader, func(m lvMsg) bool {
		return fanJob(j.ID)(m) && strings.Contains(string(m.Payload), `"revision":`+strconv.Itoa(last.Revision))
	}, "r")
	fanStats(t, s, 1, 2) // still a member: never ended as slow
	for {
		m := lvReadRaw(t, slow, "the final state never came")
		require.Equal(t, "next", m.Type, "%+v %s", m, m.Payload)
		require.Equal(t, "s", m.ID)
		if m.field("id") != j.ID {
			continue // a probe, or a job before
		}
		var c lvJobChange
		m.value(t, &c)
		if c.Revision == last.Revision {
			require.Equal(t, "RUNNING", c.Job.Status)
			break
		}
		require.Less(t, c.Revision, last.Revision)
	}
}

// fanReaderAndSilent opens two members of one all-jobs group of tn's
// user: reader (id "r"), which reads everything and made the group live,
// and silent (id "s"), a raw socket that the test reads only when it
// wants to (nothing reads it meanwhile). Both take messages up to 1 MiB.
func fanReaderAndSilent(t *testing.T, s *apitest.Server, tn *lvTenant) (reader *lvConn, silent *websocket.Conn) {
	t.Helper()
	reader = lvConnect(t, s, tn.user.Token)
	reader.ws.SetReadLimit(1 << 20)
	reader.subscribe("r", fanJobs, nil)
	fanStats(t, s, 1, 1)
	fanLive(t, tn, reader, "r")
	silent = wsDial(t, s, map[string]any{"Authorization": "Bearer " + tn.user.Token}, nil)
	silent.SetReadLimit(1 << 20)
	ctx, cancel := context.WithTimeout(t.Context(), lvWait)
	defer cancel()
	require.NoError(t, wsjson.Write(ctx, silent, map[string]any{"id": "s", "type": "subscribe", "payload": map[string]any{"query": fanJobs}}))
	fanStats(t, s, 1, 2)
	return reader, silent
}

// fanSSEStream is a server-sent events subscription read line by line.
type fanSSEStream struct {
	lines chan string
}

// fanSSE opens an SSE subscription to query as token's caller.
func fanSSE(t *testing.T, s *apitest.Server, token, query string) *fanSSEStream {
	t.Helper()
	body, err := json.Marshal(map[string]any{"query": query})
	require.NoError(t, err)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL+"/graphql", strings.NewReader(string(body)))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { _ = res.Body.Close() })
	require.Equal(t, http.StatusOK, res.StatusCode)
	st := &fanSSEStream{lines: make(chan string, 1024)}
	go func() {
		defer close(st.lines)
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			st.lines <- sc.Text()
		}
	}()
	return st
}

// until returns the data of the first `next` event whose data want accepts.
func (st *fanSSEStream) until(t *testing.T, want func(data string) bool) string {
	t.Helper()
	timeout := time.After(lvWait)
	event := ""
	for {
		select {
		case line, ok := <-st.lines:
			require.True(t, ok, "the SSE stream ended")
			switch {
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: ") && event == "next":
				if data := strings.TrimPrefix(line, "data: "); want(data) {
					return data
				}
			}
		case <-timeout:
			require.FailNow(t, "no matching SSE event", "within %v", lvWait)
		}
	}
}

// A shared group's errors carry a request id of the group's own, not its
// first member's: that id, which its client may choose (X-Request-Id),
// reached every other member of the group, another user among them.
func TestASharedRenderCarriesItsOwnRequestID(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := lvNewTenant(t, s)
	bob := s.NewUser(t, tn.user.Tenant)

	const doc = `subscription { jobUpdated { op id job { id input logs(first: 1) { message } } } }`
	dial := func(token, rid string) *lvConn {
		h := http.Header{}
		h.Set("X-Request-Id", rid)
		return lvConnectWith(t, s, token, h)
	}
	alice := dial(tn.user.Token, "alice-private-marker-0001")
	alice.subscribe("a", doc, nil)
	fanStats(t, s, 1, 1)
	fanLive(t, tn, alice, "a")
	b := dial(bob.Token, "bob-own-request-0002")
	b.subscribe("b", doc, nil)
	fanStats(t, s, 1, 2)

	// Provoke an INTERNAL field error in the shared render.
	_, err := s.DB.ExecContext(t.Context(), "ALTER TABLE robot_logs RENAME TO robot_logs_gone")
	require.NoError(t, err)
	j := tn.enqueue(tn.wf, nil)
	for {
		m, ok := b.recv(lvWait)
		require.True(t, ok)
		if m.field("id") != j.ID {
			continue
		}
		var p struct{ Errors []apitest.Error }
		require.NoError(t, json.Unmarshal(m.Payload, &p))
		require.NotEmpty(t, p.Errors)
		require.NotContains(t, string(m.Payload), "alice-private-marker-0001", "bob got alice's request id")
		require.NotEmpty(t, p.Errors[0].Extensions["requestId"], "the group's own")
		return
	}
}
