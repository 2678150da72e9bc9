package graph

import (
	"context"
	"errors"

	"github.com/99designs/gqlgen/graphql"
	"github.com/google/uuid"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/fault"
	"fleetgraph/graph/live"
	"fleetgraph/graph/model"
	"fleetgraph/realtime"
)

// This file turns hub subscriptions into the channels gqlgen's subscription
// resolvers return, keeping channel management out of the generated files.
// Every subscription is checked at subscribe time through the stores (so an
// invisible id is NOT_FOUND and a wrong caller FORBIDDEN), filtered per
// change in Go with db.CanSee, and ends with UNAUTHENTICATED when the
// caller's credential expires. The hub checks every row it sends against
// the subscriber's Principal (SubscribeOptions.Principal, db.CanSeeRow), so
// a filter here only narrows what the subscriber asked for.

// stream pumps a hub subscription into a channel: first (when non-nil),
// then every update convert accepts. It ends when ctx does (the client
// stopped), when the hub ends the subscription (with its reason), or, for
// a subscription to one entity (first is its state), once the entity's
// deletion is sent: nothing more can come, and the client is told so
// (complete) instead of holding its subscription, and its place of
// MAX_SUBSCRIPTIONS_PER_PRINCIPAL, for nothing.
func stream[T any](ctx context.Context, sub *realtime.Sub, first *T, convert func(realtime.Update) *T) <-chan *T {
	return streamUntil(ctx, sub, first, nil, convert)
}

// streamUntil is stream for a feed of an entity's rows (a machine's events,
// a robot's log lines) that ends, with complete, once the entity is gone
// (deletionWatch.until closes gone): what was already queued is sent
// first. Should the watch itself end first (the hub failed its resync or
// the credential expired), the feed ends with the watch's reason: it could
// no longer complete on the deletion it promises.
func streamUntil[T any](ctx context.Context, sub *realtime.Sub, first *T, gone <-chan error, convert func(realtime.Update) *T) <-chan *T {
	out := make(chan *T)
	go func() {
		defer close(out)
		defer sub.Close()
		send := func(v *T) bool {
			if !awaitRender(ctx, sub.Done()) {
				return false
			}
			select {
			case out <- v:
				return true
			case <-ctx.Done():
			case <-sub.Done():
			}
			renderedWithout(ctx)
			return false
		}
		if first != nil {
			live.Tag(ctx, "")
			if !send(first) {
				live.End(ctx, streamError(sub))
				return
			}
		}
		for ended := false; !ended; {
			select {
			case <-ctx.Done():
				return
			case <-sub.Done():
				live.End(ctx, streamError(sub))
				return
			case err := <-gone:
				if err != nil {
					live.End(ctx, err)
					return
				}
				ended = true // after what is queued
			case <-sub.Ready():
			}
			for _, u := range sub.Take() {
				v := convert(u)
				if v == nil {
					continue
				}
				// A group sharing this stream's results keeps, for a
				// member that falls behind, the newest of each entity.
				live.Tag(ctx, u.Key)
				if !send(v) {
					live.End(ctx, streamError(sub))
					return
				}
				if first != nil && u.Op == string(model.ChangeOpDeleted) {
					return
				}
			}
		}
	}()
	return out
}

// streamError is the client-facing reason the hub ended a subscription, or
// nil when it simply stopped.
func streamError(sub *realtime.Sub) error {
	select {
	case <-sub.Done():
	default:
		return nil
	}
	switch err := sub.Err(); {
	case errors.Is(err, realtime.ErrExpired):
		return fault.New(fault.Unauthenticated, "your credential has expired; reconnect with a fresh one")
	case errors.Is(err, realtime.ErrTooSlow):
		return &fault.Error{Code: fault.RateLimited, Message: err.Error(), Extra: map[string]any{"reason": "SLOW_CONSUMER"}}
	case errors.Is(err, realtime.ErrResyncFailed):
		return &fault.Error{Code: fault.Internal, Message: err.Error()}
	case err == nil, errors.Is(err, context.Canceled):
		return nil
	default:
		// Only the hub's own errors above are fit for a client.
		return fault.New(fault.Internal, "the subscription ended on a server fault; resubscribe")
	}
}

func parseKey(key string) uuid.UUID {
	id, _ := uuid.Parse(key)
	return id
}

func op(u realtime.Update) model.ChangeOp { return model.ChangeOp(u.Op) }

