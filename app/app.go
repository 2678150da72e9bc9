// Package app assembles Fleetgraph from its parts: the stores, the
// notification listener, the dispatcher, the maintenance runner and its
// tasks, and the GraphQL handler.
// The server and the API tests build the same application through New, so
// what the tests exercise is what runs.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dispatch"
	"fleetgraph/graph"
	"fleetgraph/graph/live"
	"fleetgraph/maintenance"
	"fleetgraph/metrics"
	"fleetgraph/realtime"
	"fleetgraph/webhook"
)

// Config is what the application needs.
type Config struct {
	DB *bun.DB
	// ControlDB, when set, is a small pool of the same database for
	// credential checks (db.ControlPoolSize), apart from the requests'
	// pool, so that operations holding that one never stall them (nil:
	// DB).
	ControlDB *bun.DB
	// DSN is the same database's connection string, for the LISTEN connection.
	DSN            string
	JWT            *auth.JWT
	Logger         *slog.Logger
	Queue          db.QueueConfig
	AllowedOrigins []string
	Introspection  bool
	Limits         graph.Limits
	// ClaimPoll is how often a waiting claim re-checks without a notification.
	ClaimPoll time.Duration
	// ClaimMaxWait caps a claim's wait (0: dispatch's default); derive it
	// from the HTTP server's write timeout with dispatch.WaitWithin.
	ClaimMaxWait time.Duration
	// SweepEvery is how often the maintenance runner steps, and how often
	// it marks silent robots offline and rescues expired leases (default 5 s).
	SweepEvery time.Duration
	// Clock is the maintenance runner's time (default: the system clock),
	// and the log store's: the receive time of lines, and retention's today.
	Clock maintenance.Clock
	// Logs configures robot logs: retention and partitions ahead (zero
	// fields: db.DefaultLogConfig). Its clock is Clock.
	Logs db.LogConfig
	// Retention says how long the API key audit, finished webhook
	// deliveries and finished jobs are kept (zero fields:
	// db.DefaultRetentionConfig's).
	Retention db.RetentionConfig
	// InitTimeout bounds a websocket's wait for connection_init (0: the handler's default).
	InitTimeout time.Duration
	// KeepAlive is the interval of websocket and SSE keep-alives (0: the handler's default).
	KeepAlive time.Duration
	// LiveLimits cap operations per websocket and per caller (zero fields: the defaults).
	LiveLimits live.Limits
	// Running caps the queries and mutations executing at once; more wait
	// their turn (0: graph.DefaultRunningPerCPU per CPU).
	Running int
	// OperationTimeout stops a query or mutation after this much work (0:
	// graph.DefaultOperationTimeout); keep it under the HTTP server's write
	// timeout so the refusal reaches the client.
	OperationTimeout time.Duration
	// KeyRecheck is how often robot websockets re-check their API key (0: the handler's default).
	KeyRecheck time.Duration
	// Metrics, when non-nil, is given to every part that records metrics,
	// and watches DB's pool and the job queue's depth.
	Metrics *metrics.Metrics
	// Webhooks shapes webhook delivery.
	Webhooks WebhookConfig
	// KeyCacheTTL is how long a verified API key is trusted without reading
	// it again (0: no cache; API_KEY_CACHE_TTL, db.DefaultKeyCacheTTL).
	KeyCacheTTL time.Duration
	// KeyCheckTimeout bounds each API key check against the database (0:
	// auth.DefaultKeyCheckTimeout).
	KeyCheckTimeout time.Duration
	// KeyLookups bounds, per address, the reads of API keys that do not
	// verify (zero fields: db.DefaultKeyLookupLimit's).
	KeyLookups db.RateLimit
}

// WebhookConfig shapes webhook delivery (see package webhook).
type WebhookConfig struct {
	// AllowPrivate lets deliveries reach loopback, private, link-local and
	// metadata addresses (WEBHOOK_ALLOW_PRIVATE; development and tests).
	AllowPrivate bool
	// AllowHTTP accepts http:// endpoint URLs (WEBHOOK_ALLOW_HTTP; development and tests).
	AllowHTTP bool
	// Timeout bounds one attempt (default 10 s).
	Timeout time.Duration
	// Workers caps the deliveries in flight (default 16).
	Workers int
	// Retries override the waits between attempts (default db.DefaultWebhookRetries).
	Retries []time.Duration
	// Manual leaves delivery out of the maintenance runner, for tests that
	// step it themselves (App.Webhooks.Run, then Wait).
	Manual bool
}

