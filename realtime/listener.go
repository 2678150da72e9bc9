// Package realtime carries PostgreSQL notifications to the code waiting on
// them. One Listener per process holds one pq.Listener connection, LISTENs
// on the channels the process needs, and fans each notification out to
// in-process subscriptions by channel. Senders never block: a subscription
// whose buffer is full misses the notification, so subscriptions are for
// wake-ups and invalidations whose receivers re-read the database.
package realtime

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"

	"fleetgraph/metrics"
)

// Notification is one NOTIFY, or a reconnect marker.
type Notification struct {
	Channel string
	Payload string
	// Reconnected is true for the marker sent to every subscription after
	// the listener's connection was re-established: notifications sent while
	// it was down are lost, so receivers must re-read what they watch.
	Reconnected bool
	// At is when the listener received it (a marker: when the connection
	// was back). Notifications sent after the newest one a receiver took
	// are the ones a later loss can have cost it.
	At time.Time
}

// Subscription receives the notifications of one channel.
type Subscription struct {
	C        <-chan Notification
	c        chan Notification
	channel  string
	l        *Listener
	overflow atomic.Bool
}

// TakeOverflow reports, and clears, whether notifications were dropped
// because the buffer was full since the last call.
func (s *Subscription) TakeOverflow() bool { return s.overflow.Swap(false) }

// Close stops delivery to s.
func (s *Subscription) Close() {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	delete(s.l.subs[s.channel], s)
}

// Listener is the process's LISTEN connection.
type Listener struct {
	// Metrics counts reconnects and dropped notifications (nil: off). Set
	// it before Run.
	Metrics *metrics.Metrics

	pql      *pq.Listener
	log      *slog.Logger
	ping     time.Duration
	channels []string
	// dialer made pql's connection, and can close it (see Run).
	dialer *closingDialer
	// disconnects counts pq's disconnect events.
	disconnects atomic.Uint64

	mu       sync.Mutex
	subs     map[string]map[*Subscription]struct{}
	handlers map[string][]func(Notification)

	// connected follows pq's connection events.
	connected atomic.Bool
	// live is true while Run delivers on a connection that LISTENs on every
	// channel; epoch counts the times it stopped being so (see Trusted).
	live  atomic.Bool
	epoch atomic.Uint64
	// changed is closed (and replaced) at every change of live.
	changed chan struct{}
}

// PingInterval is how often an idle listener checks its connection, so a
// dead one is noticed within seconds rather than at the next TCP timeout.
// A ping not answered within an interval makes the listener untrusted
// until it is; one not answered within pingsLost intervals closes the
// connection, and pq makes a new one.
const PingInterval = 5 * time.Second

// pingsLost is how many ping intervals a ping may go unanswered before the
// listener gives its connection up: a half-open connection (a peer gone
// behind a NAT or a failover) takes the ping without error and never
// answers, and TCP retransmits it for about 15 minutes before failing.
const pingsLost = 3

// closingDialer dials pq's connections and keeps the last one, so that a
// listener whose pings go unanswered can close it: pq then reconnects as
// after any failure.
type closingDialer struct {
	mu   sync.Mutex
	conn net.Conn
}

// Dial implements pq.Dialer.
func (d *closingDialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

// DialTimeout implements pq.Dialer.
func (d *closingDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return d.DialContext(ctx, network, address)
}

// DialContext implements pq.DialerContext, which pq prefers.
func (d *closingDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, network, address)
	if err == nil {
		d.mu.Lock()
		d.conn = c
		d.mu.Unlock()
	}
	return c, err
}

// closeConn closes the last connection dialed.
func (d *closingDialer) closeConn() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		_ = d.conn.Close()
	}
}

// ListenerApplicationName names the listener's connection in
// pg_stat_activity, so operators (and tests) can tell it from the pool's.
const ListenerApplicationName = "fleetgraph-listener"

