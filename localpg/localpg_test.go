package localpg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testSettings trade durability for speed, as the test database helper does.
var testSettings = map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

func TestCluster(t *testing.T) {
	t.Parallel()

	binDir, err := FindBinaries()
	require.NoError(t, err)

	type testBundle struct {
		dir     string
		cluster *Cluster
	}

	setup := func(t *testing.T) *testBundle {
		t.Helper()
		dir := tempDir(t)
		return &testBundle{dir: dir, cluster: startCluster(t, dir)}
	}

	t.Run("AcceptsConnectionsOverSocket", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		require.True(t, bundle.cluster.Owned())
		require.Equal(t, bundle.dir, bundle.cluster.SocketDir())
		require.FileExists(t, filepath.Join(bundle.cluster.SocketDir(), ".s.PGSQL.5432"))
		require.FileExists(t, filepath.Join(bundle.dir, "postgres.log"))
		require.Equal(t, "1", psql(t, binDir, bundle.cluster, "select 1"))
		require.Equal(t, "off", psql(t, binDir, bundle.cluster, "show fsync"), "Settings are applied")
		require.Equal(t, "", psql(t, binDir, bundle.cluster, "show listen_addresses"), "no TCP listener")

		info, err := os.Stat(bundle.dir)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o700), info.Mode().Perm())
	})

	t.Run("SecondStartAttaches", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		attached := startCluster(t, bundle.dir)
		require.False(t, attached.Owned())
		require.Equal(t, bundle.cluster.DSN("postgres"), attached.DSN("postgres"))

		require.NoError(t, attached.Stop(ctxWithTimeout(t)))
		require.NoError(t, syscall.Kill(bundle.cluster.PID(), 0), "postmaster still running")
		require.Equal(t, "1", psql(t, binDir, attached, "select 1"))
	})

	t.Run("StopEndsPostmaster", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		require.NoError(t, bundle.cluster.Stop(ctxWithTimeout(t)))
		require.Eventually(t, func() bool {
			return errors.Is(syscall.Kill(bundle.cluster.PID(), 0), syscall.ESRCH)
		}, 10*time.Second, 10*time.Millisecond)
		require.NoFileExists(t, filepath.Join(bundle.dir, "postmaster.pid"))
		require.NoError(t, bundle.cluster.Stop(ctxWithTimeout(t)), "second Stop is a no-op")
	})

	t.Run("RestartKeepsData", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)

		psql(t, binDir, bundle.cluster, "create table kept (v text); insert into kept values ('still here')")
		require.NoError(t, bundle.cluster.Stop(ctxWithTimeout(t)))

		restarted := startCluster(t, bundle.dir)
		require.True(t, restarted.Owned())
		require.Equal(t, "still here", psql(t, binDir, restarted, "select v from kept"))
	})

	t.Run("StalePidFileDoesNotBlockStart", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		require.NoError(t, bundle.cluster.Stop(ctxWithTimeout(t)))

		// A postmaster killed with SIGKILL leaves postmaster.pid behind; its
		// pid is either gone or, later, reused by an unrelated process.
		dead := exec.Command("true")
		require.NoError(t, dead.Run())
		unrelated := exec.Command("cat")
		stdin, err := unrelated.StdinPipe()
		require.NoError(t, err)
		require.NoError(t, unrelated.Start())
		t.Cleanup(func() {
			_ = stdin.Close() // cat exits at end of input
			_ = unrelated.Wait()
		})

		for name, pid := range map[string]int{"dead": dead.Process.Pid, "reused": unrelated.Process.Pid} {
			stale := fmt.Sprintf("%d\n%s\n1700000000\n5432\n%s\n\n  5432001         0\nready   \n", pid, bundle.dir, bundle.dir)
			pidPath := filepath.Join(bundle.dir, "postmaster.pid")
			require.NoError(t, os.WriteFile(pidPath, []byte(stale), 0o600))
			chownLike(t, pidPath, bundle.dir) // as a crashed postmaster would have left it

			c := startCluster(t, bundle.dir)
			require.True(t, c.Owned(), name)
			require.Equal(t, "1", psql(t, binDir, c, "select 1"), name)
			require.NoError(t, c.Stop(ctxWithTimeout(t)), name)
		}
	})

	t.Run("ConcurrentStartsShareOneCluster", func(t *testing.T) {
		t.Parallel()
		dir := tempDir(t)

		var (
			wg       sync.WaitGroup
			clusters [2]*Cluster
			errs     [2]error
		)
		for i := range clusters {
			wg.Go(func() {
				clusters[i], errs[i] = Start(ctxWithTimeout(t), Options{Dir: dir, Settings: testSettings})
			})
		}
		wg.Wait()
		for i := range clusters {
			require.NoError(t, errs[i])
			t.Cleanup(func() { require.NoError(t, clusters[i].Stop(ctxWithTimeout(t))) })
		}

		require.NotEqual(t, clusters[0].Owned(), clusters[1].Owned(), "exactly one Start owns the postmaster")
		require.Equal(t, clusters[0].PID(), clusters[1].PID())
		require.Equal(t, "1", psql(t, binDir, clusters[1], "select 1"))
	})

	// Existing uses a cluster that is there, running or stopped, and
	// creates nothing where there is none: no initdb, no folder, no lock.
	t.Run("ExistingCreatesNothing", func(t *testing.T) {
		t.Parallel()
		parent := tempDir(t)
		dir := filepath.Join(parent, "typo", "postgres")
		_, err := Start(ctxWithTimeout(t), Options{Dir: dir, Existing: true})
		require.ErrorIs(t, err, ErrNoCluster)
		require.NoDirExists(t, filepath.Join(parent, "typo"))

		bundle := setup(t)
		attached, err := Start(ctxWithTimeout(t), Options{Dir: bundle.dir, Existing: true})
		require.NoError(t, err)
		require.False(t, attached.Owned(), "a running cluster is attached to")
		require.NoError(t, attached.Stop(ctxWithTimeout(t)))

		require.NoError(t, bundle.cluster.Stop(ctxWithTimeout(t)))
		started, err := Start(ctxWithTimeout(t), Options{Dir: bundle.dir, Existing: true, Settings: testSettings})
		require.NoError(t, err)
		require.True(t, started.Owned(), "a stopped cluster is started")
		require.Equal(t, "1", psql(t, binDir, started, "select 1"))
		require.NoError(t, started.Stop(ctxWithTimeout(t)))
	})

	t.Run("SocketPathTooLong", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(tempDir(t), strings.Repeat("d", 100))

		_, err := Start(ctxWithTimeout(t), Options{Dir: dir})
		require.ErrorIs(t, err, ErrSocketPathTooLong)
		require.ErrorContains(t, err, "use a shorter folder")
		require.NoDirExists(t, dir)
	})

	t.Run("UnreachableDirAsRoot", func(t *testing.T) {
		t.Parallel()
		if os.Geteuid() != 0 {
			t.Skip("only root hands the cluster to the postgres user")
		}
		parent := tempDir(t) // os.MkdirTemp makes it 0700, owned by root

		_, err := Start(ctxWithTimeout(t), Options{Dir: filepath.Join(parent, "pg")})
		require.ErrorContains(t, err, "is not searchable")
		require.ErrorContains(t, err, "DATA_DIR")
	})
}

