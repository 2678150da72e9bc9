package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"fleetgraph/auth"
	"fleetgraph/db"
)

// logsCmd groups the operator's log commands.
func logsCmd(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	return group("logs", "Manages robot logs, acting as system:cli.", map[string]func([]string) error{
		"cleanup": func(a []string) error { return logsCleanup(ctx, a, env, stdout, stderr) },
	}, []string{"cleanup"}, args, stderr)
}

// logsCleanup drops the whole days of robot logs (and heartbeat history)
// older than the retention, for every tenant, as the leader's daily task
// does, and records the run; --dry-run reports what would go and drops
// nothing.
func logsCleanup(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("logs cleanup [--retention-days N] [--dry-run]",
		"Drops the days of robot logs older than the retention, for every tenant, and records the run in the cleanup history.", stderr, env)
	conn := declareConnection(s)
	retention := s.add("LOG_RETENTION_DAYS", "retention-days", strconv.Itoa(db.DefaultLogConfig.RetentionDays), "days of logs to keep (1-3650)")
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
		return writeJSON(stdout, run)
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
