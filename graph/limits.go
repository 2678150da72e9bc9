package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
	"github.com/vektah/gqlparser/v2/parser"

	"fleetgraph/auth"
	"fleetgraph/fault"
	"fleetgraph/graph/live"
)

// operationLimit refuses, with a clear error before execution, operations
// that would cost more than the limits: estimated cost (table-driven, see
// listSizes), nesting depth, aliases, the document a subscription keeps,
// and introspection when it is off; subscriptions that select a field
// priced as a scan (scanCost), which each event would run again; and
// operations that use @defer, which no transport here delivers. Every transport's operations pass here
// before they run (the streaming ones before a subscription takes its
// place in its caller's quota). Its walk expands fragments; documentLimit
// has already bounded the expanded size, so the walk is linear in what it
// may visit.
//
// Arguments: the operation's argument values, each variable counted in
// full wherever it is used, may come to at most argumentBytes (the body
// limit). A variable referenced 5,000 times inside one JSON literal or
// list (`[$s $s ...]`) is that many copies of it once a field reads its
// arguments, though the request carried it once.
type operationLimit struct {
	complexity, depth, aliases int
	argumentBytes              int
	subscriptionBytes          int
	introspection              bool
}

var _ interface {
	graphql.HandlerExtension
	graphql.OperationContextMutator
} = operationLimit{}

func (operationLimit) ExtensionName() string                   { return "OperationLimit" }
func (operationLimit) Validate(graphql.ExecutableSchema) error { return nil }

func (l operationLimit) MutateOperationContext(ctx context.Context, op *graphql.OperationContext) *gqlerror.Error {
	if op.Operation == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return clientGone()
	}
	if op.Operation.Operation == ast.Mutation && isQueriesOnly(ctx) {
		return &gqlerror.Error{Message: mutationOverGet.Message, Err: mutationOverGet}
	}
	if op.Operation.Operation == ast.Subscription && !live.Streaming(ctx) {
		fe := &fault.Error{Code: fault.BadUserInput, Message: "a subscription needs a transport that streams: " + live.Transports, Extra: map[string]any{"reason": subscriptionNeedsStream}}
		return &gqlerror.Error{Message: fe.Message, Err: fe}
	}
	if op.Operation.Operation == ast.Subscription && len(op.RawQuery) > l.subscriptionBytes {
		// A subscription keeps its document, text and parse, while it
		// runs: 500 per caller padded with a megabyte of comment each
		// would hold half a gigabyte.
		return limitError("SUBSCRIPTION_TOO_LARGE", "the subscription's document is %d bytes; the limit is %d, since a subscription keeps its document while it runs: send the subscription alone, without other operations or long comments", len(op.RawQuery), l.subscriptionBytes)
	}
	p := auth.FromContext(ctx)
	w := operationWalker{vars: op.Variables, robot: p != nil && p.Role == auth.RoleRobot}
	cost, depth := w.walk(op.Operation.SelectionSet, 1, 0)
	cost = saturatingAdd(cost, w.batchedScans)
	if op.Operation.Operation == ast.Subscription && w.scanning != "" {
		// The cost is paid once, when the subscription starts, but its
		// selection is resolved again for every event: 20 subscriptions
		// to a machine's events' totalCount counted them 20 times on
		// every change of the machine.
		return limitError(scanInSubscription, "the subscription selects %s, which reads the tenant's data in bulk (a count, an aggregate or a text search) and would do so again for every event: select it in a query instead (once, or when an event says it changed)", w.scanning)
	}
	if w.defers {
		// gqlgen declares @defer, but its transports here send one
		// answer: a deferred part over HTTP never came, and in a
		// subscription each event left a goroutine waiting to hand it
		// over until the subscription ended.
		return limitError("DEFER_NOT_SUPPORTED", "@defer is not supported: select the fields directly (they come in the one answer)")
	}
	if len(w.introspects) > 0 && !l.introspection {
		return &gqlerror.Error{Message: "introspection is disabled on this server", Err: fault.New(fault.Forbidden, "introspection is disabled on this server")}
	}
	if schemas, types := w.introspections(); schemas > 1 || types > maxTypeIntrospections {
		return limitError("INTROSPECTION_LIMIT_EXCEEDED", "the operation asks for __schema %d times and __type %d times; the limits are 1 and %d: ask once for what you need", schemas, types, maxTypeIntrospections)
	}
	if depth > l.depth {
		return limitError("DEPTH_LIMIT_EXCEEDED", "the operation nests %d levels deep; the limit is %d", depth, l.depth)
	}
	if w.aliases > l.aliases {
		return limitError("ALIAS_LIMIT_EXCEEDED", "the operation uses %d aliases; the limit is %d", w.aliases, l.aliases)
	}
	if w.argBytes > l.argumentBytes {
		return limitError("ARGUMENT_SIZE_LIMIT_EXCEEDED", "the operation's arguments come to %d bytes with each variable counted wherever it is used; the limit is %d: use each large value once", w.argBytes, l.argumentBytes)
	}
	if cost > l.complexity {
		return limitError("COMPLEXITY_LIMIT_EXCEEDED", "the operation costs %d (each field 1, JSON %d, lists and connections times their page size); the limit is %d: ask for smaller pages or fewer fields", cost, jsonWeight, l.complexity)
	}
	return nil
}

