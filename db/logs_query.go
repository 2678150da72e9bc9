package db

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"fleetgraph/fault"
)

// logsVisible restricts q to log lines the scope may see: the tenant's, or
// for a robot its own lines.
func logsVisible[Q wherer[Q]](s scope, q Q, alias string) Q {
	q = inTenant(s, q, alias)
	if s.isRobot() {
		q = q.Where(alias+".robot_id = ?", s.robot)
	}
	return q
}

// LogFilter narrows robotLogs.
type LogFilter struct {
	RobotID  *uuid.UUID
	JobID    *uuid.UUID
	MinLevel *LogLevel
	Since    *time.Time
	Until    *time.Time
	Contains *string
}

// checkWindow validates a since/until pair.
func checkWindow(since, until *time.Time) error {
	if since != nil && !TimeInRange(*since) {
		return fault.Invalid("since", "since must be %s", TimeRange)
	}
	if until != nil && !TimeInRange(*until) {
		return fault.Invalid("until", "until must be %s", TimeRange)
	}
	if since != nil && until != nil && until.Before(*since) {
		return fault.Invalid("until", "until must not be before since")
	}
	return nil
}

// List returns a page of the log lines the caller may see, newest first by
// (time, id): exact across partitions, since ids are unique.
func (s *Logs) List(ctx context.Context, idb bun.IDB, f LogFilter, p PageArgs) (Page[RobotLog], error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return Page[RobotLog]{}, err
	}
	limit, err := p.limit()
	if err != nil {
		return Page[RobotLog]{}, err
	}
	if err := checkWindow(f.Since, f.Until); err != nil {
		return Page[RobotLog]{}, err
	}
	q := logsVisible(sc, idb.NewSelect().Model((*RobotLog)(nil)), "l")
	if f.RobotID != nil {
		if err := requireVisibleRobot(ctx, idb, sc, *f.RobotID, "robotId"); err != nil {
			return Page[RobotLog]{}, err
		}
		q = q.Where("l.robot_id = ?", *f.RobotID)
	}
	if f.JobID != nil {
		exists, err := jobsVisible(sc, idb.NewSelect().Model((*Job)(nil)).Where("j.id = ?", *f.JobID), "j").Exists(ctx)
		if err != nil {
			return Page[RobotLog]{}, fmt.Errorf("finding the job: %w", err)
		}
		if !exists {
			return Page[RobotLog]{}, &fault.Error{Code: fault.NotFound, Field: "jobId", Message: "job not found"}
		}
		q = q.Where("l.job_id = ?", *f.JobID)
	}
	if f.MinLevel != nil {
		if !f.MinLevel.valid() {
			return Page[RobotLog]{}, fault.Invalid("minLevel", "minLevel is not a log level")
		}
		q = q.Where("l.level >= ?", f.MinLevel.Severity())
	}
	// Nothing before the retention's cutoff is kept: the window starts
	// there at the earliest, as the summary's does, so that a search
	// (contains, minLevel) that finds less than a page skips the
	// partitions the daily cleanup has yet to drop.
	from := s.retainedSince(s.cfg.Now())
	if f.Since != nil && f.Since.After(from) {
		from = *f.Since
	}
	q = q.Where("l.at >= ?", from)
	if f.Until != nil {
		q = q.Where("l.at < ?", *f.Until)
	}
	if f.Contains != nil && *f.Contains != "" {
		needle, err := checkFilterText("contains", *f.Contains)
		if err != nil {
			return Page[RobotLog]{}, err
		}
		q = q.Where(`l.message ILIKE ? ESCAPE '\'`, likePattern(needle))
	}
	if p.After != nil {
		at, id, err := decodeLogCursor(*p.After)
		if err != nil {
			return Page[RobotLog]{}, err
		}
		// The plain bound on at lets the planner skip newer partitions.
		q = q.Where("l.at <= ?", at).Where("(l.at, l.id) < (?, ?)", at, id)
	}
	var rows []*RobotLog
	if err := q.Model(&rows).OrderExpr("l.at DESC, l.id DESC").Apply(limitRows(limit + 1)).Scan(ctx); err != nil {
		return Page[RobotLog]{}, fmt.Errorf("listing log lines: %w", err)
	}
	return trim(rows, limit), nil
}

func decodeLogCursor(after string) (time.Time, int64, error) {
	pos, err := decodeCursor("log", after)
	if err != nil {
		return time.Time{}, 0, err
	}
	ts, ids, ok := strings.Cut(pos, "|")
	if !ok {
		return time.Time{}, 0, badCursor()
	}
	at, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil || !TimeInRange(at) {
		return time.Time{}, 0, badCursor()
	}
	id, err := strconv.ParseInt(ids, 10, 64)
	if err != nil || id <= 0 {
		return time.Time{}, 0, badCursor()
	}
	return at, id, nil
}

