// Package apitest runs the real GraphQL HTTP stack on a loopback port over a
// test's own database, and speaks to it as clients do: JSON over HTTP POST
// and graphql-transport-ws over websockets. Only tests import it.
package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/app"
	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/dispatch"
	"fleetgraph/graph"
	"fleetgraph/graph/live"
	"fleetgraph/maintenance"
	"fleetgraph/metrics"
)

// Secret is the JWT secret test servers accept.
const Secret = "test-secret-test-secret-test-secret-0123456789"

// Server is a running API over a test database.
type Server struct {
	URL     string // base URL; the endpoint is URL + "/graphql"
	DB      *dbtest.Database
	JWT     *auth.JWT
	App     *app.App
	Handler *graph.Handler
	Log     *LogBuffer
	// Metrics and MetricsURL (its /metrics endpoint, on a listener of its
	// own) are set when Options.Metrics asked for them.
	Metrics    *metrics.Metrics
	MetricsURL string
	// Control is the server's pool for credential checks (app.Config's
	// ControlDB), on DB's database.
	Control *bun.DB
	// Statements counts SQL statements run through DB for requests.
	Statements atomic.Int64
	// Transactions gauges the transactions of requests open at once on DB,
	// each of which holds a pooled connection.
	Transactions Gauge
}

// Gauge is a count that goes up and down, with the highest it reached.
type Gauge struct{ now, peak atomic.Int64 }

func (g *Gauge) add(d int64) {
	v := g.now.Add(d)
	for {
		p := g.peak.Load()
		if v <= p || g.peak.CompareAndSwap(p, v) {
			return
		}
	}
}

// Now is the current count.
func (g *Gauge) Now() int64 { return g.now.Load() }

// Peak is the highest count since the last ResetPeak.
func (g *Gauge) Peak() int64 { return g.peak.Load() }

// ResetPeak starts a new peak from the current count.
func (g *Gauge) ResetPeak() { g.peak.Store(g.now.Load()) }

// Options adjust a test server.
type Options struct {
	Introspection  bool
	AllowedOrigins []string
	Limits         graph.Limits
	// DB replaces the resolver's database (e.g. a closed one, to provoke internal errors).
	DB *bun.DB
	// Queue overrides the queue timings (default: DefaultQueue).
	Queue db.QueueConfig
	// SweepEvery overrides how often the maintenance runner runs (default 100ms in tests).
	SweepEvery time.Duration
	// ClaimPoll overrides how often waiting claims poll (default: an hour,
	// so tests prove that notifications, not polling, wake them).
	ClaimPoll time.Duration
	// WriteTimeout sets the HTTP server's write timeout (default: none) and
	// caps waiting claims as the real server does (dispatch.WaitWithin).
	WriteTimeout time.Duration
	// InitTimeout overrides how long a websocket may wait before
	// connection_init (default 10s), for tests of the 4408 close.
	InitTimeout time.Duration
	// KeepAlive overrides the interval of the websocket and SSE keep-alive
	// messages (default 15s), for tests that wait for one.
	KeepAlive time.Duration
	// LiveLimits override the operations allowed per websocket and per caller.
	LiveLimits live.Limits
	// Running caps the operations executing at once (default: graph.DefaultRunningPerCPU per CPU).
	Running int
	// OperationTimeout overrides how long a query or mutation may work
	// (default: graph.DefaultOperationTimeout).
	OperationTimeout time.Duration
	// KeyRecheck overrides how often robot websockets re-check their API key (default 30s).
	KeyRecheck time.Duration
	// KeyCacheTTL turns the API key cache on (default off, so tests that
	// revoke see it at once without waiting for the notification).
	KeyCacheTTL time.Duration
	// KeyCheckTimeout bounds each API key check (default
	// auth.DefaultKeyCheckTimeout).
	KeyCheckTimeout time.Duration
	// KeyLookups bounds the reads of API keys that do not verify, per
	// address (default db.DefaultKeyLookupLimit).
	KeyLookups db.RateLimit
	// ReplicaOf, when set, makes this server a second replica of another:
	// it serves that server's database over a pool and a listener of its
	// own (and counts its own statements).
	ReplicaOf *Server
	// Logs overrides the log retention and partitions ahead.
	Logs db.LogConfig
	// Clock is the maintenance runner's, the scheduler's and the log store's time. With a
	// clock set, no loop runs the maintenance runner: the test steps it
	// (Server.App.Maintenance.Step) after moving the clock.
	Clock maintenance.Clock
	// Metrics turns the Prometheus metrics on, served at Server.MetricsURL.
	Metrics bool
	// LogLevel is the server log's level (nil: debug).
	LogLevel slog.Leveler
	// Webhooks shape webhook delivery. Test servers allow http:// and
	// private (loopback) receivers unless WebhookGuard is set.
	Webhooks app.WebhookConfig
	// WebhookGuard keeps the production rules: https only, no private addresses.
	WebhookGuard bool
}

