// Command fleetgraph serves Fleetgraph's GraphQL API over PostgreSQL.
//
// Subcommands: serve (the default), migrate up|down|status, token, schema,
// verify, robots list|create, keys create|list|revoke, logs cleanup|tail.
// `fleetgraph <command> --help` lists each one's flags and environment
// variables. With DATABASE_URL unset, serve and migrate run a private
// PostgreSQL from the machine's own binaries in DATA_DIR.
package main

//go:generate go tool gqlgen generate
//go:generate go run ./graph/internal/sequential

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"fleetgraph/app"
	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/demo"
	"fleetgraph/dispatch"
	"fleetgraph/gcfloor"
	"fleetgraph/localpg"
	"fleetgraph/metrics"
	"fleetgraph/migrations"
	"fleetgraph/playground"
)

//go:embed schema.graphqls
var schemaSDL string

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `Fleetgraph serves a GraphQL API for fleets of machines over PostgreSQL.

Usage:
  fleetgraph [serve] [flags]          serve the API (the default)
  fleetgraph migrate up|down|status   manage the database schema (down asks for --yes)
  fleetgraph token [flags]            print a signed JWT for the configured secret
  fleetgraph schema [--introspection] print the GraphQL schema (SDL, or introspection JSON)
  fleetgraph verify [--json]          check the installation: settings, database, triggers, partitions, feed
  fleetgraph robots list|create       list or register a tenant's robots
  fleetgraph keys create|list|revoke  manage robots' API keys (the raw key is printed once)
  fleetgraph logs cleanup             drop robot logs past the retention (--dry-run to see first)
  fleetgraph logs tail --robot NAME   follow a robot's log lines live (--level, --json)
  fleetgraph help [command]           print this, or a command's help

Run 'fleetgraph <command> --help' for a command's flags and environment variables.
`

// run executes one command and returns the process exit status: 0 on
// success, 2 for usage and configuration errors, 1 for everything else.
func run(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	cmd := "serve"
	switch {
	case len(args) > 0 && isHelpFlag(args[0]):
		// `fleetgraph --help` asks about the program, not about serve,
		// although serve is what runs without a command.
		_, _ = io.WriteString(stdout, usage)
		return 0
	case len(args) > 1 && args[0] == "help":
		// `fleetgraph help serve` is `fleetgraph serve --help`, and
		// `fleetgraph help robots list` is `fleetgraph robots list --help`:
		// the words naming a command, never a flag after them, which
		// could take "--help" as its value and run the command.
		words := args[2:]
		if i := slices.IndexFunc(words, func(w string) bool { return strings.HasPrefix(w, "-") }); i >= 0 {
			words = words[:i]
		}
		cmd, args = args[1], append(slices.Clip(words), "--help")
	case len(args) > 0 && !strings.HasPrefix(args[0], "-"):
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(ctx, args, env, stdout, stderr)
	case "migrate":
		err = migrate(ctx, args, env, stdout, stderr)
	case "token":
		err = token(args, env, stdout, stderr)
	case "schema":
		err = schemaCmd(ctx, args, env, stdout, stderr)
	case "verify":
		err = verify(ctx, args, env, stdout, stderr)
	case "robots":
		err = robotsCmd(ctx, args, env, stdout, stderr)
	case "keys":
		err = keysCmd(ctx, args, env, stdout, stderr)
	case "logs":
		err = logsCmd(ctx, args, env, stdout, stderr)
	case "help":
		_, _ = io.WriteString(stdout, usage)
	default:
		_, _ = fmt.Fprintf(stderr, "fleetgraph: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		_, _ = fmt.Fprintf(stderr, "fleetgraph %s: %s\n", cmd, strings.TrimPrefix(err.Error(), "usage: "))
		return 2
	default:
		_, _ = fmt.Fprintf(stderr, "fleetgraph %s: %v\n", cmd, err)
		return 1
	}
}

// isHelpFlag reports whether arg asks for help, as the flag package
// understands it.
func isHelpFlag(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "--h":
		return true
	}
	return false
}