func (r *subscriptionResolver) machineUpdated(ctx context.Context, id *uuid.UUID) (<-chan *model.MachineChange, error) {
	if err := db.CheckCaller(ctx, true); err != nil {
		return nil, err
	}
	p := auth.FromContext(ctx)
	wanted := func(m uuid.UUID) bool { return id == nil || m == *id }
	sub := r.Hub.Subscribe(realtime.SubscribeOptions{
		Kind: realtime.KindMachine, Tenant: p.TenantID, Principal: p, Expires: p.ExpiresAt,
		Filter: func(c realtime.Change) bool {
			return wanted(parseKey(c.ID)) && db.CanSee(p, "machine", c.Tenant, c.Owner, nil)
		},
		MatchRow: func(v any) bool {
			m := v.(*db.Machine)
			return wanted(m.ID) && db.CanSee(p, "machine", m.TenantID, &m.OwnerID, nil)
		},
	})
	var first *model.MachineChange
	if id != nil {
		// One read, after subscribing: it checks the caller may see the
		// machine (NOT_FOUND otherwise, and nothing was sent) and is the
		// first state, so nothing between the read and the feed is lost.
		m, err := r.MachineStore.Get(ctx, r.DB, *id)
		if err != nil {
			sub.Close()
			return nil, err
		}
		sub.Seed(m.ID.String(), m.Version)
		first = &model.MachineChange{Op: model.ChangeOpCurrent, ID: m.ID, Version: int(m.Version), Machine: m}
	}
	return stream(ctx, sub, first, func(u realtime.Update) *model.MachineChange {
		m, _ := u.Value.(*db.Machine)
		return &model.MachineChange{Op: op(u), ID: parseKey(u.Key), Version: int(u.Version), Machine: m}
	}), nil
}

// deletionWatch watches, from the hub, for the deletion of one entity:
// made before the entity is read (watchDeletion), so a deletion committed
// after the read is seen, then started with what was read (until).
type deletionWatch struct {
	sub *realtime.Sub
	key string
}

// watchDeletion starts watching for the deletion of the entity of kind
// with id, as p.
func (r *subscriptionResolver) watchDeletion(p *auth.Principal, kind string, id uuid.UUID) deletionWatch {
	key := id.String()
	return deletionWatch{key: key, sub: r.Hub.Subscribe(realtime.SubscribeOptions{
		Kind: kind, Tenant: p.TenantID, Principal: p, Expires: p.ExpiresAt,
		Filter:   func(c realtime.Change) bool { return c.Op == "DELETE" && c.ID == key },
		MatchRow: func(any) bool { return false }, // a resync's rows: only a deletion matters
	})}
}

// until returns a channel closed when the entity, read at version, is
// deleted (its DELETE notification, or a resync that finds it gone), or
// given the client-facing reason the hub ended the watch first. The watch
// ends with ctx.
func (w deletionWatch) until(ctx context.Context, version int64) <-chan error {
	gone := make(chan error, 1)
	w.sub.Seed(w.key, version) // so a resync reports the entity gone
	go func() {
		defer w.sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case <-w.sub.Done():
				if err := streamError(w.sub); err != nil {
					gone <- err
				}
				return
			case <-w.sub.Ready():
				for _, u := range w.sub.Take() {
					if u.Op == string(model.ChangeOpDeleted) && u.Key == w.key {
						close(gone)
						return
					}
				}
			}
		}
	}()
	return gone
}

func (r *subscriptionResolver) machineEventAdded(ctx context.Context, machineID uuid.UUID) (<-chan *db.MachineEvent, error) {
	if err := db.CheckCaller(ctx, false); err != nil {
		return nil, err
	}
	p := auth.FromContext(ctx)
	deleted := r.watchDeletion(p, realtime.KindMachine, machineID)
	m, err := r.MachineStore.Get(ctx, r.DB, machineID)
	if err != nil {
		deleted.sub.Close()
		return nil, err
	}
	// Append-only: a resync after lost notifications offers only the
	// events committed after this subscription, never the machine's history.
	sub, err := r.Hub.SubscribeAppend(ctx, realtime.SubscribeOptions{
		Kind: realtime.KindMachineEvent, Tenant: p.TenantID, Principal: p, Expires: p.ExpiresAt,
		Filter: func(c realtime.Change) bool {
			return c.Machine != nil && *c.Machine == machineID && db.CanSee(p, "machine_event", c.Tenant, c.Owner, nil)
		},
		MatchRow: func(v any) bool { return v.(*db.MachineEvent).MachineID == machineID },
	})
	if err != nil {
		deleted.sub.Close()
		return nil, err
	}
	// A deleted machine has no more events: the subscription completes.
	return streamUntil(ctx, sub, nil, deleted.until(ctx, m.Version), func(u realtime.Update) *db.MachineEvent {
		e, _ := u.Value.(*db.MachineEvent)
		return e
	}), nil
}

func (r *subscriptionResolver) robotUpdated(ctx context.Context, id *uuid.UUID) (<-chan *model.RobotChange, error) {
	if err := db.CheckCaller(ctx, false); err != nil {
		return nil, err
	}
	p := auth.FromContext(ctx)
	wanted := func(robot uuid.UUID) bool { return id == nil || robot == *id }
	sub := r.Hub.Subscribe(realtime.SubscribeOptions{
		Kind: realtime.KindRobot, Tenant: p.TenantID, Principal: p, Expires: p.ExpiresAt,
		Filter: func(c realtime.Change) bool {
			robot := parseKey(c.ID)
			return wanted(robot) && db.CanSee(p, "robot", c.Tenant, nil, &robot)
		},
		MatchRow: func(v any) bool {
			robot := v.(*db.Robot)
			return wanted(robot.ID) && db.CanSee(p, "robot", robot.TenantID, nil, &robot.ID)
		},
	})
	var first *model.RobotChange
	if id != nil {
		// One read after subscribing: the check and the first state.
		robot, err := r.RobotStore.Get(ctx, r.DB, *id)
		if err != nil {
			sub.Close()
			return nil, err
		}
		sub.Seed(robot.ID.String(), robot.Revision)
		first = &model.RobotChange{Op: model.ChangeOpCurrent, ID: robot.ID, Revision: int(robot.Revision), Robot: robot}
	}
	return stream(ctx, sub, first, func(u realtime.Update) *model.RobotChange {
		robot, _ := u.Value.(*db.Robot)
		return &model.RobotChange{Op: op(u), ID: parseKey(u.Key), Revision: int(u.Version), Robot: robot}
	}), nil
}