// App is the assembled application.
type App struct {
	Handler  *graph.Handler
	Resolver *graph.Resolver
	Listener *realtime.Listener
	Hub      *realtime.Hub
	// Maintenance runs the server's own work on one leader per database;
	// New registers the queue's tasks and the scheduler with it.
	Maintenance *maintenance.Runner
	// Webhooks sends the webhook outbox, as a maintenance task.
	Webhooks *webhook.Deliverer

	clock         maintenance.Clock
	wakeDeliverer bool
}

// New builds the application; Run starts its background work.
func New(cfg Config) (*App, error) {
	if cfg.Queue == (db.QueueConfig{}) {
		cfg.Queue = db.DefaultQueueConfig
	}
	if cfg.ClaimPoll == 0 {
		cfg.ClaimPoll = time.Second
	}
	if cfg.SweepEvery == 0 {
		cfg.SweepEvery = 5 * time.Second
	}
	listener, err := realtime.NewListener(cfg.DSN, []string{db.JobQueuedChannel, realtime.ChangeChannel, db.WebhookDueChannel, db.KeyRevokedChannel}, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("starting the notification listener: %w", err)
	}
	workflows := db.NewWorkflows()
	jobs := db.NewJobs(cfg.Queue, workflows)
	robots := db.NewRobots(cfg.Queue)
	keys := db.NewAPIKeys()
	keys.Log = cfg.Logger
	keys.LimitLookups(cfg.KeyLookups)
	// The key cache trusts itself only while the listener delivers its
	// invalidations, which it handles in the listener's own loop.
	keys.Cache = db.NewKeyCache(cfg.KeyCacheTTL, listener, nil)
	if keys.Cache != nil {
		listener.Handle(db.KeyRevokedChannel, func(n realtime.Notification) { keys.Cache.Invalidate(n.Payload, n.Reconnected) })
	}
	robots.Keys = keys.Cache
	machines := db.NewMachines()
	if cfg.Clock == nil {
		cfg.Clock = maintenance.SystemClock{}
	}
	clock := cfg.Clock
	cfg.Logs.Now = cfg.Clock.Now
	logs := db.NewLogs(cfg.Logs, jobs)
	schedules := db.NewSchedules(jobs, workflows, cfg.Clock.Now)
	webhooks := db.NewWebhooks(db.WebhookConfig{
		AllowHTTP: cfg.Webhooks.AllowHTTP, AllowPrivate: cfg.Webhooks.AllowPrivate, Retries: cfg.Webhooks.Retries, Now: clock.Now,
	})
	listener.Metrics = cfg.Metrics
	hub := realtime.NewHub(listener, &realtime.StoreSource{DB: cfg.DB, Machines: machines, Robots: robots, Jobs: jobs, Logs: logs}, cfg.Logger)
	hub.Metrics = cfg.Metrics
	cfg.Metrics.WatchDatabase(cfg.DB.DB, func(ctx context.Context) (map[string]int, error) { return db.CountLiveJobs(ctx, cfg.DB) })
	r := &graph.Resolver{
		DB:            cfg.DB,
		MachineStore:  machines,
		RobotStore:    robots,
		APIKeyStore:   keys,
		WorkflowStore: workflows,
		JobStore:      jobs,
		LogStore:      logs,
		Dispatcher:    dispatch.New(cfg.DB, jobs, listener, dispatch.Config{Poll: cfg.ClaimPoll, MaxWait: cfg.ClaimMaxWait}),
		Hub:           hub,
		ScheduleStore: schedules,
		WebhookStore:  webhooks,
	}
	r.Dispatcher.Metrics = cfg.Metrics
	control := cfg.ControlDB
	if control == nil {
		control = cfg.DB
	}
	verifyKey := func(ctx context.Context, key, ip string) (*auth.Principal, error) {
		return keys.Verify(ctx, control, key, ip)
	}
	authenticator := auth.NewAuthenticator(cfg.JWT, verifyKey)
	authenticator.KeyCheckTimeout = cfg.KeyCheckTimeout
	h := graph.NewHandler(graph.HandlerConfig{
		Resolver:             r,
		Auth:                 authenticator,
		Logger:               cfg.Logger,
		AllowedOrigins:       cfg.AllowedOrigins,
		Introspection:        cfg.Introspection,
		Limits:               cfg.Limits,
		WebsocketInitTimeout: cfg.InitTimeout,
		WebsocketKeepAlive:   cfg.KeepAlive,
		LiveLimits:           cfg.LiveLimits,
		Running:              cfg.Running,
		OperationTimeout:     cfg.OperationTimeout,
		WebsocketKeyRecheck:  cfg.KeyRecheck,
		Metrics:              cfg.Metrics,
	})
	// The runner steps at least every second, for the scheduler.
	runner := maintenance.New(maintenance.Config{DB: cfg.DB, Clock: cfg.Clock, Tick: min(cfg.SweepEvery, ScheduleEvery), Log: cfg.Logger})
	registerQueueTasks(runner, cfg.DB, robots, jobs, cfg.SweepEvery, cfg.Queue.TakeoverGrace, cfg.Logger, cfg.Metrics)
	registerScheduleTasks(runner, cfg.DB, schedules, cfg.Logger)
	deliverer := registerWebhookTasks(runner, cfg.DB, webhooks, cfg.Webhooks, clock, cfg.SweepEvery, cfg.Logger)
	registerLogTasks(runner, cfg.DB, logs, cfg.Logger)
	registerRetentionTask(runner, cfg.DB, cfg.Retention, cfg.Logger)
	return &App{
		Handler:     h,
		Resolver:    r,
		Listener:    listener,
		Hub:         hub,
		Maintenance: runner,
		Webhooks:    deliverer,

		clock:         clock,
		wakeDeliverer: !cfg.Webhooks.Manual,
	}, nil
}

