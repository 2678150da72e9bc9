package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2"
	"github.com/vektah/gqlparser/v2/ast"

	"fleetgraph/auth"
	"fleetgraph/db"
	"fleetgraph/dbtest"
	"fleetgraph/fault"
	"fleetgraph/localpg"
)

// checkOf returns the named check of a verify report, failing if absent.
func checkOf(t *testing.T, r verifyReport, name string) verifyCheck {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("verify reported no %q check: %+v", name, r.Checks)
	return verifyCheck{}
}

// runVerifyJSON runs verify --json and decodes its report.
func runVerifyJSON(t *testing.T, e env, args ...string) (int, verifyReport, string) {
	t.Helper()
	code, stdout, stderr := runCLI(t, e, append([]string{"verify", "--json"}, args...)...)
	var r verifyReport
	require.NoError(t, json.Unmarshal([]byte(stdout), &r), "verify --json prints JSON: %s\nstderr: %s", stdout, stderr)
	return code, r, stderr
}

var verifyChecks = []string{"settings", "JWT secret", "database reachable", "PostgreSQL version", "migrations", "change-feed triggers", "log partitions", "change feed"}

func TestVerify(t *testing.T) {
	t.Parallel()

	type testBundle struct {
		d   *dbtest.Database
		env env
	}
	setup := func(t *testing.T) *testBundle {
		d := dbtest.New(t)
		return &testBundle{d: d, env: baseEnv(t).with("DATABASE_URL", d.DSN, "JWT_SECRET", testSecret)}
	}

	t.Run("Healthy", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		code, stdout, stderr := runCLI(t, b.env, "verify")
		require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout, stderr)
		require.Regexp(t, `(?m)^CHECK\s+STATUS\s+DETAIL$`, stdout)
		for _, name := range verifyChecks {
			require.Regexp(t, `(?m)^`+regexp.QuoteMeta(name)+`\s+OK\s`, stdout)
		}
		require.NotContains(t, stdout, "FAIL")

		code, r, stderr := runVerifyJSON(t, b.env)
		require.Equal(t, 0, code, stderr)
		require.True(t, r.OK)
		for _, name := range verifyChecks {
			require.Equal(t, "ok", checkOf(t, r, name).Status, name)
		}
		require.Contains(t, checkOf(t, r, "change feed").Detail, "came back through LISTEN")
	})

	t.Run("Unmigrated", func(t *testing.T) {
		t.Parallel()
		dsn, _ := emptyDatabase(t)
		e := baseEnv(t).with("DATABASE_URL", dsn, "JWT_SECRET", testSecret)
		code, stdout, stderr := runCLI(t, e, "verify")
		require.Equal(t, 1, code, stdout)
		require.Regexp(t, `(?m)^migrations\s+FAIL\s`, stdout)
		require.Contains(t, stdout, "run `fleetgraph migrate up`")
		require.Contains(t, stderr, "check(s) failed")

		code, r, _ := runVerifyJSON(t, e)
		require.Equal(t, 1, code)
		require.False(t, r.OK)
		mig := checkOf(t, r, "migrations")
		require.Equal(t, "fail", mig.Status)
		require.Contains(t, mig.Detail, "missing migrations 0001")
		require.Contains(t, mig.Advice, "fleetgraph migrate up")
		triggers := checkOf(t, r, "change-feed triggers")
		require.Equal(t, "fail", triggers.Status)
		require.Contains(t, triggers.Advice, "fleetgraph migrate up")
		parts := checkOf(t, r, "log partitions")
		require.Equal(t, "fail", parts.Status)
		require.Contains(t, parts.Advice, "fleetgraph migrate up")
		require.Equal(t, "ok", checkOf(t, r, "database reachable").Status)
	})

	t.Run("TriggersDroppedOrDisabled", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		ctx := context.Background()
		_, err := b.d.ExecContext(ctx, "ALTER TABLE robots DISABLE TRIGGER robots_notify_update")
		require.NoError(t, err)
		_, err = b.d.ExecContext(ctx, "DROP TRIGGER jobs_notify ON jobs")
		require.NoError(t, err)

		code, r, _ := runVerifyJSON(t, b.env)
		require.Equal(t, 1, code)
		c := checkOf(t, r, "change-feed triggers")
		require.Equal(t, "fail", c.Status)
		require.Contains(t, c.Detail, "dropped: jobs_notify on jobs (migration 0003)")
		require.Contains(t, c.Detail, "disabled: robots_notify_update on robots")
		require.Contains(t, c.Advice, "ENABLE TRIGGER")
		require.Contains(t, c.Advice, "CREATE TRIGGER")
		require.Equal(t, "ok", checkOf(t, r, "migrations").Status, "the migrations themselves are applied")
	})

	t.Run("PartitionsAhead", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		ctx := context.Background()
		// The migration made today and 3 days ahead; the day after
		// tomorrow's goes.
		gone := time.Now().UTC().AddDate(0, 0, 2).Format("20060102")
		_, err := b.d.ExecContext(ctx, "DROP TABLE robot_logs_p"+gone)
		require.NoError(t, err)
		code, r, _ := runVerifyJSON(t, b.env)
		require.Equal(t, 1, code)
		c := checkOf(t, r, "log partitions")
		require.Equal(t, "fail", c.Status)
		require.Contains(t, c.Detail, "missing robot_logs_p"+gone+" (today and 3 day(s) ahead")
		require.Contains(t, c.Advice, "fleetgraph serve")
		require.Contains(t, c.Advice, "fleetgraph_ensure_log_partition")
		require.Equal(t, "ok", checkOf(t, r, "change feed").Status, "the other checks still run")

		// Following the advice fixes it.
		_, err = b.d.ExecContext(ctx, "SELECT fleetgraph_ensure_log_partition(?::date)", time.Now().UTC().AddDate(0, 0, 2).Format(time.DateOnly))
		require.NoError(t, err)
		code, r, _ = runVerifyJSON(t, b.env)
		require.Equal(t, 0, code)
		require.Equal(t, "ok", checkOf(t, r, "log partitions").Status)

		// More days ahead than are ready: the configured setting counts.
		code, r, _ = runVerifyJSON(t, b.env.with("LOG_PARTITIONS_AHEAD", "5"))
		require.Equal(t, 1, code)
		c = checkOf(t, r, "log partitions")
		require.Contains(t, c.Detail, "robot_logs_p"+time.Now().UTC().AddDate(0, 0, 5).Format("20060102"))
		require.Contains(t, c.Detail, "5 day(s) ahead")

		// A default partition is refused.
		_, err = b.d.ExecContext(ctx, "CREATE TABLE robot_logs_catchall PARTITION OF robot_logs DEFAULT")
		require.NoError(t, err)
		code, r, _ = runVerifyJSON(t, b.env)
		require.Equal(t, 1, code)
		c = checkOf(t, r, "log partitions")
		require.Contains(t, c.Detail, "default partition attached: robot_logs_catchall")
		require.Contains(t, c.Advice, "DETACH PARTITION robot_logs_catchall")
	})

	t.Run("ContradictingSettings", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		code, r, _ := runVerifyJSON(t, b.env.with("JOB_LEASE_SECONDS", "120", "JOB_PROGRESS_TIMEOUT_SECONDS", "60"))
		require.Equal(t, 1, code)
		c := checkOf(t, r, "settings")
		require.Equal(t, "fail", c.Status)
		require.Contains(t, c.Detail, "JOB_PROGRESS_TIMEOUT_SECONDS")
		require.Contains(t, c.Detail, "JOB_LEASE_SECONDS")
		require.NotEmpty(t, c.Advice)
		require.Equal(t, "ok", checkOf(t, r, "change feed").Status, "the other checks still run")

		code, r, _ = runVerifyJSON(t, b.env.with("PLAYGROUND", "true"))
		require.Equal(t, 1, code)
		c = checkOf(t, r, "playground and introspection")
		require.Equal(t, "fail", c.Status)
		require.Contains(t, c.Advice, "INTROSPECTION=true")

		code, r, _ = runVerifyJSON(t, b.env.with("MAX_SUBSCRIPTIONS_PER_CONNECTION", "600"))
		require.Equal(t, 0, code, "a limit that is never reached is worth a warning only")
		require.Equal(t, "warn", checkOf(t, r, "subscription limits").Status)
	})

	t.Run("JWTSecret", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		code, r, _ := runVerifyJSON(t, b.env.with("JWT_SECRET", "too-short"))
		require.Equal(t, 1, code)
		c := checkOf(t, r, "JWT secret")
		require.Equal(t, "fail", c.Status)
		require.Contains(t, c.Detail, "JWT_SECRET is 9 bytes; at least 32 are required")
		require.Contains(t, c.Advice, "openssl rand -hex 32")

		delete(b.env, "JWT_SECRET")
		code, r, _ = runVerifyJSON(t, b.env)
		require.Equal(t, 1, code)
		c = checkOf(t, r, "JWT secret")
		require.Equal(t, "fail", c.Status)
		require.Contains(t, c.Detail, "JWT_SECRET is unset")
	})

	// An unreachable database is retried for DATABASE_CONNECT_TIMEOUT, as
	// serve retries it, then reported.
	t.Run("Unreachable", func(t *testing.T) {
		t.Parallel()
		e := baseEnv(t).with("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none?sslmode=disable", "JWT_SECRET", testSecret)
		code, r, stderr := runVerifyJSON(t, e, "--database-connect-timeout", "1")
		require.Equal(t, 1, code)
		c := checkOf(t, r, "database reachable")
		require.Equal(t, "fail", c.Status)
		require.Contains(t, c.Detail, "still unreachable after")
		require.Contains(t, c.Advice, "DATABASE_URL")
		require.Contains(t, stderr, "the database is not reachable yet; retrying")
		require.Equal(t, "skipped", checkOf(t, r, "change feed").Status)
	})

	t.Run("BadFlags", func(t *testing.T) {
		t.Parallel()
		code, _, stderr := runCLI(t, baseEnv(t), "verify", "--json=maybe")
		require.Equal(t, 2, code)
		require.Contains(t, stderr, "--json must be true or false")
		code, _, stderr = runCLI(t, baseEnv(t), "verify", "--timeout", "soon")
		require.Equal(t, 2, code)
		require.Contains(t, stderr, "--timeout")
	})
}

