package main

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/uptrace/bun"
	"golang.org/x/sync/singleflight"

	"fleetgraph/migrations"
)

// readinessTTL is how long a readiness answer is reused. /readyz is
// anonymous and each check costs three round trips to the database (a
// ping and the migration status); probes come every few seconds, so an
// answer a second old is as good as a fresh one, and a flood of probes
// costs at most one check a second.
const readinessTTL = time.Second

// readinessTimeout bounds one check: past it the database counts as
// unreachable.
const readinessTimeout = 3 * time.Second

// readiness answers 200 when the database is reachable and its schema is
// exactly this binary's, else 503 with the reason.
func readiness(bdb *bun.DB) http.Handler {
	return newReadinessProbe(func(ctx context.Context) readyAnswer {
		if err := bdb.PingContext(ctx); err != nil {
			return readyAnswer{http.StatusServiceUnavailable, "database unreachable\n"}
		}
		st, err := migrations.CurrentStatus(ctx, bdb)
		if err != nil {
			return readyAnswer{http.StatusServiceUnavailable, "cannot read migration status\n"}
		}
		if !st.Current() {
			return readyAnswer{http.StatusServiceUnavailable, st.Problem() + "\n"}
		}
		return readyAnswer{http.StatusOK, "ready\n"}
	}, readinessTTL, time.Now)
}

// readyAnswer is one readiness check's answer.
type readyAnswer struct {
	status int
	body   string
}

// readinessProbe serves the answer of check, reusing it for ttl, and
// makes probes that arrive while a check runs share it (singleflight)
// rather than start their own.
type readinessProbe struct {
	check  func(ctx context.Context) readyAnswer
	ttl    time.Duration
	now    func() time.Time
	flight singleflight.Group

	mu     sync.Mutex
	answer readyAnswer
	at     time.Time // when answer was checked; zero: never
}

func newReadinessProbe(check func(ctx context.Context) readyAnswer, ttl time.Duration, now func() time.Time) *readinessProbe {
	return &readinessProbe{check: check, ttl: ttl, now: now}
}

// cached returns the last answer while it is fresh.
func (p *readinessProbe) cached() (readyAnswer, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.answer, !p.at.IsZero() && p.now().Sub(p.at) < p.ttl
}

func (p *readinessProbe) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, ok := p.cached()
	if !ok {
		v, _, _ := p.flight.Do("", func() (any, error) {
			if a, ok := p.cached(); ok { // a flight that just ended checked
				return a, nil
			}
			// The check is shared: one probe's client leaving must not
			// fail it for the others.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), readinessTimeout)
			defer cancel()
			a := p.check(ctx)
			p.mu.Lock()
			p.answer, p.at = a, p.now()
			p.mu.Unlock()
			return a, nil
		})
		a = v.(readyAnswer)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(a.status)
	_, _ = io.WriteString(w, a.body)
}