// database is an open database, with the private cluster behind it when
// DATABASE_URL is unset. For serve and migrate (ownPrivate) the cluster is
// supervised while the database is open: if this process started it, it is restarted when it dies; if this
// process attached to another one's, it takes the cluster over (starts and
// owns it) when that one goes away. The pool and the notification listener
// reconnect by themselves, so /readyz turns back to 200 once it is up.
type database struct {
	*bun.DB
	dsn     string
	cluster *localpg.Cluster
}

// dbName is the database the private cluster keeps Fleetgraph's data in.
const dbName = "fleetgraph"

// privateUse says what a command does with the private PostgreSQL.
type privateUse int

const (
	// ownPrivate creates the cluster and its database where they are
	// missing, and supervises the cluster while the database is open:
	// serve and migrate.
	ownPrivate privateUse = iota
	// borrowPrivate uses the cluster that is there, the running server's
	// or started for the command and stopped after it, unsupervised, and
	// creates nothing: the operator commands, which a DATA_DIR typo must
	// not turn into a new, empty installation.
	borrowPrivate
)

// openDatabase opens DATABASE_URL, or the private PostgreSQL in DATA_DIR
// as use allows.
func openDatabase(ctx context.Context, cfg *config, log *slog.Logger, use privateUse) (*database, error) {
	if !cfg.embedded() {
		bdb, err := db.OpenWaiting(ctx, cfg.databaseURL, cfg.dbConnectWait, log)
		if err != nil {
			return nil, err
		}
		return &database{DB: bdb, dsn: cfg.databaseURL}, nil
	}
	dir := filepath.Join(cfg.dataDir, "postgres")
	cluster, err := localpg.Start(ctx, localpg.Options{Dir: dir, Logger: log, Supervise: use == ownPrivate, Existing: use == borrowPrivate})
	if errors.Is(err, localpg.ErrNoCluster) {
		return nil, noPrivateDatabase(cfg.dataDir, "no PostgreSQL cluster in "+dir)
	}
	if err != nil {
		return nil, fmt.Errorf("starting the private PostgreSQL: %w", err)
	}
	d := &database{cluster: cluster, dsn: cluster.DSN(dbName)}
	if use == borrowPrivate {
		err = requireDatabase(ctx, cluster, cfg.dataDir)
	} else {
		err = createDatabase(ctx, cluster)
	}
	if err != nil {
		d.close(log)
		return nil, err
	}
	if d.DB, err = db.Open(ctx, d.dsn); err != nil {
		d.close(log)
		return nil, err
	}
	return d, nil
}

// errNoPrivateDatabase marks a DATA_DIR without the private database.
var errNoPrivateDatabase = errors.New("no Fleetgraph database")

// noPrivateDatabase says that DATA_DIR holds no private database, and how
// to get one.
func noPrivateDatabase(dataDir, why string) error {
	return fmt.Errorf("DATA_DIR %s holds %w (%s): start `fleetgraph serve` with this DATA_DIR once to create it, "+
		"or set DATABASE_URL to use your own PostgreSQL", dataDir, errNoPrivateDatabase, why)
}

// requireDatabase checks that the private cluster holds the Fleetgraph database.
func requireDatabase(ctx context.Context, cluster *localpg.Cluster, dataDir string) error {
	admin, err := db.Open(ctx, cluster.DSN("postgres"))
	if err != nil {
		return err
	}
	defer admin.Close()
	exists, err := hasDatabase(ctx, admin)
	if err == nil && !exists {
		err = noPrivateDatabase(dataDir, "its PostgreSQL cluster has no "+dbName+" database")
	}
	return err
}

// hasDatabase reports whether the private cluster (admin is connected to
// its postgres database) holds the Fleetgraph database.
func hasDatabase(ctx context.Context, admin *bun.DB) (bool, error) {
	var exists bool
	if err := admin.NewRaw("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = ?)", dbName).Scan(ctx, &exists); err != nil {
		return false, fmt.Errorf("looking for the %s database: %w", dbName, err)
	}
	return exists, nil
}