// robotJSON creates a robot through the CLI and returns it.
func robotJSON(t *testing.T, e env, args ...string) robotView {
	t.Helper()
	code, stdout, stderr := runCLI(t, e, append([]string{"robots", "create", "--json"}, args...)...)
	require.Equal(t, 0, code, stderr)
	var r robotView
	require.NoError(t, json.Unmarshal([]byte(stdout), &r), stdout)
	return r
}

func TestRobotsCommands(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)

	code, stdout, stderr := runCLI(t, e, "robots", "create", "--name", "lyon-1", "--capabilities", "excel, browser", "--max-jobs", "2", "--hostname", "lyon-1.local")
	require.Equal(t, 0, code, stderr)
	require.Regexp(t, `(?m)^ID\s+NAME\s+STATUS\s+CAPABILITIES\s+MAX JOBS\s+LAST HEARTBEAT$`, stdout)
	require.Regexp(t, `(?m)^[0-9a-f-]{36}\s+lyon-1\s+OFFLINE\s+browser,excel\s+2\s+-$`, stdout)

	second := robotJSON(t, e, "paris-1", "--environment", "production")
	require.Equal(t, "paris-1", second.Name)
	require.Equal(t, "OFFLINE", second.Status)
	require.Equal(t, "production", second.Environment)
	require.Equal(t, []string{}, second.Capabilities)

	code, stdout, stderr = runCLI(t, e, "robots", "list", "--json")
	require.Equal(t, 0, code, stderr)
	var list []robotView
	require.NoError(t, json.Unmarshal([]byte(stdout), &list), stdout)
	require.Len(t, list, 2)
	require.Equal(t, "paris-1", list[0].Name, "newest first")
	require.Equal(t, "lyon-1", list[1].Name)
	require.Equal(t, []string{"browser", "excel"}, list[1].Capabilities)

	code, stdout, _ = runCLI(t, e, "robots", "list", "--capability", "excel")
	require.Equal(t, 0, code)
	require.Contains(t, stdout, "lyon-1")
	require.NotContains(t, stdout, "paris-1")

	// The store's rules, as the API applies them.
	code, _, stderr = runCLI(t, e, "robots", "create", "--name", "lyon-1")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "the tenant already has a robot with this name")

	for _, tt := range []struct {
		args []string
		flag string
	}{
		{[]string{"robots", "create"}, "--name"},
		{[]string{"robots", "create", "--name", "x", "--max-jobs", "0"}, "--max-jobs"},
		{[]string{"robots", "create", "--name", "x", "--capabilities", "a b"}, "--capabilities"},
		{[]string{"robots", "create", "--name", strings.Repeat("x", 101)}, "--name"},
		{[]string{"robots", "create", "--name", "x", "--tenant", "acme"}, "--tenant"},
		{[]string{"robots", "list", "--status", "ASLEEP"}, "--status"},
		{[]string{"robots", "list", "--no-such-flag"}, "no-such-flag"},
		{[]string{"robots", "list", "extra"}, `"extra"`},
		// Not UTF-8: refused by the store, not failed by the driver or stored as U+FFFD.
		{[]string{"robots", "list", "--name-contains", "\xff"}, "--name-contains: filter.nameContains must be valid UTF-8"},
		{[]string{"robots", "create", "--name", "h", "--hostname", "h\xff"}, "--hostname: hostname must be valid UTF-8"},
		{[]string{"robots", "create", "--name", "h\xff"}, "--name: name must be valid UTF-8"},
		{[]string{"robots", "create", "a", "b"}, "unexpected argument"},
		{[]string{"robots"}, "robots list|create"},
		{[]string{"robots", "delete"}, `"delete"`},
	} {
		code, _, stderr := runCLI(t, e, tt.args...)
		require.Equal(t, 2, code, "%v: %s", tt.args, stderr)
		require.Contains(t, stderr, tt.flag, tt.args)
	}

	// After "--" everything is positional, a name that looks like a flag too,
	// but a "--" that is a flag's value ends nothing.
	code, _, stderr = runCLI(t, e, "robots", "create", "--", "dashname", "--json")
	require.Equal(t, 2, code, stderr)
	require.Contains(t, stderr, `unexpected argument "--json"`)

	code, stdout, _ = runCLI(t, e, "robots", "list", "--json")
	require.Equal(t, 0, code)
	require.NoError(t, json.Unmarshal([]byte(stdout), &list))
	require.Len(t, list, 2, "refused commands wrote nothing")

	dashed := robotJSON(t, e, "--", "-dashed")
	require.Equal(t, "-dashed", dashed.Name)
	valued := robotJSON(t, e, "--environment", "--", "valued", "--max-jobs", "3")
	require.Equal(t, "--", valued.Environment)
	require.Equal(t, "valued", valued.Name)
	require.Equal(t, 3, valued.MaxConcurrentJobs, "flags after a -- that was a value are read")
}

