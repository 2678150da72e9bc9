package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/demo"
	"fleetgraph/migrations"
	"fleetgraph/realtime/faulttest"
)

func TestMain(m *testing.M) {
	if os.Getenv("FLEETGRAPH_TEST_RUN_MAIN") != "" {
		// A test runs the binary's main in a process of its own (runMain).
		main()
		return
	}
	dbtest.Main(m)
}

// testSecret is a JWT secret long enough for the server.
const testSecret = "server-test-secret-server-test-secret-0123"

// startTimeout bounds how long a server may take to start: the embedded
// mode runs initdb on first start.
const startTimeout = 2 * time.Minute

// env is a test's environment; run never sees the real one.
type env map[string]string

func (e env) get(key string) string { return e[key] }

// with returns a copy of e with kv (key, value, key, value...) set.
func (e env) with(kv ...string) env {
	out := env{}
	for k, v := range e {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// baseEnv keeps any accidental embedded start inside the test's own folder.
func baseEnv(t *testing.T) env { return env{"DATA_DIR": t.TempDir()} }

// runCLI runs one command to completion.
func runCLI(t *testing.T, e env, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var out, errOut bytes.Buffer
	code = run(ctx, args, e.get, &out, &errOut)
	return code, out.String(), errOut.String()
}

// syncBuffer is an io.Writer a running server writes to while the test reads.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed, and replaced, on every write
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{changed: make(chan struct{})} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return n, err
}

// snapshot returns the text so far and a channel closed on the next write.
func (b *syncBuffer) snapshot() (string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String(), b.changed
}

func (b *syncBuffer) String() string {
	s, _ := b.snapshot()
	return s
}

// serveProcess is `fleetgraph serve` running in a goroutine.
type serveProcess struct {
	cancel         context.CancelFunc
	stdout, stderr *syncBuffer
	exit           chan int // receives run's status once
	code           int
	exited         bool
}

// startServe runs serve with args until stop (or the end of the test).
func startServe(t *testing.T, e env, args ...string) *serveProcess {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &serveProcess{cancel: cancel, stdout: newSyncBuffer(), stderr: newSyncBuffer(), exit: make(chan int, 1)}
	go func() { p.exit <- run(ctx, append([]string{"serve"}, args...), e.get, p.stdout, p.stderr) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// waitFor waits until buf matches re and returns the submatches. It fails
// the test if the server exits first or startTimeout passes.
func (p *serveProcess) waitFor(t *testing.T, buf *syncBuffer, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	for {
		text, changed := buf.snapshot()
		if m := re.FindStringSubmatch(text); m != nil {
			return m
		}
		select {
		case <-changed:
		case code := <-p.exit:
			p.code, p.exited = code, true
			t.Fatalf("serve exited with %d before printing %s\nstdout:\n%s\nstderr:\n%s", code, re, p.stdout, p.stderr)
		case <-deadline.C:
			t.Fatalf("serve did not print %s within %s\nstdout:\n%s\nstderr:\n%s", re, startTimeout, p.stdout, p.stderr)
		}
	}
}

// stop cancels serve's context, as SIGINT does, and returns its exit status.
func (p *serveProcess) stop(t *testing.T) int {
	t.Helper()
	p.cancel()
	if !p.exited {
		select {
		case p.code = <-p.exit:
			p.exited = true
		case <-time.After(time.Minute):
			t.Fatalf("serve did not return within a minute of being cancelled\nstderr:\n%s", p.stderr)
		}
	}
	return p.code
}

// emptyDatabase creates a database without any table (dbtest's are already
// migrated) and returns its DSN and a connection; both go away with t.
func emptyDatabase(t *testing.T) (string, *bun.DB) {
	t.Helper()
	ctx := context.Background()
	host := dbtest.New(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "fgs_" + hex.EncodeToString(b[:])
	_, err := host.ExecContext(ctx, "CREATE DATABASE "+name)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := host.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		require.NoError(t, err)
	})
	dsn := host.DSN + " dbname=" + name // a later dbname= wins in a key=value DSN
	if strings.Contains(host.DSN, "://") {
		base, query, _ := strings.Cut(host.DSN, "?")
		dsn = base[:strings.LastIndex(base, "/")] + "/" + name
		if query != "" {
			dsn += "?" + query
		}
	}
	bdb, err := db.Open(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = bdb.Close() })
	return dsn, bdb
}

func tableExists(t *testing.T, bdb *bun.DB, table string) bool {
	t.Helper()
	var exists bool
	require.NoError(t, bdb.NewRaw("SELECT to_regclass(?) IS NOT NULL", table).Scan(context.Background(), &exists))
	return exists
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

func get(t *testing.T, url string) (int, http.Header, string) {
	t.Helper()
	resp, err := httpClient.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, string(body)
}

// graphqlResponse is a GraphQL response with the data left raw.
type graphqlResponse struct {
	Data   json.RawMessage `json:"data"`
	Errors []struct {
		Message    string         `json:"message"`
		Extensions map[string]any `json:"extensions"`
	} `json:"errors"`
}

func postGraphQL(t *testing.T, baseURL, authorization, query string) (int, graphqlResponse) {
	t.Helper()
	body, err := json.Marshal(map[string]any{"query": query})
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodPost, baseURL+"/graphql", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out graphqlResponse
	require.NoError(t, json.Unmarshal(raw, &out), string(raw))
	return resp.StatusCode, out
}

// machineCount asks the server how many machines the bearer of token has.
func machineCount(t *testing.T, baseURL, token string) int {
	t.Helper()
	status, resp := postGraphQL(t, baseURL, "Bearer "+token, `{ machines { totalCount } }`)
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, resp.Errors)
	var data struct{ Machines struct{ TotalCount int } }
	require.NoError(t, json.Unmarshal(resp.Data, &data))
	return data.Machines.TotalCount
}

func verifier(t *testing.T, secret, issuer string) *auth.JWT {
	t.Helper()
	j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(secret), Audience: "authenticated", Issuer: issuer})
	require.NoError(t, err)
	return j
}

// singleToken checks that out is exactly one line and returns it.
func singleToken(t *testing.T, out string) string {
	t.Helper()
	require.True(t, strings.HasSuffix(out, "\n"), "output ends with a newline: %q", out)
	tok := strings.TrimSuffix(out, "\n")
	require.NotContains(t, tok, "\n", "token prints only the token")
	require.Len(t, strings.Split(tok, "."), 3, "a JWT has three parts: %q", tok)
	return tok
}