// registerWebhookTasks registers webhook delivery: each round starts the
// due deliveries on the deliverer's bounded pool of workers.
func registerWebhookTasks(r *maintenance.Runner, bdb *bun.DB, store *db.Webhooks, cfg WebhookConfig, clock maintenance.Clock, every time.Duration, log *slog.Logger) *webhook.Deliverer {
	d := webhook.NewDeliverer(webhook.Config{
		DB:      bdb,
		Store:   store,
		Client:  webhook.NewClient(webhook.ClientConfig{Timeout: cfg.Timeout, AllowPrivate: cfg.AllowPrivate}),
		Workers: cfg.Workers,
		Timeout: cfg.Timeout,
		Now:     clock.Now,
		Log:     log,
	})
	if !cfg.Manual {
		r.Register(maintenance.Task{Name: "webhooks", Every: every, Run: d.Run})
	}
	return d
}

// registerQueueTasks registers the robot fleet's upkeep: robots that stopped
// heartbeating go OFFLINE, and jobs whose leases expired are taken back
// (queued again while attempts remain, else failed), both from
// TakeoverGrace after the replica took the lead.
func registerQueueTasks(r *maintenance.Runner, bdb *bun.DB, robots *db.Robots, jobs *db.Jobs, every, grace time.Duration, log *slog.Logger, m *metrics.Metrics) {
	r.Register(maintenance.Task{Name: "robots-offline", Every: every, Grace: grace, Run: func(ctx context.Context, _ time.Time) error {
		offline, err := robots.MarkSilentOffline(ctx, bdb)
		if len(offline) > 0 {
			log.Info("robots went offline", "count", len(offline))
		}
		return err
	}})
	r.Register(maintenance.Task{Name: "lease-rescue", Every: every, Grace: grace, Run: func(ctx context.Context, _ time.Time) error {
		rescued, err := jobs.RescueExpired(ctx, bdb)
		for _, j := range rescued {
			m.LeaseRescued(string(j.Status))
		}
		if len(rescued) > 0 {
			log.Info("rescued expired leases", "count", len(rescued))
		}
		return err
	}})
}