func TestKeysCommands(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	robot := robotJSON(t, e, "--name", "lyon-1")
	keys := db.NewAPIKeys()

	code, stdout, stderr := runCLI(t, e, "keys", "create", "--robot", "lyon-1", "--name", "deploy")
	require.Equal(t, 0, code, stderr)
	raw := strings.TrimSuffix(stdout, "\n")
	require.NotContains(t, raw, "\n", "stdout holds the key alone")
	require.True(t, strings.HasPrefix(raw, auth.KeyPrefix), raw)
	require.Contains(t, stderr, "the only time the key is shown")
	p, err := keys.Verify(ctx, d.DB, raw, "")
	require.NoError(t, err, "the printed key authenticates")
	require.Equal(t, robot.ID, p.RobotID)

	code, stdout, stderr = runCLI(t, e, "keys", "create", "--robot", robot.ID.String(), "--expires", "90d", "--json")
	require.Equal(t, 0, code, stderr)
	var created struct {
		Key    string  `json:"key"`
		APIKey keyView `json:"apiKey"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &created), stdout)
	require.True(t, strings.HasPrefix(created.Key, created.APIKey.Prefix))
	require.Equal(t, "cli", created.APIKey.Name)
	require.Equal(t, "system:cli", created.APIKey.CreatedBy)
	require.NotNil(t, created.APIKey.ExpiresAt)
	require.WithinDuration(t, time.Now().Add(90*24*time.Hour), *created.APIKey.ExpiresAt, time.Hour)

	code, stdout, stderr = runCLI(t, e, "keys", "list", "--robot", "lyon-1", "--json")
	require.Equal(t, 0, code, stderr)
	var listed []keyView
	require.NoError(t, json.Unmarshal([]byte(stdout), &listed), stdout)
	require.Len(t, listed, 2)
	require.NotContains(t, stdout, raw, "lists never show a key")
	deploy := listed[1]
	require.Equal(t, "deploy", deploy.Name)
	require.True(t, strings.HasPrefix(raw, deploy.Prefix))

	code, stdout, stderr = runCLI(t, e, "keys", "revoke", deploy.ID.String())
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "revoked API key "+deploy.ID.String())
	_, err = keys.Verify(ctx, d.DB, raw, "")
	require.ErrorIs(t, err, &fault.Error{Code: fault.Unauthenticated}, "a revoked key no longer authenticates")
	_, err = keys.Verify(ctx, d.DB, created.Key, "")
	require.NoError(t, err, "the other key still works")

	code, _, stderr = runCLI(t, e, "keys", "revoke", "--json", deploy.ID.String())
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "already revoked")

	code, stdout, _ = runCLI(t, e, "keys", "list", "--robot", "lyon-1")
	require.Equal(t, 0, code)
	require.Regexp(t, `(?m)^ID\s+NAME\s+PREFIX\s+CREATED\s+EXPIRES\s+LAST USED\s+REVOKED$`, stdout)
	require.NotContains(t, stdout, deploy.ID.String(), "revoked keys are hidden without --all")
	code, stdout, _ = runCLI(t, e, "keys", "list", "--robot", "lyon-1", "--all")
	require.Equal(t, 0, code)
	require.Contains(t, stdout, deploy.ID.String())

	// Audited as the API's key changes are, with the CLI as the actor.
	var audit []string
	require.NoError(t, d.NewRaw("SELECT event || ' ' || coalesce(actor, '-') FROM api_key_audit WHERE api_key_id = ? ORDER BY id", deploy.ID).Scan(ctx, &audit))
	require.Equal(t, []string{"CREATED system:cli", "REVOKED system:cli", "USED_AFTER_REVOKE -"}, audit)

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"keys", "create"}, "--robot is required"},
		{[]string{"keys", "create", "--robot", "lyon-1", "--expires", "-1h"}, "--expires"},
		{[]string{"keys", "create", "--robot", "lyon-1", "--expires", "2001-01-01T00:00:00Z"}, "--expires"},
		{[]string{"keys", "create", "--robot", "lyon-1", "--expires", "soon"}, "--expires"},
		{[]string{"keys", "create", "--robot", "lyon-1", "--expires", "99999999999d"}, "--expires"},
		{[]string{"keys", "create", "--robot", "lyon-1", "--expires", "0d"}, "--expires"},
		{[]string{"keys", "create", "--robot", "lyon-1", "--expires", "-1d"}, "--expires"},
		{[]string{"keys", "create", "--robot", "lyon-1", "--expires", "-281474976710626d"}, "--expires"}, // wrapped to +30 days
		{[]string{"keys", "create", "--robot", "lyon-1", "--expires", "-9223372036854775808d"}, "--expires"},
		{[]string{"keys", "create", "--robot", "lyon-1", "--expires", "9999-12-31T23:59:59-23:00"}, "--expires"}, // year 10000 in UTC
		{[]string{"keys", "create", "--robot", "lyon-1", "--tenant", "00000000-0000-0000-0000-000000000000"}, "--tenant"},
		{[]string{"keys", "create", "--robot", "lyon-1", "--name", " "}, "--name"},
		{[]string{"keys", "list"}, "--robot is required"},
		{[]string{"keys", "revoke"}, "say which key"},
		{[]string{"keys", "revoke", "not-a-uuid"}, "must be a UUID"},
		{[]string{"keys", "revoke", uuid.NewString(), "--tenant", "x"}, "--tenant"},
		{[]string{"keys", "list", "--robot", "lyon-1", "--all=perhaps"}, "--all"},
		{[]string{"keys", "rotate"}, `"rotate"`},
	} {
		code, _, stderr := runCLI(t, e, tt.args...)
		require.Equal(t, 2, code, "%v: %s", tt.args, stderr)
		require.Contains(t, stderr, tt.want, tt.args)
	}
	code, _, stderr = runCLI(t, e, "keys", "create", "--robot", "nobody")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, `no robot "nobody"`)

	var count int
	require.NoError(t, d.NewRaw("SELECT count(*) FROM api_keys").Scan(ctx, &count))
	require.Equal(t, 2, count, "refused commands created no key")
}

// TestKeysIsolation: --tenant scopes every command to that tenant; another
// tenant's robots and keys are not found, whether named by id or by name.
func TestKeysIsolation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	tenantA, tenantB := uuid.NewString(), uuid.NewString()
	robot := robotJSON(t, e, "--name", "secret-robot", "--tenant", tenantA)
	code, stdout, stderr := runCLI(t, e, "keys", "create", "--robot", "secret-robot", "--tenant", tenantA, "--json")
	require.Equal(t, 0, code, stderr)
	var created struct {
		Key    string  `json:"key"`
		APIKey keyView `json:"apiKey"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &created))

	for _, tenant := range []string{tenantB, auth.DefaultTenant.String()} {
		for _, ref := range []string{robot.ID.String(), "secret-robot"} {
			code, stdout, stderr := runCLI(t, e, "keys", "list", "--robot", ref, "--tenant", tenant, "--json")
			require.Equal(t, 1, code, stdout)
			require.Contains(t, stderr, "no robot")
			require.NotContains(t, stdout+stderr, created.APIKey.ID.String())

			code, _, stderr = runCLI(t, e, "keys", "create", "--robot", ref, "--tenant", tenant)
			require.Equal(t, 1, code)
			require.Contains(t, stderr, "no robot")
		}
		code, _, stderr := runCLI(t, e, "keys", "revoke", created.APIKey.ID.String(), "--tenant", tenant)
		require.Equal(t, 1, code)
		require.Contains(t, stderr, "no API key "+created.APIKey.ID.String())

		code, stdout, _ := runCLI(t, e, "robots", "list", "--tenant", tenant, "--json")
		require.Equal(t, 0, code)
		require.JSONEq(t, "[]", stdout)
	}
	_, err := db.NewAPIKeys().Verify(ctx, d.DB, created.Key, "")
	require.NoError(t, err, "another tenant's revoke changed nothing")
	var revoked int
	require.NoError(t, d.NewRaw("SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL").Scan(ctx, &revoked))
	require.Zero(t, revoked)
	code, stdout, _ = runCLI(t, e, "keys", "list", "--robot", "secret-robot", "--tenant", tenantA)
	require.Equal(t, 0, code)
	require.Contains(t, stdout, created.APIKey.ID.String(), "its own tenant sees it")
}