func TestCommands(t *testing.T) {
	t.Parallel()

	t.Run("Schema", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := runCLI(t, baseEnv(t), "schema")
		require.Equal(t, 0, code, stderr)
		require.Contains(t, stdout, "type Query {")
		require.Contains(t, stdout, "type Mutation {")
		require.Equal(t, schemaSDL, stdout)
	})

	t.Run("Help", func(t *testing.T) {
		t.Parallel()
		code, stdout, _ := runCLI(t, baseEnv(t), "help")
		require.Equal(t, 0, code)
		for _, cmd := range []string{"serve", "migrate up|down|status", "token", "schema", "--help"} {
			require.Contains(t, stdout, cmd)
		}
	})

	for _, tt := range []struct {
		args []string
		want []string // flags and their environment variables
	}{
		{[]string{"serve", "--help"}, []string{
			"-listen", "[env LISTEN_ADDR]", "-database-url", "[env DATABASE_URL]", "-data-dir", "[env DATA_DIR]",
			"-jwt-secret", "[env JWT_SECRET]", "-jwt-audience", "[env JWT_AUDIENCE]", "-jwt-issuer", "[env JWT_ISSUER]",
			"-allowed-origins", "[env ALLOWED_ORIGINS]", "-playground", "[env PLAYGROUND]",
			"-introspection", "[env INTROSPECTION]", "-auto-migrate", "[env AUTO_MIGRATE]",
			"-log-level", "[env LOG_LEVEL]", "-log-format", "[env LOG_FORMAT]",
		}},
		{[]string{"help", "serve"}, []string{"Usage: fleetgraph serve", "-listen", "[env LISTEN_ADDR]"}},
		{[]string{"schema", "--help"}, []string{"Usage: fleetgraph schema", "Prints the GraphQL schema"}},
		{[]string{"migrate", "--help"}, []string{
			"Usage: fleetgraph migrate up|down|status",
			"-database-url", "[env DATABASE_URL]", "-data-dir", "[env DATA_DIR]", "-log-level", "[env LOG_LEVEL]",
		}},
		{[]string{"token", "-h"}, []string{
			"-jwt-secret", "[env JWT_SECRET]", "-data-dir", "[env DATA_DIR]",
			"-jwt-audience", "[env JWT_AUDIENCE]", "-jwt-issuer", "[env JWT_ISSUER]",
			"-sub", "-tenant", "-role", "-ttl",
		}},
	} {
		t.Run("HelpFor"+strings.Join(tt.args, ""), func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runCLI(t, baseEnv(t), tt.args...)
			require.Equal(t, 0, code, stderr)
			for _, w := range tt.want {
				require.Contains(t, stdout+stderr, w)
			}
		})
	}

	// The program's help lists the commands, whatever runs by default.
	for _, arg := range []string{"--help", "-h", "-help"} {
		t.Run("ProgramHelp"+arg, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runCLI(t, baseEnv(t), arg)
			require.Equal(t, 0, code, stderr)
			for _, cmd := range []string{"fleetgraph [serve]", "migrate up|down|status", "token", "schema", "--help"} {
				require.Contains(t, stdout, cmd)
			}
			require.NotContains(t, stdout+stderr, "-listen", "serve's flags are serve's help")
		})
	}

	// Asking a command for help never runs it: schema --help explains
	// schema rather than printing the SDL.
	t.Run("SchemaHelpIsNotTheSchema", func(t *testing.T) {
		t.Parallel()
		for _, arg := range []string{"--help", "-h"} {
			code, stdout, stderr := runCLI(t, baseEnv(t), "schema", arg)
			require.Equal(t, 0, code, stderr)
			require.NotContains(t, stdout+stderr, "type Query {")
			require.Contains(t, stdout+stderr, "Usage: fleetgraph schema")
		}
		code, stdout, stderr := runCLI(t, baseEnv(t), "schema", "extra")
		require.Equal(t, 2, code)
		require.Empty(t, stdout)
		require.Contains(t, stderr, "unexpected argument")
	})

	// A command named after serve's flags is not run as serve with the
	// command ignored.
	t.Run("CommandAfterFlags", func(t *testing.T) {
		t.Parallel()
		e := baseEnv(t).with("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none?sslmode=disable", "DATABASE_CONNECT_TIMEOUT", "0", "JWT_SECRET", testSecret)
		code, stdout, stderr := runCLI(t, e, "--listen", "127.0.0.1:0", "migrate", "status")
		require.Equal(t, 2, code, stderr)
		require.Empty(t, stdout)
		require.Contains(t, stderr, `fleetgraph serve: unexpected argument "migrate": to run the migrate command, name it before its flags (fleetgraph migrate [flags])`)
	})

	t.Run("UnknownCommand", func(t *testing.T) {
		t.Parallel()
		code, _, stderr := runCLI(t, baseEnv(t), "frobnicate")
		require.Equal(t, 2, code)
		require.Contains(t, stderr, `unknown command "frobnicate"`)
		require.Contains(t, stderr, "Usage:")
	})

	t.Run("UnknownFlag", func(t *testing.T) {
		t.Parallel()
		for _, cmd := range []string{"serve", "migrate", "token"} {
			code, _, stderr := runCLI(t, baseEnv(t), cmd, "--no-such-flag")
			require.Equal(t, 2, code, cmd)
			require.Contains(t, stderr, "no-such-flag")
		}
	})
}

