package metrics

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

func TestOperationLabelsAreBounded(t *testing.T) {
	t.Parallel()
	m := New(nil)
	caller := func(i int) string { return fmt.Sprintf("tenant-%d/user:%d", i, i) }
	require.Equal(t, Unnamed, m.OperationLabel("", caller(0)))
	require.Equal(t, Other, m.OperationLabel("FromNobody", ""), "anonymous callers add no names")
	require.Equal(t, Other, m.OperationLabel(strings.Repeat("A", maxNameLength+1), caller(0)), "overlong names are not labels")
	for i := range MaxOperationNames {
		name := fmt.Sprintf("Op%d", i)
		require.Equal(t, name, m.OperationLabel(name, caller(i/MaxOperationNamesPerCaller)))
	}
	require.Equal(t, Other, m.OperationLabel("OneTooMany", "tenant/user:new"), "the cap holds")
	require.Equal(t, "Op7", m.OperationLabel("Op7", ""), "a known name is a label for anyone")
	require.Len(t, m.names.known, MaxOperationNames)
	require.Len(t, m.names.added, MaxOperationNames/MaxOperationNamesPerCaller, "only callers that added names are kept")
}

// One caller adds at most MaxOperationNamesPerCaller names, so it cannot
// use up the label's values for everyone; names it made known stay labels,
// for it and for others.
func TestOperationLabelsAreSharedOut(t *testing.T) {
	t.Parallel()
	m := New(nil)
	for i := range MaxOperationNames + 5 {
		name := fmt.Sprintf("AcmeCorp_customer_%d", i)
		want := name
		if i >= MaxOperationNamesPerCaller {
			want = Other
		}
		require.Equal(t, want, m.OperationLabel(name, "acme/user:squatter"))
	}
	require.Equal(t, "AcmeCorp_customer_3", m.OperationLabel("AcmeCorp_customer_3", "acme/user:squatter"))
	require.Equal(t, "AcmeCorp_customer_3", m.OperationLabel("AcmeCorp_customer_3", "other/user:someone"))
	require.Equal(t, "RealDashboard", m.OperationLabel("RealDashboard", "other/user:someone"), "another caller still adds names")
	require.Equal(t, "RealDashboard", m.OperationLabel("RealDashboard", "acme/user:squatter"), "a name another caller added is known to all")
	require.Len(t, m.names.known, MaxOperationNamesPerCaller+1)
}

// A tenant's callers together add at most MaxOperationNamesPerTenant: a
// tenant can make many robots and users, each a caller, but cannot take
// the label's values from the others.
func TestOperationLabelsPerTenant(t *testing.T) {
	t.Parallel()
	m := New(nil)
	added := 0
	for c := range 10 {
		for i := range MaxOperationNamesPerCaller {
			name := fmt.Sprintf("Acme_%d_%d", c, i)
			if m.OperationLabel(name, fmt.Sprintf("acme/robot:%d", c)) == name {
				added++
			}
		}
	}
	require.Equal(t, MaxOperationNamesPerTenant, added, "ten callers of one tenant")
	require.Equal(t, "RealDashboard", m.OperationLabel("RealDashboard", "other/user:someone"), "another tenant still adds names")
}

func TestNilMetricsRecordNothing(t *testing.T) {
	t.Parallel()
	var m *Metrics
	m.Request("POST", 200, "", 0)
	m.StreamOpened("sse")()
	m.OperationWaiting()()
	m.Operation("query", "Q", "ok", 0)
	m.Error("INTERNAL")
	m.Subscribers("machine", 1)
	m.Delivered("machine", 1)
	m.Coalesced("machine")
	m.SlowConsumer("machine")
	m.Resynced()
	m.Reconnected()
	m.Dropped("c")
	m.ClaimReturned(1, time.Now(), true, nil)
	m.LeaseRescued("QUEUED")
	m.WatchDatabase(nil, nil)
	require.Equal(t, Other, m.OperationLabel("Q", "tenant/user:1"))
}

// blockingCollector holds each scrape in Collect until released.
type blockingCollector struct {
	desc    *prometheus.Desc
	entered chan struct{}
	release chan struct{}
}

func (c *blockingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *blockingCollector) Collect(ch chan<- prometheus.Metric) {
	select {
	case c.entered <- struct{}{}:
	case <-c.release:
	}
	<-c.release
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1)
}

// The handler serves MaxScrapesInFlight scrapes at once and refuses the
// next with 503 at once, rather than gathering (and counting jobs in the
// database) for every client that asks.
func TestHandlerServesAFewScrapesAtOnce(t *testing.T) {
	t.Parallel()
	m := New(nil)
	c := &blockingCollector{desc: prometheus.NewDesc("test_blocking", "Blocks scrapes.", nil, nil), entered: make(chan struct{}), release: make(chan struct{})}
	m.Registry().MustRegister(c)
	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(c.release) }) }
	t.Cleanup(release) // before srv.Close, which waits for the scrapes held
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// scrape returns the status of one scrape, or 0 when it failed (it
	// runs on goroutines of its own, where require cannot stop the test).
	scrape := func() int {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		if err != nil {
			return 0
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		defer res.Body.Close()
		if _, err := io.Copy(io.Discard, res.Body); err != nil {
			return 0
		}
		return res.StatusCode
	}

	statuses := make(chan int, MaxScrapesInFlight)
	for range MaxScrapesInFlight {
		go func() { statuses <- scrape() }()
		select {
		case <-c.entered:
		case <-ctx.Done():
			t.Fatal("a scrape never reached the collector")
		}
	}
	// One more is refused at once: it never reaches the collector (a
	// handler without the cap holds it there until the context's deadline).
	require.Equal(t, http.StatusServiceUnavailable, scrape(), "one scrape more than MaxScrapesInFlight")
	release()
	for range MaxScrapesInFlight {
		require.Equal(t, http.StatusOK, <-statuses)
	}
	require.Equal(t, http.StatusOK, scrape(), "scrapes are served again once the others ended")
}
