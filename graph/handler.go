package graph

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/extension"
	"github.com/99designs/gqlgen/graphql/handler/lru"
	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/google/uuid"
	"github.com/vektah/gqlparser/v2/ast"

	"fleetgraph/auth"
	"fleetgraph/dataloaders"
	"fleetgraph/db"
	"fleetgraph/graph/live"
)

// Limits bound what one request may ask of the server. Each limit exceeded is
// a BAD_USER_INPUT error that names it.
type Limits struct {
	// Complexity caps the estimated cost: 1 per field, connections multiplied by their page size.
	Complexity int
	// Depth caps how deeply selections nest.
	Depth int
	// Aliases caps how many aliased fields one operation has.
	Aliases int
	// Tokens caps the lexer tokens of a query document, before it is parsed.
	Tokens int
	// BodyBytes caps a request body.
	BodyBytes int64
}

// DefaultLimits fit every legitimate use of this API with room to spare.
var DefaultLimits = Limits{Complexity: 50_000, Depth: 12, Aliases: 50, Tokens: 10_000, BodyBytes: 1 << 20}

// HandlerConfig is what NewHandler needs.
type HandlerConfig struct {
	Resolver *Resolver
	Auth     *auth.Authenticator
	Logger   *slog.Logger
	// AllowedOrigins are host patterns (path.Match syntax, e.g. "*.example.com")
	// of browser origins allowed to call the API and open websockets.
	AllowedOrigins []string
	// Introspection enables schema introspection and "did you mean" suggestions.
	Introspection bool
	Limits        Limits
	// WebsocketInitTimeout bounds the wait for connection_init.
	WebsocketInitTimeout time.Duration
	// WebsocketKeepAlive is the interval between server pings.
	WebsocketKeepAlive time.Duration
}

// Handler is the GraphQL endpoint: POST, GET (queries only), SSE and
// websockets, behind request ids, CORS, body limits and authentication.
type Handler struct {
	http.Handler
	sockets *sockets
}

// CloseWebsockets ends every open websocket with close code 1001 (going
// away), refuses new ones, and waits until they are closed or ctx ends. Call
// it when the server shuts down, alongside http.Server.Shutdown, and before
// closing the database.
func (h *Handler) CloseWebsockets(ctx context.Context) error { return h.sockets.closeAll(ctx) }

// NewHandler builds the GraphQL endpoint.
func NewHandler(cfg HandlerConfig) *Handler {
	if cfg.Limits == (Limits{}) {
		cfg.Limits = DefaultLimits
	}
	if cfg.WebsocketInitTimeout == 0 {
		cfg.WebsocketInitTimeout = 10 * time.Second
	}
	if cfg.WebsocketKeepAlive == 0 {
		cfg.WebsocketKeepAlive = 15 * time.Second
	}
	srv := handler.New(NewExecutableSchema(schemaConfig(cfg.Resolver)))

	// Streaming transports first: SSE claims requests that accept
	// text/event-stream before POST and GET see them.
	socks := newSockets(cfg.AllowedOrigins)
	srv.AddTransport(live.SSE{KeepAlive: cfg.WebsocketKeepAlive, WriteTimeout: 30 * time.Second})
	srv.AddTransport(live.Websocket{
		Auth:         cfg.Auth,
		Log:          cfg.Logger,
		InitTimeout:  cfg.WebsocketInitTimeout,
		KeepAlive:    cfg.WebsocketKeepAlive,
		WriteTimeout: 30 * time.Second,
		ReadLimit:    cfg.Limits.BodyBytes,
	})
	srv.AddTransport(transport.POST{})
	srv.AddTransport(transport.GET{})

	srv.SetQueryCache(lru.New[*ast.QueryDocument](1000))
	srv.Use(extension.AutomaticPersistedQuery{Cache: lru.New[string](1000)})
	srv.SetParserTokenLimit(cfg.Limits.Tokens)
	srv.Use(extension.FixedComplexityLimit(cfg.Limits.Complexity))
	srv.Use(&scalarCheck{})
	srv.Use(shapeLimit{depth: cfg.Limits.Depth, aliases: cfg.Limits.Aliases, introspection: cfg.Introspection})
	if cfg.Introspection {
		srv.Use(extension.Introspection{})
	}
	srv.SetDisableSuggestion(!cfg.Introspection)
	srv.SetErrorPresenter(presentError(cfg.Logger, !cfg.Introspection))
	srv.SetRecoverFunc(recoverPanic(cfg.Logger))

	r := cfg.Resolver
	stores := dataloaders.Stores{DB: r.DB, Machines: r.MachineStore, Robots: r.RobotStore, Workflows: r.WorkflowStore, Jobs: r.JobStore}
	// Loaders per response, not per operation: a subscription is one long
	// operation, and each of its events must read fresh relations.
	srv.AroundResponses(func(ctx context.Context, next graphql.ResponseHandler) *graphql.Response {
		return next(dataloaders.With(ctx, stores))
	})

	var h http.Handler = codedRefusals(cfg.Logger, srv)
	h = socks.track(h)
	h = cfg.Auth.Middleware(h)
	h = checkBody(cfg.Limits.BodyBytes, h)
	h = cors(cfg.AllowedOrigins, h)
	return &Handler{Handler: withRequestID(h), sockets: socks}
}

// schemaConfig builds gqlgen's Config for r with complexity estimates that
// make a connection cost its page size times its selection.
func schemaConfig(r *Resolver) Config {
	c := Config{Resolvers: r}
	page := func(first *int, def int) int {
		n, err := pageSizeOr(first, def)
		if err != nil || n < 1 {
			return 1
		}
		return n
	}
	c.Complexity.Query.Machines = func(child int, first *int, _ *string, _ *db.MachineFilter) int {
		return 1 + child*page(first, db.DefaultPageSize)
	}
	c.Complexity.Query.MachineEvents = func(child int, _ uuid.UUID, first *int, _ *string, _ []string) int {
		return 1 + child*page(first, db.DefaultPageSize)
	}
	c.Complexity.Machine.Events = func(child int, first *int, _ *string) int {
		return 1 + child*page(first, db.DefaultPageSize)
	}
	c.Complexity.Machine.Deployments = func(child int, first *int) int {
		return 1 + child*page(first, 20)
	}
	return c
}
