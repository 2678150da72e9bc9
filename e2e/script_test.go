package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
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

// This file runs the Node client scripts beside it and reads what they
// report. A script prints one JSON object per line on stdout; a test waits
// for the lines it expects, each wait bounded by the test's context.

// clients holds the outcome of making e2e/node_modules available, once per
// test binary.
var clients struct {
	once sync.Once
	node string
	skip string // why the tests cannot run here, when they cannot
	// lock is .npm-install.lock, held shared from the check that found
	// node_modules installed until the binary exits, so that another
	// test binary of this checkout (a second `go test ./...`) cannot run
	// `npm ci`, which deletes node_modules first, under its scripts.
	lock *os.File
}

// requireClients returns the node binary, installing the pinned client
// libraries with `npm ci` when node_modules lacks them. It skips the test
// when Node.js or the install is unavailable: .ci/run installs them first,
// so CI never skips.
func requireClients(t *testing.T) string {
	t.Helper()
	clients.once.Do(func() {
		node, err := exec.LookPath("node")
		if err != nil {
			clients.skip = "node is not on PATH; install Node.js 20 and run `npm ci --prefix e2e` to run the e2e tests"
			return
		}
		clients.node = node
		clients.lock, clients.skip = useClients(".npm-install.lock")
	})
	if clients.skip != "" {
		t.Skip(clients.skip)
	}
	return clients.node
}

// useClients checks, under a shared lock on the file at path (created if
// need be), that node_modules is installed, installing it under the
// exclusive lock when it is not, and returns the file with the shared lock
// held (the binary keeps it until it exits), or why the tests must be
// skipped. The check was once made without the lock, and could pass on a
// node_modules another binary's `npm ci` was rewriting.
func useClients(path string) (*os.File, string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Sprintf("locking e2e/ for npm ci: %v", err)
	}
	for {
		// Shared: waits only for a binary installing.
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
			_ = f.Close()
			return nil, fmt.Sprintf("locking e2e/ for npm ci: %v", err)
		}
		why := installed()
		if why == nil {
			return f, ""
		}
		// Exclusive to install, without waiting: another binary holding
		// the lock is checking, or installing, or has installed and holds
		// it shared for its run (which a blocking wait would outlast). The
		// shared lock is dropped first (Linux drops it on a failed
		// upgrade, BSDs keep it, and two binaries each keeping theirs
		// would wait on each other for ever), so the loop takes it again,
		// after any install, and looks again.
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_UN); err != nil {
			_ = f.Close()
			return nil, fmt.Sprintf("locking e2e/ for npm ci: %v", err)
		}
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if errors.Is(err, syscall.EWOULDBLOCK) {
			// Not a busy loop while another binary holds it for its run.
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if err != nil {
			_ = f.Close()
			return nil, fmt.Sprintf("locking e2e/ for npm ci: %v", err)
		}
		if why := installed(); why != nil {
			if skip := install(why); skip != "" {
				_ = f.Close() // releases the lock
				return nil, skip
			}
		}
		// Installed: the loop takes the lock shared again.
	}
}

// installed checks that node_modules holds every dependency at the exact
// version package.json pins, so a stale install is not tested by mistake.
func installed() error {
	var pkg struct{ Dependencies map[string]string }
	b, err := os.ReadFile("package.json")
	if err != nil {
		return fmt.Errorf("reading e2e/package.json: %w", err)
	}
	if err := json.Unmarshal(b, &pkg); err != nil {
		return fmt.Errorf("decoding e2e/package.json: %w", err)
	}
	for name, want := range pkg.Dependencies {
		var dep struct{ Version string }
		b, err := os.ReadFile(filepath.Join("node_modules", name, "package.json"))
		if err != nil {
			return fmt.Errorf("%s is not installed", name)
		}
		if err := json.Unmarshal(b, &dep); err != nil || dep.Version != want {
			return fmt.Errorf("%s is installed at %q, not %s", name, dep.Version, want)
		}
	}
	return nil
}

