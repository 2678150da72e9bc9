package db

import (
	"bytes"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/lib/pq"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"fleetgraph/fault"
	"fleetgraph/locks"
)

// LogLevel is a log line's severity. The database stores it as a number
// (10 DEBUG to 50 CRITICAL) so that a minimum level is a range.
type LogLevel string

// Log levels, the old setup's. WARN is how job logs spelled WARNING: it is
// still accepted as input and stored as WARNING.
const (
	LogDebug    LogLevel = "DEBUG"
	LogInfo     LogLevel = "INFO"
	LogWarning  LogLevel = "WARNING"
	LogError    LogLevel = "ERROR"
	LogCritical LogLevel = "CRITICAL"
	LogWarn     LogLevel = "WARN"
)

var severities = map[LogLevel]int16{LogDebug: 10, LogInfo: 20, LogWarning: 30, LogWarn: 30, LogError: 40, LogCritical: 50}

// Severity is the level's number (0 for an unknown level).
func (l LogLevel) Severity() int16 { return severities[l] }

func (l LogLevel) valid() bool { return severities[l] != 0 }

// canonical reads WARN as WARNING.
func (l LogLevel) canonical() LogLevel {
	if l == LogWarn {
		return LogWarning
	}
	return l
}

// levelOf names a stored severity.
func levelOf(n int64) (LogLevel, error) {
	for l, s := range severities {
		if int64(s) == n && l != LogWarn {
			return l, nil
		}
	}
	return "", fmt.Errorf("unknown log severity %d", n)
}

// Value stores the level as its severity.
func (l LogLevel) Value() (driver.Value, error) {
	if !l.valid() {
		return nil, fmt.Errorf("unknown log level %q", l)
	}
	return int64(l.Severity()), nil
}

// Scan reads a stored severity.
func (l *LogLevel) Scan(src any) error {
	var n int64
	switch v := src.(type) {
	case int64:
		n = v
	case []byte:
		i, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return fmt.Errorf("reading a log severity: %w", err)
		}
		n = i
	default:
		return fmt.Errorf("reading a log severity from %T", src)
	}
	lv, err := levelOf(n)
	*l = lv
	return err
}

// RobotLog is one line of a robot's log; a job's log is its lines with
// its job id.
type RobotLog struct {
	bun.BaseModel `bun:"table:robot_logs,alias:l"`

	ID       int64      `bun:"id"`
	TenantID uuid.UUID  `bun:"tenant_id,type:uuid"`
	RobotID  uuid.UUID  `bun:"robot_id,type:uuid"`
	JobID    *uuid.UUID `bun:"job_id,type:uuid"`
	Level    LogLevel   `bun:"level"`
	Message  string     `bun:"message"`
	Fields   RawJSON    `bun:"fields,type:jsonb"`
	At       time.Time  `bun:"at"`
	// Xact is the top-level transaction that wrote the line (0: before
	// migration 0012), read only by ChangedSince: a resync offers a line
	// to the tails it was committed after (Snapshot.Committed).
	Xact uint64 `bun:"xact,scanonly"`
}

// Cursor is the line's position in robotLogs, newest first.
func (l *RobotLog) Cursor() string {
	return encodeCursor("log", l.At.UTC().Format(time.RFC3339Nano)+"|"+strconv.FormatInt(l.ID, 10))
}

// JobLogInput is one log line a robot ships about a job (appendJobLogs).
type JobLogInput struct {
	Level   LogLevel
	Message string
	Fields  map[string]any
	At      *time.Time
}

// RobotLogInput is one log line a robot ships (shipLogs). A line about a
// job names the job and the lease the robot holds it under.
type RobotLogInput struct {
	Level      LogLevel
	Message    string
	Fields     map[string]any
	At         *time.Time
	JobID      *uuid.UUID
	LeaseToken *uuid.UUID
}

