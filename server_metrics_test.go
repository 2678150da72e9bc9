package main

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/auth"
	"fleetgraph/dbtest"
	"fleetgraph/demo"
	"fleetgraph/metrics"
	"fleetgraph/porttest"
)

// metricsLog matches the log line serve writes once it serves /metrics.
var metricsLog = regexp.MustCompile(`msg="serving metrics" addr=\S+ metrics=(http://\S+/metrics)`)

// TestServeMetrics: /metrics is served on METRICS_ADDR only, never on the
// API's address, and only when configured outside the embedded mode.
func TestServeMetrics(t *testing.T) {
	t.Parallel()

	t.Run("OnItsOwnAddress", func(t *testing.T) {
		t.Parallel()
		d := dbtest.New(t)
		e := baseEnv(t).with("DATABASE_URL", d.DSN, "JWT_SECRET", testSecret, "METRICS_ADDR", "127.0.0.1:0")
		p := startServe(t, e, "--listen", "127.0.0.1:0")
		url := p.waitFor(t, p.stderr, servingLog)[1]
		metricsURL := p.waitFor(t, p.stderr, metricsLog)[1]

		tok, err := verifier(t, testSecret, "").Mint(auth.MintOptions{UserID: demo.Alice, Role: auth.RoleUser, TTL: time.Minute})
		require.NoError(t, err)
		require.Zero(t, machineCount(t, url, tok))

		status, _, body := get(t, metricsURL)
		require.Equal(t, http.StatusOK, status)
		require.Contains(t, body, `fleetgraph_http_requests_total{method="POST",status="200"} 1`)
		require.Contains(t, body, `fleetgraph_jobs{status="QUEUED"} 0`)
		require.Contains(t, body, `go_sql_open_connections{db_name="fleetgraph"}`)

		status, _, _ = get(t, url+"/metrics")
		require.Equal(t, http.StatusNotFound, status, "the API's address serves no metrics")
		metricsBase := strings.TrimSuffix(metricsURL, "/metrics")
		status, _, _ = get(t, metricsBase+"/graphql")
		require.Equal(t, http.StatusNotFound, status, "the metrics address serves no API")

		// The access log, on by default at LOG_LEVEL=info.
		require.Regexp(t, `msg=request method=POST path=/graphql status=200 duration_ms=\S+ operation=\S* request_id=\S+ caller=user`, p.stderr.String())

		require.Equal(t, 0, p.stop(t), p.stderr.String())
		_, err = net.DialTimeout("tcp", strings.TrimPrefix(metricsBase, "http://"), 5*time.Second)
		require.Error(t, err, "the metrics server stops with serve")
	})

	t.Run("OffByDefaultWithDatabaseURL", func(t *testing.T) {
		t.Parallel()
		d := dbtest.New(t)
		e := baseEnv(t).with("DATABASE_URL", d.DSN, "JWT_SECRET", testSecret, "LOG_LEVEL", "warn")
		p := startServe(t, e, "--listen", "127.0.0.1:0", "--log-level", "info")
		url := p.waitFor(t, p.stderr, servingLog)[1]
		status, _, _ := get(t, url+"/metrics")
		require.Equal(t, http.StatusNotFound, status)
		require.Equal(t, 0, p.stop(t), p.stderr.String())
		require.NotContains(t, p.stderr.String(), "metrics")
	})

	t.Run("AccessLogOffAtWarn", func(t *testing.T) {
		t.Parallel()
		d := dbtest.New(t)
		e := baseEnv(t).with("DATABASE_URL", d.DSN, "JWT_SECRET", testSecret, "LOG_LEVEL", "warn")
		// Nothing at info is logged, the serving line included: the test
		// picks the address (held for serve, see porttest.ForServer) and
		// waits for it to answer.
		addr := porttest.ForServer(t)
		p := startServe(t, e, "--listen", addr, "--metrics-addr", "127.0.0.1:0")
		waitHealthy(t, p, "http://"+addr)
		tok, err := verifier(t, testSecret, "").Mint(auth.MintOptions{UserID: demo.Alice, Role: auth.RoleUser, TTL: time.Minute})
		require.NoError(t, err)
		require.Zero(t, machineCount(t, "http://"+addr, tok))
		require.Equal(t, 0, p.stop(t), p.stderr.String())
		require.NotContains(t, p.stderr.String(), "msg=request")
	})

	t.Run("ConfiguredAddressTaken", func(t *testing.T) {
		t.Parallel()
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer taken.Close()
		d := dbtest.New(t)
		e := baseEnv(t).with("DATABASE_URL", d.DSN, "JWT_SECRET", testSecret, "METRICS_ADDR", taken.Addr().String())
		code, _, stderr := runCLI(t, e, "serve", "--listen", "127.0.0.1:0")
		require.Equal(t, 1, code, stderr)
		require.Contains(t, stderr, "METRICS_ADDR")
	})

	for name, tt := range map[string]struct{ env env }{
		"Malformed":     {env{"METRICS_ADDR": "nonsense"}},
		"SameAsListen":  {env{"METRICS_ADDR": "127.0.0.1:8080", "LISTEN_ADDR": "127.0.0.1:8080"}},
		"MalformedFlag": {env{"METRICS_ADDR": "off", "LOG_LEVEL": "info"}},
	} {
		t.Run("ConfigError"+name, func(t *testing.T) {
			t.Parallel()
			e := baseEnv(t)
			for k, v := range tt.env {
				e[k] = v
			}
			args := []string{"serve"}
			if name == "MalformedFlag" {
				args = append(args, "--metrics-addr", "9090")
			}
			code, _, stderr := runCLI(t, e, args...)
			require.Equal(t, 2, code, stderr)
			require.Contains(t, stderr, "METRICS_ADDR (--metrics-addr)")
		})
	}
}

