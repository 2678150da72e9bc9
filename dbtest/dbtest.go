// Package dbtest gives each test its own migrated PostgreSQL database.
//
// With TEST_DATABASE_URL unset, the first test of a test binary starts a
// private PostgreSQL (package localpg) in a temporary folder, tuned for speed
// over durability; Main stops it when the binary's tests end, and the cluster
// dies with the process if the binary is killed. Each database is cloned from
// a template migrated once per binary (and again on each new UTC day, as
// migrations create the robot-log partitions of the day they run), so a
// fresh database costs one CREATE DATABASE, and dropped when its test
// ends. Separate databases (rather than rolled-back transactions) let
// tests commit, LISTEN and NOTIFY.
package dbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"fleetgraph/db"
	"fleetgraph/localpg"
	"fleetgraph/migrations"
)

// server is the PostgreSQL every test of this binary uses. It is the one
// piece of package state in the project, and it exists only in tests.
var server struct {
	once     sync.Once
	err      error
	cluster  *localpg.Cluster
	dir      string
	adminDSN func(database string) string
	admin    *bun.DB
	create   sync.Mutex // guards template and templateDay; CREATE DATABASE ... TEMPLATE must not overlap
	// template is the migrated database each test's is cloned from, as
	// migrated on templateDay (UTC, YYYY-MM-DD).
	template, templateDay string
}

// Main runs a test binary's tests, then stops the private PostgreSQL. Use it
// from TestMain in every package whose tests call New.
func Main(m *testing.M) {
	code := m.Run()
	shutdown()
	os.Exit(code)
}

func shutdown() {
	if server.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, _ = server.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+server.template+" WITH (FORCE)")
		cancel()
		_ = server.admin.Close()
	}
	if server.cluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = server.cluster.Stop(ctx)
		cancel()
		_ = os.RemoveAll(server.dir)
	}
}

func start() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if url := os.Getenv("TEST_DATABASE_URL"); url != "" {
		server.adminDSN = func(database string) string { return withDatabase(url, database) }
	} else {
		dir, err := os.MkdirTemp("", "fgt")
		if err != nil {
			return fmt.Errorf("creating a folder for the test PostgreSQL: %w", err)
		}
		server.dir = dir
		// MkdirTemp makes 0700 folders; as root, PostgreSQL runs as the
		// postgres user and must be able to reach its data folder inside.
		if err := os.Chmod(dir, 0o755); err != nil {
			return fmt.Errorf("opening the test PostgreSQL folder: %w", err)
		}
		server.cluster, err = localpg.Start(ctx, localpg.Options{
			Dir:    dir + "/pg",
			Logger: slog.New(slog.DiscardHandler),
			Settings: map[string]string{
				"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
				"max_connections": "500", "shared_buffers": "128MB",
			},
		})
		if err != nil {
			return err
		}
		server.adminDSN = server.cluster.DSN
	}
	admin, err := db.Open(ctx, server.adminDSN("postgres"))
	if err != nil {
		return err
	}
	server.admin = admin
	return freshTemplate(ctx)
}

// freshTemplate makes sure the template was migrated today (UTC): a
// migration's work that depends on the day it runs (the log partitions of
// today and the days ahead) is then what a migration run now would do,
// for a test binary that runs across midnight too. The caller holds
// server.create, or is start.
func freshTemplate(ctx context.Context) error {
	today := time.Now().UTC().Format(time.DateOnly)
	if server.templateDay == today {
		return nil
	}
	name := "fgtpl_" + randomName()
	if _, err := server.admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		return fmt.Errorf("creating the template database: %w", err)
	}
	tpl, err := db.Open(ctx, server.adminDSN(name))
	if err != nil {
		return err
	}
	defer tpl.Close()
	if _, err := migrations.Up(ctx, tpl); err != nil {
		return fmt.Errorf("migrating the template database: %w", err)
	}
	if old := server.template; old != "" {
		// Nothing clones from it any more (the caller holds create).
		_, _ = server.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+old+" WITH (FORCE)")
	}
	server.template, server.templateDay = name, today
	return nil
}

// withDatabase replaces the database of a URL or key=value DSN.
func withDatabase(dsn, database string) string {
	if strings.Contains(dsn, "://") {
		base, query, _ := strings.Cut(dsn, "?")
		if i := strings.LastIndex(base, "/"); i > strings.Index(base, "://")+2 {
			base = base[:i]
		}
		if query != "" {
			return base + "/" + database + "?" + query
		}
		return base + "/" + database
	}
	return dsn + " dbname=" + database
}

func randomName() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Database is a test's own migrated database.
type Database struct {
	*bun.DB
	// Name is the database's name; DSN connects to it.
	Name string
	DSN  string
}

// New creates a migrated database for t, dropped when t ends.
func New(t testing.TB) *Database {
	t.Helper()
	server.once.Do(func() { server.err = start() })
	if server.err != nil {
		t.Fatalf("starting the test database server: %v", server.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := "fgt_" + randomName()
	server.create.Lock()
	err := freshTemplate(ctx)
	if err == nil {
		_, err = server.admin.ExecContext(ctx, "CREATE DATABASE "+name+" TEMPLATE "+server.template)
	}
	server.create.Unlock()
	if err != nil {
		t.Fatalf("creating test database: %v", err)
	}
	dsn := server.adminDSN(name)
	bdb, err := db.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("opening test database: %v", err)
	}
	t.Cleanup(func() {
		_ = bdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := server.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping test database %s: %v", name, err)
		}
	})
	return &Database{DB: bdb, Name: name, DSN: dsn}
}
