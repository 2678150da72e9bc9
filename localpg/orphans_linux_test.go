package localpg

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestStartWaitsForOrphanedBackends kills a postmaster while something
// still holds its shared memory, as its backends do for a moment after a
// kill -9. PostgreSQL refuses to start until they let go; Start waits for
// that instead of failing.
func TestStartWaitsForOrphanedBackends(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)

	first, err := Start(ctxWithTimeout(t), Options{Dir: dir, Settings: testSettings})
	require.NoError(t, err)
	// Stand in for a backend that outlives its postmaster by attaching to
	// the segment PostgreSQL checks (the one postmaster.pid names).
	addr := shmAttach(t, shmIDOf(t, dir))
	killHard(t, first.PID())
	<-first.current().exited

	log := newLogRecorder()
	type result struct {
		c   *Cluster
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := Start(ctxWithTimeout(t), Options{Dir: dir, Settings: testSettings, Logger: slog.New(log)})
		done <- result{c, err}
	}()
	select {
	case <-log.logged("waiting for the backends of a killed PostgreSQL to exit"):
	case res := <-done:
		t.Fatalf("Start returned (%v, %v) instead of waiting for the segment to be released; log:\n%s", res.c, res.err, log.text())
	}
	shmDetach(t, addr)

	res := <-done // Start's own deadline bounds this
	require.NoError(t, res.err)
	t.Cleanup(func() { require.NoError(t, res.c.Stop(ctxWithTimeout(t))) })
	require.True(t, res.c.Owned())
	require.NotEqual(t, first.PID(), res.c.PID())
}

// shmIDOf returns the id of the System V shared memory segment that
// dir/postmaster.pid records (its seventh line: key, then id).
func shmIDOf(t *testing.T, dir string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	require.NoError(t, err)
	lines := strings.Split(string(data), "\n")
	require.Greater(t, len(lines), 6, "postmaster.pid: %q", data)
	fields := strings.Fields(lines[6])
	require.Len(t, fields, 2, "shared memory line of postmaster.pid: %q", data)
	id, err := strconv.Atoi(fields[1])
	require.NoError(t, err)
	return id
}

// shmAttach attaches this process to segment id, read-only.
func shmAttach(t *testing.T, id int) uintptr {
	t.Helper()
	const shmRDOnly = 0o10000
	addr, _, errno := syscall.Syscall(syscall.SYS_SHMAT, uintptr(id), 0, shmRDOnly)
	require.Zero(t, errno, "shmat(%d): %v", id, errno)
	return addr
}

// shmDetach detaches this process from the segment mapped at addr.
func shmDetach(t *testing.T, addr uintptr) {
	t.Helper()
	_, _, errno := syscall.Syscall(syscall.SYS_SHMDT, addr, 0, 0)
	require.Zero(t, errno, "shmdt: %v", errno)
}
