package realtime

import (
	"github.com/google/uuid"

	"fleetgraph/auth"
	"fleetgraph/db"
)

// Kind is a kind of change on the feed, and the topic subscribers of that
// kind listen on. The kinds are all here, each with its row kind, its
// visibility rule over a notification's routing fields (Change) and its
// visibility class; StoreSource reads their rows. A kind not listed here is
// visible to no one and has no class.
type Kind string

// Kinds of change on the feed.
const (
	KindMachine      Kind = "machine"
	KindMachineEvent Kind = "machine_event"
	KindRobot        Kind = "robot"
	KindJob          Kind = "job"
	// KindPresence is the topic of robots going online or offline; it is
	// fed by robot changes whose status crosses OFFLINE, and carries robot rows.
	KindPresence Kind = "presence"
	// KindLog is a batch of log lines shipped by one robot: one
	// notification per batch (db.insertLinesSQL), keyed by the batch's
	// robot, id range and time range.
	KindLog Kind = "log"
)

// Known reports whether k is one of the feed's kinds.
func (k Kind) Known() bool {
	switch k {
	case KindMachine, KindMachineEvent, KindRobot, KindJob, KindPresence, KindLog:
		return true
	}
	return false
}

// rowKind is the kind of row a topic's updates carry: presence is fed by
// robot rows.
func (k Kind) rowKind() Kind {
	if k == KindPresence {
		return KindRobot
	}
	return k
}

// CanSee decides from a notification's routing fields, in Go, whether p may
// see the change: the same rules as the query path's scope (db.CanSee).
// The row the hub then sends is checked again (db.CanSeeRow), since the
// routing fields may be older. An unknown kind is visible to no one.
func (k Kind) CanSee(p *auth.Principal, c Change) bool {
	switch k {
	case KindMachine, KindMachineEvent, KindJob, KindPresence, KindLog:
		robot := c.Robot
		return db.CanSee(p, string(k), c.Tenant, c.Owner, robot)
	case KindRobot:
		robot, err := uuid.Parse(c.ID)
		return err == nil && db.CanSee(p, string(k), c.Tenant, nil, &robot)
	}
	return false
}

// Class is p's visibility class for k: principals of one class see exactly
// the same rows of k, and resolve them alike, so they may share what is
// rendered for one of them. People of a tenant share one class for robots,
// presence, jobs and logs; machines and their events are per owner; a robot
// sees only itself; a service role is a class of its own per tenant. The
// rule is conservative: a kind it does not know, or a principal it cannot
// place, is a class of its own (the principal's actor), and "" (no
// principal) shares nothing.
func (k Kind) Class(p *auth.Principal) string {
	if p == nil {
		return ""
	}
	tenant := p.TenantID.String()
	switch {
	case !k.Known() || p.System != "":
		return "actor:" + tenant + ":" + p.Actor()
	case p.RobotID != uuid.Nil:
		return "robot:" + tenant + ":" + p.RobotID.String()
	case p.Role == auth.RoleService:
		return "service:" + tenant
	case p.Role != auth.RoleUser || p.UserID == uuid.Nil:
		return "actor:" + tenant + ":" + p.Actor()
	}
	switch k {
	case KindMachine, KindMachineEvent:
		return "owner:" + tenant + ":" + p.UserID.String()
	}
	return "people:" + tenant
}
