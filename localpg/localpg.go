// Package localpg runs a private PostgreSQL cluster from the machine's own
// server binaries: for the server when DATABASE_URL is unset, and for the test
// helper that gives each test its own database.
//
// The package owns one data folder per cluster. Start creates it with initdb
// when needed, then either attaches to a postmaster already running on it or
// starts one that listens only on a unix socket inside the folder (no TCP
// port, so it never clashes with another server). Stop shuts down only a
// postmaster this process started. On Linux the postmaster also gets an
// immediate shutdown if this process dies without calling Stop.
package localpg

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrSocketPathTooLong is returned (wrapped) by Start when the unix socket
// path inside Dir would exceed the kernel's limit.
var ErrSocketPathTooLong = errors.New("unix socket path too long")

const (
	// maxSocketPath is the longest unix socket path: sockaddr_un.sun_path is
	// 108 bytes on Linux, including the terminating NUL.
	maxSocketPath = 107
	// defaultPort names the socket file (.s.PGSQL.5432); no TCP port is opened.
	defaultPort = "5432"
	// pollInterval is how often Start and Stop look at the postmaster's state.
	pollInterval = 20 * time.Millisecond
	// quitGrace is how long an immediate shutdown may take before SIGKILL.
	quitGrace = 10 * time.Second
	// logTailLines is how much of postgres.log a start failure quotes.
	logTailLines = 20
)

// Options configures Start.
type Options struct {
	// Dir is the cluster's data folder, e.g. ".data/postgres"; it is created
	// if missing. Its absolute path must stay under about 90 bytes because
	// the unix socket lives in it.
	Dir string
	// Logger receives progress messages (initdb, start, attach, stop); nil
	// discards them.
	Logger *slog.Logger
	// Settings are extra postgresql.conf settings passed as -c flags at start,
	// e.g. for tests {"fsync": "off", "synchronous_commit": "off",
	// "full_page_writes": "off"}. With fsync off, initdb also skips its sync.
	Settings map[string]string
	// BinDir holds initdb and postgres; empty means FindBinaries.
	BinDir string
}

// Cluster is a running PostgreSQL cluster reachable over a unix socket.
type Cluster struct {
	dir       string
	socketDir string
	port      int
	pid       int
	logger    *slog.Logger
	// proc and exited are set only when this process started the postmaster;
	// exited is closed once it has been reaped.
	proc   *os.Process
	exited chan struct{}
}

// Start returns a running cluster for opts.Dir, creating and starting it as
// needed, and waits as long as ctx allows for it to accept connections. Give
// ctx a deadline: a fresh cluster takes a few seconds (initdb), a cluster
// that was killed may first run crash recovery.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.Dir == "" {
		return nil, errors.New("starting local PostgreSQL: Options.Dir is empty; set it to the cluster's folder, e.g. .data/postgres")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolving PostgreSQL folder %q: %w", opts.Dir, err)
	}
	port := defaultPort
	if p, ok := opts.Settings["port"]; ok {
		port = p
	}
	if sock := socketPath(dir, port); len(sock) > maxSocketPath {
		return nil, fmt.Errorf("starting local PostgreSQL in %s: its socket %s would be %d bytes, over the %d-byte unix socket limit (%w); use a shorter folder, e.g. under /tmp",
			dir, sock, len(sock), maxSocketPath, ErrSocketPathTooLong)
	}

	binDir := opts.BinDir
	if binDir == "" {
		if binDir, err = FindBinaries(); err != nil {
			return nil, err
		}
	}
	acct, err := serverAccount()
	if err != nil {
		return nil, err
	}

	// Serialize Starts on this folder across processes, so two of them
	// racing on an empty folder do not both run initdb or start a postmaster.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("creating the parent of PostgreSQL folder %s: %w", dir, err)
	}
	unlock, err := lockFile(ctx, dir+".lock")
	if err != nil {
		return nil, err
	}
	defer unlock()

	if err := prepareDir(dir, acct); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
		if err := initdb(ctx, binDir, dir, acct, opts.Settings, logger); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("checking whether %s holds a PostgreSQL cluster: %w", dir, err)
	}

	c, err := attach(ctx, dir, logger)
	if c != nil || err != nil {
		return c, err
	}
	return startPostmaster(ctx, binDir, dir, acct, opts.Settings, logger)
}

