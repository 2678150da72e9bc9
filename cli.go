package main

// The operator commands: verify, robots, keys and schema. They read the
// same settings as serve (same variables, flags, defaults and errors), open
// the database with openDatabase (DATABASE_URL, or the private PostgreSQL in
// DATA_DIR, which they borrow but never create), and provision through the same stores as
// the API, acting as auth.SystemPrincipal("cli", tenant): a service role of
// one tenant whose actor in audit trails is "system:cli". Tables go to
// stdout, notices to stderr; --json prints what a table shows as JSON.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/executor"
	"github.com/99designs/gqlgen/graphql/handler/extension"
	"github.com/99designs/gqlgen/graphql/introspection"
	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/fault"
	"fleetgraph/graph"
	"fleetgraph/migrations"
	"fleetgraph/realtime"
)

// connection is the part of serve's settings the operator commands need to
// reach the database, declared with serve's names, defaults and help.
type connection struct {
	databaseURL, connectWait, dataDir, logLevel, logFormat *setting
}

func declareConnection(s *settings) *connection {
	return &connection{
		databaseURL: s.add("DATABASE_URL", "database-url", "", "PostgreSQL URL; unset uses the private PostgreSQL in DATA_DIR"),
		connectWait: addConnectTimeout(s),
		dataDir:     s.add("DATA_DIR", "data-dir", ".data", "folder of the private PostgreSQL"),
		logLevel:    s.add("LOG_LEVEL", "log-level", "info", "debug, info, warn or error"),
		logFormat:   s.add("LOG_FORMAT", "log-format", "text", "text or json"),
	}
}

// open validates the connection settings and opens the database, refusing
// one whose schema is not this binary's (as serve does without AUTO_MIGRATE).
func (c *connection) open(ctx context.Context, stderr io.Writer) (*database, *slog.Logger, error) {
	cfg := &config{databaseURL: c.databaseURL.String(), dataDir: c.dataDir.String(), logFormat: c.logFormat.String()}
	if cfg.dataDir == "" {
		return nil, nil, usageError("%s must not be empty", c.dataDir.name())
	}
	level, err := parseLevel(c.logLevel)
	if err != nil {
		return nil, nil, err
	}
	if cfg.dbConnectWait, err = c.connectWait.Seconds(0, 3600); err != nil {
		return nil, nil, err
	}
	if cfg.logFormat != "text" && cfg.logFormat != "json" {
		return nil, nil, usageError("%s must be text or json, not %q", c.logFormat.name(), cfg.logFormat)
	}
	log := newLogger(stderr, level, cfg.logFormat)
	d, err := openDatabase(ctx, cfg, log, borrowPrivate)
	if err != nil {
		return nil, nil, err
	}
	st, err := migrations.CurrentStatus(ctx, d.DB)
	if err == nil && !st.Current() {
		err = errors.New(st.Problem())
	}
	if err != nil {
		d.close(log)
		return nil, nil, err
	}
	return d, log, nil
}

// parseArgs parses flags mixed with positional arguments (`keys revoke ID
// --json`, `keys revoke --json ID`, `robots create --json NAME --max-jobs 2`),
// which the flag package alone stops reading at the first positional one.
// After "--" everything is positional.
func parseArgs(s *settings, args []string) ([]string, error) {
	var pos []string
	for {
		for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			pos, args = append(pos, args[0]), args[1:]
		}
		rest, err := s.parse(args)
		if err != nil {
			return nil, err
		}
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") || endsWithTerminator(s.fs, args[:len(args)-len(rest)]) {
			return append(pos, rest...), nil
		}
		args = rest
	}
}

// endsWithTerminator reports whether the flags fs parsed (consumed: flags
// and their values, as the flag package read them) ended with "--", after
// which everything is positional. A "--" that is a flag's value
// (`--name --`) is not one.
func endsWithTerminator(fs *flag.FlagSet, consumed []string) bool {
	for i := 0; i < len(consumed); i++ {
		arg := consumed[i]
		if arg == "--" {
			return true
		}
		name := strings.TrimLeft(arg, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // not a flag of fs: parse would have refused it
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
			i++ // its value is the next argument
		}
	}
	return false
}

// noArgs refuses positional arguments a command does not take. A command's
// name among them (`fleetgraph --listen :0 migrate status`, which runs serve
// with the flag) is explained: the command comes first.
func noArgs(rest []string) error {
	if len(rest) == 0 {
		return nil
	}
	if isCommand(rest[0]) {
		return usageError("unexpected argument %q: to run the %s command, name it before its flags (fleetgraph %s [flags])", rest[0], rest[0], rest[0])
	}
	return usageError("unexpected argument %q", rest[0])
}

// isCommand reports whether name is one of the commands run dispatches on.
func isCommand(name string) bool {
	switch name {
	case "serve", "migrate", "token", "schema", "verify", "robots", "keys", "logs", "help":
		return true
	}
	return false
}

