package main

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/realtime"
)

// logs cleanup drops exactly the days past the retention, a dry run drops
// nothing, and both are recorded in the cleanup history as system:cli.
func TestLogsCleanupCommand(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	// Lines 40 days and 2 days old, each in its day's partition.
	old, recent := time.Now().UTC().AddDate(0, 0, -40), time.Now().UTC().AddDate(0, 0, -2)
	for _, at := range []time.Time{old, recent} {
		_, err := d.ExecContext(ctx, "SELECT fleetgraph_ensure_log_partition(?::date)", at.Format("2006-01-02"))
		require.NoError(t, err)
		_, err = d.ExecContext(ctx, "INSERT INTO robot_logs (tenant_id, robot_id, level, message, at) VALUES (?, ?, 20, 'line', ?)", uuid.New(), uuid.New(), at)
		require.NoError(t, err)
	}
	lines := func() int {
		var n int
		require.NoError(t, d.NewRaw("SELECT count(*) FROM robot_logs").Scan(ctx, &n))
		return n
	}

	// serve's flag name; LOG_RETENTION_DAYS yields to it.
	code, stdout, stderr := runCLI(t, e.with("LOG_RETENTION_DAYS", "0"), "logs", "cleanup", "--log-retention-days", "30", "--dry-run", "--json")
	require.Equal(t, 0, code, stderr)
	// The API's LogCleanupRun names, exactly (a map: no case folding).
	var run map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &run), stdout)
	require.Equal(t, true, run["dryRun"], stdout)
	require.Equal(t, []any{old.Format("2006-01-02")}, run["partitionsDropped"])
	require.EqualValues(t, 1, run["linesDropped"])
	require.Equal(t, "system:cli", run["actor"])
	require.IsType(t, "", run["id"], "an ID is a string")
	for _, k := range []string{"at", "retentionDays", "cutoff", "bytesFreed", "heartbeatsDropped"} {
		require.Contains(t, run, k)
	}
	require.Equal(t, 2, lines(), "a dry run drops nothing")

	// The command's first name for it still works, and also overrides
	// the variable.
	code, stdout, stderr = runCLI(t, e.with("LOG_RETENTION_DAYS", "0"), "logs", "cleanup", "--retention-days", "30")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "dropped 1 day(s) of logs")
	require.Equal(t, 1, lines(), "only the day past the retention is gone")
	var runs int
	require.NoError(t, d.NewRaw("SELECT count(*) FROM robot_log_cleanups WHERE actor = 'system:cli'").Scan(ctx, &runs))
	require.Equal(t, 2, runs, "both runs are in the history")

	code, _, stderr = runCLI(t, e, "logs", "cleanup", "--retention-days", "0")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "LOG_RETENTION_DAYS (--log-retention-days) must be a whole number from 1 to 3650")
	code, _, stderr = runCLI(t, e.with("LOG_RETENTION_DAYS", "0"), "logs", "cleanup", "--dry-run")
	require.Equal(t, 2, code, "the variable, unless a flag overrides it")
	require.Contains(t, stderr, "LOG_RETENTION_DAYS")
	code, stdout, stderr = runCLI(t, e, "logs", "cleanup", "--help")
	require.Equal(t, 0, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, "-log-retention-days string")
	require.Contains(t, stderr, "[env LOG_RETENTION_DAYS]")
}

