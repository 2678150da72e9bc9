// Package metrics is what operators watch: Prometheus metrics of the
// GraphQL endpoint (requests, operations, errors by code, open streams), of
// the live path (hub subscribers, deliveries, coalescing, slow consumers,
// listener reconnects), of the job queue (depth by status, claim waits,
// lease rescues) and of the database pool, all in one registry that a
// Metrics value owns. It also carries the per-request record that the
// access log line is written from (request.go).
//
// A nil *Metrics is valid and records nothing, so every component takes one
// and the server decides, through METRICS_ADDR, whether it exists. Labels
// are bounded: no tenant, user or robot ids, and operation names only from a
// capped set (see operationNames).
package metrics

import (
	"context"
	"database/sql"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MaxOperationNames caps the distinct operation names the GraphQL metrics
// keep as label values; later names are counted as "(other)".
const MaxOperationNames = 200

// MaxOperationNamesPerCaller caps the names one caller may add to the
// label's values, so that one caller making up names cannot use up
// MaxOperationNames for everyone: past it, that caller's new names are
// "(other)", while names already known stay labels for anyone.
const MaxOperationNamesPerCaller = 20

// MaxOperationNamesPerTenant caps the names all of one tenant's callers may
// add together: a tenant can make robots and users, each a caller, but not
// take more than a quarter of MaxOperationNames.
const MaxOperationNamesPerTenant = 50

// Label values that cannot be GraphQL operation names.
const (
	// Unnamed is the operation label of anonymous operations ({ ... }).
	Unnamed = "(unnamed)"
	// Other is the operation label of names past the cap or past their
	// caller's share of it, of names first seen from anonymous callers,
	// and of requests refused before an operation was known.
	Other = "(other)"
)

// Metrics holds every metric of one process and the registry they are
// served from. Build it with New; the zero of *Metrics (nil) records nothing.
type Metrics struct {
	reg *prometheus.Registry
	log *slog.Logger

	httpRequests *prometheus.CounterVec   // method, status
	httpDuration *prometheus.HistogramVec // method
	streamsOpen  *prometheus.GaugeVec     // transport
	streamsTotal *prometheus.CounterVec   // transport

	operations *prometheus.HistogramVec // type, operation, outcome
	waiting    prometheus.Gauge
	// waitingForClient counts websockets' operations waiting for their
	// client to read.
	waitingForClient prometheus.Gauge
	errors           *prometheus.CounterVec // code

	subscribers   *prometheus.GaugeVec   // kind
	deliveries    *prometheus.CounterVec // kind
	coalesced     *prometheus.CounterVec // kind
	slowConsumers *prometheus.CounterVec // kind
	resyncs       prometheus.Counter
	reconnects    prometheus.Counter

	sharedGroups      prometheus.Gauge
	sharedSubscribers prometheus.Gauge
	sharedRenders     prometheus.Counter
	sharedSends       prometheus.Counter
	dropped           *prometheus.CounterVec // channel

	claimWait *prometheus.HistogramVec // outcome
	rescues   *prometheus.CounterVec   // to

	names operationNames
}

// durationBuckets cover a fast query (a millisecond) to a claim that waits
// its longest (a minute).
var durationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// New returns metrics registered in a fresh registry, with the Go runtime's
// and the process's own collectors. log receives scrape errors (nil: none).
func New(log *slog.Logger) *Metrics {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{reg: prometheus.NewRegistry(), log: log, names: newOperationNames(MaxOperationNames, MaxOperationNamesPerCaller, MaxOperationNamesPerTenant)}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	m.httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetgraph_http_requests_total",
		Help: "Requests to /graphql by method and response status (101: websocket upgrades), counted when they end.",
	}, []string{"method", "status"})
	m.httpDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fleetgraph_http_request_duration_seconds",
		Help:    "Duration of /graphql requests that are not streams (websockets and SSE are in fleetgraph_streams_*).",
		Buckets: durationBuckets,
	}, []string{"method"})
	m.streamsOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "fleetgraph_streams_open",
		Help: "Open websockets and SSE streams.",
	}, []string{"transport"})
	m.streamsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetgraph_streams_total",
		Help: "Websockets and SSE streams opened.",
	}, []string{"transport"})
	m.operations = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "fleetgraph_graphql_operation_duration_seconds",
		Help: "GraphQL operations by type (query, mutation, subscription; unknown when refused before one was found), " +
			"operation name (capped), and outcome (ok, error: a response carried errors, rejected: refused before execution). " +
			"Queries and mutations until their response; subscriptions for their whole life.",
		Buckets: durationBuckets,
	}, []string{"type", "operation", "outcome"})
	m.waiting = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "fleetgraph_graphql_operations_waiting",
		Help: "Queries and mutations waiting for a turn to execute (MAX_RUNNING_OPERATIONS are given turns at once).",
	})
	m.waitingForClient = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "fleetgraph_websocket_operations_waiting_for_client",
		Help: "Websocket operations waiting, before their turn, for their client to read the results its socket holds (past 8 MiB a socket, 64 MiB a caller).",
	})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetgraph_graphql_errors_total",
		Help: "GraphQL errors sent to clients, by extensions.code.",
	}, []string{"code"})
	m.subscribers = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "fleetgraph_hub_subscribers",
		Help: "Live subscriptions held by the hub, by kind (machine, machine_event, robot, presence, job).",
	}, []string{"kind"})
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetgraph_hub_deliveries_total",
		Help: "Updates the hub handed to subscribers, by kind.",
	}, []string{"kind"})
	m.coalesced = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetgraph_hub_coalesced_total",
		Help: "Updates that replaced an undelivered older update of the same entity, by kind.",
	}, []string{"kind"})
	m.slowConsumers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetgraph_hub_slow_consumer_ends_total",
		Help: "Subscriptions ended because their subscriber let too many updates pile up, by kind.",
	}, []string{"kind"})
	m.resyncs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetgraph_hub_resyncs_total",
		Help: "Times the hub re-read live topics after the feed lost notifications (reconnect or overflow).",
	})
	m.sharedGroups = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "fleetgraph_live_shared_groups",
		Help: "Groups of subscribers that share one execution of their subscription (same operation, variables and visibility class).",
	})
	m.sharedSubscribers = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "fleetgraph_live_shared_subscribers",
		Help: "Subscribers that are members of a shared group.",
	})
	m.sharedRenders = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetgraph_live_shared_renders_total",
		Help: "Results a shared group executed and encoded once for all its members.",
	})
	m.sharedSends = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetgraph_live_shared_sends_total",
		Help: "Results handed to the members of shared groups (each shared render counts once per member).",
	})
	m.reconnects = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fleetgraph_listener_reconnects_total",
		Help: "Times the notification listener's connection was re-established.",
	})
	m.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetgraph_listener_dropped_total",
		Help: "Notifications a full subscription buffer could not take, by channel.",
	}, []string{"channel"})
	m.claimWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fleetgraph_claim_wait_seconds",
		Help:    "How long claims that may wait (waitSeconds > 0) took to return, by outcome (job, none, error).",
		Buckets: durationBuckets,
	}, []string{"outcome"})
	m.rescues = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fleetgraph_lease_rescues_total",
		Help: "Jobs taken back from an expired lease, by the status they went to (QUEUED again, or FAILED).",
	}, []string{"to"})
	for _, c := range []prometheus.Collector{m.httpRequests, m.httpDuration, m.streamsOpen, m.streamsTotal,
		m.operations, m.waiting, m.waitingForClient, m.errors, m.subscribers, m.deliveries, m.coalesced, m.slowConsumers, m.resyncs,
		m.sharedGroups, m.sharedSubscribers, m.sharedRenders, m.sharedSends, m.reconnects, m.dropped, m.claimWait, m.rescues} {
		f(c)
	}
	return m
}