func (r *subscriptionResolver) fleetPresence(ctx context.Context) (<-chan *model.PresenceEvent, error) {
	if err := db.CheckCaller(ctx, true); err != nil {
		return nil, err
	}
	p := auth.FromContext(ctx)
	sub := r.Hub.Subscribe(realtime.SubscribeOptions{
		Kind: realtime.KindPresence, Tenant: p.TenantID, Principal: p, Expires: p.ExpiresAt,
		Filter: func(c realtime.Change) bool { return db.CanSee(p, "presence", c.Tenant, nil, nil) },
	})
	return stream(ctx, sub, nil, func(u realtime.Update) *model.PresenceEvent {
		robot, ok := u.Value.(*db.Robot)
		if !ok {
			return nil
		}
		return &model.PresenceEvent{RobotID: robot.ID, Status: robot.Status, Hostname: robot.Hostname, At: robot.UpdatedAt}
	}), nil
}

func (r *subscriptionResolver) jobUpdated(ctx context.Context, id *uuid.UUID, f *model.JobUpdateFilter) (<-chan *model.JobChange, error) {
	if err := db.CheckCaller(ctx, false); err != nil {
		return nil, err
	}
	if f == nil {
		f = &model.JobUpdateFilter{}
	}
	p := auth.FromContext(ctx)
	matches := func(job uuid.UUID, status string, robot, workflow *uuid.UUID) bool {
		return (id == nil || job == *id) &&
			(f.Status == nil || string(*f.Status) == status) &&
			(f.RobotID == nil || (robot != nil && *robot == *f.RobotID)) &&
			(f.WorkflowID == nil || (workflow != nil && *workflow == *f.WorkflowID))
	}
	sub := r.Hub.Subscribe(realtime.SubscribeOptions{
		Kind: realtime.KindJob, Tenant: p.TenantID, Principal: p, Expires: p.ExpiresAt,
		Filter: func(c realtime.Change) bool {
			return matches(parseKey(c.ID), c.Status, c.Robot, c.Workflow) && db.CanSee(p, "job", c.Tenant, nil, c.Robot)
		},
		MatchRow: func(v any) bool {
			j := v.(*db.Job)
			return matches(j.ID, string(j.Status), j.RobotID, &j.WorkflowID) && db.CanSee(p, "job", j.TenantID, nil, j.RobotID)
		},
	})
	var first *model.JobChange
	if id != nil {
		// One read after subscribing: the check and the first state.
		j, err := r.JobStore.Get(ctx, r.DB, *id)
		if err != nil {
			sub.Close()
			return nil, err
		}
		sub.Seed(j.ID.String(), j.Revision)
		first = &model.JobChange{Op: model.ChangeOpCurrent, ID: j.ID, Revision: int(j.Revision), Job: j}
	}
	return stream(ctx, sub, first, func(u realtime.Update) *model.JobChange {
		j, _ := u.Value.(*db.Job)
		return &model.JobChange{Op: op(u), ID: parseKey(u.Key), Revision: int(u.Version), Job: j}
	}), nil
}

// sharedSubscriptions are the subscriptions whose results a group of
// subscribers may share (live.Fanout), each with its kind: they check
// nothing at subscribe time but the caller's kind (which the visibility
// class fixes), and send no first state of their own, as long as the
// argument named in noArg, if any, is null. The others run per subscriber:
// machineEventAdded checks its machine, robotLogAdded counts each tail's
// missed lines, and one-entity subscriptions (an id) check the entity and
// send it first.
var sharedSubscriptions = map[string]struct{ kind, noArg string }{
	"jobUpdated":     {"job", "id"},
	"robotUpdated":   {"robot", "id"},
	"machineUpdated": {"machine", "id"},
	"fleetPresence":  {"presence", ""},
}

// shareSubscription is the live.ShareFunc of the handler: the caller's
// visibility class for a subscription in sharedSubscriptions, or false.
func shareSubscription(ctx context.Context, rc *graphql.OperationContext) (string, bool) {
	fields := graphql.CollectFields(rc, rc.Operation.SelectionSet, []string{"Subscription"})
	if len(fields) != 1 {
		return "", false
	}
	f := fields[0]
	shared, ok := sharedSubscriptions[f.Name]
	if !ok {
		return "", false
	}
	if shared.noArg != "" && f.ArgumentMap(rc.Variables)[shared.noArg] != nil {
		return "", false
	}
	return db.VisibilityClass(auth.FromContext(ctx), shared.kind)
}
