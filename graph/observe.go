package graph

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/auth"
	"fleetgraph/fault"
	"fleetgraph/graph/live"
	"fleetgraph/metrics"
)

// This file is what operators see of the endpoint: request and operation
// metrics (package metrics; nil when they are off) and one access-log line
// per request at info level, written when the request ends (for a
// websocket or an SSE stream, when the stream closes).

// observe wraps the endpoint once: it gives the request a metrics.Request
// that the layers below fill in, and when the request ends counts it and
// logs it. It runs inside withRequestID, so the id is known.
func observe(m *metrics.Metrics, log *slog.Logger, next http.Handler) http.Handler {
	if m == nil && !log.Enabled(context.Background(), slog.LevelInfo) {
		return next // nothing to record: no cost on the request path
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, req := metrics.WithRequest(r.Context(), m)
		sw := &statusWriter{ResponseWriter: w, m: m}
		defer func() {
			// A panic below still ends the request: count and log it, and
			// let net/http see the panic. A websocket served past its
			// handler ends when its socket closes.
			// What the end needs is copied out of the writer and the
			// request: a socket's end must not keep them (and with them
			// net/http's buffers for the connection).
			closeStream, status, stream := sw.closeStream, sw.status, sw.stream
			if status == 0 {
				status = http.StatusOK
			}
			method, path := r.Method, r.URL.Path
			live.AtEnd(ctx, func() {
				if closeStream != nil {
					closeStream()
				}
				d := time.Since(start)
				m.Request(method, status, stream, d)
				if log.Enabled(ctx, slog.LevelInfo) {
					accessLog(ctx, log, method, path, req, status, stream, d)
				}
			})
		}()
		next.ServeHTTP(sw, r.WithContext(ctx))
	})
}

// accessLog writes the request's line.
func accessLog(ctx context.Context, log *slog.Logger, method, path string, req *metrics.Request, status int, stream string, d time.Duration) {
	msg := "request"
	if stream != "" {
		msg = "stream ended"
	}
	op, ops := req.Operation()
	attrs := make([]slog.Attr, 0, 9)
	attrs = append(attrs,
		slog.String("method", method),
		slog.String("path", path),
		slog.Int("status", status),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.String("operation", truncateName(op)),
		slog.String("request_id", RequestID(ctx)),
		slog.String("caller", req.Caller()),
	)
	if stream != "" {
		attrs = append(attrs, slog.String("transport", stream), slog.Int("operations", ops))
	}
	log.LogAttrs(ctx, slog.LevelInfo, msg, attrs...)
}

// truncateName keeps a client-chosen operation name to a log-friendly length.
func truncateName(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}

// noteCaller records who called (anonymous when no credential came), once
// the auth middleware knows.
func noteCaller(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		metrics.RequestOf(r.Context()).SetCaller(auth.FromContext(r.Context()))
		next.ServeHTTP(w, r)
	})
}