// withApplicationName sets application_name in a connection string, either
// form (a postgres:// URL or key=value pairs), unless it already names one.
func withApplicationName(dsn, name string) string {
	if strings.Contains(dsn, "application_name") {
		return dsn
	}
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("application_name", name)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return strings.TrimSpace(dsn) + " application_name=" + name
}

// NewListener connects to dsn and LISTENs on channels. It reconnects by
// itself when the connection drops; Run must be running to deliver.
func NewListener(dsn string, channels []string, log *slog.Logger) (*Listener, error) {
	return newListener(dsn, channels, log, PingInterval)
}

// newListener is NewListener with the ping interval, which tests shorten.
func newListener(dsn string, channels []string, log *slog.Logger, ping time.Duration) (*Listener, error) {
	l := &Listener{log: log, ping: ping, channels: channels, subs: map[string]map[*Subscription]struct{}{},
		handlers: map[string][]func(Notification){}, changed: make(chan struct{}), dialer: &closingDialer{}}
	l.pql = pq.NewDialListener(l.dialer, withApplicationName(dsn, ListenerApplicationName), 100*time.Millisecond, 5*time.Second, func(ev pq.ListenerEventType, err error) {
		switch ev {
		case pq.ListenerEventDisconnected:
			// Before anything else: from here notifications may be lost.
			l.disconnects.Add(1)
			l.connected.Store(false)
			l.setLive(false)
			log.Warn("notification listener disconnected", "error", err)
		case pq.ListenerEventReconnected:
			l.connected.Store(true)
			log.Info("notification listener reconnected")
		case pq.ListenerEventConnectionAttemptFailed:
			log.Warn("notification listener cannot reconnect yet", "error", err)
		}
	})
	for _, ch := range channels {
		if err := l.pql.Listen(ch); err != nil {
			_ = l.pql.Close()
			return nil, fmt.Errorf("listening on %s: %w", ch, err)
		}
	}
	l.connected.Store(true)
	return l, nil
}

// Trusted reports whether every notification committed since the listener
// last (re)connected is being delivered: Run is running on a connection that
// LISTENs on all its channels. epoch changes whenever that stops being true
// (a disconnect, Run ending), so state derived from notifications while the
// epoch was e is only current while Trusted still returns (e, true); after a
// reconnect notifications sent meanwhile are lost and such state must be
// rebuilt. A connection that dies silently is noticed when a ping goes
// unanswered for a PingInterval (or when the server's RST arrives).
func (l *Listener) Trusted() (epoch uint64, ok bool) {
	// Read live first: setLive bumps the epoch before changing live, so
	// (e, true) means e began with the current live period.
	ok = l.live.Load()
	return l.epoch.Load(), ok
}

// Changed returns a channel closed at the next change of Trusted's answer,
// for tests and for code that waits for the listener to come back.
func (l *Listener) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// setLive records whether delivery is complete. Every change starts a new
// epoch, before live changes, so nothing learned under an earlier epoch is
// trusted again after a reconnect.
func (l *Listener) setLive(live bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.live.Load() == live {
		return
	}
	l.epoch.Add(1)
	l.live.Store(live)
	close(l.changed)
	l.changed = make(chan struct{})
}

// Handle calls f with every notification on channel (and with the
// Reconnected marker), synchronously in Run's loop, before subscriptions
// see it: f must be quick and must not block. It is for invalidations
// that must take effect as soon as the notification arrives. Call it
// before Run.
func (l *Listener) Handle(channel string, f func(Notification)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.handlers[channel] = append(l.handlers[channel], f)
}

// Subscribe returns a subscription to channel with a buffer of n.
func (l *Listener) Subscribe(channel string, n int) *Subscription {
	c := make(chan Notification, n)
	s := &Subscription{C: c, c: c, channel: channel, l: l}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.subs[channel] == nil {
		l.subs[channel] = map[*Subscription]struct{}{}
	}
	l.subs[channel][s] = struct{}{}
	return s
}

