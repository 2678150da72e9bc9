package realtime

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/dbtest"
)

// holdingProxy forwards connections to a PostgreSQL Unix socket, and can
// stop forwarding on the connections it has (hold), leaving them open:
// what a peer lost behind a NAT or a failover looks like to the client,
// whose writes succeed and whose reads never return.
type holdingProxy struct {
	dir      string // the proxy's socket directory, for a DSN's host
	upstream string

	mu      sync.Mutex
	held    chan struct{} // closed by hold: connections accepted before it stop
	release chan struct{} // closed at cleanup
}

func newHoldingProxy(t *testing.T, upstreamDir, port string) *holdingProxy {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgproxy") // short: a socket path holds 107 bytes
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	p := &holdingProxy{dir: dir, upstream: filepath.Join(upstreamDir, ".s.PGSQL."+port),
		held: make(chan struct{}), release: make(chan struct{})}
	ln, err := net.Listen("unix", filepath.Join(dir, ".s.PGSQL."+port))
	require.NoError(t, err)
	t.Cleanup(func() { close(p.release); _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", p.upstream)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			held := p.held
			p.mu.Unlock()
			go p.forward(c, up, held)
			go p.forward(up, c, held)
		}
	}()
	return p
}

// forward copies from src to dst until either closes, or until held is
// closed: then it stops, keeping both open.
func (p *holdingProxy) forward(src, dst net.Conn, held chan struct{}) {
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-held:
			<-p.release
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			return
		}
	}
}

// hold stops forwarding on the connections open now; later ones forward.
func (p *holdingProxy) hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.held)
	p.held = make(chan struct{})
}

// A listener whose connection goes silent without closing (the server's
// answers stop coming) stops being trusted within a ping interval or two,
// gives the connection up, reconnects, and delivers again: pq's own ping
// would wait for the answer for as long as TCP retransmits (minutes).
func TestListenerGivesUpASilentConnection(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	host := regexp.MustCompile(`host=(\S+)`).FindStringSubmatch(d.DSN)
	port := regexp.MustCompile(`port=(\d+)`).FindStringSubmatch(d.DSN)
	if host == nil || port == nil || host[1][0] != '/' {
		t.Skip("needs the test cluster's Unix socket (TEST_DATABASE_URL is set)")
	}
	p := newHoldingProxy(t, host[1], port[1])
	dsn := regexp.MustCompile(`host=\S+`).ReplaceAllString(d.DSN, "host="+p.dir)

	const channel = "fg_listener_test"
	l, err := newListener(dsn, []string{channel}, slog.New(slog.DiscardHandler), 50*time.Millisecond)
	require.NoError(t, err)
	sub := l.Subscribe(channel, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	trusted := func() (uint64, bool) { return l.Trusted() }
	require.Eventually(t, func() bool { _, ok := trusted(); return ok }, 30*time.Second, 5*time.Millisecond)
	before, _ := trusted()

	p.hold()
	require.Eventually(t, func() bool { _, ok := trusted(); return !ok }, 30*time.Second, 5*time.Millisecond,
		"a listener whose pings go unanswered is still trusted")
	require.Eventually(t, func() bool { e, ok := trusted(); return ok && e > before }, 30*time.Second, 5*time.Millisecond,
		"the listener did not give up its silent connection and reconnect")

	// It delivers again: a reconnect marker, then the notification. The
	// 50 ms ping that keeps this test short also makes a ping answered
	// late on a busy machine look like silence, so the listener may give up
	// its new connection too, losing a notification sent meanwhile (as a
	// reconnect marker tells its subscribers): it is sent until one arrives.
	deadline := time.After(30 * time.Second)
	for {
		_, err = d.ExecContext(t.Context(), "SELECT pg_notify(?, 'after')", channel)
		require.NoError(t, err)
		resend := time.After(time.Second)
	attempt:
		for {
			select {
			case n := <-sub.C:
				if n.Payload == "after" {
					return
				}
			case <-resend:
				break attempt
			case <-deadline:
				require.FailNow(t, "no notification after the reconnect")
			}
		}
	}
}