// Log limits.
const (
	// MaxLogBatch caps appendJobLogs.
	MaxLogBatch = 500
	// MaxShipBatch caps shipLogs.
	MaxShipBatch = 1000
	// MaxLogMessage is the longest message, in characters.
	MaxLogMessage = 8000
	// LogFutureSlack is how far ahead of the server's clock a line's time may be.
	LogFutureSlack = 5 * time.Minute
	// RobotTimeField is the field that keeps a robot's own time of a line
	// stored at the receive time because its time was out of the window.
	RobotTimeField = "robotAt"
)

// LogConfig is the log store's configuration.
type LogConfig struct {
	// RetentionDays is how many days of lines (and heartbeat history) are
	// kept (LOG_RETENTION_DAYS, default 30).
	RetentionDays int
	// PartitionsAhead is how many days after today have partitions ready
	// (LOG_PARTITIONS_AHEAD, default 3).
	PartitionsAhead int
	// Now is the server's clock (default time.Now): the receive time of
	// lines and the time retention counts from.
	Now func() time.Time
}

// DefaultLogConfig is production's.
var DefaultLogConfig = LogConfig{RetentionDays: 30, PartitionsAhead: 3}

// Logs is the store of robot logs, their partitions and their retention.
type Logs struct {
	cfg  LogConfig
	jobs *Jobs
}

// NewLogs returns the log store; job-bound lines are fenced through jobs.
func NewLogs(cfg LogConfig, jobs *Jobs) *Logs {
	if cfg.RetentionDays == 0 {
		cfg.RetentionDays = DefaultLogConfig.RetentionDays
	}
	if cfg.PartitionsAhead == 0 {
		cfg.PartitionsAhead = DefaultLogConfig.PartitionsAhead
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Logs{cfg: cfg, jobs: jobs}
}

// Config returns the store's configuration.
func (s *Logs) Config() LogConfig { return s.cfg }

// logLine is a validated line ready to insert.
type logLine struct {
	job     *uuid.UUID
	level   LogLevel
	message string
	fields  map[string]any
	// fieldsJSON is fields as compact JSON, as validation encoded it;
	// empty for a line built elsewhere, whose fields are encoded on insert.
	fieldsJSON string
	at         time.Time
}

func checkLogMessage(field, msg string) error {
	if n := utf8.RuneCountInString(msg); n > MaxLogMessage {
		return fault.Invalid(field, "%s is %d characters; the limit is %d", field, n, MaxLogMessage)
	}
	return checkText(field, msg)
}

// line validates one line (field names it, e.g. entries[3]) and places it
// in time. A line timestamped outside the accepted window (older than the
// retention, or more than LogFutureSlack ahead) is stored at the receive
// time, with the robot's time kept in fields.robotAt: it is not refused,
// since one skewed clock must not lose a whole batch.
//
// The line's name (entries[i]) is built only for an error: ingest
// validates up to MaxShipBatch lines a call.
func (s *Logs) line(i int, now time.Time, level LogLevel, message string, fields map[string]any, at *time.Time) (logLine, error) {
	field := func() string { return "entries[" + strconv.Itoa(i) + "]" }
	if !level.valid() {
		f := field()
		return logLine{}, fault.Invalid(f+".level", "%s.level must be DEBUG, INFO, WARNING, ERROR or CRITICAL", f)
	}
	// Bytes bound characters: a message of at most MaxLogMessage bytes
	// needs no counting.
	if len(message) > MaxLogMessage || strings.IndexByte(message, 0) >= 0 || !utf8.ValidString(message) {
		if err := checkLogMessage(field()+".message", message); err != nil {
			return logLine{}, err
		}
	}
	valid, text, err := checkJSONObjectText("fields", fields)
	if err != nil {
		_, _, err = checkJSONObjectText(field()+".fields", fields)
		return logLine{}, err
	}
	l := logLine{level: level.canonical(), message: message, fields: valid, fieldsJSON: text, at: now}
	if at != nil {
		oldest := now.Add(-time.Duration(s.cfg.RetentionDays) * 24 * time.Hour)
		if at.Before(oldest) || at.After(now.Add(LogFutureSlack)) || !TimeInRange(*at) {
			l.fields = maps.Clone(fields)
			if l.fields == nil {
				l.fields = map[string]any{}
			}
			l.fields[RobotTimeField] = at.UTC().Format(time.RFC3339Nano)
			l.fieldsJSON = jsonText(l.fields)
		} else {
			l.at = *at
		}
	}
	return l, nil
}

// Ship stores up to MaxShipBatch lines of the calling robot in one
// statement and tells live tails once. Lines that name a job are fenced on
// the job's lease, as appendJobLogs is. Any bad line refuses the batch,
// naming the line; nothing is written then.
func (s *Logs) Ship(ctx context.Context, idb bun.IDB, entries []RobotLogInput) (int, error) {
	sc, err := robotScope(ctx)
	if err != nil {
		return 0, err
	}
	if len(entries) == 0 {
		return 0, fault.Invalid("entries", "give at least one log line")
	}
	if len(entries) > MaxShipBatch {
		return 0, fault.Invalid("entries", "at most %d log lines per call (got %d)", MaxShipBatch, len(entries))
	}
	now := s.cfg.Now()
	lines := make([]logLine, len(entries))
	type lease struct{ job, token uuid.UUID }
	var leases []lease
	first := map[lease]int{} // the first line about each lease, which a refusal names
	for i, e := range entries {
		if lines[i], err = s.line(i, now, e.Level, e.Message, e.Fields, e.At); err != nil {
			return 0, err
		}
		switch {
		case e.JobID == nil && e.LeaseToken == nil:
		case e.JobID == nil || e.LeaseToken == nil:
			field := "entries[" + strconv.Itoa(i) + "]"
			return 0, fault.Invalid(field+".leaseToken", "%s: a line about a job needs both jobId and leaseToken", field)
		default:
			lines[i].job = e.JobID
			if l := (lease{*e.JobID, *e.LeaseToken}); !slices.Contains(leases, l) {
				leases = append(leases, l)
				first[l] = i
			}
		}
	}
	// Jobs are locked in id order, as every other path that locks several
	// of a robot's jobs does (a heartbeat extending their leases): in the
	// order the lines came, two such paths could deadlock.
	slices.SortFunc(leases, func(a, b lease) int { return bytes.Compare(a.job[:], b.job[:]) }) // PostgreSQL orders uuids by their bytes
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		for _, l := range leases {
			// A no-op fenced update proves the robot holds the job (and locks it).
			if err := s.holdsJob(ctx, tx, l.job, l.token); err != nil {
				return namedLine(err, first[l])
			}
		}
		return insertLines(ctx, tx, sc.tenant, sc.robot, lines)
	})
	if err != nil {
		return 0, err
	}
	return len(lines), nil
}