// DSN returns a lib/pq key=value connection string for database over the
// unix socket, as the postgres superuser. An empty database leaves dbname
// out, so the server uses the user's name.
func (c *Cluster) DSN(database string) string {
	parts := []string{"host=" + dsnValue(c.socketDir), "port=" + strconv.Itoa(c.port), "user=postgres"}
	if database != "" {
		parts = append(parts, "dbname="+dsnValue(database))
	}
	return strings.Join(append(parts, "sslmode=disable"), " ")
}

// SocketDir returns the folder holding the cluster's unix socket.
func (c *Cluster) SocketDir() string { return c.socketDir }

// Dir returns the cluster's absolute data folder.
func (c *Cluster) Dir() string { return c.dir }

// Owned reports whether this process started the postmaster, and so whether
// Stop will shut it down.
func (c *Cluster) Owned() bool { return c.proc != nil }

// Stop shuts down a postmaster this process started with a fast shutdown
// (SIGINT: sessions are ended, then a checkpoint) and waits for it to exit.
// If ctx ends first it falls back to an immediate shutdown (SIGQUIT), which is
// safe but makes the next start run crash recovery. Stop does nothing for an
// attached cluster and removes no files. Pass a context that is not already
// done, e.g. a fresh one with a timeout during shutdown.
func (c *Cluster) Stop(ctx context.Context) error {
	if !c.Owned() {
		return nil
	}
	select {
	case <-c.exited:
		return nil
	default:
	}
	c.logger.Info("stopping PostgreSQL", "dir", c.dir, "pid", c.pid)
	if err := c.proc.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping PostgreSQL (pid %d): %w", c.pid, err)
	}
	select {
	case <-c.exited:
		return nil
	case <-ctx.Done():
	}
	c.quit()
	return fmt.Errorf("stopping PostgreSQL in %s: fast shutdown did not finish in time, so it was stopped immediately and the next start will run crash recovery: %w", c.dir, ctx.Err())
}

// quit stops the postmaster immediately (SIGQUIT) and, should even that hang,
// kills its whole process group; it returns once the postmaster is reaped.
func (c *Cluster) quit() {
	_ = c.proc.Signal(syscall.SIGQUIT)
	select {
	case <-c.exited:
	case <-time.After(quitGrace):
		_ = syscall.Kill(-c.pid, syscall.SIGKILL)
		<-c.exited
	}
}

// socketPath is the path of the socket a postmaster on port creates in dir.
func socketPath(dir, port string) string {
	return filepath.Join(dir, ".s.PGSQL."+port)
}

// dsnValue quotes v for a key=value DSN when it is empty or has characters
// that would otherwise end or escape it.
func dsnValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n'\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// lockFile takes an exclusive flock on path, polling until ctx ends, and
// returns the function that releases it.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file %s: %w", path, err)
	}
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("waiting for another process starting the same PostgreSQL cluster to release %s: %w", path, ctx.Err())
		case <-ticker.C:
		}
	}
}

// prepareDir creates dir with the 0700 mode PostgreSQL insists on and, when
// the server runs as another user, hands dir to it after checking it can get
// there.
func prepareDir(dir string, acct *account) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating PostgreSQL folder %s: %w", dir, err)
	}
	if acct != nil {
		if err := acct.checkReachable(dir); err != nil {
			return err
		}
		if err := acct.chownTree(dir); err != nil {
			return err
		}
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("inspecting PostgreSQL folder %s: %w", dir, err)
	}
	// PostgreSQL accepts 0700 and 0750 (group read access) and nothing wider.
	if perm := fi.Mode().Perm(); perm != 0o700 && perm != 0o750 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("restricting PostgreSQL folder %s to mode 0700: %w", dir, err)
		}
	}
	return nil
}