// createDatabase creates the Fleetgraph database in a fresh private cluster.
func createDatabase(ctx context.Context, cluster *localpg.Cluster) error {
	admin, err := db.Open(ctx, cluster.DSN("postgres"))
	if err != nil {
		return err
	}
	defer admin.Close()
	if exists, err := hasDatabase(ctx, admin); err != nil || exists {
		return err
	}
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+dbName); err != nil && !strings.Contains(err.Error(), "already exists") {
		return fmt.Errorf("creating the %s database: %w", dbName, err)
	}
	return nil
}

// close closes the connection pool, then ends the private cluster's
// supervision and stops the cluster if this process started it (or took it
// over); a cluster it attached to keeps running for its owner.
func (d *database) close(log *slog.Logger) {
	if d.DB != nil {
		_ = d.DB.Close()
	}
	if d.cluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := d.cluster.Stop(ctx); err != nil {
			log.Error("stopping the private PostgreSQL", "error", err)
		}
	}
}

// secretFile is where the embedded mode keeps its generated JWT secret.
func secretFile(dataDir string) string { return filepath.Join(dataDir, "jwt-secret") }

// jwtSecret returns the configured secret, or in the embedded mode the one
// kept in the data folder, generating it on first use.
func jwtSecret(cfg *config, create bool) ([]byte, error) {
	if cfg.jwtSecret != "" {
		return []byte(cfg.jwtSecret), nil
	}
	path := secretFile(cfg.dataDir)
	b, err := os.ReadFile(path)
	if err == nil {
		if s := strings.TrimSpace(string(b)); len(s) >= 32 {
			return []byte(s), nil
		}
		return nil, fmt.Errorf("%s holds no usable secret: delete it to generate a new one, or set JWT_SECRET", path)
	}
	if !errors.Is(err, os.ErrNotExist) || !create {
		return nil, fmt.Errorf("no JWT secret: set JWT_SECRET, or run `fleetgraph serve` once to create %s (%w)", path, err)
	}
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	secret := hex.EncodeToString(raw[:])
	if err := os.MkdirAll(cfg.dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the data folder: %w", err)
	}
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("saving the JWT secret: %w", err)
	}
	return []byte(secret), nil
}

// httpWriteTimeout bounds how long a request may take to be answered
// (streams lift it). The longest claim wait is derived from it, so that a
// claim that waits its longest still answers.
const httpWriteTimeout = 60 * time.Second

