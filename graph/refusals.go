package graph

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"fleetgraph/fault"
	"fleetgraph/graph/live"
)

// gqlgen's transports (and coder/websocket, inside the websocket transport)
// refuse some requests by themselves, before any operation exists and so
// without the error presenter: "transport not supported", "GET requests only
// allow query operations", "variables could not be decoded", URL decoding
// errors, websocket handshake errors as text/plain. Those answers carry no
// extensions.code, and one (a POST body that does not decode) echoes the
// whole body back. codedRefusals rewrites every such answer into a GraphQL
// error with a stable code and a fixed message.

// maxRefusalInspect bounds the first chunk of an error answer that is
// inspected: transports write their refusals in one small Write. Larger
// bodies are presenter-made (validation errors) and pass untouched.
const maxRefusalInspect = 64 << 10

// transportMessages map gqlgen's own refusal messages (by prefix) to ours.
var transportMessages = []struct{ prefix, message string }{
	{"GET requests only allow query operations", "GET runs only queries: send mutations as a POST with Content-Type: application/json"},
	{"variables could not be decoded", "variables must be a JSON object"},
	{"extensions could not be decoded", "extensions must be a JSON object"},
	{"json request body could not be decoded", ""}, // see bodyMessage
	{"could not read request body", "the request body could not be read"},
	{"unable to upgrade", "the websocket handshake is not valid"},
	{notUTF8, notUTF8},
}

// bodyMessage says which member of a POST body failed to decode, from the
// decoder's error text (which names the RawParams field, never the input),
// without the body gqlgen appends to it.
func bodyMessage(msg string) string {
	msg, _, _ = strings.Cut(msg, " body:")
	for _, m := range []struct{ field, want string }{
		{"RawParams.query", "query must be a string"},
		{"RawParams.operationName", "operationName must be a string"},
		{"RawParams.variables", "variables must be a JSON object"},
		{"RawParams.extensions", "extensions must be a JSON object"},
	} {
		if strings.Contains(msg, m.field) {
			return "the request body is not a GraphQL request: " + m.want
		}
	}
	return `the request body must be a JSON object such as {"query": "{ me { id } }"}`
}

const notUTF8 = "the request must be UTF-8 text"

// validUTF8Request reports whether the GraphQL parameters of r (the POST body,
// which checkBody has already read into memory, or the GET query string)
// are valid UTF-8.
func validUTF8Request(r *http.Request) bool {
	if r.Method == http.MethodGet {
		for _, vs := range r.URL.Query() {
			for _, v := range vs {
				if !utf8.ValidString(v) {
					return false
				}
			}
		}
		return true
	}
	if r.Method != http.MethodPost || r.Body == nil || r.Body == http.NoBody {
		return true
	}
	body, err := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	return err != nil || utf8.Valid(body)
}

// codedRefusals wraps the GraphQL server so that every answer with an error
// status is a GraphQL error body whose errors all carry extensions.code and
// none echoes the request. Successful answers, streams and websocket
// upgrades pass through untouched.
func codedRefusals(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := &refusalWriter{ResponseWriter: w, r: r, log: log}
		if !validUTF8Request(r) {
			// encoding/json would silently turn bad bytes into U+FFFD.
			rw.held = http.StatusBadRequest
			rw.rewrite([]byte(`{"errors":[{"message":"` + notUTF8 + `"}]}`))
			return
		}
		next.ServeHTTP(rw, r)
		if rw.held != 0 { // an error status with no body
			rw.rewrite(nil)
		}
	})
}

// refusalWriter holds back an error status until the body's first chunk
// shows whether the answer needs rewriting.
type refusalWriter struct {
	http.ResponseWriter
	r    *http.Request
	log  *slog.Logger
	held int  // an error status not yet sent
	done bool // the answer was rewritten: drop what follows
}