// JobCounter counts the jobs of every tenant in the statuses it reports.
type JobCounter func(ctx context.Context) (map[string]int, error)

// WatchDatabase adds, read at scrape time, the pool's statistics
// (go_sql_*{db_name="fleetgraph"}) and, when jobs is non-nil, the job
// queue's depth by status (fleetgraph_jobs): one grouped COUNT a scrape.
func (m *Metrics) WatchDatabase(pool *sql.DB, jobs JobCounter) {
	if m == nil {
		return
	}
	if pool != nil {
		m.reg.MustRegister(collectors.NewDBStatsCollector(pool, "fleetgraph"))
	}
	if jobs != nil {
		m.reg.MustRegister(&jobsCollector{count: jobs, log: m.log,
			desc: prometheus.NewDesc("fleetgraph_jobs", "Jobs of all tenants by status, counted at scrape time (live statuses only: QUEUED, CLAIMED, RUNNING).", []string{"status"}, nil)})
	}
}

// jobsCollector reads the queue's depth when scraped.
type jobsCollector struct {
	count JobCounter
	desc  *prometheus.Desc
	log   *slog.Logger
}

func (c *jobsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// scrapeTimeout bounds the queue's count, so a busy database fails the
// metric rather than the scrape.
const scrapeTimeout = 5 * time.Second

func (c *jobsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	counts, err := c.count(ctx)
	if err != nil {
		c.log.Warn("counting jobs for metrics", "error", err)
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for status, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), status)
	}
}

