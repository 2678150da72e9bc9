package graph_test

import (
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// Attacks on subscriptions: other users' machines, other tenants' fleets,
// robots reaching past themselves, anonymous callers. Refusals are checked
// at subscribe time; "never sees" is checked with a barrier: after the
// victim's changes, the attacker's own change must be the next message.

func TestSubscriptionUserIsolation(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)

	t.Run("AnotherUsersMachineIsNotFound", func(t *testing.T) {
		t.Parallel()
		alice, bob := newClient(t, s), newClient(t, s)
		victim := alice.create("victim")
		own := bob.create("own")
		ws := lvConnect(t, s, bob.token)
		for i, sub := range []struct {
			query string
			vars  map[string]any
		}{
			{lvMachineSub, map[string]any{"id": victim.ID}},
			{lvMachineSub, map[string]any{"id": uuid.NewString()}}, // the same as a missing one
			{lvEventSub, map[string]any{"m": victim.ID}},
			{lvEventSub, map[string]any{"m": uuid.NewString()}},
		} {
			require.Equal(t, "NOT_FOUND", ws.refused(fmt.Sprint(i), sub.query, sub.vars), "%s %v", sub.query, sub.vars)
		}
		// Control: Bob's own machine.
		ws.subscribe("own", lvMachineSub, map[string]any{"id": own.ID})
		var got lvMachineChange
		ws.value("own", &got)
		require.Equal(t, "CURRENT", got.Op)
		require.Equal(t, own.ID, got.ID)
	})

	t.Run("AllMachinesNeverSeesOthersMachines", func(t *testing.T) {
		t.Parallel()
		alice, bob := newClient(t, s), newClient(t, s)
		// Carol is in another tenant; her service role sees her whole tenant, not Bob's.
		carol := s.NewService(t, uuid.New())
		alicesOld := alice.create("alices-old")
		own := bob.create("own")
		ws := lvConnect(t, s, bob.token)
		ws.subscribe("all", lvMachineSub, nil)
		lvRequireNoLeak(t, ws.sync("all", lvProbeMachines(t, s, bob.token), lvIsProbeMachine(t)), alicesOld.ID)
		carolWS := lvConnect(t, s, carol.Token)
		carolWS.subscribe("all", lvMachineSub, nil)
		lvRequireNoLeak(t, carolWS.sync("all", lvProbeMachines(t, s, carol.Token), lvIsProbeMachine(t)), alicesOld.ID, own.ID)

		// Alice's machine lives and dies, and Carol's; Bob and Carol hear nothing of each other.
		victim := alice.create("victim")
		alice.mutate("startMachine", victim.ID)
		alice.deploy(victim.ID, "1.0.0")
		alice.logEvent(victim.ID, "error")
		alice.do(`mutation($id: ID!) { deleteMachine(id: $id) }`, map[string]any{"id": victim.ID}, nil)
		var carols struct{ CreateMachine struct{ ID string } }
		lvDo(t, s, carol.Token, `mutation { createMachine(input: {name: "carols"}) { id } }`, nil, &carols)

		started := bob.mutate("startMachine", own.ID)
		var got lvMachineChange
		ws.value("all", &got)
		require.Equal(t, own.ID, got.ID, "Bob's next message must be his own machine's")
		require.Equal(t, started.Version, got.Version)
		carolWS.value("all", &got)
		require.Equal(t, carols.CreateMachine.ID, got.ID, "Carol's next message must be her own machine's")
		require.Equal(t, "CREATED", got.Op)
	})
}

