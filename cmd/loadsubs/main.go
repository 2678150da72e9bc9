// Command loadsubs measures Fleetgraph's live updates under load: it opens
// many graphql-transport-ws subscribers to jobUpdated, drives jobs through
// their lifecycle through the API at a controlled rate, and reports
// deliveries per second, commit-to-client latency and the server's memory
// per subscriber.
//
// It only ever talks to a loopback server, and stops by itself after
// -duration. With -serve it builds and starts the server itself (a
// private PostgreSQL in a temporary DATA_DIR), reads its memory from
// /proc, and stops it at the end:
//
//	go run ./cmd/loadsubs -serve -subscribers 1000 -jobs 20 -rate 200 -duration 60s
//
// Against a server started separately (`go run . serve`), pass its URL, a
// user token (or the JWT secret to mint one) and, for memory figures, its pid:
//
//	go run ./cmd/loadsubs -url ws://127.0.0.1:8080/graphql -secret "$(cat .data/jwt-secret)" -server-pid 1234
//
// With -floor it measures no server at all: what one write per subscriber
// per change costs on this machine (floor.go), the floor under a server's
// CPU per delivery:
//
//	go run ./cmd/loadsubs -floor -subscribers 10000 -rate 2 -duration 20s
//
// Latency: a subscriber stamps each message when it reads it; the driver
// stamps each mutation when it sends the request and when the response
// returns. The commit happened between the two, so for every (job,
// revision) the tool reports two figures: receive - response (a lower bound
// of commit-to-client latency) and receive - send (an upper bound).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"

	"fleetgraph/auth"
)