// WriteHeader holds statuses of 400 and above, except 422: gqlgen's
// validation refusals, already presented (and possibly large).
func (w *refusalWriter) WriteHeader(status int) {
	if w.done {
		return
	}
	if status >= 400 && status != http.StatusUnprocessableEntity && w.held == 0 {
		w.held = status
		return
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *refusalWriter) Write(b []byte) (int, error) {
	switch {
	case w.done:
		return len(b), nil
	case w.held == 0:
		return w.ResponseWriter.Write(b)
	case len(b) > maxRefusalInspect || !needsRewrite(b):
		w.ResponseWriter.WriteHeader(w.held)
		w.held = 0
		return w.ResponseWriter.Write(b)
	}
	w.rewrite(b)
	return len(b), nil
}

// FlushError flushes unless an error status is held (flushing would send
// 200 in its place).
func (w *refusalWriter) FlushError() error {
	if w.held != 0 || w.done {
		return nil
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Flush is FlushError for code that asserts http.Flusher.
func (w *refusalWriter) Flush() { _ = w.FlushError() }

// Unwrap lets http.ResponseController and websocket upgrades reach the
// connection.
func (w *refusalWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// needsRewrite reports whether an error body is not already a GraphQL error
// list whose errors all carry a code and none a transport message.
func needsRewrite(body []byte) bool {
	var resp graphql.Response
	if json.Unmarshal(body, &resp) != nil || len(resp.Errors) == 0 {
		return true
	}
	for _, e := range resp.Errors {
		if code, _ := e.Extensions["code"].(string); code == "" || transportMessage(e.Message) != "" {
			return true
		}
	}
	return false
}

// transportMessage returns our message for one of gqlgen's, or "".
func transportMessage(msg string) string {
	for _, m := range transportMessages {
		if strings.HasPrefix(msg, m.prefix) {
			if m.message == "" {
				return bodyMessage(msg)
			}
			return m.message
		}
	}
	return ""
}

// rewrite answers with a GraphQL error in place of body (the first chunk of
// the original answer, or nil).
func (w *refusalWriter) rewrite(body []byte) {
	status := w.held
	w.held, w.done = 0, true
	var resp graphql.Response
	_ = json.Unmarshal(body, &resp)
	original := ""
	if len(resp.Errors) > 0 {
		original = resp.Errors[0].Message
	}
	code, msg := fault.BadUserInput, transportMessage(original)
	h := w.Header()
	switch {
	case original == "transport not supported" && w.r.Method != http.MethodGet && w.r.Method != http.MethodPost:
		status = http.StatusMethodNotAllowed
		h.Set("Allow", allowedMethods)
		msg = fmt.Sprintf("%s is not supported: send a GraphQL request as a POST with Content-Type: application/json, a GET with a query parameter, or a websocket upgrade", methodName(w.r.Method))
	case original == "transport not supported" && live.OffersWebsocket(w.r.Header):
		// Only a GET upgrades; no transport serves another request that
		// offers one, in whatever it accepts.
		msg = "a websocket upgrade is a GET request: send this request without the Upgrade header, or open the websocket with a GET"
	case original == "transport not supported":
		msg = "this is not a GraphQL request: send a POST with Content-Type: application/json, a GET with a query parameter, or a websocket upgrade"
	case strings.HasPrefix(original, "GET requests only allow query operations"):
		// GraphQL over HTTP: a mutation over GET is 405.
		status = http.StatusMethodNotAllowed
		h.Set("Allow", "POST")
	case msg != "":
	case w.r.Method == http.MethodGet && strings.Contains(original, "URL escape"):
		msg = "the query string is not valid URL encoding"
	case live.OffersWebsocket(w.r.Header) && status < 500:
		msg = "the websocket handshake is not valid: " + http.StatusText(status)
	default:
		code, msg = codeForStatus(status), "the request was refused: "+http.StatusText(status)
	}
	if code == fault.Internal || status >= 500 {
		id := RequestID(w.r.Context())
		w.log.ErrorContext(w.r.Context(), "internal error", "request_id", id, "status", status, "answer", fault.Excerpt(string(body), 512))
		code, msg = fault.Internal, fmt.Sprintf("internal error; quote request id %s when reporting it", id)
	}
	h.Del("Content-Length")
	h.Del("X-Content-Type-Options")
	h.Set("Content-Type", "application/json")
	w.ResponseWriter.WriteHeader(status)
	// A request error: errors and no data entry, as overHTTP writes one.
	out, _ := json.Marshal(struct {
		Errors gqlerror.List `json:"errors"`
	}{gqlerror.List{{Message: msg, Extensions: map[string]any{"code": code}}}})
	_, _ = w.ResponseWriter.Write(out)
}

// allowedMethods are the methods /graphql answers, for Allow headers: GET
// and POST carry GraphQL requests, OPTIONS says so (allowOptions). HEAD is
// refused (405) like every other method: it would run a query to send
// nothing of its result.
const allowedMethods = "GET, POST, OPTIONS"

// allowOptions answers OPTIONS requests that are not CORS preflights (cors
// answers those) with 204 and the methods in Allow, before authentication
// or any transport: the answer describes the endpoint, not a caller.
func allowOptions(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodOptions {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Allow", allowedMethods)
		w.WriteHeader(http.StatusNoContent)
	})
}

// codeForStatus is the code of an uncoded refusal with the given status.
func codeForStatus(status int) fault.Code {
	switch status {
	case http.StatusUnauthorized:
		return fault.Unauthenticated
	case http.StatusForbidden:
		return fault.Forbidden
	case http.StatusNotFound:
		return fault.NotFound
	case http.StatusTooManyRequests:
		return fault.RateLimited
	}
	if status >= 500 {
		return fault.Internal
	}
	return fault.BadUserInput
}

// methodName quotes a request method for a message: a method is a token of
// at most a few letters, anything else is not repeated.
func methodName(m string) string {
	if len(m) <= 16 && strings.IndexFunc(m, func(r rune) bool { return r < 'A' || r > 'Z' }) < 0 {
		return m
	}
	return "this method"
}