// install runs `npm ci` in this folder because of why, and returns why the
// tests must be skipped, or "" when it worked.
func install(why error) string {
	npm, err := exec.LookPath("npm")
	if err != nil {
		return fmt.Sprintf("%v and npm is not on PATH; run `npm ci --prefix e2e`", why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--loglevel=error").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%v, and `npm ci` in e2e/ failed (%v); run `npm ci --prefix e2e` by hand:\n%s", why, err, out)
	}
	if err := installed(); err != nil {
		return fmt.Sprintf("`npm ci` in e2e/ did not install the pinned clients: %v", err)
	}
	return ""
}

// line is one line a script printed. Fields not in a line stay zero.
type line struct {
	Raw string        `json:"-"`
	At  time.Duration `json:"-"` // when it was read, since the script started

	// The client library's view of an operation the script named Op.
	Op           string          `json:"op"`
	Next         json.RawMessage `json:"next"`
	Error        json.RawMessage `json:"error"`
	Complete     bool            `json:"complete"`
	Unsubscribed bool            `json:"unsubscribed"`

	// The connection as the library reports it.
	Connected          bool            `json:"connected"`
	Closed             *closeEvent     `json:"closed"`
	ConnectionCallback json.RawMessage `json:"connectionCallback"`
	NonLazyError       json.RawMessage `json:"nonLazyError"`

	// The wire: websocket frames and the socket's life, SSE events and HTTP answers.
	Dir      string          `json:"dir"`
	Frame    *frame          `json:"frame"`
	Socket   string          `json:"socket"`
	Protocol string          `json:"protocol"`
	Code     int             `json:"code"`
	Reason   string          `json:"reason"`
	SSE      json.RawMessage `json:"sse"`
	HTTP     *httpAnswer     `json:"http"`

	// One audit of graphql-http's serverAudits (audit.mjs).
	Audit *auditResult `json:"audit"`

	// A script is ready for what the test does next (urql.mjs, apollo.mjs).
	Ready bool `json:"ready"`

	Done  bool   `json:"done"`
	Fatal string `json:"fatal"`
}

type closeEvent struct {
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// frame is one websocket message of either protocol.
type frame struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

type httpAnswer struct {
	Method      string `json:"method"`
	Status      int    `json:"status"`
	ContentType string `json:"contentType"`
}

// auditResult is one GraphQL-over-HTTP audit's outcome: status "ok",
// "warn" (a SHOULD or MAY not met) or "error" (a MUST not met), with the
// audit's reason and the answer it got when not ok.
type auditResult struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Status     string `json:"status"`
	Reason     string `json:"reason"`
	HTTPStatus int    `json:"httpStatus"`
	Body       string `json:"body"`
}

// gqlError is a GraphQL error as the clients hand it over.
type gqlError struct {
	Message    string         `json:"message"`
	Extensions map[string]any `json:"extensions"`
}

// data decodes the next result's data.field into v, and reports whether the
// line is a result with that field.
func (l line) data(field string, v any) bool {
	if l.Next == nil {
		return false
	}
	var result struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	if json.Unmarshal(l.Next, &result) != nil || result.Data[field] == nil || string(result.Data[field]) == "null" {
		return false
	}
	return json.Unmarshal(result.Data[field], v) == nil
}

// resultErrors returns the errors of a next result.
func (l line) resultErrors() []gqlError {
	var result struct {
		Errors []gqlError `json:"errors"`
	}
	_ = json.Unmarshal(l.Next, &result)
	return result.Errors
}

// script is a running client script.
type script struct {
	name   string
	cmd    *exec.Cmd
	stdin  interface{ Close() error }
	stderr *bytes.Buffer
	exited chan struct{} // closed when the process has exited
	err    error         // the process's exit, once exited is closed

	mu      sync.Mutex
	lines   []line
	eof     bool
	added   chan struct{} // poked after each line or at EOF
	cursor  int           // the next line a wait looks at
	readErr error
}

