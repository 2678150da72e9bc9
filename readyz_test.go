package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/dbtest"
)

// statementCounter counts the statements bun runs on a database.
type statementCounter struct{ n atomic.Int64 }

func (c *statementCounter) BeforeQuery(ctx context.Context, _ *bun.QueryEvent) context.Context {
	return ctx
}

func (c *statementCounter) AfterQuery(context.Context, *bun.QueryEvent) { c.n.Add(1) }

// /readyz is anonymous: a flood of probes costs the database one check a
// second, not one per probe. Probes that arrive while a check runs share
// it; those after it reuse its answer for readinessTTL.
func TestReadinessChecksAreShared(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		srv        *httptest.Server
		statements *statementCounter
		now        atomic.Pointer[time.Time]
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		d := dbtest.New(t)
		b := &testBundle{statements: &statementCounter{}}
		d.AddQueryHook(b.statements)
		start := time.Now()
		b.now.Store(&start)
		probe := readiness(d.DB).(*readinessProbe)
		probe.now = func() time.Time { return *b.now.Load() }
		b.srv = httptest.NewServer(probe)
		t.Cleanup(b.srv.Close)
		return b
	}
	probe := func(t *testing.T, b *testBundle) (int, string) {
		t.Helper()
		res, err := httpClient.Get(b.srv.URL)
		require.NoError(t, err)
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		return res.StatusCode, string(body)
	}

	t.Run("ConcurrentProbesShareACheck", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// What one check costs, in statements bun runs (the ping is not one).
		status, body := probe(t, b)
		require.Equal(t, http.StatusOK, status, body)
		perCheck := b.statements.n.Load()
		require.Positive(t, perCheck)

		// The clock moves past the answer's life: the next probes check again.
		later := b.now.Load().Add(readinessTTL)
		b.now.Store(&later)
		b.statements.n.Store(0)
		const probes = 50
		start := make(chan struct{})
		answers := make(chan string, probes)
		var wg sync.WaitGroup
		for range probes {
			wg.Go(func() {
				<-start
				res, err := httpClient.Get(b.srv.URL)
				if err != nil {
					answers <- err.Error()
					return
				}
				defer res.Body.Close()
				body, _ := io.ReadAll(res.Body)
				answers <- res.Status + " " + string(body)
			})
		}
		close(start)
		wg.Wait()
		close(answers)
		for a := range answers {
			require.Equal(t, "200 OK ready\n", a)
		}
		require.LessOrEqual(t, b.statements.n.Load(), 2*perCheck, "%d concurrent probes ran more than a couple of checks", probes)
	})

	t.Run("AnswerIsReusedForItsLife", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		status, body := probe(t, b)
		require.Equal(t, http.StatusOK, status, body)
		perCheck := b.statements.n.Load()
		for range 5 {
			status, body = probe(t, b)
			require.Equal(t, http.StatusOK, status, body)
		}
		require.Equal(t, perCheck, b.statements.n.Load(), "probes within readinessTTL reuse the answer")

		later := b.now.Load().Add(readinessTTL)
		b.now.Store(&later)
		status, body = probe(t, b)
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, 2*perCheck, b.statements.n.Load(), "a probe after readinessTTL checks again")
	})
}
