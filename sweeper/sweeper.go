// Package sweeper runs the queue's maintenance: it marks robots OFFLINE when
// they stop heartbeating and takes back jobs whose leases expired (queued
// again while attempts remain, else failed). Every replica runs a sweeper,
// but only the one holding a PostgreSQL advisory lock sweeps; if it dies, its
// session ends, the lock is released, and another takes over at its next tick.
package sweeper

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/uptrace/bun"

	"fleetgraph/db"
	"fleetgraph/metrics"
)

// lockKey is the advisory lock whose holder sweeps.
const lockKey = 0x666c656574_02

// Sweeper is the maintenance loop of one process.
type Sweeper struct {
	// Metrics counts rescued leases (nil: off).
	Metrics *metrics.Metrics

	db       *bun.DB
	robots   *db.Robots
	jobs     *db.Jobs
	interval time.Duration
	log      *slog.Logger

	leader *bun.Conn // held while this process holds the lock
}

// New returns a sweeper that sweeps every interval.
func New(bdb *bun.DB, robots *db.Robots, jobs *db.Jobs, interval time.Duration, log *slog.Logger) *Sweeper {
	return &Sweeper{db: bdb, robots: robots, jobs: jobs, interval: interval, log: log}
}

// Run sweeps every interval until ctx ends.
func (s *Sweeper) Run(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	defer s.resign()
	for {
		if err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("sweeping", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep runs one round if this process is (or becomes) the leader.
func (s *Sweeper) Sweep(ctx context.Context) error {
	leading, err := s.lead(ctx)
	if err != nil || !leading {
		return err
	}
	offline, err := s.robots.MarkSilentOffline(ctx, s.db)
	if err != nil {
		return err
	}
	rescued, err := s.jobs.RescueExpired(ctx, s.db)
	if err != nil {
		return err
	}
	for _, j := range rescued {
		s.Metrics.LeaseRescued(string(j.Status))
	}
	if len(offline) > 0 || len(rescued) > 0 {
		s.log.Info("swept", "robots_offline", len(offline), "leases_rescued", len(rescued))
	}
	return nil
}

// lead reports whether this process holds the sweeping lock, trying to take
// it when it does not.
func (s *Sweeper) lead(ctx context.Context) (bool, error) {
	if s.leader != nil {
		if err := s.leader.PingContext(ctx); err == nil {
			return true, nil
		}
		s.resign() // the session (and with it the lock) is gone
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("connecting to compete for the sweeper lock: %w", err)
	}
	var got bool
	if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock(?)", int64(lockKey)).Scan(&got); err != nil {
		_ = conn.Close()
		return false, fmt.Errorf("competing for the sweeper lock: %w", err)
	}
	if !got {
		_ = conn.Close()
		return false, nil
	}
	s.leader = &conn
	return true, nil
}

func (s *Sweeper) resign() {
	if s.leader == nil {
		return
	}
	_, _ = s.leader.ExecContext(context.Background(), "SELECT pg_advisory_unlock(?)", int64(lockKey))
	_ = s.leader.Close()
	s.leader = nil
}
