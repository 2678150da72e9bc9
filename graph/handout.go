package graph

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/uptrace/bun"

	"fleetgraph/db"
)

// handedOut collects the job leases an operation's resolvers hand out
// (claims, and completions that claim the next job), so that a response
// whose data is lost gives them back: a claim answered with
// RESPONSE_TOO_LARGE (a batch selecting its workflows' definitions), or
// whose data a later field's error nulled, had leased its jobs all the
// same, and they sat CLAIMED, the robot's slots full, until their leases
// ran out and each lost an attempt.
type handedOut struct {
	mu     sync.Mutex
	leases []*db.JobLease
}

type handedOutKey struct{}

// withHandOuts gives the operation run under ctx a record of its leases.
func withHandOuts(ctx context.Context) (context.Context, *handedOut) {
	h := &handedOut{}
	return context.WithValue(ctx, handedOutKey{}, h), h
}

// handOut records leases the response is to carry.
func handOut(ctx context.Context, leases ...*db.JobLease) {
	h, _ := ctx.Value(handedOutKey{}).(*handedOut)
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range leases {
		if l != nil {
			h.leases = append(h.leases, l)
		}
	}
}

// giveBackTimeout bounds the give-back, which runs after the operation
// (and possibly its deadline) is over.
const giveBackTimeout = 10 * time.Second

// giveBack returns the recorded leases to the queue when data (the
// response's, as sent) is null: the response was replaced by an error
// (RESPONSE_TOO_LARGE), or an error in a root field that may not be null
// (most mutations' are) nulled the whole data, and the leases with it, as in a claim followed by a field that failed in one
// operation. A lease the robot never heard of would hold its slot until it
// ran out. Data that is there stands whatever it shows of the lease: the
// client chose what to read.
func (h *handedOut) giveBack(ctx context.Context, data []byte, jobs *db.Jobs, idb bun.IDB, log *slog.Logger) {
	h.mu.Lock()
	leases := h.leases
	h.leases = nil
	h.mu.Unlock()
	if len(leases) == 0 || jobs == nil {
		return
	}
	if d := bytes.TrimSpace(data); len(d) > 0 && !bytes.Equal(d, []byte("null")) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), giveBackTimeout)
	defer cancel()
	if err := jobs.GiveBack(ctx, idb, leases); err != nil && log != nil {
		// The leases run out as any unused lease does.
		log.ErrorContext(ctx, "giving back the leases of an undelivered response", "leases", len(leases), "err", err)
	}
}

// nextLease is the lease a completion or failure claimed next, if any.
func nextLease(j *db.Job) *db.JobLease {
	if j == nil {
		return nil
	}
	return j.NextLease
}
