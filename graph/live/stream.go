package live

import (
	"context"
	"encoding/json"
	"github.com/vektah/gqlparser/v2/ast"
	"net/http"
	"sync"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/google/uuid"
	"github.com/vektah/gqlparser/v2/gqlerror"
	"golang.org/x/sync/semaphore"

	"fleetgraph/auth"
	"fleetgraph/fault"
	"fleetgraph/graph/accept"
	"fleetgraph/metrics"
)

// This file holds what the two HTTP streaming transports (SSE and
// multipart) share: content negotiation, the stream's lifetime, and
// shutdown.

// offer is a response type the HTTP transports can answer with.
type offer int

const (
	offerJSON offer = iota
	offerEventStream
	offerMultipart
)

// negotiate picks the response type an Accept header prefers among JSON
// (application/json, application/graphql-response+json), server-sent events
// (text/event-stream) and multipart subscriptions (multipart/mixed with a
// subscriptionSpec parameter), by accept.Choose: q-value, then the more
// specific range, then order; wildcards stand for JSON, which wins ties.
// Clients such as urql list text/event-stream after the JSON types on
// every request, and get JSON; Apollo Client lists multipart/mixed first on
// subscriptions only.
func negotiate(header string) offer {
	switch accept.Choose(accept.WithoutPlainMultipart(header), accept.JSON, accept.GraphQLResponse, accept.EventStream, accept.Multipart) {
	case accept.EventStream:
		return offerEventStream
	case accept.Multipart:
		return offerMultipart
	}
	return offerJSON
}

// PrefersEventStream reports whether an Accept header ranks
// text/event-stream above JSON and multipart/mixed (see negotiate).
func PrefersEventStream(accept string) bool { return negotiate(accept) == offerEventStream }

// PrefersMultipart reports whether an Accept header ranks multipart/mixed
// with a subscriptionSpec parameter above JSON and text/event-stream (see
// negotiate).
func PrefersMultipart(accept string) bool { return negotiate(accept) == offerMultipart }

// Streams tracks a handler's open SSE and multipart streams so that
// shutdown can end them: http.Server.Shutdown waits for every request, and
// a subscription's lasts until its client leaves. A nil *Streams tracks
// nothing.
type Streams struct {
	mu     sync.Mutex
	going  chan struct{} // closed by Close
	closed bool
	open   sync.WaitGroup
}

// NewStreams returns an empty tracker.
func NewStreams() *Streams { return &Streams{going: make(chan struct{})} }

// join registers a stream. going is closed when the server shuts down;
// leave unregisters the stream once its handler is done writing. ok is
// false when the server is already shutting down.
func (s *Streams) join() (going <-chan struct{}, leave func(), ok bool) {
	if s == nil {
		return nil, func() {}, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, false
	}
	s.open.Add(1)
	return s.going, s.open.Done, true
}

// Close makes every open stream end its operation and write its final
// message (`event: complete`, or the closing multipart boundary), refuses
// new streams, and waits until every stream's handler has returned or ctx
// ends.
func (s *Streams) Close(ctx context.Context) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.going)
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.open.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// framing is how one streaming transport writes what a stream carries.
type framing struct {
	// contentType is the response's Content-Type.
	contentType string
	// begin, when set, writes what comes before the first result.
	begin func(w http.ResponseWriter) error
	// result writes one result (a JSON GraphQL response).
	result func(w http.ResponseWriter, data []byte) error
	// keepAlive writes what keeps an idle stream open through proxies.
	keepAlive func(w http.ResponseWriter) error
	// end writes the stream's last message.
	end func(w http.ResponseWriter) error
}

// streamer is the configuration the HTTP streaming transports share.
type streamer struct {
	keepAlive, writeTimeout time.Duration
	quota                   *Quota
	streams                 *Streams
	fanout                  *Fanout
	auth                    *auth.Authenticator
	keyRecheck              time.Duration
}

// robotRecheck returns, for a robot's stream, a function that checks its
// API key again (requestReauth: revoked or expired is UNAUTHENTICATED; not
// checkable, the database being down, INTERNAL, and the stream stays), and
// how often to call it; for anyone else, nil and 0. Without an
// authenticator a robot's key cannot be checked again: every is then
// negative, and the stream is refused.
func (t streamer) robotRecheck(r *http.Request) (check func(context.Context) (*auth.Principal, error), every time.Duration) {
	p := auth.FromContext(r.Context())
	if p == nil || p.RobotID == uuid.Nil {
		return nil, 0
	}
	if t.auth == nil {
		return nil, -1 // cannot be checked: serve refuses the stream
	}
	every = t.keyRecheck
	if every <= 0 {
		every = recheckEvery
	}
	return requestReauth(t.auth, r), every
}

