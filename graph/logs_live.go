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

// robotLogAdded serves the live tail (realtime.LogTail): one message per
// shipped batch of a visible robot, with the lines at minLevel or above,
// or a missed-lines notice when the subscriber fell behind.
func (r *subscriptionResolver) robotLogAdded(ctx context.Context, robotID *uuid.UUID, minLevel *db.LogLevel) (<-chan *model.RobotLogBatch, error) {
	if err := db.CheckCaller(ctx, false); err != nil {
		return nil, err
	}
	var min int16
	if minLevel != nil {
		if min = minLevel.Severity(); min == 0 {
			return nil, fault.Invalid("minLevel", "minLevel is not a log level")
		}
	}
	var robot *db.Robot
	var deleted deletionWatch
	if robotID != nil {
		deleted = r.watchDeletion(auth.FromContext(ctx), realtime.KindRobot, *robotID)
		var err error
		if robot, err = r.RobotStore.Get(ctx, r.DB, *robotID); err != nil {
			deleted.sub.Close()
			if fault.CodeOf(err) == fault.NotFound {
				// Named as the robotLogs query names it.
				return nil, &fault.Error{Code: fault.NotFound, Field: "robotId", Message: "robot not found"}
			}
			return nil, err
		}
	}
	tail, err := r.Hub.TailLogs(ctx, auth.FromContext(ctx), robotID, min)
	if err != nil {
		if robot != nil {
			deleted.sub.Close()
		}
		return nil, err
	}
	var gone <-chan error
	if robot != nil {
		// A deleted robot ships no more lines: the tail completes.
		gone = deleted.until(ctx, robot.Revision)
	}
	return streamUntil(ctx, tail.Sub(), nil, gone, func(u realtime.Update) *model.RobotLogBatch {
		item, ok := tail.Item(u)
		switch {
		case !ok:
			return nil
		case item.Missed > 0:
			return &model.RobotLogBatch{Lines: []*db.RobotLog{}, MissedLines: item.Missed}
		}
		return &model.RobotLogBatch{RobotID: &item.Robot, Lines: item.Lines}
	}), nil
}