// maxTypeIntrospections caps an operation's __type fields; __schema may
// come once. Introspection fields cost 1 each (data limits must not refuse
// a client's schema query), so the field limit alone let about 30 copies
// of the whole schema into one anonymous kilobyte: 4 MB of answer. One
// __schema is what GraphiQL, codegen and clients send.
const maxTypeIntrospections = 10

func limitError(reason, format string, args ...any) *gqlerror.Error {
	fe := fault.New(fault.BadUserInput, format, args...)
	fe.Extra = map[string]any{"reason": reason}
	return &gqlerror.Error{Message: fe.Message, Err: fe}
}

// clientGone ends work for a client that has already left.
func clientGone() *gqlerror.Error {
	return &gqlerror.Error{Message: "the request was cancelled", Err: fault.New(fault.BadUserInput, "the request was cancelled")}
}

// operationWalker measures a validated operation.
type operationWalker struct {
	vars    map[string]any
	robot   bool // a robot asks: its reads are of its own rows (scanCost)
	aliases int
	// introspects holds the response keys (alias, or name) of the
	// __schema and __type fields, each with its field's name: fields of
	// one key, from several fragments, are one in the answer.
	introspects map[string]string
	defers      bool // a fragment asks for @defer
	// batchedScans is the cost of the scanning fields paid once per place
	// in the document (scan.batched), outside any list's multiplication.
	batchedScans int
	// scanning names (Type.field) the first field walked that scans with
	// its arguments (scanCost), which a subscription may not select.
	scanning string
	// argBytes is the size of the argument values walked, variables
	// expanded; varBytes and literalBytes (made when first needed)
	// memoise each variable's and each list or object literal's size, so
	// that the walk stays linear.
	argBytes     int
	varBytes     map[string]int
	literalBytes map[*ast.Value]int
}

// walk returns the cost and depth of set at depth. edges, when positive,
// multiplies the edges of the connection whose selection set this is.
// Introspection fields count 1 each and no depth: gqlparser's
// MaxIntrospectionDepth rule bounds them, and data limits must not refuse a
// client's schema query.
func (w *operationWalker) walk(set ast.SelectionSet, depth, edges int) (cost, deepest int) {
	deepest = depth - 1
	for _, sel := range set {
		var c, d int
		switch s := sel.(type) {
		case *ast.Field:
			c, d = w.field(s, depth, edges)
		case *ast.InlineFragment:
			w.defers = w.defers || s.Directives.ForName("defer") != nil
			c, d = w.walk(s.SelectionSet, depth, edges)
		case *ast.FragmentSpread:
			w.defers = w.defers || s.Directives.ForName("defer") != nil
			if s.Definition != nil {
				c, d = w.walk(s.Definition.SelectionSet, depth, edges)
			}
		}
		cost, deepest = saturatingAdd(cost, c), max(deepest, d)
	}
	return cost, deepest
}