func TestSchemaIntrospection(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := runCLI(t, baseEnv(t), "schema", "--introspection")
	require.Equal(t, 0, code, stderr)
	var res struct {
		Data struct {
			Schema struct {
				QueryType        struct{ Name string } `json:"queryType"`
				MutationType     struct{ Name string } `json:"mutationType"`
				SubscriptionType struct{ Name string } `json:"subscriptionType"`
				Types            []struct {
					Kind   string `json:"kind"`
					Name   string `json:"name"`
					Fields []struct {
						Name string `json:"name"`
					} `json:"fields"`
					InputFields []struct {
						Name string `json:"name"`
					} `json:"inputFields"`
				} `json:"types"`
			} `json:"__schema"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &res))
	s := res.Data.Schema
	require.Equal(t, "Query", s.QueryType.Name)
	require.Equal(t, "Mutation", s.MutationType.Name)
	require.Equal(t, "Subscription", s.SubscriptionType.Name)

	// The same types and fields as the SDL that `schema` prints.
	want, err := gqlparser.LoadSchema(&ast.Source{Name: "schema.graphqls", Input: schemaSDL})
	require.NoError(t, err)
	var wantTypes, gotTypes []string
	for name, def := range want.Types {
		var fields []string
		for _, f := range def.Fields {
			if !strings.HasPrefix(f.Name, "__") {
				fields = append(fields, f.Name)
			}
		}
		slices.Sort(fields)
		wantTypes = append(wantTypes, string(def.Kind)+" "+name+" "+strings.Join(fields, ","))
	}
	for _, ty := range s.Types {
		var fields []string
		for _, f := range ty.Fields {
			fields = append(fields, f.Name)
		}
		for _, f := range ty.InputFields {
			fields = append(fields, f.Name)
		}
		slices.Sort(fields)
		gotTypes = append(gotTypes, ty.Kind+" "+ty.Name+" "+strings.Join(fields, ","))
	}
	require.ElementsMatch(t, wantTypes, gotTypes)
	require.Contains(t, gotTypes, "SCALAR Time ")

	code, stdout, _ = runCLI(t, baseEnv(t), "schema")
	require.Equal(t, 0, code)
	require.Equal(t, schemaSDL, stdout, "without the flag: the SDL")

	code, _, stderr = runCLI(t, baseEnv(t), "schema", "--introspection=sometimes")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "--introspection must be true or false")
}

func TestOperatorHelpAndFlags(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"verify", "--help"}, []string{"Usage: fleetgraph verify", "-json", "-timeout",
			"-database-url", "[env DATABASE_URL]", "-jwt-secret", "[env JWT_SECRET]", "-job-lease-seconds", "[env JOB_LEASE_SECONDS]"}},
		{[]string{"robots", "--help"}, []string{"Usage: fleetgraph robots list|create"}},
		{[]string{"robots", "list", "--help"}, []string{"Usage: fleetgraph robots list", "-json", "-tenant", "-status",
			"-database-url", "[env DATABASE_URL]", "-data-dir", "[env DATA_DIR]", "-log-level", "[env LOG_LEVEL]"}},
		{[]string{"robots", "create", "-h"}, []string{"Usage: fleetgraph robots create", "-name", "-capabilities", "-max-jobs", "-tenant", "-json"}},
		{[]string{"keys", "help"}, []string{"Usage: fleetgraph keys create|list|revoke"}},
		{[]string{"keys", "create", "--help"}, []string{"Usage: fleetgraph keys create --robot NAME-or-ID", "-robot", "-name", "-expires", "-json", "-tenant"}},
		{[]string{"keys", "list", "--help"}, []string{"Usage: fleetgraph keys list", "-robot", "-all", "-json"}},
		{[]string{"keys", "revoke", "--help"}, []string{"Usage: fleetgraph keys revoke ID", "-json", "-tenant"}},
		{[]string{"schema", "--help"}, []string{"Usage: fleetgraph schema", "-introspection"}},
		{[]string{"help"}, []string{"verify", "robots list|create", "keys create|list|revoke", "schema [--introspection]"}},
		{[]string{"help", "robots", "list"}, []string{"Usage: fleetgraph robots list", "-status"}},
		{[]string{"help", "logs", "cleanup"}, []string{"Usage: fleetgraph logs cleanup", "-retention-days", "-dry-run"}},
		// A flag after help's words is not the command's: it would take
		// --help as its value and run the command.
		{[]string{"help", "token", "--jwt-issuer"}, []string{"Usage: fleetgraph token"}},
		{[]string{"help", "serve", "--data-dir"}, []string{"Usage: fleetgraph serve"}},
	} {
		code, stdout, stderr := runCLI(t, baseEnv(t), tt.args...)
		require.Equal(t, 0, code, "%v: %s", tt.args, stderr)
		for _, w := range tt.want {
			require.Contains(t, stdout+stderr, w, tt.args)
		}
	}

	for _, cmd := range [][]string{{"verify"}, {"robots", "list"}, {"robots", "create"}, {"keys", "create"}, {"keys", "list"}, {"keys", "revoke"}, {"schema"}} {
		code, _, stderr := runCLI(t, baseEnv(t), append(cmd, "--no-such-flag")...)
		require.Equal(t, 2, code, cmd)
		require.Contains(t, stderr, "no-such-flag", cmd)
	}

	// Every command reads LOG_LEVEL and LOG_FORMAT with serve's defaults.
	levelRE := regexp.MustCompile(`-log-level string\n\s+[^\n]*\[env LOG_LEVEL\] \(default "(\w+)"\)`)
	formatRE := regexp.MustCompile(`-log-format string\n\s+[^\n]*\[env LOG_FORMAT\] \(default "(\w+)"\)`)
	for _, cmd := range [][]string{{"serve"}, {"migrate"}, {"verify"}, {"robots", "list"}, {"keys", "create"}} {
		_, stdout, stderr := runCLI(t, baseEnv(t), append(cmd, "--help")...)
		m := levelRE.FindStringSubmatch(stdout + stderr)
		require.NotNil(t, m, "%v --help shows LOG_LEVEL's default", cmd)
		require.Equal(t, "info", m[1], "%v's LOG_LEVEL default", cmd)
		m = formatRE.FindStringSubmatch(stdout + stderr)
		require.NotNil(t, m, "%v --help shows LOG_FORMAT's default", cmd)
		require.Equal(t, "text", m[1], "%v's LOG_FORMAT default", cmd)
	}
	for _, cmd := range [][]string{{"migrate", "status"}, {"robots", "list"}, {"keys", "list", "--robot", "x"}} {
		code, _, stderr := runCLI(t, baseEnv(t).with("LOG_FORMAT", "xml"), cmd...)
		require.Equal(t, 2, code, cmd)
		require.Contains(t, stderr, "LOG_FORMAT (--log-format) must be text or json", cmd)
	}
}

// TestKeysAgainstServer: a key the CLI creates works on a running server at
// once, and stops working there as soon as the CLI revokes it; verify runs
// beside the server without disturbing it.
func TestKeysAgainstServer(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN, "JWT_SECRET", testSecret)
	p := startServe(t, e, "--listen", "127.0.0.1:0")
	url := p.waitFor(t, p.stderr, servingLog)[1]

	robot := robotJSON(t, e, "--name", "lyon-1")
	code, stdout, stderr := runCLI(t, e, "keys", "create", "--robot", "lyon-1", "--json")
	require.Equal(t, 0, code, stderr)
	var created struct {
		Key    string  `json:"key"`
		APIKey keyView `json:"apiKey"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &created))

	status, res := postGraphQL(t, url, "Bearer "+created.Key, `{ currentRobot { id name } }`)
	require.Equal(t, 200, status)
	require.Empty(t, res.Errors)
	require.JSONEq(t, `{"currentRobot": {"id": "`+robot.ID.String()+`", "name": "lyon-1"}}`, string(res.Data))

	code, _, stderr = runCLI(t, e, "verify")
	require.Equal(t, 0, code, stderr)

	code, _, stderr = runCLI(t, e, "keys", "revoke", created.APIKey.ID.String())
	require.Equal(t, 0, code, stderr)
	// The CLI is another process: the server's key cache forgets the key
	// when the revocation's NOTIFY reaches its listener, milliseconds after
	// the CLI's commit, so the refusal is awaited (with a deadline), not
	// expected of the very next request.
	require.Eventually(t, func() bool {
		_, res = postGraphQL(t, url, "Bearer "+created.Key, `{ currentRobot { id } }`)
		return len(res.Errors) > 0
	}, 30*time.Second, 10*time.Millisecond, "a revoked key no longer authenticates")
	require.Equal(t, "UNAUTHENTICATED", res.Errors[0].Extensions["code"])

	require.Equal(t, 0, p.stop(t))
	require.NotContains(t, p.stderr.String(), "level=ERROR", "verify's NOTIFY did not trouble the server")
}