// namedLine names, in a refusal of a line's job (not found, or a lease the
// robot does not hold), the line it refused: entries[i].jobId for a job
// the robot cannot see, entries[i].leaseToken for one whose lease it lost.
func namedLine(err error, i int) error {
	var f *fault.Error
	if !errors.As(err, &f) || f.Field != "" {
		return err
	}
	named := *f
	named.Field = "entries[" + strconv.Itoa(i) + "].leaseToken"
	if f.Code == fault.NotFound {
		named.Field = "entries[" + strconv.Itoa(i) + "].jobId"
	}
	return &named
}

// AppendJobLogs adds up to MaxLogBatch lines to a job the robot holds
// (appendJobLogs) and returns how many.
func (s *Logs) AppendJobLogs(ctx context.Context, idb bun.IDB, jobID, token uuid.UUID, entries []JobLogInput) (int, error) {
	sc, err := robotScope(ctx)
	if err != nil {
		return 0, err
	}
	if len(entries) == 0 {
		return 0, fault.Invalid("entries", "give at least one log line")
	}
	if len(entries) > MaxLogBatch {
		return 0, fault.Invalid("entries", "at most %d log lines per call (got %d)", MaxLogBatch, len(entries))
	}
	now := s.cfg.Now()
	lines := make([]logLine, len(entries))
	for i, e := range entries {
		if lines[i], err = s.line(i, now, e.Level, e.Message, e.Fields, e.At); err != nil {
			return 0, err
		}
		lines[i].job = &jobID
	}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := s.holdsJob(ctx, tx, jobID, token); err != nil {
			return err
		}
		return insertLines(ctx, tx, sc.tenant, sc.robot, lines)
	})
	if err != nil {
		return 0, err
	}
	return len(lines), nil
}