// MaxScrapesInFlight caps the scrapes Handler serves at once; more are
// answered 503 at once. Each scrape gathers every collector, the job
// queue's COUNT in the database among them, and a pair of Prometheus
// servers scraping a replica needs two.
const MaxScrapesInFlight = 2

// Handler serves the registry in the Prometheus text (or OpenMetrics)
// format, at most MaxScrapesInFlight scrapes at once. A collector that
// fails is logged and left out; the rest are served.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: MaxScrapesInFlight,
	})
}

// Registry is where the metrics are registered, for tests and for
// components that add collectors of their own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Request counts one /graphql request that ended with status after d;
// stream is "websocket", "sse" or "" for a plain request.
func (m *Metrics) Request(method string, status int, stream string, d time.Duration) {
	if m == nil {
		return
	}
	method = methodLabel(method)
	m.httpRequests.WithLabelValues(method, statusLabel(status)).Inc()
	if stream == "" {
		m.httpDuration.WithLabelValues(method).Observe(d.Seconds())
	}
}

// OperationWaiting counts an operation as waiting for its turn; call the
// returned function when the wait ends.
func (m *Metrics) OperationWaiting() (done func()) {
	if m == nil {
		return func() {}
	}
	m.waiting.Inc()
	return m.waiting.Dec
}

// WaitingForClient counts a websocket's operation as waiting for its
// client to read; call the returned function when the wait ends.
func (m *Metrics) WaitingForClient() (done func()) {
	if m == nil {
		return func() {}
	}
	m.waitingForClient.Inc()
	return m.waitingForClient.Dec
}

// StreamOpened counts a websocket or SSE stream as open; call the returned
// function when it closes.
func (m *Metrics) StreamOpened(transport string) (closed func()) {
	if m == nil {
		return func() {}
	}
	m.streamsTotal.WithLabelValues(transport).Inc()
	g := m.streamsOpen.WithLabelValues(transport)
	g.Inc()
	return g.Dec
}

// Operation records a finished GraphQL operation.
func (m *Metrics) Operation(typ, name, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.operations.WithLabelValues(typ, name, outcome).Observe(d.Seconds())
}

// Error counts one error sent to a client with code (extensions.code).
func (m *Metrics) Error(code string) {
	if m == nil {
		return
	}
	m.errors.WithLabelValues(codeLabel(code)).Inc()
}

// Subscribers moves the hub's subscriber count of kind by delta.
func (m *Metrics) Subscribers(kind string, delta int) {
	if m == nil {
		return
	}
	m.subscribers.WithLabelValues(kind).Add(float64(delta))
}

// Delivered counts n updates of kind handed to a subscriber.
func (m *Metrics) Delivered(kind string, n int) {
	if m == nil || n == 0 {
		return
	}
	m.deliveries.WithLabelValues(kind).Add(float64(n))
}

// SharedGroups moves the count of shared subscription groups by delta.
func (m *Metrics) SharedGroups(delta int) {
	if m == nil {
		return
	}
	m.sharedGroups.Add(float64(delta))
}

// SharedSubscribers moves the count of shared groups' members by delta.
func (m *Metrics) SharedSubscribers(delta int) {
	if m == nil {
		return
	}
	m.sharedSubscribers.Add(float64(delta))
}

// SharedRender counts one result of a shared group, rendered once and
// handed to members.
func (m *Metrics) SharedRender(members int) {
	if m == nil {
		return
	}
	m.sharedRenders.Inc()
	m.sharedSends.Add(float64(members))
}

// Coalesced counts an update that replaced an undelivered one.
func (m *Metrics) Coalesced(kind string) {
	if m == nil {
		return
	}
	m.coalesced.WithLabelValues(kind).Inc()
}

// SlowConsumer counts a subscription ended for not keeping up.
func (m *Metrics) SlowConsumer(kind string) {
	if m == nil {
		return
	}
	m.slowConsumers.WithLabelValues(kind).Inc()
}

// Resynced counts a resynchronisation of the hub's topics.
func (m *Metrics) Resynced() {
	if m == nil {
		return
	}
	m.resyncs.Inc()
}

// Reconnected counts a re-established listener connection.
func (m *Metrics) Reconnected() {
	if m == nil {
		return
	}
	m.reconnects.Inc()
}

