package main

import (
	"fleetgraph/bench/peer/dataset"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"syscall"
	"time"
)

// PostGraphile's spelling of the benchmark queries (dataset.List and
// dataset.Point are Fleetgraph's). Aliases give PostGraphile's answers Fleetgraph's
// field names (the Amber preset names a table's id column rowId, keeping id
// for the global Node ID); timestamps are normalised before the comparison.
const (
	pgList = `query List { robots: allRobots(first: 50, orderBy: [CREATED_AT_DESC, PRIMARY_KEY_DESC], condition: {tenantId: "` + dataset.TenantID + `"}) { edges { node {
  id: rowId name hostname status capabilities maxConcurrentJobs createdAt
  currentJobs: currentJobsList { id: rowId status priority progress attempt claimedAt workflow: workflowByWorkflowId { name } } } } } }`
	pgPoint = `query Point($id: UUID!) { job: jobByRowId(rowId: $id) { id: rowId status priority progress attempt input createdAt robot: robotByRobotId { name } } }`
)

// rawPoint is the point query's SELECT for pgbench: the same columns, the
// robot's name joined in, scoped by tenant as the store scopes it.
var rawPoint = `\set n random(1, ` + fmt.Sprint(dataset.JobCount) + `)
SELECT j.id, j.status, j.priority, j.progress, j.attempt, j.input, j.created_at, r.name
FROM jobs j LEFT JOIN robots r ON r.id = j.robot_id AND r.tenant_id = j.tenant_id
WHERE j.id = ` + strings.Replace(dataset.IDExpr(3, ":n"), "(:n)", "(:n::int)", 1) + ` AND j.tenant_id = '` + dataset.TenantID + `'::uuid;
`

// queries are a server's spelling of the benchmark queries; probe succeeds
// only on the server the harness started (Fleetgraph's needs the token signed
// with this run's secret), not on another one that took its port.
type queries struct{ list, point, probe string }

var (
	fleetgraphQueries   = queries{list: dataset.List, point: dataset.Point, probe: `{ robots(first: 1) { totalCount } }`}
	postgraphileQueries = queries{list: pgList, point: pgPoint, probe: `{ allRobots(first: 1) { totalCount } }`}
)

// errExited reports a server process that ended before it answered.
var errExited = errors.New("exited before it answered")

// launch starts a server on a free loopback port and waits until it
// answers, and sets s.url. A port is free only until someone takes it: a
// server that exits before answering (its port was taken) is started again
// on another port, up to three times.
func launch(ctx context.Context, s *server, start func(port int) (*process, error)) (*process, error) {
	var err error
	for range 3 {
		var port int
		if port, err = freePort(); err != nil {
			return nil, err
		}
		s.url = fmt.Sprintf("http://127.0.0.1:%d/graphql", port)
		var p *process
		if p, err = start(port); err != nil {
			return nil, err
		}
		if err = s.waitReady(ctx, p, 90*time.Second); err == nil {
			return p, nil
		}
		p.stop()
		if !errors.Is(err, errExited) {
			return nil, err
		}
		logf("%v; trying another port", err)
	}
	return nil, err
}

// server is one GraphQL server under test.
type server struct {
	name, url, token string
	queries          queries
}

// body is the JSON request body of a query.
func body(query string, vars map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"query": query, "variables": vars})
	return b
}

// post sends one request and returns the response body.
func (s *server) post(ctx context.Context, c *http.Client, b []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return out, s.check(resp.StatusCode, out)
}

// check refuses an answer that is not a 200 or carries GraphQL errors.
func (s *server) check(status int, out []byte) error {
	if status != http.StatusOK || bytes.Contains(out, []byte(`"errors"`)) {
		return fmt.Errorf("%s: HTTP %d: %.500s", s.name, status, out)
	}
	return nil
}

// waitReady polls the server with its probe query until it answers, p
// exits, or limit passes.
func (s *server) waitReady(ctx context.Context, p *process, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	c := &http.Client{Timeout: 5 * time.Second}
	var last error
	for {
		if _, last = s.post(ctx, c, body(s.queries.probe, nil)); last == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s %w (log: %s)", s.name, errExited, p.log.Name())
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer within %s: %v", s.name, limit, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkSameData compares the answers of every server to the first one's,
// for the list and for a few point queries.
func checkSameData(ctx context.Context, servers []*server) error {
	c := &http.Client{Timeout: 30 * time.Second}
	type probe struct {
		what string
		vars map[string]any
		list bool
	}
	probes := []probe{{what: "list", list: true}}
	for _, n := range []int{1, 1500, 2001, 50000, dataset.JobCount} {
		probes = append(probes, probe{what: "point " + dataset.JobID(n), vars: map[string]any{"id": dataset.JobID(n)}})
	}
	for _, p := range probes {
		var want any
		for i, s := range servers {
			q := s.queries.point
			if p.list {
				q = s.queries.list
			}
			out, err := s.post(ctx, c, body(q, p.vars))
			if err != nil {
				return err
			}
			var got any
			if err := json.Unmarshal(out, &got); err != nil {
				return fmt.Errorf("%s: %v", s.name, err)
			}
			got = normalise(got)
			if p.list {
				if n := countJobs(got); n != 100 {
					return fmt.Errorf("%s: the list holds %d current jobs, not 100 (50 robots with 2 each)", s.name, n)
				}
			}
			if i == 0 {
				want = got
				continue
			}
			if !reflect.DeepEqual(want, got) {
				w, _ := json.Marshal(want)
				g, _ := json.Marshal(got)
				return fmt.Errorf("%s and %s differ on the %s query:\n%s\n%.2000s\n%.2000s", servers[0].name, s.name, p.what, servers[0].name, w, g)
			}
		}
	}
	return nil
}

// normalise rewrites timestamps in UTC with Go's RFC 3339 formatting.
func normalise(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalise(e)
		}
	case []any:
		for i, e := range x {
			x[i] = normalise(e)
		}
	case string:
		if t, err := time.Parse(time.RFC3339Nano, x); err == nil {
			return t.UTC().Format(time.RFC3339Nano)
		}
	}
	return v
}

// countJobs counts the currentJobs entries of a normalised list answer.
func countJobs(v any) int {
	n := 0
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if l, ok := e.([]any); ok && k == "currentJobs" {
				n += len(l)
			} else {
				n += countJobs(e)
			}
		}
	case []any:
		for _, e := range x {
			n += countJobs(e)
		}
	}
	return n
}

// process is a server started by the harness.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{} // closed once the process has been reaped
}

// startProcess runs bin in dir with env added, its output in logPath.
func startProcess(ctx context.Context, name, dir, logPath, bin string, args, env []string) (*process, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	logf("started %s (pid %d, log %s)", name, cmd.Process.Pid, logPath)
	p := &process{name: name, cmd: cmd, log: f, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	go func() {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
		case <-p.exited:
		}
	}()
	return p, nil
}

// stop ends the process: SIGTERM, then SIGKILL after 10 s.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	p.log.Close()
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