func TestServeConfigErrors(t *testing.T) {
	t.Parallel()
	unreachable := env{"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none?sslmode=disable", "DATABASE_CONNECT_TIMEOUT": "0", "JWT_SECRET": testSecret}

	for _, tt := range []struct {
		name   string
		env    env
		args   []string
		want   string // the variable the error must name
		notWas string // a variable the error must not name
	}{
		{name: "LogLevel", env: env{"LOG_LEVEL": "loud"}, want: "LOG_LEVEL"},
		{name: "LogFormat", env: env{"LOG_FORMAT": "xml"}, want: "LOG_FORMAT"},
		{name: "JobLease", env: env{"JOB_LEASE_SECONDS": "soon"}, want: "JOB_LEASE_SECONDS"},
		{name: "JobLeaseTooShort", env: env{"JOB_LEASE_SECONDS": "1"}, want: "JOB_LEASE_SECONDS"},
		{name: "JobProgressTimeout", env: env{"JOB_PROGRESS_TIMEOUT_SECONDS": "later"}, want: "JOB_PROGRESS_TIMEOUT_SECONDS"},
		{name: "JobProgressTimeoutBelowLease", env: env{"JOB_LEASE_SECONDS": "120", "JOB_PROGRESS_TIMEOUT_SECONDS": "60"}, want: "JOB_PROGRESS_TIMEOUT_SECONDS (--job-progress-timeout-seconds) must be at least JOB_LEASE_SECONDS"},
		{name: "OfflineThreshold", env: env{"ROBOT_OFFLINE_THRESHOLD": "-5"}, want: "ROBOT_OFFLINE_THRESHOLD"},
		{name: "TakeoverGrace", env: env{"ROBOT_TAKEOVER_GRACE_SECONDS": "-1"}, want: "ROBOT_TAKEOVER_GRACE_SECONDS"},
		{name: "SubscriptionsPerConnection", env: env{"MAX_SUBSCRIPTIONS_PER_CONNECTION": "0"}, want: "MAX_SUBSCRIPTIONS_PER_CONNECTION"},
		{name: "SubscriptionsPerPrincipal", env: env{"MAX_SUBSCRIPTIONS_PER_PRINCIPAL": "many"}, want: "MAX_SUBSCRIPTIONS_PER_PRINCIPAL"},
		{name: "GCMinHeap", env: env{"GC_MIN_HEAP_MB": "-1"}, want: "GC_MIN_HEAP_MB"},
		{name: "GCMinHeapNotANumber", env: env{"GC_MIN_HEAP_MB": "lots"}, want: "GC_MIN_HEAP_MB"},
		{name: "RunningNegative", env: env{"MAX_RUNNING_OPERATIONS": "-1"}, want: "MAX_RUNNING_OPERATIONS"},
		{name: "RunningTooMany", env: env{"MAX_RUNNING_OPERATIONS": "100001"}, want: "MAX_RUNNING_OPERATIONS"},
		{name: "OperationTimeoutZero", env: env{"OPERATION_TIMEOUT_SECONDS": "0"}, want: "OPERATION_TIMEOUT_SECONDS"},
		{name: "OperationTimeoutPastTheWriteTimeout", env: env{"OPERATION_TIMEOUT_SECONDS": "51"}, want: "OPERATION_TIMEOUT_SECONDS"},
		{name: "OperationTimeoutNotANumber", env: env{"OPERATION_TIMEOUT_SECONDS": "1m"}, want: "OPERATION_TIMEOUT_SECONDS"},
		{name: "WebsocketsPerCallerZero", env: env{"MAX_WEBSOCKETS_PER_CALLER": "0"}, want: "MAX_WEBSOCKETS_PER_CALLER"},
		{name: "WebsocketsNegative", env: env{"MAX_WEBSOCKETS": "-1"}, want: "MAX_WEBSOCKETS"},
		{name: "AuditRetentionZero", env: env{"AUDIT_RETENTION_DAYS": "0"}, want: "AUDIT_RETENTION_DAYS"},
		{name: "AuditRetentionPastTenYears", env: env{"AUDIT_RETENTION_DAYS": "3651"}, want: "AUDIT_RETENTION_DAYS"},
		{name: "WebhookRetentionNegative", env: env{"WEBHOOK_RETENTION_DAYS": "-1"}, want: "WEBHOOK_RETENTION_DAYS"},
		{name: "WebhookRetentionNotANumber", env: env{"WEBHOOK_RETENTION_DAYS": "30d"}, want: "WEBHOOK_RETENTION_DAYS"},
		{name: "JobRetentionZero", env: env{"JOB_RETENTION_DAYS": "0"}, want: "JOB_RETENTION_DAYS"},
		{name: "JobRetentionPastTenYears", env: env{"JOB_RETENTION_DAYS": "3651"}, want: "JOB_RETENTION_DAYS"},
		{name: "Playground", env: env{"PLAYGROUND": "maybe"}, want: "PLAYGROUND"},
		{name: "Introspection", env: env{"INTROSPECTION": "2x"}, want: "INTROSPECTION"},
		{name: "AutoMigrate", env: env{"AUTO_MIGRATE": "sometimes"}, want: "AUTO_MIGRATE"},
		{name: "RequireTenantClaim", env: env{"REQUIRE_TENANT_CLAIM": "yes please"}, want: "REQUIRE_TENANT_CLAIM"},
		{name: "ListenAddr", env: env{"LISTEN_ADDR": "nonsense"}, want: "LISTEN_ADDR"},
		{name: "ListenPortTooLarge", env: env{"LISTEN_ADDR": ":99999"}, want: "LISTEN_ADDR"},
		{name: "ListenPortNegative", env: env{"LISTEN_ADDR": "127.0.0.1:-1"}, want: "LISTEN_ADDR"},
		{name: "MetricsPortTooLarge", env: env{"METRICS_ADDR": "127.0.0.1:70000"}, want: "METRICS_ADDR"},
		{name: "OriginBadPattern", env: env{"ALLOWED_ORIGINS": "app.example.com,[abc"}, want: `ALLOWED_ORIGINS (--allowed-origins): "[abc" is not a valid pattern`},
		{name: "OriginWithPath", env: env{"ALLOWED_ORIGINS": "https://app.example.com/"}, want: `ALLOWED_ORIGINS (--allowed-origins): "https://app.example.com/" has a path`},
		{name: "OriginHostWithPath", env: env{"ALLOWED_ORIGINS": "app.example.com/ui"}, want: "ALLOWED_ORIGINS"},
		{name: "OriginSchemeWithoutHost", env: env{"ALLOWED_ORIGINS": "https://"}, want: "ALLOWED_ORIGINS"},
		{name: "ShortJWTSecret", env: env{"JWT_SECRET": "too-short"}, want: "JWT_SECRET"},
		{name: "EmptyAudience", args: []string{"--jwt-audience", " "}, want: "JWT_AUDIENCE"},
		{name: "EmptyDataDir", args: []string{"--data-dir", ""}, want: "DATA_DIR"},
		{name: "DatabaseURLWithoutSecret", env: env{"DATABASE_URL": "postgres://db.invalid/fleet"}, want: "JWT_SECRET"},
		{name: "FlagOverridesEnv", env: env{"LOG_LEVEL": "loud", "LOG_FORMAT": "xml"}, args: []string{"--log-level", "debug"}, want: "LOG_FORMAT", notWas: "LOG_LEVEL"},
		{name: "FlagOverridesGoodEnv", env: env{"LOG_FORMAT": "json"}, args: []string{"--log-format", "xml"}, want: `LOG_FORMAT (--log-format) must be text or json, not "xml"`},
		{name: "BareBoolFlagTakesNoValue", args: []string{"--auto-migrate", "--log-level", "loud"}, want: "LOG_LEVEL", notWas: "AUTO_MIGRATE"},
		{name: "BoolFlagOverridesEnv", env: env{"PLAYGROUND": "maybe", "LOG_LEVEL": "loud"}, args: []string{"--playground=false"}, want: "LOG_LEVEL", notWas: "PLAYGROUND"},
		// Words after the flags are refused, not ignored by a server that
		// starts anyway (here it would fail on the database instead).
		{name: "ExtraArgument", env: unreachable, args: []string{"--listen", "127.0.0.1:0", "bogus"}, want: `unexpected argument "bogus"`},
		{name: "CommandAfterFlags", env: unreachable, args: []string{"--listen", "127.0.0.1:0", "migrate", "status"},
			want: `unexpected argument "migrate": to run the migrate command, name it before its flags`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := baseEnv(t)
			for k, v := range tt.env {
				e[k] = v
			}
			code, stdout, stderr := runCLI(t, e, append([]string{"serve"}, tt.args...)...)
			require.Equal(t, 2, code, stderr)
			require.Empty(t, stdout)
			require.Contains(t, stderr, "fleetgraph serve: ")
			require.Contains(t, stderr, tt.want)
			if tt.notWas != "" {
				require.NotContains(t, stderr, tt.notWas)
			}
			entries, err := os.ReadDir(e["DATA_DIR"])
			require.NoError(t, err)
			require.Empty(t, entries, "a configuration error must be reported before anything is created")
		})
	}
}