// Dropped counts a notification of channel that a full buffer missed.
func (m *Metrics) Dropped(channel string) {
	if m == nil {
		return
	}
	m.dropped.WithLabelValues(channel).Inc()
}

// ClaimReturned records a claim that asked to wait up to wait: how long it
// took (since start) and whether it brought a job, none, or an error.
func (m *Metrics) ClaimReturned(wait time.Duration, start time.Time, gotJob bool, err error) {
	if m == nil || wait <= 0 {
		return
	}
	outcome := "none"
	switch {
	case err != nil:
		outcome = "error"
	case gotJob:
		outcome = "job"
	}
	m.claimWait.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
}

// LeaseRescued counts a job taken back from an expired lease into status
// (QUEUED or FAILED).
func (m *Metrics) LeaseRescued(status string) {
	if m == nil {
		return
	}
	m.rescues.WithLabelValues(status).Inc()
}

// OperationLabel is the label value for an operation name: the name when
// it is known or may be added, else Other; Unnamed for "". caller names
// who sent it (its principal, by tenant and actor), "" for an anonymous
// caller, who adds no names; a caller adds at most
// MaxOperationNamesPerCaller, a tenant's callers (caller's part before its
// first "/") MaxOperationNamesPerTenant, and all callers together
// MaxOperationNames.
func (m *Metrics) OperationLabel(name, caller string) string {
	if m == nil {
		return Other
	}
	return m.names.label(name, caller)
}

// operationNames bounds the operation label: anonymous callers cannot add
// names (an unauthenticated flood of made-up names stays one series),
// signed-in callers add at most perCaller each, a tenant's callers at most
// perTenant together, and all of them at most max. added and byTenant hold
// only callers and tenants that added a name, so neither has more than max
// entries.
type operationNames struct {
	max, perCaller, perTenant int
	mu                        sync.RWMutex
	known                     map[string]struct{}
	added                     map[string]int // names added, by caller
	byTenant                  map[string]int // names added, by the caller's tenant
}

func newOperationNames(max, perCaller, perTenant int) operationNames {
	return operationNames{max: max, perCaller: perCaller, perTenant: perTenant,
		known: map[string]struct{}{}, added: map[string]int{}, byTenant: map[string]int{}}
}

// fullFor reports whether caller (of tenant) may add no more names (under
// n.mu, read or write).
func (n *operationNames) fullFor(caller, tenant string) bool {
	return len(n.known) >= n.max || n.added[caller] >= n.perCaller || n.byTenant[tenant] >= n.perTenant
}

// maxNameLength caps a name kept as a label value.
const maxNameLength = 64

func (n *operationNames) label(name, caller string) string {
	if name == "" {
		return Unnamed
	}
	if len(name) > maxNameLength {
		return Other
	}
	tenant, _, _ := strings.Cut(caller, "/")
	n.mu.RLock()
	_, ok := n.known[name]
	full := n.fullFor(caller, tenant)
	n.mu.RUnlock()
	if ok {
		return name
	}
	if caller == "" || full {
		return Other
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.known[name]; ok {
		return name
	}
	if n.fullFor(caller, tenant) {
		return Other
	}
	n.known[name] = struct{}{}
	n.added[caller]++
	n.byTenant[tenant]++
	return name
}

// methodLabel keeps the method label to the methods a client may use.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodOptions, http.MethodHead:
		return m
	}
	return "other"
}

// statusLabel renders a status code without allocating for common ones.
func statusLabel(code int) string {
	switch code {
	case 101:
		return "101"
	case 200:
		return "200"
	case 400:
		return "400"
	case 401:
		return "401"
	case 405:
		return "405"
	case 413:
		return "413"
	case 422:
		return "422"
	case 500:
		return "500"
	}
	if code < 100 || code > 599 {
		return "other"
	}
	return itoa3(code)
}

func itoa3(n int) string {
	return string([]byte{byte('0' + n/100), byte('0' + n/10%10), byte('0' + n%10)})
}

// codes are the extensions.code values the API uses (fault's, and
// PERSISTED_QUERY_NOT_FOUND); anything else is counted as "other".
var codes = map[string]bool{
	"BAD_USER_INPUT": true, "NOT_FOUND": true, "CONFLICT": true, "FORBIDDEN": true,
	"UNAUTHENTICATED": true, "RATE_LIMITED": true, "INTERNAL": true, "PERSISTED_QUERY_NOT_FOUND": true,
}

func codeLabel(code string) string {
	if codes[code] {
		return code
	}
	if code == "" {
		return "none"
	}
	return "other"
}