func TestSubscriptionTenantIsolation(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	a, b := lvNewTenant(t, s), lvNewTenant(t, s)
	aRobot := a.robot("a-robot", 5)
	aJob := a.enqueue(a.wf, nil)

	// Tenant B watches its fleet, its presence and its jobs, each made live
	// with B's own probes.
	victim := []string{aRobot.ID, aJob.ID, a.wf}
	robots := lvConnect(t, s, b.user.Token)
	robots.subscribe("robots", lvRobotSub, nil)
	lvRequireNoLeak(t, robots.sync("robots", b.lvProbeRobots(), lvIsProbeRobot(t)), victim...)
	presence := lvConnect(t, s, b.user.Token)
	presence.subscribe("presence", lvPresenceSub, nil)
	lvRequireNoLeak(t, presence.sync("presence", b.lvProbePresence(), lvIsProbeRobot(t)), victim...)
	jobs := lvConnect(t, s, b.user.Token)
	jobs.subscribe("jobs", lvJobSub, nil)
	lvRequireNoLeak(t, jobs.sync("jobs", func() { b.enqueue(b.wf, map[string]any{"input": map[string]any{"probe": true}}) }, lvHasInput(t, "probe")),
		victim...)

	t.Run("SubscribingToTheOtherTenantsEntitiesIsNotFound", func(t *testing.T) {
		ws := lvConnect(t, s, b.user.Token)
		require.Equal(t, "NOT_FOUND", ws.refused("r", lvRobotSub, map[string]any{"id": aRobot.ID}))
		require.Equal(t, "NOT_FOUND", ws.refused("j", lvJobSub, map[string]any{"id": aJob.ID}))
	})

	t.Run("TheOtherTenantsChangesNeverArrive", func(t *testing.T) {
		// Tenant A's fleet changes, goes online and offline, and works jobs.
		aRobot.heartbeat("ONLINE")
		a.updateRobot(aRobot.ID, map[string]any{"hostname": "a-host"})
		l := aRobot.claim(aJob.ID)
		aRobot.start(l)
		aRobot.progress(l, 50)
		aRobot.complete(l)
		a.cancel(a.enqueue(a.wf, nil).ID)
		var created struct{ CreateRobot struct{ ID string } }
		a.do(`mutation { createRobot(input: {name: "a-new"}) { id } }`, nil, &created)
		a.do(`mutation($id: ID!) { deleteRobot(id: $id) }`, map[string]any{"id": created.CreateRobot.ID}, nil)
		aRobot.heartbeat("OFFLINE")

		// Barrier: B's own changes are the next messages of each subscription.
		bRobot := b.robot("b-robot", 1)
		var rc lvRobotChange
		robots.value("robots", &rc)
		require.Equal(t, bRobot.ID, rc.ID)
		require.Equal(t, "CREATED", rc.Op)
		bRobot.heartbeat("ONLINE")
		var pe lvPresence
		presence.value("presence", &pe)
		require.Equal(t, bRobot.ID, pe.RobotID)
		require.Equal(t, "ONLINE", pe.Status)
		bJob := b.enqueue(b.wf, nil)
		var jc lvJobChange
		jobs.value("jobs", &jc)
		require.Equal(t, bJob.ID, jc.ID)
		require.Equal(t, "CREATED", jc.Op)
	})
}