// initdb creates a cluster in the empty folder dir with trust authentication
// for the postgres superuser, UTF8, C collation (fast, and the same sorting
// on every machine) and C.UTF-8 character classes, so that lower() and ILIKE
// fold non-ASCII letters (case-insensitive uniqueness of "École" and
// "école"). Where C.UTF-8 does not exist it falls back to plain C.
func initdb(ctx context.Context, binDir, dir string, acct *account, settings map[string]string, logger *slog.Logger) error {
	err := runInitdb(ctx, binDir, dir, acct, settings, logger, "C.UTF-8")
	if err != nil && strings.Contains(err.Error(), "C.UTF-8") {
		logger.Warn("the C.UTF-8 locale is missing; case-insensitive names fold ASCII only", "error", err)
		err = runInitdb(ctx, binDir, dir, acct, settings, logger, "C")
	}
	return err
}

func runInitdb(ctx context.Context, binDir, dir string, acct *account, settings map[string]string, logger *slog.Logger, ctype string) error {
	logger.Info("creating PostgreSQL cluster", "dir", dir, "bin", binDir)
	args := []string{"-D", dir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--lc-ctype=" + ctype}
	if settings["fsync"] == "off" {
		args = append(args, "--no-sync") // durability was waived anyway
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"), args...)
	cmd.Dir = dir
	// SIGTERM lets initdb clean up what it wrote, so a later Start can retry.
	cmd.SysProcAttr = sysProcAttr(acct, syscall.SIGTERM)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = quitGrace
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("creating a PostgreSQL cluster in %s with initdb: %w; fix the cause below, or empty the folder if it holds something else:\n%s",
			dir, err, lastLines(string(out), logTailLines))
	}
	return nil
}

// attach returns the postmaster already running on dir, waiting for it to
// accept connections, or nil when there is none. A postmaster.pid left by a
// killed postmaster whose pid now belongs to an unrelated process is
// removed, since PostgreSQL would refuse to start over it.
func attach(ctx context.Context, dir string, logger *slog.Logger) (*Cluster, error) {
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		pf, err := readPidFile(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		switch postmasterState(pf.pid, dir) {
		case pidDead:
			return nil, nil // postgres itself replaces a pid file of a dead process
		case pidReused:
			logger.Warn("removing stale postmaster.pid whose pid now belongs to another process", "dir", dir, "pid", pf.pid)
			if err := os.Remove(filepath.Join(dir, "postmaster.pid")); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("removing stale %s: %w", filepath.Join(dir, "postmaster.pid"), err)
			}
			return nil, nil
		}
		if pf.accepting() {
			logger.Info("attached to running PostgreSQL", "dir", dir, "pid", pf.pid)
			return &Cluster{dir: dir, socketDir: pf.socketDir, port: pf.port, pid: pf.pid, logger: logger}, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the PostgreSQL already running on %s (pid %d, status %q) to accept connections on a unix socket: %w; stop it (pg_ctl stop -D %s) or give it more time",
				dir, pf.pid, pf.status, ctx.Err(), dir)
		case <-ticker.C:
		}
	}
}