func serve(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("serve", "Serves the GraphQL API, /healthz, /readyz and (optionally) the playground at /.", stderr, env)
	cs := declareServe(s)
	rest, err := s.parse(args)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	cfg, err := cs.resolve()
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	// The runtime reads GOGC from the process's environment, not from env.
	if cfg.gcMinHeap > 0 && os.Getenv("GOGC") == "" {
		defer gcfloor.Start(cfg.gcMinHeap).Stop()
	}

	secret, err := jwtSecret(cfg, cfg.embedded())
	if err != nil {
		return err
	}
	jwt, err := auth.NewJWT(auth.JWTConfig{Secret: secret, Audience: cfg.jwtAudience, Issuer: cfg.jwtIssuer, RequireTenant: cfg.requireTenant})
	if err != nil {
		return usageError("JWT_SECRET: %v", err)
	}

	d, err := openDatabase(ctx, cfg, log, ownPrivate)
	if err != nil {
		return err
	}
	defer d.close(log)

	if cfg.embedded() || cfg.autoMigrate {
		applied, err := migrations.Up(ctx, d.DB)
		if len(applied) > 0 {
			log.Info("applied migrations", "migrations", applied)
		}
		if err != nil {
			return err
		}
	} else if st, err := migrations.CurrentStatus(ctx, d.DB); err != nil {
		return err
	} else if !st.Current() {
		return errors.New(st.Problem())
	}

	if cfg.embedded() {
		if err := seedOnce(ctx, cfg, d.DB, log); err != nil {
			return err
		}
	}

	if cfg.devDefault(cfg.playground) && !cfg.devDefault(cfg.introspection) {
		// verify fails the same: the page would say "Error fetching schema".
		log.Warn("the playground is on but introspection is off: it cannot load the schema; set INTROSPECTION=true as well, or PLAYGROUND=false")
	}
	m, metricsLn, err := listenMetrics(cfg, log)
	if err != nil {
		return err
	}
	if metricsLn != nil {
		defer metricsLn.Close()
	}
	// Credential checks and readiness have connections of their own.
	control, err := db.OpenPool(ctx, d.dsn, db.ControlPoolSize)
	if err != nil {
		return err
	}
	defer control.Close()
	a, err := app.New(app.Config{
		DB:               d.DB,
		ControlDB:        control,
		DSN:              d.dsn,
		JWT:              jwt,
		Logger:           log,
		Queue:            cfg.queue,
		Logs:             cfg.logs,
		Retention:        cfg.retention,
		ClaimMaxWait:     dispatch.WaitWithin(httpWriteTimeout),
		AllowedOrigins:   cfg.allowedOrigins,
		Introspection:    cfg.devDefault(cfg.introspection),
		LiveLimits:       cfg.live,
		Running:          cfg.running,
		OperationTimeout: cfg.operationTimeout,
		Metrics:          m,
		Webhooks:         cfg.webhooks,
		KeyCacheTTL:      cfg.keyCacheTTL,
	})
	if err != nil {
		return err
	}
	background, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	backgroundDone := make(chan struct{})
	go func() {
		a.Run(background)
		close(backgroundDone)
	}()
	defer func() {
		stopBackground()
		<-backgroundDone
	}()
	api := a.Handler
	mux := http.NewServeMux()
	mux.Handle("/graphql", api)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /readyz", readiness(control))
	if cfg.devDefault(cfg.playground) {
		pg := newPlayground(cfg.embedded(), jwt)
		mux.Handle("GET /{$}", pg)
		mux.Handle("GET /playground/", pg)
	}

	ln, err := net.Listen("tcp", cfg.listenAddr)
	if err != nil {
		return fmt.Errorf("listening on %s (set LISTEN_ADDR to another address): %w", cfg.listenAddr, err)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      httpWriteTimeout,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	metricsSrv := serveMetrics(m, metricsLn, log)

	url := "http://" + displayAddr(ln.Addr())
	log.Info("serving", "addr", ln.Addr().String(), "graphql", url+"/graphql")
	if cfg.embedded() {
		if err := printWelcome(stdout, jwt, url, cfg.devDefault(cfg.playground), cfg.dataDir); err != nil {
			return err
		}
	}

	select {
	case err := <-served:
		return fmt.Errorf("serving HTTP: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(shutdownCtx) }()
	if err := api.CloseStreams(shutdownCtx); err != nil {
		log.Warn("websockets and streams did not close in time", "error", err)
	}
	if err := <-done; err != nil {
		log.Warn("in-flight requests did not finish in time", "error", err)
	}
	// Metrics last among the servers, so the drain above can be watched.
	if metricsSrv != nil {
		if err := metricsSrv.Shutdown(shutdownCtx); err != nil {
			log.Warn("the metrics server did not stop in time", "error", err)
		}
	}
	return nil
}

// listenMetrics opens METRICS_ADDR and returns the metrics to record into
// it, or nil, nil when metrics are off. An address that cannot be opened is
// an error when configured; the embedded mode's default only warns, so a
// second development server (or anything else on the port) does not stop
// one from starting.
func listenMetrics(cfg *config, log *slog.Logger) (*metrics.Metrics, net.Listener, error) {
	if cfg.metricsAddr == "" {
		return nil, nil, nil
	}
	ln, err := net.Listen("tcp", cfg.metricsAddr)
	if err != nil {
		if cfg.metricsDefaulted {
			log.Warn("not serving metrics: the default METRICS_ADDR is taken (set METRICS_ADDR to another address, or off)", "addr", cfg.metricsAddr, "error", err)
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("listening for metrics on %s (set METRICS_ADDR to another address, or off): %w", cfg.metricsAddr, err)
	}
	return metrics.New(log), ln, nil
}

// serveMetrics serves GET /metrics on ln, its own server apart from the
// API's, so that a public LISTEN_ADDR never exposes it; nil when off.
func serveMetrics(m *metrics.Metrics, ln net.Listener, log *slog.Logger) *http.Server {
	if ln == nil {
		return nil
	}
	srv := metricsServer(m, log)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("serving metrics", "error", err)
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String(), "metrics", "http://"+displayAddr(ln.Addr())+"/metrics")
	return srv
}

// metricsServer is the server of GET /metrics. A scrape is one small
// request every few seconds, so each connection is bounded like the
// API's: a client trickling its request, or holding an idle keep-alive
// connection, is cut off (m.Handler serves at most a few scrapes at once).
func metricsServer(m *metrics.Metrics, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute, // above any scrape interval, so scrapers keep their connection
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// seedOnce seeds the demo fleet the first time the private database starts.
// A marker file keeps a later start from re-seeding a fleet the user changed.
func seedOnce(ctx context.Context, cfg *config, bdb *bun.DB, log *slog.Logger) error {
	marker := filepath.Join(cfg.dataDir, "seeded")
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	key, err := demo.Seed(ctx, bdb)
	if err != nil {
		return err
	}
	log.Info("seeded the demo fleet")
	// The raw key exists nowhere else; keep it beside the JWT secret so that
	// every start can print it.
	if err := os.WriteFile(robotKeyFile(cfg.dataDir), []byte(key+"\n"), 0o600); err != nil {
		return fmt.Errorf("saving the demo robot's API key: %w", err)
	}
	return os.WriteFile(marker, []byte("the demo fleet was seeded; delete this file to seed it again\n"), 0o644)
}

// robotKeyFile keeps the demo robot's API key in the embedded mode.
func robotKeyFile(dataDir string) string { return filepath.Join(dataDir, "demo-robot-key") }

// demoTokenTTL is how long the token printed at start stays valid.
const demoTokenTTL = 7 * 24 * time.Hour

// demoToken mints a token for the demo user alice.
func demoToken(jwt *auth.JWT) (string, error) {
	tok, err := jwt.Mint(auth.MintOptions{UserID: demo.Alice, TenantID: demo.Tenant, Role: auth.RoleUser, TTL: demoTokenTTL})
	if err != nil {
		return "", fmt.Errorf("minting the demo token: %w", err)
	}
	return tok, nil
}

// newPlayground is the playground. The development mode's opens signed in
// as the demo user, as the welcome message says: with a token minted for
// each page, so a server left running longer than demoTokenTTL still
// serves a valid one, and only to a browser on this machine that opened
// it as localhost (playground.WithDefaultHeaders says why).
func newPlayground(embedded bool, jwt *auth.JWT) http.Handler {
	var opts []playground.Option
	if embedded {
		opts = append(opts, playground.WithDefaultHeadersFunc(func() (string, error) {
			tok, err := demoToken(jwt)
			if err != nil {
				return "", err
			}
			return `{"Authorization": "Bearer ` + tok + `"}`, nil
		}))
	}
	return playground.Handler("Fleetgraph", "/graphql", opts...)
}

func printWelcome(w io.Writer, jwt *auth.JWT, url string, withPlayground bool, dataDir string) error {
	tok, err := demoToken(jwt)
	if err != nil {
		return err
	}
	if withPlayground {
		_, _ = fmt.Fprintf(w, "\nFleetgraph is running. Playground: %s/ (it opens signed in as the demo user alice)\n", url)
	} else {
		_, _ = fmt.Fprintf(w, "\nFleetgraph is running. GraphQL: %s/graphql\n", url)
	}
	_, _ = fmt.Fprintf(w, "Send this header (demo user alice, valid %s) from other clients:\n\n", demoTokenTTL)
	_, err = fmt.Fprintf(w, "{\"Authorization\": \"Bearer %s\"}\n\n", tok)
	if key, readErr := os.ReadFile(robotKeyFile(dataDir)); readErr == nil {
		_, err = fmt.Fprintf(w, "Demo robot robot-lyon-1 (acts as the robot: heartbeat, claimJob, ...):\n\n{\"Authorization\": \"Bearer %s\"}\n\n", strings.TrimSpace(string(key)))
	}
	return err
}

// displayAddr turns a listener address into something a browser can open.
func displayAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

func migrate(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("migrate up|down|status", "Applies (up), rolls back the last batch of (down), or lists (status) the schema migrations. "+
		"The last batch is what the last `migrate up` (or start) applied: after a first install, every migration, so down drops every table "+
		"and its data. Without --yes, down only lists what it would roll back.", stderr, env)
	databaseURL := s.add("DATABASE_URL", "database-url", "", "PostgreSQL URL; unset uses the private PostgreSQL in DATA_DIR")
	connectWait := addConnectTimeout(s)
	dataDir := s.add("DATA_DIR", "data-dir", ".data", "folder of the private PostgreSQL")
	logLevel := s.add("LOG_LEVEL", "log-level", "info", "debug, info, warn or error")
	logFormat := s.add("LOG_FORMAT", "log-format", "text", "text or json")
	yes := s.addBool("", "yes", "with down: roll the batch back (without it, down lists the batch and changes nothing)")
	// The action may come first (`migrate up --data-dir x`), where the flag
	// package would stop parsing, or after the flags.
	var action []string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[:1], args[1:]
	}
	rest, err := s.parse(args)
	if err != nil {
		return err
	}
	rest = append(action, rest...)
	if len(rest) != 1 || (rest[0] != "up" && rest[0] != "down" && rest[0] != "status") {
		return usageError("say what to do: fleetgraph migrate up|down|status")
	}
	level, err := parseLevel(logLevel)
	if err != nil {
		return err
	}
	wait, err := connectWait.Seconds(0, 3600)
	if err != nil {
		return err
	}
	confirmed, err := yes.Bool()
	if err != nil {
		return err
	}
	cfg := &config{databaseURL: databaseURL.String(), dbConnectWait: wait, dataDir: dataDir.String()}
	if f := logFormat.String(); f != "text" && f != "json" {
		return usageError("%s must be text or json, not %q", logFormat.name(), f)
	}
	log := newLogger(stderr, level, logFormat.String())
	d, err := openDatabase(ctx, cfg, log, ownPrivate)
	if err != nil {
		return err
	}
	defer d.close(log)
	switch rest[0] {
	case "up":
		applied, err := migrations.Up(ctx, d.DB)
		if err != nil && len(applied) == 0 {
			return err
		}
		_, _ = fmt.Fprintf(stdout, "applied %d migration(s) %s\n", len(applied), strings.Join(applied, " "))
		if err != nil {
			return err
		}
	case "down":
		rolled, err := migrations.Down(ctx, d.DB, func(names []string) error {
			if len(names) == 0 || (confirmed != nil && *confirmed) {
				return nil
			}
			return unconfirmedDown(ctx, d.DB, names)
		})
		if err != nil {
			return err
		}
		_, _ = fmt.Fprintf(stdout, "rolled back %d migration(s) %s\n", len(rolled), strings.Join(rolled, " "))
	case "status":
		st, err := migrations.CurrentStatus(ctx, d.DB)
		if err != nil {
			return err
		}
		_, _ = fmt.Fprintf(stdout, "applied: %s\npending: %s\n", listOrNone(st.Applied), listOrNone(st.Pending))
		if len(st.Unknown) > 0 {
			_, _ = fmt.Fprintf(stdout, "unknown to this binary: %s\n", strings.Join(st.Unknown, " "))
		}
	}
	return nil
}

// unconfirmedDown refuses a rollback the operator did not confirm with
// --yes, saying what it would have rolled back.
func unconfirmedDown(ctx context.Context, bdb *bun.DB, names []string) error {
	what := "dropping what they created, data included"
	if st, err := migrations.CurrentStatus(ctx, bdb); err == nil && len(st.Applied) == len(names) {
		what = "that is every migration: it drops every table of Fleetgraph and all their data"
	}
	return usageError("migrate down would roll back %d migration(s), %s (%s); nothing was changed: run `fleetgraph migrate down --yes` to roll them back",
		len(names), strings.Join(names, " "), what)
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, " ")
}

// The lifetimes token accepts: a token of less than a second has expired
// when it is written (exp is in whole seconds), and one of centuries is a
// secret that never expires in practice.
const (
	minTokenTTL = time.Second
	maxTokenTTL = 100 * 365 * 24 * time.Hour
)

func token(args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("token", "Prints a signed JWT that this server accepts, and nothing else.", stderr, env)
	secret := s.add("JWT_SECRET", "jwt-secret", "", "HS256 secret; unset reads the one kept in DATA_DIR")
	dataDir := s.add("DATA_DIR", "data-dir", ".data", "folder holding the generated secret")
	audience := s.add("JWT_AUDIENCE", "jwt-audience", "authenticated", "aud claim")
	issuer := s.add("JWT_ISSUER", "jwt-issuer", "", "iss claim")
	sub := s.add("", "sub", demo.Alice.String(), "user id (UUID); defaults to the demo user alice")
	tenant := s.add("", "tenant", "", "tenant id (UUID); unset means the default tenant")
	role := s.add("", "role", string(auth.RoleUser), "authenticated or service_role")
	ttl := s.add("", "ttl", "24h", "lifetime from 1s to 100 years (876000h), e.g. 30m, 24h")
	rest, err := s.parse(args)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	// The server refuses the nil UUID as sub and as tenant: a token
	// carrying it would be minted only to be refused.
	userID, err := uuid.Parse(sub.String())
	if err != nil || userID == uuid.Nil {
		return usageError("%s must be a UUID other than the nil one", sub.name())
	}
	// The tenant is always named, so the token works where
	// REQUIRE_TENANT_CLAIM is set too.
	tenantID := auth.DefaultTenant
	if tenant.String() != "" {
		if tenantID, err = uuid.Parse(tenant.String()); err != nil || tenantID == uuid.Nil {
			return usageError("%s must be a UUID other than the nil one (leave it unset for the default tenant)", tenant.name())
		}
	}
	lifetime, err := time.ParseDuration(ttl.String())
	if err != nil || lifetime < minTokenTTL || lifetime > maxTokenTTL {
		return usageError("%s must be a duration from 1s to 100 years (876000h) such as 30m or 24h, not %q", ttl.name(), ttl.String())
	}
	r := auth.Role(role.String())
	if r != auth.RoleUser && r != auth.RoleService {
		return usageError("%s must be %s or %s", role.name(), auth.RoleUser, auth.RoleService)
	}
	if audience.String() == "" {
		return usageError("%s must not be empty", audience.name())
	}
	key, err := jwtSecret(&config{jwtSecret: secret.String(), dataDir: dataDir.String()}, false)
	if err != nil {
		return err
	}
	jwt, err := auth.NewJWT(auth.JWTConfig{Secret: key, Audience: audience.String(), Issuer: issuer.String()})
	if err != nil {
		return usageError("JWT_SECRET: %v", err)
	}
	tok, err := jwt.Mint(auth.MintOptions{UserID: userID, TenantID: tenantID, Role: r, TTL: lifetime})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}
