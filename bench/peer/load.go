package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"fleetgraph/bench/loadclient"
	"fleetgraph/bench/peer/dataset"
	"fleetgraph/localpg"
)

// key names one measured configuration: a target ("Fleetgraph",
// "PostGraphile", "pgbench simple", "pgbench prepared"), a query and a
// concurrency.
type key struct {
	target, query string
	conc          int
}

// results are the req/s of each configuration, one entry per round.
type results map[key][]float64

// loadRun drives s with conc clients sending bodies (picked at random) for
// d, each client waiting for its answer before it sends again, and returns
// the completed requests per second. Any failed request ends the run.
// Each client has its own keep-alive connection, lean (package loadclient)
// unless netHTTP asks for net/http's Client. It also returns the CPU the
// generator itself (this process) spent per request, in µs: what it took
// from the servers on the same cores.
func loadRun(ctx context.Context, s *server, bodies [][]byte, conc int, d time.Duration, netHTTP bool) (rps, cpuPerRequest float64, err error) {
	tr := &http.Transport{MaxIdleConns: conc, MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc, DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	header := "Content-Type: application/json\r\n"
	if s.token != "" {
		header += "Authorization: Bearer " + s.token + "\r\n"
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	start := time.Now()
	cpu0 := selfCPU()
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lean, err := loadclient.New(s.url)
			if err != nil {
				once.Do(func() { firstErr = err; cancel() })
				return
			}
			defer lean.Close()
			lean.Timeout = 30 * time.Second
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for time.Now().Before(deadline) {
				b := bodies[r.IntN(len(bodies))]
				if netHTTP {
					_, err = s.post(ctx, c, b)
				} else {
					var status int
					var out []byte
					if status, out, err = lean.Post(ctx, header, b); err == nil {
						err = s.check(status, out)
					}
				}
				if err != nil {
					if ctx.Err() == nil {
						once.Do(func() { firstErr = err; cancel() })
					}
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), selfCPU()-cpu0
	if firstErr != nil {
		return 0, 0, firstErr
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	n := float64(done.Load())
	return n / elapsed.Seconds(), float64(cpu.Microseconds()) / n, nil
}

// selfCPU is the user and system CPU this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pgbenchRun runs the raw point SELECT with pgbench and returns its tps.
func pgbenchRun(ctx context.Context, c *localpg.Cluster, script, mode string, conc int, d time.Duration) (float64, error) {
	bin, err := pgbenchPath()
	if err != nil {
		return 0, err
	}
	port := clusterPort(c)
	cmd := exec.CommandContext(ctx, bin, "-n", "-M", mode, "-c", strconv.Itoa(conc), "-j", "2",
		"-T", strconv.Itoa(max(1, int(d.Seconds()))), "-f", script,
		"-h", c.SocketDir(), "-p", port, "-U", "postgres", dataset.DBName)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench printed no tps:\n%s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// pgbenchPath finds pgbench next to the PostgreSQL binaries localpg uses.
func pgbenchPath() (string, error) {
	if dir, err := localpg.FindBinaries(); err == nil {
		if p := filepath.Join(dir, "pgbench"); fileExists(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p, nil
	}
	return "", errors.New("pgbench not found (Debian: apt-get install postgresql-15, which ships it in /usr/lib/postgresql/15/bin)")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// measure runs the rounds: in each, for each concurrency and query, every
// server in turn (the order alternating between rounds), then pgbench.
// It returns the req/s (tx/s for pgbench) of each configuration and, for
// the servers, the load generator's CPU per request in µs.
func measure(ctx context.Context, o options, servers []*server, c *localpg.Cluster) (res, gen results, err error) {
	pointBodies := func(s *server) [][]byte {
		r := rand.New(rand.NewPCG(1, 2))
		b := make([][]byte, 4096)
		for i := range b {
			b[i] = body(s.queries.point, map[string]any{"id": dataset.JobID(1 + r.IntN(dataset.JobCount))})
		}
		return b
	}
	bodies := map[string]map[string][][]byte{}
	for _, s := range servers {
		bodies[s.name] = map[string][][]byte{"list": {body(s.queries.list, nil)}, "point": pointBodies(s)}
	}
	script, err := os.CreateTemp("", "fgpeer-*.sql")
	if err != nil {
		return nil, nil, err
	}
	defer os.Remove(script.Name())
	if _, err := io.WriteString(script, rawPoint); err != nil {
		return nil, nil, err
	}
	script.Close()

	if o.warmup > 0 {
		logf("warming up (%s per server and query)", o.warmup)
		for _, s := range servers {
			for _, q := range []string{"list", "point"} {
				if _, _, err := loadRun(ctx, s, bodies[s.name][q], 8, o.warmup, o.netHTTP); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	res, gen = results{}, results{}
	for round := range o.rounds {
		order := slices.Clone(servers)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, conc := range o.concurrency {
			for _, q := range []string{"list", "point"} {
				for _, s := range order {
					rps, cpu, err := loadRun(ctx, s, bodies[s.name][q], conc, o.duration, o.netHTTP)
					if err != nil {
						return nil, nil, err
					}
					logf("round %d  c=%-3d %-5s %-14s %8.0f req/s  (load generator %.0f µs/request)", round+1, conc, q, s.name, rps, cpu)
					k := key{s.name, q, conc}
					res[k] = append(res[k], rps)
					gen[k] = append(gen[k], cpu)
				}
			}
			for _, mode := range []string{"simple", "prepared"} {
				tps, err := pgbenchRun(ctx, c, script.Name(), mode, conc, o.duration)
				if err != nil {
					return nil, nil, err
				}
				name := "pgbench " + mode
				logf("round %d  c=%-3d point %-14s %8.0f tx/s", round+1, conc, name, tps)
				k := key{name, "point", conc}
				res[k] = append(res[k], tps)
			}
		}
	}
	return res, gen, nil
}

// printReport prints the req/s ranges and the per-round ratios as Markdown.
func printReport(w io.Writer, o options, servers []*server, res, gen results) {
	client := "lean connections (package loadclient)"
	if o.netHTTP {
		client = "net/http's Client"
	}
	fmt.Fprintf(w, "%d rounds of %s per run, servers interleaved, load sent through %s; req/s and the load generator's own CPU per request as min–max (median) over rounds.\n\n", o.rounds, o.duration, client)
	fmt.Fprintln(w, "| query | clients | target | req/s | generator µs/request |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	targets := []string{}
	for _, s := range servers {
		targets = append(targets, s.name)
	}
	for _, q := range []string{"list", "point"} {
		for _, conc := range o.concurrency {
			ts := targets
			if q == "point" {
				ts = append(slices.Clone(targets), "pgbench simple", "pgbench prepared")
			}
			for _, t := range ts {
				cpu := "–" // pgbench is its own client
				if g := gen[key{t, q, conc}]; len(g) > 0 {
					cpu = span(g, "%.0f")
				}
				fmt.Fprintf(w, "| %s | %d | %s | %s | %s |\n", q, conc, t, span(res[key{t, q, conc}], "%.0f"), cpu)
			}
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Ratios, computed per round (same round, adjacent runs), min–max (median):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| ratio | clients | value |")
	fmt.Fprintln(w, "|---|---|---|")
	ratio := func(name, q, a, b string) {
		for _, conc := range o.concurrency {
			x, y := res[key{a, q, conc}], res[key{b, q, conc}]
			if len(x) == 0 || len(y) == 0 {
				continue
			}
			r := make([]float64, min(len(x), len(y)))
			for i := range r {
				r[i] = x[i] / y[i]
			}
			fmt.Fprintf(w, "| %s | %d | %s |\n", name, conc, span(r, "%.2f"))
		}
	}
	ratio("list: Fleetgraph / baseline", "list", "Fleetgraph", baselineName)
	ratio("point: Fleetgraph / baseline", "point", "Fleetgraph", baselineName)
	ratio("list: Fleetgraph / PostGraphile", "list", "Fleetgraph", "PostGraphile")
	ratio("point: Fleetgraph / PostGraphile", "point", "Fleetgraph", "PostGraphile")
	ratio("point: Fleetgraph / raw SELECT, simple protocol", "point", "Fleetgraph", "pgbench simple")
	ratio("point: Fleetgraph / raw SELECT, prepared", "point", "Fleetgraph", "pgbench prepared")
	ratio("point: PostGraphile / raw SELECT, prepared", "point", "PostGraphile", "pgbench prepared")
	if len(o.concurrency) >= 2 {
		lo, hi := o.concurrency[0], o.concurrency[len(o.concurrency)-1]
		for _, t := range targets {
			x, y := res[key{t, "list", hi}], res[key{t, "list", lo}]
			r := make([]float64, min(len(x), len(y)))
			for i := range r {
				r[i] = x[i] / y[i]
			}
			fmt.Fprintf(w, "| list: %s c=%d / c=%d | – | %s |\n", t, hi, lo, span(r, "%.2f"))
		}
	}
}

// span formats values as "min–max (median)".
func span(v []float64, f string) string {
	if len(v) == 0 {
		return "–"
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return fmt.Sprintf(f+"–"+f+" ("+f+")", s[0], s[len(s)-1], med)
}
