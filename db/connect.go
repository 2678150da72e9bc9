package db

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/lib/pq"
	"github.com/uptrace/bun"
)

// OpenWaiting is Open for a database that may not be reachable yet:
// containers start in any order, and PostgreSQL refuses connections while
// it starts up. It retries transient failures (nothing listening, a name
// that does not resolve yet, a dropped connection, "the database system is
// starting up", too many connections) with a backoff from 250ms to 5s,
// logging each one, for at most wait; other failures (a bad password, a
// missing database, a malformed DSN) are returned at once, as is ctx's end
// (Ctrl-C). wait 0 tries once.
func OpenWaiting(ctx context.Context, dsn string, wait time.Duration, log *slog.Logger) (*bun.DB, error) {
	deadline := time.Now().Add(wait)
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		bdb, err := Open(ctx, dsn)
		if err == nil {
			if attempt > 1 {
				log.Info("connected to the database", "attempts", attempt)
			}
			return bdb, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted while waiting for the database: %w", ctx.Err())
		}
		left := time.Until(deadline)
		if !transient(err) || left <= 0 {
			if attempt > 1 {
				return nil, fmt.Errorf("the database is still unreachable after %d attempts in %s (DATABASE_CONNECT_TIMEOUT): %w", attempt, wait, err)
			}
			return nil, err
		}
		delay = min(delay, left)
		log.Warn("the database is not reachable yet; retrying", "attempt", attempt, "retry_in", delay, "gives_up_in", left.Round(time.Second), "error", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("interrupted while waiting for the database: %w", ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// transient reports whether a failure to connect may go away by itself.
func transient(err error) bool {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		switch pqErr.Code.Class() {
		case "08", "57": // connection exception; operator intervention (starting up, shutting down)
			return true
		}
		return pqErr.Code == "53300" // too_many_connections
	}
	var netErr net.Error
	return errors.As(err, &netErr) || // refused, unreachable, timed out, no such host
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) // Open's ping timeout
}