func TestToken(t *testing.T) {
	t.Parallel()
	secretEnv := func(t *testing.T) env { return baseEnv(t).with("JWT_SECRET", testSecret) }

	t.Run("Defaults", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := runCLI(t, secretEnv(t), "token")
		require.Equal(t, 0, code, stderr)
		p, err := verifier(t, testSecret, "").Verify(singleToken(t, stdout))
		require.NoError(t, err)
		require.Equal(t, demo.Alice, p.UserID)
		require.Equal(t, auth.DefaultTenant, p.TenantID)
		require.Equal(t, auth.RoleUser, p.Role)
		require.WithinDuration(t, time.Now().Add(24*time.Hour), p.ExpiresAt, time.Minute)
	})

	t.Run("Flags", func(t *testing.T) {
		t.Parallel()
		sub, tenant := uuid.New(), uuid.New()
		code, stdout, stderr := runCLI(t, secretEnv(t).with("JWT_ISSUER", "https://issuer.example.com"),
			"token", "--sub", sub.String(), "--tenant", tenant.String(), "--role", "service_role", "--ttl", "30m")
		require.Equal(t, 0, code, stderr)
		tok := singleToken(t, stdout)
		p, err := verifier(t, testSecret, "https://issuer.example.com").Verify(tok)
		require.NoError(t, err)
		require.Equal(t, sub, p.UserID)
		require.Equal(t, tenant, p.TenantID)
		require.Equal(t, auth.RoleService, p.Role)
		require.WithinDuration(t, time.Now().Add(30*time.Minute), p.ExpiresAt, time.Minute)

		_, err = verifier(t, testSecret, "https://other.example.com").Verify(tok)
		require.Error(t, err, "the token carries the configured issuer")
	})

	t.Run("TTLBounds", func(t *testing.T) {
		t.Parallel()
		for _, ttl := range []string{"1s", "876000h"} {
			code, stdout, stderr := runCLI(t, secretEnv(t), "token", "--ttl", ttl)
			require.Equal(t, 0, code, "%s: %s", ttl, stderr)
			singleToken(t, stdout)
		}
	})

	t.Run("SecretFlagOverridesEnv", func(t *testing.T) {
		t.Parallel()
		other := strings.Repeat("k", 40)
		code, stdout, stderr := runCLI(t, secretEnv(t), "token", "--jwt-secret", other)
		require.Equal(t, 0, code, stderr)
		_, err := verifier(t, other, "").Verify(singleToken(t, stdout))
		require.NoError(t, err)
	})

	t.Run("SecretFromDataDir", func(t *testing.T) {
		t.Parallel()
		e := baseEnv(t)
		secret := strings.Repeat("d", 64)
		require.NoError(t, os.WriteFile(filepath.Join(e["DATA_DIR"], "jwt-secret"), []byte(secret+"\n"), 0o600))
		code, stdout, stderr := runCLI(t, e, "token")
		require.Equal(t, 0, code, stderr)
		_, err := verifier(t, secret, "").Verify(singleToken(t, stdout))
		require.NoError(t, err)
	})

	t.Run("UnusableSecretInDataDir", func(t *testing.T) {
		t.Parallel()
		e := baseEnv(t)
		require.NoError(t, os.WriteFile(filepath.Join(e["DATA_DIR"], "jwt-secret"), []byte("short\n"), 0o600))
		code, stdout, stderr := runCLI(t, e, "token")
		require.NotEqual(t, 0, code)
		require.Empty(t, stdout)
		require.Contains(t, stderr, "JWT_SECRET")
		require.NotContains(t, stderr, "short\n", "the secret is not echoed")
	})

	t.Run("NoSecret", func(t *testing.T) {
		t.Parallel()
		e := baseEnv(t)
		code, stdout, stderr := runCLI(t, e, "token")
		require.Equal(t, 1, code)
		require.Empty(t, stdout)
		require.Contains(t, stderr, "no JWT secret")
		require.Contains(t, stderr, "JWT_SECRET")
		entries, err := os.ReadDir(e["DATA_DIR"])
		require.NoError(t, err)
		require.Empty(t, entries, "token must not create a secret the server does not know")
	})

	for _, tt := range []struct {
		name string
		args []string
		env  env
		want string
	}{
		{"BadSub", []string{"--sub", "alice"}, nil, "--sub must be a UUID"},
		{"NilSub", []string{"--sub", uuid.Nil.String()}, nil, "--sub must be a UUID other than the nil one"},
		{"BadTenant", []string{"--tenant", "acme"}, nil, "--tenant must be a UUID"},
		{"NilTenant", []string{"--tenant", uuid.Nil.String()}, nil, "--tenant must be a UUID other than the nil one"},
		{"BadRole", []string{"--role", "anon"}, nil, "--role must be"},
		{"EmptyRole", []string{"--role", ""}, nil, "--role must be"},
		{"ZeroTTL", []string{"--ttl", "0s"}, nil, "--ttl must be a duration from 1s to 100 years"},
		{"NegativeTTL", []string{"--ttl", "-1h"}, nil, "--ttl must be a duration from 1s to 100 years"},
		{"BadTTL", []string{"--ttl", "soon"}, nil, "--ttl must be a duration from 1s to 100 years"},
		{"ExpiredTTL", []string{"--ttl", "1ns"}, nil, "--ttl must be a duration from 1s to 100 years"},
		{"CenturiesTTL", []string{"--ttl", "2562047h"}, nil, "--ttl must be a duration from 1s to 100 years"}, // 292 years
		{"ShortSecret", nil, env{"JWT_SECRET": "too-short"}, "JWT_SECRET"},
		{"EmptyAudience", []string{"--jwt-audience", " "}, nil, "JWT_AUDIENCE"},
		{"ExtraArgument", []string{"--ttl", "1h", "service_role"}, nil, `unexpected argument "service_role"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := secretEnv(t)
			for k, v := range tt.env {
				e[k] = v
			}
			code, stdout, stderr := runCLI(t, e, append([]string{"token"}, tt.args...)...)
			require.Equal(t, 2, code, stderr)
			require.Empty(t, stdout)
			require.Contains(t, stderr, tt.want)
		})
	}
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()

	t.Run("UpStatusDown", func(t *testing.T) {
		t.Parallel()
		dsn, bdb := emptyDatabase(t)
		e := baseEnv(t).with("DATABASE_URL", dsn)
		names := migrationNames(t)
		all := strings.Join(names, " ")

		code, stdout, stderr := runCLI(t, e, "migrate", "status")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "applied: none\npending: "+all+"\n", stdout)

		code, stdout, stderr = runCLI(t, e, "migrate", "up")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, fmt.Sprintf("applied %d migration(s) %s\n", len(names), all), stdout)
		require.True(t, tableExists(t, bdb, "machines"))

		code, stdout, stderr = runCLI(t, e, "migrate", "up")
		require.Equal(t, 0, code, stderr)
		require.Contains(t, stdout, "applied 0 migration(s)")

		code, stdout, stderr = runCLI(t, e, "migrate", "status")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "applied: "+all+"\npending: none\n", stdout)

		// Without --yes, down says what it would roll back and changes nothing.
		code, stdout, stderr = runCLI(t, e, "migrate", "down")
		require.Equal(t, 2, code, stdout)
		require.Empty(t, stdout)
		require.Contains(t, stderr, fmt.Sprintf("migrate down would roll back %d migration(s), %s (that is every migration", len(names), all))
		require.Contains(t, stderr, "fleetgraph migrate down --yes")
		require.True(t, tableExists(t, bdb, "machines"), "nothing was rolled back")
		code, stdout, _ = runCLI(t, e, "migrate", "status")
		require.Equal(t, 0, code)
		require.Equal(t, "applied: "+all+"\npending: none\n", stdout)

		code, stdout, stderr = runCLI(t, e, "migrate", "down", "--yes")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, fmt.Sprintf("rolled back %d migration(s) %s\n", len(names), all), stdout)
		require.False(t, tableExists(t, bdb, "machines"))

		// With nothing to roll back, down needs no --yes.
		code, stdout, stderr = runCLI(t, e, "migrate", "down")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "rolled back 0 migration(s) \n", stdout)

		// A batch of its own is rolled back alone, and named as such.
		_, err := migrations.Up(context.Background(), bdb)
		require.NoError(t, err)
		_, err = bdb.ExecContext(context.Background(), "DELETE FROM bun_migrations WHERE name = ?", names[len(names)-1])
		require.NoError(t, err)
		// Undone by hand, as its down file undoes it.
		downs, err := filepath.Glob(filepath.Join("migrations", names[len(names)-1]+"_*.down.sql"))
		require.NoError(t, err)
		require.Len(t, downs, 1)
		down, err := os.ReadFile(downs[0])
		require.NoError(t, err)
		_, err = bdb.ExecContext(context.Background(), string(down))
		require.NoError(t, err)
		code, stdout, stderr = runCLI(t, e, "migrate", "up")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "applied 1 migration(s) "+names[len(names)-1]+"\n", stdout)
		code, _, stderr = runCLI(t, e, "migrate", "down")
		require.Equal(t, 2, code)
		require.Contains(t, stderr, "would roll back 1 migration(s), "+names[len(names)-1]+" (dropping what they created")
		code, stdout, stderr = runCLI(t, e, "migrate", "--yes", "down")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "rolled back 1 migration(s) "+names[len(names)-1]+"\n", stdout)
		require.True(t, tableExists(t, bdb, "machines"), "only the last batch was rolled back")

		// The action may also come before the flags.
		code, stdout, stderr = runCLI(t, baseEnv(t), "migrate", "status", "--database-url", dsn)
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "applied: "+strings.Join(names[:len(names)-1], " ")+"\npending: "+names[len(names)-1]+"\n", stdout)
	})

	// A migration that fails stays pending, and the next migrate up runs it.
	t.Run("FailedMigrationStaysPending", func(t *testing.T) {
		t.Parallel()
		dsn, bdb := emptyDatabase(t)
		e := baseEnv(t).with("DATABASE_URL", dsn)
		names := migrationNames(t)
		_, err := bdb.ExecContext(context.Background(), "CREATE TABLE schedules (x int)")
		require.NoError(t, err)

		code, stdout, stderr := runCLI(t, e, "migrate", "up")
		require.Equal(t, 1, code, stdout)
		require.Equal(t, fmt.Sprintf("applied 4 migration(s) %s\n", strings.Join(names[:4], " ")), stdout)
		require.Contains(t, stderr, "0005")
		code, stdout, stderr = runCLI(t, e, "migrate", "status")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "applied: "+strings.Join(names[:4], " ")+"\npending: "+strings.Join(names[4:], " ")+"\n", stdout)

		_, err = bdb.ExecContext(context.Background(), "DROP TABLE schedules")
		require.NoError(t, err)
		code, stdout, stderr = runCLI(t, e, "migrate", "up")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, fmt.Sprintf("applied %d migration(s) %s\n", len(names)-4, strings.Join(names[4:], " ")), stdout)
	})

	t.Run("UnknownMigrationInStatus", func(t *testing.T) {
		t.Parallel()
		d := dbtest.New(t)
		_, err := d.ExecContext(context.Background(), "INSERT INTO bun_migrations (name, group_id, migrated_at) VALUES ('9999', 1, now())")
		require.NoError(t, err)
		code, stdout, stderr := runCLI(t, baseEnv(t).with("DATABASE_URL", d.DSN), "migrate", "status")
		require.Equal(t, 0, code, stderr)
		require.Contains(t, stdout, "unknown to this binary: 9999")
	})

	for _, tt := range []struct {
		name string
		args []string
		env  env
		want string
	}{
		{"NoAction", []string{"migrate"}, nil, "migrate up|down|status"},
		{"UnknownAction", []string{"migrate", "sideways"}, nil, "migrate up|down|status"},
		{"TwoActions", []string{"migrate", "up", "down"}, nil, "migrate up|down|status"},
		{"BadLogLevel", []string{"migrate", "status"}, env{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := baseEnv(t)
			for k, v := range tt.env {
				e[k] = v
			}
			code, stdout, stderr := runCLI(t, e, tt.args...)
			require.Equal(t, 2, code, stderr)
			require.Empty(t, stdout)
			require.Contains(t, stderr, tt.want)
			entries, err := os.ReadDir(e["DATA_DIR"])
			require.NoError(t, err)
			require.Empty(t, entries, "a usage error must not start the private PostgreSQL")
		})
	}
}

// migrationNames lists the migrations in ./migrations, in order.
func migrationNames(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("migrations")
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".up.sql") {
			name, _, _ := strings.Cut(e.Name(), "_")
			names = append(names, name)
		}
	}
	require.NotEmpty(t, names)
	slices.Sort(names)
	return names
}

// servingLog matches the log line serve writes once it listens.
var servingLog = regexp.MustCompile(`msg=serving addr=\S+ graphql=(http://\S+)/graphql`)

func TestServeExternalDatabase(t *testing.T) {
	t.Parallel()

	t.Run("RefusesUnmigratedDatabase", func(t *testing.T) {
		t.Parallel()
		dsn, bdb := emptyDatabase(t)
		e := baseEnv(t).with("DATABASE_URL", dsn, "JWT_SECRET", testSecret)
		code, stdout, stderr := runCLI(t, e, "serve", "--listen", "127.0.0.1:0")
		require.Equal(t, 1, code, stderr)
		require.Empty(t, stdout)
		require.Contains(t, stderr, "migrate up")
		require.NotContains(t, stderr, "msg=serving")
		require.False(t, tableExists(t, bdb, "bun_migrations"), "serve without --auto-migrate changes nothing")
	})

	t.Run("AutoMigrate", func(t *testing.T) {
		t.Parallel()
		dsn, bdb := emptyDatabase(t)
		e := baseEnv(t).with("DATABASE_URL", dsn, "JWT_SECRET", testSecret)
		p := startServe(t, e, "--listen", "127.0.0.1:0", "--auto-migrate")
		url := p.waitFor(t, p.stderr, servingLog)[1]
		require.True(t, tableExists(t, bdb, "machines"))

		status, _, body := get(t, url+"/readyz")
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, "ready\n", body)

		// Production defaults: no playground, no demo fleet, no token on stdout.
		status, _, _ = get(t, url+"/")
		require.Equal(t, http.StatusNotFound, status)
		require.Empty(t, p.stdout.String())
		tok, err := verifier(t, testSecret, "").Mint(auth.MintOptions{UserID: demo.Alice, Role: auth.RoleUser, TTL: time.Minute})
		require.NoError(t, err)
		require.Zero(t, machineCount(t, url, tok))

		require.Equal(t, 0, p.stop(t), p.stderr.String())
		entries, err := os.ReadDir(e["DATA_DIR"])
		require.NoError(t, err)
		require.Empty(t, entries, "with DATABASE_URL nothing is written to DATA_DIR")
	})

	// REQUIRE_TENANT_CLAIM=true refuses a token naming no tenant, over
	// HTTP; the token command names the default tenant, so its tokens
	// still pass.
	t.Run("RequireTenantClaim", func(t *testing.T) {
		t.Parallel()
		dsn, _ := emptyDatabase(t)
		e := baseEnv(t).with("DATABASE_URL", dsn, "JWT_SECRET", testSecret, "REQUIRE_TENANT_CLAIM", "true")
		p := startServe(t, e, "--listen", "127.0.0.1:0", "--auto-migrate")
		url := p.waitFor(t, p.stderr, servingLog)[1]
		tenantless, err := verifier(t, testSecret, "").Mint(auth.MintOptions{UserID: demo.Alice, Role: auth.RoleUser, TTL: time.Minute})
		require.NoError(t, err)
		status, resp := postGraphQL(t, url, "Bearer "+tenantless, `{ machines { totalCount } }`)
		require.Equal(t, http.StatusUnauthorized, status)
		require.Len(t, resp.Errors, 1)
		require.Contains(t, resp.Errors[0].Message, "names no tenant")
		require.Contains(t, []string{"", "null"}, string(resp.Data))

		code, stdout, stderr := runCLI(t, baseEnv(t).with("JWT_SECRET", testSecret), "token")
		require.Equal(t, 0, code, stderr)
		require.Zero(t, machineCount(t, url, singleToken(t, stdout)))
		require.Equal(t, 0, p.stop(t), p.stderr.String())
	})

	t.Run("AutoMigrateFromEnv", func(t *testing.T) {
		t.Parallel()
		dsn, bdb := emptyDatabase(t)
		e := baseEnv(t).with("DATABASE_URL", dsn, "JWT_SECRET", testSecret, "AUTO_MIGRATE", "true", "PLAYGROUND", "1")
		p := startServe(t, e, "--listen", "127.0.0.1:0")
		url := p.waitFor(t, p.stderr, servingLog)[1]
		require.True(t, tableExists(t, bdb, "machines"))
		status, _, body := get(t, url+"/")
		require.Equal(t, http.StatusOK, status)
		require.Contains(t, body, "graphiql")
		require.Equal(t, 0, p.stop(t), p.stderr.String())
	})
}

// welcome matches the lines the embedded mode prints once it serves.
var (
	welcomeURL      = regexp.MustCompile(`Fleetgraph is running\. Playground: (http://\S+)/[ \n]`)
	welcomeHeader   = regexp.MustCompile(`\{"Authorization": "Bearer ([A-Za-z0-9_.-]+)"\}\n`)
	welcomeRobotKey = regexp.MustCompile(`\{"Authorization": "Bearer (crpa_[A-Za-z0-9_-]+)"\}\n`)
)

// pgDataDir creates a folder the postgres user can reach: as root, the
// private PostgreSQL runs as postgres, and MkdirTemp (and t.TempDir's
// parent) is 0700. It is removed when t ends.
func pgDataDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fgsrv")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() {
		// The server stops its PostgreSQL before run returns; should a
		// failed test leave one, stop it before removing its folder.
		if pid, ok := postmasterPID(filepath.Join(dir, "postgres")); ok {
			_ = syscall.Kill(pid, syscall.SIGQUIT)
		}
		_ = os.RemoveAll(dir)
	})
	return dir
}