// holdsJob proves that the calling robot holds the job under token, and
// locks the job's row, by a fenced update that changes nothing: the revision
// trigger sees no change, so subscribers are told of none.
func (s *Logs) holdsJob(ctx context.Context, tx bun.Tx, jobID, token uuid.UUID) error {
	_, err := s.jobs.fenced(ctx, tx, jobID, token, liveJobStatuses, "log to", func(q *bun.UpdateQuery, _ *Params) *bun.UpdateQuery {
		return q.Set("lease_token = j.lease_token")
	})
	return err
}

// LogChannel is where log batches are announced: the change feed, kind "log".
const LogChannel = "fleetgraph_change"

// insertLinesSQL writes a batch in one statement and announces it with one
// NOTIFY: the routing fields a tail needs (tenant, robot, the batch's
// highest severity) and a key from which the batch is re-read (robot, id
// range, time range in microseconds), never the lines. Parameters: tenant,
// robot, job ids (text, ” for none), severities, messages, fields, times.
const insertLinesSQL = `
WITH ins AS (
	INSERT INTO robot_logs (tenant_id, robot_id, job_id, level, message, fields, at)
	SELECT ?0, ?1, nullif(u.job, '')::uuid, u.level, u.message, u.fields, u.at
	FROM unnest(?2::text[], ?3::smallint[], ?4::text[], ?5::jsonb[], ?6::timestamptz[]) AS u(job, level, message, fields, at)
	RETURNING id, at, level
), batch AS (
	SELECT count(*) AS n, min(id) AS lo, max(id) AS hi, max(level) AS lv,
	       floor(extract(epoch FROM min(at)) * 1000000)::bigint AS a0,
	       ceil(extract(epoch FROM max(at)) * 1000000)::bigint AS a1
	FROM ins
)
SELECT n, pg_notify('fleetgraph_change', json_build_object(
	'k', 'log', 'op', 'INSERT', 't', ?0, 'r', ?1, 'v', hi, 'n', n, 'lv', lv,
	'id', concat_ws(':', ?1, lo, hi, a0, a1))::text)
FROM batch`

// insertLines stores lines of robot in tenant, creating a missing day's
// partition first, and announces them once.
func insertLines(ctx context.Context, tx bun.Tx, tenant, robot uuid.UUID, lines []logLine) error {
	days := map[string]bool{}
	jobs := make([]string, len(lines))
	levels := make([]int64, len(lines))
	messages := make([]string, len(lines))
	fields := make([]string, len(lines))
	ats := make([]string, len(lines))
	for i, l := range lines {
		if l.job != nil {
			jobs[i] = l.job.String()
		}
		levels[i] = int64(l.level.Severity())
		messages[i] = l.message
		if fields[i] = l.fieldsJSON; fields[i] == "" {
			fields[i] = jsonText(l.fields) // a line not made by Logs.line (job progress)
		}
		ats[i] = l.at.UTC().Format(time.RFC3339Nano)
		days[l.at.UTC().Format(time.DateOnly)] = true
	}
	if err := ensurePartitions(ctx, tx, slices.Sorted(maps.Keys(days))); err != nil {
		return err
	}
	var n int
	err := tx.NewRaw(insertLinesSQL, tenant, robot, pgdialect.Array(jobs), pgdialect.Array(levels),
		pgdialect.Array(messages), pgdialect.Array(fields), pgdialect.Array(ats)).Scan(ctx, &n, new(string))
	if err != nil {
		return fmt.Errorf("storing log lines: %w", err)
	}
	return nil
}