// DefaultQueue is the queue of test servers that set none: production's,
// but with leases of an hour (heartbeats extending them for a day) and
// robots silent for an hour before they are OFFLINE, so that no lease runs
// out and no robot goes offline because a busy machine ran a test slowly.
// Tests of expiry make time pass in the database, or set their own timings;
// no takeover grace holds back the first sweep after the server starts.
func DefaultQueue() db.QueueConfig {
	q := db.DefaultQueueConfig
	q.Lease, q.ProgressTimeout, q.OfflineAfter, q.TakeoverGrace = time.Hour, 24*time.Hour, time.Hour, 0
	return q
}

// New starts a server for t with its own database; it stops when t ends.
func New(t testing.TB, opts ...Options) *Server {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	s := &Server{Log: &LogBuffer{}}
	if o.ReplicaOf != nil {
		bdb, err := db.Open(t.Context(), o.ReplicaOf.DB.DSN)
		require.NoError(t, err)
		t.Cleanup(func() { _ = bdb.Close() })
		s.DB = &dbtest.Database{DB: bdb, Name: o.ReplicaOf.DB.Name, DSN: o.ReplicaOf.DB.DSN}
	} else {
		s.DB = dbtest.New(t)
	}
	s.DB.AddQueryHook(counter{&s.Statements, &s.Transactions, s.Log})
	jwt, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(Secret), Audience: "authenticated"})
	require.NoError(t, err)
	s.JWT = jwt
	resolverDB := s.DB.DB
	if o.DB != nil {
		resolverDB = o.DB
	}
	if o.Queue == (db.QueueConfig{}) {
		o.Queue = DefaultQueue()
	}
	if o.SweepEvery == 0 {
		o.SweepEvery = 100 * time.Millisecond
	}
	if o.ClaimPoll == 0 {
		o.ClaimPoll = time.Hour
	}
	if !o.WebhookGuard {
		o.Webhooks.AllowPrivate, o.Webhooks.AllowHTTP = true, true
	}
	if o.LogLevel == nil {
		o.LogLevel = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(s.Log, &slog.HandlerOptions{Level: o.LogLevel}))
	if o.Metrics {
		s.Metrics = metrics.New(log)
		ms := httptest.NewServer(s.Metrics.Handler())
		t.Cleanup(ms.Close)
		s.MetricsURL = ms.URL + "/metrics"
	}
	// A control pool as serve opens one, counted as the main one is.
	control, err := db.OpenPool(t.Context(), s.DB.DSN, db.ControlPoolSize)
	require.NoError(t, err)
	t.Cleanup(func() { _ = control.Close() })
	control.AddQueryHook(counter{&s.Statements, &s.Transactions, s.Log})
	if o.DB != nil {
		control = o.DB
	}
	s.Control = control
	a, err := app.New(app.Config{
		DB:               resolverDB,
		ControlDB:        control,
		DSN:              s.DB.DSN,
		JWT:              jwt,
		Logger:           log,
		Queue:            o.Queue,
		AllowedOrigins:   o.AllowedOrigins,
		Introspection:    o.Introspection,
		Limits:           o.Limits,
		ClaimPoll:        o.ClaimPoll,
		ClaimMaxWait:     claimMaxWait(o.WriteTimeout),
		SweepEvery:       o.SweepEvery,
		InitTimeout:      o.InitTimeout,
		KeepAlive:        o.KeepAlive,
		LiveLimits:       o.LiveLimits,
		Running:          o.Running,
		OperationTimeout: o.OperationTimeout,
		KeyRecheck:       o.KeyRecheck,
		KeyCacheTTL:      o.KeyCacheTTL,
		KeyCheckTimeout:  o.KeyCheckTimeout,
		KeyLookups:       o.KeyLookups,
		Clock:            o.Clock,
		Logs:             o.Logs,
		Metrics:          s.Metrics,
		Webhooks:         o.Webhooks,
	})
	require.NoError(t, err)
	s.App, s.Handler = a, a.Handler
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		if o.Clock != nil {
			// What App.Run runs, less the maintenance loop the test steps.
			var wg sync.WaitGroup
			wg.Go(func() { a.Listener.Run(ctx) })
			wg.Go(func() { a.Hub.Run(ctx) })
			wg.Wait()
		} else {
			a.Run(ctx)
		}
		close(done)
	}()
	t.Cleanup(func() {
		stop()
		<-done
	})
	mux := http.NewServeMux()
	mux.Handle("/graphql", s.Handler)
	ts := httptest.NewUnstartedServer(mux)
	ts.Config.WriteTimeout = o.WriteTimeout
	ts.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Handler.CloseWebsockets(ctx)
		ts.Close()
	})
	s.URL = ts.URL
	return s
}