// Run delivers notifications until ctx ends, then closes the connection.
func (l *Listener) Run(ctx context.Context) {
	defer l.close()
	defer l.setLive(false)
	l.setLive(l.connected.Load())
	ticker := time.NewTicker(l.ping)
	defer ticker.Stop()
	// The ping in flight: when it began, the disconnects counted then,
	// whether it is overdue (the listener untrusted for it), and whether
	// its connection was closed for it. Its answer comes on pinged.
	var (
		pinging, overdue, closed bool
		pingStart                time.Time
		pingDisconnects          uint64
		pinged                   = make(chan error, 1)
	)
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-l.pql.Notify:
			if n == nil {
				// pq sends nil after a reconnect: anything sent meanwhile is lost.
				l.Metrics.Reconnected()
				at := time.Now()
				for _, ch := range l.channels {
					l.deliver(Notification{Channel: ch, Reconnected: true, At: at})
				}
				// pq has LISTENed again on every channel before sending nil;
				// the markers (which clear caches) went out first.
				l.setLive(l.connected.Load())
				continue
			}
			l.deliver(Notification{Channel: n.Channel, Payload: n.Extra, At: time.Now()})
		case <-ticker.C:
			// A failed ping makes pq drop and re-establish the connection.
			// It runs beside this loop: pq reads the ping's answer on the
			// connection that delivers notifications, so waiting for it here
			// without draining Notify deadlocks once a burst fills Notify.
			if !pinging {
				pinging, pingStart, pingDisconnects = true, time.Now(), l.disconnects.Load()
				go func() { pinged <- l.pql.Ping() }()
				continue
			}
			// Unanswered for an interval: the connection may be dead
			// without a word, so nothing learned from it is trusted
			// until the answer comes; after pingsLost intervals it is
			// closed, and pq reconnects (its marker resyncs everyone).
			if !overdue {
				overdue = true
				l.setLive(false)
				l.log.Warn("notification listener ping unanswered: not trusted until it is", "waited", time.Since(pingStart).Round(time.Millisecond))
			}
			// (Only the connection the ping went out on: after a
			// disconnect pq has dialed another.)
			if !closed && time.Since(pingStart) >= pingsLost*l.ping && l.disconnects.Load() == pingDisconnects {
				closed = true
				l.log.Warn("notification listener ping unanswered: closing its connection", "waited", time.Since(pingStart).Round(time.Millisecond))
				l.dialer.closeConn()
			}
		case err := <-pinged:
			if err != nil {
				l.log.Debug("notification listener ping failed", "error", err)
			}
			// A late answer on a connection that never dropped lost
			// nothing; after a disconnect, the reconnect marker restores
			// trust instead, once it has been delivered.
			if overdue && err == nil && l.disconnects.Load() == pingDisconnects && l.connected.Load() {
				l.setLive(true)
			}
			pinging, overdue, closed = false, false, false
		}
	}
}

// close closes the connection, draining notifications meanwhile: a ping in
// flight holds pq's lock until its answer is read, behind them. A ping
// that gets no answer within a ping interval (a silent connection) would
// hold it for good, so the connection is then closed under it.
func (l *Listener) close() {
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		_ = l.pql.Close()
	}()
	silent := time.NewTimer(l.ping)
	defer silent.Stop()
	for {
		select {
		case <-closed:
			return
		case <-silent.C:
			l.dialer.closeConn()
		case _, ok := <-l.pql.Notify:
			if !ok {
				<-closed
				return
			}
		}
	}
}

func (l *Listener) deliver(n Notification) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.handlers[n.Channel] {
		f(n)
	}
	for s := range l.subs[n.Channel] {
		select {
		case s.c <- n:
		default: // full: for wake-ups one pending is enough; others check TakeOverflow
			s.overflow.Store(true)
			l.Metrics.Dropped(n.Channel)
		}
	}
}
