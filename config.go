package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"fleetgraph/app"
	"fleetgraph/db"
	"fleetgraph/graph"
	"fleetgraph/graph/live"
)

// errUsage marks configuration and usage errors: main exits 2 for them.
var errUsage = errors.New("usage")

// usageError reports a bad setting, naming its variable and flag.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// setting is one configuration value: an environment variable overridable by a flag.
type setting struct {
	env, flag, def, help string
	value                *string
	// aliases are other names of the flag, kept for compatibility.
	aliases []string
}

// settings reads a subcommand's configuration: flag if given, else the
// environment variable, else the default.
type settings struct {
	fs   *flag.FlagSet
	list []*setting
	set  map[string]bool
	env  func(string) string
}

func newSettings(name, summary string, out io.Writer, env func(string) string) *settings {
	s := &settings{fs: flag.NewFlagSet(name, flag.ContinueOnError), env: env}
	s.fs.SetOutput(out)
	s.fs.Usage = func() {
		fmt.Fprintf(out, "Usage: fleetgraph %s\n\n%s\n", name, summary)
		if len(s.list) > 0 {
			fmt.Fprintf(out, "\nFlags (each overrides its environment variable):\n")
			s.fs.PrintDefaults()
		}
	}
	return s
}

// add declares a setting; env may be "" for flag-only settings.
func (s *settings) add(env, flagName, def, help string) *setting {
	st := &setting{env: env, flag: flagName, def: def, help: help, value: new(string)}
	s.fs.StringVar(st.value, flagName, def, flagUsage(env, help))
	s.list = append(s.list, st)
	return st
}

// alias declares name as another flag for st, which sets the same value.
func (s *settings) alias(st *setting, name string) {
	s.fs.StringVar(st.value, name, st.def, "the same as --"+st.flag)
	st.aliases = append(st.aliases, name)
}

// addBool declares an optional boolean setting (read with Bool). Its flag
// works like a flag.Bool: `--name` alone means true, `--name=false` turns
// it off, and it never takes the next argument as its value.
func (s *settings) addBool(env, flagName, help string) *setting {
	st := &setting{env: env, flag: flagName, help: help, value: new(string)}
	s.fs.Var(boolFlag{st.value}, flagName, flagUsage(env, help))
	s.list = append(s.list, st)
	return st
}

func flagUsage(env, help string) string {
	if env == "" {
		return help
	}
	return help + " [env " + env + "]"
}

// boolFlag keeps a boolean flag's text for setting.Bool to validate, so a
// bad value is reported naming its variable like any other setting.
type boolFlag struct{ value *string }

func (b boolFlag) String() string {
	if b.value == nil {
		return ""
	}
	return *b.value
}

func (b boolFlag) Set(v string) error { *b.value = v; return nil }

func (b boolFlag) IsBoolFlag() bool { return true }

// parse reads flags; positional arguments are returned.
func (s *settings) parse(args []string) ([]string, error) {
	if err := s.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	s.set = map[string]bool{}
	s.fs.Visit(func(f *flag.Flag) { s.set[f.Name] = true })
	for _, st := range s.list {
		given := s.set[st.flag]
		for _, a := range st.aliases {
			given = given || s.set[a]
		}
		if !given && st.env != "" {
			if v, ok := lookup(s.env, st.env); ok {
				*st.value = v
			}
		}
	}
	return s.fs.Args(), nil
}

func lookup(env func(string) string, key string) (string, bool) {
	v := env(key)
	return v, v != ""
}

// name is how errors refer to a setting.
func (st *setting) name() string {
	if st.env == "" {
		return "--" + st.flag
	}
	return fmt.Sprintf("%s (--%s)", st.env, st.flag)
}

func (st *setting) String() string { return strings.TrimSpace(*st.value) }

// Bool parses an optional boolean; nil when unset (the mode decides).
func (st *setting) Bool() (*bool, error) {
	if st.String() == "" {
		return nil, nil
	}
	b, err := strconv.ParseBool(st.String())
	if err != nil {
		return nil, usageError("%s must be true or false, not %q", st.name(), st.String())
	}
	return &b, nil
}

// Seconds parses a whole number of seconds between lo and hi.
func (st *setting) Seconds(lo, hi int) (time.Duration, error) {
	n, err := strconv.Atoi(st.String())
	if err != nil || n < lo || n > hi {
		return 0, usageError("%s must be a whole number of seconds from %d to %d, not %q", st.name(), lo, hi, st.String())
	}
	return time.Duration(n) * time.Second, nil
}