type options struct {
	url         string
	token       string
	secret      string
	subscribers int
	jobs        int
	steps       int
	rate        float64
	duration    time.Duration
	spread      int
	dialers     int
	serve       bool
	serverBin   string
	src         string
	serverPID   int
	jsonOut     bool
	lean        bool
	procs       int
	distinct    bool
	servers     int
	// urls are the servers' websocket URLs (-serve with -servers > 1);
	// subscriber i dials urls[i % len(urls)]. Mutations go to url.
	urls []string
	// metricsURL is the /metrics of the server mutations go to (-serve).
	metricsURL string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadsubs:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("loadsubs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", "", "websocket URL of the server's /graphql, e.g. ws://127.0.0.1:8080/graphql (loopback only; not with -serve)")
	fs.StringVar(&o.token, "token", "", "a user JWT of the tenant to load (or -secret)")
	fs.StringVar(&o.secret, "secret", "", "the server's JWT_SECRET, to mint a user of a fresh tenant")
	fs.IntVar(&o.subscribers, "subscribers", 1000, "websocket subscribers to open, one jobUpdated subscription each")
	fs.IntVar(&o.jobs, "jobs", 10, "jobs in flight at once: one robot works through each, queue -> claim -> start -> progress -> complete")
	fs.IntVar(&o.steps, "steps", 4, "progress reports per job")
	fs.Float64Var(&o.rate, "rate", 100, "job mutations per second across all jobs (0: as fast as the server answers)")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "how long to drive updates")
	fs.IntVar(&o.spread, "spread", 1, "split jobs and subscribers across this many workflows; a subscriber filters on one (1: every subscriber sees every job)")
	fs.IntVar(&o.dialers, "dialers", 64, "websockets dialled at once")
	fs.BoolVar(&o.distinct, "distinct", false, "give every subscriber a document of its own (an alias that names it), so that no two share a rendered result")
	fs.IntVar(&o.servers, "servers", 1, "with -serve: server processes over the one database (the others attach to the first's PostgreSQL); subscribers are spread over them, mutations go to the first")
	fs.BoolVar(&o.serve, "serve", false, "build and start the server as a child process with a private DATA_DIR, and measure its memory")
	fs.StringVar(&o.serverBin, "server-bin", "", "with -serve: the fleetgraph binary (default: go build the module in -src)")
	fs.StringVar(&o.src, "src", ".", "with -serve: the module's folder, to build it")
	fs.IntVar(&o.serverPID, "server-pid", 0, "without -serve: the server's pid, to read its memory from /proc")
	fs.BoolVar(&o.jsonOut, "json", false, "print the results as JSON")
	fs.IntVar(&o.procs, "procs", 0, "threads this tool runs Go code on (0: GOMAXPROCS if set, else four per CPU and at least 8): more than the cores, so that a mutation's response is read when it arrives, not after the reads of thousands of subscribers queued before it in this tool's scheduler; the server's own setting is untouched")
	var floor, floorWriting bool
	var frame int
	fs.BoolVar(&floor, "floor", false, "measure no server: the CPU and time that one write per subscriber per change costs on this machine (-subscribers, -rate, -duration; see floor.go)")
	fs.IntVar(&frame, "floor-frame", 200, "with -floor: bytes per frame, header included")
	fs.BoolVar(&floorWriting, "floor-writer", false, "the -floor run's writing child (internal)")
	fs.BoolVar(&o.lean, "lean", false, "decode in full only the subscribers sampled for the final-state check (latency is theirs); the others speak the websocket by hand and count frames in their read buffers, so the tool's own CPU hides less of the server's")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.subscribers < 1 || o.jobs < 1 || o.steps < 0 || o.spread < 1 || o.dialers < 1 || o.duration <= 0 || o.rate < 0 {
		return errors.New("-subscribers, -jobs, -spread and -dialers must be positive, -steps and -rate not negative, -duration positive")
	}
	if o.duration > time.Hour {
		return errors.New("-duration is at most an hour")
	}
	if floorWriting {
		return floorWriter(ctx, o, frame, stdout)
	}
	if floor {
		if _, err := raiseFileLimit(); err != nil {
			fmt.Fprintln(stderr, "loadsubs: cannot raise the open-file limit:", err)
		}
		return runFloor(ctx, o, frame, stdout)
	}
	if o.serve == (o.url != "") {
		return errors.New("give either -serve or -url")
	}
	switch {
	case o.procs > 0:
		runtime.GOMAXPROCS(o.procs)
	case os.Getenv("GOMAXPROCS") == "":
		runtime.GOMAXPROCS(max(8, 4*runtime.NumCPU()))
	}

	// Every websocket is a file descriptor on both sides. Raise the soft
	// limit to the hard one; a -serve child inherits it.
	fds, err := raiseFileLimit()
	if err != nil {
		fmt.Fprintln(stderr, "loadsubs: cannot raise the open-file limit:", err)
	}
	if need := uint64(o.subscribers + o.jobs + 200); fds < need {
		return fmt.Errorf("%d subscribers need about %d file descriptors, and the limit is %d: raise it (ulimit -n) or open fewer", o.subscribers, need, fds)
	}

	if o.servers < 1 || o.servers > 8 || o.servers > 1 && !o.serve {
		return errors.New("-servers is 1 to 8, and more than 1 needs -serve")
	}
	pids := []int{o.serverPID}
	if o.serve {
		srv, err := startServer(ctx, o, stderr, "")
		if err != nil {
			return err
		}
		defer srv.stop(stderr)
		o.url, o.secret, pids, o.metricsURL = srv.wsURL, srv.secret, []int{srv.pid}, srv.metricsURL
		o.urls = []string{srv.wsURL}
		for range o.servers - 1 {
			more, err := startServer(ctx, o, stderr, srv.dir)
			if err != nil {
				return err
			}
			defer more.stop(stderr) // before the first, which owns PostgreSQL
			o.urls, pids = append(o.urls, more.wsURL), append(pids, more.pid)
		}
	}
	if err := requireLoopback(o.url); err != nil {
		return err
	}
	if o.token == "" {
		if o.secret == "" {
			return errors.New("give -token, or -secret to mint one")
		}
		if o.token, err = mint(o.secret); err != nil {
			return err
		}
	}

	res, err := measure(ctx, o, pids, stderr)
	if err != nil {
		return err
	}
	res.FileLimit = fds
	if o.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	res.print(stdout)
	return nil
}

// raiseFileLimit sets the soft RLIMIT_NOFILE to the hard limit and returns it.
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return lim.Cur, err
		}
	}
	return lim.Cur, nil
}

// requireLoopback refuses any server that is not on this machine: the
// tool is a load generator, and must never be pointed elsewhere.
func requireLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return fmt.Errorf("-url must be a ws:// URL of /graphql, not %q", raw)
	}
	ips, err := net.LookupIP(u.Hostname())
	if err != nil {
		return fmt.Errorf("resolving %s: %w", u.Hostname(), err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("loadsubs only loads servers on this machine; %s resolves to %s", u.Hostname(), ip)
		}
	}
	return nil
}

// mint signs a one-hour token for a fresh user of a fresh tenant, so the
// load never touches existing data.
func mint(secret string) (string, error) {
	jwt, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(strings.TrimSpace(secret)), Audience: "authenticated"})
	if err != nil {
		return "", fmt.Errorf("using -secret: %w", err)
	}
	return jwt.Mint(auth.MintOptions{UserID: uuid.New(), TenantID: uuid.New(), Role: auth.RoleUser, TTL: 2 * time.Hour})
}

// httpBase turns the websocket URL of /graphql into the server's base URL.
func httpBase(wsURL string) string {
	u, _ := url.Parse(wsURL)
	scheme := "http"
	if u.Scheme == "wss" {
		scheme = "https"
	}
	return scheme + "://" + u.Host
}