// statusWriter records the response's status, and whether the request
// became a stream (a websocket upgrade, or an SSE or multipart response), which it
// counts as open until the request ends. Unwrap lets
// http.ResponseController and coder/websocket reach the connection
// (deadlines, flushing, hijacking) underneath.
type statusWriter struct {
	http.ResponseWriter
	m           *metrics.Metrics
	status      int
	stream      string
	closeStream func()
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
		switch {
		case code == http.StatusSwitchingProtocols:
			w.stream = "websocket"
		case strings.HasPrefix(w.Header().Get("Content-Type"), "text/event-stream"):
			w.stream = "sse"
		case strings.HasPrefix(w.Header().Get("Content-Type"), "multipart/mixed"):
			w.stream = "multipart"
		}
		if w.stream != "" {
			w.closeStream = w.m.StreamOpened(w.stream)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Flush implements http.Flusher for handlers that assert it.
func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// CountError counts an error answered outside GraphQL execution (a bad
// credential, a body too large); auth.WriteError calls it.
func (w *statusWriter) CountError(code string) { w.m.Error(code) }

// Unwrap returns the underlying writer (see http.ResponseController).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// operationMetrics is the gqlgen extension that records each operation:
// its name for the access log, and its type, bounded name, outcome and
// duration, and the codes of the errors it sent, for the metrics.
// Requests refused before execution (parse, validation, limits, bad
// variables) never reach InterceptOperation: InterceptResponse counts
// them as rejected.
type operationMetrics struct{ m *metrics.Metrics }

var (
	_ graphql.HandlerExtension     = operationMetrics{}
	_ graphql.OperationInterceptor = operationMetrics{}
	_ graphql.ResponseInterceptor  = operationMetrics{}
)

// ExtensionName implements graphql.HandlerExtension.
func (operationMetrics) ExtensionName() string { return "OperationMetrics" }

// Validate implements graphql.HandlerExtension.
func (operationMetrics) Validate(graphql.ExecutableSchema) error { return nil }

// Outcomes of an operation.
const (
	outcomeOK       = "ok"
	outcomeError    = "error"
	outcomeRejected = "rejected"
)

// InterceptOperation implements graphql.OperationInterceptor.
func (o operationMetrics) InterceptOperation(ctx context.Context, next graphql.OperationHandler) graphql.ResponseHandler {
	rc := graphql.GetOperationContext(ctx)
	name := rc.Operation.Name
	metrics.RequestOf(ctx).AddOperation(name)
	// The marker tells InterceptResponse that this operation is seen here.
	ctx, op := metrics.WithOperation(ctx)
	if o.m == nil {
		return next(ctx)
	}
	typ := string(rc.Operation.Operation)
	label := o.m.OperationLabel(name, nameCaller(ctx))
	start := rc.Stats.OperationStart
	if start.IsZero() {
		start = time.Now()
	}
	var once sync.Once
	finish := func() {
		once.Do(func() {
			outcome := outcomeOK
			if op.Failed() {
				outcome = outcomeError
			}
			o.m.Operation(typ, label, outcome, time.Since(start))
		})
	}
	subscription := rc.Operation.Operation == ast.Subscription
	if subscription {
		// A subscription ends when its stream does, or when the client
		// stops reading it (its context ends): whichever comes first.
		context.AfterFunc(ctx, finish)
	}
	responses := next(ctx)
	return func(ctx context.Context) *graphql.Response {
		resp := responses(ctx)
		if resp == nil {
			finish()
			return nil
		}
		if len(resp.Errors) > 0 {
			op.MarkFailed()
			countErrors(o.m, resp.Errors)
		}
		if !subscription {
			finish()
		}
		return resp
	}
}

// InterceptResponse implements graphql.ResponseInterceptor: it counts the
// responses of requests refused before execution (gqlgen's DispatchError),
// which alone reach it outside an operation that InterceptOperation saw.
func (o operationMetrics) InterceptResponse(ctx context.Context, next graphql.ResponseHandler) *graphql.Response {
	resp := next(ctx)
	if metrics.OperationOf(ctx) != nil || resp == nil {
		return resp
	}
	typ, label, start := "unknown", metrics.Other, time.Time{}
	if graphql.HasOperationContext(ctx) {
		rc := graphql.GetOperationContext(ctx)
		start = rc.Stats.OperationStart
		if rc.Operation != nil {
			typ = string(rc.Operation.Operation)
			metrics.RequestOf(ctx).AddOperation(rc.Operation.Name)
			label = o.m.OperationLabel(rc.Operation.Name, nameCaller(ctx))
		}
	}
	if o.m == nil {
		return resp
	}
	var d time.Duration
	if !start.IsZero() {
		d = time.Since(start)
	}
	o.m.Operation(typ, label, outcomeRejected, d)
	countErrors(o.m, resp.Errors)
	return resp
}

// nameCaller is whose share of the operation label's names an operation
// of ctx draws on: its principal, named as for turns (tenant and actor),
// or "" for an anonymous caller, who adds no names.
func nameCaller(ctx context.Context) string {
	if auth.FromContext(ctx) == nil {
		return ""
	}
	return turnCaller(ctx).caller
}

// countErrors counts each error by its extensions.code.
func countErrors(m *metrics.Metrics, errs gqlerror.List) {
	for _, e := range errs {
		switch code := e.Extensions["code"].(type) {
		case fault.Code:
			m.Error(string(code))
		case string:
			m.Error(code)
		default:
			m.Error("")
		}
	}
}
