package graph

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/errcode"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/fault"
)

type requestIDKey struct{}

// RequestID returns the id of the request in ctx, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

var clientRequestID = regexp.MustCompile(`^[A-Za-z0-9._-]{8,64}$`)

// withRequestID gives every request an id (the client's X-Request-Id when it
// is well-formed, else a fresh one), echoes it in the response, and puts it in
// the context for logs and INTERNAL errors.
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if !clientRequestID.MatchString(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id)))
	})
}

// newRequestID returns a fresh request id.
func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// groupRequestID gives a shared subscription's execution a request id of
// its own (live.Fanout.Detach), logging which member's request started it
// so that a member quoting the group's id can be traced to its request.
func groupRequestID(log *slog.Logger) func(context.Context) context.Context {
	return func(ctx context.Context) context.Context {
		id := newRequestID()
		log.Debug("shared subscription started", "request_id", id, "started_by", RequestID(ctx))
		return context.WithValue(ctx, requestIDKey{}, id)
	}
}

// reasons maps gqlgen's own error codes for requests it refused before
// execution to ours; the original code stays in extensions.reason.
var reasons = map[string]bool{
	errcode.ParseFailed:         true,
	errcode.ValidationFailed:    true,
	"COMPLEXITY_LIMIT_EXCEEDED": true,
}

// numberMessage is gqlparser's refusal of a variable that does not fit its
// number type; it shows the failed conversion's zero ("cannot use value 0 as
// Int" for 1e400 or 1.5), so it is replaced by what the value must be.
var numberMessage = regexp.MustCompile(`^cannot use value \S+ as (Int|Float)$`)

// presentError is the one place errors leave the server. Client errors
// (faults, and requests gqlgen refused as malformed) pass through with their
// code; everything else is logged with the request id and reaches the client
// only as INTERNAL with that id. With hideSchema (introspection off), a
// refusal names no schema element the request did not name itself. An
// error of an operation stopped at its deadline (timeout) is that
// refusal, whatever failed first when its statements were cancelled.
func presentError(log *slog.Logger, hideSchema bool, timeout time.Duration) graphql.ErrorPresenterFunc {
	return func(ctx context.Context, err error) *gqlerror.Error {
		gqlErr := graphql.DefaultErrorPresenter(ctx, err)
		var fe *fault.Error
		if !errors.As(err, &fe) && timedOut(ctx) {
			fe = operationTimeout(timeout)
		}
		if fe != nil {
			reason, _ := gqlErr.Extensions["code"].(string) // a fault refused in validation (scalarCheck)
			gqlErr.Message = fe.Message
			gqlErr.Extensions = map[string]any{"code": fe.Code}
			if reasons[reason] {
				gqlErr.Extensions["reason"] = reason
			}
			field := fe.Field
			if field == "" && fe.Code == fault.BadUserInput {
				// A scalar refusing an argument does not know its name;
				// the path does.
				if field = argumentPath(ctx, gqlErr.Path); field != "" {
					gqlErr.Message = field + ": " + fe.Message
				}
			}
			if field != "" {
				gqlErr.Extensions["field"] = field
			}
			for k, v := range fe.Extra {
				gqlErr.Extensions[k] = v
			}
			if fe.Code == fault.Internal {
				// A server fault worded for the client (an outage, a lost
				// stream): it still carries the request id to quote.
				gqlErr.Extensions["requestId"] = RequestID(ctx)
			}
			return gqlErr
		}
		code, _ := gqlErr.Extensions["code"].(string)
		if code == extensionPersistedQueryNotFound {
			return gqlErr // APQ clients retry with the full query on this exact code
		}
		// gqlgen's own refusals of a malformed request (parse, validation,
		// complexity, bad variables) carry no wrapped error; those with a
		// code say so, those without a path come from before execution.
		// A variable's default value is read before execution, and a
		// number literal there that fits no Go number fails with
		// strconv's error as the cause.
		var numErr *strconv.NumError
		defaultTooBig := reasons[code] && errors.As(gqlErr.Err, &numErr)
		if (gqlErr.Err == nil || defaultTooBig) && (reasons[code] || (code == "" && gqlErr.Path == nil)) {
			if defaultTooBig {
				gqlErr.Message = "a number literal must fit in 64 bits (a whole number) or be a finite 64-bit float; pass larger or more precise numbers in a variable"
			}
			if m := numberMessage.FindStringSubmatch(gqlErr.Message); m != nil {
				gqlErr.Message = map[string]string{
					"Int":   "must be an Int: a whole number from -2147483648 to 2147483647",
					"Float": "must be a Float: a finite number",
				}[m[1]]
			}
			if m := transportMessage(gqlErr.Message); m != "" {
				// A transport's refusal, passed through here by POST: some
				// echo the request body.
				gqlErr.Message = m
			} else if hideSchema {
				query := ""
				if graphql.HasOperationContext(ctx) {
					query = graphql.GetOperationContext(ctx).RawQuery
				}
				hideSchemaNames(gqlErr, query)
			}
			gqlErr.Message = excerptInput(gqlErr.Message)
			gqlErr.Extensions = map[string]any{"code": fault.BadUserInput}
			if code != "" {
				gqlErr.Extensions["reason"] = code
			}
			return gqlErr
		}
		id := RequestID(ctx)
		log.ErrorContext(ctx, "internal error", "request_id", id, "path", gqlErr.Path.String(), "error", err)
		return &gqlerror.Error{
			Message:    fmt.Sprintf("internal error; quote request id %s when reporting it", id),
			Path:       gqlErr.Path,
			Extensions: map[string]any{"code": fault.Internal, "requestId": id},
		}
	}
}