// postmasterPID returns the pid in pgDir/postmaster.pid, if there is one.
func postmasterPID(pgDir string) (int, bool) {
	data, err := os.ReadFile(filepath.Join(pgDir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	return pid, err == nil && pid > 0
}

// requireStopped checks that the postmaster pid is gone along with its pid file.
func requireStopped(t *testing.T, pgDir string, pid int) {
	t.Helper()
	require.NoFileExists(t, filepath.Join(pgDir, "postmaster.pid"))
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "postmaster %d still running", pid)
}

// TestServeEmbedded runs the development mode end to end: a private
// PostgreSQL in DATA_DIR, the demo fleet, the printed token, the other
// commands sharing the data folder, shutdown, and a restart on the same data.
func TestServeEmbedded(t *testing.T) {
	t.Parallel()
	dataDir := pgDataDir(t)
	pgDir := filepath.Join(dataDir, "postgres")
	e := env{"DATA_DIR": dataDir}

	p := startServe(t, e, "--listen", "127.0.0.1:0")
	url := p.waitFor(t, p.stdout, welcomeURL)[1]
	token := p.waitFor(t, p.stdout, welcomeHeader)[1]
	pid, ok := postmasterPID(pgDir)
	require.True(t, ok, "the private PostgreSQL runs in DATA_DIR/postgres")

	t.Run("Healthz", func(t *testing.T) {
		status, _, body := get(t, url+"/healthz")
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, "ok\n", body)
	})

	t.Run("Readyz", func(t *testing.T) {
		status, _, body := get(t, url+"/readyz")
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, "ready\n", body)
	})

	t.Run("Playground", func(t *testing.T) {
		status, header, body := get(t, url+"/")
		require.Equal(t, http.StatusOK, status)
		require.Contains(t, header.Get("Content-Type"), "text/html")
		require.Contains(t, body, `id="graphiql"`)
		require.Contains(t, body, "/graphql")
		// It opens signed in as the demo user, with a working token.
		m := regexp.MustCompile(`data-default-headers="{&#34;Authorization&#34;: &#34;Bearer ([^&]+)&#34;}"`).FindStringSubmatch(body)
		require.NotNil(t, m, "the page carries the demo user's header: %s", body)
		require.Equal(t, "no-store", header.Get("Cache-Control"))
		require.Equal(t, 3, machineCount(t, url, m[1]))

		// A page of another site whose name was rebound to this
		// address reads the page with its own Host: no token for it.
		req, err := http.NewRequest(http.MethodGet, url+"/", nil)
		require.NoError(t, err)
		req.Host = "rebind.attacker.example:8080"
		res, err := httpClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		rebound, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Contains(t, string(rebound), `id="graphiql"`)
		require.NotContains(t, string(rebound), "data-default-headers")
		require.NotContains(t, string(rebound), m[1])
	})

	t.Run("DemoFleetWithPrintedToken", func(t *testing.T) {
		require.Equal(t, 3, machineCount(t, url, token))

		status, resp := postGraphQL(t, url, "Bearer "+token, `{ machines { edges { node { name } } } }`)
		require.Equal(t, http.StatusOK, status)
		require.Empty(t, resp.Errors)
		require.JSONEq(t, `{"machines":{"edges":[{"node":{"name":"sorter-01"}},{"node":{"name":"press-02"}},{"node":{"name":"press-01"}}]}}`, string(resp.Data))
	})

	t.Run("DemoRobotWithPrintedKey", func(t *testing.T) {
		key := p.waitFor(t, p.stdout, welcomeRobotKey)[1]
		status, resp := postGraphQL(t, url, "Bearer "+key, `{ currentRobot { name } jobs { totalCount } }`)
		require.Equal(t, http.StatusOK, status)
		require.Empty(t, resp.Errors)
		require.JSONEq(t, `{"currentRobot":{"name":"robot-lyon-1"},"jobs":{"totalCount":0}}`, string(resp.Data))
		status, resp = postGraphQL(t, url, "Bearer "+token, `{ robots { totalCount } jobs(filter: {status: QUEUED}) { totalCount } workflows { edges { node { name } } } }`)
		require.Equal(t, http.StatusOK, status)
		require.JSONEq(t, `{"robots":{"totalCount":2},"jobs":{"totalCount":5},"workflows":{"edges":[{"node":{"name":"invoice-processing"}}]}}`, string(resp.Data))
	})

	t.Run("AnonymousAndBadTokens", func(t *testing.T) {
		status, resp := postGraphQL(t, url, "", `{ machines { totalCount } }`)
		require.Equal(t, http.StatusOK, status)
		require.NotEmpty(t, resp.Errors)
		require.Equal(t, "UNAUTHENTICATED", resp.Errors[0].Extensions["code"])

		status, resp = postGraphQL(t, url, "Bearer "+token+"x", `{ machines { totalCount } }`)
		require.Equal(t, http.StatusUnauthorized, status)
		require.Equal(t, "UNAUTHENTICATED", resp.Errors[0].Extensions["code"])
	})

	t.Run("TokenCommandUsesSecretInDataDir", func(t *testing.T) {
		code, stdout, stderr := runCLI(t, e, "token")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, 3, machineCount(t, url, singleToken(t, stdout)))

		code, stdout, stderr = runCLI(t, e, "token", "--sub", demo.Bob.String())
		require.Equal(t, 0, code, stderr)
		require.Equal(t, 1, machineCount(t, url, singleToken(t, stdout)), "bob has one machine of his own")
	})

	t.Run("MigrateStatusAttachesToRunningCluster", func(t *testing.T) {
		code, stdout, stderr := runCLI(t, e, "migrate", "status")
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "applied: "+strings.Join(migrationNames(t), " ")+"\npending: none\n", stdout)

		after, ok := postmasterPID(pgDir)
		require.True(t, ok, "migrate must not stop the server's PostgreSQL")
		require.Equal(t, pid, after)
		require.Equal(t, 3, machineCount(t, url, token))
		status, _, body := get(t, url+"/readyz")
		require.Equal(t, http.StatusOK, status, body)
	})

	t.Run("OperatorCommandsAttachToRunningCluster", func(t *testing.T) {
		code, stdout, stderr := runCLI(t, e, "robots", "list", "--tenant", demo.Tenant.String(), "--json")
		require.Equal(t, 0, code, stderr)
		var robots []robotView
		require.NoError(t, json.Unmarshal([]byte(stdout), &robots))
		require.Len(t, robots, 2, "the demo fleet's robots")
		after, ok := postmasterPID(pgDir)
		require.True(t, ok, "robots list must not stop the server's PostgreSQL")
		require.Equal(t, pid, after)
	})

	t.Run("ShutdownClosesWebsocketsWithGoingAway", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"/graphql", &websocket.DialOptions{
			Subprotocols: []string{"graphql-transport-ws"},
		})
		require.NoError(t, err)
		defer conn.CloseNow()
		require.Equal(t, "graphql-transport-ws", resp.Header.Get("Sec-WebSocket-Protocol"))

		init, err := json.Marshal(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "Bearer " + token}})
		require.NoError(t, err)
		require.NoError(t, conn.Write(ctx, websocket.MessageText, init))
		_, msg, err := conn.Read(ctx)
		require.NoError(t, err)
		var ack struct{ Type string }
		require.NoError(t, json.Unmarshal(msg, &ack))
		require.Equal(t, "connection_ack", ack.Type)

		closed := make(chan error, 1)
		go func() {
			for {
				if _, _, err := conn.Read(ctx); err != nil {
					closed <- err
					return
				}
			}
		}()

		p.cancel()
		select {
		case err := <-closed:
			require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(err), "closed with %v", err)
		case <-ctx.Done():
			t.Fatal("the websocket was not closed within a minute of shutdown")
		}
		require.Equal(t, 0, p.stop(t), p.stderr.String())
		requireStopped(t, pgDir, pid)
	})

	// With no server running, an operator command starts the cluster for
	// its own run and stops it after.
	t.Run("OperatorCommandsStartAStoppedCluster", func(t *testing.T) {
		code, stdout, stderr := runCLI(t, e, "robots", "list", "--tenant", demo.Tenant.String())
		require.Equal(t, 0, code, stderr)
		require.Contains(t, stdout, "robot-lyon-1")
		require.NoFileExists(t, filepath.Join(pgDir, "postmaster.pid"), "the cluster is stopped again")
	})

	t.Run("RestartKeepsData", func(t *testing.T) {
		p2 := startServe(t, e, "--listen", "127.0.0.1:0")
		url2 := p2.waitFor(t, p2.stdout, welcomeURL)[1]
		token2 := p2.waitFor(t, p2.stdout, welcomeHeader)[1]
		pid2, ok := postmasterPID(pgDir)
		require.True(t, ok)

		require.Equal(t, 3, machineCount(t, url2, token2), "the demo fleet survived and was not seeded again")
		require.Equal(t, 3, machineCount(t, url2, token), "the secret in DATA_DIR survived: old tokens still work")

		require.Equal(t, 0, p2.stop(t), p2.stderr.String())
		requireStopped(t, pgDir, pid2)
	})
}