// startCommand runs a long-running command (args in full) until the end of
// the test, as startServe runs serve.
func startCommand(t *testing.T, e env, args ...string) *serveProcess {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &serveProcess{cancel: cancel, stdout: newSyncBuffer(), stderr: newSyncBuffer(), exit: make(chan int, 1)}
	go func() { p.exit <- run(ctx, args, e.get, p.stdout, p.stderr) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// shipAs ships lines as the robot, as its API key would.
func shipAs(t *testing.T, d *dbtest.Database, tenant, robot uuid.UUID, lines ...db.RobotLogInput) {
	t.Helper()
	ctx := auth.WithPrincipal(t.Context(), &auth.Principal{RobotID: robot, TenantID: tenant, Role: auth.RoleRobot})
	n, err := db.NewLogs(db.DefaultLogConfig, db.NewJobs(db.DefaultQueueConfig, db.NewWorkflows())).Ship(ctx, d.DB, lines)
	require.NoError(t, err)
	require.Equal(t, len(lines), n)
}

// logs tail prints a robot's lines as they are shipped, at the level asked
// and above, only that robot's, and ends cleanly when interrupted.
func TestLogsTailCommand(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	tenant := uuid.New()
	robot := robotJSON(t, e, "--name", "tailed", "--tenant", tenant.String())
	other := robotJSON(t, e, "--name", "other", "--tenant", tenant.String())

	p := startCommand(t, e, "logs", "tail", "--robot", "tailed", "--level", "warning", "--tenant", tenant.String())
	p.waitFor(t, p.stderr, regexp.MustCompile(`tailing robot tailed \(`+robot.ID.String()+`\)`))
	shipAs(t, d, tenant, other.ID, db.RobotLogInput{Level: db.LogError, Message: "not-this-robot"})
	shipAs(t, d, tenant, robot.ID,
		db.RobotLogInput{Level: db.LogDebug, Message: "too-quiet"},
		db.RobotLogInput{Level: db.LogWarn, Message: "disk almost full", Fields: map[string]any{"free": "2%"}},
		db.RobotLogInput{Level: db.LogError, Message: "disk full", Fields: map[string]any{"bytes": json.Number("12345678901234567890123")}})
	// Fields print as stored: a number keeps every digit.
	m := p.waitFor(t, p.stdout, regexp.MustCompile(`(?s)WARNING\s+disk almost full \{"free":"2%"\}\n.*ERROR\s+disk full \{"bytes":12345678901234567890123\}\n`))
	require.NotContains(t, m[0], "too-quiet")
	require.Equal(t, 0, p.stop(t), "an interrupt ends the tail cleanly")
	out := p.stdout.String()
	require.NotContains(t, out, "too-quiet", "below --level")
	require.NotContains(t, out, "not-this-robot", "another robot's line")

	// --json: one object a line.
	j := startCommand(t, e, "logs", "tail", "--robot", robot.ID.String(), "--json", "--tenant", tenant.String())
	j.waitFor(t, j.stderr, regexp.MustCompile(`tailing robot tailed`))
	shipAs(t, d, tenant, robot.ID, db.RobotLogInput{Level: db.LogDebug, Message: "as json"})
	line := j.waitFor(t, j.stdout, regexp.MustCompile(`(?m)^\{.*\}\n`))[0]
	var v logLineView
	require.NoError(t, json.Unmarshal([]byte(line), &v), line)
	require.Regexp(t, `"id":"\d+"`, line, "an ID is a string, as the API's RobotLog.id")
	require.Equal(t, robot.ID, v.RobotID)
	require.Equal(t, db.LogDebug, v.Level)
	require.Equal(t, "as json", v.Message)
}

// logs tail names what is wrong: an unknown robot, another tenant's robot
// (by name or id: not found), a bad level.
func TestLogsTailErrors(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	tenantA, tenantB := uuid.NewString(), uuid.NewString()
	robot := robotJSON(t, e, "--name", "secret-robot", "--tenant", tenantA)

	code, _, stderr := runCLI(t, e, "logs", "tail", "--robot", "nobody", "--tenant", tenantA)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, `no robot "nobody" in tenant `+tenantA)
	for _, ref := range []string{"secret-robot", robot.ID.String()} {
		code, _, stderr = runCLI(t, e, "logs", "tail", "--robot", ref, "--tenant", tenantB)
		require.Equal(t, 1, code, "another tenant's robot is not visible")
		require.Contains(t, stderr, "no robot")
	}
	code, _, stderr = runCLI(t, e, "logs", "tail", "--robot", "secret-robot", "--tenant", tenantA, "--level", "LOUD")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--level must be")
	code, _, stderr = runCLI(t, e, "logs", "tail", "--tenant", tenantA)
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--robot is required")
	// Refused before the database is opened, as keys create is: with none
	// to reach, the usage error still comes at once.
	unreachable := baseEnv(t).with("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	code, _, stderr = runCLI(t, unreachable, "logs", "tail", "--robot", "")
	require.Equal(t, 2, code, "%s", stderr)
	require.Contains(t, stderr, "--robot is required")
	code, stdout, stderr := runCLI(t, e, "logs", "tail", "--help")
	require.Equal(t, 0, code)
	require.Empty(t, stdout)
	require.Contains(t, stderr, "Usage: fleetgraph logs tail --robot NAME-or-ID")
}

// The missed-lines notice is printed in the stream, in both formats.
func TestLogsTailMissedNotice(t *testing.T) {
	t.Parallel()
	var text, js bytes.Buffer
	require.NoError(t, printTailItem(&text, json.NewEncoder(&text), false, realtime.LogTailItem{Missed: 7}))
	require.Contains(t, text.String(), "7 line(s) missed")
	require.NoError(t, printTailItem(&js, json.NewEncoder(&js), true, realtime.LogTailItem{Missed: 7}))
	require.JSONEq(t, `{"missedLines":7}`, js.String())
}

// requireTerminalSafe fails if text holds a character a terminal acts on
// other than the newlines ending its lines.
func requireTerminalSafe(t *testing.T, text string) {
	t.Helper()
	for _, r := range text {
		require.False(t, r != '\n' && actsOnTerminal(r), "%U reaches the terminal in %q", r, text)
	}
}

// A robot's message and fields are printed as one line of visible text in
// the text format: control characters (escape sequences, the bell, new
// lines, C1), line separators and bidirectional controls are escaped, and
// plain text is printed as it is.
func TestLogsTailEscapesTheRobotsText(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 2, 16, 4, 11, 120e6, time.UTC)
	print := func(t *testing.T, message string, fields string) string {
		t.Helper()
		var out bytes.Buffer
		item := realtime.LogTailItem{Lines: []*db.RobotLog{{Level: db.LogInfo, Message: message, Fields: db.RawJSON(fields), At: at}}}
		require.NoError(t, printTailItem(&out, json.NewEncoder(&out), false, item))
		return out.String()
	}

	for _, message := range []string{
		"ok\n2026-01-01T00:00:00.000Z CRITICAL forged line", // a forged line
		"\x1b[2J\x1b]0;pwned\x07",                           // clear the screen, set the title, bell
		"carriage\rreturn",
		"c1 \u009b2J csi",
		"del \x7f",
		"invoice \u202efdp.exe", // right-to-left override
		"isolate \u2067x\u2069",
		"separator\u2028line",
	} {
		out := print(t, message, "{}")
		requireTerminalSafe(t, out)
		require.Equal(t, "2026-12-02T16:04:11.120Z INFO     "+strconv.Quote(message)+"\n", out, "Go's escapes, quoted")
	}

	out := print(t, "plain: déjà vu, 100%", `{"step": "export\u001b[31m", "note\u202e": "\u0085x", "ok": "é"}`)
	requireTerminalSafe(t, out)
	require.True(t, strings.HasPrefix(out, "2026-12-02T16:04:11.120Z INFO     plain: déjà vu, 100% {"), "plain text as it is: %s", out)
	var fields map[string]string
	require.NoError(t, json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &fields), "the fields are still JSON: %s", out)
	require.Equal(t, map[string]string{"step": "export\x1b[31m", "note\u202e": "\u0085x", "ok": "é"}, fields, "the same values")

	// With --json too: the same JSON values, with what a terminal acts on
	// escaped (encoding/json leaves bidi controls, C1 and DEL as they are).
	var js bytes.Buffer
	message := "invoice \u202efdp.exe c1 \u009b2J del \x7f"
	item := realtime.LogTailItem{Lines: []*db.RobotLog{{ID: 1, Level: db.LogInfo, At: at, Message: message, Fields: db.RawJSON(`{"note": "\u202e\u0085"}`)}}}
	require.NoError(t, printTailItem(&js, json.NewEncoder(&js), true, item))
	requireTerminalSafe(t, js.String())
	var line struct {
		Message string
		Fields  map[string]string
	}
	require.NoError(t, json.Unmarshal(js.Bytes(), &line))
	require.Equal(t, message, line.Message)
	require.Equal(t, map[string]string{"note": "\u202e\u0085"}, line.Fields)
}

// The same, end to end: a line a robot ships with a forged second line
// and escape sequences reaches the tail as one escaped line.
func TestLogsTailCommandEscapes(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	tenant := uuid.New()
	robot := robotJSON(t, e, "--name", "tailed", "--tenant", tenant.String())
	p := startCommand(t, e, "logs", "tail", "--robot", "tailed", "--tenant", tenant.String())
	p.waitFor(t, p.stderr, regexp.MustCompile(`tailing robot tailed`))
	forged := "ok\n2026-01-01T00:00:00.000Z CRITICAL forged line \x1b[2J\x1b]0;pwned\x07"
	shipAs(t, d, tenant, robot.ID, db.RobotLogInput{Level: db.LogInfo, Message: forged, Fields: map[string]any{"x": "\u009b2J"}})
	p.waitFor(t, p.stdout, regexp.MustCompile(`forged.*\n`))
	require.Equal(t, 0, p.stop(t))
	out := p.stdout.String()
	requireTerminalSafe(t, out)
	require.Equal(t, 1, strings.Count(out, "\n"), "one line a log line: %q", out)
	require.Contains(t, out, strconv.Quote(forged)+` {"x":"\u009b2J"}`)
}
