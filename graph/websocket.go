package graph

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"fleetgraph/auth"
	"fleetgraph/fault"
	"fleetgraph/graph/live"
)

// sockets guards the websocket transport (package live): it refuses
// foreign browser origins and owns shutdown. HTTP requests finish on their
// own under http.Server.Shutdown, but hijacked websocket connections are
// invisible to it: closeAll cancels each one, which makes the transport close
// it with 1001 (going away), and waits until every handler has returned,
// close handshake included, so the database is not closed under a
// subscription and clients see the 1001.
type sockets struct {
	origins []string

	mu      sync.Mutex
	going   bool
	cancels map[*context.CancelFunc]struct{}
	live    sync.WaitGroup // websocket handlers, close handshakes included
}

func newSockets(allowedOrigins []string) *sockets {
	return &sockets{origins: allowedOrigins, cancels: map[*context.CancelFunc]struct{}{}}
}

// track refuses websocket upgrades from foreign browser origins and gives
// each accepted one a context that closeAll cancels.
func (s *sockets) track(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !live.OffersWebsocket(r.Header) {
			next.ServeHTTP(w, r)
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" && !sameHost(origin, r.Host) && !originAllowed(origin, s.origins) {
			auth.WriteError(w, http.StatusForbidden, fault.New(fault.Forbidden,
				"this page's origin may not open websockets here; add its host to ALLOWED_ORIGINS"))
			return
		}
		// The socket's context: closeAll cancels it, net/http does not
		// (the transport may serve the socket after this handler returns,
		// when net/http cancels the request's own).
		ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
		r = r.WithContext(ctx)
		s.mu.Lock()
		if s.going {
			s.mu.Unlock()
			cancel()
			w.Header().Set("Retry-After", "1") // as SSE and multipart streams refused at shutdown
			auth.WriteError(w, http.StatusServiceUnavailable, fault.New(fault.RateLimited, "the server is shutting down; retry against another replica or in a moment"))
			return
		}
		key := &cancel // the socket's entry: not the request, which its end would keep
		s.cancels[key] = struct{}{}
		s.live.Add(1)
		s.mu.Unlock()
		// Deferred, so that a panic below still ends the socket's entry.
		defer live.AtEnd(ctx, func() {
			cancel()
			s.mu.Lock()
			delete(s.cancels, key)
			s.mu.Unlock()
			s.live.Done()
		})
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
	for cancel := range s.cancels {
		(*cancel)()
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