// The development playground's token is minted for each page: a server
// left running longer than the token lives still hands out a valid one.
func TestPlaygroundTokenIsMintedPerPage(t *testing.T) {
	t.Parallel()
	now := time.Now()
	j, err := auth.NewJWT(auth.JWTConfig{Secret: []byte(testSecret), Audience: "authenticated", Now: func() time.Time { return now }})
	require.NoError(t, err)
	pg := newPlayground(true, j)
	headerOf := regexp.MustCompile(`data-default-headers="{&#34;Authorization&#34;: &#34;Bearer ([^&]+)&#34;}"`)
	pageToken := func() string {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Host, req.RemoteAddr = "localhost:8080", "127.0.0.1:50000"
		rec := httptest.NewRecorder()
		pg.ServeHTTP(rec, req)
		m := headerOf.FindStringSubmatch(rec.Body.String())
		require.NotNil(t, m, "the page carries the demo user's header: %s", rec.Body.String())
		return m[1]
	}
	first := pageToken()
	p, err := j.Verify(first)
	require.NoError(t, err)
	require.Equal(t, demo.Alice, p.UserID)

	now = now.Add(demoTokenTTL + time.Hour) // the server ran on; the first token expired
	_, err = j.Verify(first)
	require.Error(t, err)
	p, err = j.Verify(pageToken())
	require.NoError(t, err, "a page served now carries a valid token")
	require.Equal(t, demo.Alice, p.UserID)
}

