package graph_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/apitest"
	"fleetgraph/auth"
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

// lvJobResultSub selects a job change with the job's result and input.
const lvJobResultSub = `subscription($id: ID) { jobUpdated(id: $id) { op id revision job { id status robotId revision input result error } } }`

// TestSubscriptionRobotLosesItsJob: robot A watches jobs it holds; each is
// cancelled, retried, claimed and finished by robot B in one transaction, so
// every notification of it reaches the hub after the last change, and the
// row the hub loads for A's notification (the cancel, which still routes to
// A) is B's. The hub must check that row against A, not the routing fields:
// A never gets B's state (its result, its error), while the user watching
// the jobs gets it; A's next message, on each of its subscriptions, is its
// own next job state.
func TestSubscriptionRobotLosesItsJob(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	tn := lvNewTenant(t, s)
	a, b := tn.robot("a", 20), tn.robot("b", 20)
	done := tn.enqueue(tn.wf, nil)   // B completes it
	failed := tn.enqueue(tn.wf, nil) // B fails it
	a.claim(done.ID)
	a.claim(failed.ID)
	own := tn.enqueue(tn.wf, map[string]any{"robotId": a.ID})
	ownLease := a.claim(own.ID)
	const secret = "robot-b-secret"

	// A watches each job on its own, and all of its jobs.
	var got lvJobChange
	watch := func(id, job string) *lvConn {
		ws := lvConnect(t, s, a.Key)
		ws.subscribe(id, lvJobResultSub, map[string]any{"id": job})
		ws.value(id, &got)
		require.Equal(t, "CURRENT", got.Op)
		require.Equal(t, a.ID, *got.Job.RobotID)
		return ws
	}
	doneWS, failedWS := watch("done", done.ID), watch("failed", failed.ID)
	doneWS.subscribe("own", lvJobResultSub, map[string]any{"id": own.ID})
	doneWS.value("own", &got)
	all := lvConnect(t, s, a.Key)
	all.subscribe("all", lvJobResultSub, nil)
	all.sync("all", func() {
		p := tn.enqueue(tn.wf, map[string]any{"robotId": a.ID, "priority": 1000, "input": map[string]any{"probe": true}})
		a.claim(p.ID)
	}, lvHasInput(t, "probe"))
	users := map[string]*lvConn{}
	for id, job := range map[string]string{"done": done.ID, "failed": failed.ID} {
		users[id] = lvConnect(t, s, tn.user.Token)
		users[id].subscribe(id, lvJobResultSub, map[string]any{"id": job})
		users[id].value(id, &got)
	}

	ctx := t.Context()
	asUser := auth.WithPrincipal(ctx, &auth.Principal{UserID: tn.user.ID, TenantID: tn.user.Tenant, Role: auth.RoleUser})
	asB := auth.WithPrincipal(ctx, &auth.Principal{RobotID: uuid.MustParse(b.ID), TenantID: tn.user.Tenant, Role: auth.RoleRobot})
	jobs := s.App.Resolver.JobStore
	require.NoError(t, s.DB.RunInTx(ctx, nil, func(_ context.Context, tx bun.Tx) error {
		for _, job := range []string{done.ID, failed.ID} {
			id := uuid.MustParse(job)
			if _, err := jobs.Cancel(asUser, tx, id); err != nil {
				return err
			}
			if _, err := jobs.Retry(asUser, tx, id); err != nil {
				return err
			}
			l, err := jobs.Claim(asB, tx)
			if err != nil {
				return err
			}
			require.NotNil(t, l)
			require.Equal(t, id, l.Job.ID)
			if _, err := jobs.Start(asB, tx, id, l.LeaseToken); err != nil {
				return err
			}
			if job == done.ID {
				_, err = jobs.Complete(asB, tx, id, l.LeaseToken, map[string]any{"secret": secret})
			} else {
				_, err = jobs.Fail(asB, tx, id, l.LeaseToken, secret, false)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}))

	// The user sees B's final states: the hub has loaded the rows and
	// offered them to every subscriber of these notifications.
	for id, final := range map[string]string{"done": "COMPLETED", "failed": "FAILED"} {
		for got = (lvJobChange{}); got.Job == nil || got.Job.Status != final; {
			users[id].value(id, &got)
		}
		require.Equal(t, b.ID, *got.Job.RobotID)
	}
	for _, job := range []string{done.ID, failed.ID} {
		var seen struct{ Job *struct{ ID string } }
		a.do(`query($id: ID!) { job(id: $id) { id } }`, map[string]any{"id": job}, &seen)
		require.Nil(t, seen.Job, "the query path hides the job from A")
	}

	// Barriers: A's own next job states are its next messages.
	k := tn.enqueue(tn.wf, map[string]any{"robotId": a.ID, "priority": 1000})
	a.claim(k.ID)
	m := all.next("all")
	require.NotContains(t, string(m.Payload), secret, "A received B's job")
	m.value(t, &got)
	require.Equal(t, k.ID, got.ID, "A's next message must be its own new job: %s", m.Payload)

	started := a.start(ownLease)
	m = doneWS.next("own")
	require.NotContains(t, string(m.Payload), secret, "A received B's job")
	m.value(t, &got)
	require.Equal(t, started.Revision, got.Revision)

	var retried struct{ RetryJob lvJob }
	tn.do(`mutation($id: ID!) { retryJob(id: $id) { id status revision } }`, map[string]any{"id": failed.ID}, &retried)
	l := a.claim(failed.ID)
	m = failedWS.next("failed")
	require.NotContains(t, string(m.Payload), secret, "A received B's job")
	m.value(t, &got)
	require.Equal(t, "CLAIMED", got.Job.Status, "A's next message must be its own claim: %s", m.Payload)
	require.Equal(t, a.ID, *got.Job.RobotID)
	require.Equal(t, l.Job.Revision, got.Revision)
}