// startPostmaster starts postgres on dir listening only on a unix socket in
// dir, logging to dir/postgres.log, and waits until it accepts connections.
// On failure it makes sure the postmaster is gone and quotes the log.
func startPostmaster(ctx context.Context, binDir, dir string, acct *account, settings map[string]string, logger *slog.Logger) (*Cluster, error) {
	logPath := filepath.Join(dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening PostgreSQL log %s: %w", logPath, err)
	}
	defer logFile.Close() // the child has its own copy once started
	if acct != nil {
		if err := logFile.Chown(int(acct.uid), int(acct.gid)); err != nil {
			return nil, fmt.Errorf("giving %s to the %s user: %w", logPath, acct.name, err)
		}
	}

	args := []string{"-D", dir, "-k", dir, "-c", "listen_addresses="}
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", k+"="+settings[k])
	}
	cmd := exec.Command(filepath.Join(binDir, "postgres"), args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = sysProcAttr(acct, syscall.SIGQUIT) // SIGQUIT: immediate shutdown
	logger.Info("starting PostgreSQL", "dir", dir, "log", logPath)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	c := &Cluster{dir: dir, pid: cmd.Process.Pid, logger: logger, proc: cmd.Process, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait() // the exit status is in postgres.log
		close(c.exited)
	}()

	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		if pf, err := readPidFile(dir); err == nil && pf.pid == c.pid && pf.accepting() {
			c.socketDir, c.port = pf.socketDir, pf.port
			logger.Info("PostgreSQL ready", "dir", dir, "pid", c.pid, "socket_dir", c.socketDir)
			return c, nil
		}
		select {
		case <-c.exited:
			return nil, fmt.Errorf("starting PostgreSQL in %s: postgres exited before accepting connections; fix the cause in %s, last lines:\n%s",
				dir, logPath, tailFile(logPath))
		case <-ctx.Done():
			c.quit()
			return nil, fmt.Errorf("starting PostgreSQL in %s: %w before it accepted connections; see %s, last lines:\n%s",
				dir, ctx.Err(), logPath, tailFile(logPath))
		case <-ticker.C:
		}
	}
}

// pidFile is what postmaster.pid says about the postmaster using a data
// folder. PostgreSQL writes it line by line as startup proceeds.
type pidFile struct {
	pid       int
	port      int
	socketDir string
	status    string // "starting", "ready", "standby" or "stopping"
}

// readPidFile parses dir/postmaster.pid; missing lines stay zero.
func readPidFile(dir string) (pidFile, error) {
	data, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return pidFile{}, fmt.Errorf("reading postmaster.pid of %s: %w", dir, err)
	}
	// Lines: pid, data dir, start time, port, first socket dir, listen
	// address, shared memory key, status (padded with spaces).
	lines := strings.Split(string(data), "\n")
	line := func(i int) string {
		if i < len(lines) {
			return strings.TrimSpace(lines[i])
		}
		return ""
	}
	var pf pidFile
	pf.pid, _ = strconv.Atoi(line(0))
	pf.port, _ = strconv.Atoi(line(3))
	pf.socketDir = line(4)
	pf.status = line(7)
	return pf, nil
}

// accepting reports whether the postmaster says it is ready and its unix
// socket takes a connection. Dialing without speaking is harmless: the
// backend forked for it exits quietly when it sees no startup packet.
func (pf pidFile) accepting() bool {
	if (pf.status != "ready" && pf.status != "standby") || pf.socketDir == "" || pf.port == 0 {
		return false
	}
	conn, err := net.DialTimeout("unix", socketPath(pf.socketDir, strconv.Itoa(pf.port)), time.Second)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// pidState classifies the pid recorded in a postmaster.pid.
type pidState int

const (
	pidDead    pidState = iota // no such process: the file is stale
	pidReused                  // a live process that is not this folder's postmaster
	pidRunning                 // the postmaster (or as far as we can tell)
)

// postmasterState tells a live postmaster of dir from a stale pid. A
// postmaster and its children run in their data folder, so a live pid whose
// working directory is elsewhere was reused after a crash.
func postmasterState(pid int, dir string) pidState {
	if pid <= 0 || errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return pidDead
	}
	cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
	if err != nil {
		return pidRunning // no /proc or not ours to inspect: trust the pid, as PostgreSQL does
	}
	if resolved, err := filepath.EvalSymlinks(dir); err == nil && cwd != resolved {
		return pidReused
	}
	return pidRunning
}

// tailFile returns the last lines of the file at path, or a note on why it
// could not be read.
func tailFile(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", path, err)
	}
	return lastLines(string(data), logTailLines)
}

// lastLines returns at most n trailing lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