func (w *operationWalker) field(f *ast.Field, depth, edges int) (cost, deepest int) {
	if f.Alias != "" && f.Alias != f.Name {
		w.aliases++
	}
	for _, a := range f.Arguments {
		w.argBytes = saturatingAdd(w.argBytes, w.valueBytes(a.Value))
	}
	for _, d := range f.Directives {
		for _, a := range d.Arguments {
			w.argBytes = saturatingAdd(w.argBytes, w.valueBytes(a.Value))
		}
	}
	if strings.HasPrefix(f.Name, "__") {
		if f.Name == "__schema" || f.Name == "__type" {
			if w.introspects == nil {
				w.introspects = map[string]string{}
			}
			key := f.Alias
			if key == "" {
				key = f.Name
			}
			w.introspects[key] = f.Name
		}
		return 1, depth - 1
	}
	if f.Definition == nil || f.ObjectDefinition == nil {
		return 1, depth
	}
	key := f.ObjectDefinition.Name + "." + f.Name
	scan, batched := scanCost(key, f, w.vars, w.robot)
	if scan > 0 && w.scanning == "" {
		// A copy: key itself stays off the heap for every other field.
		w.scanning = strings.Clone(key)
	}
	if batched {
		w.batchedScans = saturatingAdd(w.batchedScans, scan)
		scan = 0
	}
	if len(f.SelectionSet) == 0 {
		if f.Definition.Type.Name() == "JSON" {
			return jsonWeight, depth
		}
		if size, ok := listSizes[key]; ok && f.Definition.Type.Elem != nil {
			// A list of scalars whose length an argument sets
			// (Schedule.nextRuns): each item is computed.
			return size.count(f, w.vars), depth
		}
		return 1 + scan, depth
	}
	t := f.Definition.Type
	size := sizeOf(key)
	var child int
	switch {
	case edges > 0 && (f.Name == "edges" || f.Name == "nodes"):
		// A connection's page: the connection field's entry sized it.
		child, deepest = w.walk(f.SelectionSet, depth+1, 0)
		child = saturatingMul(child, edges)
	case isConnection(t):
		child, deepest = w.walk(f.SelectionSet, depth+1, size.count(f, w.vars))
	case t.Elem != nil:
		child, deepest = w.walk(f.SelectionSet, depth+1, 0)
		child = saturatingMul(child, size.count(f, w.vars))
	default:
		child, deepest = w.walk(f.SelectionSet, depth+1, 0)
	}
	return saturatingAdd(1+size.statement+scan, child), deepest
}

// introspections counts the operation's __schema and __type answers.
func (w *operationWalker) introspections() (schemas, types int) {
	for _, name := range w.introspects {
		if name == "__schema" {
			schemas++
		} else {
			types++
		}
	}
	return schemas, types
}

// valueBytes is about how many bytes v takes as JSON once its variables
// are put in.
func (w *operationWalker) valueBytes(v *ast.Value) int {
	if v == nil {
		return 0
	}
	switch v.Kind {
	case ast.Variable:
		n, ok := w.varBytes[v.Raw]
		if !ok {
			n = jsonBytes(w.vars[v.Raw])
			if w.varBytes == nil {
				w.varBytes = map[string]int{}
			}
			w.varBytes[v.Raw] = n
		}
		return n
	case ast.ListValue, ast.ObjectValue:
		n, ok := w.literalBytes[v]
		if !ok {
			n = 2
			for _, c := range v.Children {
				n = saturatingAdd(n, len(c.Name)+4+w.valueBytes(c.Value))
			}
			if w.literalBytes == nil {
				w.literalBytes = map[*ast.Value]int{}
			}
			w.literalBytes[v] = n
		}
		return n
	default:
		return len(v.Raw) + 2
	}
}

// jsonBytes is about how many bytes a decoded JSON value takes as JSON.
func jsonBytes(v any) int {
	switch v := v.(type) {
	case string:
		return len(v) + 2
	case json.Number:
		return len(v)
	case map[string]any:
		n := 2
		for k, e := range v {
			n = saturatingAdd(n, len(k)+4+jsonBytes(e))
		}
		return n
	case []any:
		n := 2
		for _, e := range v {
			n = saturatingAdd(n, 1+jsonBytes(e))
		}
		return n
	case nil:
		return 4
	case bool:
		return 5
	default:
		return 8
	}
}

// subscriptionNeedsStream is the reason of a subscription refused on a
// transport that answers once.
const subscriptionNeedsStream = "SUBSCRIPTION_NEEDS_STREAM"

