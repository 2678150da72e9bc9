package graph

import (
	"context"

	"github.com/google/uuid"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/fault"
	"fleetgraph/graph/model"
	"fleetgraph/realtime"
)

// tailQueueLimit is how many batches a log tail may have undelivered before
// newer ones are dropped (and counted in the next message's missedLines).
const tailQueueLimit = 64

// robotLogAdded serves the live tail: one message per shipped batch of a
// visible robot, with the lines at minLevel or above. The notification's
// routing fields (tenant, robot, the batch's highest level) filter without
// a read; the hub re-reads each batch once and checks the batch against
// the subscriber (db.CanSeeRow, kind "log").
func (r *subscriptionResolver) robotLogAdded(ctx context.Context, robotID *uuid.UUID, minLevel *db.LogLevel) (<-chan *model.RobotLogBatch, error) {
	if err := db.CheckCaller(ctx, false); err != nil {
		return nil, err
	}
	if robotID != nil {
		if _, err := r.RobotStore.Get(ctx, r.DB, *robotID); err != nil {
			return nil, err
		}
	}
	var min int16
	if minLevel != nil {
		if min = minLevel.Severity(); min == 0 {
			return nil, fault.Invalid("minLevel", "minLevel is not a log level")
		}
	}
	p := auth.FromContext(ctx)
	wanted := func(robot uuid.UUID) bool { return robotID == nil || robot == *robotID }
	shown := func(b *db.LogBatch) []*db.RobotLog {
		var lines []*db.RobotLog
		for _, l := range b.Lines {
			if l.Level.Severity() >= min {
				lines = append(lines, l)
			}
		}
		return lines
	}
	sub := r.Hub.Subscribe(realtime.SubscribeOptions{
		Kind: realtime.KindLog, Tenant: p.TenantID, Principal: p, Expires: p.ExpiresAt,
		Append: true, Lossy: true, Limit: tailQueueLimit,
		Filter: func(c realtime.Change) bool {
			return c.Robot != nil && wanted(*c.Robot) && c.Level >= int(min) && db.CanSee(p, "log", c.Tenant, nil, c.Robot)
		},
		Weight: func(u realtime.Update) int {
			if b, ok := u.Value.(*db.LogBatch); ok {
				return len(shown(b))
			}
			return 0
		},
	})
	// A key's id range may also cover a concurrent batch of the same robot,
	// announced on its own: lines already sent are not sent again.
	sent := map[int64]bool{}
	return stream(ctx, sub, nil, func(u realtime.Update) *model.RobotLogBatch {
		if u.Op == realtime.OpMissed {
			return &model.RobotLogBatch{Lines: []*db.RobotLog{}, MissedLines: int(u.Version)}
		}
		b, ok := u.Value.(*db.LogBatch)
		if !ok {
			return nil
		}
		var lines []*db.RobotLog
		for _, l := range shown(b) {
			if !sent[l.ID] {
				sent[l.ID] = true
				lines = append(lines, l)
			}
		}
		if len(sent) > 100_000 {
			clear(sent) // only de-duplication of overlapping batches is lost
		}
		if len(lines) == 0 {
			return nil
		}
		return &model.RobotLogBatch{RobotID: &b.RobotID, Lines: lines}
	}), nil
}