// ensurePartitions makes sure the partitions of days (YYYY-MM-DD) exist.
// It costs one catalog lookup per day when they do. Making one waits for
// no reader or writer of robot_logs (migration 0016 attaches it), and at
// most 2 s for anything else (a retention run, DDL by hand): then the batch
// is refused with CONFLICT, to be shipped again.
func ensurePartitions(ctx context.Context, idb bun.IDB, days []string) error {
	if _, err := idb.NewRaw("SELECT fleetgraph_ensure_log_partition(d) FROM unnest(?::date[]) AS d", pgdialect.Array(days)).Exec(ctx); err != nil {
		if isLockTimeout(err) {
			return fault.New(fault.Conflict, "the log partition of a line's day is being changed (a retention run, or maintenance by hand); ship the lines again")
		}
		return fmt.Errorf("preparing log partitions: %w", err)
	}
	return nil
}

// retainedSince is the start of what the retention keeps at now: the
// start of the UTC day RetentionDays before today. The daily cleanup drops
// every partition of a day before it (Cleanup's cutoff), and ingest stores
// no line older than RetentionDays at its own time, so a read need not
// look further back.
func (s *Logs) retainedSince(now time.Time) time.Time {
	return day(now).AddDate(0, 0, -s.cfg.RetentionDays)
}

// isLockTimeout reports whether err is a statement that gave up waiting
// for a lock (lock_not_available, after lock_timeout).
func isLockTimeout(err error) bool {
	var pqErr *pq.Error
	return errors.As(err, &pqErr) && pqErr.Code == "55P03"
}

// day is the UTC day of t.
func day(t time.Time) time.Time {
	return t.UTC().Truncate(24 * time.Hour)
}

// EnsurePartitions creates the partitions of the day of now and of
// PartitionsAhead days after it that do not exist yet, and returns the
// names it created. It is maintenance work (task log-partitions). A day's
// partition is created standalone and attached (migration 0016), which
// blocks neither reads nor writes of robot_logs and waits at most 2 s for
// stronger locks: a busy moment fails the run, which the runner retries
// a minute later, long before the days ahead are needed.
func (s *Logs) EnsurePartitions(ctx context.Context, idb bun.IDB, now time.Time) ([]string, error) {
	var created []string
	for i := range s.cfg.PartitionsAhead + 1 {
		d := day(now).AddDate(0, 0, i)
		var made bool
		if err := idb.NewRaw("SELECT fleetgraph_ensure_log_partition(?::date)", d.Format(time.DateOnly)).Scan(ctx, &made); err != nil {
			return created, fmt.Errorf("creating the log partition of %s: %w", d.Format(time.DateOnly), err)
		}
		if made {
			created = append(created, partitionName(d))
		}
	}
	return created, nil
}

func partitionName(d time.Time) string { return "robot_logs_p" + d.Format("20060102") }

// LogPartition is one day's partition of robot_logs.
type LogPartition struct {
	Name string
	// Day is the UTC day it holds: lines from Day to Day + 24 h.
	Day time.Time
}