// claimMaxWait is the claim wait cap of a server with writeTimeout (0: none).
func claimMaxWait(writeTimeout time.Duration) time.Duration {
	if writeTimeout == 0 {
		return 0
	}
	return dispatch.WaitWithin(writeTimeout)
}

// counter is a bun query hook counting the statements of requests.
type counter struct {
	n   *atomic.Int64
	tx  *Gauge
	log *LogBuffer
}

// BeforeQuery closes a request's transaction in the gauge.
func (c counter) BeforeQuery(ctx context.Context, e *bun.QueryEvent) context.Context {
	if graph.RequestID(ctx) != "" && (e.Query == "COMMIT" || e.Query == "ROLLBACK") {
		c.tx.add(-1)
	}
	return ctx
}

// AfterQuery counts statements run for requests (those with a request id),
// not the background sweeper's or hub's, and opens their transactions in
// the gauge; APITEST_LOG_SQL=1 logs them.
func (c counter) AfterQuery(ctx context.Context, e *bun.QueryEvent) {
	if graph.RequestID(ctx) == "" {
		return
	}
	if e.Query == "BEGIN" && e.Err == nil {
		c.tx.add(1)
	}
	c.n.Add(1)
	if os.Getenv("APITEST_LOG_SQL") != "" {
		_, _ = fmt.Fprintf(c.log, "SQL %s %s\n", graph.RequestID(ctx), e.Query)
	}
}

// LogBuffer collects the server's log lines.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything logged so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// User is a caller with a token.
type User struct {
	ID     uuid.UUID
	Tenant uuid.UUID
	Token  string
}

// NewUser mints a token for a fresh user in tenant (uuid.Nil: the default tenant).
func (s *Server) NewUser(t testing.TB, tenant uuid.UUID) User {
	return s.userWithRole(t, tenant, auth.RoleUser)
}

// NewService mints a service_role token for tenant.
func (s *Server) NewService(t testing.TB, tenant uuid.UUID) User {
	return s.userWithRole(t, tenant, auth.RoleService)
}

func (s *Server) userWithRole(t testing.TB, tenant uuid.UUID, role auth.Role) User {
	t.Helper()
	if tenant == uuid.Nil {
		tenant = auth.DefaultTenant
	}
	u := User{ID: uuid.New(), Tenant: tenant}
	tok, err := s.JWT.Mint(auth.MintOptions{UserID: u.ID, TenantID: tenant, Role: role, TTL: time.Hour})
	require.NoError(t, err)
	u.Token = tok
	return u
}

// Response is a GraphQL response with its HTTP status.
type Response struct {
	Status int
	Header http.Header
	Data   json.RawMessage `json:"data"`
	Errors []Error         `json:"errors"`
	Raw    []byte
}

// Error is one GraphQL error.
type Error struct {
	Message    string         `json:"message"`
	Path       []any          `json:"path"`
	Extensions map[string]any `json:"extensions"`
}

// Code is the error's extensions.code.
func (e Error) Code() string { s, _ := e.Extensions["code"].(string); return s }

// Do posts a query with variables as the user with token ("" = anonymous).
func (s *Server) Do(t testing.TB, token, query string, vars map[string]any) *Response {
	t.Helper()
	body, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	require.NoError(t, err)
	return s.Post(t, token, "application/json", body)
}

// CreateWorkflow creates, as the user with token, a workflow named name
// whose version 1 is {"nodes": [name]}, and returns its id.
func (s *Server) CreateWorkflow(t testing.TB, token, name string) string {
	t.Helper()
	var out struct{ CreateWorkflow struct{ ID string } }
	s.Do(t, token, `mutation($n: String!, $d: JSON!) { createWorkflow(input: {name: $n, definition: $d}) { id } }`,
		map[string]any{"n": name, "d": map[string]any{"nodes": []any{name}}}).OK(t, &out)
	require.NotEmpty(t, out.CreateWorkflow.ID)
	return out.CreateWorkflow.ID
}

