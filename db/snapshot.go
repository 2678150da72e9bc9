package db

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/uptrace/bun"
)

// Snapshot is which top-level transactions had committed when a
// pg_current_snapshot() was taken: those below Xmin, and those below Xmax
// not in progress (XIP). The live path takes one when an append-only
// subscriber registers, and compares it with the xact column of machine
// events and log lines (migration 0012) to tell the rows the subscriber
// could have missed from those committed before it subscribed. Comparing
// ids, or times, could not: sequence values and created_at are taken
// before a transaction commits, in any order. The zero Snapshot counts no
// transaction as committed.
type Snapshot struct {
	Xmin, Xmax uint64
	// XIP lists the transactions in progress, ascending.
	XIP []uint64
}

// CurrentSnapshot returns a snapshot of now: one statement, which reads
// no table.
func CurrentSnapshot(ctx context.Context, idb bun.IDB) (Snapshot, error) {
	var text string
	if err := idb.NewRaw("SELECT pg_current_snapshot()::text").Scan(ctx, &text); err != nil {
		return Snapshot{}, fmt.Errorf("taking a snapshot: %w", err)
	}
	return ParseSnapshot(text)
}

// ParseSnapshot reads a pg_snapshot's text form, xmin:xmax:xip1,xip2,...
func ParseSnapshot(text string) (Snapshot, error) {
	parts := strings.Split(text, ":")
	if len(parts) != 3 {
		return Snapshot{}, fmt.Errorf("reading snapshot %q: want xmin:xmax:xip", text)
	}
	var s Snapshot
	var err error
	if s.Xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("reading snapshot %q: %w", text, err)
	}
	if s.Xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("reading snapshot %q: %w", text, err)
	}
	if parts[2] != "" {
		for x := range strings.SplitSeq(parts[2], ",") {
			id, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return Snapshot{}, fmt.Errorf("reading snapshot %q: %w", text, err)
			}
			s.XIP = append(s.XIP, id)
		}
		slices.Sort(s.XIP)
	}
	return s, nil
}

// Committed reports whether the top-level transaction xact had ended when
// the snapshot was taken, as pg_visible_in_snapshot does. A row's xact 0
// (written before migration 0012 added the column) counts as committed
// before any snapshot but the zero one.
func (s Snapshot) Committed(xact uint64) bool {
	if xact < s.Xmin {
		return true
	}
	if xact >= s.Xmax {
		return false
	}
	_, inProgress := slices.BinarySearch(s.XIP, xact)
	return !inProgress
}
