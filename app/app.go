// Package app assembles Fleetgraph from its parts: the stores, the
// notification listener, the dispatcher, the sweeper and the GraphQL handler.
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
	"fleetgraph/metrics"
	"fleetgraph/realtime"
	"fleetgraph/sweeper"
)

// Config is what the application needs.
type Config struct {
	DB *bun.DB
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
	// SweepEvery is how often the sweeper runs.
	SweepEvery time.Duration
	// InitTimeout bounds a websocket's wait for connection_init (0: the handler's default).
	InitTimeout time.Duration
	// KeepAlive is the interval of websocket and SSE keep-alives (0: the handler's default).
	KeepAlive time.Duration
	// LiveLimits cap operations per websocket and per caller (zero fields: the defaults).
	LiveLimits live.Limits
	// KeyRecheck is how often robot websockets re-check their API key (0: the handler's default).
	KeyRecheck time.Duration
	// Metrics, when non-nil, is given to every part that records metrics,
	// and watches DB's pool and the job queue's depth.
	Metrics *metrics.Metrics
}

// App is the assembled application.
type App struct {
	Handler  *graph.Handler
	Resolver *graph.Resolver
	Listener *realtime.Listener
	Hub      *realtime.Hub
	Sweeper  *sweeper.Sweeper
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
	listener, err := realtime.NewListener(cfg.DSN, []string{db.JobQueuedChannel, realtime.ChangeChannel}, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("starting the notification listener: %w", err)
	}
	workflows := db.NewWorkflows()
	jobs := db.NewJobs(cfg.Queue, workflows)
	robots := db.NewRobots(cfg.Queue)
	keys := db.NewAPIKeys()
	machines := db.NewMachines()
	listener.Metrics = cfg.Metrics
	hub := realtime.NewHub(listener, &realtime.StoreSource{DB: cfg.DB, Machines: machines, Robots: robots, Jobs: jobs}, cfg.Logger)
	hub.Metrics = cfg.Metrics
	cfg.Metrics.WatchDatabase(cfg.DB.DB, func(ctx context.Context) (map[string]int, error) { return db.CountLiveJobs(ctx, cfg.DB) })
	r := &graph.Resolver{
		DB:            cfg.DB,
		MachineStore:  machines,
		RobotStore:    robots,
		APIKeyStore:   keys,
		WorkflowStore: workflows,
		JobStore:      jobs,
		Dispatcher:    dispatch.New(cfg.DB, jobs, listener, cfg.ClaimPoll),
		Hub:           hub,
	}
	r.Dispatcher.Metrics = cfg.Metrics
	verifyKey := func(ctx context.Context, key, ip string) (*auth.Principal, error) {
		return keys.Verify(ctx, cfg.DB, key, ip)
	}
	h := graph.NewHandler(graph.HandlerConfig{
		Resolver:             r,
		Auth:                 auth.NewAuthenticator(cfg.JWT, verifyKey),
		Logger:               cfg.Logger,
		AllowedOrigins:       cfg.AllowedOrigins,
		Introspection:        cfg.Introspection,
		Limits:               cfg.Limits,
		WebsocketInitTimeout: cfg.InitTimeout,
		WebsocketKeepAlive:   cfg.KeepAlive,
		LiveLimits:           cfg.LiveLimits,
		WebsocketKeyRecheck:  cfg.KeyRecheck,
		Metrics:              cfg.Metrics,
	})
	a := &App{
		Handler:  h,
		Resolver: r,
		Listener: listener,
		Hub:      hub,
		Sweeper:  sweeper.New(cfg.DB, robots, jobs, cfg.SweepEvery, cfg.Logger),
	}
	a.Sweeper.Metrics = cfg.Metrics
	return a, nil
}

// Run runs the listener, the hub and the sweeper until ctx ends, and
// returns when all have stopped.
func (a *App) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { a.Listener.Run(ctx) })
	wg.Go(func() { a.Hub.Run(ctx) })
	wg.Go(func() { a.Sweeper.Run(ctx) })
	wg.Wait()
}