// registerLogTasks registers the upkeep of robot logs: partitions for today
// and the days ahead (hourly, so a new day's is ready long before midnight),
// and the daily retention run, which drops whole days past
// LOG_RETENTION_DAYS with the heartbeat history of those days and records
// itself in the cleanup history.
func registerLogTasks(r *maintenance.Runner, bdb *bun.DB, logs *db.Logs, log *slog.Logger) {
	r.Register(maintenance.Task{Name: "log-partitions", Every: time.Hour, Run: func(ctx context.Context, now time.Time) error {
		created, err := logs.EnsurePartitions(ctx, bdb, now)
		if len(created) > 0 {
			log.Info("created log partitions", "partitions", created)
		}
		return err
	}})
	r.Register(maintenance.Task{Name: "log-retention", Every: 24 * time.Hour, Run: func(ctx context.Context, _ time.Time) error {
		run, err := logs.Cleanup(ctx, bdb, nil, false)
		if err == nil && len(run.Partitions) > 0 {
			log.Info("dropped old log partitions", "days", run.Partitions, "lines", run.Rows, "bytes", run.Bytes, "heartbeats", run.Heartbeats)
		}
		return err
	}})
}

// registerRetentionTask registers the hourly pruning of the history no
// partition drop removes: the API key audit past its retention, finished
// webhook deliveries (with their events) past theirs, and finished jobs
// past theirs.
func registerRetentionTask(r *maintenance.Runner, bdb *bun.DB, cfg db.RetentionConfig, log *slog.Logger) {
	if cfg.AuditDays == 0 {
		cfg.AuditDays = db.DefaultRetentionConfig.AuditDays
	}
	if cfg.WebhookDays == 0 {
		cfg.WebhookDays = db.DefaultRetentionConfig.WebhookDays
	}
	if cfg.JobDays == 0 {
		cfg.JobDays = db.DefaultRetentionConfig.JobDays
	}
	// Hourly, each run bounded (BatchesPerRun): a backlog goes over runs.
	r.Register(maintenance.Task{Name: "history-retention", Every: time.Hour, Run: func(ctx context.Context, now time.Time) error {
		st, err := db.Prune(ctx, bdb, cfg, now)
		if st != (db.PruneStats{}) {
			log.Info("pruned history past retention", "audit_entries", st.Audit, "webhook_deliveries", st.Deliveries, "webhook_events", st.Events, "jobs", st.Jobs)
		}
		return err
	}})
}

// ScheduleEvery is how often the scheduler's round runs on the leader. Each
// round fires the ticks due up to the clock's time, so a slower round fires
// late, never less.
const ScheduleEvery = time.Second

// registerScheduleTasks registers the scheduler: each round enqueues, as
// system:scheduler, the jobs of every schedule's ticks due by now.
func registerScheduleTasks(r *maintenance.Runner, bdb *bun.DB, schedules *db.Schedules, log *slog.Logger) {
	r.Register(maintenance.Task{Name: db.SchedulerTask, Every: ScheduleEvery, Run: func(ctx context.Context, now time.Time) error {
		stats, err := schedules.Fire(ctx, bdb, now)
		if stats != (db.FireStats{}) {
			log.Info("schedules fired", "jobs", stats.Fired, "skipped", stats.Skipped, "missed", stats.Missed, "buffered", stats.Buffered)
		}
		return err
	}})
}

// Run runs the listener, the hub and the maintenance runner until ctx ends,
// and returns when all have stopped.
func (a *App) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { a.Listener.Run(ctx) })
	wg.Go(func() { a.Hub.Run(ctx) })
	wg.Go(func() { a.Maintenance.Run(ctx) })
	if a.wakeDeliverer {
		// Subscribed before Run's goroutines start: a delivery queued once
		// the runner leads wakes the deliverer.
		sub := a.Listener.Subscribe(db.WebhookDueChannel, 1)
		wg.Go(func() { a.wakeWebhooks(ctx, sub) })
	}
	wg.Wait()
	a.Webhooks.Wait() // the sends in flight, which ctx cut short
}

// wakeWebhooks runs a delivery round, on the leader, whenever deliveries
// are queued (NOTIFY on db.WebhookDueChannel, sent on commit, heard on sub), so that an
// event goes out in milliseconds instead of at the next maintenance tick;
// the tick still catches what a lost notification missed, and retries.
func (a *App) wakeWebhooks(ctx context.Context, sub *realtime.Subscription) {
	defer sub.Close()
	ctx = auth.WithPrincipal(ctx, auth.SystemPrincipal("webhooks"))
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.C:
			if a.Maintenance.Leading() {
				_ = a.Webhooks.Run(ctx, a.clock.Now()) // errors recur at the task's round, which logs them
			}
		}
	}
}
