package db

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
)

// RetentionConfig says how long the history that no partition drop
// removes is kept: the audit trails, finished webhook deliveries with
// their events, and finished jobs. Robot logs and heartbeats have
// LogConfig's retention.
type RetentionConfig struct {
	// AuditDays is how many days the audit trails are kept: the API key
	// audit (api_key_audit) and the log cleanup history
	// (robot_log_cleanups) (AUDIT_RETENTION_DAYS, default 365). Anonymous
	// refusals (UNKNOWN_KEY) and any service's dry runs are written there,
	// so without it both grew with every such request.
	AuditDays int
	// WebhookDays is how many days finished (SUCCEEDED or FAILED) webhook
	// deliveries, and their events once no delivery refers to them, are
	// kept (WEBHOOK_RETENTION_DAYS, default 30). Pending ones are kept
	// whatever their age.
	WebhookDays int
	// JobDays is how many days finished jobs (COMPLETED, FAILED or
	// CANCELLED) are kept after they finished (JOB_RETENTION_DAYS, default
	// 30); live ones (QUEUED, CLAIMED, RUNNING) are kept whatever their
	// age. Without it every statistic over finished jobs (robotStats,
	// jobs' totalCount) read a table that only grew.
	JobDays int
	// BatchesPerRun bounds what one Prune deletes from each table, in
	// batches of pruneBatch rows (0: DefaultRetentionConfig's), so that a
	// backlog goes over several runs instead of holding the leader's other
	// tasks (the scheduler, lease rescue) behind one long run.
	BatchesPerRun int
}

// DefaultRetentionConfig is production's: up to 40 batches (200,000 rows)
// a table a run, run hourly.
var DefaultRetentionConfig = RetentionConfig{AuditDays: 365, WebhookDays: 30, JobDays: 30, BatchesPerRun: 40}

// pruneBatch is how many rows one statement of a prune deletes: a day of
// history goes in many short transactions, not one that holds its locks
// and its WAL for the whole day's rows.
const pruneBatch = 5_000

// PruneStats counts what one Prune deleted.
type PruneStats struct {
	// Audit counts the audit trails' rows, Deliveries and Events the
	// webhook history's, Jobs the finished jobs.
	Audit, Deliveries, Events, Jobs int64
}

// Prune deletes the audit entries (API keys, log cleanups) older than
// cfg.AuditDays and the
// finished webhook deliveries (with their events, once no delivery is
// left) created more than cfg.WebhookDays before now, and the jobs that
// finished more than cfg.JobDays before now, pruneBatch rows a
// statement, at most cfg.BatchesPerRun statements a table; each batch
// commits on its own, so a prune cut short keeps what it did. It is the
// leader's hourly history-retention task.
//
// Both tables grow in the order of their identity (api_key_audit.id,
// webhook_deliveries.seq), which their primary or unique index keeps, so
// the end of the old rows is found by walking that index from its start
// through the old rows only, and no index on their times is needed. Jobs
// finish in no order of any key, so jobs_finished_idx (a partial index of
// finished jobs by finish time) finds the old ones.
func Prune(ctx context.Context, idb bun.IDB, cfg RetentionConfig, now time.Time) (PruneStats, error) {
	var st PruneStats
	if cfg.BatchesPerRun <= 0 {
		cfg.BatchesPerRun = DefaultRetentionConfig.BatchesPerRun
	}
	if cfg.AuditDays > 0 {
		for _, table := range []string{"api_key_audit", "robot_log_cleanups"} {
			n, err := pruneTrail(ctx, idb, table, now.AddDate(0, 0, -cfg.AuditDays), cfg.BatchesPerRun)
			st.Audit += n
			if err != nil {
				return st, err
			}
		}
	}
	if cfg.WebhookDays > 0 {
		d, e, err := pruneDeliveries(ctx, idb, now.AddDate(0, 0, -cfg.WebhookDays), cfg.BatchesPerRun)
		st.Deliveries, st.Events = d, e
		if err != nil {
			return st, err
		}
	}
	if cfg.JobDays > 0 {
		n, err := pruneJobs(ctx, idb, now.AddDate(0, 0, -cfg.JobDays), cfg.BatchesPerRun)
		st.Jobs = n
		if err != nil {
			return st, err
		}
	}
	return st, nil
}