// TestOperatorRefusesUnmigrated: the provisioning commands refuse a
// database whose schema is not this binary's, naming migrate up, and
// change nothing.
func TestOperatorRefusesUnmigrated(t *testing.T) {
	t.Parallel()
	dsn, bdb := emptyDatabase(t)
	e := baseEnv(t).with("DATABASE_URL", dsn)
	for _, cmd := range [][]string{{"robots", "list"}, {"robots", "create", "x"}, {"keys", "create", "--robot", "x"}, {"keys", "list", "--robot", "x"}, {"keys", "revoke", uuid.NewString()}} {
		code, stdout, stderr := runCLI(t, e, cmd...)
		require.Equal(t, 1, code, cmd)
		require.Empty(t, stdout, cmd)
		require.Contains(t, stderr, "run `fleetgraph migrate up`", cmd)
	}
	require.False(t, tableExists(t, bdb, "bun_migrations"))
}

// firstWriteHook is an io.Writer that runs hook before its first write.
type firstWriteHook struct {
	bytes.Buffer
	hook func()
}

func (w *firstWriteHook) Write(p []byte) (int, error) {
	if w.hook != nil {
		w.hook()
		w.hook = nil
	}
	return w.Buffer.Write(p)
}

// robots list prints each page before it reads the next, so that a tenant
// of any size takes one page of memory: when the tenant's robots are
// deleted as the first page is written, the list ends after that page. The
// JSON is the one array writeJSON would print, and the table has one header.
func TestRobotsListPrintsPageByPage(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	const robots = db.MaxPageSize + 1
	fill := func(t *testing.T) uuid.UUID {
		tenant := uuid.New()
		_, err := d.ExecContext(ctx, "INSERT INTO robots (tenant_id, name) SELECT ?, 'r' || g FROM generate_series(1, ?) g", tenant, robots)
		require.NoError(t, err)
		return tenant
	}
	list := func(t *testing.T, tenant uuid.UUID, hook func(), args ...string) string {
		t.Helper()
		out := &firstWriteHook{hook: hook}
		var stderr bytes.Buffer
		code := run(ctx, append([]string{"robots", "list", "--tenant", tenant.String()}, args...), e.get, out, &stderr)
		require.Equal(t, 0, code, stderr.String())
		return out.String()
	}
	deleteTenant := func(tenant uuid.UUID) func() {
		return func() {
			_, err := d.ExecContext(ctx, "DELETE FROM robots WHERE tenant_id = ?", tenant)
			require.NoError(t, err)
		}
	}
	rowRE := regexp.MustCompile(`(?m)^[0-9a-f-]{36}\s+r\d+\s+OFFLINE\s`)

	t.Run("JSON", func(t *testing.T) {
		tenant := fill(t)
		var all []robotView
		text := list(t, tenant, nil, "--json")
		require.NoError(t, json.Unmarshal([]byte(text), &all))
		require.Len(t, all, robots)
		var again bytes.Buffer
		require.NoError(t, writeJSON(&again, all))
		require.Equal(t, again.String(), text, "the array writeJSON prints")

		var first []robotView
		require.NoError(t, json.Unmarshal([]byte(list(t, tenant, deleteTenant(tenant), "--json")), &first))
		require.Len(t, first, db.MaxPageSize, "the first page was printed before the second was read")

		var none []robotView
		text = list(t, tenant, nil, "--json")
		require.Equal(t, "[]\n", text)
		require.NoError(t, json.Unmarshal([]byte(text), &none))
	})

	t.Run("Table", func(t *testing.T) {
		tenant := fill(t)
		text := list(t, tenant, nil)
		require.Len(t, rowRE.FindAllString(text, -1), robots)
		require.Equal(t, 1, strings.Count(text, "LAST HEARTBEAT"), "one header")

		text = list(t, tenant, deleteTenant(tenant))
		require.Len(t, rowRE.FindAllString(text, -1), db.MaxPageSize, "the first page was printed before the second was read")

		require.Regexp(t, `^ID\s+NAME\s+STATUS\s+CAPABILITIES\s+MAX JOBS\s+LAST HEARTBEAT\n$`, list(t, tenant, nil), "an empty table keeps its header")
	})
}

