package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/realtime"
)

// logsCmd groups the operator's log commands.
func logsCmd(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	return group("logs", "Manages robot logs, acting as system:cli.", map[string]func([]string) error{
		"cleanup": func(a []string) error { return logsCleanup(ctx, a, env, stdout, stderr) },
		"tail":    func(a []string) error { return logsTail(ctx, a, env, stdout, stderr) },
	}, []string{"cleanup", "tail"}, args, stderr)
}

// logsCleanup drops the whole days of robot logs (and heartbeat history)
// older than the retention, for every tenant, as the leader's daily task
// does, and records the run; --dry-run reports what would go and drops
// nothing.
func logsCleanup(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("logs cleanup [--log-retention-days N] [--dry-run]",
		"Drops the days of robot logs older than the retention, for every tenant, and records the run in the cleanup history.", stderr, env)
	conn := declareConnection(s)
	// serve's setting, under its name; --retention-days is what this
	// command called it first.
	retention := s.add("LOG_RETENTION_DAYS", "log-retention-days", strconv.Itoa(db.DefaultLogConfig.RetentionDays), "days of logs to keep (1-3650)")
	s.alias(retention, "retention-days")
	dryRun := s.addBool("", "dry-run", "report what would be dropped, and drop nothing")
	asJSON := jsonFlag(s)
	rest, err := parseArgs(s, args)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	days, err := retention.Int(1, 3650)
	if err != nil {
		return err
	}
	dry, err := dryRun.Bool()
	if err != nil {
		return err
	}
	jsonOut, err := asJSON()
	if err != nil {
		return err
	}
	d, log, err := conn.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer d.close(log)
	logs := db.NewLogs(db.LogConfig{RetentionDays: days, PartitionsAhead: db.DefaultLogConfig.PartitionsAhead}, db.NewJobs(db.DefaultQueueConfig, db.NewWorkflows()))
	// The system principal of no tenant: retention is installation-wide,
	// since one day's partition holds every tenant's lines.
	run, err := logs.Cleanup(auth.WithPrincipal(ctx, auth.SystemPrincipal("cli")), d.DB, &days, dry != nil && *dry)
	if err != nil {
		return err
	}
	if jsonOut {
		return writeJSON(stdout, cleanupViewOf(run))
	}
	verb := "dropped"
	if run.DryRun {
		verb = "would drop"
	}
	_, err = fmt.Fprintf(stdout, "%s %d day(s) of logs before %s: %d lines, %d bytes, %d heartbeat samples%s\n",
		verb, len(run.Partitions), run.Cutoff.UTC().Format("2006-01-02"), run.Rows, run.Bytes, run.Heartbeats, listDays(run.Partitions))
	return err
}

func listDays(days []string) string {
	if len(days) == 0 {
		return ""
	}
	return " (" + strings.Join(days, ", ") + ")"
}

// cleanupView is a retention run as `logs cleanup --json` prints it: with
// the names and types of the API's LogCleanupRun.
type cleanupView struct {
	ID                int64     `json:"id,string"`
	At                time.Time `json:"at"`
	Actor             string    `json:"actor"`
	DryRun            bool      `json:"dryRun"`
	RetentionDays     int       `json:"retentionDays"`
	Cutoff            time.Time `json:"cutoff"`
	PartitionsDropped []string  `json:"partitionsDropped"`
	LinesDropped      int64     `json:"linesDropped"`
	BytesFreed        int64     `json:"bytesFreed"`
	HeartbeatsDropped int64     `json:"heartbeatsDropped"`
}

func cleanupViewOf(r *db.LogCleanup) cleanupView {
	return cleanupView{ID: r.ID, At: r.At, Actor: r.Actor, DryRun: r.DryRun, RetentionDays: r.RetentionDays, Cutoff: r.Cutoff,
		PartitionsDropped: r.Partitions, LinesDropped: r.Rows, BytesFreed: r.Bytes, HeartbeatsDropped: r.Heartbeats}
}

// logLineView is a tailed line as `logs tail --json` prints it, one JSON
// object a line, with the names and types of the API's RobotLog (its id a
// string, as an ID is); a missed-lines notice is {"missedLines": N}.
type logLineView struct {
	ID      int64       `json:"id,string"`
	RobotID uuid.UUID   `json:"robotId"`
	JobID   *uuid.UUID  `json:"jobId"`
	Level   db.LogLevel `json:"level"`
	Message string      `json:"message"`
	Fields  db.RawJSON  `json:"fields"`
	At      time.Time   `json:"at"`
}