// serve runs the operation of r as a stream written with f: each result,
// keep-alives while idle, an operation's error as a last result, and f.end
// when the operation completes or the server shuts down. Nothing more is
// written once the client has gone.
func (t streamer) serve(w http.ResponseWriter, r *http.Request, exec graphql.GraphExecutor, f framing) {
	params := &graphql.RawParams{Headers: r.Header}
	if err := ReadParams(r, params); err != nil {
		metrics.SentError(r.Context(), string(fault.BadUserInput))
		e := fault.New(fault.BadUserInput, "%s", err.Error())
		e.Extra = map[string]any{"reason": ReasonNotAGraphQLRequest}
		writeRefusal(r.Context(), w, http.StatusBadRequest, e)
		return
	}
	check, every := t.robotRecheck(r)
	if every < 0 {
		metrics.SentError(r.Context(), string(fault.Unauthenticated))
		writeRefusal(r.Context(), w, http.StatusUnauthorized, errNoCredential)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// Parsed and validated first, as on a websocket: an operation refused
	// before it runs (invalid, over a limit) takes no place in its
	// caller's quota, not even while its refusal is written.
	opCtx, oc, errs := prepare(ctx, exec, params)
	if r.Method == http.MethodGet && hasReason(errs, ReasonMutationOverGet) {
		// A persisted mutation by GET: 405, as over a plain GET.
		w.Header().Set("Allow", http.MethodPost)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusMethodNotAllowed)
		_ = json.NewEncoder(w).Encode(map[string]any{"errors": errs})
		return
	}
	if errs == nil {
		release, err := t.quota.Hold(r.Context())
		if err != nil {
			metrics.SentError(r.Context(), string(fault.CodeOf(err)))
			writeRefusal(r.Context(), w, http.StatusTooManyRequests, err)
			return
		}
		defer release()
		free, err := t.quota.OpenStream()
		if err != nil {
			metrics.SentError(r.Context(), string(fault.CodeOf(err)))
			w.Header().Set("Retry-After", "5")
			writeRefusal(r.Context(), w, http.StatusServiceUnavailable, err)
			return
		}
		defer free()
	}
	going, leave, ok := t.streams.join()
	if !ok {
		w.Header().Set("Retry-After", "1")
		metrics.SentError(r.Context(), string(fault.RateLimited))
		writeRefusal(r.Context(), w, http.StatusServiceUnavailable, fault.New(fault.RateLimited, "the server is shutting down; retry against another replica or in a moment"))
		return
	}
	defer leave()
	// A few results may wait, so that a burst goes out in one flush.
	events := newBacklog()
	done := make(chan outcome, 1)
	next := func(payload []byte) error { return events.put(ctx, payload) }
	// A shared subscription joins its group, which hands results to next
	// from its writers: the stream holds no goroutine but this one. Any
	// other operation runs on a goroutine of its own. Either way a
	// subscription is registered with the hub before the response's
	// headers go out: a client that has them sees every change after.
	if errs != nil {
		done <- outcome{errs: errs}
	} else if key, ok := t.fanout.shareable(opCtx, oc); ok {
		write := func(payloads [][]byte, _ func()) error {
			for _, p := range payloads {
				if err := next(p); err != nil {
					return err
				}
			}
			return nil
		}
		t.fanout.attach(ctx, opCtx, exec, oc, key, nil, write, func(out outcome) { done <- out })
	} else {
		d := dispatch(opCtx, exec, oc)
		go func() { done <- d.run(next) }()
	}

	// The body is read: only now does the request become a stream, which
	// lives as long as its operation. Until here the server's read timeout
	// stood, so a client trickling a body cannot hold a connection. Each
	// write below sets its own deadline. A subscription's decoding is
	// over, and its share of the decode budget goes back (it may run for
	// hours); a query or mutation keeps its share while it runs.
	if errs == nil && oc.Operation != nil && oc.Operation.Operation == ast.Subscription {
		DecodeDone(r.Context())
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", f.contentType)
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if f.begin != nil {
		_ = rc.SetWriteDeadline(time.Now().Add(t.writeTimeout))
		if f.begin(w) != nil {
			return
		}
	}
	_ = rc.Flush()

	write := func(fn func() error) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(t.writeTimeout))
		return fn() == nil && rc.Flush() == nil
	}
	// results writes data and every result already waiting after it, in
	// one flush.
	results := func(data []byte) bool {
		return write(func() error {
			for {
				if err := f.result(w, data); err != nil {
					return err
				}
				select {
				case data = <-events.c:
					events.took(data)
				default:
					return nil
				}
			}
		})
	}
	// waiting writes the results still buffered when the operation ended:
	// they came before its end.
	waiting := func() bool {
		select {
		case data := <-events.c:
			events.took(data)
			return results(data)
		default:
			return true
		}
	}
	keepAlive := time.NewTicker(t.keepAlive)
	defer keepAlive.Stop()
	// A robot's key is checked again while its stream lasts, as on a
	// websocket: revoked, the stream ends with UNAUTHENTICATED.
	var recheck <-chan time.Time
	if check != nil {
		tick := time.NewTicker(every)
		defer tick.Stop()
		recheck = tick.C
	}
	for {
		select {
		case <-recheck:
			_, err := check(ctx)
			if code := fault.CodeOf(err); err == nil || code == fault.Internal || code == fault.RateLimited {
				continue // valid, or not checkable now (an outage, the address past its key lookups): not a revocation
			}
			cancel()
			<-done
			if !waiting() {
				return
			}
			metrics.SentError(r.Context(), string(fault.CodeOf(err)))
			last := mustJSON(map[string]any{"errors": gqlerror.List{present(r.Context(), err)}})
			if write(func() error { return f.result(w, last) }) {
				write(func() error { return f.end(w) })
			}
			return
		case data := <-events.c:
			events.took(data)
			if !results(data) {
				return
			}
		case <-keepAlive.C:
			if !write(func() error { return f.keepAlive(w) }) {
				return
			}
		case <-going:
			if errs != nil || !isSubscription(oc) {
				// A query or mutation finishes, as one over a plain POST
				// does (shutdown waits for both; waiting claims are
				// drained, and the operation's deadline bounds the rest):
				// cut, a mutation would be rolled back or, done, its
				// result lost.
				going = nil
				continue
			}
			// Shutdown: stop the subscription, wait until its resolver
			// has let go (the database closes after this), then end the
			// stream as a completed one so the client knows it was not
			// cut.
			cancel()
			<-done
			if waiting() {
				write(func() error { return f.end(w) })
			}
			return
		case out := <-done:
			if out.stopped || !waiting() {
				return
			}
			if out.errs != nil && !write(func() error { return f.result(w, mustJSON(map[string]any{"errors": out.errs})) }) {
				return
			}
			write(func() error { return f.end(w) })
			return
		}
	}
}