// keys list lists every key of the robot, past the store's MaxPageSize,
// while the API's apiKeys keeps its first page.
func TestKeysListEveryKey(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	r := robotJSON(t, e, "--name", "many")
	const keys = db.MaxPageSize + 2
	_, err := d.ExecContext(ctx, `INSERT INTO api_keys (tenant_id, robot_id, name, prefix, key_hash, created_by, revoked_at)
		SELECT tenant_id, id, 'k' || g, 'crpa_x', decode(md5(g::text), 'hex'), 'test', CASE WHEN g = 1 THEN now() END
		FROM robots, generate_series(1, ?) g WHERE id = ?`, keys, r.ID)
	require.NoError(t, err)

	code, stdout, stderr := runCLI(t, e, "keys", "list", "--robot", "many", "--json")
	require.Equal(t, 0, code, stderr)
	var listed []keyView
	require.NoError(t, json.Unmarshal([]byte(stdout), &listed))
	require.Len(t, listed, keys-1, "every live key")
	seen := map[uuid.UUID]bool{}
	for _, k := range listed {
		require.False(t, seen[k.ID], "no key twice")
		seen[k.ID] = true
		require.Nil(t, k.RevokedAt)
	}

	code, stdout, stderr = runCLI(t, e, "keys", "list", "--robot", "many", "--all")
	require.Equal(t, 0, code, stderr)
	require.Len(t, regexp.MustCompile(`(?m)^[0-9a-f-]{36}\s+k\d+\s+crpa_x\s`).FindAllString(stdout, -1), keys, "--all: the revoked one too")

	svc := auth.WithPrincipal(ctx, auth.SystemPrincipal("cli", auth.DefaultTenant))
	first, err := db.NewAPIKeys().List(svc, d.DB, r.ID, true)
	require.NoError(t, err)
	require.Len(t, first, db.MaxPageSize, "the API's list is unchanged: its first page")
}

