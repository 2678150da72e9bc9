package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// server is a fleetgraph child process with its own DATA_DIR.
type server struct {
	owner bool // started the data folder (and its PostgreSQL); removes it at stop
	cmd   *exec.Cmd
	pid   int
	dir   string
	wsURL string
	// metricsURL is the first server's /metrics (its request timings).
	metricsURL string
	secret     string
	exited     chan struct{}
	logPath    string
}

// startServer builds (unless -server-bin) and starts `fleetgraph serve` on
// a free loopback port with a private DATA_DIR, and waits until it is ready.
// With shared set (the first server's folder), it starts another replica
// over the same data folder instead: it attaches to the first server's
// PostgreSQL and shares its JWT secret, and its stop leaves the folder.
func startServer(ctx context.Context, o options, stderr io.Writer, shared string) (*server, error) {
	dir := shared
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "loadsubs"); err != nil {
			return nil, err
		}
		// As root, the private PostgreSQL runs as postgres and must reach DATA_DIR/postgres.
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, err
		}
	}
	bin := o.serverBin
	if bin == "" && shared != "" {
		bin = filepath.Join(dir, "fleetgraph")
	} else if bin == "" {
		bin = filepath.Join(dir, "fleetgraph")
		fmt.Fprintln(stderr, "loadsubs: building the server")
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
		build.Dir, build.Stdout, build.Stderr = o.src, stderr, stderr
		if err := build.Run(); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("building the server in %s: %w", o.src, err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	_ = ln.Close()

	s := &server{dir: dir, owner: shared == "", wsURL: "ws://" + addr + "/graphql", exited: make(chan struct{}), logPath: filepath.Join(dir, "server-"+strings.ReplaceAll(addr, ":", "-")+".log")}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(bin, "serve", "--listen", addr, "--data-dir", filepath.Join(dir, "data"),
		"--log-level", "warn", "--playground=false")
	var env []string
	for _, kv := range os.Environ() {
		// GOMAXPROCS is this tool's setting (its readers against its
		// drivers), not the server's.
		if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "JWT_SECRET=") && !strings.HasPrefix(kv, "GOMAXPROCS=") {
			env = append(env, kv)
		}
	}
	if os.Getenv("MAX_SUBSCRIPTIONS_PER_PRINCIPAL") == "" {
		// Every subscriber is the same user: the default per-caller quota
		// (500) would refuse all but the first few hundred.
		env = append(env, fmt.Sprintf("MAX_SUBSCRIPTIONS_PER_PRINCIPAL=%d", o.subscribers+100))
	}
	if os.Getenv("MAX_WEBSOCKETS_PER_CALLER") == "" {
		// The same: one user's socket per subscriber.
		env = append(env, fmt.Sprintf("MAX_WEBSOCKETS_PER_CALLER=%d", o.subscribers+100))
	}
	if os.Getenv("MAX_WEBSOCKETS") == "" {
		// Half the open-file limit by default, which 10,000 subscribers
		// may reach here: the tool measures the fan-out, not the cap.
		env = append(env, fmt.Sprintf("MAX_WEBSOCKETS=%d", o.subscribers+100))
	}
	if shared != "" {
		env = append(env, "METRICS_ADDR=off") // the first server's are enough
	} else {
		mln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		maddr := mln.Addr().String()
		_ = mln.Close()
		env = append(env, "METRICS_ADDR="+maddr)
		s.metricsURL = "http://" + maddr + "/metrics"
	}
	s.cmd.Env = env
	s.cmd.Stdout, s.cmd.Stderr = io.Discard, logFile
	// The server dies with this tool, whatever happens to it.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := s.cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	s.pid = s.cmd.Process.Pid
	go func() {
		_ = s.cmd.Wait()
		_ = logFile.Close()
		close(s.exited)
	}()
	fmt.Fprintf(stderr, "loadsubs: server pid %d on %s, DATA_DIR %s\n", s.pid, addr, dir)

	// The first start runs initdb: allow two minutes.
	ready, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ready, http.MethodGet, "http://"+addr+"/readyz", nil)
		if res, err := http.DefaultClient.Do(req); err == nil {
			_ = res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("the server exited before it was ready; its log: %s", s.logPath)
		case <-ready.Done():
			s.stop(stderr)
			return nil, fmt.Errorf("the server was not ready within 2 minutes; its log: %s", s.logPath)
		case <-tick.C:
		}
	}
	secret, err := os.ReadFile(filepath.Join(dir, "data", "jwt-secret"))
	if err != nil {
		s.stop(stderr)
		return nil, fmt.Errorf("reading the server's JWT secret: %w", err)
	}
	s.secret = strings.TrimSpace(string(secret))
	return s, nil
}

// stop interrupts the server (the first stops its PostgreSQL) and, for the
// first, removes DATA_DIR.
func (s *server) stop(stderr io.Writer) {
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.exited:
	case <-time.After(60 * time.Second):
		fmt.Fprintln(stderr, "loadsubs: the server did not stop within a minute; killing it")
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	if log, err := os.ReadFile(s.logPath); err == nil && len(log) > 0 {
		fmt.Fprintf(stderr, "loadsubs: server log (warnings and errors):\n%s", tail(string(log), 20))
	}
	if s.owner {
		_ = os.RemoveAll(s.dir)
	}
}

func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}

// memory is a process's resident memory, from /proc/<pid>/status.
type memory struct {
	RSS  int64 `json:"rssBytes"`  // VmRSS
	Peak int64 `json:"peakBytes"` // VmHWM
}

// readMemory sums the memory of processes pids.
func readMemory(pids ...int) (memory, error) {
	var sum memory
	for _, pid := range pids {
		m, err := readMemoryOf(pid)
		if err != nil {
			return sum, err
		}
		sum.RSS, sum.Peak = sum.RSS+m.RSS, sum.Peak+m.Peak
	}
	return sum, nil
}

func readMemoryOf(pid int) (memory, error) {
	var m memory
	if pid <= 0 {
		return m, errors.New("no server pid")
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return m, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) != 2 || fields[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			m.RSS = n << 10
		case "VmHWM":
			m.Peak = n << 10
		}
	}
	return m, sc.Err()
}