// scanInSubscription is the reason of a subscription refused for a field
// priced as a scan (see scans), which it would run again on every event.
const scanInSubscription = "SCAN_IN_SUBSCRIPTION"

type queriesOnlyKey struct{}

// queriesOnly marks GET requests other than websocket upgrades: whatever
// transport serves them (plain GET, or SSE over GET), they may run queries
// and subscriptions, never a mutation, which operationLimit refuses. GET is
// safe by HTTP's rules: links, prefetchers and caches repeat it.
// A GET whose query names a mutation is answered 405 with Allow: POST, as
// the GraphQL-over-HTTP spec asks, before any transport sees it; the mark
// still catches what only resolves later (a persisted query).
func queriesOnly(tokens int, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && !live.OffersWebsocket(r.Header) {
			if q := r.URL.Query(); isMutation(q.Get("query"), q.Get("operationName"), tokens) {
				w.Header().Set("Allow", http.MethodPost)
				auth.WriteError(w, http.StatusMethodNotAllowed, mutationOverGet)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), queriesOnlyKey{}, true))
		}
		next.ServeHTTP(w, r)
	})
}

// mutationOverGet is the refusal of a mutation sent by GET.
var mutationOverGet = &fault.Error{Code: fault.BadUserInput, Message: "a GET request cannot run a mutation: send it with POST (or over a websocket)", Extra: map[string]any{"reason": live.ReasonMutationOverGet}}

// isMutation reports whether query's operation (named, or the only one) is
// a mutation; a document that does not parse is left to the transport.
func isMutation(query, operationName string, tokens int) bool {
	if !strings.Contains(query, "mutation") {
		return false
	}
	doc, err := parser.ParseQueryWithTokenLimit(&ast.Source{Input: query}, tokens)
	if err != nil {
		return false
	}
	op := doc.Operations.ForName(operationName)
	return op != nil && op.Operation == ast.Mutation
}

func isQueriesOnly(ctx context.Context) bool { v, _ := ctx.Value(queriesOnlyKey{}).(bool); return v }

// checkBody reads a POST body up to max bytes and refuses, before GraphQL
// sees it, what is encoded (415, with Accept-Encoding: identity as RFC 7694
// asks), too large (413), not JSON (415) or not a JSON object (400), each
// with a GraphQL-shaped BAD_USER_INPUT error that does not echo the body
// back. Other methods pass through; the websocket transport has its own
// message limit.
func checkBody(max int64, budget *live.DecodeBudget, next http.Handler) http.Handler {
	// take reserves what doc decodes to (refusing the request when it
	// cannot) and returns r carrying the release for a stream
	// (live.DecodeDone), and the release; ok is false once refused.
	take := func(w http.ResponseWriter, r *http.Request, doc []byte) (_ *http.Request, release func(), ok bool) {
		release, err := budget.Take(r.Context(), func() string { return auth.AddressKey(auth.ClientIP(r)) }, doc)
		if err != nil {
			status := http.StatusBadRequest
			if fault.CodeOf(err) == fault.RateLimited {
				status = http.StatusTooManyRequests
				w.Header().Set("Retry-After", strconv.Itoa(auth.RetryAfter(err)))
			}
			auth.WriteError(w, status, err)
			return r, nil, false
		}
		if release != nil {
			r = r.WithContext(live.WithDecodeRelease(r.Context(), release))
		}
		return r, release, true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && len(r.URL.RawQuery) > getFreeQueryBytes {
			// A GET's variables and extensions decode as a body's do.
			q := r.URL.Query()
			r, release, ok := take(w, r, []byte(q.Get("variables")+q.Get("extensions")))
			if !ok {
				return
			}
			if release != nil {
				defer release()
			}
			next.ServeHTTP(w, r)
			return
		}
		if r.Method != http.MethodPost {
			next.ServeHTTP(w, r)
			return
		}
		refuse := func(status int, format string, args ...any) {
			auth.WriteError(w, status, fault.New(fault.BadUserInput, format, args...))
		}
		// A gzip body read as JSON would be refused as "not a JSON object",
		// and a plain body labelled br accepted: neither says what is wrong.
		if !identityEncoded(r.Header) {
			w.Header().Set("Accept-Encoding", "identity")
			refuse(http.StatusUnsupportedMediaType, "the request body must not be compressed: send it without Content-Encoding (identity)")
			return
		}
		if r.ContentLength > max {
			refuse(http.StatusRequestEntityTooLarge, "the request body is %d bytes; the limit is %d", r.ContentLength, max)
			return
		}
		// GraphQL over HTTP: a POST body is application/json in UTF-8.
		mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if cs, ok := params["charset"]; mt != "application/json" || (ok && !strings.EqualFold(cs, "utf-8")) {
			refuse(http.StatusUnsupportedMediaType, "send the request as Content-Type: application/json (UTF-8)")
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, max+1))
		if err != nil {
			refuse(http.StatusBadRequest, "the request body could not be read")
			return
		}
		if int64(len(body)) > max {
			refuse(http.StatusRequestEntityTooLarge, "the request body is over the limit of %d bytes", max)
			return
		}
		if trimmed := bytes.TrimSpace(body); len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(trimmed) {
			// As overHTTP refuses a body whose members are not a request's.
			e := fault.New(fault.BadUserInput, "the request body must be a JSON object such as {\"query\": \"{ me { id } }\"}")
			e.Extra = map[string]any{"reason": live.ReasonNotAGraphQLRequest}
			auth.WriteError(w, http.StatusBadRequest, e)
			return
		}
		// What decoding it costs is bounded too, before it is decoded,
		// while it is decoded and run (a stream's only until it starts).
		r, release, ok := take(w, r, body)
		if !ok {
			return
		}
		if release != nil {
			defer release()
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		next.ServeHTTP(w, r)
	})
}

