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
//
// With Options.Supervise the cluster is kept up until Stop: a postmaster this
// process started is restarted when it dies, and when the postmaster it
// attached to goes away (its owner stopped or crashed), this process starts a
// new one and owns it from then on (see supervise.go).
package localpg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// errOldBackends is returned (wrapped) by startPostmaster when postgres
// refused to start because backends of a postmaster killed with SIGKILL
// still hold its shared memory. They exit within moments of noticing that
// their postmaster is gone, so a start retries shortly after.
var errOldBackends = errors.New("backends of a killed postmaster still hold its shared memory")

// oldBackendsMessage is how postgres reports errOldBackends in its log.
const oldBackendsMessage = "pre-existing shared memory block"

// ErrSocketPathTooLong is returned (wrapped) by Start when the unix socket
// path inside Dir would exceed the kernel's limit.
var ErrSocketPathTooLong = errors.New("unix socket path too long")

// ErrNoCluster is returned (wrapped) by Start with Options.Existing when
// Dir holds no cluster.
var ErrNoCluster = errors.New("no PostgreSQL cluster")

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
	// Supervise keeps the cluster running until Stop: a postmaster that dies
	// is started again (after a backoff from 100 ms doubling to 5 s, each
	// attempt logged), and a postmaster this process merely attached to is
	// replaced by one it starts and owns once the original goes away. Leave
	// it off where a stopped cluster must stay stopped, as in tests of
	// outages.
	Supervise bool
	// Existing uses a cluster that is already there and creates nothing:
	// Start returns ErrNoCluster (wrapped) for a Dir that holds none,
	// instead of running initdb, and leaves the folder as it is.
	Existing bool
}

// Cluster is a PostgreSQL cluster reachable over a unix socket. Its
// postmaster may change over time when the cluster is supervised.
type Cluster struct {
	dir      string
	binDir   string
	acct     *account
	settings map[string]string
	logger   *slog.Logger

	mu sync.Mutex
	pm *postmaster // the postmaster serving the cluster now, or last

	// cancelSupervise and supervised are set when Options.Supervise is:
	// Stop calls the one and waits for the other to be closed.
	cancelSupervise context.CancelFunc
	supervised      chan struct{}
}

// postmaster is one PostgreSQL server process running on the cluster.
type postmaster struct {
	pid       int
	socketDir string
	port      int
	// proc and exited are set only when this process started the postmaster;
	// exited is closed once it has been reaped, and waitErr (how it ended)
	// is set before.
	proc    *os.Process
	exited  chan struct{}
	waitErr error
}

// Start returns a running cluster for opts.Dir, creating and starting it as
// needed, and waits as long as ctx allows for it to accept connections. Give
// ctx a deadline: a fresh cluster takes a few seconds (initdb), a cluster
// that was killed may first run crash recovery, and Start waits for the
// backends of a killed postmaster to exit (PostgreSQL refuses to start while
// they hold its shared memory).
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
	if opts.Existing {
		// Checked before anything is created, the parent folder and the
		// lock file included. (A cluster removed after this check is
		// reported by launch, which does not create one either.)
		if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s holds %w", dir, ErrNoCluster)
		} else if err != nil {
			return nil, fmt.Errorf("checking whether %s holds a PostgreSQL cluster: %w", dir, err)
		}
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
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("creating the parent of PostgreSQL folder %s: %w", dir, err)
	}

	c := &Cluster{dir: dir, binDir: binDir, acct: acct, settings: opts.Settings, logger: logger}
	for delay := firstRestartDelay; ; delay = min(2*delay, maxRestartDelay) {
		if c.pm, err = c.launch(ctx, !opts.Existing); !errors.Is(err, errOldBackends) {
			break
		}
		if delay == firstRestartDelay {
			logger.Info("waiting for the backends of a killed PostgreSQL to exit", "dir", dir)
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(delay):
		}
	}
	if err != nil {
		return nil, err
	}
	if opts.Supervise {
		// The supervisor outlives Start's ctx (often a start deadline); Stop
		// ends it.
		sctx, cancel := context.WithCancel(context.Background())
		c.cancelSupervise, c.supervised = cancel, make(chan struct{})
		go c.supervise(sctx)
	}
	return c, nil
}