// Int parses a whole number between lo and hi.
func (st *setting) Int(lo, hi int) (int, error) {
	n, err := strconv.Atoi(st.String())
	if err != nil || n < lo || n > hi {
		return 0, usageError("%s must be a whole number from %d to %d, not %q", st.name(), lo, hi, st.String())
	}
	return n, nil
}

// config is the server's configuration.
type config struct {
	listenAddr  string
	databaseURL string
	// dbConnectWait is how long to retry a DATABASE_URL that is not reachable yet.
	dbConnectWait time.Duration
	dataDir       string
	jwtSecret     string
	jwtAudience   string
	jwtIssuer     string
	// requireTenant refuses tokens that name no tenant.
	requireTenant  bool
	allowedOrigins []string
	playground     *bool
	introspection  *bool
	autoMigrate    bool
	queue          db.QueueConfig
	logs           db.LogConfig
	retention      db.RetentionConfig
	live           live.Limits
	webhooks       app.WebhookConfig
	logLevel       slog.Level
	logFormat      string
	// metricsAddr is where /metrics is served ("" : nowhere);
	// metricsDefaulted says it is the dev mode's default, not configured.
	metricsAddr      string
	metricsDefaulted bool
	// keyCacheTTL is API_KEY_CACHE_TTL (0: no key cache).
	keyCacheTTL time.Duration
	// gcMinHeap is GC_MIN_HEAP_MB in bytes (0: Go's default GC rules).
	gcMinHeap uint64
	// running is MAX_RUNNING_OPERATIONS (0: four per CPU).
	running int
	// operationTimeout is OPERATION_TIMEOUT_SECONDS.
	operationTimeout time.Duration
}

// embedded reports whether the server runs its own PostgreSQL.
func (c *config) embedded() bool { return c.databaseURL == "" }

// devDefault resolves a mode-dependent switch: on in the embedded
// development mode, off elsewhere, unless set explicitly.
func (c *config) devDefault(b *bool) bool {
	if b != nil {
		return *b
	}
	return c.embedded()
}

// configSettings declares the settings shared by the subcommands that need them.
type configSettings struct {
	listen, databaseURL, dbConnectWait, dataDir, jwtSecret    *setting
	jwtAudience, jwtIssuer, requireTenant                     *setting
	origins, playground, introspection, autoMigrate, logLevel *setting
	logFormat                                                 *setting
	jobLease, jobProgress, offlineAfter, takeoverGrace        *setting
	logRetention, logPartitionsAhead                          *setting
	auditRetention, webhookRetention, jobRetention            *setting
	subsPerConnection, subsPerPrincipal                       *setting
	socketsPerCaller, sockets                                 *setting
	metricsAddr                                               *setting
	webhookAllowPrivate, webhookAllowHTTP, webhookTimeout     *setting
	webhookWorkers                                            *setting
	keyCacheTTL, gcMinHeap, running, operationTimeout         *setting
}