func TestFindBinaries(t *testing.T) {
	t.Parallel()

	// fakeBinDir makes dir/initdb and dir/postgres as empty executables.
	fakeBinDir := func(t *testing.T, dir string, names ...string) {
		t.Helper()
		require.NoError(t, os.MkdirAll(dir, 0o755))
		for _, name := range names {
			require.NoError(t, os.WriteFile(filepath.Join(dir, name), nil, 0o755))
		}
	}

	t.Run("NoneFound", func(t *testing.T) {
		t.Parallel()

		_, err := findBinaries(t.TempDir(), filepath.Join(t.TempDir(), "missing"))
		require.ErrorIs(t, err, ErrNoBinaries)
		require.ErrorContains(t, err, "apt-get install postgresql")
		require.ErrorContains(t, err, "DATABASE_URL")
	})

	t.Run("PrefersPath", func(t *testing.T) {
		t.Parallel()
		onPath, root := t.TempDir(), t.TempDir()
		fakeBinDir(t, onPath, "initdb", "postgres")
		fakeBinDir(t, filepath.Join(root, "17", "bin"), "initdb", "postgres")

		dir, err := findBinaries(t.TempDir()+string(os.PathListSeparator)+onPath, root)
		require.NoError(t, err)
		require.Equal(t, onPath, dir)
	})

	t.Run("FollowsPathSymlinks", func(t *testing.T) {
		t.Parallel()
		onPath, target := t.TempDir(), t.TempDir()
		fakeBinDir(t, target, "initdb", "postgres", "psql")
		for _, name := range []string{"initdb", "postgres"} {
			require.NoError(t, os.Symlink(filepath.Join(target, name), filepath.Join(onPath, name)))
		}

		dir, err := findBinaries(onPath, t.TempDir())
		require.NoError(t, err)
		require.Equal(t, target, dir, "the folder that also holds psql")
	})

	t.Run("HighestCompleteVersion", func(t *testing.T) {
		t.Parallel()
		root := t.TempDir()
		fakeBinDir(t, filepath.Join(root, "9.6", "bin"), "initdb", "postgres")
		fakeBinDir(t, filepath.Join(root, "10", "bin"), "initdb", "postgres")
		fakeBinDir(t, filepath.Join(root, "16", "bin"), "initdb") // client-only install

		dir, err := findBinaries("", root)
		require.NoError(t, err)
		require.Equal(t, filepath.Join(root, "10", "bin"), dir)
	})
}

// tempDir returns a new short folder under the system temp folder (t.TempDir
// paths are too long for a unix socket) and removes it, and the lock file
// Start leaves beside it, when the test ends.
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lpg")
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, os.RemoveAll(dir))
		require.NoError(t, os.RemoveAll(dir+".lock"))
	})
	return dir
}

// chownLike gives path the owner of like, which matters when the test runs
// as root and the cluster belongs to the postgres user.
func chownLike(t *testing.T, path, like string) {
	t.Helper()
	info, err := os.Stat(like)
	require.NoError(t, err)
	st := info.Sys().(*syscall.Stat_t)
	require.NoError(t, os.Lchown(path, int(st.Uid), int(st.Gid)))
}

// startCluster starts (or attaches to) the cluster in dir and stops it when
// the test ends.
func startCluster(t *testing.T, dir string) *Cluster {
	t.Helper()
	c, err := Start(ctxWithTimeout(t), Options{Dir: dir, Settings: testSettings})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Stop(ctxWithTimeout(t))) })
	return c
}

// ctxWithTimeout bounds one operation on a cluster. It does not derive from
// t.Context, which is already canceled when cleanups run.
func ctxWithTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// psql runs sql through psql with the cluster's DSN and returns the
// unaligned output.
func psql(t *testing.T, binDir string, c *Cluster, sql string) string {
	t.Helper()
	cmd := exec.CommandContext(ctxWithTimeout(t), filepath.Join(binDir, "psql"),
		"-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", c.DSN("postgres"), "-c", sql)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "psql: %s", out)
	return strings.TrimSpace(string(out))
}