// waitHealthy polls url/healthz until serve answers, failing t after
// startTimeout; for servers that log nothing at info.
func waitHealthy(t *testing.T, p *serveProcess, url string) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		if res, err := httpClient.Get(url + "/healthz"); err == nil {
			_ = res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case code := <-p.exit:
			p.code, p.exited = code, true
			t.Fatalf("serve exited with %d\nstderr:\n%s", code, p.stderr)
		case <-time.After(50 * time.Millisecond): // paces the polling; the answer is the event
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not answer within %s\nstderr:\n%s", startTimeout, p.stderr)
		}
	}
}

// TestMetricsAddrDefaults: on (loopback only) in the embedded development
// mode, off with DATABASE_URL, unless configured.
func TestMetricsAddrDefaults(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		env  env
		want string
	}{
		{"Embedded", env{}, defaultMetricsAddr},
		{"EmbeddedOff", env{"METRICS_ADDR": "off"}, ""},
		{"DatabaseURL", env{"DATABASE_URL": "postgres://db.invalid/fleet", "JWT_SECRET": testSecret}, ""},
		{"DatabaseURLConfigured", env{"DATABASE_URL": "postgres://db.invalid/fleet", "JWT_SECRET": testSecret, "METRICS_ADDR": ":9100"}, ":9100"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newSettings("serve", "", &strings.Builder{}, tt.env.get)
			cs := declareServe(s)
			_, err := s.parse(nil)
			require.NoError(t, err)
			cfg, err := cs.resolve()
			require.NoError(t, err)
			require.Equal(t, tt.want, cfg.metricsAddr)
			require.True(t, strings.HasPrefix(defaultMetricsAddr, "127.0.0.1:"), "the default is loopback only")
		})
	}
}

// The metrics server bounds its connections as the API's does: it reads
// a request within a deadline and closes a keep-alive connection left
// idle (here after a short IdleTimeout, for the test).
func TestMetricsServerClosesIdleConnections(t *testing.T) {
	t.Parallel()
	srv := metricsServer(metrics.New(nil), slog.New(slog.DiscardHandler))
	require.Positive(t, srv.ReadHeaderTimeout)
	require.Positive(t, srv.ReadTimeout)
	require.Positive(t, srv.WriteTimeout)
	require.Positive(t, srv.IdleTimeout)

	srv.IdleTimeout = 100 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))
	_, err = io.WriteString(conn, "GET /metrics HTTP/1.1\r\nHost: scraper\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, res.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.False(t, res.Close, "the connection is kept alive after the scrape")

	// The server closes the idle connection: EOF, well before the deadline.
	_, err = br.ReadByte()
	require.ErrorIs(t, err, io.EOF, "the idle connection is still open")
}