// Partitions lists robot_logs's partitions, oldest first. A table attached
// under another name (not robot_logs_pYYYYMMDD) is listed with a zero Day.
func (s *Logs) Partitions(ctx context.Context, idb bun.IDB) ([]LogPartition, error) {
	var names []string
	err := idb.NewRaw(`SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'robot_logs'::regclass ORDER BY c.relname`).Scan(ctx, &names)
	if err != nil {
		return nil, fmt.Errorf("listing log partitions: %w", err)
	}
	out := make([]LogPartition, 0, len(names))
	for _, n := range names {
		p := LogPartition{Name: n}
		if ds, ok := strings.CutPrefix(n, "robot_logs_p"); ok {
			if d, err := time.Parse("20060102", ds); err == nil {
				p.Day = d
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// LogCleanup is one retention run, as its caller may see it: the whole
// installation's figures for the system (the leader, the CLI), the
// caller's tenant's share for a tenant's service role.
type LogCleanup struct {
	ID            int64     `bun:"id"`
	Actor         string    `bun:"actor"`
	DryRun        bool      `bun:"dry_run"`
	RetentionDays int       `bun:"retention_days"`
	Cutoff        time.Time `bun:"cutoff"`
	// Partitions are the days dropped (or that a dry run would drop), YYYY-MM-DD.
	Partitions []string  `bun:"partitions,array"`
	Rows       int64     `bun:"rows"`
	Bytes      int64     `bun:"bytes"`
	Heartbeats int64     `bun:"heartbeats"`
	At         time.Time `bun:"at"`
}

// Cursor is the run's position in logCleanupHistory, newest first.
func (c *LogCleanup) Cursor() string { return encodeCursor("logcleanup", strconv.FormatInt(c.ID, 10)) }

// partitionCount is one tenant's lines in a partition.
type partitionCount struct {
	Tenant uuid.UUID `bun:"tenant_id"`
	N      int64     `bun:"n"`
}

// countPartition counts the lines of the partition name per tenant, and
// their total. For a tenant's dry run (ownOnly) it counts only tenant's
// lines, through the tenant's index, and takes the total, which only
// divides the partition's size into shares, from PostgreSQL's estimate
// (pg_class.reltuples, kept by autovacuum; an expired day takes no more
// writes; counted when the partition was never analyzed): counting every
// tenant's lines would make each dry run a scan
// of whole days of the installation's logs, at a tenant's request, as
// often as it liked, until the leader's daily run dropped them.
func countPartition(ctx context.Context, tx bun.Tx, name string, ownOnly bool, tenant uuid.UUID) ([]partitionCount, int64, error) {
	var counts []partitionCount
	if !ownOnly {
		if err := tx.NewRaw("SELECT tenant_id, count(*) AS n FROM ? GROUP BY tenant_id", bun.Ident(name)).Scan(ctx, &counts); err != nil {
			return nil, 0, fmt.Errorf("counting the lines of %s: %w", name, err)
		}
		var total int64
		for _, c := range counts {
			total += c.N
		}
		return counts, total, nil
	}
	var own, estimate int64
	err := tx.NewRaw("SELECT (SELECT count(*) FROM ? WHERE tenant_id = ?), (SELECT reltuples::bigint FROM pg_class WHERE oid = ?::regclass)",
		bun.Ident(name), tenant, name).Scan(ctx, &own, &estimate)
	if err != nil {
		return nil, 0, fmt.Errorf("counting the lines of %s: %w", name, err)
	}
	if estimate < 0 {
		// Never analyzed (a restored database, autovacuum off): no
		// estimate, so count; the day's share would otherwise be all of it.
		if err := tx.NewRaw("SELECT count(*) FROM ?", bun.Ident(name)).Scan(ctx, &estimate); err != nil {
			return nil, 0, fmt.Errorf("counting the lines of %s: %w", name, err)
		}
	}
	if own > 0 {
		counts = []partitionCount{{Tenant: tenant, N: own}}
	}
	return counts, max(own, estimate), nil
}

// tenantShare is a tenant's part of a run.
type tenantShare struct {
	rows, bytes, heartbeats int64
}

// Cleanup drops every robot_logs partition wholly older than retentionDays
// (counted in UTC days back from today) and the heartbeat history older
// than the same cutoff, and records the run; a dry run only records what it
// would drop. retentionDays nil is the configured retention. Only
// service_role may run it; a tenant's service role may not go below the
// configured retention, since partitions hold every tenant's lines (the
// system may, for the operator CLI). It returns the run as the caller sees it.
func (s *Logs) Cleanup(ctx context.Context, idb bun.IDB, retentionDays *int, dryRun bool) (*LogCleanup, error) {
	sc, err := userScope(ctx)
	if err != nil {
		return nil, err
	}
	if !sc.wholeTenant {
		return nil, fault.New(fault.Forbidden, "only service_role may clean up logs")
	}
	system := sc.installation
	days := s.cfg.RetentionDays
	if retentionDays != nil {
		days = *retentionDays
	}
	switch {
	case days < 1 || days > 3650:
		return nil, fault.Invalid("retentionDays", "retentionDays must be between 1 and 3650")
	case days < s.cfg.RetentionDays && !system:
		return nil, fault.Invalid("retentionDays", "retentionDays must be at least the server's LOG_RETENTION_DAYS (%d): partitions hold every tenant's lines", s.cfg.RetentionDays)
	}
	now := s.cfg.Now()
	cutoff := day(now).AddDate(0, 0, -days)
	run := &LogCleanup{Actor: sc.actor, DryRun: dryRun, RetentionDays: days, Cutoff: cutoff, Partitions: []string{}}
	shares := map[uuid.UUID]*tenantShare{}
	share := func(t uuid.UUID) *tenantShare {
		if shares[t] == nil {
			shares[t] = &tenantShare{}
		}
		return shares[t]
	}
	err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(?)", int64(locks.LogPartitions)); err != nil {
			return fmt.Errorf("waiting for the log partition lock: %w", err)
		}
		parts, err := s.Partitions(ctx, tx)
		if err != nil {
			return err
		}
		// Everything is counted and recorded first, and the partitions
		// dropped last: a DROP locks robot_logs itself (ACCESS EXCLUSIVE)
		// until the commit, and every log read and write waits for it.
		var drop []string
		for _, p := range parts {
			if p.Day.IsZero() || !p.Day.Before(cutoff) {
				continue
			}
			var size int64
			if err := tx.NewRaw("SELECT pg_total_relation_size(?::regclass)", p.Name).Scan(ctx, &size); err != nil {
				return fmt.Errorf("sizing %s: %w", p.Name, err)
			}
			counts, total, err := countPartition(ctx, tx, p.Name, dryRun && !system, sc.tenant)
			if err != nil {
				return err
			}
			for _, c := range counts {
				sh := share(c.Tenant)
				sh.rows += c.N
				sh.bytes += share64(size, c.N, total)
			}
			run.Rows += total
			run.Bytes += size
			run.Partitions = append(run.Partitions, p.Day.Format(time.DateOnly))
			drop = append(drop, p.Name)
		}
		hb, hbArgs := "SELECT tenant_id, count(*) AS n FROM robot_heartbeats WHERE at < ? GROUP BY tenant_id", []any{cutoff}
		if dryRun && !system {
			// A tenant's dry run: its own samples only (and it records them).
			hb, hbArgs = "SELECT tenant_id, count(*) AS n FROM robot_heartbeats WHERE at < ? AND tenant_id = ? GROUP BY tenant_id", []any{cutoff, sc.tenant}
		}
		if !dryRun {
			hb = "WITH d AS (DELETE FROM robot_heartbeats WHERE at < ? RETURNING tenant_id) SELECT tenant_id, count(*) AS n FROM d GROUP BY tenant_id"
		}
		var counts []partitionCount
		if err := tx.NewRaw(hb, hbArgs...).Scan(ctx, &counts); err != nil {
			return fmt.Errorf("pruning heartbeat history: %w", err)
		}
		for _, c := range counts {
			share(c.Tenant).heartbeats += c.N
			run.Heartbeats += c.N
		}
		var actorTenant *uuid.UUID
		if !system {
			actorTenant = &sc.tenant
		}
		err = tx.NewRaw(`INSERT INTO robot_log_cleanups (actor, actor_tenant, dry_run, retention_days, cutoff, partitions, rows, bytes, heartbeats, at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id, at`,
			run.Actor, actorTenant, run.DryRun, run.RetentionDays, run.Cutoff, pgdialect.Array(run.Partitions),
			run.Rows, run.Bytes, run.Heartbeats, now).Scan(ctx, &run.ID, &run.At)
		if err != nil {
			return fmt.Errorf("recording the cleanup: %w", err)
		}
		for t, sh := range shares {
			if _, err := tx.NewRaw(`INSERT INTO robot_log_cleanup_tenants (cleanup_id, tenant_id, rows, bytes, heartbeats) VALUES (?, ?, ?, ?, ?)`,
				run.ID, t, sh.rows, sh.bytes, sh.heartbeats).Exec(ctx); err != nil {
				return fmt.Errorf("recording the cleanup: %w", err)
			}
		}
		if dryRun || len(drop) == 0 {
			return nil
		}
		if _, err := tx.ExecContext(ctx, "SET LOCAL lock_timeout = '5s'"); err != nil {
			return fmt.Errorf("bounding the wait for the log partitions: %w", err)
		}
		for _, name := range drop {
			if _, err := tx.NewRaw("DROP TABLE ?", bun.Ident(name)).Exec(ctx); err != nil {
				return fmt.Errorf("dropping %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		if isLockTimeout(err) {
			return nil, fault.New(fault.Conflict, "the log partitions are busy (a long transaction holds them); try again")
		}
		return nil, err
	}
	if !system {
		sh := share(sc.tenant)
		run.Rows, run.Bytes, run.Heartbeats = sh.rows, sh.bytes, sh.heartbeats
	}
	return run, nil
}

// CleanupHistory returns retention runs newest first, as the caller may see
// them (service_role only): a tenant sees its own runs, dry or not, the
// system's runs that were not dry (the leader's, the CLI's), and other
// tenants' runs that dropped something (they dropped its lines too), with
// its own share of the figures; another tenant's service appears as
// "service". No one else's dry run, the system's included: its days say
// which days hold lines, of any tenant. The system sees every run with
// the installation's figures.
func (s *Logs) CleanupHistory(ctx context.Context, idb bun.IDB, p PageArgs) (Page[LogCleanup], error) {
	sc, err := userScope(ctx)
	if err != nil {
		return Page[LogCleanup]{}, err
	}
	if !sc.wholeTenant {
		return Page[LogCleanup]{}, fault.New(fault.Forbidden, "only service_role may read the log cleanup history")
	}
	limit, err := p.limit()
	if err != nil {
		return Page[LogCleanup]{}, err
	}
	after, err := decodeSeq("logcleanup", p.After)
	if err != nil {
		return Page[LogCleanup]{}, err
	}
	q := idb.NewSelect().TableExpr("robot_log_cleanups AS c").
		ColumnExpr("c.id, c.dry_run, c.retention_days, c.cutoff, c.partitions, c.at")
	if sc.installation {
		q = q.ColumnExpr("c.actor, c.rows, c.bytes, c.heartbeats")
	} else {
		q = q.ColumnExpr("CASE WHEN c.actor_tenant IS NULL OR c.actor_tenant = ? THEN c.actor ELSE 'service' END AS actor", sc.tenant).
			ColumnExpr("coalesce(t.rows, 0) AS rows, coalesce(t.bytes, 0) AS bytes, coalesce(t.heartbeats, 0) AS heartbeats").
			Join("LEFT JOIN robot_log_cleanup_tenants AS t ON t.cleanup_id = c.id AND t.tenant_id = ?", sc.tenant).
			Where("c.actor_tenant = ? OR (NOT c.dry_run AND (c.actor_tenant IS NULL OR cardinality(c.partitions) > 0))", sc.tenant)
	}
	if after > 0 {
		q = q.Where("c.id < ?", after)
	}
	var rows []*LogCleanup
	if err := q.OrderExpr("c.id DESC").Apply(limitRows(limit+1)).Scan(ctx, &rows); err != nil {
		return Page[LogCleanup]{}, fmt.Errorf("reading the log cleanup history: %w", err)
	}
	return trim(rows, limit), nil
}

// LinesDropped is Rows as a GraphQL Float (it may pass 2^31).
func (c *LogCleanup) LinesDropped() float64 { return float64(c.Rows) }

// BytesFreed is Bytes as a GraphQL Float.
func (c *LogCleanup) BytesFreed() float64 { return float64(c.Bytes) }

// HeartbeatsDropped is Heartbeats as a GraphQL Float.
func (c *LogCleanup) HeartbeatsDropped() float64 { return float64(c.Heartbeats) }

// share64 is a*n/total, the part of a that n of total rows stand for,
// without the overflow of a*n (a day of 100 GB and 10^8 rows passes
// int64); a, n and total are not negative, and n is at most total.
func share64(a, n, total int64) int64 {
	if total <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(a), uint64(n))
	q, _ := bits.Div64(hi, lo, uint64(total)) // hi < total, since n <= total
	return int64(q)
}