// Guard against a helper silently matching nothing.
func TestWelcomePatterns(t *testing.T) {
	t.Parallel()
	j := verifier(t, testSecret, "")
	var out bytes.Buffer
	require.NoError(t, printWelcome(&out, j, "http://127.0.0.1:1234", true, t.TempDir()))
	require.Equal(t, "http://127.0.0.1:1234", welcomeURL.FindStringSubmatch(out.String())[1])
	tok := welcomeHeader.FindStringSubmatch(out.String())[1]
	p, err := j.Verify(tok)
	require.NoError(t, err)
	require.Equal(t, demo.Alice, p.UserID)
	require.Equal(t, demo.Tenant, p.TenantID)

	out.Reset()
	require.NoError(t, printWelcome(&out, j, "http://localhost:8080", false, t.TempDir()))
	require.Contains(t, out.String(), "GraphQL: http://localhost:8080/graphql")
	require.False(t, welcomeURL.MatchString(out.String()))
}

// Log lines of the private PostgreSQL's supervision.
var (
	postgresBackLog       = regexp.MustCompile(`msg="PostgreSQL is back" dir=\S+ pid=(\d+) owned=(\w+)`)
	postgresRestartingLog = regexp.MustCompile(`msg="restarting PostgreSQL"`)
	postgresAttachedLog   = regexp.MustCompile(`msg="attached to running PostgreSQL"`)
	listenerBackLog       = regexp.MustCompile(`msg="notification listener reconnected"`)
)