// quotedInput is a quoted name or value in a parser's or validator's
// message, long enough to be cut.
var quotedInput = regexp.MustCompile(`"[^"]{65,}"`)

// maxRefusalMessage bounds a parser's or validator's message, which quotes
// the request's names and values as written: a 900 KB field name came back
// in a 900 KB message.
const maxRefusalMessage = 1024

// excerptInput cuts what msg quotes of the request to 64 bytes each, and
// msg itself (a value it quotes unquoted, such as a list literal) to
// maxRefusalMessage.
func excerptInput(msg string) string {
	if len(msg) <= 64 {
		return msg
	}
	msg = quotedInput.ReplaceAllStringFunc(msg, func(q string) string {
		return `"` + fault.Excerpt(q[1:len(q)-1], 64) + `"`
	})
	return fault.Excerpt(msg, maxRefusalMessage)
}

// argumentPath names the argument or input field an error's path points
// into below the field being resolved, as the stores name fields:
// "filter.createdAfter", "entries[2].at". It is "" for an error of the field
// itself (a resolver's), or outside any field.
func argumentPath(ctx context.Context, path ast.Path) string {
	fc := graphql.GetFieldContext(ctx)
	if fc == nil {
		return ""
	}
	field := fc.Path()
	if len(path) <= len(field) || !slices.Equal(path[:len(field)], field) {
		return ""
	}
	var b strings.Builder
	for _, el := range path[len(field):] {
		switch el := el.(type) {
		case ast.PathIndex:
			fmt.Fprintf(&b, "[%d]", int(el))
		case ast.PathName:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(string(el))
		}
	}
	return b.String()
}

const extensionPersistedQueryNotFound = "PERSISTED_QUERY_NOT_FOUND"

// recoverPanic logs a resolver panic with its stack; the presenter then turns
// the returned error into INTERNAL.
func recoverPanic(log *slog.Logger) graphql.RecoverFunc {
	return func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "panic in resolver", "request_id", RequestID(ctx), "panic", p, "stack", string(debug.Stack()))
		return fmt.Errorf("panic: %v", p)
	}
}