func TestSubscriptionRobotCaller(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := lvNewTenant(t, s)
	me := tn.robot("me", 20)
	other := tn.robot("other", 20)
	machine := newClient(t, s).create("m")
	othersJob := tn.enqueue(tn.wf, map[string]any{"robotId": other.ID})
	othersLease := other.claim(othersJob.ID)
	queued := tn.enqueue(tn.wf, map[string]any{"robotId": me.ID, "priority": -100})

	t.Run("RefusedSubscriptions", func(t *testing.T) {
		t.Parallel()
		ws := lvConnect(t, s, me.Key)
		for i, sub := range []struct {
			query, code string
			vars        map[string]any
		}{
			{lvRobotSub, "NOT_FOUND", map[string]any{"id": other.ID}},
			{lvJobSub, "NOT_FOUND", map[string]any{"id": othersJob.ID}},
			{lvJobSub, "NOT_FOUND", map[string]any{"id": queued.ID}}, // not held yet
			{lvMachineSub, "FORBIDDEN", nil},
			{lvMachineSub, "FORBIDDEN", map[string]any{"id": machine.ID}},
			{lvEventSub, "FORBIDDEN", map[string]any{"m": machine.ID}},
			{lvPresenceSub, "FORBIDDEN", nil},
		} {
			require.Equal(t, sub.code, ws.refused(fmt.Sprint(i), sub.query, sub.vars), "%s %v", sub.query, sub.vars)
		}
		// Control: itself.
		ws.subscribe("self", lvRobotSub, map[string]any{"id": me.ID})
		var got lvRobotChange
		ws.value("self", &got)
		require.Equal(t, "CURRENT", got.Op)
		require.Equal(t, me.ID, got.ID)
	})

	t.Run("RobotUpdatedIsOnlyItself", func(t *testing.T) {
		t.Parallel()
		ws := lvConnect(t, s, me.Key)
		ws.subscribe("r", lvRobotSub, nil)
		// The robot sees only itself, so the probe is itself: a message of
		// its creation read late carries a probe hostname too, but then
		// every later notification is about itself and carries it as well.
		n := 0
		lvRequireNoLeak(t, ws.sync("r", func() {
			n++
			tn.updateRobot(me.ID, map[string]any{"hostname": fmt.Sprintf("probe-%d", n)})
		}, lvIsProbeRobot(t)), other.ID)
		other.heartbeat("BUSY")
		tn.updateRobot(other.ID, map[string]any{"hostname": "other-host"})
		var created struct{ CreateRobot struct{ ID string } }
		tn.do(`mutation { createRobot(input: {name: "third"}) { id } }`, nil, &created)
		revision := tn.updateRobot(me.ID, map[string]any{"hostname": "final"})
		var got lvRobotChange
		ws.value("r", &got)
		require.Equal(t, me.ID, got.ID)
		require.Equal(t, revision, got.Revision)
		require.Equal(t, "final", got.Robot.Hostname)
	})

	t.Run("JobUpdatedIsOnlyItsOwnJobs", func(t *testing.T) {
		t.Parallel()
		// Its jobs, and a filter that would match every job of the workflow:
		// a filter narrows, it cannot widen what a robot sees.
		ws := lvConnect(t, s, me.Key)
		ws.subscribe("j", lvJobSub, nil)
		wide := lvConnect(t, s, me.Key)
		wide.subscribe("w", lvJobSub, map[string]any{"f": map[string]any{"workflowId": tn.wf}})
		poke := func() {
			p := tn.enqueue(tn.wf, map[string]any{"robotId": me.ID, "priority": 1000, "input": map[string]any{"probe": true}})
			me.claim(p.ID)
		}
		lvRequireNoLeak(t, ws.sync("j", poke, lvHasInput(t, "probe")), othersJob.ID)
		lvRequireNoLeak(t, wide.sync("w", poke, lvHasInput(t, "probe")), othersJob.ID)

		// Jobs nobody holds, and the other robot's: nothing.
		tn.cancel(tn.enqueue(tn.wf, nil).ID)
		other.start(othersLease)
		other.progress(othersLease, 30)
		j := tn.enqueue(tn.wf, map[string]any{"robotId": me.ID, "priority": 500})
		l := me.claim(j.ID)
		for _, c := range []struct {
			ws *lvConn
			id string
		}{{ws, "j"}, {wide, "w"}} {
			var got lvJobChange
			c.ws.value(c.id, &got)
			require.Equal(t, j.ID, got.ID, "the robot's next message must be its own job's")
			require.Equal(t, "CLAIMED", got.Job.Status)
			require.Equal(t, me.ID, *got.Job.RobotID)
		}
		me.start(l)
		var got lvJobChange
		ws.value("j", &got)
		require.Equal(t, "RUNNING", got.Job.Status)
	})
}

func TestSubscriptionAnonymous(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	ws := lvConnect(t, s, "")
	for i, sub := range []struct {
		query string
		vars  map[string]any
	}{
		{lvMachineSub, nil},
		{lvMachineSub, map[string]any{"id": uuid.NewString()}},
		{lvEventSub, map[string]any{"m": uuid.NewString()}},
		{lvRobotSub, nil},
		{lvRobotSub, map[string]any{"id": uuid.NewString()}},
		{lvPresenceSub, nil},
		{lvJobSub, nil},
		{lvJobSub, map[string]any{"id": uuid.NewString()}},
	} {
		require.Equal(t, "UNAUTHENTICATED", ws.refused(fmt.Sprint(i), sub.query, sub.vars), "%s %v", sub.query, sub.vars)
	}
}