// launch attaches to the postmaster running on the cluster or starts one.
// create also makes the folder and runs initdb where needed; a restart
// passes false, so that a folder deleted under a running server is reported
// rather than silently replaced by an empty cluster.
func (c *Cluster) launch(ctx context.Context, create bool) (*postmaster, error) {
	// Serialize launches on this folder across processes, so two of them
	// racing on an empty folder (or on a dead postmaster) do not both run
	// initdb or start a postmaster.
	unlock, err := lockFile(ctx, c.dir+".lock")
	if err != nil {
		return nil, err
	}
	defer unlock()

	if create {
		if err := prepareDir(c.dir, c.acct); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(c.dir, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
		if !create {
			return nil, fmt.Errorf("restarting PostgreSQL: %s no longer holds a cluster (PG_VERSION is gone); restore the folder, or restart the server to create an empty cluster", c.dir)
		}
		if err := initdb(ctx, c.binDir, c.dir, c.acct, c.settings, c.logger); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("checking whether %s holds a PostgreSQL cluster: %w", c.dir, err)
	}

	pm, err := attach(ctx, c.dir, c.logger)
	if pm != nil || err != nil {
		return pm, err
	}
	return startPostmaster(ctx, c.binDir, c.dir, c.acct, c.settings, c.logger)
}

// current returns the postmaster serving the cluster now, or last.
func (c *Cluster) current() *postmaster {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pm
}

// DSN returns a lib/pq key=value connection string for database over the
// unix socket, as the postgres superuser. An empty database leaves dbname
// out, so the server uses the user's name. The socket of a supervised
// cluster stays where it is across restarts, so the DSN stays valid.
func (c *Cluster) DSN(database string) string {
	pm := c.current()
	parts := []string{"host=" + dsnValue(pm.socketDir), "port=" + strconv.Itoa(pm.port), "user=postgres"}
	if database != "" {
		parts = append(parts, "dbname="+dsnValue(database))
	}
	return strings.Join(append(parts, "sslmode=disable"), " ")
}

// SocketDir returns the folder holding the cluster's unix socket.
func (c *Cluster) SocketDir() string { return c.current().socketDir }

// Dir returns the cluster's absolute data folder.
func (c *Cluster) Dir() string { return c.dir }

// PID returns the process id of the postmaster serving the cluster now, or
// of the last one while a supervised cluster is being restarted.
func (c *Cluster) PID() int { return c.current().pid }

// Owned reports whether this process started the current postmaster, and so
// whether Stop will shut it down. A supervised cluster that this process
// attached to becomes owned when this process starts its replacement.
func (c *Cluster) Owned() bool { return c.current().proc != nil }

// Stop ends supervision, waiting for a restart under way to finish or be
// abandoned (an abandoned start is shut down), then shuts down a postmaster
// this process started with a fast shutdown (SIGINT: sessions are ended, then
// a checkpoint) and waits for it to exit. If ctx ends first it falls back to
// an immediate shutdown (SIGQUIT), which is safe but makes the next start run
// crash recovery. Stop leaves a postmaster this process merely attached to
// running, and removes no files. Pass a context that is not already done,
// e.g. a fresh one with a timeout during shutdown.
func (c *Cluster) Stop(ctx context.Context) error {
	if c.cancelSupervise != nil {
		c.cancelSupervise()
		<-c.supervised
	}
	pm := c.current()
	if pm.proc == nil {
		return nil
	}
	select {
	case <-pm.exited:
		return nil
	default:
	}
	c.logger.Info("stopping PostgreSQL", "dir", c.dir, "pid", pm.pid)
	if err := pm.stop(ctx); err != nil {
		return fmt.Errorf("stopping PostgreSQL in %s: %w", c.dir, err)
	}
	return nil
}

// stop shuts down a postmaster this process started with a fast shutdown
// and waits for it to exit, falling back to quit when ctx ends first.
func (pm *postmaster) stop(ctx context.Context) error {
	if err := pm.proc.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling the postmaster (pid %d): %w", pm.pid, err)
	}
	select {
	case <-pm.exited:
		return nil
	case <-ctx.Done():
	}
	pm.quit()
	return fmt.Errorf("fast shutdown did not finish in time, so it was stopped immediately and the next start will run crash recovery: %w", ctx.Err())
}

