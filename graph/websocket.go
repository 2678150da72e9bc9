package graph

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/99designs/gqlgen/graphql/handler/transport"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

// closeGoingAway is RFC 6455's "going away": the server is shutting down.
const closeGoingAway = 1001

// sockets tracks open websockets so shutdown can end them with 1001. HTTP
// requests finish on their own under http.Server.Shutdown; hijacked websocket
// connections are invisible to it, so they are cancelled here instead.
type sockets struct {
	inner transport.WebsocketImplementation

	mu      sync.Mutex
	going   bool
	cancels map[*http.Request]context.CancelFunc
}

func newSockets(inner transport.WebsocketImplementation) *sockets {
	return &sockets{inner: inner, cancels: map[*http.Request]context.CancelFunc{}}
}

// track refuses websocket upgrades from foreign browser origins and gives
// each accepted one a context that closeAll cancels.
func (s *sockets) track(allowedOrigins []string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			next.ServeHTTP(w, r)
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" && !sameHost(origin, r.Host) && !originAllowed(origin, allowedOrigins) {
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
			http.Error(w, "server shutting down", http.StatusServiceUnavailable)
			return
		}
		s.cancels[r] = cancel
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			delete(s.cancels, r)
			s.mu.Unlock()
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

// closeAll ends every websocket with 1001 and refuses new ones.
func (s *sockets) closeAll() {
	s.mu.Lock()
	s.going = true
	for _, cancel := range s.cancels {
		cancel()
	}
	s.mu.Unlock()
}

func (s *sockets) goingAway() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.going
}

// Accept implements transport.WebsocketImplementation.
func (s *sockets) Accept(w http.ResponseWriter, r *http.Request, opts transport.WebsocketAcceptOptions) (transport.WebsocketConn, error) {
	c, err := s.inner.Accept(w, r, opts)
	if err != nil {
		return nil, err
	}
	return &socket{WebsocketConn: c, owner: s}, nil
}

// socket rewrites the close code gqlgen uses for a cancelled connection
// (1000) to 1001 while the server shuts down, and forwards the optional
// interfaces gqlgen looks for.
type socket struct {
	transport.WebsocketConn
	owner *sockets
}

func (c *socket) WriteClose(code int, msg string) error {
	if c.owner.goingAway() {
		code, msg = closeGoingAway, "server shutting down"
	}
	return c.WebsocketConn.WriteClose(code, msg)
}

func (c *socket) SetReadLimit(limit int64) {
	if l, ok := c.WebsocketConn.(transport.WebsocketReadLimiter); ok {
		l.SetReadLimit(limit)
	}
}

func (c *socket) SetReadDeadline(t time.Time) error {
	if d, ok := c.WebsocketConn.(transport.WebsocketReadDeadliner); ok {
		return d.SetReadDeadline(t)
	}
	return nil
}
