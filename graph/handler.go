package graph

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/extension"
	"github.com/vektah/gqlparser/v2/ast"

	"fleetgraph/auth"
	"fleetgraph/dataloaders"
	"fleetgraph/dispatch"
	"fleetgraph/graph/live"
	"fleetgraph/metrics"
)

// Limits bound what one request may ask of the server. Each limit exceeded is
// a BAD_USER_INPUT error that names it (extensions.reason), given before the
// work it guards starts. docs/security.md says what each one costs at most.
type Limits struct {
	// Complexity caps the estimated cost: 1 per field, 10 per JSON value,
	// lists and connections multiplied by their page size (see listSizes).
	Complexity int
	// Depth caps how deeply selections nest (introspection aside: gqlparser
	// bounds its depth by its own rule).
	Depth int
	// Aliases caps how many aliased fields one operation has.
	Aliases int
	// Tokens caps the lexer tokens of a query document, before it is parsed.
	Tokens int
	// Fields caps the fields of a document's operations and fragments with
	// every fragment spread expanded, before it is validated.
	Fields int
	// Overlaps caps the field comparisons validating a document may take
	// (fields sharing a response name are compared pairwise).
	Overlaps int
	// Errors caps the errors one response lists; the rest are counted in
	// a last error.
	Errors int
	// BodyBytes caps a request body, and an operation's argument values
	// with each variable counted wherever it is used.
	BodyBytes int64
	// SubscriptionBytes caps the document of a subscription (its text, as
	// sent or persisted), which it keeps, parsed, for as long as it runs.
	SubscriptionBytes int
	// DecodeBytes is the memory the request bodies and websocket messages
	// being decoded and run may take at once, by weight (live.DecodeBudget;
	// 0: live.DefaultDecodeBudget).
	DecodeBytes int64
}

// The caches of validated documents and of automatic persisted queries
// (documentCache) each hold at most maxCachedText bytes of query text, in
// documents of at most maxCachedDocument bytes.
const (
	maxCachedText     = 8 << 20
	maxCachedDocument = 64 << 10
)

// DefaultLimits fit every legitimate use of this API with room to spare.
var DefaultLimits = Limits{Complexity: 50_000, Depth: 12, Aliases: 50, Tokens: 10_000, Fields: 2_000, Overlaps: 10_000, Errors: 20, BodyBytes: 1 << 20, SubscriptionBytes: 16 << 10}

// orDefaults fills each unset limit from DefaultLimits.
func (l Limits) orDefaults() Limits {
	or := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	d := DefaultLimits
	or(&l.Complexity, d.Complexity)
	or(&l.Depth, d.Depth)
	or(&l.Aliases, d.Aliases)
	or(&l.Tokens, d.Tokens)
	or(&l.Fields, d.Fields)
	or(&l.Overlaps, d.Overlaps)
	or(&l.Errors, d.Errors)
	or(&l.SubscriptionBytes, d.SubscriptionBytes)
	if l.BodyBytes <= 0 {
		l.BodyBytes = d.BodyBytes
	}
	return l
}

// HandlerConfig is what NewHandler needs.
type HandlerConfig struct {
	Resolver *Resolver
	Auth     *auth.Authenticator
	Logger   *slog.Logger
	// AllowedOrigins are host patterns (path.Match syntax, e.g. "*.example.com";
	// with a scheme, patterns of the whole origin) of browser origins allowed
	// to call the API and open websockets. CheckOriginPattern checks one.
	AllowedOrigins []string
	// Introspection enables schema introspection and "did you mean" suggestions.
	Introspection bool
	Limits        Limits
	// WebsocketInitTimeout bounds the wait for connection_init.
	WebsocketInitTimeout time.Duration
	// WebsocketKeepAlive is the interval between server pings.
	WebsocketKeepAlive time.Duration
	// LiveLimits cap the operations per websocket and per caller across
	// websockets and SSE and multipart streams (zero fields: live.DefaultLimits').
	LiveLimits live.Limits
	// WebsocketKeyRecheck is how often a robot's websocket, SSE or multipart
	// stream re-checks its API key (0: 30s).
	WebsocketKeyRecheck time.Duration
	// Running caps the queries and mutations that execute at once; more
	// wait their turn, callers in rotation (0: DefaultRunningPerCPU per CPU).
	Running int
	// OperationTimeout stops a query or mutation after this much work,
	// counted from when it waits for its turn, less the time a claim waits
	// parked for a job (0: DefaultOperationTimeout). What failed is
	// RATE_LIMITED, reason OPERATION_TIMEOUT.
	OperationTimeout time.Duration
	// Metrics records requests, operations, errors and streams (nil: off).
	// The access log is Logger's, at info level, either way.
	Metrics *metrics.Metrics
}

