package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/auth"
	"fleetgraph/fault"
)

// shapeLimit refuses operations nested deeper than depth or using more than
// aliases aliased fields (the cheap abuses complexity alone misses), and
// introspection when it is off, with a clear error before execution.
type shapeLimit struct {
	depth, aliases int
	introspection  bool
}

var _ interface {
	graphql.HandlerExtension
	graphql.OperationContextMutator
} = shapeLimit{}

func (shapeLimit) ExtensionName() string                   { return "ShapeLimit" }
func (shapeLimit) Validate(graphql.ExecutableSchema) error { return nil }

func (l shapeLimit) MutateOperationContext(_ context.Context, op *graphql.OperationContext) *gqlerror.Error {
	if op.Operation == nil {
		return nil
	}
	w := shapeWalker{fragments: op.Doc.Fragments, visiting: map[string]bool{}}
	depth := w.walk(op.Operation.SelectionSet, 1)
	if w.introspects && !l.introspection {
		return &gqlerror.Error{Message: "introspection is disabled on this server", Err: fault.New(fault.Forbidden, "introspection is disabled on this server")}
	}
	if depth > l.depth {
		return limitError("DEPTH_LIMIT_EXCEEDED", "the operation nests %d levels deep; the limit is %d", depth, l.depth)
	}
	if w.aliases > l.aliases {
		return limitError("ALIAS_LIMIT_EXCEEDED", "the operation uses %d aliases; the limit is %d", w.aliases, l.aliases)
	}
	return nil
}

func limitError(reason, format string, args ...any) *gqlerror.Error {
	fe := fault.New(fault.BadUserInput, format, args...)
	fe.Extra = map[string]any{"reason": reason}
	return &gqlerror.Error{Message: fe.Message, Err: fe}
}

type shapeWalker struct {
	fragments   ast.FragmentDefinitionList
	visiting    map[string]bool
	aliases     int
	introspects bool
}

// walk returns the depth of set, counting aliases on the way. Fragment cycles
// are rejected by validation before this runs; visiting guards anyway.
func (w *shapeWalker) walk(set ast.SelectionSet, depth int) int {
	deepest := depth - 1
	for _, sel := range set {
		switch s := sel.(type) {
		case *ast.Field:
			if s.Alias != "" && s.Alias != s.Name {
				w.aliases++
			}
			if s.Name == "__schema" || s.Name == "__type" {
				w.introspects = true
			}
			deepest = max(deepest, depth)
			if len(s.SelectionSet) > 0 {
				deepest = max(deepest, w.walk(s.SelectionSet, depth+1))
			}
		case *ast.InlineFragment:
			deepest = max(deepest, w.walk(s.SelectionSet, depth))
		case *ast.FragmentSpread:
			if f := w.fragments.ForName(s.Name); f != nil && !w.visiting[s.Name] {
				w.visiting[s.Name] = true
				deepest = max(deepest, w.walk(f.SelectionSet, depth))
				delete(w.visiting, s.Name)
			}
		}
	}
	return deepest
}

// checkBody reads a POST body up to max bytes and refuses, before GraphQL
// sees it, what is too large (413), not JSON (415) or not a JSON object
// (400), each with a GraphQL-shaped BAD_USER_INPUT error that does not echo
// the body back. Other methods pass through; the websocket transport has
// its own message limit.
func checkBody(max int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			next.ServeHTTP(w, r)
			return
		}
		refuse := func(status int, format string, args ...any) {
			auth.WriteError(w, status, fault.New(fault.BadUserInput, format, args...))
		}
		if r.ContentLength > max {
			refuse(http.StatusRequestEntityTooLarge, "the request body is %d bytes; the limit is %d", r.ContentLength, max)
			return
		}
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" && mt != "application/graphql-response+json" {
			refuse(http.StatusUnsupportedMediaType, "send the request as Content-Type: application/json")
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
			refuse(http.StatusBadRequest, "the request body must be a JSON object such as {\"query\": \"{ me { id } }\"}")
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		next.ServeHTTP(w, r)
	})
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
			h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Api-Key, X-Request-Id")
			h.Set("Access-Control-Max-Age", strconv.Itoa(600))
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
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