// pruneJobs deletes the jobs that finished before cutoff, oldest first
// (jobs_finished_idx). Nothing refers to a job by a foreign key (robot log
// lines and webhook events keep its id as data, and age out on their own
// retention), so a job goes alone. A live job is never deleted: the
// batch's rows are locked as they are chosen, a row a concurrent
// transaction holds (a retryJob making it QUEUED) is skipped, and one it
// changed meanwhile is checked again against the condition once locked;
// a locked row cannot change before the DELETE. The deletions are quiet:
// the change feed's job trigger skips them (migration 0015), so that up to
// 200,000 jobs an hour that finished a month ago are not announced to
// every replica and dashboard; they leave the lists as a dropped day of
// log lines does.
func pruneJobs(ctx context.Context, idb bun.IDB, cutoff time.Time, batches int) (int64, error) {
	return inBatches(batches, func() (n int64, err error) {
		err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if _, err := tx.ExecContext(ctx, "SET LOCAL fleetgraph.retention = 'on'"); err != nil {
				return err
			}
			res, err := tx.NewRaw(`DELETE FROM jobs WHERE id IN (
					SELECT id FROM jobs WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND finished_at < ?
					ORDER BY finished_at LIMIT ? FOR UPDATE SKIP LOCKED)`, cutoff, pruneBatch).Exec(ctx)
			if err != nil {
				return err
			}
			n, _ = res.RowsAffected()
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("pruning finished jobs: %w", err)
		}
		return n, nil
	})
}

// inBatches runs batch, which deletes at most pruneBatch rows and says
// how many, until one deletes fewer or it has run batches times, and
// returns how many rows they deleted.
func inBatches(batches int, batch func() (int64, error)) (int64, error) {
	var total int64
	for range batches {
		n, err := batch()
		if err != nil {
			return total, err
		}
		total += n
		if n < pruneBatch {
			break
		}
	}
	return total, nil
}

// pruneTrail deletes the rows of an audit trail (a table with an identity
// id and a time at) from before cutoff; a log cleanup's per-tenant shares
// go with it (ON DELETE CASCADE).
func pruneTrail(ctx context.Context, idb bun.IDB, table string, cutoff time.Time, batches int) (int64, error) {
	// The first row at or after the cutoff bounds the old ones (none: all
	// are old); ids grow with time, up to the length of a transaction.
	var bound int64
	if err := idb.NewRaw(`SELECT coalesce(
			(SELECT id FROM ? WHERE at >= ? ORDER BY id LIMIT 1),
			(SELECT max(id) + 1 FROM ?), 0)`, bun.Ident(table), cutoff, bun.Ident(table)).Scan(ctx, &bound); err != nil {
		return 0, fmt.Errorf("finding the rows of %s past retention: %w", table, err)
	}
	return inBatches(batches, func() (int64, error) {
		res, err := idb.NewRaw(`DELETE FROM ? WHERE id IN (SELECT id FROM ? WHERE id < ? AND at < ? ORDER BY id LIMIT ?)`,
			bun.Ident(table), bun.Ident(table), bound, cutoff, pruneBatch).Exec(ctx)
		if err != nil {
			return 0, fmt.Errorf("pruning %s: %w", table, err)
		}
		n, _ := res.RowsAffected()
		return n, nil
	})
}

// pruneDeliveries deletes finished webhook deliveries created before
// cutoff, and the events they leave without deliveries.
func pruneDeliveries(ctx context.Context, idb bun.IDB, cutoff time.Time, batches int) (deliveries, events int64, err error) {
	var bound int64
	if err := idb.NewRaw(`SELECT coalesce(
			(SELECT seq FROM webhook_deliveries WHERE created_at >= ? ORDER BY seq LIMIT 1),
			(SELECT max(seq) + 1 FROM webhook_deliveries), 0)`, cutoff).Scan(ctx, &bound); err != nil {
		return 0, 0, fmt.Errorf("finding the webhook deliveries past retention: %w", err)
	}
	deliveries, err = inBatches(batches, func() (n int64, err error) {
		var gone int64
		err = idb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			var ids []uuid.UUID
			err := tx.NewRaw(`DELETE FROM webhook_deliveries WHERE seq IN (
					SELECT seq FROM webhook_deliveries
					WHERE seq < ? AND created_at < ? AND status <> 'PENDING' ORDER BY seq LIMIT ?)
				RETURNING event_id`, bound, cutoff, pruneBatch).Scan(ctx, &ids)
			if err != nil {
				return fmt.Errorf("pruning webhook deliveries: %w", err)
			}
			n = int64(len(ids))
			if n == 0 {
				return nil
			}
			gone, err = deleteEventsWithoutDeliveries(ctx, tx, ids)
			return err
		})
		if err != nil {
			return 0, err
		}
		events += gone
		return n, nil
	})
	return deliveries, events, err
}