// Names a tenant's users chose are printed in tables as visible text: one
// with a bidirectional override (which names may hold) is quoted with Go's
// escapes, so it cannot reorder the rest of its line.
func TestTablesEscapeNames(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	name := "invoice\u202efdp.exe"
	robotJSON(t, e, "--name", name)
	code, stdout, stderr := runCLI(t, e, "keys", "create", "--robot", name, "--name", "key\u2066x")
	require.Equal(t, 0, code, stderr)
	requireTerminalSafe(t, stdout)
	requireTerminalSafe(t, stderr)
	require.Contains(t, stderr, "for robot "+strconv.Quote(name))

	code, stdout, stderr = runCLI(t, e, "robots", "list")
	require.Equal(t, 0, code, stderr)
	requireTerminalSafe(t, stdout)
	require.Contains(t, stdout, strconv.Quote(name))
	code, stdout, stderr = runCLI(t, e, "keys", "list", "--robot", name)
	require.Equal(t, 0, code, stderr)
	requireTerminalSafe(t, stdout)
	require.Contains(t, stdout, strconv.Quote("key\u2066x"))

	code, stdout, _ = runCLI(t, e, "robots", "list", "--json")
	require.Equal(t, 0, code)
	var list []robotView
	require.NoError(t, json.Unmarshal([]byte(stdout), &list))
	require.Equal(t, name, list[0].Name, "JSON carries the name as it is")
}