func declareServe(s *settings) *configSettings {
	return &configSettings{
		listen:        s.add("LISTEN_ADDR", "listen", ":8080", "address to serve HTTP on"),
		databaseURL:   s.add("DATABASE_URL", "database-url", "", "PostgreSQL URL; unset runs a private PostgreSQL in DATA_DIR"),
		dbConnectWait: addConnectTimeout(s),
		dataDir:       s.add("DATA_DIR", "data-dir", ".data", "folder for the private PostgreSQL and the generated JWT secret"),
		jwtSecret:     s.add("JWT_SECRET", "jwt-secret", "", "HS256 secret for tokens (at least 32 bytes); required with DATABASE_URL"),
		jwtAudience:   s.add("JWT_AUDIENCE", "jwt-audience", "authenticated", "required aud claim"),
		jwtIssuer:     s.add("JWT_ISSUER", "jwt-issuer", "", "required iss claim, when set"),
		requireTenant: s.addBool("REQUIRE_TENANT_CLAIM", "require-tenant-claim",
			"refuse tokens without a tenant_id claim instead of placing them in the default tenant (set it when tenants share an identity provider)"),
		origins:       s.add("ALLOWED_ORIGINS", "allowed-origins", "", "comma-separated browser origin host patterns allowed for CORS and websockets, e.g. app.example.com,*.example.com"),
		playground:    s.addBool("PLAYGROUND", "playground", "serve the GraphiQL playground at / (default: on with the private database, else off)"),
		introspection: s.addBool("INTROSPECTION", "introspection", "allow schema introspection and suggestions (default: on with the private database, else off)"),
		autoMigrate:   s.addBool("AUTO_MIGRATE", "auto-migrate", "apply pending migrations at start (always on with the private database)"),
		jobLease:      s.add("JOB_LEASE_SECONDS", "job-lease-seconds", "60", "how long a claimed job's lease lasts: a claim must be started within it; heartbeats and progress reports extend a running job's"),
		jobProgress:   s.add("JOB_PROGRESS_TIMEOUT_SECONDS", "job-progress-timeout-seconds", "600", "how long heartbeats keep a running job leased after its last progress report (at least JOB_LEASE_SECONDS)"),
		offlineAfter:  s.add("ROBOT_OFFLINE_THRESHOLD", "robot-offline-threshold", "90", "seconds without a heartbeat after which a robot is OFFLINE"),
		takeoverGrace: s.add("ROBOT_TAKEOVER_GRACE_SECONDS", "robot-takeover-grace-seconds", "60", "seconds a replica that takes over the maintenance (at start, after a database outage) gives robots to heartbeat before it marks silent ones OFFLINE and rescues expired leases (0: none)"),
		logRetention: s.add("LOG_RETENTION_DAYS", "log-retention-days", strconv.Itoa(db.DefaultLogConfig.RetentionDays),
			"days of robot logs and heartbeat history kept; older whole days are dropped daily"),
		auditRetention: s.add("AUDIT_RETENTION_DAYS", "audit-retention-days", strconv.Itoa(db.DefaultRetentionConfig.AuditDays),
			"days the audit trails are kept: the API key audit (creations, revocations, refused keys) and the log cleanup history; older entries are deleted hourly"),
		webhookRetention: s.add("WEBHOOK_RETENTION_DAYS", "webhook-retention-days", strconv.Itoa(db.DefaultRetentionConfig.WebhookDays),
			"days finished webhook deliveries (and their events) are kept; older ones are deleted hourly, pending ones never"),
		jobRetention: s.add("JOB_RETENTION_DAYS", "job-retention-days", strconv.Itoa(db.DefaultRetentionConfig.JobDays),
			"days finished (COMPLETED, FAILED, CANCELLED) jobs are kept after they finish; older ones are deleted hourly, live ones never"),
		logPartitionsAhead: s.add("LOG_PARTITIONS_AHEAD", "log-partitions-ahead", strconv.Itoa(db.DefaultLogConfig.PartitionsAhead),
			"days after today whose robot log partitions are kept ready"),
		subsPerConnection: s.add("MAX_SUBSCRIPTIONS_PER_CONNECTION", "max-subscriptions-per-connection", strconv.Itoa(live.DefaultLimits.PerConnection),
			"subscriptions one websocket may hold at once; more are refused with RATE_LIMITED"),
		subsPerPrincipal: s.add("MAX_SUBSCRIPTIONS_PER_PRINCIPAL", "max-subscriptions-per-principal", strconv.Itoa(live.DefaultLimits.PerPrincipal),
			"subscriptions and SSE or multipart streams one caller (user, robot, service) may hold at once across its connections to this process"),
		socketsPerCaller: s.add("MAX_WEBSOCKETS_PER_CALLER", "max-websockets-per-caller", strconv.Itoa(live.DefaultLimits.SocketsPerCaller),
			"websockets one caller (a user, a robot, a service; an address when connection_init names no credential, and four times as many waiting for their connection_init) may hold open at once on this process; more are refused (429, or closed with 1013 at connection_init)"),
		sockets: s.add("MAX_WEBSOCKETS", "max-websockets", "0",
			"websockets and SSE and multipart streams this process holds open at once, all callers together; more are refused (503) (0: half the process's open-file limit)"),
		webhookAllowPrivate: s.addBool("WEBHOOK_ALLOW_PRIVATE", "webhook-allow-private",
			"deliver webhooks to loopback, private, link-local and metadata addresses (default: on with the private database, else off)"),
		webhookAllowHTTP: s.addBool("WEBHOOK_ALLOW_HTTP", "webhook-allow-http",
			"accept http:// webhook endpoint URLs, not only https:// (default: on with the private database, else off)"),
		webhookTimeout: s.add("WEBHOOK_TIMEOUT_SECONDS", "webhook-timeout-seconds", "10",
			"how long one webhook attempt may take (connect, send, answer); longer counts as a failure and is retried"),
		webhookWorkers: s.add("WEBHOOK_WORKERS", "webhook-workers", "16", "webhook deliveries in flight at once, on the maintenance leader; a tenant holds a quarter of them, more only while another quarter stays free"),
		keyCacheTTL: s.add("API_KEY_CACHE_TTL", "api-key-cache-ttl", "5",
			"seconds a verified robot API key is trusted without reading it again (0: read on every request); revocations clear it at once on every replica, and it is bypassed while the notification listener is down"),
		gcMinHeap: s.add("GC_MIN_HEAP_MB", "gc-min-heap-mb", "32",
			"megabytes the heap may reach before the garbage collector runs, when that is more than Go's default (twice what is live); 0, or GOGC set, leaves Go's default"),
		running: s.add("MAX_RUNNING_OPERATIONS", "max-running-operations", "0",
			"queries and mutations executing at once; more wait their turn, callers served in rotation (0: four per CPU); a claim waiting for a job does not count"),
		operationTimeout: s.add("OPERATION_TIMEOUT_SECONDS", "operation-timeout-seconds", "30",
			"seconds of work after which a query or mutation is stopped, its statements cancelled and its transaction rolled back (RATE_LIMITED, reason OPERATION_TIMEOUT); a claim waiting for a job does not count its wait; at most 50, under the 60 s in which a response must be written"),
		logLevel:  s.add("LOG_LEVEL", "log-level", "info", "debug, info, warn or error"),
		logFormat: s.add("LOG_FORMAT", "log-format", "text", "text or json"),
		metricsAddr: s.add("METRICS_ADDR", "metrics-addr", "",
			"address to serve Prometheus /metrics on, apart from the API, or off (default: "+defaultMetricsAddr+" with the private database, else off)"),
	}
}