// Handler is the GraphQL endpoint: POST, GET (queries only), SSE,
// multipart subscriptions and websockets, behind request ids, CORS, body
// limits and authentication.
type Handler struct {
	http.Handler
	sockets    *sockets
	streams    *live.Streams
	dispatcher *dispatch.Dispatcher
	// Fanout groups the subscribers that share rendered results.
	Fanout *live.Fanout
}

// CloseStreams ends every open websocket with close code 1001 (going away)
// and every SSE and multipart stream with its final message (`event:
// complete`, the closing boundary), refuses new ones, ends waiting claims
// (claimJob with waitSeconds) with no job, and waits until the streams are
// closed or ctx ends. Call it when the server shuts down, alongside
// http.Server.Shutdown (which waits for streams and claims, as for any
// request), and before closing the database.
func (h *Handler) CloseStreams(ctx context.Context) error {
	if h.dispatcher != nil {
		h.dispatcher.Drain()
	}
	streams := make(chan error, 1)
	go func() { streams <- h.streams.Close(ctx) }()
	return errors.Join(h.sockets.closeAll(ctx), <-streams)
}

// CloseWebsockets is CloseStreams, under the name it had when only
// websockets needed closing.
func (h *Handler) CloseWebsockets(ctx context.Context) error { return h.CloseStreams(ctx) }