// quit stops the postmaster immediately (SIGQUIT) and, should even that hang,
// kills its whole process group; it returns once the postmaster is reaped.
func (pm *postmaster) quit() {
	_ = pm.proc.Signal(syscall.SIGQUIT)
	select {
	case <-pm.exited:
	case <-time.After(quitGrace):
		_ = syscall.Kill(-pm.pid, syscall.SIGKILL)
		<-pm.exited
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
func attach(ctx context.Context, dir string, logger *slog.Logger) (*postmaster, error) {
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
			return &postmaster{pid: pf.pid, socketDir: pf.socketDir, port: pf.port}, nil
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
// On failure it makes sure the postmaster is gone and quotes the log; when
// ctx ends first, the half-started postmaster gets a fast shutdown (then an
// immediate one after quitGrace), so that nothing is left running.
func startPostmaster(ctx context.Context, binDir, dir string, acct *account, settings map[string]string, logger *slog.Logger) (*postmaster, error) {
	logPath := filepath.Join(dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening PostgreSQL log %s: %w", logPath, err)
	}
	defer logFile.Close() // the child has its own copy once started
	logStart, err := logFile.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("finding the end of PostgreSQL log %s: %w", logPath, err)
	}
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
	pm, err := spawn(cmd)
	if err != nil {
		return nil, err
	}

	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		if pf, err := readPidFile(dir); err == nil && pf.pid == pm.pid && pf.accepting() {
			pm.socketDir, pm.port = pf.socketDir, pf.port
			logger.Info("PostgreSQL ready", "dir", dir, "pid", pm.pid, "socket_dir", pm.socketDir)
			return pm, nil
		}
		select {
		case <-pm.exited:
			if logSince(logPath, logStart, oldBackendsMessage) {
				return nil, fmt.Errorf("starting PostgreSQL in %s: %w; they exit once they notice, or stop them (see %s)", dir, errOldBackends, logPath)
			}
			return nil, fmt.Errorf("starting PostgreSQL in %s: postgres exited before accepting connections; fix the cause in %s, last lines:\n%s",
				dir, logPath, tailFile(logPath))
		case <-ctx.Done():
			logger.Info("abandoning the PostgreSQL start", "dir", dir, "pid", pm.pid)
			sctx, cancel := context.WithTimeout(context.Background(), quitGrace)
			_ = pm.stop(sctx)
			cancel()
			return nil, fmt.Errorf("starting PostgreSQL in %s: %w before it accepted connections; see %s, last lines:\n%s",
				dir, ctx.Err(), logPath, tailFile(logPath))
		case <-ticker.C:
		}
	}
}

// spawn starts cmd and reaps it when it exits. Linux sends the parent-death
// signal when the thread that forked the child exits, not the process
// (golang/go#27505), so the goroutine that starts the postmaster keeps its
// thread locked until the postmaster has exited: the runtime cannot retire
// that thread and kill a healthy postmaster, wherever a restart runs.
func spawn(cmd *exec.Cmd) (*postmaster, error) {
	started := make(chan error, 1)
	pm := &postmaster{exited: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- fmt.Errorf("starting %s: %w", cmd.Path, err)
			return
		}
		pm.pid, pm.proc = cmd.Process.Pid, cmd.Process
		started <- nil
		pm.waitErr = cmd.Wait() // the reason is in postgres.log
		close(pm.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return pm, nil
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

// logSince reports whether the log at path holds text after offset, the
// part the last start wrote.
func logSince(path string, offset int64, text string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	data, err := io.ReadAll(io.NewSectionReader(f, offset, 1<<20))
	return err == nil && strings.Contains(string(data), text)
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