// addConnectTimeout declares DATABASE_CONNECT_TIMEOUT, which serve and
// migrate share.
func addConnectTimeout(s *settings) *setting {
	return s.add("DATABASE_CONNECT_TIMEOUT", "database-connect-timeout", "60",
		"seconds to keep retrying a DATABASE_URL that is not reachable yet (containers start in any order); 0 tries once")
}

// defaultMetricsAddr is where the embedded mode serves /metrics: loopback
// only, so metrics are never public unless an operator says so.
const defaultMetricsAddr = "127.0.0.1:9464"

// resolve validates every setting, naming the variable of the first bad one.
func (cs *configSettings) resolve() (*config, error) {
	c := &config{
		listenAddr:  cs.listen.String(),
		databaseURL: cs.databaseURL.String(),
		dataDir:     cs.dataDir.String(),
		jwtSecret:   cs.jwtSecret.String(),
		jwtAudience: cs.jwtAudience.String(),
		jwtIssuer:   cs.jwtIssuer.String(),
		logFormat:   cs.logFormat.String(),
	}
	var err error
	if c.dbConnectWait, err = cs.dbConnectWait.Seconds(0, 3600); err != nil {
		return nil, err
	}
	if _, err := listenPort(c.listenAddr); err != nil {
		return nil, usageError("%s must be host:port or :port with a port from 0 to 65535, not %q", cs.listen.name(), c.listenAddr)
	}
	if c.dataDir == "" {
		return nil, usageError("%s must not be empty", cs.dataDir.name())
	}
	if c.jwtSecret != "" && len(c.jwtSecret) < 32 {
		return nil, usageError("%s must be at least 32 bytes", cs.jwtSecret.name())
	}
	if c.jwtSecret == "" && !c.embedded() {
		return nil, usageError("%s is required when DATABASE_URL is set (use your identity provider's JWT secret)", cs.jwtSecret.name())
	}
	if c.jwtAudience == "" {
		return nil, usageError("%s must not be empty", cs.jwtAudience.name())
	}
	for _, o := range strings.Split(cs.origins.String(), ",") {
		if o = strings.TrimSpace(o); o != "" {
			if err := graph.CheckOriginPattern(o); err != nil {
				return nil, usageError("%s: %v", cs.origins.name(), err)
			}
			c.allowedOrigins = append(c.allowedOrigins, o)
		}
	}
	if c.playground, err = cs.playground.Bool(); err != nil {
		return nil, err
	}
	if c.introspection, err = cs.introspection.Bool(); err != nil {
		return nil, err
	}
	auto, err := cs.autoMigrate.Bool()
	if err != nil {
		return nil, err
	}
	c.autoMigrate = auto != nil && *auto
	requireTenant, err := cs.requireTenant.Bool()
	if err != nil {
		return nil, err
	}
	c.requireTenant = requireTenant != nil && *requireTenant
	c.queue = db.DefaultQueueConfig
	if c.queue.Lease, err = cs.jobLease.Seconds(5, 3600); err != nil {
		return nil, err
	}
	if c.queue.ProgressTimeout, err = cs.jobProgress.Seconds(5, 7*86400); err != nil {
		return nil, err
	}
	if c.queue.ProgressTimeout < c.queue.Lease {
		return nil, usageError("%s must be at least %s (%d), not %d", cs.jobProgress.name(), cs.jobLease.name(),
			int(c.queue.Lease.Seconds()), int(c.queue.ProgressTimeout.Seconds()))
	}
	if c.queue.OfflineAfter, err = cs.offlineAfter.Seconds(5, 86400); err != nil {
		return nil, err
	}
	if c.queue.TakeoverGrace, err = cs.takeoverGrace.Seconds(0, 86400); err != nil {
		return nil, err
	}
	if c.logs.RetentionDays, err = cs.logRetention.Int(1, 3650); err != nil {
		return nil, err
	}
	if c.logs.PartitionsAhead, err = cs.logPartitionsAhead.Int(1, 60); err != nil {
		return nil, err
	}
	if c.retention.AuditDays, err = cs.auditRetention.Int(1, 3650); err != nil {
		return nil, err
	}
	if c.retention.WebhookDays, err = cs.webhookRetention.Int(1, 3650); err != nil {
		return nil, err
	}
	if c.retention.JobDays, err = cs.jobRetention.Int(1, 3650); err != nil {
		return nil, err
	}
	if c.live.PerConnection, err = cs.subsPerConnection.Int(1, 100_000); err != nil {
		return nil, err
	}
	if c.live.PerPrincipal, err = cs.subsPerPrincipal.Int(1, 1_000_000); err != nil {
		return nil, err
	}
	if c.live.SocketsPerCaller, err = cs.socketsPerCaller.Int(1, 1_000_000); err != nil {
		return nil, err
	}
	if c.live.Sockets, err = cs.sockets.Int(0, 10_000_000); err != nil {
		return nil, err
	}
	allowPrivate, err := cs.webhookAllowPrivate.Bool()
	if err != nil {
		return nil, err
	}
	c.webhooks.AllowPrivate = c.devDefault(allowPrivate)
	allowHTTP, err := cs.webhookAllowHTTP.Bool()
	if err != nil {
		return nil, err
	}
	c.webhooks.AllowHTTP = c.devDefault(allowHTTP)
	if c.webhooks.Timeout, err = cs.webhookTimeout.Seconds(1, 60); err != nil {
		return nil, err
	}
	if c.keyCacheTTL, err = cs.keyCacheTTL.Seconds(0, 60); err != nil {
		return nil, err
	}
	if c.webhooks.Workers, err = cs.webhookWorkers.Int(1, 1000); err != nil {
		return nil, err
	}
	minHeap, err := cs.gcMinHeap.Int(0, 1<<20)
	if err != nil {
		return nil, err
	}
	c.gcMinHeap = uint64(minHeap) << 20
	if c.running, err = cs.running.Int(0, 100_000); err != nil {
		return nil, err
	}
	if c.operationTimeout, err = cs.operationTimeout.Seconds(1, 50); err != nil {
		return nil, err
	}
	if c.logLevel, err = parseLevel(cs.logLevel); err != nil {
		return nil, err
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return nil, usageError("%s must be text or json, not %q", cs.logFormat.name(), c.logFormat)
	}
	switch addr := cs.metricsAddr.String(); {
	case addr == "off":
	case addr == "" && c.embedded():
		c.metricsAddr, c.metricsDefaulted = defaultMetricsAddr, true
	case addr != "":
		port, err := listenPort(addr)
		if err != nil {
			return nil, usageError("%s must be host:port, :port (a port from 0 to 65535) or off, not %q", cs.metricsAddr.name(), addr)
		}
		if addr == c.listenAddr && port != 0 {
			return nil, usageError("%s must differ from LISTEN_ADDR: metrics are served apart from the API", cs.metricsAddr.name())
		}
		c.metricsAddr = addr
	}
	return c, nil
}

// listenPort checks an address to listen on as net.Listen reads it
// (host:port or :port; the port a number from 0 to 65535, or a service
// name), and returns its port; checked only when the server listened, a
// bad port was found after the private database had started.
func listenPort(addr string) (int, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return net.LookupPort("tcp", port)
}

func parseLevel(st *setting) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(st.String())); err != nil {
		return 0, usageError("%s must be debug, info, warn or error, not %q", st.name(), st.String())
	}
	return l, nil
}

func newLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