// requireVisibleRobot is NOT_FOUND (naming field) unless the scope sees robot.
func requireVisibleRobot(ctx context.Context, idb bun.IDB, sc scope, robot uuid.UUID, field string) error {
	exists, err := robotsVisible(sc, idb.NewSelect().Model((*Robot)(nil)).Where("r.id = ?", robot), "r").Exists(ctx)
	if err != nil {
		return fmt.Errorf("finding the robot: %w", err)
	}
	if !exists {
		return &fault.Error{Code: fault.NotFound, Field: field, Message: "robot not found"}
	}
	return nil
}

// LogSummaryRow is one (UTC day, robot, level) of logSummary.
type LogSummaryRow struct {
	Day     string    `bun:"day"`
	RobotID uuid.UUID `bun:"robot_id,type:uuid"`
	Level   LogLevel  `bun:"level"`
	Count   int64     `bun:"lines"`
	FirstAt time.Time `bun:"first_at"`
	LastAt  time.Time `bun:"last_at"`
}

// MaxSummaryRows caps logSummary.
const MaxSummaryRows = 500

// Summary counts the visible lines per UTC day, robot and level between
// since (default: 7 days ago) and until (default: now), newest day first,
// at most MaxSummaryRows rows: the old robot_logs_daily_summary view,
// computed on the lines of the window only. The window starts no earlier
// than the retention keeps lines (retainedSince).
func (s *Logs) Summary(ctx context.Context, idb bun.IDB, since, until *time.Time, robotID *uuid.UUID) ([]*LogSummaryRow, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkWindow(since, until); err != nil {
		return nil, err
	}
	q := logsVisible(sc, idb.NewSelect().Model((*RobotLog)(nil)), "l").
		ColumnExpr("to_char((l.at AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD') AS day, l.robot_id, l.level").
		ColumnExpr("count(*) AS lines, min(l.at) AS first_at, max(l.at) AS last_at")
	now := s.cfg.Now()
	from := now.Add(-7 * 24 * time.Hour)
	if since != nil {
		from = *since
	}
	// Nothing before the retention's cutoff is kept, so a window that
	// starts earlier (since: 2000-01-01) is clamped to it: the bound on
	// at is what lets the planner skip the partitions outside the window,
	// and an unbounded one made the summary read every partition left.
	if kept := s.retainedSince(now); from.Before(kept) {
		from = kept
	}
	q = q.Where("l.at >= ?", from)
	if until != nil {
		q = q.Where("l.at < ?", *until)
	}
	if robotID != nil {
		if err := requireVisibleRobot(ctx, idb, sc, *robotID, "robotId"); err != nil {
			return nil, err
		}
		q = q.Where("l.robot_id = ?", *robotID)
	}
	var rows []*LogSummaryRow
	err = q.GroupExpr("1, 2, 3").OrderExpr("1 DESC, 2, 3 DESC").Apply(limitRows(MaxSummaryRows)).Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("summarising log lines: %w", err)
	}
	return rows, nil
}

// LogBatch is one ingest batch of one robot, as a live tail receives it.
type LogBatch struct {
	TenantID uuid.UUID
	RobotID  uuid.UUID
	// Lines are oldest first.
	Lines []*RobotLog
}

// Len is how many lines the batch holds.
func (b *LogBatch) Len() int { return len(b.Lines) }

// LogBatchKey locates a batch: its robot, id range and time range (in
// microseconds since the epoch), as its notification names it.
type LogBatchKey struct {
	Robot  uuid.UUID
	Lo, Hi int64
	From   time.Time
	To     time.Time
}

// ParseLogBatchKey reads "robot:lo:hi:fromMicros:toMicros".
func ParseLogBatchKey(key string) (LogBatchKey, bool) {
	parts := strings.Split(key, ":")
	if len(parts) != 5 {
		return LogBatchKey{}, false
	}
	robot, err := uuid.Parse(parts[0])
	if err != nil {
		return LogBatchKey{}, false
	}
	var n [4]int64
	for i, p := range parts[1:] {
		if n[i], err = strconv.ParseInt(p, 10, 64); err != nil {
			return LogBatchKey{}, false
		}
	}
	return LogBatchKey{Robot: robot, Lo: n[0], Hi: n[1], From: time.UnixMicro(n[2]), To: time.UnixMicro(n[3])}, true
}