// jsonFlag declares --json and returns a reader of its value.
func jsonFlag(s *settings) func() (bool, error) {
	st := s.addBool("", "json", "print JSON instead of a table")
	return func() (bool, error) {
		b, err := st.Bool()
		return b != nil && *b, err
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// group runs one of a command's subcommands, or explains them.
func group(name, summary string, subs map[string]func([]string) error, order []string, args []string, stderr io.Writer) error {
	help := func() {
		_, _ = fmt.Fprintf(stderr, "Usage: fleetgraph %s %s [flags]\n\n%s\n\nRun 'fleetgraph %s <command> --help' for a command's flags.\n",
			name, strings.Join(order, "|"), summary, name)
	}
	if len(args) == 0 {
		return usageError("say what to do: fleetgraph %s %s", name, strings.Join(order, "|"))
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		help()
		return flag.ErrHelp
	}
	run, ok := subs[args[0]]
	if !ok {
		return usageError("unknown command %q: use fleetgraph %s %s", args[0], name, strings.Join(order, "|"))
	}
	return run(args[1:])
}

// operatorSettings declares what every provisioning command takes: the
// connection and the tenant it acts in.
type operatorSettings struct {
	conn   *connection
	tenant *setting
	json   func() (bool, error)
}

func declareOperator(s *settings) *operatorSettings {
	return &operatorSettings{
		conn:   declareConnection(s),
		tenant: s.add("", "tenant", auth.DefaultTenant.String(), "tenant to act in (UUID)"),
		json:   jsonFlag(s),
	}
}

// operator is an open session of a provisioning command.
type operator struct {
	ctx    context.Context // carries the system:cli principal
	d      *database
	log    *slog.Logger
	robots *db.Robots
	keys   *db.APIKeys
	json   bool
}

// open validates the settings, opens the database and returns the
// session; close it with close.
func (ops *operatorSettings) open(ctx context.Context, stderr io.Writer) (*operator, error) {
	tenant, err := uuid.Parse(ops.tenant.String())
	if err != nil || tenant == uuid.Nil {
		// The nil UUID is no tenant (a token cannot name it either).
		return nil, usageError("%s must be a UUID other than the nil one, not %q", ops.tenant.name(), ops.tenant.String())
	}
	asJSON, err := ops.json()
	if err != nil {
		return nil, err
	}
	d, log, err := ops.conn.open(ctx, stderr)
	if err != nil {
		return nil, err
	}
	return &operator{
		ctx:    auth.WithPrincipal(ctx, auth.SystemPrincipal("cli", tenant)),
		d:      d,
		log:    log,
		robots: db.NewRobots(db.DefaultQueueConfig),
		keys:   db.NewAPIKeys(),
		json:   asJSON,
	}, nil
}

func (o *operator) close() { o.d.close(o.log) }

// inputError turns a store's BAD_USER_INPUT into a usage error naming the
// flag that carried the field (exit status 2); other errors pass through.
func inputError(err error, flags map[string]string) error {
	var fe *fault.Error
	if errors.As(err, &fe) && fe.Code == fault.BadUserInput {
		if f, ok := flags[fe.Field]; ok {
			return usageError("--%s: %s", f, fe.Message)
		}
		return usageError("%s", fe.Message)
	}
	return err
}

// robotRef finds a robot of the tenant by id or by exact name.
func (o *operator) robotRef(flagName, ref string) (*db.Robot, error) {
	if ref == "" {
		return nil, usageError("--%s is required: the robot's name or id", flagName)
	}
	if id, err := uuid.Parse(ref); err == nil {
		r, err := o.robots.Get(o.ctx, o.d.DB, id)
		if !errors.Is(err, &fault.Error{Code: fault.NotFound}) {
			return r, err
		}
	}
	r, err := o.robots.GetByName(o.ctx, o.d.DB, ref)
	if errors.Is(err, &fault.Error{Code: fault.NotFound}) {
		return nil, fmt.Errorf("no robot %q in tenant %s: `fleetgraph robots list` shows the tenant's robots", ref, auth.FromContext(o.ctx).TenantID)
	}
	return r, err
}

// robotView is a robot as the CLI prints it in JSON.
type robotView struct {
	ID                uuid.UUID  `json:"id"`
	Name              string     `json:"name"`
	Hostname          string     `json:"hostname"`
	Status            string     `json:"status"`
	Capabilities      []string   `json:"capabilities"`
	MaxConcurrentJobs int        `json:"maxConcurrentJobs"`
	Environment       string     `json:"environment"`
	AgentVersion      string     `json:"agentVersion"`
	LastHeartbeatAt   *time.Time `json:"lastHeartbeatAt"`
	CreatedAt         time.Time  `json:"createdAt"`
}

func viewRobot(r *db.Robot) robotView {
	caps := r.Capabilities
	if caps == nil {
		caps = []string{}
	}
	return robotView{ID: r.ID, Name: r.Name, Hostname: r.Hostname, Status: string(r.Status), Capabilities: caps,
		MaxConcurrentJobs: r.MaxConcurrentJobs, Environment: r.Environment, AgentVersion: r.AgentVersion,
		LastHeartbeatAt: r.LastHeartbeatAt, CreatedAt: r.CreatedAt}
}

// listPrinter prints a list page by page as it is read, so that a list
// of any length takes one page of memory: with --json one array whose
// elements are written with each page (the same text writeJSON writes for
// the whole array), else a table whose columns are aligned within each page.
type listPrinter[T any] struct {
	w      io.Writer
	asJSON bool
	header string          // the table's header line, tab-separated
	view   func(*T) any    // an item as JSON shows it
	row    func(*T) string // an item as a table line, tab-separated
	n      int             // items printed so far
	headed bool            // the table's header is printed
	buf    bytes.Buffer    // the page being printed
}

// page prints one page of items.
func (p *listPrinter[T]) page(items []*T) error {
	p.buf.Reset()
	if p.asJSON {
		for _, it := range items {
			b, err := json.MarshalIndent(p.view(it), "  ", "  ")
			if err != nil {
				return err
			}
			if p.n == 0 {
				p.buf.WriteString("[\n  ")
			} else {
				p.buf.WriteString(",\n  ")
			}
			p.buf.Write(b)
			p.n++
		}
	} else {
		tw := tabwriter.NewWriter(&p.buf, 0, 4, 2, ' ', 0)
		if !p.headed {
			_, _ = fmt.Fprintln(tw, p.header)
			p.headed = true
		}
		for _, it := range items {
			_, _ = fmt.Fprintln(tw, p.row(it))
			p.n++
		}
		_ = tw.Flush() // into the buffer, which does not fail
	}
	_, err := p.w.Write(p.buf.Bytes())
	return err
}

// end finishes the list (a table with no rows still has its header).
func (p *listPrinter[T]) end() error {
	switch {
	case p.asJSON && p.n == 0:
		_, err := io.WriteString(p.w, "[]\n")
		return err
	case p.asJSON:
		_, err := io.WriteString(p.w, "\n]\n")
		return err
	case !p.headed:
		return p.page(nil)
	}
	return nil
}

func robotPrinter(w io.Writer, asJSON bool) *listPrinter[db.Robot] {
	return &listPrinter[db.Robot]{w: w, asJSON: asJSON,
		header: "ID\tNAME\tSTATUS\tCAPABILITIES\tMAX JOBS\tLAST HEARTBEAT",
		view:   func(r *db.Robot) any { return viewRobot(r) },
		row: func(r *db.Robot) string {
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%s", r.ID, terminalText(r.Name), r.Status, orDash(strings.Join(r.Capabilities, ",")),
				r.MaxConcurrentJobs, timeOrDash(r.LastHeartbeatAt))
		},
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func timeOrDash(t *time.Time) string { return timeOr(t, "-") }

// timeOr formats t in UTC, or says none when it is unset.
func timeOr(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return t.UTC().Format(time.RFC3339)
}

func robotsCmd(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	return group("robots", "Lists and registers the robots of a tenant, acting as system:cli.", map[string]func([]string) error{
		"list":   func(a []string) error { return robotsList(ctx, a, env, stdout, stderr) },
		"create": func(a []string) error { return robotsCreate(ctx, a, env, stdout, stderr) },
	}, []string{"list", "create"}, args, stderr)
}

func robotsList(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("robots list", "Lists the tenant's robots, newest first.", stderr, env)
	ops := declareOperator(s)
	status := s.add("", "status", "", "only robots in this status: ONLINE, BUSY, MAINTENANCE or OFFLINE")
	capability := s.add("", "capability", "", "only robots with this capability")
	contains := s.add("", "name-contains", "", "only robots whose name contains this text")
	rest, err := parseArgs(s, args)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	var f db.RobotFilter
	if v := strings.ToUpper(status.String()); v != "" {
		st := db.RobotStatus(v)
		switch st {
		case db.RobotOnline, db.RobotBusy, db.RobotMaintenance, db.RobotOffline:
		default:
			return usageError("%s must be ONLINE, BUSY, MAINTENANCE or OFFLINE, not %q", status.name(), status.String())
		}
		f.Status = &st
	}
	if v := capability.String(); v != "" {
		f.Capability = &v
	}
	if v := contains.String(); v != "" {
		f.NameContains = &v
	}
	o, err := ops.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer o.close()
	// Page by page, each printed before the next is read: a tenant's
	// robots may be many more than fit in memory comfortably.
	out := robotPrinter(stdout, o.json)
	page := db.PageArgs{First: new(db.MaxPageSize)}
	for {
		p, err := o.robots.List(o.ctx, o.d.DB, f, page)
		if err != nil {
			return inputError(err, map[string]string{"filter.capability": "capability", "filter.nameContains": "name-contains"})
		}
		if err := out.page(p.Items); err != nil {
			return err
		}
		if !p.HasNext || len(p.Items) == 0 {
			return out.end()
		}
		page.After = new(p.Items[len(p.Items)-1].Cursor())
	}
}

func robotsCreate(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("robots create --name NAME", "Registers a robot (OFFLINE until its first heartbeat) and prints it. Give it a key with `fleetgraph keys create --robot NAME`.", stderr, env)
	ops := declareOperator(s)
	name := s.add("", "name", "", "the robot's name, unique in the tenant (required)")
	hostname := s.add("", "hostname", "", "the machine it runs on")
	caps := s.add("", "capabilities", "", "comma-separated capabilities jobs may require, e.g. excel,browser")
	maxJobs := s.add("", "max-jobs", "1", "jobs it may run at once (1-100)")
	environment := s.add("", "environment", "", "free-form environment label, e.g. production")
	rest, err := parseArgs(s, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 && name.String() == "" {
		*name.value, rest = rest[0], rest[1:] // `robots create NAME` reads as --name NAME
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	if name.String() == "" {
		return usageError("%s is required", name.name())
	}
	slots, err := maxJobs.Int(1, 100)
	if err != nil {
		return err
	}
	in := db.CreateRobotInput{Name: name.String(), MaxConcurrentJobs: &slots}
	if v := hostname.String(); v != "" {
		in.Hostname = &v
	}
	if v := environment.String(); v != "" {
		in.Environment = &v
	}
	in.Capabilities = []string{}
	for _, c := range strings.Split(caps.String(), ",") {
		if c = strings.TrimSpace(c); c != "" {
			in.Capabilities = append(in.Capabilities, c)
		}
	}
	o, err := ops.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer o.close()
	r, err := o.robots.Create(o.ctx, o.d.DB, in)
	if err != nil {
		return inputError(err, map[string]string{"name": "name", "hostname": "hostname", "capabilities": "capabilities",
			"maxConcurrentJobs": "max-jobs", "environment": "environment"})
	}
	if o.json {
		return writeJSON(stdout, viewRobot(r))
	}
	out := robotPrinter(stdout, false)
	if err := out.page([]*db.Robot{r}); err != nil {
		return err
	}
	return out.end()
}

// keyView is an API key as the CLI prints it in JSON; the raw key appears
// only in the output of keys create.
type keyView struct {
	ID         uuid.UUID  `json:"id"`
	RobotID    uuid.UUID  `json:"robotId"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	CreatedBy  string     `json:"createdBy"`
	CreatedAt  time.Time  `json:"createdAt"`
	ExpiresAt  *time.Time `json:"expiresAt"`
	RevokedAt  *time.Time `json:"revokedAt"`
	RevokedBy  *string    `json:"revokedBy"`
	LastUsedAt *time.Time `json:"lastUsedAt"`
}

func viewKey(k *db.APIKey) keyView {
	return keyView{ID: k.ID, RobotID: k.RobotID, Name: k.Name, Prefix: k.Prefix, CreatedBy: k.CreatedBy, CreatedAt: k.CreatedAt,
		ExpiresAt: k.ExpiresAt, RevokedAt: k.RevokedAt, RevokedBy: k.RevokedBy, LastUsedAt: k.LastUsedAt}
}

func keysCmd(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	return group("keys", "Creates, lists and revokes robots' API keys, acting as system:cli (audited like the API's).", map[string]func([]string) error{
		"create": func(a []string) error { return keysCreate(ctx, a, env, stdout, stderr) },
		"list":   func(a []string) error { return keysList(ctx, a, env, stdout, stderr) },
		"revoke": func(a []string) error { return keysRevoke(ctx, a, env, stdout, stderr) },
	}, []string{"create", "list", "revoke"}, args, stderr)
}

// maxKeyDays bounds a key's lifetime given in --expires (100 years).
const maxKeyDays = 36500

// parseExpiry reads --expires: an RFC 3339 time, or a lifetime from now
// such as 720h or 90d.
func parseExpiry(st *setting, now time.Time) (*time.Time, error) {
	v := st.String()
	if v == "" {
		return nil, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		// As the API's Time: one PostgreSQL stores and RFC 3339 writes back.
		stored, ok := db.AsStored(t)
		if !ok {
			return nil, usageError("%s must be %s, not %q", st.name(), db.TimeRange, v)
		}
		return &stored, nil
	}
	d, err := time.ParseDuration(v)
	if days, ok := strings.CutSuffix(v, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		if n <= 0 || n > maxKeyDays {
			// Refused below, before the multiplication can overflow (a
			// large negative count wrapped into a valid lifetime).
			n = 0
		}
		d = time.Duration(n) * 24 * time.Hour
	}
	if err != nil || d <= 0 || d > maxKeyDays*24*time.Hour {
		return nil, usageError("%s must be a time (2027-01-31T00:00:00Z) or a positive lifetime (720h, 90d), not %q", st.name(), v)
	}
	t := now.Add(d)
	return &t, nil
}

var keyFlags = map[string]string{"name": "name", "expiresAt": "expires"}

func keysCreate(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("keys create --robot NAME-or-ID", "Creates an API key for a robot and prints the raw key, once: it is not stored, only its hash. "+
		"Without --json, stdout holds the key alone and the details go to stderr.", stderr, env)
	ops := declareOperator(s)
	robot := s.add("", "robot", "", "the robot's name or id (required)")
	name := s.add("", "name", "cli", "a label for the key")
	expires := s.add("", "expires", "", "when the key stops working: a time (2027-01-31T00:00:00Z) or a lifetime (720h, 90d); unset never expires")
	rest, err := parseArgs(s, args)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	if robot.String() == "" {
		return usageError("%s is required: the robot's name or id", robot.name())
	}
	expiresAt, err := parseExpiry(expires, time.Now())
	if err != nil {
		return err
	}
	o, err := ops.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer o.close()
	r, err := o.robotRef("robot", robot.String())
	if err != nil {
		return err
	}
	created, err := o.keys.Create(o.ctx, o.d.DB, r.ID, name.String(), expiresAt)
	if err != nil {
		return inputError(err, keyFlags)
	}
	k := created.APIKey
	// A write to a closed pipe (`keys create | cmd` whose cmd has exited)
	// must fail as an error, for the revoke below, not kill the process.
	signal.Ignore(syscall.SIGPIPE)
	if o.json {
		err = writeJSON(stdout, struct {
			Key    string  `json:"key"`
			APIKey keyView `json:"apiKey"`
		}{created.Key, viewKey(k)})
	} else {
		_, _ = fmt.Fprintf(stderr, "created API key %s (%q) for robot %s; it expires %s.\nThis is the only time the key is shown: store it now.\n",
			k.ID, k.Name, terminalText(r.Name), orNever(k.ExpiresAt))
		_, err = fmt.Fprintln(stdout, created.Key)
	}
	if err == nil {
		return nil
	}
	// Nobody got the raw key, which exists nowhere else: a key left active
	// would be one nobody can use or knows to rotate. Revoke it, even if
	// the command is being interrupted.
	if _, rerr := o.keys.Revoke(context.WithoutCancel(o.ctx), o.d.DB, k.ID); rerr != nil {
		return fmt.Errorf("printing the new API key %s failed (%w), and so did revoking it (%v): it is active; revoke it with `fleetgraph keys revoke %s`", k.ID, err, rerr, k.ID)
	}
	return fmt.Errorf("printing the new API key %s failed (%w), so it was revoked at once: run keys create again with an output that can be written", k.ID, err)
}

func orNever(t *time.Time) string { return timeOr(t, "never") }

func keysList(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("keys list --robot NAME-or-ID", "Lists a robot's API keys, newest first (never the keys themselves).", stderr, env)
	ops := declareOperator(s)
	robot := s.add("", "robot", "", "the robot's name or id (required)")
	all := s.addBool("", "all", "include revoked keys")
	rest, err := parseArgs(s, args)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	if robot.String() == "" {
		return usageError("%s is required: the robot's name or id", robot.name())
	}
	withRevoked, err := all.Bool()
	if err != nil {
		return err
	}
	o, err := ops.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer o.close()
	r, err := o.robotRef("robot", robot.String())
	if err != nil {
		return err
	}
	out := &listPrinter[db.APIKey]{w: stdout, asJSON: o.json,
		header: "ID\tNAME\tPREFIX\tCREATED\tEXPIRES\tLAST USED\tREVOKED",
		view:   func(k *db.APIKey) any { return viewKey(k) },
		row: func(k *db.APIKey) string {
			created := k.CreatedAt
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s", k.ID, terminalText(k.Name), k.Prefix, timeOrDash(&created),
				orNever(k.ExpiresAt), timeOrDash(k.LastUsedAt), timeOrDash(k.RevokedAt))
		},
	}
	// Every key, page by page: the store's List stops at MaxPageSize.
	page := db.PageArgs{First: new(db.MaxPageSize)}
	for {
		p, err := o.keys.ListPage(o.ctx, o.d.DB, r.ID, withRevoked != nil && *withRevoked, page)
		if err != nil {
			return err
		}
		if err := out.page(p.Items); err != nil {
			return err
		}
		if !p.HasNext || len(p.Items) == 0 {
			return out.end()
		}
		page.After = new(p.Items[len(p.Items)-1].Cursor())
	}
}

func keysRevoke(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("keys revoke ID", "Revokes an API key at once: requests with it are refused from now on.", stderr, env)
	ops := declareOperator(s)
	rest, err := parseArgs(s, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageError("say which key: fleetgraph keys revoke ID (`fleetgraph keys list --robot NAME` shows the ids)")
	}
	id, err := uuid.Parse(rest[0])
	if err != nil {
		return usageError("the key id must be a UUID, not %q", rest[0])
	}
	o, err := ops.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer o.close()
	k, err := o.keys.Revoke(o.ctx, o.d.DB, id)
	if errors.Is(err, &fault.Error{Code: fault.NotFound}) {
		return fmt.Errorf("no API key %s in tenant %s", id, auth.FromContext(o.ctx).TenantID)
	}
	if err != nil {
		return err
	}
	if o.json {
		return writeJSON(stdout, viewKey(k))
	}
	_, err = fmt.Fprintf(stdout, "revoked API key %s (%q) of robot %s\n", k.ID, k.Name, k.RobotID)
	return err
}

func schemaCmd(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("schema", "Prints the GraphQL schema as SDL, or with --introspection as the JSON result of the standard introspection query, "+
		"which code generators take. Needs no server and no database.", stderr, env)
	intro := s.addBool("", "introspection", "print the introspection result (JSON) instead of the SDL")
	rest, err := s.parse(args)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	asIntrospection, err := intro.Bool()
	if err != nil {
		return err
	}
	if asIntrospection == nil || !*asIntrospection {
		_, err = io.WriteString(stdout, schemaSDL)
		return err
	}
	out, err := introspectionJSON(ctx)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// introspectionJSON runs the standard introspection query through the
// executable schema in this process and returns the response, indented.
func introspectionJSON(ctx context.Context) ([]byte, error) {
	exec := executor.New(graph.NewExecutableSchema(graph.Config{Resolvers: &graph.Resolver{}}))
	exec.Use(extension.Introspection{})
	ctx = graphql.StartOperationTrace(ctx)
	opCtx, errs := exec.CreateOperationContext(ctx, &graphql.RawParams{Query: introspection.Query, ReadTime: graphql.TraceTiming{Start: graphql.Now(), End: graphql.Now()}})
	if errs != nil {
		return nil, fmt.Errorf("preparing the introspection query: %w", errs)
	}
	handler, ctx := exec.DispatchOperation(ctx, opCtx)
	resp := handler(ctx)
	if resp == nil {
		return nil, errors.New("the introspection query returned no response")
	}
	if len(resp.Errors) > 0 {
		return nil, fmt.Errorf("running the introspection query: %w", resp.Errors)
	}
	var data any
	if err := json.Unmarshal(resp.Data, &data); err != nil {
		return nil, fmt.Errorf("reading the introspection result: %w", err)
	}
	out, err := json.MarshalIndent(map[string]any{"data": data}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// verifyCheck is one line of verify's report.
type verifyCheck struct {
	Name string `json:"name"`
	// Status is ok, warn (worth a look, not wrong), fail or skipped (an
	// earlier failure made the check impossible).
	Status string `json:"status"`
	Detail string `json:"detail"`
	// Advice says what to do about a warning or a failure.
	Advice string `json:"advice,omitempty"`
}

// verifyReport is what verify prints.
type verifyReport struct {
	OK     bool          `json:"ok"`
	Checks []verifyCheck `json:"checks"`
}

func (r *verifyReport) add(name, status, detail, advice string) {
	r.Checks = append(r.Checks, verifyCheck{Name: name, Status: status, Detail: detail, Advice: advice})
}

// minServerVersion is the oldest PostgreSQL Fleetgraph supports (14).
const minServerVersion = 140000

// feedTimeout bounds verify's change-feed round trip by default.
const feedTimeout = "10s"

func verify(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("verify", "Checks an installation with serve's settings: the settings themselves, the JWT secret, the database "+
		"(reachable, PostgreSQL 14+, migrations current, change-feed triggers in place, robot_logs partitions of today and "+
		"LOG_PARTITIONS_AHEAD days ahead ready and no default partition) and the change feed (a NOTIFY round trip "+
		"through LISTEN). Prints what holds and what does not, with advice, and exits 1 when something is wrong.", stderr, env)
	cs := declareServe(s)
	asJSON := jsonFlag(s)
	timeout := s.add("", "timeout", feedTimeout, "how long the change-feed round trip may take")
	rest, err := s.parse(args)
	if err != nil {
		return err
	}
	if err := noArgs(rest); err != nil {
		return err
	}
	wantJSON, err := asJSON()
	if err != nil {
		return err
	}
	wait, err := time.ParseDuration(timeout.String())
	if err != nil || wait <= 0 {
		return usageError("%s must be a positive duration such as 10s, not %q", timeout.name(), timeout.String())
	}

	var r verifyReport
	cfg, err := cs.resolve()
	if err != nil {
		r.add("settings", "fail", strings.TrimPrefix(err.Error(), "usage: "), "fix the setting named; `fleetgraph serve --help` lists every setting with its default")
	} else {
		r.add("settings", "ok", "every setting is valid", "")
		verifyContradictions(&r, cfg, cs)
	}
	verifySecret(&r, cs)

	level, lerr := parseLevel(cs.logLevel)
	if lerr != nil {
		level = slog.LevelInfo
	}
	format := cs.logFormat.String()
	if format != "json" {
		format = "text"
	}
	log := newLogger(stderr, level, format)
	dataDir := cs.dataDir.String()
	if dataDir == "" {
		dataDir = ".data"
	}
	// DATABASE_CONNECT_TIMEOUT as serve reads it; a bad value (reported
	// by the settings check) tries once.
	var connectWait time.Duration
	if cfg != nil {
		connectWait = cfg.dbConnectWait
	} else if w, err := cs.dbConnectWait.Seconds(0, 3600); err == nil {
		connectWait = w
	}
	d, err := openDatabase(ctx, &config{databaseURL: cs.databaseURL.String(), dbConnectWait: connectWait, dataDir: dataDir}, log, borrowPrivate)
	if err != nil {
		advice := "check DATABASE_URL (host, port, user, password, database, sslmode) and that PostgreSQL accepts connections from here"
		if errors.Is(err, errNoPrivateDatabase) {
			advice = "check DATA_DIR; start `fleetgraph serve` with the same settings once (it creates the private PostgreSQL and its database), or set DATABASE_URL"
		}
		r.add("database reachable", "fail", err.Error(), advice)
		for _, name := range []string{"PostgreSQL version", "migrations", "change-feed triggers", "log partitions", "change feed"} {
			r.add(name, "skipped", "the database is unreachable", "")
		}
	} else {
		defer d.close(log)
		ahead := db.DefaultLogConfig.PartitionsAhead
		if cfg != nil {
			ahead = cfg.logs.PartitionsAhead
		} else if n, err := cs.logPartitionsAhead.Int(1, 60); err == nil {
			ahead = n
		}
		verifyDatabase(ctx, &r, d, log, wait, ahead)
	}

	r.OK = true
	failed := 0
	for _, c := range r.Checks {
		if c.Status == "fail" {
			r.OK = false
			failed++
		}
	}
	if wantJSON {
		if err := writeJSON(stdout, r); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		_, _ = fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
		for _, c := range r.Checks {
			_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, strings.ToUpper(c.Status), c.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, c := range r.Checks {
			if c.Advice != "" {
				_, _ = fmt.Fprintf(stdout, "\n%s (%s): %s\n", c.Name, c.Status, c.Advice)
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed; see the advice above", failed)
	}
	return nil
}

// verifyContradictions reports settings that are each valid but do not
// make sense together. (JOB_PROGRESS_TIMEOUT_SECONDS below
// JOB_LEASE_SECONDS is one, refused by resolve itself, so serve refuses it too.)
func verifyContradictions(r *verifyReport, cfg *config, cs *configSettings) {
	if cfg.devDefault(cfg.playground) && !cfg.devDefault(cfg.introspection) {
		r.add("playground and introspection", "fail", fmt.Sprintf("the playground is on but %s is off: it cannot load the schema", cs.introspection.name()),
			fmt.Sprintf("set %s=true as well, or turn the playground off with %s=false", cs.introspection.env, cs.playground.env))
	}
	if cfg.live.PerConnection > cfg.live.PerPrincipal {
		r.add("subscription limits", "warn", fmt.Sprintf("%s (%d) is above %s (%d), so it is never reached",
			cs.subsPerConnection.env, cfg.live.PerConnection, cs.subsPerPrincipal.env, cfg.live.PerPrincipal),
			fmt.Sprintf("lower %s to at most %s", cs.subsPerConnection.env, cs.subsPerPrincipal.env))
	}
	if auto, _ := cs.autoMigrate.Bool(); auto != nil && !*auto && cfg.embedded() {
		r.add("auto-migrate", "warn", fmt.Sprintf("%s=false is ignored: the private PostgreSQL is always migrated at start", cs.autoMigrate.env),
			"unset AUTO_MIGRATE, or set DATABASE_URL to manage migrations yourself")
	}
}

// minSecretBytes is the shortest JWT secret serve accepts.
const minSecretBytes = 32

// verifySecret checks the JWT secret serve would use.
func verifySecret(r *verifyReport, cs *configSettings) {
	const name = "JWT secret"
	const generate = "use your identity provider's JWT secret (Supabase: Project Settings > API), or generate one with `openssl rand -hex 32`"
	secret := cs.jwtSecret.String()
	switch {
	case secret != "" && len(secret) < minSecretBytes:
		r.add(name, "fail", fmt.Sprintf("JWT_SECRET is %d bytes; at least %d are required", len(secret), minSecretBytes), generate)
	case secret != "":
		r.add(name, "ok", fmt.Sprintf("JWT_SECRET is %d bytes", len(secret)), "")
	case cs.databaseURL.String() != "":
		r.add(name, "fail", "JWT_SECRET is unset, and serve requires it with DATABASE_URL", "set JWT_SECRET: "+generate)
	default:
		path := secretFile(cs.dataDir.String())
		_, err := jwtSecret(&config{dataDir: cs.dataDir.String()}, false)
		switch {
		case err == nil:
			r.add(name, "ok", "generated secret kept in "+path, "")
		case strings.Contains(err.Error(), "no JWT secret"):
			r.add(name, "ok", "none yet: serve generates one in "+path+" at its first start", "")
		default:
			r.add(name, "fail", err.Error(), "delete "+path+" so that serve generates a new one, or set JWT_SECRET")
		}
	}
}

// verifyDatabase runs the checks that need the database.
func verifyDatabase(ctx context.Context, r *verifyReport, d *database, log *slog.Logger, wait time.Duration, partitionsAhead int) {
	var who struct {
		Database string `bun:"db"`
		User     string `bun:"usr"`
		Num      int    `bun:"num"`
		Version  string `bun:"version"`
	}
	err := d.NewRaw("SELECT current_database() AS db, current_user AS usr, current_setting('server_version_num')::int AS num, current_setting('server_version') AS version").Scan(ctx, &who)
	if err != nil {
		r.add("database reachable", "fail", fmt.Sprintf("connected, but the first query failed: %v", err), "check that the user may read the database")
	} else {
		r.add("database reachable", "ok", fmt.Sprintf("database %s as %s", who.Database, who.User), "")
		if who.Num < minServerVersion {
			r.add("PostgreSQL version", "fail", fmt.Sprintf("PostgreSQL %s is not supported", who.Version),
				"Fleetgraph needs PostgreSQL 14 or later: upgrade the server, or point DATABASE_URL at one that is")
		} else {
			r.add("PostgreSQL version", "ok", "PostgreSQL "+who.Version, "")
		}
	}

	st, err := migrations.CurrentStatus(ctx, d.DB)
	switch {
	case err != nil:
		r.add("migrations", "fail", err.Error(), "check that the user may read the bun_migrations table")
	case len(st.Unknown) > 0:
		r.add("migrations", "fail", st.Problem(), "run the Fleetgraph version that migrated this database; before rolling back with its `migrate down`, "+
			"run that without --yes to see what it would roll back (after a first install: every table)")
	case len(st.Pending) > 0:
		r.add("migrations", "fail", st.Problem(), "run `fleetgraph migrate up` with the same settings (or start serve once with --auto-migrate)")
	default:
		r.add("migrations", "ok", fmt.Sprintf("all %d applied (latest %s)", len(st.Applied), st.Applied[len(st.Applied)-1]), "")
	}
	verifyTriggers(ctx, r, d.DB, st)
	verifyPartitions(ctx, r, d.DB, time.Now(), partitionsAhead)
	verifyFeed(ctx, r, d, log, wait)
}

// verifyPartitions checks that robot_logs has the partitions of today and
// of the ahead days after it (UTC), as the maintenance leader keeps them,
// and no default partition: a line of a day without its partition makes
// ingest create it under a lock, and one in a default partition would
// never be dropped by retention.
func verifyPartitions(ctx context.Context, r *verifyReport, bdb *bun.DB, now time.Time, ahead int) {
	const name = "log partitions"
	var exists bool
	if err := bdb.NewRaw("SELECT to_regclass('robot_logs') IS NOT NULL").Scan(ctx, &exists); err != nil {
		r.add(name, "fail", fmt.Sprintf("reading the catalog: %v", err), "check that the user may read the catalog")
		return
	}
	if !exists {
		r.add(name, "fail", "there is no robot_logs table", "run `fleetgraph migrate up`")
		return
	}
	parts, err := db.NewLogs(db.DefaultLogConfig, nil).Partitions(ctx, bdb)
	if err != nil {
		r.add(name, "fail", err.Error(), "check that the user may read the catalog")
		return
	}
	have := map[string]bool{}
	for _, p := range parts {
		have[p.Name] = true
	}
	var missing, days []string
	today := now.UTC().Truncate(24 * time.Hour)
	for i := range ahead + 1 {
		d := today.AddDate(0, 0, i)
		if n := "robot_logs_p" + d.Format("20060102"); !have[n] {
			missing = append(missing, n)
			days = append(days, d.Format(time.DateOnly))
		}
	}
	var def []string
	if err := bdb.NewRaw(`SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'robot_logs'::regclass AND c.relpartbound IS NOT NULL AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'`).Scan(ctx, &def); err != nil {
		r.add(name, "fail", fmt.Sprintf("reading the catalog: %v", err), "check that the user may read the catalog")
		return
	}
	var detail, advice []string
	if len(missing) > 0 {
		detail = append(detail, fmt.Sprintf("missing %s (today and %d day(s) ahead, LOG_PARTITIONS_AHEAD, are kept ready)", strings.Join(missing, ", "), ahead))
		advice = append(advice, fmt.Sprintf("start `fleetgraph serve` with the same settings: its maintenance leader creates them within the hour (task log-partitions); "+
			"or create them now with `SELECT fleetgraph_ensure_log_partition(d::date) FROM unnest('{%s}'::text[]) AS d`", strings.Join(days, ",")))
	}
	if len(def) > 0 {
		detail = append(detail, "default partition attached: "+strings.Join(def, ", "))
		advice = append(advice, fmt.Sprintf("a default partition swallows lines that retention never drops: move its rows out and `ALTER TABLE robot_logs DETACH PARTITION %s`", def[0]))
	}
	if len(detail) > 0 {
		r.add(name, "fail", strings.Join(detail, "; "), strings.Join(advice, "; "))
		return
	}
	r.add(name, "ok", fmt.Sprintf("today and %d day(s) ahead ready (%d partitions in all)", ahead, len(parts)), "")
}

// verifyTriggers checks that every trigger of this binary's migrations is
// in place and enabled: without them the change feed goes quiet, and
// subscriptions with it, while everything else keeps working.
func verifyTriggers(ctx context.Context, r *verifyReport, bdb *bun.DB, st migrations.Status) {
	const name = "change-feed triggers"
	pending := map[string]bool{}
	for _, m := range st.Pending {
		pending[m] = true
	}
	want, err := migrations.Triggers(append(append([]string{}, st.Applied...), st.Pending...))
	if err != nil {
		r.add(name, "fail", err.Error(), "")
		return
	}
	var missing, disabled, notMigrated []string
	for _, t := range want {
		var state []string
		if err := bdb.NewRaw("SELECT t.tgenabled::text FROM pg_trigger t WHERE t.tgrelid = to_regclass(?) AND t.tgname = ?", t.Table, t.Name).
			Scan(ctx, &state); err != nil {
			r.add(name, "fail", fmt.Sprintf("reading pg_trigger: %v", err), "check that the user may read the catalog")
			return
		}
		label := t.Name + " on " + t.Table
		switch {
		case len(state) == 0 && pending[t.Migration]:
			notMigrated = append(notMigrated, label)
		case len(state) == 0:
			missing = append(missing, fmt.Sprintf("%s (migration %s)", label, t.Migration))
		case state[0] == "D" || state[0] == "R":
			disabled = append(disabled, label)
		}
	}
	var advice []string
	var detail []string
	if len(notMigrated) > 0 {
		detail = append(detail, fmt.Sprintf("%d missing with their pending migrations", len(notMigrated)))
		advice = append(advice, "run `fleetgraph migrate up`")
	}
	if len(missing) > 0 {
		detail = append(detail, "dropped: "+strings.Join(missing, ", "))
		advice = append(advice, "recreate each dropped trigger with its CREATE TRIGGER statement from its migration's .up.sql file (migrations/ in the source)")
	}
	if len(disabled) > 0 {
		detail = append(detail, "disabled: "+strings.Join(disabled, ", "))
		advice = append(advice, "enable each with `ALTER TABLE <table> ENABLE TRIGGER <name>`")
	}
	if len(detail) > 0 {
		r.add(name, "fail", strings.Join(detail, "; "), strings.Join(advice, "; ")+"; until then subscriptions receive no changes")
		return
	}
	r.add(name, "ok", fmt.Sprintf("all %d in place and enabled", len(want)), "")
}

// verifyFeed sends a NOTIFY on the change-feed channel and waits for it to
// come back through a LISTEN connection, as every server's hub receives
// changes. The payload's kind, "verify", is one no subscriber watches.
// The NOTIFY is repeated until it arrives, since LISTEN takes effect only
// once the listener's connection is up.
func verifyFeed(ctx context.Context, r *verifyReport, d *database, log *slog.Logger, wait time.Duration) {
	const name = "change feed"
	const advice = "LISTEN/NOTIFY must reach this process: connect to PostgreSQL directly or through a session-mode pooler " +
		"(PgBouncer's transaction mode drops LISTEN); subscriptions and waiting claims depend on it"
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	payload := fmt.Sprintf(`{"k":"verify","id":%q}`, hex.EncodeToString(nonce[:]))
	quiet := slog.New(slog.DiscardHandler)
	if log.Enabled(ctx, slog.LevelDebug) {
		quiet = log
	}
	l, err := realtime.NewListener(d.dsn, []string{realtime.ChangeChannel}, quiet)
	if err != nil {
		r.add(name, "fail", err.Error(), advice)
		return
	}
	sub := l.Subscribe(realtime.ChangeChannel, 64)
	listenCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		l.Run(listenCtx)
		close(done)
	}()
	defer func() {
		stop()
		<-done
	}()
	start := time.Now()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	resend := time.NewTicker(250 * time.Millisecond)
	defer resend.Stop()
	for {
		if _, err := d.ExecContext(ctx, "SELECT pg_notify(?, ?)", realtime.ChangeChannel, payload); err != nil {
			r.add(name, "fail", fmt.Sprintf("sending NOTIFY: %v", err), advice)
			return
		}
		if arrived, ended := awaitPayload(ctx, sub.C, payload, resend.C, deadline.C); arrived {
			r.add(name, "ok", fmt.Sprintf("a NOTIFY on %s came back through LISTEN in %s", realtime.ChangeChannel, time.Since(start).Round(time.Millisecond)), "")
			return
		} else if ended {
			r.add(name, "fail", fmt.Sprintf("a NOTIFY on %s did not come back through LISTEN within %s", realtime.ChangeChannel, wait), advice)
			return
		}
	}
}

// awaitPayload waits for payload on c until resend fires (neither result),
// or deadline or ctx ends (ended). Other notifications are skipped.
func awaitPayload(ctx context.Context, c <-chan realtime.Notification, payload string, resend <-chan time.Time, deadline <-chan time.Time) (arrived, ended bool) {
	for {
		select {
		case n := <-c:
			if n.Payload == payload {
				return true, false
			}
		case <-resend:
			return false, false
		case <-deadline:
			return false, true
		case <-ctx.Done():
			return false, true
		}
	}
}
