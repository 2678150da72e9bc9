package live

import (
	"context"
	"sync"
)

// This file lets a websocket outlive the HTTP handler that upgraded it. A
// handler that blocks for as long as its socket is open keeps net/http's
// state for the connection alive with it: the handler's goroutine and the
// stack that the request's middlewares grew, the server's 4 KiB read and
// write buffers, the request. For an idle subscriber that is most of its
// memory. So the websocket transport serves the socket on a goroutine of
// its own and returns; what the middlewares do when a request ends (count
// it, log it, stop tracking it) waits for the socket to close instead.

type lifetimeKey struct{}

// lifetime is one request's: whether a transport detached it from its
// handler, whether it has ended since, and what is to run at its end.
type lifetime struct {
	mu       sync.Mutex
	detached bool
	ended    bool
	atEnd    []func()
}

// WithLifetime returns ctx with a lifetime for its request, which the
// websocket transport may detach from the handler (see AtEnd). A request
// without one is served by its handler to the end, as before.
func WithLifetime(ctx context.Context) context.Context {
	return context.WithValue(ctx, lifetimeKey{}, &lifetime{})
}

// AtEnd runs fn when the request of ctx ends: at once, unless the
// websocket transport detached the request from its handler and is still
// serving its socket; then when the socket has closed (its close
// handshake included). A middleware calls it when its handler returns,
// with what it would otherwise do then; functions run in the order they
// were given, so inner middlewares' run first, as their defers would.
func AtEnd(ctx context.Context, fn func()) {
	l, _ := ctx.Value(lifetimeKey{}).(*lifetime)
	if l != nil {
		l.mu.Lock()
		if l.detached && !l.ended {
			l.atEnd = append(l.atEnd, fn)
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
	}
	fn()
}

// detach runs serve on a goroutine of its own and returns true when the
// request of ctx has a lifetime: the request then ends when serve returns.
// Without one it returns false and the caller serves.
func detach(ctx context.Context, serve func()) bool {
	l, _ := ctx.Value(lifetimeKey{}).(*lifetime)
	if l == nil {
		return false
	}
	l.mu.Lock()
	l.detached = true
	l.mu.Unlock()
	go func() {
		defer l.end()
		serve()
	}()
	return true
}

// end runs what waited for the request's end.
func (l *lifetime) end() {
	l.mu.Lock()
	l.ended = true
	fns := l.atEnd
	l.atEnd = nil
	l.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}