// logsTail follows one robot's lines live through the hub, as the
// robotLogAdded subscription does, acting as system:cli in the tenant,
// until ctx ends (Ctrl-C).
func logsTail(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("logs tail --robot NAME-or-ID [--level LEVEL]",
		"Follows a robot's log lines live, as they are shipped, until interrupted (Ctrl-C). Lines a slow terminal could not "+
			"keep up with are reported as missed, never dropped silently. With --json, one JSON object a line.", stderr, env)
	ops := declareOperator(s)
	robotFlag := s.add("", "robot", "", "the robot's name or id (required)")
	levelFlag := s.add("", "level", "", "minimum level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default: every line)")
	rest, err := parseArgs(s, args)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	if robotFlag.String() == "" {
		return usageError("%s is required: the robot's name or id", robotFlag.name())
	}
	var min int16
	if lv := strings.ToUpper(levelFlag.String()); lv != "" {
		if min = db.LogLevel(lv).Severity(); min == 0 {
			return usageError("--level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not %q", levelFlag.String())
		}
	}
	o, err := ops.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer o.close()
	robot, err := o.robotRef("robot", robotFlag.String())
	if err != nil {
		return err
	}

	quiet := slog.New(slog.DiscardHandler)
	if o.log.Enabled(ctx, slog.LevelDebug) {
		quiet = o.log
	}
	l, err := realtime.NewListener(o.d.dsn, []string{realtime.ChangeChannel}, quiet)
	if err != nil {
		return fmt.Errorf("listening for log lines: %w", err)
	}
	logs := db.NewLogs(db.DefaultLogConfig, db.NewJobs(db.DefaultQueueConfig, db.NewWorkflows()))
	hub := realtime.NewHub(l, &realtime.StoreSource{DB: o.d.DB, Robots: o.robots, Logs: logs}, o.log)
	probe := l.Subscribe(realtime.ChangeChannel, 64)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() { l.Run(runCtx); done <- struct{}{} }()
	go func() { hub.Run(runCtx); done <- struct{}{} }()
	defer func() {
		stop()
		<-done
		<-done
	}()
	tail, err := hub.TailLogs(ctx, auth.FromContext(o.ctx), &robot.ID, min)
	if err != nil {
		return err
	}
	defer tail.Close()
	if err := awaitListening(ctx, o.d, probe); err != nil {
		return err
	}
	probe.Close()
	_, _ = fmt.Fprintf(stderr, "tailing robot %s (%s); Ctrl-C to stop\n", terminalText(robot.Name), robot.ID)

	enc := json.NewEncoder(stdout)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tail.Sub().Done():
			if err := tail.Sub().Err(); err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("the tail ended: %w", err)
			}
			return nil
		case <-tail.Sub().Ready():
		}
		for _, item := range tail.Take() {
			if err := printTailItem(stdout, enc, o.json, item); err != nil {
				return err
			}
		}
	}
}

// awaitListening returns once a NOTIFY on the change channel has come back
// through the listener, so that lines shipped from then on are seen.
func awaitListening(ctx context.Context, d *database, probe *realtime.Subscription) error {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	payload := fmt.Sprintf(`{"k":"verify","id":%q}`, hex.EncodeToString(nonce[:]))
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	resend := time.NewTicker(250 * time.Millisecond)
	defer resend.Stop()
	for {
		if _, err := d.ExecContext(ctx, "SELECT pg_notify(?, ?)", realtime.ChangeChannel, payload); err != nil {
			return fmt.Errorf("starting the tail: %w", err)
		}
		arrived, ended := awaitPayload(ctx, probe.C, payload, resend.C, deadline.C)
		switch {
		case arrived:
			return nil
		case ended && ctx.Err() != nil:
			return ctx.Err()
		case ended:
			return errors.New("the change feed does not deliver (no NOTIFY came back through LISTEN within 30s): `fleetgraph verify` says why")
		}
	}
}

// printTailItem prints a batch's lines, oldest first, or the missed-lines
// notice.
func printTailItem(w io.Writer, enc *json.Encoder, asJSON bool, item realtime.LogTailItem) error {
	if item.Missed > 0 {
		if asJSON {
			return enc.Encode(map[string]int{"missedLines": item.Missed})
		}
		_, err := fmt.Fprintf(w, "-- %d line(s) missed: the tail fell behind (the robotLogs query still has them) --\n", item.Missed)
		return err
	}
	for _, l := range item.Lines {
		if asJSON {
			// The same JSON value, with what a terminal acts on (bidi
			// overrides, C1, DEL) escaped as in the text format.
			b, err := json.Marshal(logLineView{ID: l.ID, RobotID: l.RobotID, JobID: l.JobID, Level: l.Level, Message: l.Message, Fields: l.Fields, At: l.At})
			if err != nil {
				return err
			}
			if _, err := io.WriteString(w, terminalJSON(b)+"\n"); err != nil {
				return err
			}
			continue
		}
		// The message and fields are the robot's: escaped, so that they
		// make one line of text and cannot command the terminal.
		line := fmt.Sprintf("%s %-8s %s", l.At.UTC().Format("2006-01-02T15:04:05.000Z"), l.Level, terminalText(l.Message))
		if l.JobID != nil {
			line += " job=" + l.JobID.String()
		}
		// Compacted as stored, not decoded: numbers keep every digit.
		var fields bytes.Buffer
		if json.Compact(&fields, l.Fields) == nil && fields.Len() > len("{}") {
			line += " " + terminalJSON(fields.Bytes())
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// terminalText returns text someone else stored (a robot's log message, a
// robot's or key's name) as it may be printed on an operator's terminal:
// unchanged when it holds nothing a terminal acts on, else quoted with Go's
// escapes (strconv.Quote), so that it stays one line of visible text. Raw,
// it could clear the screen, set the window title, ring the bell, forge a
// line of its own after a newline or carriage return, or reorder the text
// after it with a bidirectional override.
func terminalText(s string) string {
	if utf8.ValidString(s) && strings.IndexFunc(s, actsOnTerminal) < 0 {
		return s
	}
	return strconv.Quote(s)
}

// terminalJSON returns JSON text (as encoding/json writes it, which escapes
// C0 controls but not DEL, C1 controls or bidirectional controls) with
// every character a terminal acts on written as a \u escape: the same JSON
// value, safe to print.
func terminalJSON(b []byte) string {
	s := string(b)
	if strings.IndexFunc(s, actsOnTerminal) < 0 {
		return s
	}
	var out strings.Builder
	for _, r := range s {
		if actsOnTerminal(r) {
			fmt.Fprintf(&out, `\u%04x`, r)
			continue
		}
		out.WriteRune(r)
	}
	return out.String()
}

// actsOnTerminal reports whether r is a control character (C0, DEL, C1:
// escape sequences, newlines, the bell), a line or paragraph separator, or
// a bidirectional control (overrides, embeddings, isolates, marks).
func actsOnTerminal(r rune) bool {
	return unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r)
}
