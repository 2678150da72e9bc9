package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/99designs/gqlgen/graphql/handler/transport"
	coderws "github.com/coder/websocket"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

// sockets accepts the GraphQL transport's websockets on coder/websocket and
// owns their shutdown. HTTP requests finish on their own under
// http.Server.Shutdown, but hijacked websocket connections are invisible to
// it: closeAll cancels each one, which makes the transport close it, with
// 1001 (going away) instead of gqlgen's 1000, and waits until every handler
// has returned and every close handshake has ended, so the database is not
// closed under a subscription and clients see the 1001.
type sockets struct {
	origins []string

	mu      sync.Mutex
	going   bool
	cancels map[*http.Request]context.CancelFunc
	live    sync.WaitGroup // handlers and close handshakes
}

func newSockets(allowedOrigins []string) *sockets {
	return &sockets{origins: allowedOrigins, cancels: map[*http.Request]context.CancelFunc{}}
}

// track refuses websocket upgrades from foreign browser origins and gives
// each accepted one a context that closeAll cancels.
func (s *sockets) track(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			next.ServeHTTP(w, r)
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" && !sameHost(origin, r.Host) && !originAllowed(origin, s.origins) {
			auth.WriteError(w, http.StatusForbidden, fault.New(fault.Forbidden,
				"websocket origin %q is not allowed; add its host to ALLOWED_ORIGINS", origin))
			return
		}
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		r = r.WithContext(ctx)
		s.mu.Lock()
		if s.going {
			s.mu.Unlock()
			auth.WriteError(w, http.StatusServiceUnavailable, fault.New(fault.Unauthenticated, "the server is shutting down"))
			return
		}
		s.cancels[r] = cancel
		s.live.Add(1)
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			delete(s.cancels, r)
			s.mu.Unlock()
			s.live.Done()
		}()
		next.ServeHTTP(w, r)
	})
}

// sameHost reports whether a browser origin is the server itself, which
// browsers always allow.
func sameHost(origin, host string) bool {
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, host)
}

// closeAll ends every websocket with 1001, refuses new ones, and waits until
// they are closed or ctx ends.
func (s *sockets) closeAll(ctx context.Context) error {
	s.mu.Lock()
	s.going = true
	for _, cancel := range s.cancels {
		cancel()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.live.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *sockets) goingAway() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.going
}

// Accept implements transport.WebsocketImplementation. Origins were checked
// by track; coder/websocket's own check is relaxed to match.
func (s *sockets) Accept(w http.ResponseWriter, r *http.Request, opts transport.WebsocketAcceptOptions) (transport.WebsocketConn, error) {
	for key, values := range opts.ResponseHeader {
		for _, v := range values {
			w.Header().Add(key, v)
		}
	}
	c, err := coderws.Accept(w, r, &coderws.AcceptOptions{Subprotocols: opts.Subprotocols, InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	return &socket{conn: c, owner: s}, nil
}

// socket adapts a coder/websocket connection to gqlgen's transport.
type socket struct {
	conn  *coderws.Conn
	owner *sockets
	once  sync.Once
}

var (
	_ transport.WebsocketConn        = (*socket)(nil)
	_ transport.WebsocketReadLimiter = (*socket)(nil)
)

func (c *socket) NextReader() (int, io.Reader, error) {
	typ, data, err := c.conn.Read(context.Background())
	if err != nil {
		if s := coderws.CloseStatus(err); s == coderws.StatusNormalClosure || s == coderws.StatusGoingAway || errors.Is(err, io.EOF) {
			return int(typ), nil, transport.ErrWebsocketClosed
		}
		return int(typ), nil, err
	}
	return int(typ), bytes.NewReader(data), nil
}

func (c *socket) WriteJSON(v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.conn.Write(context.Background(), coderws.MessageText, data)
}

// WriteClose starts the close handshake in the background (it can wait up to
// five seconds for the peer), tracked so shutdown can wait for it. While the
// server shuts down, every close says 1001.
func (c *socket) WriteClose(code int, msg string) error {
	if c.owner.goingAway() {
		code, msg = int(coderws.StatusGoingAway), "server shutting down"
	}
	c.once.Do(func() {
		c.owner.live.Add(1)
		go func() {
			defer c.owner.live.Done()
			_ = c.conn.Close(coderws.StatusCode(code), msg)
		}()
	})
	return nil
}

// Close drops the connection unless a close handshake is under way, which
// closes it itself.
func (c *socket) Close() error {
	started := true
	c.once.Do(func() { started = false })
	if started {
		return nil
	}
	return c.conn.CloseNow()
}

func (c *socket) Subprotocol() string { return c.conn.Subprotocol() }

func (c *socket) SetReadLimit(limit int64) { c.conn.SetReadLimit(limit) }