// NewHandler builds the GraphQL endpoint.
func NewHandler(cfg HandlerConfig) *Handler {
	cfg.Limits = cfg.Limits.orDefaults()
	if cfg.OperationTimeout <= 0 {
		cfg.OperationTimeout = DefaultOperationTimeout
	}
	if cfg.WebsocketInitTimeout == 0 {
		cfg.WebsocketInitTimeout = 10 * time.Second
	}
	if cfg.WebsocketKeepAlive == 0 {
		cfg.WebsocketKeepAlive = 15 * time.Second
	}
	srv := handler.New(NewExecutableSchema(Config{Resolvers: cfg.Resolver, Directives: DirectiveRoot{AcceptsText: acceptsText}}))

	// Streaming transports first: SSE and multipart claim requests whose
	// Accept header prefers their type before POST and GET see them.
	socks := newSockets(cfg.AllowedOrigins)
	streams := live.NewStreams()
	quota := live.NewQuota(cfg.LiveLimits)
	// Subscribers with the same operation, variables and visibility class
	// share one execution and its encoded results, on every transport.
	fanout := live.NewFanout(shareSubscription)
	fanout.Metrics = cfg.Metrics
	fanout.Detach = groupRequestID(cfg.Logger)
	var running atomic.Int64
	fanout.Yield = func() bool { return running.Load() > 0 }
	// Every transport presents at most Limits.Errors of a refused
	// request's errors (firstErrors).
	// One budget for what request bodies and websocket messages decode to.
	decoding := live.NewDecodeBudget(cfg.Limits.DecodeBytes)
	addTransport := func(t graphql.Transport) { srv.AddTransport(errorsBounded{Transport: t, max: cfg.Limits.Errors}) }
	addTransport(live.SSE{KeepAlive: cfg.WebsocketKeepAlive, WriteTimeout: 30 * time.Second, Quota: quota, Streams: streams, Fanout: fanout,
		Auth: cfg.Auth, KeyRecheck: cfg.WebsocketKeyRecheck})
	addTransport(live.Multipart{KeepAlive: cfg.WebsocketKeepAlive, WriteTimeout: 30 * time.Second, Quota: quota, Streams: streams, Fanout: fanout,
		Auth: cfg.Auth, KeyRecheck: cfg.WebsocketKeyRecheck})
	addTransport(live.Websocket{
		Auth:         cfg.Auth,
		Log:          cfg.Logger,
		InitTimeout:  cfg.WebsocketInitTimeout,
		KeepAlive:    cfg.WebsocketKeepAlive,
		WriteTimeout: 30 * time.Second,
		ReadLimit:    cfg.Limits.BodyBytes,
		Decoding:     decoding,
		Quota:        quota,
		KeyRecheck:   cfg.WebsocketKeyRecheck,
		Fanout:       fanout,
	})
	addTransport(overHTTP{log: cfg.Logger})
	// Extensions go through use: go generate marshals plain fields straight
	// from their structs (graph/internal/sequential), past any field
	// interceptor, so one is refused here rather than silently missing
	// most fields (nor may srv.AroundFields be called).
	use := func(ext graphql.HandlerExtension) {
		if _, ok := ext.(graphql.FieldInterceptor); ok {
			panic(fmt.Sprintf("graph: %s intercepts fields, which plain fields bypass (graph/internal/sequential)", ext.ExtensionName()))
		}
		srv.Use(ext)
	}
	use(operationMetrics{cfg.Metrics})
	use(newRequestsFirst(cfg.Running, cfg.OperationTimeout, &running, cfg.Metrics))

	validated := newDocumentCache(1000, maxCachedText, maxCachedDocument, func(query string, _ *ast.QueryDocument) int { return len(query) })
	srv.SetQueryCache(validated)
	use(extension.AutomaticPersistedQuery{Cache: newDocumentCache(1000, maxCachedText, maxCachedDocument, func(_, query string) int { return len(query) })})
	srv.SetParserTokenLimit(cfg.Limits.Tokens)
	// After the persisted query is resolved, before gqlgen validates.
	use(documentLimit{tokens: cfg.Limits.Tokens, fields: cfg.Limits.Fields, overlaps: cfg.Limits.Overlaps, validated: validated})
	use(literalCheck{})
	use(operationLimit{complexity: cfg.Limits.Complexity, depth: cfg.Limits.Depth, aliases: cfg.Limits.Aliases,
		argumentBytes: int(min(cfg.Limits.BodyBytes, math.MaxInt32)), subscriptionBytes: cfg.Limits.SubscriptionBytes, introspection: cfg.Introspection})
	// After the operation limit, which bounds the arguments it walks.
	use(&scalarCheck{})
	if cfg.Introspection {
		use(extension.Introspection{})
	}
	srv.SetDisableSuggestion(!cfg.Introspection)
	presenter := presentError(cfg.Logger, !cfg.Introspection, cfg.OperationTimeout)
	srv.SetErrorPresenter(presenter)
	srv.SetRecoverFunc(recoverPanic(cfg.Logger))

	r := cfg.Resolver
	stores := dataloaders.Stores{DB: r.DB, Machines: r.MachineStore, Robots: r.RobotStore, Workflows: r.WorkflowStore, Jobs: r.JobStore, Logs: r.LogStore, Columns: loaderColumns}
	// Loaders per response, not per operation: a subscription is one long
	// operation, and each of its events must read fresh relations.
	// A mutation's leases are recorded too: a response whose data is lost
	// gives them back. Only mutations hand leases out, so queries and
	// subscription events pay nothing for it.
	srv.AroundResponses(func(ctx context.Context, next graphql.ResponseHandler) *graphql.Response {
		if oc := graphql.GetOperationContext(ctx); oc.Operation == nil || oc.Operation.Operation != ast.Mutation {
			return bounded(next(dataloaders.With(ctx, stores)), cfg.Limits.Errors)
		}
		ctx, handed := withHandOuts(ctx)
		resp := bounded(next(dataloaders.With(ctx, stores)), cfg.Limits.Errors)
		var data []byte
		if resp != nil {
			data = resp.Data
		}
		handed.giveBack(ctx, data, r.JobStore, r.DB, cfg.Logger)
		return resp
	})

	var h http.Handler = codedRefusals(cfg.Logger, srv)
	// The streaming transports' own errors (refusals, a stream's end) leave
	// through the same presenter as every other error.
	h = withLivePresenter(presenter, h)
	h = socks.track(h)
	h = noteCaller(h)
	h = cfg.Auth.Middleware(cfg.Logger, h)
	h = checkBody(cfg.Limits.BodyBytes, decoding, h)
	h = queriesOnly(cfg.Limits.Tokens, h)
	h = allowOptions(h)
	h = cors(cfg.AllowedOrigins, h)
	h = observe(cfg.Metrics, cfg.Logger, h)
	// A websocket is served past its handler, so that net/http's state
	// for its connection is not kept for the socket's life: the layers
	// above end its request when the socket closes (live.AtEnd).
	h = withLifetime(h)
	return &Handler{Handler: withRequestID(h), sockets: socks, streams: streams, dispatcher: cfg.Resolver.Dispatcher, Fanout: fanout}
}

// withLifetime gives each websocket upgrade a lifetime that the transport
// may detach from its handler (live.WithLifetime).
func withLifetime(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if live.OffersWebsocket(r.Header) {
			r = r.WithContext(live.WithLifetime(r.Context()))
		}
		next.ServeHTTP(w, r)
	})
}

// withLivePresenter puts the error presenter in each request's context for
// the streaming transports (live.WithPresenter).
func withLivePresenter(fn graphql.ErrorPresenterFunc, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(live.WithPresenter(r.Context(), fn)))
	})
}
