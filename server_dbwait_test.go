package main

import (
	"context"
	"io"
	"net"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"fleetgraph/porttest"
)

// pgAddress returns where a DSN (URL or key=value, TCP or unix socket)
// connects.
func pgAddress(t *testing.T, dsn string) (network, addr string) {
	t.Helper()
	host, port := "localhost", "5432"
	if strings.Contains(dsn, "://") {
		u, err := url.Parse(dsn)
		require.NoError(t, err)
		if u.Hostname() != "" {
			host = u.Hostname()
		}
		if u.Port() != "" {
			port = u.Port()
		}
		if h := u.Query().Get("host"); h != "" {
			host = h
		}
	} else {
		for _, kv := range strings.Fields(dsn) {
			k, v, _ := strings.Cut(kv, "=")
			v = strings.Trim(v, "'")
			switch k {
			case "host":
				host = v
			case "port":
				port = v
			}
		}
	}
	if strings.HasPrefix(host, "/") {
		return "unix", host + "/.s.PGSQL." + port
	}
	return "tcp", net.JoinHostPort(host, port)
}

// viaAddr rewrites a DSN to connect to a TCP address instead.
func viaAddr(t *testing.T, dsn, addr string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	if strings.Contains(dsn, "://") {
		u, err := url.Parse(dsn)
		require.NoError(t, err)
		u.Host = addr
		q := u.Query()
		q.Del("host")
		q.Del("port")
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " host=" + host + " port=" + port // later keys win
}

// proxy forwards every connection ln accepts to the database at
// network/target until the test ends.
func proxy(t *testing.T, ln net.Listener, network, target string) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				d, err := net.Dial(network, target)
				if err != nil {
					return
				}
				defer d.Close()
				go func() { _, _ = io.Copy(d, c); _ = d.Close() }()
				_, _ = io.Copy(c, d)
			}()
		}
	}()
}

var retryingLog = regexp.MustCompile(`the database is not reachable yet; retrying"? attempt=(\d+)`)

// Containers start in any order: serve waits for a DATABASE_URL that is
// not reachable yet, up to DATABASE_CONNECT_TIMEOUT, then gives up with a
// clear error; Ctrl-C ends the wait. The unreachable database is a port the
// test holds (porttest.Refusing), refusing connections, until it proxies
// the real database there.
func TestServeWaitsForTheDatabase(t *testing.T) {
	t.Parallel()

	t.Run("BecomesReadyWhenTheDatabaseComesUp", func(t *testing.T) {
		t.Parallel()
		dsn, _ := emptyDatabase(t)
		network, target := pgAddress(t, dsn)
		dbPort := porttest.Refusing(t)
		e := baseEnv(t).with("DATABASE_URL", viaAddr(t, dsn, dbPort.Addr), "JWT_SECRET", testSecret, "DATABASE_CONNECT_TIMEOUT", "600")
		p := startServe(t, e, "--listen", "127.0.0.1:0", "--auto-migrate")
		p.waitFor(t, p.stderr, retryingLog)
		proxy(t, dbPort.Listen(t), network, target)
		base := p.waitFor(t, p.stderr, servingLog)[1]
		require.Contains(t, p.stderr.String(), "connected to the database")
		status, _, body := get(t, base+"/readyz")
		require.Equal(t, 200, status, body)
		require.Equal(t, 0, p.stop(t))
	})

	t.Run("GivesUpWithAClearError", func(t *testing.T) {
		t.Parallel()
		dsn, _ := emptyDatabase(t)
		e := baseEnv(t).with("DATABASE_URL", viaAddr(t, dsn, porttest.Refusing(t).Addr), "JWT_SECRET", testSecret, "DATABASE_CONNECT_TIMEOUT", "1")
		code, stdout, stderr := runCLI(t, e, "serve", "--listen", "127.0.0.1:0")
		require.Equal(t, 1, code, stderr)
		require.Empty(t, stdout)
		require.Regexp(t, `still unreachable after \d+ attempts in 1s \(DATABASE_CONNECT_TIMEOUT\)`, stderr)
		require.Regexp(t, retryingLog, stderr, "each attempt is logged")
		require.NotContains(t, stderr, "msg=serving")
	})

	t.Run("ZeroTriesOnce", func(t *testing.T) {
		t.Parallel()
		dsn, _ := emptyDatabase(t)
		e := baseEnv(t).with("DATABASE_URL", viaAddr(t, dsn, porttest.Refusing(t).Addr), "JWT_SECRET", testSecret, "DATABASE_CONNECT_TIMEOUT", "0")
		code, _, stderr := runCLI(t, e, "serve", "--listen", "127.0.0.1:0")
		require.Equal(t, 1, code, stderr)
		require.Contains(t, stderr, "check DATABASE_URL")
		require.NotRegexp(t, retryingLog, stderr)
	})

	t.Run("InterruptEndsTheWait", func(t *testing.T) {
		t.Parallel()
		dsn, _ := emptyDatabase(t)
		e := baseEnv(t).with("DATABASE_URL", viaAddr(t, dsn, porttest.Refusing(t).Addr), "JWT_SECRET", testSecret, "DATABASE_CONNECT_TIMEOUT", "3600")
		p := startServe(t, e, "--listen", "127.0.0.1:0")
		p.waitFor(t, p.stderr, retryingLog)
		require.Equal(t, 1, p.stop(t))
		require.Contains(t, p.stderr.String(), "interrupted while waiting for the database")
	})

	t.Run("MigrateWaitsToo", func(t *testing.T) {
		t.Parallel()
		dsn, _ := emptyDatabase(t)
		network, target := pgAddress(t, dsn)
		dbPort := porttest.Refusing(t)
		e := baseEnv(t).with("DATABASE_URL", viaAddr(t, dsn, dbPort.Addr), "DATABASE_CONNECT_TIMEOUT", "600")
		ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
		defer cancel()
		out, errOut := newSyncBuffer(), newSyncBuffer()
		exit := make(chan int, 1)
		go func() { exit <- run(ctx, []string{"migrate", "up"}, e.get, out, errOut) }()
		p := &serveProcess{stdout: out, stderr: errOut, exit: exit, cancel: cancel}
		p.waitFor(t, errOut, retryingLog)
		proxy(t, dbPort.Listen(t), network, target)
		require.Equal(t, 0, <-exit, errOut.String())
		require.Contains(t, out.String(), "applied")
	})

	t.Run("BadValueRefused", func(t *testing.T) {
		t.Parallel()
		e := baseEnv(t).with("DATABASE_URL", "postgres://localhost/x", "JWT_SECRET", testSecret, "DATABASE_CONNECT_TIMEOUT", "soon")
		code, _, stderr := runCLI(t, e, "serve")
		require.Equal(t, 2, code)
		require.Contains(t, stderr, "DATABASE_CONNECT_TIMEOUT")
	})
}