// RobotWithKey creates, as the user with token, a robot named name and an
// API key for it, and returns the robot's id and the raw key.
func (s *Server) RobotWithKey(t testing.TB, token, name string) (id, key string) {
	t.Helper()
	var robot struct{ CreateRobot struct{ ID string } }
	s.Do(t, token, `mutation($n: String!) { createRobot(input: {name: $n}) { id } }`, map[string]any{"n": name}).OK(t, &robot)
	var created struct{ CreateApiKey struct{ Key string } }
	s.Do(t, token, `mutation($r: ID!) { createApiKey(robotId: $r, name: "agent") { key } }`,
		map[string]any{"r": robot.CreateRobot.ID}).OK(t, &created)
	require.NotEmpty(t, created.CreateApiKey.Key)
	return robot.CreateRobot.ID, created.CreateApiKey.Key
}

// JSONOfSize is a JSON object whose encoding is exactly n bytes (n >= 8).
func JSONOfSize(n int) map[string]any {
	const overhead = len(`{"k":""}`)
	return map[string]any{"k": strings.Repeat("a", n-overhead)}
}

// Post sends a raw body to the endpoint.
func (s *Server) Post(t testing.TB, token, contentType string, body []byte) *Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.URL+"/graphql", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", contentType)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return s.Send(t, req)
}

// Send performs req and decodes a GraphQL response.
func (s *Server) Send(t testing.TB, req *http.Request) *Response {
	t.Helper()
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	r := &Response{Status: res.StatusCode, Header: res.Header, Raw: raw}
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/") && len(raw) > 0 {
		require.NoError(t, json.Unmarshal(raw, r), "decoding %s", raw)
	}
	return r
}

// OK fails t unless the response has no errors, and decodes data into v (when non-nil).
func (r *Response) OK(t testing.TB, v any) {
	t.Helper()
	require.Empty(t, r.Errors, "unexpected errors: %s", r.Raw)
	if v != nil {
		require.NoError(t, json.Unmarshal(r.Data, v), "decoding %s", r.Data)
	}
}

// Code fails t unless the response's first error has the code, and returns that error.
func (r *Response) Code(t testing.TB, code string) Error {
	t.Helper()
	require.NotEmpty(t, r.Errors, "expected a %s error, got %s", code, r.Raw)
	require.Equal(t, code, r.Errors[0].Code(), "response: %s", r.Raw)
	return r.Errors[0]
}

// RequireNoLeak fails t if raw, a response, names database details: the
// fragments of database errors that must never reach a client.
func RequireNoLeak(t testing.TB, raw []byte) {
	t.Helper()
	for _, leak := range []string{"pq:", "SQLSTATE", "constraint", "violates", "duplicate key"} {
		require.NotContains(t, strings.ToLower(string(raw)), strings.ToLower(leak), "the response leaks database details: %s", raw)
	}
}

// RequireNoData fails t unless every top-level field of the response is null.
func RequireNoData(t testing.TB, resp *Response) {
	t.Helper()
	if len(resp.Data) == 0 || string(resp.Data) == "null" {
		return
	}
	var fields map[string]any
	require.NoError(t, json.Unmarshal(resp.Data, &fields))
	for name, v := range fields {
		require.Nil(t, v, "field %s leaked data: %s", name, resp.Raw)
	}
}

// LockWaiters counts the sessions of the server's database that wait for a
// lock in a statement whose text is LIKE like ("%" for any): with a row or
// table the test holds, a test can wait until the calls it sent queue
// behind it, whatever the machine's load.
func (s *Server) LockWaiters(t testing.TB, like string) int {
	t.Helper()
	var n int
	require.NoError(t, s.DB.NewRaw(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND wait_event_type = 'Lock' AND query LIKE ?`, like).Scan(t.Context(), &n))
	return n
}

// LockTable takes an ACCESS EXCLUSIVE lock on table in a transaction the
// test ends with release (idempotent; also at cleanup).
func (s *Server) LockTable(t testing.TB, table string) (release func()) {
	t.Helper()
	tx, err := s.DB.BeginTx(t.Context(), nil)
	require.NoError(t, err)
	_, err = tx.ExecContext(t.Context(), "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)
	release = func() { _ = tx.Rollback() }
	t.Cleanup(release)
	return release
}