// backlogResults and backlogBytes bound the results that wait between an
// SSE or multipart stream's operation and its writes, so that a burst goes
// out in one flush. Bounded by count alone, 16 results of up to 16 MiB
// each could wait for a client that does not read; now at most 1 MiB, or
// one larger result, does. Past it the operation waits (its own goroutine,
// or a shared group's writer, which hands over after slowWrite: the
// member's queue then fills, and ends it by its own bounds).
const (
	backlogResults = 16
	backlogBytes   = 1 << 20
)

// backlog is the results a stream has yet to write. Each result takes
// room for its bytes, or for all of backlogBytes when larger, so a large
// result waits alone.
type backlog struct {
	c    chan []byte
	room *semaphore.Weighted
}

// newBacklog returns an empty backlog.
func newBacklog() *backlog {
	return &backlog{c: make(chan []byte, backlogResults), room: semaphore.NewWeighted(backlogBytes)}
}

// weight is the room payload takes in a backlog.
func weight(payload []byte) int64 { return min(int64(len(payload)), backlogBytes) }

// put waits for room for payload and queues it, or returns ctx's error.
func (w *backlog) put(ctx context.Context, payload []byte) error {
	if err := w.room.Acquire(ctx, weight(payload)); err != nil {
		return err
	}
	select {
	case w.c <- payload:
		return nil
	case <-ctx.Done():
		w.room.Release(weight(payload))
		return ctx.Err()
	}
}

// took gives back the room of a result received from c.
func (w *backlog) took(payload []byte) { w.room.Release(weight(payload)) }
