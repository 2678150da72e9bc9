package realtime

import (
	"context"

	"github.com/google/uuid"

	"fleetgraph/auth"
	"fleetgraph/db"
)

// TailQueueLimit is how many batches a log tail may have undelivered before
// newer ones are dropped (and reported in a missed-lines notice).
const TailQueueLimit = 64

// LogTail is a live tail of robot log lines on the hub: the robotLogAdded
// subscription, and the operator CLI's `logs tail`. Read Sub().Ready(),
// then Take.
type LogTail struct {
	sub  *Sub
	min  int16
	sent recent[int64, bool]
}

// LogTailItem is what a tail delivers: a batch's lines at the tail's level
// or above, oldest first, or (Missed > 0, no lines) the notice that Missed
// lines were dropped because the tail fell behind.
type LogTailItem struct {
	Robot  uuid.UUID
	Lines  []*db.RobotLog
	Missed int
}

// TailLogs subscribes p to the lines of robot (nil: every robot p may see
// in its tenant) at minLevel (a severity, 0 for all) or above, committed
// after it subscribed (Hub.SubscribeAppend: one statement). The caller
// checks beforehand that p may see robot; the hub checks every batch.
func (h *Hub) TailLogs(ctx context.Context, p *auth.Principal, robot *uuid.UUID, minLevel int16) (*LogTail, error) {
	t := newLogTail(minLevel)
	wanted := func(r uuid.UUID) bool { return robot == nil || r == *robot }
	sub, err := h.SubscribeAppend(ctx, SubscribeOptions{
		Kind: KindLog, Tenant: p.TenantID, Principal: p, Expires: p.ExpiresAt,
		Lossy: true, Limit: TailQueueLimit,
		Filter: func(c Change) bool {
			return c.Robot != nil && wanted(*c.Robot) && c.Level >= int(minLevel) && db.CanSee(p, "log", c.Tenant, nil, c.Robot)
		},
		// After lost notifications the hub re-reads recent lines per robot
		// (best effort; see db.Logs.ChangedSince).
		MatchRow: func(v any) bool {
			b, ok := v.(*db.LogBatch)
			return ok && wanted(b.RobotID)
		},
		Weight: func(u Update) int {
			if b, ok := u.Value.(*db.LogBatch); ok {
				return len(t.shown(b))
			}
			// A batch the hub did not read (past db.MaxTailLines): its
			// lines at every level, as notified.
			return u.Change.Count
		},
	})
	if err != nil {
		return nil, err
	}
	t.sub = sub
	return t, nil
}

// newLogTail returns a tail of lines at minLevel or above, not subscribed.
func newLogTail(minLevel int16) *LogTail {
	return &LogTail{min: minLevel, sent: recent[int64, bool]{limit: maxSentLines}}
}

// Sub is the tail's hub subscription (Ready, Done, Err, Close).
func (t *LogTail) Sub() *Sub { return t.sub }

// Close ends the tail.
func (t *LogTail) Close() { t.sub.Close() }

func (t *LogTail) shown(b *db.LogBatch) []*db.RobotLog {
	var lines []*db.RobotLog
	for _, l := range b.Lines {
		if l.Level.Severity() >= t.min {
			lines = append(lines, l)
		}
	}
	return lines
}

// Item turns one of the subscription's updates into what the tail
// delivers, or ok false when it holds nothing for it. A batch's key range
// may also cover a concurrent batch of the same robot, announced on its
// own: lines already delivered are not delivered again. Only one goroutine
// may call it.
func (t *LogTail) Item(u Update) (item LogTailItem, ok bool) {
	if u.Op == OpMissed {
		return LogTailItem{Missed: int(u.Version)}, true
	}
	b, isBatch := u.Value.(*db.LogBatch)
	if !isBatch {
		return LogTailItem{}, false
	}
	var lines []*db.RobotLog
	for _, l := range t.shown(b) {
		if !t.sent.at(l.ID) {
			t.sent.set(l.ID, true)
			lines = append(lines, l)
		}
	}
	return LogTailItem{Robot: b.RobotID, Lines: lines}, len(lines) > 0
}

// Take returns what is waiting, in order.
func (t *LogTail) Take() []LogTailItem {
	var out []LogTailItem
	for _, u := range t.sub.Take() {
		if item, ok := t.Item(u); ok {
			out = append(out, item)
		}
	}
	return out
}