// MaxTailLines caps the log lines one hub batch reads for a tenant's live
// tails (Batches, and the hub's choice of which announced batches to read):
// tails are lossy, and the lines past it reach them as a missedLines notice.
const MaxTailLines = 10_000

// MaxTailSpan is the widest time range of a shipped batch that live tails
// re-read. A key is found by its robot's lines in its time range (the
// index's order), so a batch of two lines stamped eight days apart read
// every line the robot shipped in those days; a wider batch (lines a
// robot buffered for a while) reaches tails as a missedLines notice, and
// its lines are in robotLogs.
const MaxTailSpan = 5 * time.Minute

// Batches re-reads announced batches of lines the caller may see, by key,
// in one statement, reading at most MaxTailLines distinct lines. A key's
// range may also hold lines of a concurrent batch of the same robot (a
// line is read once, and given to every key whose range holds it); tails
// drop lines they already sent. A key whose lines were not all read within
// the cap, or whose time range is wider than MaxTailSpan, is unread; a key
// with no lines (deleted since) is in neither.
func (s *Logs) Batches(ctx context.Context, idb bun.IDB, keys []LogBatchKey) (read map[LogBatchKey]*LogBatch, unread []LogBatchKey, err error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, nil, err
	}
	keys = slices.DeleteFunc(slices.Clone(keys), func(k LogBatchKey) bool {
		wide := k.To.Sub(k.From) > MaxTailSpan
		if wide {
			unread = append(unread, k)
		}
		return wide
	})
	if len(keys) == 0 {
		return nil, unread, nil
	}
	robots := make([]uuid.UUID, len(keys))
	los, his := make([]int64, len(keys)), make([]int64, len(keys))
	froms, tos := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		robots[i], los[i], his[i] = k.Robot, k.Lo, k.Hi
		froms[i], tos[i] = k.From.UTC().Format(time.RFC3339Nano), k.To.UTC().Format(time.RFC3339Nano)
	}
	// Per key, the lines of its robot in its id and time ranges (the time
	// range lets the planner skip other days' partitions).
	// The LIMIT (the statement's own) keeps the subquery a lookup per key:
	// flattened into a join, the planner hashed the keys and read every
	// line the tenant kept.
	inner := logsVisible(sc, idb.NewSelect().Model((*RobotLog)(nil)).
		Where("l.robot_id = k.robot AND l.at >= k.a0 AND l.at <= k.a1 AND l.id BETWEEN k.lo AND k.hi"), "l").
		OrderExpr("l.id").Apply(limitRows(MaxTailLines + 1))
	var rows []*RobotLog
	err = idb.NewSelect().
		TableExpr("unnest(?::uuid[], ?::bigint[], ?::bigint[], ?::timestamptz[], ?::timestamptz[]) AS k(robot, lo, hi, a0, a1)",
			pgUUIDs(robots), pgdialect.Array(los), pgdialect.Array(his), pgdialect.Array(froms), pgdialect.Array(tos)).
		Join("CROSS JOIN LATERAL (?) AS l", inner).
		DistinctOn("l.id").ColumnExpr("l.*").OrderExpr("l.id").Apply(limitRows(MaxTailLines+1)).Scan(ctx, &rows)
	if err != nil {
		return nil, nil, fmt.Errorf("re-reading log lines: %w", err)
	}
	// Past the cap, a key whose range goes beyond the last line kept may
	// have lines that were not read.
	last := int64(math.MaxInt64)
	if len(rows) > MaxTailLines {
		rows = rows[:MaxTailLines]
		last = rows[len(rows)-1].ID
	}
	read = make(map[LogBatchKey]*LogBatch, len(keys))
	for _, k := range keys {
		if k.Hi > last {
			unread = append(unread, k)
			continue
		}
		// rows are in id order: the key's range starts at the first line
		// not below Lo.
		i, _ := slices.BinarySearchFunc(rows, k.Lo, func(l *RobotLog, id int64) int { return cmp.Compare(l.ID, id) })
		var lines []*RobotLog
		for _, l := range rows[i:] {
			if l.ID > k.Hi {
				break
			}
			if l.RobotID == k.Robot && !l.At.Before(k.From) && !l.At.After(k.To) {
				lines = append(lines, l)
			}
		}
		if len(lines) > 0 {
			read[k] = &LogBatch{TenantID: lines[0].TenantID, RobotID: k.Robot, Lines: lines}
		}
	}
	return read, unread, nil
}