// runScript starts `node name` with env added to the environment. It is
// killed when ctx ends, and its output is logged if the test fails.
func runScript(ctx context.Context, t *testing.T, name string, env map[string]string) *script {
	t.Helper()
	node := requireClients(t)
	cmd := exec.CommandContext(ctx, node, name)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// The script exits when its stdin closes: if this test dies, so does it.
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	s := &script{name: name, cmd: cmd, stdin: stdin, stderr: &bytes.Buffer{}, exited: make(chan struct{}), added: make(chan struct{}, 1)}
	cmd.Stderr = &lockedWriter{w: s.stderr, mu: &s.mu}
	cmd.WaitDelay = 5 * time.Second
	require.NoError(t, cmd.Start(), "starting node %s", name)

	started := time.Now()
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
		for sc.Scan() {
			l := line{Raw: sc.Text(), At: time.Since(started)}
			err := json.Unmarshal(sc.Bytes(), &l)
			s.mu.Lock()
			if err != nil && s.readErr == nil {
				s.readErr = fmt.Errorf("%s printed a line that is not JSON: %q", name, sc.Text())
			}
			s.lines = append(s.lines, l)
			s.mu.Unlock()
			s.poke()
		}
		s.mu.Lock()
		s.eof = true
		s.mu.Unlock()
		s.poke()
	}()
	go func() {
		<-readDone // Wait closes stdout: read everything first
		s.err = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() || os.Getenv("E2E_TRANSCRIPT") != "" {
			t.Logf("%s printed:\n%s\nstderr:\n%s", name, s.transcript(), s.stderrText())
		}
	})
	return s
}

func (s *script) poke() {
	select {
	case s.added <- struct{}{}:
	default:
	}
}

// wait returns the first line from the cursor on that match accepts, and
// moves the cursor past it. It fails the test when the script ends or ctx
// does first.
func (s *script) wait(ctx context.Context, t *testing.T, what string, match func(line) bool) line {
	t.Helper()
	for {
		s.mu.Lock()
		if s.readErr != nil {
			err := s.readErr
			s.mu.Unlock()
			t.Fatal(err)
		}
		for i := s.cursor; i < len(s.lines); i++ {
			l := s.lines[i]
			if l.Fatal != "" {
				s.mu.Unlock()
				t.Fatalf("%s failed: %s", s.name, l.Fatal)
			}
			if match(l) {
				s.cursor = i + 1
				s.mu.Unlock()
				return l
			}
		}
		s.cursor = len(s.lines)
		eof := s.eof
		s.mu.Unlock()
		if eof {
			t.Fatalf("%s ended without printing %s", s.name, what)
		}
		select {
		case <-s.added:
		case <-ctx.Done():
			t.Fatalf("%s printed no %s: %v", s.name, what, ctx.Err())
		}
	}
}

// finish waits for the script's {"done": true} and a clean exit.
func (s *script) finish(ctx context.Context, t *testing.T) {
	t.Helper()
	s.wait(ctx, t, `{"done": true}`, func(l line) bool { return l.Done })
	select {
	case <-s.exited:
		require.NoError(t, s.err, "%s exited badly; stderr:\n%s", s.name, s.stderrText())
	case <-ctx.Done():
		t.Fatalf("%s did not exit: %v", s.name, ctx.Err())
	}
}

// all returns every line printed so far.
func (s *script) all() []line {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]line(nil), s.lines...)
}

func (s *script) transcript() string {
	var b strings.Builder
	for _, l := range s.all() {
		fmt.Fprintf(&b, "%6dms ", l.At.Milliseconds())
		b.WriteString(l.Raw)
		b.WriteByte('\n')
	}
	return b.String()
}

func (s *script) stderrText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// lockedWriter serialises the process's stderr writes with reads of it.
type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// frames returns the websocket frames of the given direction ("in", "out").
func frames(lines []line, dir string) []frame {
	var out []frame
	for _, l := range lines {
		if l.Dir == dir && l.Frame != nil {
			out = append(out, *l.Frame)
		}
	}
	return out
}