// getFreeQueryBytes is the query string under which a GET's variables
// are not measured: too few bytes to weigh what the decode budget counts.
const getFreeQueryBytes = 1024

// identityEncoded reports whether a request's Content-Encoding headers,
// if any, name no coding but identity.
func identityEncoded(h http.Header) bool {
	for _, v := range h.Values("Content-Encoding") {
		for coding := range strings.SplitSeq(v, ",") {
			if c := strings.TrimSpace(coding); c != "" && !strings.EqualFold(c, "identity") {
				return false
			}
		}
	}
	return true
}

// cors lets browser apps on allowed origins call the API. Requests from other
// origins get no CORS headers, so browsers refuse to hand them the response;
// websockets check origins separately, in the transport.
func cors(patterns []string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" || !originAllowed(origin, patterns) {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Set("Access-Control-Expose-Headers", "X-Request-Id")
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Set("Access-Control-Allow-Methods", allowedMethods)
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Api-Key, X-Request-Id")
			h.Set("Access-Control-Max-Age", strconv.Itoa(600))
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// CheckOriginPattern reports why p cannot be an allowed-origin pattern
// (HandlerConfig.AllowedOrigins), or nil. A pattern is matched by
// path.Match against an Origin header's host (host or host:port), or
// against the whole origin (scheme://host[:port]) when it has a scheme;
// an origin has no path. A malformed pattern (path.ErrBadPattern, which
// the matcher ignores) or one with a path (a slash, e.g. a trailing one)
// would silently match no origin at all.
func CheckOriginPattern(p string) error {
	if _, err := path.Match(strings.ToLower(p), ""); err != nil {
		return fmt.Errorf("%q is not a valid pattern (path.Match: %v)", p, err)
	}
	host := p
	if scheme, rest, ok := strings.Cut(p, "://"); ok {
		if scheme == "" || rest == "" {
			return fmt.Errorf("%q needs a scheme and a host, as scheme://host (or just a host pattern)", p)
		}
		host = rest
	}
	if strings.Contains(host, "/") {
		return fmt.Errorf("%q has a path, which no origin has: write a host pattern such as app.example.com", p)
	}
	return nil
}

// originAllowed matches an Origin header's host (or whole origin, when the
// pattern has a scheme) against path.Match patterns, as the websocket
// library does for its OriginPatterns.
func originAllowed(origin string, patterns []string) bool {
	host := origin
	if _, rest, ok := strings.Cut(origin, "://"); ok {
		host = rest
	}
	for _, p := range patterns {
		target := host
		if strings.Contains(p, "://") {
			target = origin
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}