// failingWriter fails every write, as stdout redirected to /dev/full does.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// keys create revokes a key it could not print: nobody has the raw key, so
// it must not stay active; stderr says so.
func TestKeysCreateRevokesAKeyItCouldNotPrint(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	robotJSON(t, e, "--name", "lyon-1")
	for _, args := range [][]string{nil, {"--json"}} {
		var stderr bytes.Buffer
		code := run(ctx, append([]string{"keys", "create", "--robot", "lyon-1"}, args...), e.get, failingWriter{}, &stderr)
		require.Equal(t, 1, code, stderr.String())
		require.Contains(t, stderr.String(), "no space left on device")
		require.Contains(t, stderr.String(), "so it was revoked at once")
	}
	var live, revoked int
	require.NoError(t, d.NewRaw("SELECT count(*) FILTER (WHERE revoked_at IS NULL), count(*) FILTER (WHERE revoked_by = 'system:cli') FROM api_keys").Scan(ctx, &live, &revoked))
	require.Zero(t, live, "no key nobody has stays active")
	require.Equal(t, 2, revoked)
}

// keys create into a pipe whose reader has gone revokes the key too: the
// write fails (EPIPE) instead of the process dying of SIGPIPE before it
// could revoke. The binary's main runs in a process of its own, with
// stdout a pipe already closed at its other end.
func TestKeysCreateIntoAClosedPipeRevokesTheKey(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	d := dbtest.New(t)
	e := baseEnv(t).with("DATABASE_URL", d.DSN)
	robotJSON(t, e, "--name", "lyon-1")
	r, w, err := os.Pipe()
	require.NoError(t, err)
	require.NoError(t, r.Close())
	cmd := exec.CommandContext(ctx, os.Args[0], "keys", "create", "--robot", "lyon-1")
	cmd.Env = append(os.Environ(), "FLEETGRAPH_TEST_RUN_MAIN=1", "DATABASE_URL="+d.DSN, "DATA_DIR="+e["DATA_DIR"])
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	err = cmd.Run()
	require.NoError(t, w.Close())
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, stderr.String())
	require.Equal(t, 1, exit.ExitCode(), "an error, not a death by SIGPIPE: %s", stderr.String())
	require.Contains(t, stderr.String(), "so it was revoked at once")
	var live int
	require.NoError(t, d.NewRaw("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").Scan(ctx, &live))
	require.Zero(t, live, "no key nobody has stays active")
}

// With DATABASE_URL unset, the operator commands use the private database
// in DATA_DIR but never create it: a DATA_DIR that holds none (a typo, or
// no server started there yet) is refused with what to do, and left as it
// was. Only serve and migrate create (and keep up) the private PostgreSQL.
func TestOperatorRefusesADataDirWithoutDatabase(t *testing.T) {
	t.Parallel()
	parent := pgDataDir(t) // short: the cluster's socket lives inside
	dataDir := filepath.Join(parent, "typo")
	e := env{"DATA_DIR": dataDir}
	for _, cmd := range [][]string{
		{"robots", "list"}, {"robots", "create", "x"}, {"keys", "list", "--robot", "x"}, {"keys", "create", "--robot", "x"},
		{"keys", "revoke", uuid.NewString()}, {"logs", "cleanup", "--dry-run"}, {"logs", "tail", "--robot", "x"},
	} {
		code, stdout, stderr := runCLI(t, e, cmd...)
		require.Equal(t, 1, code, "%v: %s", cmd, stderr)
		require.Empty(t, stdout, cmd)
		require.Contains(t, stderr, "DATA_DIR "+dataDir+" holds no Fleetgraph database (no PostgreSQL cluster in "+filepath.Join(dataDir, "postgres")+")", cmd)
		require.Contains(t, stderr, "start `fleetgraph serve` with this DATA_DIR once to create it, or set DATABASE_URL", cmd)
		require.NotContains(t, stderr, "auto-migrate", cmd)
	}
	code, r, _ := runVerifyJSON(t, e)
	require.Equal(t, 1, code)
	c := checkOf(t, r, "database reachable")
	require.Equal(t, "fail", c.Status)
	require.Contains(t, c.Detail, "holds no Fleetgraph database")
	require.Contains(t, c.Advice, "start `fleetgraph serve`")
	require.NoDirExists(t, dataDir, "nothing was created")

	// A cluster without the fleetgraph database is refused too, and left so.
	pgDir := filepath.Join(parent, "other", "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cluster, err := localpg.Start(ctx, localpg.Options{Dir: pgDir, Settings: map[string]string{"fsync": "off"}})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, cluster.Stop(context.Background())) })
	code, _, stderr := runCLI(t, env{"DATA_DIR": filepath.Dir(pgDir)}, "robots", "list")
	require.Equal(t, 1, code, stderr)
	require.Contains(t, stderr, "its PostgreSQL cluster has no fleetgraph database")
	admin, err := db.Open(ctx, cluster.DSN("postgres"))
	require.NoError(t, err)
	defer admin.Close()
	var exists bool
	require.NoError(t, admin.NewRaw("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'fleetgraph')").Scan(ctx, &exists))
	require.False(t, exists, "robots list created no database")
}

// The operator commands read DATABASE_CONNECT_TIMEOUT as serve does: an
// unreachable database is retried that long, with a log line per attempt.
func TestOperatorCommandsWaitForTheDatabase(t *testing.T) {
	t.Parallel()
	e := baseEnv(t).with("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none?sslmode=disable")
	for _, cmd := range [][]string{{"robots", "list"}, {"logs", "cleanup", "--dry-run"}} {
		code, _, stderr := runCLI(t, e, append(cmd, "--database-connect-timeout", "1")...)
		require.Equal(t, 1, code, "%v: %s", cmd, stderr)
		require.Contains(t, stderr, "the database is not reachable yet; retrying", cmd)
		require.Contains(t, stderr, "still unreachable after", cmd)

		code, _, stderr = runCLI(t, e.with("DATABASE_CONNECT_TIMEOUT", "soon"), cmd...)
		require.Equal(t, 2, code, cmd)
		require.Contains(t, stderr, "DATABASE_CONNECT_TIMEOUT (--database-connect-timeout) must be a whole number of seconds", cmd)
	}
}