// waitReady polls url/readyz until it answers 200, failing t after startTimeout.
func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	pace := time.NewTicker(50 * time.Millisecond)
	defer pace.Stop()
	for {
		status, _, body := get(t, url+"/readyz")
		if status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still answers %d %q after %s", status, body, startTimeout)
		}
		<-pace.C
	}
}

// TestServeEmbeddedRestartsPostgres kills the private PostgreSQL of a
// running server as hard as it can die (SIGKILL: stale postmaster.pid,
// backends still holding shared memory) and waits for the server to bring
// it back: /readyz, queries and subscriptions work again on the same data.
func TestServeEmbeddedRestartsPostgres(t *testing.T) {
	t.Parallel()
	dataDir := pgDataDir(t)
	pgDir := filepath.Join(dataDir, "postgres")
	p := startServe(t, env{"DATA_DIR": dataDir}, "--listen", "127.0.0.1:0")
	url := p.waitFor(t, p.stdout, welcomeURL)[1]
	token := p.waitFor(t, p.stdout, welcomeHeader)[1]
	pid, ok := postmasterPID(pgDir)
	require.True(t, ok)

	f := faulttest.NewFleet(t, url, token, 1)
	m0 := f.Machines[0]
	sub := faulttest.Subscribe(t, "machines", faulttest.WSURL(url), token, faulttest.AllMachines("machines"))
	f.WaitLive(t, []*faulttest.Subscriber{sub}, "machines", "")

	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	back := p.waitFor(t, p.stderr, postgresBackLog)
	require.Equal(t, "true", back[2], "the server that started PostgreSQL restarts it itself")
	newPID, err := strconv.Atoi(back[1])
	require.NoError(t, err)
	require.NotEqual(t, pid, newPID)
	require.Contains(t, p.stderr.String(), `msg="PostgreSQL exited unexpectedly; restarting it"`)

	waitReady(t, url)
	require.Equal(t, 4, machineCount(t, url, token), "the demo fleet and the machine made before the kill")
	var v int
	faulttest.Retry(t, "touching a machine after the restart", func(ctx context.Context) error {
		v, err = f.TouchMachine(ctx, m0)
		return err
	})
	p.waitFor(t, p.stderr, listenerBackLog)
	sub.WaitReceived(t, "machines", m0, v)

	require.Equal(t, 0, p.stop(t), p.stderr.String())
	requireStopped(t, pgDir, newPID)
}

// TestServeEmbeddedSharedCluster runs servers on one data folder: one that
// merely attached to the private PostgreSQL leaves it running when it exits,
// and one still running when the owner exits takes the cluster over.
func TestServeEmbeddedSharedCluster(t *testing.T) {
	t.Parallel()
	dataDir := pgDataDir(t)
	pgDir := filepath.Join(dataDir, "postgres")
	e := env{"DATA_DIR": dataDir}

	owner := startServe(t, e, "--listen", "127.0.0.1:0")
	ownerURL := owner.waitFor(t, owner.stdout, welcomeURL)[1]
	token := owner.waitFor(t, owner.stdout, welcomeHeader)[1]
	pid, ok := postmasterPID(pgDir)
	require.True(t, ok)

	attached := startServe(t, e, "--listen", "127.0.0.1:0")
	attachedURL := attached.waitFor(t, attached.stdout, welcomeURL)[1]
	attached.waitFor(t, attached.stderr, postgresAttachedLog)
	require.Equal(t, 3, machineCount(t, attachedURL, token))
	require.Equal(t, 0, attached.stop(t), attached.stderr.String())

	now, ok := postmasterPID(pgDir)
	require.True(t, ok, "the attached server left PostgreSQL running")
	require.Equal(t, pid, now)
	require.NoError(t, syscall.Kill(pid, 0))
	status, _, body := get(t, ownerURL+"/readyz")
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, 3, machineCount(t, ownerURL, token))
	require.NotRegexp(t, postgresRestartingLog, owner.stderr.String())

	heir := startServe(t, e, "--listen", "127.0.0.1:0")
	heirURL := heir.waitFor(t, heir.stdout, welcomeURL)[1]
	heir.waitFor(t, heir.stderr, postgresAttachedLog)
	require.Equal(t, 0, owner.stop(t), owner.stderr.String())
	back := heir.waitFor(t, heir.stderr, postgresBackLog)
	require.Equal(t, "true", back[2], "the remaining server took the cluster over")
	newPID, err := strconv.Atoi(back[1])
	require.NoError(t, err)
	require.NotEqual(t, pid, newPID)

	waitReady(t, heirURL)
	require.Equal(t, 3, machineCount(t, heirURL, token))
	require.Equal(t, 0, heir.stop(t), heir.stderr.String())
	requireStopped(t, pgDir, newPID)
}

// TestServeEmbeddedShutdownDuringRestart stops the server (as Ctrl-C does)
// while it is restarting its dead PostgreSQL: the server exits cleanly and
// leaves no PostgreSQL running. Another process holding the cluster's start
// lock keeps the restart in progress until then.
func TestServeEmbeddedShutdownDuringRestart(t *testing.T) {
	t.Parallel()
	dataDir := pgDataDir(t)
	pgDir := filepath.Join(dataDir, "postgres")
	p := startServe(t, env{"DATA_DIR": dataDir}, "--listen", "127.0.0.1:0")
	p.waitFor(t, p.stdout, welcomeURL)
	pid, ok := postmasterPID(pgDir)
	require.True(t, ok)

	lock, err := os.OpenFile(pgDir+".lock", os.O_RDWR, 0)
	require.NoError(t, err)
	defer lock.Close()
	require.NoError(t, syscall.Flock(int(lock.Fd()), syscall.LOCK_EX))
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	p.waitFor(t, p.stderr, postgresRestartingLog)

	require.Equal(t, 0, p.stop(t), p.stderr.String())
	require.NoError(t, lock.Close())
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "the killed postmaster is gone")
	if left, ok := postmasterPID(pgDir); ok {
		require.Equal(t, pid, left, "only the killed postmaster's stale pid file may be left")
	}
	require.NotRegexp(t, postgresBackLog, p.stderr.String())
}

// A playground that cannot load the schema (introspection off) is warned
// about at start, as verify fails it: the page would only say "Error
// fetching schema".
func TestServeWarnsOfAPlaygroundWithoutIntrospection(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN, "JWT_SECRET", testSecret, "PLAYGROUND", "true", "INTROSPECTION", "false")
	p := startServe(t, e, "--listen", "127.0.0.1:0")
	p.waitFor(t, p.stderr, regexp.MustCompile(`level=WARN msg="the playground is on but introspection is off`))
	p.waitFor(t, p.stderr, servingLog)
}