// LogsOf returns each visible job's newest log lines, at most limit each
// (Job.logs): its lines in robot_logs. A robot sees only its own lines.
func (s *Logs) LogsOf(ctx context.Context, idb bun.IDB, ids []uuid.UUID, limit int) (map[uuid.UUID][]*RobotLog, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	inner := logsVisible(sc, idb.NewSelect().Model((*RobotLog)(nil)).Where("l.job_id = k.id AND l.tenant_id = j.tenant_id"), "l").
		OrderExpr("l.at DESC, l.id DESC").Apply(limitRows(limit))
	var rows []*RobotLog
	err = jobsVisible(sc, idb.NewSelect().
		TableExpr("unnest(?::uuid[]) AS k(id)", pgUUIDs(ids)).
		Join("JOIN jobs AS j ON j.id = k.id").
		Join("CROSS JOIN LATERAL (?) AS l", inner).
		ColumnExpr("l.*"), "j").Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("loading job logs: %w", err)
	}
	return groupBy(ids, rows, func(l *RobotLog) uuid.UUID { return *l.JobID }), nil
}

// RobotHeartbeat is one sampled heartbeat of a robot.
type RobotHeartbeat struct {
	bun.BaseModel `bun:"table:robot_heartbeats,alias:h"`

	ID           int64       `bun:"id"`
	RobotID      uuid.UUID   `bun:"robot_id,type:uuid"`
	TenantID     uuid.UUID   `bun:"tenant_id,type:uuid"`
	Status       RobotStatus `bun:"status"`
	Metrics      RawJSON     `bun:"metrics,type:jsonb"`
	AgentVersion string      `bun:"agent_version"`
	At           time.Time   `bun:"at"`
}

// HeartbeatHistory returns a visible robot's sampled heartbeats between
// since and until, newest first, at most first (default 100, at most
// MaxPageSize). The history is kept for LOG_RETENTION_DAYS.
func (s *Logs) HeartbeatHistory(ctx context.Context, idb bun.IDB, robotID uuid.UUID, since, until *time.Time, first *int) ([]*RobotHeartbeat, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	limit, err := pageSize(first, 100)
	if err != nil {
		return nil, err
	}
	if err := checkWindow(since, until); err != nil {
		return nil, err
	}
	q := inTenant(sc, idb.NewSelect().Model((*RobotHeartbeat)(nil)).Where("h.robot_id = ?", robotID), "h")
	if sc.isRobot() {
		q = q.Where("h.robot_id = ?", sc.robot)
	}
	if since != nil {
		q = q.Where("h.at >= ?", *since)
	}
	if until != nil {
		q = q.Where("h.at < ?", *until)
	}
	var rows []*RobotHeartbeat
	if err := q.Model(&rows).OrderExpr("h.at DESC, h.id DESC").Apply(limitRows(limit)).Scan(ctx); err != nil {
		return nil, fmt.Errorf("reading heartbeat history: %w", err)
	}
	return rows, nil
}

// MaxResyncLines caps what ChangedSince re-reads for live tails.
const MaxResyncLines = 10_000

// ChangedSince re-reads, for live tails after the change feed lost
// notifications, the visible lines timestamped at or after since (at most
// MaxResyncLines, the newest), as batches per robot and writing
// transaction (each line's Xact, so a tail can keep the batches committed
// after it subscribed) of at most MaxShipBatch lines, oldest first. Lines
// a robot stamped earlier than since but shipped meanwhile are not found:
// the tail's replay is best effort, and robotLogs is the record.
func (s *Logs) ChangedSince(ctx context.Context, idb bun.IDB, since time.Time) ([]*LogBatch, error) {
	sc, err := scopeOf(ctx)
	if err != nil {
		return nil, err
	}
	var rows []*RobotLog
	err = logsVisible(sc, idb.NewSelect().Model(&rows).ColumnExpr("l.*").Where("l.at >= ?", since), "l").
		OrderExpr("l.at DESC, l.id DESC").Apply(limitRows(MaxResyncLines)).Scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("re-reading log lines: %w", err)
	}
	type source struct {
		robot uuid.UUID
		xact  uint64
	}
	bySource := map[source]*LogBatch{}
	var out []*LogBatch
	for i := len(rows) - 1; i >= 0; i-- { // oldest first
		l := rows[i]
		k := source{l.RobotID, l.Xact}
		b := bySource[k]
		if b == nil || len(b.Lines) == MaxShipBatch {
			// A batch holds what one shipLogs may (RobotLogBatch.lines
			// is counted at that): a longer replay is several.
			b = &LogBatch{TenantID: l.TenantID, RobotID: l.RobotID}
			bySource[k] = b
			out = append(out, b)
		}
		b.Lines = append(b.Lines, l)
	}
	return out, nil
}
